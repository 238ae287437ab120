//! The Custos node: wiring, the HTTPS client API, TLS, and the `custos` command line.
//!
//! [`run`] is the one entry point: it opens storage, starts Raft, serves the Raft transport
//! (mutual TLS) and the client API (TLS) and returns when its shutdown future completes, after
//! a graceful drain. The binary, `custos dev` and the tests all go through it.
//!
//! # Layout
//! - `lib.rs` — [`run`] and the [`NodeError`] type.
//! - `tls.rs` — PEM loading, rustls configurations, cluster CA generation.
//! - `api/` — the client API: admission, auth, handlers, error mapping.
//! - `tenants.rs` — feeds applied tenant state to the per-tenant actor supervisor.
//! - `audit.rs` — the audit outbox and sink from configuration.
//! - `custody.rs` — key custody from configuration, the actors' proposer, log compaction
//!   after crypto-shredding.
//! - `telemetry.rs` — the optional OTLP export of request spans.
//! - `client.rs` — the API client used by the CLI.
//! - `bench/` — `custos bench`: benchmarks against a peer, printing figures.
//! - `chaos.rs` — `custos chaos`: the chaos scenarios, with a results table.
//! - `dev.rs` — `custos dev`: a local one- or multi-node cluster with generated certificates.
//! - `main.rs`, `cli/` — the command line (binary only).

pub mod api;
pub mod audit;
pub mod bench;
mod carried;
pub mod chaos;
pub mod client;
pub mod custody;
pub mod dev;
mod identity;
pub mod telemetry;
mod tenants;
pub mod tls;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use custos_actors::custody::provider::vault::VaultAdapter;
use custos_config::Config;
use custos_raft::{Cluster, ClusterOptions, NodeInfo};
use serde::{Deserialize, Serialize};

/// How long in-flight requests may take to finish once shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("the node has no TLS files: set tls.ca_file, tls.cert_file and tls.key_file (or use `custos dev`)")]
    TlsNotConfigured,
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("binding {what} on {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Start(Box<custos_raft::StartError>),
    #[error("the node has no master key: set custody.master_key_file, master_key_env or master_key_command (or use `custos dev`), or configure custody.vault and custody.provider = \"vault\"")]
    MasterKeyNotConfigured,
    #[error("loading the master key: {0}")]
    MasterKey(String),
    #[error("opening the edge key cache: {0}")]
    EdgeCache(String),
    #[error("configuring the Vault provider: {0}")]
    Vault(String),
    #[error("opening audit: {0}")]
    Audit(String),
    #[error("configuring sign-in (identity.oidc): {0}")]
    SignIn(String),
    #[error("starting the tenant actor supervisor: {0}")]
    Actors(String),
    #[error("serving {what}: {source}")]
    Serve { what: &'static str, source: std::io::Error },
}

/// The addresses a running node bound, written to `<data_dir>/node.json` once it serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeAddrs {
    pub node_id: u64,
    pub api_addr: SocketAddr,
    pub raft_addr: SocketAddr,
}

pub const NODE_FILE: &str = "node.json";

fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    let listener = TcpListener::bind(addr).map_err(|source| NodeError::Bind { what, addr, source })?;
    listener.set_nonblocking(true).map_err(|source| NodeError::Bind { what, addr, source })?;
    Ok(listener)
}

fn write_node_file(dir: &Path, addrs: &NodeAddrs) -> Result<(), NodeError> {
    let path = dir.join(NODE_FILE);
    let tmp = dir.join(format!("{NODE_FILE}.tmp"));
    let wrap = |source| NodeError::DataDir { path: path.clone(), source };
    // serde_json cannot fail on this plain struct.
    let text = serde_json::to_vec_pretty(addrs).expect("NodeAddrs serialises");
    std::fs::write(&tmp, text).map_err(wrap)?;
    std::fs::rename(&tmp, &path).map_err(wrap)
}

/// Runs one node until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    tls::install_crypto_provider();
    let (Some(ca), Some(cert), Some(key)) =
        (config.tls.ca_file.clone(), config.tls.cert_file.clone(), config.tls.key_file.clone())
    else {
        return Err(NodeError::TlsNotConfigured);
    };
    let tls = tls::NodeTls::load(&tls::TlsFiles { ca, cert, key })?;
    let data_dir = config.node.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| NodeError::DataDir { path: data_dir.clone(), source })?;

    let api_listener = bind("the client API", config.api.listen_addr)?;
    let raft_listener = bind("the Raft transport", config.raft.listen_addr)?;
    let local =
        |l: &TcpListener, addr| l.local_addr().map_err(|source| NodeError::Bind { what: "a listener", addr, source });
    let api_bound = local(&api_listener, config.api.listen_addr)?;
    let raft_bound = local(&raft_listener, config.raft.listen_addr)?;
    let info = NodeInfo {
        api_addr: config.api.advertise_addr.unwrap_or(api_bound).to_string(),
        raft_addr: config.raft.advertise_addr.unwrap_or(raft_bound).to_string(),
    };

    let node_id = config.node.id;
    let cluster = Cluster::start(ClusterOptions {
        node_id,
        info: info.clone(),
        raft: &config.raft,
        data_dir: &data_dir,
        peer_tls: tls.peer_client,
        leader_attempts: config.limits.forward_attempts,
    })
    .await
    .map_err(|e| NodeError::Start(Box::new(e)))?;

    // Raft bodies carry append batches and snapshot chunks: allow the larger plus framing.
    let append_bytes = config.raft.max_entries_per_append as usize * config.raft.max_entry_bytes;
    let raft_body_limit = append_bytes.max(config.raft.snapshot_chunk_bytes as usize * 2) + 1024 * 1024;
    let raft_app = custos_raft::network::router(cluster.clone(), raft_body_limit);
    let custody::Built { custody, vault } = custody::build(&config.custody, &data_dir, &cluster)?;
    let audit = audit::open(&config.audit, node_id, &data_dir).await?;
    let vault_adapter = match vault {
        Some(shared) => Some(
            ractor::Actor::spawn(Some(format!("custos/node-{node_id}/vault")), VaultAdapter, shared)
                .await
                .map_err(|e| NodeError::Actors(e.to_string()))?
                .0,
        ),
        None => None,
    };
    let directory = Arc::new(custos_actors::TenantDirectory::new(config.limits.tenant_max_in_flight));
    let a = &config.actors;
    let deps = custos_actors::ActorDeps {
        node_id,
        policy: custos_actors::RestartPolicy {
            max_restarts: a.max_restarts,
            window: Duration::from_millis(a.restart_window_ms),
            backoff_base: Duration::from_millis(a.restart_backoff_ms),
            backoff_max: Duration::from_millis(a.restart_backoff_max_ms),
        },
        directory: directory.clone(),
        custody: custody.clone(),
        proposer: Some(Arc::new(custody::ClusterProposer { cluster: cluster.clone(), audit: audit.clone() })),
        maintenance_interval: Duration::from_millis(config.custody.schedule_interval_ms),
        idle_stop_after: Duration::from_millis(a.idle_stop_ms),
    };
    let (supervisor, _) = ractor::Actor::spawn(None, custos_actors::NodeSupervisor, deps)
        .await
        .map_err(|e| NodeError::Actors(e.to_string()))?;
    let (stop_sync, sync_stopped) = tokio::sync::watch::channel(false);
    let sync_task = tokio::spawn(tenants::sync(cluster.clone(), supervisor.clone(), sync_stopped.clone()));
    let schedule_interval = Duration::from_millis(config.custody.schedule_interval_ms);
    let shred_task = tokio::spawn(custody::shred_pending(
        cluster.clone(),
        custody.clone(),
        audit.clone(),
        schedule_interval,
        sync_stopped.clone(),
    ));
    let carrier = Arc::new(carried::Carrier::default());
    let recorder_task = tokio::spawn(carried::record(
        cluster.clone(),
        audit.clone(),
        carrier.clone(),
        Duration::from_millis(config.audit.carried_record_interval_ms),
        sync_stopped.clone(),
    ));
    let signing_task = tokio::spawn(identity::maintain(
        cluster.clone(),
        custody.clone(),
        audit.clone(),
        config.identity.clone(),
        schedule_interval,
        sync_stopped,
    ));
    let tokens = Arc::new(custos_actors::identity::TokenService::new(
        cluster.reader().clone(),
        custody.clone(),
        custos_actors::identity::TokenSettings {
            issuer: config.identity.token_issuer.clone(),
            audience: config.identity.token_audience.clone(),
            ttl_s: config.identity.token_ttl_s,
            skew_s: config.identity.token_clock_skew_s,
            algorithm: identity::algorithm(&config.identity),
        },
    ));
    let api_app = api::router(api::AppState::new(api::AppParts {
        cluster: cluster.clone(),
        audit: audit.clone(),
        carrier,
        supervisor: supervisor.clone(),
        directory,
        custody,
        limits: config.limits.clone(),
        max_batch_items: config.custody.max_batch_items,
        fault_injection: config.actors.fault_injection,
        record_reads: config.audit.record_reads,
        identity: config.identity.clone(),
        tokens,
        sign_in: api::login::SignIn::new(&config.identity, &cluster.info().api_addr)
            .map_err(|e| NodeError::SignIn(format!("{e:#}")))?,
    }));

    let raft_handle = axum_server::Handle::new();
    let api_handle = axum_server::Handle::new();
    let raft_server = axum_server::from_tcp_rustls(
        raft_listener,
        axum_server::tls_rustls::RustlsConfig::from_config(tls.raft_server),
    )
    .handle(raft_handle.clone())
    .serve(raft_app.into_make_service());
    let api_server =
        axum_server::from_tcp_rustls(api_listener, axum_server::tls_rustls::RustlsConfig::from_config(tls.api_server))
            .handle(api_handle.clone())
            .serve(api_app.into_make_service());
    let raft_task = tokio::spawn(raft_server);
    let api_task = tokio::spawn(api_server);

    write_node_file(&data_dir, &NodeAddrs { node_id, api_addr: api_bound, raft_addr: raft_bound })?;
    tracing::info!(node_id, api = %api_bound, raft = %raft_bound, "custos node serving");

    shutdown.await;
    tracing::info!(node_id, "shutting down: draining requests");
    // Client requests drain first: they may still need Raft and the transport to finish.
    api_handle.graceful_shutdown(Some(DRAIN_TIMEOUT));
    let api_result = api_task.await;
    // Nothing waits on the sync task's result; it only stops.
    let _ = stop_sync.send(true);
    let _ = sync_task.await;
    let _ = shred_task.await;
    let _ = signing_task.await;
    // Records and reports the events the drained requests carried.
    let _ = recorder_task.await;
    if let Err(e) = supervisor.stop_and_wait(Some("node stopping".into()), Some(DRAIN_TIMEOUT)).await {
        tracing::warn!(node_id, error = %e, "tenant actors did not stop in time");
    }
    if let Some(adapter) = vault_adapter {
        // Stopping revokes a token the adapter logged in for.
        if let Err(e) = adapter.stop_and_wait(Some("node stopping".into()), Some(DRAIN_TIMEOUT)).await {
            tracing::warn!(node_id, error = %e, "the Vault adapter did not stop in time");
        }
    }
    // Unshipped events stay in the outbox for the next start.
    audit.shutdown().await;
    cluster.shutdown().await;
    raft_handle.graceful_shutdown(Some(Duration::from_secs(1)));
    let served = [("the client API", api_result), ("the Raft transport", raft_task.await)];
    for (what, result) in served {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(source)) => return Err(NodeError::Serve { what, source }),
            Err(join) => return Err(NodeError::Serve { what, source: std::io::Error::other(join.to_string()) }),
        }
    }
    tracing::info!(node_id, "stopped");
    Ok(())
}

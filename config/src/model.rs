use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The whole configuration of one node.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub api: ApiConfig,
    pub raft: RaftConfig,
    pub tls: TlsConfig,
    pub limits: LimitsConfig,
    pub actors: ActorsConfig,
    pub custody: CustodyConfig,
}

/// Identity and storage of this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Raft node id, unique in the cluster and never reused after a node leaves.
    pub id: u64,
    /// Directory holding the node's sled database. Created if absent.
    pub data_dir: PathBuf,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig { id: 1, data_dir: PathBuf::from("custos-data") }
    }
}

/// The client-facing HTTPS API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address the API listens on. Port 0 picks a free port.
    pub listen_addr: SocketAddr,
    /// Address other nodes and clients use to reach this API; defaults to the bound address.
    pub advertise_addr: Option<SocketAddr>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig { listen_addr: SocketAddr::from(([127, 0, 0, 1], 7443)), advertise_addr: None }
    }
}

/// Node-to-node Raft transport and timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// Address the mutual-TLS Raft transport listens on. Port 0 picks a free port.
    pub listen_addr: SocketAddr,
    /// Address peers use to reach this node; defaults to the bound address.
    pub advertise_addr: Option<SocketAddr>,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms_min: u64,
    pub election_timeout_ms_max: u64,
    /// Build a snapshot after this many entries were applied since the last one.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot so slow followers catch up without one.
    pub log_entries_kept_after_snapshot: u64,
    /// Size of one snapshot chunk on the wire.
    pub snapshot_chunk_bytes: u64,
    /// Time a follower may take to receive and install one snapshot chunk.
    pub install_snapshot_timeout_ms: u64,
    /// Most entries sent in one append-entries RPC.
    pub max_entries_per_append: u64,
    /// Deadline for one ordinary node-to-node RPC.
    pub rpc_timeout_ms: u64,
    /// How many log entries back the state machine remembers request ids, for exactly-once
    /// apply of retries.
    pub dedup_window_entries: u64,
    /// Most client proposals the leader batches into one log entry.
    pub max_proposals_per_entry: usize,
    /// Approximate byte bound of one batched entry (a single larger proposal goes alone).
    pub max_entry_bytes: usize,
    /// Batches a node keeps in flight at once (forwarded to the leader, and on the leader
    /// appended to the log); later proposals wait and join the next batch.
    pub max_batches_in_flight: usize,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 7444)),
            advertise_addr: None,
            heartbeat_interval_ms: 100,
            election_timeout_ms_min: 500,
            election_timeout_ms_max: 1000,
            snapshot_after_entries: 10_000,
            log_entries_kept_after_snapshot: 5_000,
            snapshot_chunk_bytes: 3 * 1024 * 1024,
            install_snapshot_timeout_ms: 10_000,
            max_entries_per_append: 64,
            rpc_timeout_ms: 2_000,
            dedup_window_entries: 100_000,
            max_proposals_per_entry: 256,
            max_entry_bytes: 1024 * 1024,
            max_batches_in_flight: 2,
        }
    }
}

/// TLS material. The node certificate serves the API and authenticates the node to its peers;
/// peers must present a certificate signed by `ca_file`. All three are required unless the node
/// runs under `custos dev`, which generates them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Bounds on the work one node accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest accepted request body on the API.
    pub max_body_bytes: usize,
    /// Most items returned in one page of a list.
    pub max_batch: usize,
    /// Requests served at once by one node's API; more get 429.
    pub max_in_flight: usize,
    /// Deadline for one API request, forwarding and Raft commit included.
    pub request_timeout_ms: u64,
    /// Attempts to reach the leader for one forwarded request before giving up with 503.
    pub forward_attempts: u32,
    /// Requests of one tenant served at once by one node; more get 429, so one busy tenant
    /// cannot take the node's whole `max_in_flight`.
    pub tenant_max_in_flight: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 1024 * 1024,
            max_batch: 1000,
            max_in_flight: 1024,
            request_timeout_ms: 10_000,
            forward_attempts: 10,
            tenant_max_in_flight: 256,
        }
    }
}

/// Supervision of the per-tenant actors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActorsConfig {
    /// Failures of one tenant's actor tolerated within the window before it is degraded.
    pub max_restarts: usize,
    pub restart_window_ms: u64,
    /// First restart delay; doubles per failure in the window up to `restart_backoff_max_ms`.
    pub restart_backoff_ms: u64,
    pub restart_backoff_max_ms: u64,
    /// Serve `POST /v1/tenants/{tenant}/faults`, which makes one of a tenant's actors fail:
    /// for chaos and supervision tests only. Off in production.
    pub fault_injection: bool,
}

impl Default for ActorsConfig {
    fn default() -> Self {
        ActorsConfig {
            max_restarts: 5,
            restart_window_ms: 60_000,
            restart_backoff_ms: 100,
            restart_backoff_max_ms: 10_000,
            fault_injection: false,
        }
    }
}

/// Which core storage provider holds new tenants' L1 roots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CoreProvider {
    /// Roots sealed by the cluster master key, replicated in governance state.
    #[default]
    SealedLocal,
    /// A transit key in each tenant's Vault/OpenBao namespace (`custody.vault`).
    Vault,
}

/// Where unwrapped working keys are cached on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EdgeProvider {
    /// Locked memory, zeroized on eviction.
    #[default]
    Memory,
    /// Wrapped files under `<node.data_dir>/edge/<tenant>/`, surviving restarts; needs the
    /// master key.
    EncryptedFs,
}

/// Key custody: providers, the master key, caches and the key schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CustodyConfig {
    pub provider: CoreProvider,
    /// The cluster master key for `sealed-local`, as 64 hex digits: exactly one of a file, the
    /// name of an environment variable, or an unseal command printing it. Every node of a
    /// cluster must use the same key. Required by `custos run` (generated by `custos dev`).
    pub master_key_file: Option<PathBuf>,
    pub master_key_env: Option<String>,
    pub master_key_command: Option<Vec<String>>,
    pub edge: EdgeProvider,
    /// How long an unwrapped key stays cached; after that it is unwrapped again, which needs
    /// the core provider.
    pub key_cache_ttl_ms: u64,
    /// Most unwrapped keys cached on a node, all tenants together.
    pub key_cache_max_entries: usize,
    /// How often the leader runs each tenant's key schedule (rotation, destruction) and
    /// destroys deleted tenants' roots held outside governance state (Vault namespaces).
    pub schedule_interval_ms: u64,
    /// Most items in one batch encrypt or decrypt request.
    pub max_batch_items: usize,
    /// The Vault/OpenBao core provider; enabled when `address` is set.
    pub vault: VaultConfig,
}

/// How the Vault adapter authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VaultAuthMethod {
    /// A token from `token_file` or `token_env`, renewed while renewable.
    #[default]
    Token,
    /// `approle_role_id` and the secret id in `approle_secret_id_file`.
    Approle,
    /// The service account JWT in `kubernetes_jwt_file`, for `kubernetes_role`.
    Kubernetes,
}

/// Vault or OpenBao as a core storage provider: a namespace per tenant under
/// `namespace_prefix`, each with a transit mount holding the tenant's L1 root key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// e.g. `https://vault.example:8200`. Unset: no Vault provider on this node.
    pub address: Option<String>,
    /// The only CA trusted for the Vault server's certificate (pinned).
    pub ca_file: Option<PathBuf>,
    /// Parent namespace of the tenants' namespaces (`<prefix>/<tenant>`).
    pub namespace_prefix: String,
    pub transit_mount: String,
    /// Name of the L1 transit key in each tenant namespace.
    pub root_key_name: String,
    pub auth: VaultAuthMethod,
    pub token_file: Option<PathBuf>,
    /// Name of an environment variable holding the token.
    pub token_env: Option<String>,
    pub approle_mount: String,
    pub approle_role_id: Option<String>,
    pub approle_secret_id_file: Option<PathBuf>,
    pub kubernetes_mount: String,
    pub kubernetes_role: Option<String>,
    pub kubernetes_jwt_file: PathBuf,
    /// Deadline of one Vault request.
    pub request_timeout_ms: u64,
    /// Consecutive failures that open the circuit breaker; while open, calls fail at once.
    pub breaker_failures: u32,
    /// How long the breaker stays open before letting calls try again.
    pub breaker_cooldown_ms: u64,
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            address: None,
            ca_file: None,
            namespace_prefix: "custos".into(),
            transit_mount: "transit".into(),
            root_key_name: "custos-root".into(),
            auth: VaultAuthMethod::Token,
            token_file: None,
            token_env: None,
            approle_mount: "approle".into(),
            approle_role_id: None,
            approle_secret_id_file: None,
            kubernetes_mount: "kubernetes".into(),
            kubernetes_role: None,
            kubernetes_jwt_file: PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token"),
            request_timeout_ms: 5_000,
            breaker_failures: 5,
            breaker_cooldown_ms: 10_000,
        }
    }
}

impl Default for CustodyConfig {
    fn default() -> Self {
        CustodyConfig {
            provider: CoreProvider::SealedLocal,
            master_key_file: None,
            master_key_env: None,
            master_key_command: None,
            edge: EdgeProvider::Memory,
            key_cache_ttl_ms: 300_000,
            key_cache_max_entries: 10_000,
            schedule_interval_ms: 10_000,
            max_batch_items: 100,
            vault: VaultConfig::default(),
        }
    }
}

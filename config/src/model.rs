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
    pub audit: AuditConfig,
    pub identity: IdentityConfig,
    pub telemetry: TelemetryConfig,
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
    /// Memory the storage engine keeps for cached pages of the log and governance state
    /// (sled's page cache); beyond it, pages are read back from disk.
    pub engine_cache_bytes: u64,
    /// Most client proposals the leader batches into one log entry.
    pub max_proposals_per_entry: usize,
    /// Approximate byte bound of one batched entry (a single larger proposal goes alone).
    pub max_entry_bytes: usize,
    /// Batches a node keeps in flight at once (forwarded to the leader, and on the leader
    /// appended to the log); later proposals wait and join the next batch.
    pub max_batches_in_flight: usize,
    /// Peer addresses this node dials somewhere else: advertised Raft address → address to
    /// connect to (NAT, port forwarding, or the chaos harness's per-link fault proxies). The
    /// peer's certificate must still be valid for the dialled host.
    pub dial_overrides: std::collections::BTreeMap<String, String>,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 7444)),
            advertise_addr: None,
            heartbeat_interval_ms: 100,
            election_timeout_ms_min: 500,
            election_timeout_ms_max: 1000,
            dial_overrides: std::collections::BTreeMap::new(),
            snapshot_after_entries: 10_000,
            log_entries_kept_after_snapshot: 5_000,
            snapshot_chunk_bytes: 3 * 1024 * 1024,
            install_snapshot_timeout_ms: 10_000,
            max_entries_per_append: 64,
            rpc_timeout_ms: 2_000,
            dedup_window_entries: 100_000,
            engine_cache_bytes: 1024 * 1024 * 1024,
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
    /// A tenant's actor tree on a node stops after this long without a request there (its
    /// next request starts it again, in a few milliseconds). Bounds the node's memory by the
    /// tenants in use rather than every tenant. At least `custody.key_cache_ttl_ms`: a
    /// stopping tree drops its tenant's cached keys.
    pub idle_stop_ms: u64,
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
            idle_stop_ms: 600_000,
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
    /// The only CA trusted for the Vault server's certificate (pinned); the system's roots
    /// when unset.
    pub ca_file: Option<PathBuf>,
    /// SHA-256 digests of the Vault server's own certificate (its DER; hex, ':' between bytes
    /// allowed). When any are given, the certificate must also be one of them. List the next
    /// certificate's digest too before rotating it.
    pub server_cert_sha256: Vec<String>,
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

/// A certificate's SHA-256 digest from its hex form (64 digits, optionally ':' between
/// bytes, either case), as `openssl x509 -fingerprint -sha256` prints it.
pub fn parse_sha256_fingerprint(text: &str) -> Option<[u8; 32]> {
    let digits: Vec<u8> = text.trim().bytes().filter(|b| *b != b':').collect();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            address: None,
            ca_file: None,
            server_cert_sha256: Vec::new(),
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

/// How a request treats its audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditModeConfig {
    /// The request fails (503 `audit_unavailable`) unless its event is durable in the outbox.
    #[default]
    FailClosed,
    /// Requests never wait for audit; events that do not fit the outbox are dropped and counted.
    BestEffort,
    /// Nothing is recorded: for benchmarks and development only (logged loudly at start).
    Off,
}

/// Where shipped audit events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditSinkKind {
    /// A segmented append-only log per tenant under `<node.data_dir>/audit/log`.
    #[default]
    Local,
    /// Apache Kafka (`audit.kafka`).
    Kafka,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KafkaTopicLayout {
    /// One topic (`topic`) for all tenants, keyed and so partitioned by tenant id.
    #[default]
    Shared,
    /// One topic per tenant: `<topic_prefix><tenant>`.
    PerTenant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KafkaSecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum KafkaSaslMechanism {
    #[default]
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

/// Audit: the outbox, the sink and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    pub mode: AuditModeConfig,
    /// Per-tenant exceptions to `mode`, e.g. `{ acme = "best-effort" }` (not `off`). Keep it
    /// the same on every node: a tenant's requests may reach any of them.
    pub tenant_modes: std::collections::BTreeMap<String, AuditModeConfig>,
    /// Record every authenticated read (`access.read`: a `GET` of tenants, keys, policy,
    /// grants, sessions…; not the node's status), as the mode says. Off, only API keys' reads are recorded (`apikey.use`), and
    /// refused ones.
    pub record_reads: bool,
    pub sink: AuditSinkKind,
    /// Most events in one group commit, and in one shipping batch.
    pub max_batch_events: usize,
    /// Most events waiting to be committed; a full queue makes requests wait (fail-closed)
    /// or drops their events (best-effort).
    pub queue_events: usize,
    /// A group commit of events no request waits for — best-effort events, and those of
    /// governance writes whose Raft entry carries them — waits up to this many microseconds
    /// after its first event for more (cut short when a request that waits joins, or once it
    /// holds a quarter of `max_batch_events`): fewer, larger fsyncs. A group a request waits
    /// for is committed at once. 0 never waits.
    pub commit_linger_us: u64,
    /// A group commit that requests wait for (fail-closed) is committed at once, unless this
    /// node's CPU is the bottleneck (its async workers busy 90 % of the time) and the last
    /// group commit held at least 4 events: then it waits up to this many microseconds after
    /// its first event for twice as many (at most a quarter of `max_batch_events`). The
    /// requests would queue for the CPU anyway; fewer `fdatasync`s leave more of it to them.
    /// 0 never waits.
    pub commit_gather_us: u64,
    /// How often a node moves the audit events its governance writes carried in their Raft
    /// entries into its outbox (and reports them recorded, so the log drops them).
    pub carried_record_interval_ms: u64,
    /// Most committed events waiting to be shipped; beyond it fail-closed requests get 503
    /// `audit_backlog` and best-effort events are dropped.
    pub max_outbox_events: u64,
    /// Retry backoff of the shipper while the sink is down: doubles from min to max.
    pub ship_backoff_min_ms: u64,
    pub ship_backoff_max_ms: u64,
    /// After delivering less than a full batch, the shipper waits this long for more events:
    /// under load it delivers fewer, larger batches; an event reaches the sink at most this
    /// much later. 0 ships every commit at once.
    pub ship_linger_ms: u64,
    /// Most batches the shipper has handed to the sink and not yet seen acknowledged: Kafka
    /// takes the next batch while it still acknowledges the previous ones. Each batch is at
    /// most `max_batch_events`; with Kafka, all of them together must fit in
    /// `audit.kafka.max_in_flight`.
    pub ship_max_batches_in_flight: usize,
    /// A batch the sink has not acknowledged for this long is reported in status (it is
    /// still being retried: a delivery never expires, or a later event could overtake it).
    pub ship_stalled_after_ms: u64,
    /// At shutdown the shipper waits this long for batches still on their way; what is not
    /// acknowledged by then stays in the outbox and is shipped again at the next start.
    pub ship_stop_grace_ms: u64,
    pub local: AuditLocalConfig,
    pub kafka: AuditKafkaConfig,
}

/// The embedded sink's segments and retention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditLocalConfig {
    pub segment_bytes: u64,
    /// Closed segments older than this are removed.
    pub retention_ms: u64,
    /// Closed segments beyond this size per tenant are removed, oldest first.
    pub max_bytes_per_tenant: u64,
    /// Events written to a tenant's log are fsynced at most this long afterwards, one fsync
    /// per written tenant; the outbox keeps them until then.
    pub sync_interval_ms: u64,
}

/// The Kafka sink (`audit.sink = "kafka"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditKafkaConfig {
    /// Bootstrap servers, `host:port,host:port`.
    pub brokers: String,
    pub topic_layout: KafkaTopicLayout,
    /// The topic of the shared layout.
    pub topic: String,
    /// The topic name prefix of the per-tenant layout.
    pub topic_prefix: String,
    /// Partitions and replication factor of topics Custos creates.
    pub partitions: i32,
    pub replication_factor: i32,
    /// `retention.ms` of topics Custos creates; -1 keeps events forever.
    pub retention_ms: i64,
    /// Bound on topic creation and topic metadata requests. Events themselves never time out
    /// in the producer: it retries them until the brokers take them, in order.
    pub request_timeout_ms: u64,
    /// Events the producer may hold unacknowledged.
    pub max_in_flight: usize,
    pub security_protocol: KafkaSecurityProtocol,
    /// CA bundle for TLS to the brokers (ssl, sasl-ssl).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS, both or neither.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub sasl_mechanism: KafkaSaslMechanism,
    pub sasl_username: Option<String>,
    /// The SASL password: from a file or an environment variable, never in this file.
    pub sasl_password_file: Option<PathBuf>,
    pub sasl_password_env: Option<String>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            mode: AuditModeConfig::FailClosed,
            tenant_modes: std::collections::BTreeMap::new(),
            record_reads: true,
            sink: AuditSinkKind::Local,
            max_batch_events: 1024,
            queue_events: 16_384,
            commit_linger_us: 5_000,
            commit_gather_us: 500,
            carried_record_interval_ms: 20,
            max_outbox_events: 1_000_000,
            ship_backoff_min_ms: 100,
            ship_backoff_max_ms: 1_000,
            ship_linger_ms: 5,
            ship_max_batches_in_flight: 4,
            ship_stalled_after_ms: 10_000,
            ship_stop_grace_ms: 5_000,
            local: AuditLocalConfig::default(),
            kafka: AuditKafkaConfig::default(),
        }
    }
}

impl Default for AuditLocalConfig {
    fn default() -> Self {
        AuditLocalConfig {
            segment_bytes: 64 << 20,
            retention_ms: 90 * 24 * 3600 * 1000,
            max_bytes_per_tenant: 10 << 30,
            sync_interval_ms: 100,
        }
    }
}

impl Default for AuditKafkaConfig {
    fn default() -> Self {
        AuditKafkaConfig {
            brokers: String::new(),
            topic_layout: KafkaTopicLayout::Shared,
            topic: "custos.audit".into(),
            topic_prefix: "custos.audit.".into(),
            partitions: 12,
            replication_factor: 3,
            retention_ms: -1,
            request_timeout_ms: 30_000,
            max_in_flight: 100_000,
            security_protocol: KafkaSecurityProtocol::Plaintext,
            ca_file: None,
            cert_file: None,
            key_file: None,
            sasl_mechanism: KafkaSaslMechanism::Plain,
            sasl_username: None,
            sasl_password_file: None,
            sasl_password_env: None,
        }
    }
}

/// Operational telemetry beyond `/metrics` and the log.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub otlp: OtlpConfig,
}

/// Export of tracing spans (one per API request, carrying node, tenant and request id) to an
/// OpenTelemetry collector over OTLP/HTTP with protobuf bodies. Off while `endpoint` is unset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// The collector's traces URL, e.g. `https://otel.example:4318/v1/traces`.
    pub endpoint: Option<String>,
    /// PEM roots trusted for an `https` endpoint (required with one).
    pub ca_file: Option<PathBuf>,
    /// Headers sent with every export (an `authorization` for a managed collector, say).
    pub headers: std::collections::BTreeMap<String, String>,
    /// The share of traces exported, 0.0 to 1.0; a request arriving with a sampled W3C
    /// `traceparent` is exported whatever the ratio.
    pub sample_ratio: f64,
    /// Most finished spans waiting for export; beyond it new ones are dropped, never blocking
    /// a request (the log warns when dropping starts and gives the count at shutdown).
    pub max_queue_spans: usize,
    /// Most spans in one export request.
    pub max_export_batch: usize,
    /// How long spans wait before a partial batch is exported.
    pub export_interval_ms: u64,
    /// Bound of one export request.
    pub timeout_ms: u64,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            endpoint: None,
            ca_file: None,
            headers: std::collections::BTreeMap::new(),
            sample_ratio: 1.0,
            max_queue_spans: 4096,
            max_export_batch: 512,
            export_interval_ms: 1000,
            timeout_ms: 10_000,
        }
    }
}

/// Identity and access: API-key rate tiers and lifetimes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Rate tiers an API key may be given, by name. Buckets are per node: a key used on every
    /// node of an N-node cluster gets up to N times the rate in all.
    pub api_key_tiers: std::collections::BTreeMap<String, RateTier>,
    /// The tier of a key created without one; must be one of `api_key_tiers`.
    pub default_api_key_tier: String,
    /// How long a new or rotated API key secret works (ADR-006: rotate every 90 days).
    pub api_key_rotation_days: u64,
    /// How long a rotated-out secret keeps working when the rotation names no overlap.
    pub api_key_overlap_s: u64,
    /// How long before a secret expires the leader announces it (`apikey.expiring` in the
    /// tenant's audit stream); 0 turns announcements off.
    pub api_key_expiry_warning_days: u64,
    /// Most API keys whose rate buckets one node keeps; idle, full buckets are dropped first.
    pub max_rate_buckets: usize,
    /// `iss` of platform tokens; the same on every node (gateways check it).
    pub token_issuer: String,
    /// `aud` of platform tokens.
    pub token_audience: String,
    /// Lifetime of a platform token.
    pub token_ttl_s: u64,
    /// Clock difference tolerated when checking a token's `exp` and `nbf`.
    pub token_clock_skew_s: u64,
    /// How platform tokens are signed: "RS256" (default) or "EdDSA".
    pub token_algorithm: TokenAlgorithm,
    /// How long a signing key signs before the next takes over.
    pub signing_key_rotation_days: u64,
    /// How long a new signing key is published before it signs.
    pub signing_key_publish_ahead_s: u64,
    /// The deployment's identity provider for operator sign-in; tenants may bind their own.
    pub oidc: Option<OidcConfig>,
    /// The externally visible base URL of Custos (`https://custos.example:7443`, a load
    /// balancer's): identity providers send browsers back to `<public_url>/v1/auth/callback`.
    /// The node's own API address when absent.
    pub public_url: Option<String>,
    /// A CA bundle (PEM) trusted for identity providers' TLS; without it only plain-HTTP
    /// providers (tests) are reachable.
    pub idp_ca_file: Option<std::path::PathBuf>,
    /// Sign-in sessions.
    pub session_idle_timeout_s: u64,
    pub session_absolute_timeout_s: u64,
    pub max_sessions_per_user: u32,
    /// How long a started sign-in may take to complete.
    pub login_timeout_s: u64,
}

/// The identity provider operators sign in with (Keycloak by default, or any OIDC provider).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Recorded as `idp` in sessions and audit events.
    #[serde(default = "default_oidc_name")]
    pub name: String,
    /// e.g. `https://keycloak.example/realms/custos`.
    pub issuer: String,
    pub client_id: String,
    /// A file holding the client secret (owner-only permissions).
    pub client_secret_file: std::path::PathBuf,
}

fn default_oidc_name() -> String {
    "keycloak".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenAlgorithm {
    #[serde(rename = "RS256")]
    Rs256,
    #[serde(rename = "EdDSA")]
    EdDsa,
}

/// A token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateTier {
    pub per_second: f64,
    pub burst: u32,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            api_key_tiers: [
                ("standard".to_string(), RateTier { per_second: 50.0, burst: 100 }),
                ("high".to_string(), RateTier { per_second: 1000.0, burst: 2000 }),
            ]
            .into_iter()
            .collect(),
            default_api_key_tier: "standard".into(),
            api_key_rotation_days: 90,
            api_key_overlap_s: 24 * 3600,
            api_key_expiry_warning_days: 14,
            max_rate_buckets: 100_000,
            token_issuer: "custos".into(),
            token_audience: "custos-api".into(),
            token_ttl_s: 300,
            token_clock_skew_s: 30,
            token_algorithm: TokenAlgorithm::Rs256,
            signing_key_rotation_days: 30,
            signing_key_publish_ahead_s: 3600,
            oidc: None,
            public_url: None,
            idp_ca_file: None,
            session_idle_timeout_s: 1800,
            session_absolute_timeout_s: 12 * 3600,
            max_sessions_per_user: 5,
            login_timeout_s: 600,
        }
    }
}

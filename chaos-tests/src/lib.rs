//! Multi-process cluster tests for Custos: a harness that runs real `custos` processes on
//! loopback, each with its own data directory, and kills, stops and restarts them the way
//! an operator or a crash would.
//!
//! # Layout
//! - `cluster.rs` — [`ProcessCluster`]: certificates, per-node configuration files, process
//!   control (start, SIGTERM, SIGKILL, SIGSTOP/SIGCONT, restart) and an HTTPS client for the
//!   API of each node.
//! - `openbao.rs` — [`OpenBaoServer`]: a real OpenBao run by `deploy/scripts/openbao.sh`.
//! - `history.rs` — operation histories (JSON lines) and their linearizability check, per key,
//!   against a compare-and-set register (Porcupine, run as the Go program `checker/`).
//! - `workload.rs` — the register workload: concurrent clients on random nodes doing reads,
//!   writes and compare-and-sets on tenants' display names, recorded as a history.
//! - `crypto.rs` — the encryption workload: encrypt fresh plaintexts, decrypt acknowledged
//!   ciphertexts, and check afterwards that every one decrypts on every node.
//! - `scenario.rs` — chaos scenarios: a [`scenario::Plan`] (nemesis, nodes, clients,
//!   duration, seed) run against a fresh cluster, checked, and summed up in a
//!   [`scenario::Summary`].
//! - `proxy.rs` — [`LinkProxy`]: a TCP proxy per directed link between nodes that passes,
//!   delays or cuts traffic ([`ProcessCluster::with_links`], `partition`, `heal`).
//! - `kafka.rs` — [`KafkaBroker`]: a real Apache Kafka (KRaft) run by `deploy/scripts/kafka.sh`.
//! - `otelcol.rs` — [`Collector`]: a real OpenTelemetry Collector run by
//!   `deploy/scripts/otelcol.sh`, and the spans it received.
//! - `routes.rs` — [`tenant_routes`]: every tenant-scoped route, for isolation tests.
//! - `keycloak.rs` — [`KeycloakServer`]: a real Keycloak 26 with the `custos` realm, run by
//!   `deploy/scripts/keycloak.sh`.
//! - [`files_under`]: every file below a directory, for scans of what lies at rest.
//!
//! The harness talks to nodes only through their public API and their process, so what it
//! checks is what a client and an operator see. It takes the path of the `custos` binary from
//! the caller (integration tests of `custos-node` pass `CARGO_BIN_EXE_custos`).

mod cluster;
pub mod crypto;
pub mod history;
mod kafka;
mod keycloak;
mod openbao;
mod otelcol;
mod proxy;
mod routes;
pub mod scenario;
pub mod workload;

pub use cluster::{eventually, free_ports, ApiReply, ProcessCluster};
pub use kafka::KafkaBroker;
pub use keycloak::{dave_totp, log_in as keycloak_log_in, query_param, KeycloakServer, RealmUser};
pub use openbao::OpenBaoServer;
pub use otelcol::{Collector, ExportedSpan};
pub use proxy::{Fault, LinkProxy};
pub use routes::tenant_routes;

/// Every file below `dir`, at any depth (for scans of data at rest). Panics if `dir` cannot be
/// read, so a scan of a wrong path fails instead of finding nothing.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

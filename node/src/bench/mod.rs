//! `custos bench`: benchmarks that print figures, side by side with a peer in the same run.
//!
//! - `governance.rs` — durable governance writes on a 3-node loopback cluster of `custos`
//!   processes against a 3-member etcd cluster, at several client counts.
//! - `etcd.rs` — starting and reading an etcd cluster (the peer).
//! - `encrypt.rs` — encrypt/decrypt over HTTPS on one `custos` node against OpenBao transit
//!   (`openbao.rs` starts and provisions the peer), plus the in-process cost of one call.
//! - `audit.rs` — the audit pipeline to a real Kafka against a plain rdkafka producer, and
//!   encrypt over HTTPS with audit to Kafka against the same build with audit off.
//! - `auth.rs` — authorization decisions in-process (p50/p99) and over HTTPS.
//! - `load.rs` — the closed-loop load generator and its statistics.
//! - `wire.rs` — a minimal HTTPS/1.1 keep-alive client, so the load generator is not what
//!   limits the figures on a small machine.

pub mod audit;
pub mod auth;
pub mod encrypt;
mod etcd;
pub mod governance;
mod load;
mod openbao;
mod wire;

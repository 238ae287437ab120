//! Typed, validated configuration for a Custos node.
//!
//! A node reads one TOML file, then applies `CUSTOS_<SECTION>__<FIELD>` environment overrides
//! (for example `CUSTOS_RAFT__HEARTBEAT_INTERVAL_MS=100`). Every limit is a named field with a
//! default, so an empty file — or no file at all, as `custos dev` uses — is a valid starting
//! point. Loading never stops at the first problem: [`load`] returns every error it finds, each
//! naming the key path and what was expected.
//!
//! # Layout
//! - `model.rs` — the [`Config`] structs with their defaults.
//! - `load.rs` — reading the file and the environment ([`load`], [`load_from_str`]).
//! - `validate.rs` — semantic checks across fields ([`Config::validate`]).
//! - `error.rs` — [`ConfigError`] and [`ConfigErrors`].
//!
//! This crate does no I/O beyond reading the file it is given and checking that configured
//! TLS and master key files exist; it has no async runtime.

mod error;
mod load;
mod model;
mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use load::{load, load_from_str, ENV_PREFIX};
pub use model::parse_sha256_fingerprint;
pub use model::{
    ActorsConfig, ApiConfig, AuditConfig, AuditKafkaConfig, AuditLocalConfig, AuditModeConfig, AuditSinkKind, Config,
    CoreProvider, CustodyConfig, EdgeProvider, IdentityConfig, KafkaSaslMechanism, KafkaSecurityProtocol,
    KafkaTopicLayout, LimitsConfig, NodeConfig, OidcConfig, OtlpConfig, RaftConfig, RateTier, TelemetryConfig,
    TlsConfig, TokenAlgorithm, VaultAuthMethod, VaultConfig,
};

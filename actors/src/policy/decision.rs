//! What a decision is asked and what it answers.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use custos_raft::TenantId;
use serde::{Deserialize, Serialize};

use super::permission::Permission;

/// Attributes of the request a decision is about, for ABAC rules and Rego.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attributes {
    /// The line of business of the resource acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lob: Option<String>,
    /// The environment of the resource acted on (`prod`, `staging`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

/// One question to the engine.
#[derive(Debug, Clone, Copy)]
pub struct AccessRequest<'a> {
    /// The tenant acted on; None for platform actions (tenant creation, cluster management).
    pub tenant: Option<&'a TenantId>,
    pub permission: Permission,
    pub attributes: &'a Attributes,
    /// Decision time, milliseconds since the Unix epoch (time windows, grant expiry).
    pub now_ms: u64,
}

/// A decision's identifier, unique across nodes and restarts: a random per-process prefix and
/// a counter, so minting one costs an atomic increment.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecisionId {
    process: u64,
    sequence: u64,
}

impl DecisionId {
    pub fn next() -> DecisionId {
        static PROCESS: OnceLock<u64> = OnceLock::new();
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let process = *PROCESS.get_or_init(rand::random::<u64>);
        DecisionId { process, sequence: SEQUENCE.fetch_add(1, Ordering::Relaxed) }
    }
}

impl fmt::Display for DecisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dec_{:016x}{:016x}", self.process, self.sequence)
    }
}

impl fmt::Debug for DecisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a request was denied, as a machine-readable kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyKind {
    /// The principal belongs to another tenant (or is a tenant principal asking a platform
    /// question).
    TenantMismatch,
    /// No role, scope or grant gives the permission.
    NotGranted,
    /// The permission needs MFA and the principal has not verified it.
    MfaRequired,
    /// An ABAC rule's condition does not hold.
    Condition,
    /// The tenant's Rego constraint does not allow it.
    Rego,
    /// The tenant's policy cannot be evaluated (it does not compile, or Rego failed); the
    /// engine fails closed.
    PolicyError,
}

/// The engine's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub id: DecisionId,
    pub allowed: bool,
    /// What decided: `role:<name>`, `scope`, `grant:<id>` when allowed; `tenant`,
    /// `default_deny`, `mfa`, `rule:<id>`, `rego` or `policy` when denied.
    pub rule: String,
    pub deny: Option<DenyKind>,
    pub reasons: Vec<String>,
}

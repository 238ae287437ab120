//! Per-tenant supervised actors (ractor) and key custody.
//!
//! Each node runs one [`NodeSupervisor`] that keeps one tenant supervisor alive for every
//! *active* tenant in the replicated governance state (as applied on this node) that is in use
//! here: a tree starts with the tenant's first request on the node, or when its key schedule
//! has work due on the leader, and stops after `actors.idle_stop_ms` without a request. Memory
//! and start-up work thus follow the tenants a node serves, not every tenant that exists; a
//! tree rebuilds what it needs from governance state whenever it starts. A tenant supervisor
//! has four children — session, policy, custody and telemetry — and
//! restarts a failed child with exponential backoff; more failures than the restart policy
//! allows within its window stop the tenant's children and mark the tenant degraded on this
//! node (its requests get 503) while every other tenant keeps serving. Suspending or deleting
//! a tenant stops its tree. The [`TenantDirectory`] is where the API learns whether a tenant
//! is serving here and admits its requests under a per-tenant in-flight bound.
//!
//! Key custody ([`custody`]) implements the key hierarchy and envelope encryption. Its
//! operations run in the request's own task against the node's [`custody::Custody`]; each
//! tenant's custody actor owns that tenant's cached keys (evicted when it restarts or stops)
//! and runs its key schedule.
//!
//! # Layout
//! - `node/` — the node-level supervisor: `msg.rs` (its closed message enum), `actor.rs`.
//! - `tenant/` — the tenant supervisor (`supervisor.rs`), its messages (`msg.rs`) and the
//!   session/policy/telemetry actors (`component.rs`).
//! - `custody/` — `crypto.rs` (AES-256-GCM, [`custody::SecretKey`]), `ciphertext.rs` (the
//!   versioned format and AAD), `master.rs` (the cluster master key), `provider/` (core
//!   storage providers), `edge/` (edge caches), `service.rs` (the operations), `actor.rs`.
//! - `policy/` — authorization: the permission catalog, roles, ABAC rules, MFA, grants, Rego,
//!   and the per-node cache of compiled tenant policies the API decides with.
//! - `identity/` — platform tokens: signing keys held by key custody, issuing and verifying.
//! - `audit/` — audit events, hash chains, the durable outbox, the shipper and its sinks.
//! - `restart.rs` — the backoff and failure-window rule both supervisors use.
//! - `directory.rs` — [`TenantDirectory`].
//!
//! Actors learn about governance changes only from state applied through Raft (the node sends
//! [`NodeMsg::Sync`]); they never message actors on other nodes. Actor names carry the node id
//! and the tenant id, because ractor's registry is process-wide and tests run several nodes in
//! one process.

pub mod audit;
pub mod custody;
mod directory;
pub mod identity;
mod node;
pub mod policy;
mod restart;
mod tenant;

use std::sync::Arc;
use std::time::Duration;

use custos_raft::Proposal;

pub use custody::actor::CustodyMsg;
pub use directory::{Refusal, TenantActorState, TenantDirectory, TenantHealth};
pub use node::actor::NodeSupervisor;
pub use node::msg::NodeMsg;
pub use restart::RestartPolicy;
pub use tenant::msg::{ChildHealth, ChildKind, ComponentMsg, TenantMsg};

/// Makes one child of a tenant's tree on this node fail, as a crash would; its supervisor
/// then restarts it or degrades the tenant. Returns false when that child is not running.
/// For supervision and chaos tests: the node exposes it only when configured to.
pub fn inject_fault(node_id: u64, tenant: &custos_raft::TenantId, child: ChildKind) -> bool {
    let Some(cell) = ractor::registry::where_is(tenant::supervisor::child_name(node_id, tenant, child)) else {
        return false;
    };
    match child {
        ChildKind::Custody => ractor::ActorRef::<CustodyMsg>::from(cell).cast(CustodyMsg::InjectFault).is_ok(),
        _ => ractor::ActorRef::<ComponentMsg>::from(cell).cast(ComponentMsg::InjectFault).is_ok(),
    }
}

/// Probes each child of a tenant's tree on this node; None when the tenant has no tree here.
pub async fn tenant_children(node_id: u64, tenant: &custos_raft::TenantId) -> Option<Vec<ChildHealth>> {
    let cell = ractor::registry::where_is(node::actor::tenant_supervisor_name(node_id, tenant))?;
    // Each probe is bounded; the whole answer by four of them.
    ractor::call_t!(ractor::ActorRef::<TenantMsg>::from(cell), TenantMsg::Health, 3000).ok()
}

/// Why a proposal is not known to have applied.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// The state machine refused it: it did not apply.
    #[error("refused: {0}")]
    Refused(String),
    /// No answer (a timeout, a change of leader): it may still apply.
    #[error("{0}")]
    Unknown(String),
}

/// How actors write to governance state and record what they did: the node hands in its Raft
/// cluster and its audit outbox.
#[async_trait::async_trait]
pub trait Proposer: Send + Sync {
    /// Whether this node leads now; scheduled work runs on the leader only.
    fn is_leader(&self) -> bool;
    /// Replicates one proposal; the error says whether it was refused or may still apply.
    async fn propose(&self, proposal: Proposal) -> Result<(), ProposeError>;
    /// Records the event of work the node does by itself (no request records it), as its
    /// stream's audit mode says: in a fail-closed stream, durable before it returns.
    async fn record(&self, record: audit::AuditRecord) -> Result<(), String>;
}

/// What every supervisor and tenant actor of a node shares.
#[derive(Clone)]
pub struct ActorDeps {
    pub node_id: u64,
    pub policy: RestartPolicy,
    pub directory: Arc<TenantDirectory>,
    pub custody: Arc<custody::Custody>,
    /// None where nothing may be proposed (tests of supervision alone).
    pub proposer: Option<Arc<dyn Proposer>>,
    /// How often the leader scans every tenant's keys for scheduled work.
    pub maintenance_interval: Duration,
    /// A tenant's tree on this node stops after serving no request for this long.
    pub idle_stop_after: Duration,
}

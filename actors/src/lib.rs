//! Per-tenant supervised actors (ractor).
//!
//! Each node runs one [`NodeSupervisor`] that keeps exactly one tenant actor alive for every
//! *active* tenant in the replicated governance state, as that state is applied on this node.
//! A tenant actor that fails is restarted with exponential backoff; a tenant whose actor fails
//! more than `max_restarts` times within `restart_window` is marked degraded and left stopped,
//! so one tenant's failure never spreads to others. Suspending or deleting a tenant stops its
//! actor. The session, policy, custody and telemetry children of a tenant grow under the
//! tenant actor in later work.
//!
//! # Layout
//! - `node/` — the node-level supervisor: `msg.rs` (its closed message enum), `actor.rs`.
//! - `tenant/` — the tenant actor: `msg.rs`, `actor.rs`.
//!
//! Actors learn about governance changes only from state applied through Raft (the node sends
//! [`NodeMsg::Sync`]); they never message actors on other nodes. Actor names carry the node id
//! and the tenant id, because ractor's registry is process-wide and `custos dev` runs several
//! nodes in one process.

mod node;
mod tenant;

pub use node::actor::{NodeSupervisor, SupervisorArgs};
pub use node::msg::{NodeMsg, TenantActorState, TenantHealth};
pub use tenant::msg::TenantMsg;

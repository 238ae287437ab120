//! Custos' replicated governance: openraft on sled, the governance state machine, and the
//! node-to-node transport.
//!
//! Governance state (tenants, the admin credential, the key registry — tenant key roots and
//! L3 key metadata with wrapped material — access control: custom roles, ABAC rules,
//! just-in-time grants and API keys — sign-in sessions, and each tenant's directory of people
//! and groups) is a Raft-replicated state machine. Every node holds
//! a full copy; writes go through the leader and reads are linearizable unless a caller asks
//! for a stale read.
//!
//! # Layout
//! - `types.rs` — identifiers ([`TenantId`], [`RequestId`], [`NodeId`]) and [`NodeInfo`].
//! - `command.rs` — [`Proposal`], [`Command`] and their outcomes ([`Response`], [`Rejection`]).
//! - `state.rs` — the data model: [`Tenant`], [`TenantCustody`], [`KeyRecord`], [`KeyVersion`].
//! - `access.rs` — access-control state: policy documents, just-in-time grants, API keys.
//! - `directory.rs` — each tenant's directory (SCIM users and groups) and native sign-in.
//! - `store/` — the only code that touches the storage engine: the storage trait
//!   (`engine.rs`), its sled implementation (`sled_engine.rs`, the only file importing sled),
//!   the value codec (`codec.rs`), the log store, the state machine with snapshots, copies
//!   of the state read beside applies (`copies.rs`), snapshot data read on first use
//!   (`snapshot_data.rs`), and the read-only [`GovernanceReader`].
//! - `network/` — bincode-over-HTTPS client and server for Raft RPCs and leader operations.
//! - `batcher.rs` — leader-side batching of concurrent proposals into one log entry.
//! - `cluster.rs` — [`Cluster`], the handle the node uses: start, init, write, read barrier,
//!   membership, status.
//! - `prevote.rs` — pre-vote: a voter starts an election only when a majority of voters hears
//!   no leader, so a node the leader cannot reach for a while does not depose it.
//!
//! This crate never imports ractor: actors learn about changes from the node, not from Raft
//! internals.

// openraft's StorageError is large and its size is not ours to choose; boxing it at every
// storage call would only add allocations on the apply path.
#![allow(clippy::result_large_err)]

pub mod access;
mod batcher;
pub mod cluster;
pub mod command;
pub mod directory;
pub mod network;
mod prevote;
pub mod state;
pub mod store;
pub mod types;

pub use cluster::{
    Cluster, ClusterError, ClusterOptions, ClusterStatus, Consistency, MemberStatus, NodeStatus, StartError,
};
pub use command::{
    CarriedAudit, CarriedEvent, CarriedPosition, Command, Output, Proposal, Proposals, Rejection, Response,
    MAX_CARRIED_AUDIT_BYTES, MAX_CARRIED_DROPPED_PER_APPLY, MAX_KEYS_PER_TENANT, MAX_KEY_VERSIONS,
};
pub use state::{
    check_display_name, CoreProviderKind, KeyAlgorithm, KeyChange, KeyPurpose, KeyRecord, KeyState, KeyVersion,
    PendingShred, Tenant, TenantCustody, TenantStatus,
};
pub use store::GovernanceReader;
pub use types::{
    ApiKeyId, DirectoryId, GrantId, InvalidId, KeyId, NodeId, NodeInfo, RegionLabel, RequestId, SessionId, TenantId,
};

openraft::declare_raft_types!(
    /// The openraft type configuration of the governance group.
    pub TypeConfig:
        D = Proposals,
        R = Vec<Response>,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = store::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

//! The node-to-node transport: Raft RPCs and leader operations as bincode over HTTPS with
//! mutual TLS. Peers authenticate each other with certificates from the cluster CA; the TLS
//! configurations are built by the caller and handed in.

mod client;
mod server;

pub use client::{error_chain, CallError, Network, PeerClient};
pub use server::router;

/// Request paths on the Raft listener.
pub(crate) mod path {
    pub const APPEND: &str = "/raft/append";
    pub const VOTE: &str = "/raft/vote";
    pub const SNAPSHOT: &str = "/raft/snapshot";
    pub const LEADER_OP: &str = "/cluster/leader-op";
    pub const PRE_VOTE: &str = "/raft/pre-vote";
}

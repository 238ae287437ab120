use custos_raft::{Tenant, TenantId};
use ractor::RpcReplyPort;

use crate::directory::TenantHealth;

/// Messages of the node supervisor.
#[derive(Debug)]
pub enum NodeMsg {
    /// Every tenant in the applied governance state (any status). Active tenants get an actor
    /// tree; the others, and tenants not listed, lose theirs.
    Sync(Vec<Tenant>),
    /// Tenants that changed since the last message: each is started, updated or stopped.
    Changed(Vec<Tenant>),
    /// Restart a failed tenant supervisor once its backoff has passed.
    Restart(TenantId),
    /// The state of every tenant's actors on this node.
    Health(RpcReplyPort<Vec<TenantHealth>>),
    /// Periodic: on the leader, every tenant runs its key schedule.
    ScheduleTick,
}

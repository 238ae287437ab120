use custos_raft::{Tenant, TenantId};
use ractor::RpcReplyPort;
use serde::Serialize;

/// Messages of the node supervisor.
#[derive(Debug)]
pub enum NodeMsg {
    /// Every tenant in the applied governance state (any status). Active tenants get an actor;
    /// the others, and tenants not listed, lose theirs.
    Sync(Vec<Tenant>),
    /// Tenants that changed since the last message: each is started, updated or stopped.
    Changed(Vec<Tenant>),
    /// Restart a failed tenant actor once its backoff has passed.
    Restart(TenantId),
    /// The state of every tenant actor on this node.
    Health(RpcReplyPort<Vec<TenantHealth>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantActorState {
    Running,
    /// Failed; a restart is scheduled.
    Restarting,
    /// Failed too often; left stopped until the tenant changes or the node restarts.
    Degraded,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantHealth {
    pub tenant_id: String,
    pub state: TenantActorState,
    /// Failures within the current restart window.
    pub recent_failures: usize,
}

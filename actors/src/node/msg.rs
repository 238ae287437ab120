use std::collections::BTreeMap;

use custos_raft::{KeyId, KeyRecord, Tenant, TenantId};
use ractor::RpcReplyPort;

use crate::directory::TenantHealth;

/// Messages of the node supervisor.
#[derive(Debug)]
pub enum NodeMsg {
    /// Every tenant in the applied governance state (any status). Active tenants may get an
    /// actor tree; the others, and tenants not listed, lose theirs.
    Sync(Vec<Tenant>),
    /// Tenants that changed since the last message: each is updated or stopped.
    Changed(Vec<Tenant>),
    /// A request found no actors of this tenant on this node: start them if it is active. The
    /// answer, if asked for, says whether the tenant is active in the applied state (its
    /// actors then run, start, wait for a restart, or are degraded, which admission reports).
    Activate(TenantId, Option<RpcReplyPort<bool>>),
    /// Restart a failed tenant supervisor once its backoff has passed.
    Restart(TenantId),
    /// Periodic: stop the trees that served no request for the idle time.
    RetireIdle,
    /// A tree stopped for idleness has finished stopping.
    Retired(TenantId),
    /// The state of every tenant's actors on this node.
    Health(RpcReplyPort<Vec<TenantHealth>>),
    /// Periodic: on the leader, scan every tenant's keys for scheduled work that is due.
    ScheduleTick,
    /// A scan's result: the keys with due work, by tenant (their trees start if idle), and
    /// where the next scan goes on.
    Due { due: BTreeMap<TenantId, Vec<KeyId>>, resume_after: Option<KeyRecord> },
}

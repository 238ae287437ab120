use custos_raft::Tenant;
use ractor::RpcReplyPort;
use serde::{Deserialize, Serialize};

/// The four children of a tenant supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildKind {
    Session,
    Policy,
    Custody,
    Telemetry,
}

impl ChildKind {
    pub const ALL: [ChildKind; 4] = [ChildKind::Session, ChildKind::Policy, ChildKind::Custody, ChildKind::Telemetry];

    pub fn as_str(self) -> &'static str {
        match self {
            ChildKind::Session => "session",
            ChildKind::Policy => "policy",
            ChildKind::Custody => "custody",
            ChildKind::Telemetry => "telemetry",
        }
    }
}

/// One child as its tenant supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChildHealth {
    pub child: ChildKind,
    /// The child answered a health probe.
    pub healthy: bool,
}

/// Messages of a tenant supervisor.
#[derive(Debug)]
pub enum TenantMsg {
    /// The tenant's record changed in governance state.
    Update(Tenant),
    /// The revision of the record this tenant's actors work from.
    Revision(RpcReplyPort<u64>),
    /// Probes every child.
    Health(RpcReplyPort<Vec<ChildHealth>>),
    /// Starts the children that are not running, once a restart backoff has passed.
    RestartChildren,
    /// Does the scheduled work of these keys (forwarded to the custody actor).
    RunSchedule(Vec<custos_raft::KeyId>),
    /// Fails the supervisor itself, to exercise the node supervisor in tests.
    #[cfg(test)]
    Crash,
}

/// Messages of the session, policy and telemetry actors: health probes, and the faults that
/// supervision and chaos tests inject.
#[derive(Debug)]
pub enum ComponentMsg {
    Health(RpcReplyPort<()>),
    /// Fails the actor: the fault hook of supervision and chaos tests (see
    /// [`crate::inject_fault`]).
    InjectFault,
}

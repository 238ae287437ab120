use custos_raft::Tenant;
use ractor::RpcReplyPort;

/// Messages of a tenant actor.
#[derive(Debug)]
pub enum TenantMsg {
    /// The tenant's record changed in governance state.
    Update(Tenant),
    /// The revision of the record this actor works from.
    Revision(RpcReplyPort<u64>),
    /// Fails the actor, to exercise supervision in tests.
    #[cfg(test)]
    Crash,
}

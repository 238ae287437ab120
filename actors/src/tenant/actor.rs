use custos_raft::Tenant;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::msg::TenantMsg;

/// The root of one tenant's work on this node. It holds the tenant's governance record, which
/// it rebuilds from the replicated state whenever it (re)starts.
pub struct TenantActor;

impl Actor for TenantActor {
    type Msg = TenantMsg;
    type State = Tenant;
    type Arguments = Tenant;

    async fn pre_start(&self, _myself: ActorRef<TenantMsg>, tenant: Tenant) -> Result<Tenant, ActorProcessingErr> {
        tracing::debug!(tenant_id = %tenant.id, revision = tenant.revision, "tenant actor started");
        Ok(tenant)
    }

    async fn handle(
        &self,
        _myself: ActorRef<TenantMsg>,
        message: TenantMsg,
        state: &mut Tenant,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            TenantMsg::Update(tenant) => {
                // Updates arrive in apply order; an older revision never replaces a newer one.
                if tenant.revision >= state.revision {
                    *state = tenant;
                }
            }
            TenantMsg::Revision(reply) => {
                // The caller may have timed out; nothing to do then.
                let _ = reply.send(state.revision);
            }
            #[cfg(test)]
            TenantMsg::Crash => return Err("crash requested by a test".into()),
        }
        Ok(())
    }
}

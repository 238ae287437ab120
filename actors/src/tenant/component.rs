use custos_raft::TenantId;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::msg::{ChildKind, ComponentMsg};

/// The session, policy or telemetry actor of one tenant: supervised and answering health.
/// The work their names stand for runs in node-wide components shared by every tenant:
/// sessions in Raft state, decisions in the `PolicyCache`, audit in the node's outbox (one
/// chain per tenant), so one group commit or cache serves all tenants.
pub struct ComponentActor {
    pub kind: ChildKind,
}

impl Actor for ComponentActor {
    type Msg = ComponentMsg;
    type State = TenantId;
    type Arguments = TenantId;

    async fn pre_start(
        &self,
        _myself: ActorRef<ComponentMsg>,
        tenant: TenantId,
    ) -> Result<TenantId, ActorProcessingErr> {
        tracing::debug!(tenant_id = %tenant, child = self.kind.as_str(), "tenant actor started");
        Ok(tenant)
    }

    async fn handle(
        &self,
        _myself: ActorRef<ComponentMsg>,
        message: ComponentMsg,
        _tenant: &mut TenantId,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ComponentMsg::Health(reply) => {
                // The caller may have timed out; nothing to do then.
                let _ = reply.send(());
            }
            ComponentMsg::InjectFault => return Err("fault injected".into()),
        }
        Ok(())
    }
}

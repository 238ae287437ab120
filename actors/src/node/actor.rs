use std::collections::BTreeMap;

use custos_raft::{Tenant, TenantId, TenantStatus};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::msg::NodeMsg;
use crate::directory::TenantActorState;
use crate::restart::{FailureWindow, Verdict};
use crate::tenant::msg::TenantMsg;
use crate::tenant::supervisor::{TenantArgs, TenantSupervisor};
use crate::ActorDeps;

/// The registry name of a tenant's supervisor on a node.
pub fn tenant_supervisor_name(node_id: u64, tenant: &TenantId) -> String {
    format!("custos/node-{node_id}/tenant/{tenant}")
}

/// Keeps one supervised tenant supervisor per active tenant on this node.
pub struct NodeSupervisor;

struct Slot {
    record: Tenant,
    actor: Option<ActorRef<TenantMsg>>,
    failures: FailureWindow,
    degraded: bool,
}

pub struct SupervisorState {
    deps: ActorDeps,
    slots: BTreeMap<TenantId, Slot>,
}

impl SupervisorState {
    fn actor_name(&self, id: &TenantId) -> String {
        tenant_supervisor_name(self.deps.node_id, id)
    }
}

async fn spawn_tenant(myself: &ActorRef<NodeMsg>, state: &mut SupervisorState, id: &TenantId) {
    let name = state.actor_name(id);
    let deps = state.deps.clone();
    let Some(slot) = state.slots.get_mut(id) else { return };
    let args = TenantArgs { tenant: slot.record.clone(), deps: deps.clone() };
    match Actor::spawn_linked(Some(name), TenantSupervisor, args, myself.get_cell()).await {
        Ok((actor, _)) => {
            slot.actor = Some(actor);
            slot.degraded = false;
        }
        Err(e) => {
            tracing::warn!(tenant_id = %id, error = %e, "spawning tenant supervisor failed");
            record_failure(myself, &deps, id, slot);
        }
    }
}

fn stop_tenant(state: &mut SupervisorState, id: &TenantId) {
    state.deps.directory.remove(id);
    if let Some(Slot { actor: Some(actor), .. }) = state.slots.remove(id) {
        actor.stop(Some("tenant no longer active".into()));
    }
}

/// Brings one tenant's actors in line with its record: started, updated or stopped.
async fn apply_tenant(myself: &ActorRef<NodeMsg>, state: &mut SupervisorState, tenant: Tenant) {
    let id = tenant.id.clone();
    if tenant.status != TenantStatus::Active {
        stop_tenant(state, &id);
        // The custody actor evicts on stop, but this node may have been down when the tenant
        // was suspended or deleted, and an on-disk edge cache outlives the process.
        state.deps.custody.edge().evict_tenant(&id);
        return;
    }
    match state.slots.get_mut(&id) {
        Some(slot) if slot.record.revision >= tenant.revision => {}
        Some(slot) => {
            slot.record = tenant.clone();
            match (&slot.actor, slot.degraded) {
                (Some(actor), _) => {
                    // The actor may be stopping after a failure; the restart then starts from
                    // the new record anyway.
                    let _ = actor.cast(TenantMsg::Update(tenant));
                }
                (None, true) => {
                    // A changed tenant gets a fresh chance.
                    slot.failures.clear();
                    spawn_tenant(myself, state, &id).await;
                }
                (None, false) => {}
            }
        }
        None => {
            let slot = Slot { record: tenant, actor: None, failures: FailureWindow::default(), degraded: false };
            state.slots.insert(id.clone(), slot);
            spawn_tenant(myself, state, &id).await;
        }
    }
}

/// Counts a failure of `slot`'s supervisor and schedules a restart, or marks it degraded.
fn record_failure(myself: &ActorRef<NodeMsg>, deps: &ActorDeps, id: &TenantId, slot: &mut Slot) {
    slot.actor = None;
    match slot.failures.record(&deps.policy) {
        Verdict::GiveUp => {
            slot.degraded = true;
            deps.directory.publish(id, TenantActorState::Degraded, slot.failures.recent());
            tracing::error!(tenant_id = %id, failures = slot.failures.recent(), "tenant supervisor failed too often; tenant degraded");
        }
        Verdict::RestartAfter(delay) => {
            deps.directory.publish(id, TenantActorState::Restarting, slot.failures.recent());
            let id = id.clone();
            myself.send_after(delay, move || NodeMsg::Restart(id));
        }
    }
}

impl Actor for NodeSupervisor {
    type Msg = NodeMsg;
    type State = SupervisorState;
    type Arguments = ActorDeps;

    async fn pre_start(
        &self,
        myself: ActorRef<NodeMsg>,
        deps: ActorDeps,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        // One timer for the node, not one per tenant.
        myself.send_interval(deps.maintenance_interval, || NodeMsg::ScheduleTick);
        Ok(SupervisorState { deps, slots: BTreeMap::new() })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<NodeMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        for slot in state.slots.values() {
            if let Some(actor) = &slot.actor {
                actor.stop(Some("node stopping".into()));
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<NodeMsg>,
        message: NodeMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            NodeMsg::Sync(tenants) => {
                let listed: std::collections::BTreeSet<TenantId> = tenants.iter().map(|t| t.id.clone()).collect();
                let gone: Vec<TenantId> = state.slots.keys().filter(|id| !listed.contains(*id)).cloned().collect();
                for id in gone {
                    stop_tenant(state, &id);
                }
                for tenant in tenants {
                    apply_tenant(&myself, state, tenant).await;
                }
            }
            NodeMsg::Changed(tenants) => {
                for tenant in tenants {
                    apply_tenant(&myself, state, tenant).await;
                }
            }
            NodeMsg::Restart(id) => {
                if state.slots.get(&id).is_some_and(|s| s.actor.is_none() && !s.degraded) {
                    spawn_tenant(&myself, state, &id).await;
                }
            }
            NodeMsg::ScheduleTick => {
                if state.deps.proposer.as_ref().is_some_and(|p| p.is_leader()) {
                    for actor in state.slots.values().filter_map(|s| s.actor.as_ref()) {
                        let _ = actor.cast(TenantMsg::ScheduleTick);
                    }
                }
            }
            NodeMsg::Health(reply) => {
                // The caller may have timed out; nothing to do then.
                let _ = reply.send(state.deps.directory.health());
            }
        }
        Ok(())
    }

    // Overridden: ractor's default stops the supervisor when any child exits.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<NodeMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason.unwrap_or_else(|| "stopped".into())),
            _ => return Ok(()),
        };
        // Children stopped on purpose were removed from `slots` first, so only unexpected exits
        // match here.
        let failed = state.slots.iter().find(|(_, s)| s.actor.as_ref().is_some_and(|a| a.get_id() == cell.get_id()));
        if let Some((id, _)) = failed {
            let id = id.clone();
            tracing::warn!(tenant_id = %id, reason = %reason, "tenant supervisor exited");
            let deps = state.deps.clone();
            if let Some(slot) = state.slots.get_mut(&id) {
                record_failure(&myself, &deps, &id, slot);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use custos_raft::{CoreProviderKind, RegionLabel, Tenant, TenantId, TenantStatus};
    use ractor::{call_t, Actor, ActorRef};

    use super::*;
    use crate::custody::edge::MemoryEdge;
    use crate::custody::master::MasterKey;
    use crate::custody::provider::SealedLocal;
    use crate::custody::{Custody, SecretKey};
    use crate::directory::{TenantDirectory, TenantHealth};
    use crate::tenant::msg::ComponentMsg;
    use crate::{CustodyMsg, RestartPolicy};

    fn tenant(id: &str, status: TenantStatus, revision: u64) -> Tenant {
        Tenant {
            id: TenantId::new(id).unwrap(),
            display_name: id.into(),
            region: RegionLabel::new("eu").unwrap(),
            status,
            created_at_ms: 0,
            updated_at_ms: 0,
            revision,
        }
    }

    fn deps(node_id: u64, max_restarts: usize, dir: &tempfile::TempDir) -> ActorDeps {
        let (_log, _sm, reader) = custos_raft::store::open(
            dir.path(),
            custos_raft::store::StoreOptions { dedup_window_entries: 1000, ..Default::default() },
        )
        .unwrap();
        let provider = Arc::new(SealedLocal::new(MasterKey::new(SecretKey::generate())));
        let edge = Arc::new(MemoryEdge::new(16, Duration::from_secs(60)));
        ActorDeps {
            node_id,
            policy: RestartPolicy {
                max_restarts,
                window: Duration::from_secs(60),
                backoff_base: Duration::from_millis(10),
                backoff_max: Duration::from_millis(40),
            },
            directory: Arc::new(TenantDirectory::new(8)),
            custody: Arc::new(Custody::new(reader, vec![provider], CoreProviderKind::SealedLocal, edge)),
            proposer: None,
            maintenance_interval: Duration::from_secs(3600),
        }
    }

    async fn start(deps: ActorDeps) -> ActorRef<NodeMsg> {
        Actor::spawn(None, NodeSupervisor, deps).await.expect("spawn supervisor").0
    }

    async fn health(sup: &ActorRef<NodeMsg>) -> Vec<TenantHealth> {
        call_t!(sup, NodeMsg::Health, 1000).expect("health")
    }

    fn tenant_actor(node_id: u64, id: &str) -> ActorRef<TenantMsg> {
        ractor::registry::where_is(format!("custos/node-{node_id}/tenant/{id}"))
            .expect("tenant actor registered")
            .into()
    }

    fn custody_actor(node_id: u64, id: &str) -> Option<ActorRef<CustodyMsg>> {
        ractor::registry::where_is(format!("custos/node-{node_id}/tenant/{id}/custody")).map(Into::into)
    }

    /// Waits until `tenant`'s published state is `want` with `failures` recent failures.
    async fn wait_for(sup: &ActorRef<NodeMsg>, id: &str, want: TenantActorState, failures: usize) -> TenantHealth {
        let mut last = None;
        for _ in 0..300 {
            let h = health(sup).await;
            if let Some(t) = h.into_iter().find(|t| t.tenant_id == id) {
                if t.state == want && t.recent_failures == failures {
                    return t;
                }
                last = Some(t);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("tenant {id} never reached {want:?} with {failures} failures; last seen {last:?}");
    }

    #[tokio::test]
    async fn active_tenants_get_actor_trees_and_others_lose_them() {
        let dir = tempfile::tempdir().unwrap();
        let sup = start(deps(101, 3, &dir)).await;
        sup.cast(NodeMsg::Sync(vec![
            tenant("a", TenantStatus::Active, 1),
            tenant("b", TenantStatus::Active, 2),
            tenant("c", TenantStatus::Suspended, 3),
        ]))
        .unwrap();
        wait_for(&sup, "a", TenantActorState::Running, 0).await;
        wait_for(&sup, "b", TenantActorState::Running, 0).await;
        assert_eq!(health(&sup).await.len(), 2);
        // Each tenant has its four children, named with the tenant id, all answering.
        let children = call_t!(tenant_actor(101, "a"), TenantMsg::Health, 2000).unwrap();
        assert_eq!(children.len(), 4);
        assert!(children.iter().all(|c| c.healthy), "{children:?}");
        for kind in ["session", "policy", "custody", "telemetry"] {
            assert!(ractor::registry::where_is(format!("custos/node-101/tenant/a/{kind}")).is_some(), "{kind}");
        }

        // An update reaches the running supervisor.
        sup.cast(NodeMsg::Changed(vec![tenant("a", TenantStatus::Active, 9)])).unwrap();
        let _ = health(&sup).await;
        let revision: u64 = call_t!(tenant_actor(101, "a"), TenantMsg::Revision, 1000).unwrap();
        assert_eq!(revision, 9);

        // Suspending "a" and deleting "b" stops both trees, children included.
        sup.cast(NodeMsg::Sync(vec![tenant("a", TenantStatus::Suspended, 10), tenant("b", TenantStatus::Deleted, 11)]))
            .unwrap();
        assert!(health(&sup).await.is_empty());
        for _ in 0..100 {
            if custody_actor(101, "a").is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(custody_actor(101, "a").is_none(), "the suspended tenant's custody actor stopped");
        sup.stop(None);
    }

    #[tokio::test]
    async fn custody_faults_restart_then_degrade_only_that_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let deps = deps(102, 2, &dir);
        let directory = deps.directory.clone();
        let sup = start(deps).await;
        sup.cast(NodeMsg::Sync(vec![tenant("bad", TenantStatus::Active, 1), tenant("good", TenantStatus::Active, 1)]))
            .unwrap();
        wait_for(&sup, "bad", TenantActorState::Running, 0).await;

        // Two faults are restarted after backoff; the third exceeds the limit of two.
        for round in 1..=3 {
            let mut custody = None;
            for _ in 0..300 {
                custody = custody_actor(102, "bad");
                if custody.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            custody.expect("custody actor running").cast(CustodyMsg::InjectFault).unwrap();
            let want = if round <= 2 { TenantActorState::Running } else { TenantActorState::Degraded };
            wait_for(&sup, "bad", want, round).await;
            // The other tenant serves throughout.
            assert!(directory.admit(&TenantId::new("good").unwrap()).is_ok(), "after fault {round}");
        }
        assert!(matches!(directory.admit(&TenantId::new("bad").unwrap()), Err(crate::Refusal::Degraded(_))));
        // A degraded tenant's children are stopped.
        assert!(ractor::registry::where_is("custos/node-102/tenant/bad/session").is_none());

        // Other children count too, and a change to the degraded tenant gives it a fresh start.
        sup.cast(NodeMsg::Changed(vec![tenant("bad", TenantStatus::Active, 2)])).unwrap();
        wait_for(&sup, "bad", TenantActorState::Running, 0).await;
        let session: ActorRef<ComponentMsg> =
            ractor::registry::where_is("custos/node-102/tenant/bad/session").expect("session").into();
        session.cast(ComponentMsg::InjectFault).unwrap();
        wait_for(&sup, "bad", TenantActorState::Running, 1).await;
        sup.stop(None);
    }

    #[tokio::test]
    async fn a_failing_tenant_supervisor_is_restarted_by_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let sup = start(deps(103, 2, &dir)).await;
        sup.cast(NodeMsg::Sync(vec![tenant("t", TenantStatus::Active, 1)])).unwrap();
        wait_for(&sup, "t", TenantActorState::Running, 0).await;
        tenant_actor(103, "t").cast(TenantMsg::Crash).unwrap();
        // The node supervisor counts the failure and restarts the tree; the new tree starts
        // its own count.
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if ractor::registry::where_is("custos/node-103/tenant/t/custody").is_some()
                && health(&sup).await.iter().any(|t| t.state == TenantActorState::Running)
            {
                sup.stop(None);
                return;
            }
        }
        panic!("the tenant tree was not restarted");
    }
}

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use custos_raft::{Tenant, TenantId, TenantStatus};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::msg::{NodeMsg, TenantActorState, TenantHealth};
use crate::tenant::actor::TenantActor;
use crate::tenant::msg::TenantMsg;

/// Restart policy and naming of the node supervisor.
#[derive(Debug, Clone)]
pub struct SupervisorArgs {
    pub node_id: u64,
    /// Failures tolerated within `restart_window` before a tenant is marked degraded.
    pub max_restarts: usize,
    pub restart_window: Duration,
    /// First restart delay; doubles with each failure in the window, up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

/// Keeps one supervised tenant actor per active tenant on this node.
pub struct NodeSupervisor;

struct Slot {
    record: Tenant,
    actor: Option<ActorRef<TenantMsg>>,
    failures: VecDeque<Instant>,
    state: TenantActorState,
}

pub struct SupervisorState {
    args: SupervisorArgs,
    slots: BTreeMap<TenantId, Slot>,
}

impl SupervisorState {
    fn actor_name(&self, id: &TenantId) -> String {
        format!("custos/node-{}/tenant/{id}", self.args.node_id)
    }
}

async fn spawn_tenant(myself: &ActorRef<NodeMsg>, state: &mut SupervisorState, id: &TenantId) {
    let name = state.actor_name(id);
    let Some(slot) = state.slots.get_mut(id) else { return };
    match Actor::spawn_linked(Some(name), TenantActor, slot.record.clone(), myself.get_cell()).await {
        Ok((actor, _)) => {
            slot.actor = Some(actor);
            slot.state = TenantActorState::Running;
        }
        Err(e) => {
            tracing::warn!(tenant_id = %id, error = %e, "spawning tenant actor failed");
            record_failure(myself, &state.args, id, slot);
        }
    }
}

fn stop_tenant(state: &mut SupervisorState, id: &TenantId) {
    if let Some(Slot { actor: Some(actor), .. }) = state.slots.remove(id) {
        actor.stop(Some("tenant no longer active".into()));
    }
}

/// Brings one tenant's actor in line with its record: started, updated or stopped.
async fn apply_tenant(myself: &ActorRef<NodeMsg>, state: &mut SupervisorState, tenant: Tenant) {
    let id = tenant.id.clone();
    if tenant.status != TenantStatus::Active {
        stop_tenant(state, &id);
        return;
    }
    match state.slots.get_mut(&id) {
        Some(slot) if slot.record.revision >= tenant.revision => {}
        Some(slot) => {
            slot.record = tenant.clone();
            match (&slot.actor, slot.state) {
                (Some(actor), _) => {
                    // The actor may be stopping after a failure; the restart then starts from
                    // the new record anyway.
                    let _ = actor.cast(TenantMsg::Update(tenant));
                }
                (None, TenantActorState::Degraded) => {
                    // A changed tenant gets a fresh chance.
                    slot.failures.clear();
                    spawn_tenant(myself, state, &id).await;
                }
                (None, _) => {}
            }
        }
        None => {
            let slot =
                Slot { record: tenant, actor: None, failures: VecDeque::new(), state: TenantActorState::Restarting };
            state.slots.insert(id.clone(), slot);
            spawn_tenant(myself, state, &id).await;
        }
    }
}

/// Counts a failure of `slot`'s actor and schedules a restart, or marks it degraded.
fn record_failure(myself: &ActorRef<NodeMsg>, args: &SupervisorArgs, id: &TenantId, slot: &mut Slot) {
    let now = Instant::now();
    slot.actor = None;
    slot.failures.push_back(now);
    while slot.failures.front().is_some_and(|t| now.duration_since(*t) > args.restart_window) {
        slot.failures.pop_front();
    }
    if slot.failures.len() > args.max_restarts {
        slot.state = TenantActorState::Degraded;
        tracing::error!(tenant_id = %id, failures = slot.failures.len(), "tenant actor failed too often; tenant degraded");
        return;
    }
    slot.state = TenantActorState::Restarting;
    let exponent = (slot.failures.len() - 1).min(16) as u32;
    let delay = args.backoff_base.saturating_mul(2u32.saturating_pow(exponent)).min(args.backoff_max);
    let id = id.clone();
    myself.send_after(delay, move || NodeMsg::Restart(id));
}

impl Actor for NodeSupervisor {
    type Msg = NodeMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<NodeMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState { args, slots: BTreeMap::new() })
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
                if state.slots.get(&id).is_some_and(|s| s.actor.is_none() && s.state == TenantActorState::Restarting) {
                    spawn_tenant(&myself, state, &id).await;
                }
            }
            NodeMsg::Health(reply) => {
                let health = state
                    .slots
                    .iter()
                    .map(|(id, s)| TenantHealth {
                        tenant_id: id.to_string(),
                        state: s.state,
                        recent_failures: s.failures.len(),
                    })
                    .collect();
                // The caller may have timed out; nothing to do then.
                let _ = reply.send(health);
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
            tracing::warn!(tenant_id = %id, reason = %reason, "tenant actor exited");
            let args = state.args.clone();
            if let Some(slot) = state.slots.get_mut(&id) {
                record_failure(&myself, &args, &id, slot);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use custos_raft::{RegionLabel, Tenant, TenantId, TenantStatus};
    use ractor::{call_t, Actor, ActorRef};

    use super::*;

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

    async fn start(node_id: u64, max_restarts: usize) -> ActorRef<NodeMsg> {
        let args = SupervisorArgs {
            node_id,
            max_restarts,
            restart_window: Duration::from_secs(60),
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(40),
        };
        Actor::spawn(None, NodeSupervisor, args).await.expect("spawn supervisor").0
    }

    async fn health(sup: &ActorRef<NodeMsg>) -> Vec<TenantHealth> {
        call_t!(sup, NodeMsg::Health, 1000).expect("health")
    }

    fn tenant_actor(node_id: u64, id: &str) -> ActorRef<TenantMsg> {
        ractor::registry::where_is(format!("custos/node-{node_id}/tenant/{id}"))
            .expect("tenant actor registered")
            .into()
    }

    #[tokio::test]
    async fn active_tenants_get_actors_and_others_lose_them() {
        let sup = start(101, 3).await;
        // Two active tenants and a suspended one: two actors.
        sup.cast(NodeMsg::Sync(vec![
            tenant("a", TenantStatus::Active, 1),
            tenant("b", TenantStatus::Active, 2),
            tenant("c", TenantStatus::Suspended, 3),
        ]))
        .unwrap();
        let h = health(&sup).await;
        assert_eq!(h.iter().map(|t| t.tenant_id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(h.iter().all(|t| t.state == TenantActorState::Running));

        // An update reaches the running actor.
        sup.cast(NodeMsg::Sync(vec![tenant("a", TenantStatus::Active, 9), tenant("b", TenantStatus::Active, 2)]))
            .unwrap();
        let _ = health(&sup).await;
        let revision: u64 = call_t!(tenant_actor(101, "a"), TenantMsg::Revision, 1000).unwrap();
        assert_eq!(revision, 9);

        // Suspending "a" and deleting "b" stops both actors.
        sup.cast(NodeMsg::Sync(vec![tenant("a", TenantStatus::Suspended, 10), tenant("b", TenantStatus::Deleted, 11)]))
            .unwrap();
        assert!(health(&sup).await.is_empty());
        sup.stop(None);
    }

    #[tokio::test]
    async fn failing_tenant_restarts_then_degrades_without_touching_others() {
        let sup = start(102, 2).await;
        sup.cast(NodeMsg::Sync(vec![tenant("bad", TenantStatus::Active, 1), tenant("good", TenantStatus::Active, 1)]))
            .unwrap();
        let _ = health(&sup).await;

        // Each crash is followed by a restart after backoff, until the third crash exceeds the
        // limit of two restarts in the window.
        for round in 1..=3 {
            tenant_actor(102, "bad").cast(TenantMsg::Crash).unwrap();
            let want = if round <= 2 { TenantActorState::Running } else { TenantActorState::Degraded };
            let mut state = None;
            for _ in 0..200 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let h = health(&sup).await;
                let bad = h.iter().find(|t| t.tenant_id == "bad").expect("bad tenant tracked");
                state = Some(bad.state);
                // Wait until this crash was counted and its outcome (restart or degrade) happened.
                if bad.recent_failures == round && bad.state == want {
                    break;
                }
            }
            assert_eq!(state, Some(want), "after crash {round}");
        }

        // The other tenant kept running throughout, and the supervisor is alive.
        let h = health(&sup).await;
        assert_eq!(h.iter().find(|t| t.tenant_id == "good").map(|t| t.state), Some(TenantActorState::Running));

        // A change to the degraded tenant gives it a fresh start.
        sup.cast(NodeMsg::Sync(vec![tenant("bad", TenantStatus::Active, 2), tenant("good", TenantStatus::Active, 1)]))
            .unwrap();
        let h = health(&sup).await;
        assert_eq!(h.iter().find(|t| t.tenant_id == "bad").map(|t| t.state), Some(TenantActorState::Running));
        sup.stop(None);
    }
}

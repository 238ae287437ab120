//! The tenant supervisor: one per active tenant in use on a node, with four children (session,
//! policy, custody, telemetry). A failed child is restarted after a backoff; more failures
//! than the restart policy allows within its window stop every child and mark the tenant
//! degraded on this node, until its record changes.

use std::collections::BTreeMap;

use custos_raft::Tenant;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::component::ComponentActor;
use super::msg::{ChildHealth, ChildKind, ComponentMsg, TenantMsg};
use crate::custody::actor::{CustodyActor, CustodyArgs, CustodyMsg};
use crate::directory::TenantActorState;
use crate::restart::{FailureWindow, Verdict};
use crate::ActorDeps;

/// The registry name of one child of a tenant on a node.
pub fn child_name(node_id: u64, tenant: &custos_raft::TenantId, kind: ChildKind) -> String {
    format!("{}/{}", crate::node::actor::tenant_supervisor_name(node_id, tenant), kind.as_str())
}

/// How long a health probe of one child may take.
const PROBE_TIMEOUT_MS: u64 = 500;
/// How long a stopping supervisor waits for each child to stop.
const CHILD_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub struct TenantSupervisor;

pub struct TenantArgs {
    pub tenant: Tenant,
    pub deps: ActorDeps,
}

pub struct TenantState {
    /// This supervisor, which owns the tenant's entry in the directory while it runs.
    id: ractor::ActorId,
    tenant: Tenant,
    deps: ActorDeps,
    children: BTreeMap<ChildKind, ActorCell>,
    failures: FailureWindow,
    degraded: bool,
}

impl TenantState {
    fn child_name(&self, kind: ChildKind) -> String {
        child_name(self.deps.node_id, &self.tenant.id, kind)
    }

    fn publish(&self) {
        let state = if self.degraded {
            TenantActorState::Degraded
        } else if self.children.len() < ChildKind::ALL.len() {
            TenantActorState::Restarting
        } else {
            TenantActorState::Running
        };
        self.deps.directory.publish_owned(&self.tenant.id, self.id, state, self.failures.recent());
    }

    /// Starts every child that is not running. A child that fails to start counts as a failure.
    async fn start_children(&mut self, myself: &ActorRef<TenantMsg>) {
        for kind in ChildKind::ALL {
            if self.children.contains_key(&kind) {
                continue;
            }
            match self.spawn_child(myself, kind).await {
                Ok(cell) => {
                    self.children.insert(kind, cell);
                }
                Err(e) => {
                    tracing::warn!(tenant_id = %self.tenant.id, child = kind.as_str(), error = %e, "starting a tenant actor failed");
                    self.child_failed(myself);
                    return;
                }
            }
        }
        self.publish();
    }

    async fn spawn_child(
        &self,
        myself: &ActorRef<TenantMsg>,
        kind: ChildKind,
    ) -> Result<ActorCell, ActorProcessingErr> {
        let name = Some(self.child_name(kind));
        let supervisor = myself.get_cell();
        let tenant = self.tenant.id.clone();
        let cell = match kind {
            ChildKind::Custody => {
                let args =
                    CustodyArgs { tenant, custody: self.deps.custody.clone(), proposer: self.deps.proposer.clone() };
                Actor::spawn_linked(name, CustodyActor, args, supervisor).await?.0.get_cell()
            }
            other => Actor::spawn_linked(name, ComponentActor { kind: other }, tenant, supervisor).await?.0.get_cell(),
        };
        Ok(cell)
    }

    fn stop_children(&mut self, reason: &str) {
        for (_, cell) in std::mem::take(&mut self.children) {
            cell.stop(Some(reason.into()));
        }
    }

    /// Counts a failure: schedules a restart of the missing children, or degrades the tenant.
    fn child_failed(&mut self, myself: &ActorRef<TenantMsg>) {
        match self.failures.record(&self.deps.policy) {
            Verdict::RestartAfter(delay) => {
                myself.send_after(delay, || TenantMsg::RestartChildren);
            }
            Verdict::GiveUp => {
                self.degraded = true;
                self.stop_children("tenant degraded");
                tracing::error!(tenant_id = %self.tenant.id, failures = self.failures.recent(), "tenant actors failed too often; tenant degraded on this node");
            }
        }
        self.publish();
    }

    async fn probe(&self, kind: ChildKind, cell: &ActorCell) -> bool {
        let timeout = Some(std::time::Duration::from_millis(PROBE_TIMEOUT_MS));
        let success = |answered: Result<ractor::rpc::CallResult<()>, _>| {
            matches!(answered, Ok(ractor::rpc::CallResult::Success(())))
        };
        match kind {
            ChildKind::Custody => success(
                ActorRef::<CustodyMsg>::from(cell.clone()).call(CustodyMsg::Health, timeout).await.map_err(drop),
            ),
            _ => success(
                ActorRef::<ComponentMsg>::from(cell.clone()).call(ComponentMsg::Health, timeout).await.map_err(drop),
            ),
        }
    }
}

impl Actor for TenantSupervisor {
    type Msg = TenantMsg;
    type State = TenantState;
    type Arguments = TenantArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TenantMsg>,
        args: TenantArgs,
    ) -> Result<TenantState, ActorProcessingErr> {
        Ok(TenantState {
            id: myself.get_id(),
            tenant: args.tenant,
            deps: args.deps,
            children: BTreeMap::new(),
            failures: FailureWindow::default(),
            degraded: false,
        })
    }

    async fn post_start(&self, myself: ActorRef<TenantMsg>, state: &mut TenantState) -> Result<(), ActorProcessingErr> {
        state.start_children(&myself).await;
        tracing::debug!(tenant_id = %state.tenant.id, revision = state.tenant.revision, "tenant supervisor started");
        Ok(())
    }

    async fn post_stop(&self, _myself: ActorRef<TenantMsg>, state: &mut TenantState) -> Result<(), ActorProcessingErr> {
        // Waits, so that once this supervisor has stopped its children's names are free again
        // for the tree's next start.
        for (_, cell) in std::mem::take(&mut state.children) {
            let _ = cell.stop_and_wait(Some("tenant supervisor stopping".into()), Some(CHILD_STOP_TIMEOUT)).await;
        }
        // What this tree published is stale now, even if it came after the node let go of the
        // tenant (a start racing a suspension).
        state.deps.directory.remove_owned(&state.tenant.id, state.id);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<TenantMsg>,
        message: TenantMsg,
        state: &mut TenantState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            TenantMsg::Update(tenant) => {
                // Updates arrive in apply order; an older revision never replaces a newer one.
                if tenant.revision > state.tenant.revision {
                    state.tenant = tenant;
                    if state.degraded {
                        // A changed tenant gets a fresh chance.
                        state.degraded = false;
                        state.failures.clear();
                        state.start_children(&myself).await;
                    }
                }
            }
            TenantMsg::Revision(reply) => {
                // The caller may have timed out; nothing to do then.
                let _ = reply.send(state.tenant.revision);
            }
            TenantMsg::Health(reply) => {
                let mut health = Vec::with_capacity(ChildKind::ALL.len());
                for kind in ChildKind::ALL {
                    let healthy = match state.children.get(&kind) {
                        Some(cell) => state.probe(kind, cell).await,
                        None => false,
                    };
                    health.push(ChildHealth { child: kind, healthy });
                }
                let _ = reply.send(health);
            }
            TenantMsg::RunSchedule(keys) => {
                if let Some(cell) = state.children.get(&ChildKind::Custody) {
                    // A custody actor that just failed misses this scan's work, not the next.
                    let _ = ActorRef::<CustodyMsg>::from(cell.clone()).cast(CustodyMsg::RunSchedule(keys));
                }
            }
            TenantMsg::RestartChildren => {
                if !state.degraded {
                    state.start_children(&myself).await;
                }
            }
            #[cfg(test)]
            TenantMsg::Crash => return Err("crash requested by a test".into()),
        }
        Ok(())
    }

    // Overridden: ractor's default stops the supervisor when any child exits.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<TenantMsg>,
        event: SupervisionEvent,
        state: &mut TenantState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason.unwrap_or_else(|| "stopped".into())),
            _ => return Ok(()),
        };
        // Children stopped on purpose were removed from `children` first.
        let failed = state.children.iter().find(|(_, c)| c.get_id() == cell.get_id()).map(|(k, _)| *k);
        if let Some(kind) = failed {
            state.children.remove(&kind);
            tracing::warn!(tenant_id = %state.tenant.id, child = kind.as_str(), reason = %reason, "tenant actor exited");
            state.child_failed(&myself);
        }
        Ok(())
    }
}

use std::collections::BTreeMap;
use std::time::Duration;

use custos_raft::{Tenant, TenantId, TenantStatus};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::msg::NodeMsg;
use crate::custody::actor::{due_keys, now_ms, DueScan, ScanBounds};
use crate::directory::TenantActorState;
use crate::restart::{FailureWindow, Verdict};
use crate::tenant::msg::TenantMsg;
use crate::tenant::supervisor::{TenantArgs, TenantSupervisor};
use crate::ActorDeps;

/// What one schedule scan (one per `maintenance_interval`, on the leader) may do; the next goes
/// on where it stopped.
const SCAN_BOUNDS: ScanBounds = ScanBounds { read: 100_000, due: 10_000, due_per_tenant: 256 };
/// How long a tree stopped for idleness may take to stop before its names are reused anyway.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The registry name of a tenant's supervisor on a node.
pub fn tenant_supervisor_name(node_id: u64, tenant: &TenantId) -> String {
    format!("custos/node-{node_id}/tenant/{tenant}")
}

/// How often idle trees are looked for: a quarter of the idle time, within bounds.
fn retire_interval(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// Keeps one supervised tenant supervisor per active tenant in use on this node. A tenant's
/// tree starts with its first request here (or when its key schedule has work due on the
/// leader) and stops again once it has served no request for the configured idle time, so a
/// node's memory follows the tenants it serves, not every tenant that exists.
pub struct NodeSupervisor;

/// A tenant's actor tree on this node.
enum Tree {
    /// Not started: no request since the node started, or since the tree was retired.
    Idle,
    Running(ActorRef<TenantMsg>),
    /// Failed; started again when its backoff has passed.
    Backoff,
    /// Stopping for idleness; started again once stopped if a request came meanwhile.
    Retiring {
        restart: bool,
    },
    /// Failed too often; started again when the tenant's record changes.
    Degraded,
}

struct Slot {
    record: Tenant,
    tree: Tree,
    failures: FailureWindow,
}

pub struct SupervisorState {
    deps: ActorDeps,
    /// Every active tenant in the applied state, started or not.
    slots: BTreeMap<TenantId, Slot>,
    /// The revision at which each other tenant (suspended, deleted) was last seen, so an
    /// older record still on its way cannot bring it back.
    inactive: std::collections::HashMap<TenantId, u64>,
    /// A schedule scan is running; ticks skip until its result arrives.
    scanning: bool,
    /// Where the next schedule scan goes on.
    scan_after: Option<custos_raft::KeyRecord>,
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
        Ok((actor, _)) => slot.tree = Tree::Running(actor),
        Err(e) => {
            tracing::warn!(tenant_id = %id, error = %e, "spawning tenant supervisor failed");
            record_failure(myself, &deps, id, slot);
        }
    }
}

fn stop_tenant(state: &mut SupervisorState, id: &TenantId) {
    state.deps.directory.remove(id);
    if let Some(Slot { tree: Tree::Running(actor), .. }) = state.slots.remove(id) {
        actor.stop(Some("tenant no longer active".into()));
    }
}

/// Brings one tenant's slot in line with its record: updated, or stopped and removed.
async fn apply_tenant(myself: &ActorRef<NodeMsg>, state: &mut SupervisorState, tenant: Tenant) {
    let id = tenant.id.clone();
    // Records arrive from the sync and from activations, which may have read a newer one.
    let known = state.slots.get(&id).map(|slot| slot.record.revision).or_else(|| state.inactive.get(&id).copied());
    if known.is_some_and(|revision| revision >= tenant.revision) {
        return;
    }
    if tenant.status != TenantStatus::Active {
        stop_tenant(state, &id);
        state.inactive.insert(id.clone(), tenant.revision);
        // The custody actor evicts on stop, but this node may have been down when the tenant
        // was suspended or deleted, and an on-disk edge cache outlives the process.
        state.deps.custody.edge().evict_tenant(&id);
        return;
    }
    state.inactive.remove(&id);
    match state.slots.get_mut(&id) {
        Some(slot) => {
            slot.record = tenant.clone();
            match &slot.tree {
                // The actor may be stopping after a failure; the restart then starts from the
                // new record anyway.
                Tree::Running(actor) => {
                    let _ = actor.cast(TenantMsg::Update(tenant));
                }
                Tree::Degraded => {
                    // A changed tenant gets a fresh chance.
                    slot.failures.clear();
                    spawn_tenant(myself, state, &id).await;
                }
                // Each starts from the new record when it starts.
                Tree::Idle | Tree::Backoff | Tree::Retiring { .. } => {}
            }
        }
        None => {
            let slot = Slot { record: tenant, tree: Tree::Idle, failures: FailureWindow::default() };
            state.slots.insert(id, slot);
        }
    }
}

/// Starts an idle tree, or has a retiring one start again once stopped. True if it runs now.
async fn activate(myself: &ActorRef<NodeMsg>, state: &mut SupervisorState, id: &TenantId) -> bool {
    match state.slots.get_mut(id).map(|s| &mut s.tree) {
        Some(Tree::Idle) => spawn_tenant(myself, state, id).await,
        Some(Tree::Retiring { restart }) => *restart = true,
        _ => {}
    }
    state.slots.get(id).is_some_and(|s| matches!(s.tree, Tree::Running(_)))
}

/// Counts a failure of `slot`'s supervisor and schedules a restart, or marks it degraded.
fn record_failure(myself: &ActorRef<NodeMsg>, deps: &ActorDeps, id: &TenantId, slot: &mut Slot) {
    match slot.failures.record(&deps.policy) {
        Verdict::GiveUp => {
            slot.tree = Tree::Degraded;
            deps.directory.publish(id, TenantActorState::Degraded, slot.failures.recent());
            tracing::error!(tenant_id = %id, failures = slot.failures.recent(), "tenant supervisor failed too often; tenant degraded");
        }
        Verdict::RestartAfter(delay) => {
            slot.tree = Tree::Backoff;
            deps.directory.publish(id, TenantActorState::Restarting, slot.failures.recent());
            let id = id.clone();
            myself.send_after(delay, move || NodeMsg::Restart(id));
        }
    }
}

/// Stops every running tree that served no request for the idle time. Each stops in a task of
/// its own, which reports back when the tree's names are free.
fn retire_idle(myself: &ActorRef<NodeMsg>, state: &mut SupervisorState) {
    let idle = state.deps.idle_stop_after;
    for id in state.deps.directory.idle(idle) {
        let Some(slot) = state.slots.get_mut(&id) else { continue };
        let Tree::Running(actor) = &slot.tree else { continue };
        if !state.deps.directory.retire_if_idle(&id, idle) {
            continue;
        }
        let (actor, myself) = (actor.clone(), myself.clone());
        slot.tree = Tree::Retiring { restart: false };
        tracing::debug!(tenant_id = %id, "stopping an idle tenant's actors");
        tokio::spawn(async move {
            let _ = actor.stop_and_wait(Some("idle".into()), Some(RETIRE_TIMEOUT)).await;
            let _ = myself.cast(NodeMsg::Retired(id));
        });
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
        // One timer each for the node, not one per tenant.
        myself.send_interval(deps.maintenance_interval, || NodeMsg::ScheduleTick);
        myself.send_interval(retire_interval(deps.idle_stop_after), || NodeMsg::RetireIdle);
        Ok(SupervisorState {
            deps,
            slots: BTreeMap::new(),
            inactive: std::collections::HashMap::new(),
            scanning: false,
            scan_after: None,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<NodeMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        for slot in state.slots.values() {
            if let Tree::Running(actor) = &slot.tree {
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
            NodeMsg::Activate(id, reply) => {
                // The applied record, which may be newer than the last sync: a tenant suspended
                // since the request looked is not started.
                let active = match state.deps.custody.reader().tenant(&id) {
                    Ok(Some(tenant)) => {
                        apply_tenant(&myself, state, tenant).await;
                        activate(&myself, state, &id).await;
                        state.slots.contains_key(&id)
                    }
                    Ok(None) => false,
                    Err(e) => {
                        tracing::warn!(tenant_id = %id, error = %e, "reading a tenant to start its actors failed");
                        false
                    }
                };
                if let Some(reply) = reply {
                    // The caller may have timed out; nothing to do then.
                    let _ = reply.send(active);
                }
            }
            NodeMsg::Restart(id) => {
                if state.slots.get(&id).is_some_and(|s| matches!(s.tree, Tree::Backoff)) {
                    spawn_tenant(&myself, state, &id).await;
                }
            }
            NodeMsg::RetireIdle => retire_idle(&myself, state),
            NodeMsg::Retired(id) => {
                let Some(slot) = state.slots.get_mut(&id) else { return Ok(()) };
                let Tree::Retiring { restart } = slot.tree else { return Ok(()) };
                slot.tree = Tree::Idle;
                // Whatever the stopping tree published after it was retired is stale.
                state.deps.directory.remove(&id);
                if restart {
                    spawn_tenant(&myself, state, &id).await;
                }
            }
            NodeMsg::ScheduleTick => {
                let leads = state.deps.proposer.as_ref().is_some_and(|p| p.is_leader());
                if leads && !state.scanning {
                    state.scanning = true;
                    // Degraded tenants' keys (by the node or by their own supervisor) wait
                    // until they serve again.
                    let degraded = state.deps.directory.in_state(TenantActorState::Degraded);
                    let serving: std::collections::BTreeSet<TenantId> = state
                        .slots
                        .iter()
                        .filter(|(id, s)| !matches!(s.tree, Tree::Degraded) && !degraded.contains(*id))
                        .map(|(id, _)| id.clone())
                        .collect();
                    let (reader, myself) = (state.deps.custody.reader().clone(), myself.clone());
                    let after = state.scan_after.clone();
                    let from = after.clone();
                    let scan = tokio::task::spawn_blocking(move || {
                        due_keys(&reader, now_ms(), from, |t| serving.contains(t), SCAN_BOUNDS)
                    });
                    // Always answers, so a failed scan never stops the schedule.
                    tokio::spawn(async move {
                        let scan = match scan.await {
                            Ok(Ok(scan)) => scan,
                            Ok(Err(e)) => {
                                tracing::warn!(error = %e, "scanning keys for scheduled work failed");
                                DueScan { resume_after: after, ..DueScan::default() }
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "the scan for scheduled key work panicked");
                                DueScan { resume_after: after, ..DueScan::default() }
                            }
                        };
                        let _ = myself.cast(NodeMsg::Due { due: scan.due, resume_after: scan.resume_after });
                    });
                }
            }
            NodeMsg::Due { due, resume_after } => {
                state.scanning = false;
                state.scan_after = resume_after;
                for (id, keys) in due {
                    if activate(&myself, state, &id).await {
                        if let Some(Slot { tree: Tree::Running(actor), .. }) = state.slots.get(&id) {
                            let _ = actor.cast(TenantMsg::RunSchedule(keys));
                        }
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
        // Trees stopped on purpose were removed or marked retiring first, so only unexpected
        // exits match here.
        let failed = state
            .slots
            .iter()
            .find(|(_, s)| matches!(&s.tree, Tree::Running(a) if a.get_id() == cell.get_id()))
            .map(|(id, _)| id.clone());
        if let Some(id) = failed {
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

    use custos_raft::{Command, CoreProviderKind, RegionLabel, Tenant, TenantId, TenantStatus};
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

    /// Supervisor dependencies over a fresh store in which `active` tenants exist.
    async fn deps(node_id: u64, max_restarts: usize, dir: &tempfile::TempDir, active: &[&str]) -> ActorDeps {
        let (_log, mut sm, reader) = custos_raft::store::open(
            dir.path(),
            custos_raft::store::StoreOptions { dedup_window_entries: 1000, ..Default::default() },
        )
        .unwrap();
        let provider = Arc::new(SealedLocal::new(MasterKey::new(SecretKey::generate())));
        let edge = Arc::new(MemoryEdge::new(16, Duration::from_secs(60)));
        let custody = Arc::new(Custody::new(reader, vec![provider], CoreProviderKind::SealedLocal, edge));
        for (index, id) in (1..).zip(active) {
            let id = TenantId::new(*id).unwrap();
            let roots = custody.provision_tenant(&id, None).await.unwrap();
            let region = RegionLabel::new("eu").unwrap();
            let command = Command::CreateTenant { id, display_name: "T".into(), region, custody: roots };
            crate::custody::actor::apply_for_test(&mut sm, index, command).await;
        }
        ActorDeps {
            node_id,
            policy: RestartPolicy {
                max_restarts,
                window: Duration::from_secs(60),
                backoff_base: Duration::from_millis(10),
                backoff_max: Duration::from_millis(40),
            },
            directory: Arc::new(TenantDirectory::new(8)),
            custody,
            proposer: None,
            maintenance_interval: Duration::from_secs(3600),
            idle_stop_after: Duration::from_secs(3600),
        }
    }

    /// Starts the supervisor with every tenant in `dir`'s store, and their trees.
    async fn started(deps: ActorDeps, running: &[&str]) -> ActorRef<NodeMsg> {
        let node_id = deps.node_id;
        let sup = start(deps).await;
        let records = running.iter().map(|id| tenant(id, TenantStatus::Active, 1)).collect();
        sup.cast(NodeMsg::Sync(records)).unwrap();
        for id in running {
            sup.cast(NodeMsg::Activate(TenantId::new(*id).unwrap(), None)).unwrap();
            for _ in 0..300 {
                if ractor::registry::where_is(format!("custos/node-{node_id}/tenant/{id}/custody")).is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        sup
    }

    async fn start(deps: ActorDeps) -> ActorRef<NodeMsg> {
        Actor::spawn(None, NodeSupervisor, deps).await.expect("spawn supervisor").0
    }

    /// Asks for `id`'s actors as a request would; true if the tenant is active here.
    async fn activate_now(sup: &ActorRef<NodeMsg>, id: &str) -> bool {
        let id = TenantId::new(id).unwrap();
        let answer = sup.call(|reply| NodeMsg::Activate(id, Some(reply)), Some(Duration::from_secs(1))).await;
        match answer.expect("supervisor running") {
            ractor::rpc::CallResult::Success(active) => active,
            other => panic!("no answer: {other:?}"),
        }
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
    async fn active_tenants_get_actor_trees_when_used_and_others_lose_them() {
        let dir = tempfile::tempdir().unwrap();
        let sup = start(deps(101, 3, &dir, &[]).await).await;
        sup.cast(NodeMsg::Sync(vec![
            tenant("a", TenantStatus::Active, 1),
            tenant("b", TenantStatus::Active, 2),
            tenant("c", TenantStatus::Suspended, 3),
        ]))
        .unwrap();
        // Known, but nothing runs before a tenant's first request.
        assert!(health(&sup).await.is_empty());
        assert!(ractor::registry::where_is("custos/node-101/tenant/a").is_none());
        // The supervisor checks the applied state, where only these two are active.
        for id in ["a", "b", "c"] {
            assert!(!activate_now(&sup, id).await, "{id} is not active in the applied state");
        }
        assert!(health(&sup).await.is_empty(), "tenants absent from the applied state stay idle");
        let due = [("a", "k"), ("b", "k"), ("c", "k")]
            .into_iter()
            .map(|(t, k)| (TenantId::new(t).unwrap(), vec![custos_raft::KeyId::new(k).unwrap()]))
            .collect();
        sup.cast(NodeMsg::Due { due, resume_after: None }).unwrap();
        wait_for(&sup, "a", TenantActorState::Running, 0).await;
        wait_for(&sup, "b", TenantActorState::Running, 0).await;
        assert_eq!(health(&sup).await.len(), 2, "due key work starts the active tenants' trees only");
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
    async fn a_tree_without_requests_stops_and_its_next_request_starts_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut deps = deps(104, 2, &dir, &["t"]).await;
        deps.idle_stop_after = Duration::from_millis(300);
        let directory = deps.directory.clone();
        let sup = started(deps, &["t"]).await;
        let t = TenantId::new("t").unwrap();
        wait_for(&sup, "t", TenantActorState::Running, 0).await;
        // A record older than the one the start read changes nothing.
        sup.cast(NodeMsg::Changed(vec![tenant("t", TenantStatus::Suspended, 0)])).unwrap();
        assert_eq!(health(&sup).await.len(), 1, "a stale suspension stopped the tree");

        // Requests every 50 ms keep it for three idle times.
        for _ in 0..18 {
            drop(directory.admit(&t).expect("running"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(custody_actor(104, "t").is_some(), "a tree in use stays");

        // Unused, it stops, children included, and its next request finds it not running.
        let mut stopped = false;
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if health(&sup).await.is_empty() && custody_actor(104, "t").is_none() {
                stopped = true;
                break;
            }
        }
        assert!(stopped, "the idle tree never stopped");
        assert_eq!(directory.admit(&t).unwrap_err(), crate::Refusal::NotRunning(t.clone()));
        // Starting again reuses the names without a failure.
        assert!(activate_now(&sup, "t").await, "t is active");
        wait_for(&sup, "t", TenantActorState::Running, 0).await;
        assert!(custody_actor(104, "t").is_some());

        // Suspended, the tenant stays so whatever older record still arrives: its due key work
        // starts nothing.
        sup.cast(NodeMsg::Changed(vec![tenant("t", TenantStatus::Suspended, 100)])).unwrap();
        sup.cast(NodeMsg::Changed(vec![tenant("t", TenantStatus::Active, 50)])).unwrap();
        let due = [(t.clone(), vec![custos_raft::KeyId::new("k").unwrap()])].into_iter().collect();
        sup.cast(NodeMsg::Due { due, resume_after: None }).unwrap();
        assert!(health(&sup).await.is_empty(), "a stale record brought the suspended tenant back");
        sup.stop(None);
    }

    #[tokio::test]
    async fn custody_faults_restart_then_degrade_only_that_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let deps = deps(102, 2, &dir, &["bad", "good"]).await;
        let directory = deps.directory.clone();
        let sup = started(deps, &["bad", "good"]).await;
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
        let sup = started(deps(103, 2, &dir, &["t"]).await, &["t"]).await;
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

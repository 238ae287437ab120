//! [`TenantDirectory`]: what the API asks before serving a tenant's request — is the tenant's
//! actor tree serving on this node, and is there room under its in-flight bound. It also
//! stamps each tree's last request, which is how the node supervisor finds idle trees, and
//! wakes requests waiting for a tree to start.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use custos_raft::TenantId;
use ractor::ActorId;
use serde::Serialize;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantActorState {
    /// No actors on this node: the tenant has not been used here lately. Its first request
    /// starts them.
    Idle,
    Running,
    /// A failed actor of the tenant is waiting for its restart.
    Restarting,
    /// Failed too often; stopped until the tenant changes or the node restarts. The tenant's
    /// requests are refused on this node.
    Degraded,
}

impl TenantActorState {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantActorState::Idle => "idle",
            TenantActorState::Running => "running",
            TenantActorState::Restarting => "restarting",
            TenantActorState::Degraded => "degraded",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantHealth {
    pub tenant_id: String,
    pub state: TenantActorState,
    /// Failures within the current restart window.
    pub recent_failures: usize,
}

/// Why a tenant's request is refused before it starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("tenant {0} has no actors running on this node yet")]
    NotRunning(TenantId),
    #[error("tenant {0} is degraded on this node after repeated actor failures")]
    Degraded(TenantId),
    #[error("tenant {tenant} has {limit} requests in flight on this node")]
    Busy { tenant: TenantId, limit: usize },
}

struct Entry {
    state: TenantActorState,
    recent_failures: usize,
    admission: Arc<Semaphore>,
    /// When a request was last admitted (or the entry made), in ms since the directory's epoch.
    last_used_ms: AtomicU64,
    /// The tenant supervisor that published the state; `None` when the node supervisor did.
    owner: Option<ActorId>,
}

/// Shared between the supervisors, which publish each tenant's state, and the API.
pub struct TenantDirectory {
    tenant_max_in_flight: usize,
    epoch: Instant,
    entries: RwLock<BTreeMap<TenantId, Entry>>,
    /// Requests waiting for a tenant's actors to start, woken when its state is published.
    waiting: Mutex<HashMap<TenantId, Arc<Notify>>>,
}

impl TenantDirectory {
    pub fn new(tenant_max_in_flight: usize) -> Self {
        TenantDirectory {
            tenant_max_in_flight,
            epoch: Instant::now(),
            entries: RwLock::new(BTreeMap::new()),
            waiting: Mutex::new(HashMap::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Publishes a tenant's state on behalf of the node supervisor.
    pub fn publish(&self, tenant: &TenantId, state: TenantActorState, recent_failures: usize) {
        self.publish_by(tenant, None, state, recent_failures);
    }

    /// Publishes a tenant's state on behalf of its tenant supervisor `owner`, whose
    /// [`Self::remove_owned`] takes it back when it stops.
    pub fn publish_owned(&self, tenant: &TenantId, owner: ActorId, state: TenantActorState, recent_failures: usize) {
        self.publish_by(tenant, Some(owner), state, recent_failures);
    }

    fn publish_by(&self, tenant: &TenantId, owner: Option<ActorId>, state: TenantActorState, recent_failures: usize) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        match entries.get_mut(tenant) {
            Some(entry) => {
                entry.state = state;
                entry.recent_failures = recent_failures;
                entry.owner = owner;
            }
            None => {
                let admission = Arc::new(Semaphore::new(self.tenant_max_in_flight));
                let last_used_ms = AtomicU64::new(self.now_ms());
                entries.insert(tenant.clone(), Entry { state, recent_failures, admission, last_used_ms, owner });
            }
        }
        drop(entries);
        let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(tenant);
        if let Some(waiting) = waiting {
            waiting.notify_waiters();
        }
    }

    /// What a request waiting for `tenant`'s actors waits on: notified at the tenant's next
    /// publish. Take `notified()` before checking [`Self::admit`], then wait on it.
    pub fn waiter(&self, tenant: &TenantId) -> Arc<Notify> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).entry(tenant.clone()).or_default().clone()
    }

    /// Forgets `tenant`'s state (its tree stopped or the tenant is no longer active), and
    /// wakes any request still waiting for it, which then finds out why.
    pub fn remove(&self, tenant: &TenantId) {
        self.entries.write().unwrap_or_else(|p| p.into_inner()).remove(tenant);
        let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(tenant);
        if let Some(waiting) = waiting {
            waiting.notify_waiters();
        }
    }

    /// Removes `tenant`'s state if `owner` published it last: a tenant supervisor that stops
    /// takes back what it published, even if that came after the node dropped the tenant.
    pub fn remove_owned(&self, tenant: &TenantId, owner: ActorId) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.get(tenant).is_some_and(|e| e.owner == Some(owner)) {
            entries.remove(tenant);
        }
    }

    /// The running trees that admitted no request for `idle` (candidates for
    /// [`Self::retire_if_idle`], which checks again).
    pub fn idle(&self, idle: Duration) -> Vec<TenantId> {
        let now = self.now_ms();
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .filter(|(_, e)| {
                e.state == TenantActorState::Running
                    && now.saturating_sub(e.last_used_ms.load(Ordering::Relaxed)) >= idle.as_millis() as u64
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Removes `tenant` if its tree runs, has nothing in flight and admitted no request for
    /// `idle`: its next request then finds it not running and asks for a start. True if
    /// removed; the caller stops the tree.
    pub fn retire_if_idle(&self, tenant: &TenantId, idle: Duration) -> bool {
        let now = self.now_ms();
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let retire = entries.get(tenant).is_some_and(|e| {
            e.state == TenantActorState::Running
                && now.saturating_sub(e.last_used_ms.load(Ordering::Relaxed)) >= idle.as_millis() as u64
                && e.admission.available_permits() == self.tenant_max_in_flight
        });
        if retire {
            entries.remove(tenant);
        }
        retire
    }

    /// Admits one request of `tenant`; the permit is held until the request completes.
    pub fn admit(&self, tenant: &TenantId) -> Result<OwnedSemaphorePermit, Refusal> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let entry = entries.get(tenant).ok_or_else(|| Refusal::NotRunning(tenant.clone()))?;
        if entry.state == TenantActorState::Degraded {
            return Err(Refusal::Degraded(tenant.clone()));
        }
        let permit = entry
            .admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Busy { tenant: tenant.clone(), limit: self.tenant_max_in_flight })?;
        entry.last_used_ms.store(self.now_ms(), Ordering::Relaxed);
        Ok(permit)
    }

    pub fn health_of(&self, tenant: &TenantId) -> Option<TenantHealth> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.get(tenant).map(|e| TenantHealth {
            tenant_id: tenant.to_string(),
            state: e.state,
            recent_failures: e.recent_failures,
        })
    }

    /// How many tenants' trees are in `state` on this node.
    pub fn count(&self, state: TenantActorState) -> usize {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.values().filter(|e| e.state == state).count()
    }

    /// The tenants whose trees are in `state` on this node.
    pub fn in_state(&self, state: TenantActorState) -> std::collections::BTreeSet<TenantId> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.iter().filter(|(_, e)| e.state == state).map(|(id, _)| id.clone()).collect()
    }

    pub fn health(&self) -> Vec<TenantHealth> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .map(|(id, e)| TenantHealth {
                tenant_id: id.to_string(),
                state: e.state,
                recent_failures: e.recent_failures,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_is_bounded_per_tenant_and_refused_when_degraded() {
        let dir = TenantDirectory::new(2);
        let (a, b) = (TenantId::new("a").unwrap(), TenantId::new("b").unwrap());
        assert_eq!(dir.admit(&a).unwrap_err(), Refusal::NotRunning(a.clone()));
        dir.publish(&a, TenantActorState::Running, 0);
        dir.publish(&b, TenantActorState::Running, 0);
        let _p1 = dir.admit(&a).unwrap();
        let _p2 = dir.admit(&a).unwrap();
        assert_eq!(dir.admit(&a).unwrap_err(), Refusal::Busy { tenant: a.clone(), limit: 2 });
        // Another tenant has its own bound.
        assert!(dir.admit(&b).is_ok());
        dir.publish(&b, TenantActorState::Degraded, 3);
        assert_eq!(dir.admit(&b).unwrap_err(), Refusal::Degraded(b.clone()));
        assert_eq!((dir.count(TenantActorState::Running), dir.count(TenantActorState::Degraded)), (1, 1));
        assert_eq!(dir.in_state(TenantActorState::Degraded), [b.clone()].into());
        drop(_p1);
        assert!(dir.admit(&a).is_ok(), "a finished request frees its permit");
    }

    #[test]
    fn only_a_running_tree_without_recent_or_pending_requests_retires() {
        let dir = TenantDirectory::new(2);
        let (a, b) = (TenantId::new("a").unwrap(), TenantId::new("b").unwrap());
        dir.publish(&a, TenantActorState::Running, 0);
        dir.publish(&b, TenantActorState::Restarting, 1);
        assert!(!dir.retire_if_idle(&a, Duration::from_secs(60)), "used within the idle time");
        assert!(dir.idle(Duration::from_secs(60)).is_empty());
        assert_eq!(dir.idle(Duration::ZERO), std::slice::from_ref(&a), "only running trees are candidates");
        assert!(!dir.retire_if_idle(&b, Duration::ZERO), "a restarting tree stays");
        let permit = dir.admit(&a).unwrap();
        assert!(!dir.retire_if_idle(&a, Duration::ZERO), "a request is in flight");
        drop(permit);
        assert!(dir.retire_if_idle(&a, Duration::ZERO));
        assert_eq!(dir.admit(&a).unwrap_err(), Refusal::NotRunning(a.clone()), "its next request asks for a start");
        assert!(!dir.retire_if_idle(&a, Duration::ZERO), "already gone");
    }

    #[test]
    fn a_stopping_tree_takes_back_only_what_it_published() {
        let dir = TenantDirectory::new(1);
        let a = TenantId::new("a").unwrap();
        let (old, new) = (ActorId::Local(1), ActorId::Local(2));
        dir.publish_owned(&a, old, TenantActorState::Running, 0);
        dir.publish_owned(&a, new, TenantActorState::Running, 0);
        dir.remove_owned(&a, old);
        assert!(dir.admit(&a).is_ok(), "the newer tree's state stays");
        dir.remove_owned(&a, new);
        assert_eq!(dir.admit(&a).unwrap_err(), Refusal::NotRunning(a.clone()));
        dir.publish(&a, TenantActorState::Restarting, 1);
        dir.remove_owned(&a, new);
        assert!(dir.admit(&a).is_ok(), "the node's own state is not a tree's to take back");
    }

    #[tokio::test]
    async fn a_waiter_is_woken_by_its_tenants_next_publish_only() {
        let dir = Arc::new(TenantDirectory::new(1));
        let (a, b) = (TenantId::new("a").unwrap(), TenantId::new("b").unwrap());
        let notify = dir.waiter(&a);
        let waiter = notify.notified();
        tokio::pin!(waiter);
        assert!(dir.admit(&a).is_err());
        dir.publish(&b, TenantActorState::Running, 0);
        assert!(tokio::time::timeout(Duration::from_millis(50), waiter.as_mut()).await.is_err(), "another tenant");
        let publisher = {
            let (dir, a) = (dir.clone(), a.clone());
            tokio::spawn(async move { dir.publish(&a, TenantActorState::Running, 0) })
        };
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken");
        publisher.await.unwrap();
        assert!(dir.admit(&a).is_ok());
    }
}

//! [`TenantDirectory`]: what the API asks before serving a tenant's request — is the tenant's
//! actor tree serving on this node, and is there room under its in-flight bound.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use custos_raft::TenantId;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantActorState {
    Running,
    /// A failed actor of the tenant is waiting for its restart.
    Restarting,
    /// Failed too often; stopped until the tenant changes or the node restarts. The tenant's
    /// requests are refused on this node.
    Degraded,
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
}

/// Shared between the supervisors, which publish each tenant's state, and the API.
pub struct TenantDirectory {
    tenant_max_in_flight: usize,
    entries: RwLock<BTreeMap<TenantId, Entry>>,
}

impl TenantDirectory {
    pub fn new(tenant_max_in_flight: usize) -> Self {
        TenantDirectory { tenant_max_in_flight, entries: RwLock::new(BTreeMap::new()) }
    }

    pub fn publish(&self, tenant: &TenantId, state: TenantActorState, recent_failures: usize) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        match entries.get_mut(tenant) {
            Some(entry) => {
                entry.state = state;
                entry.recent_failures = recent_failures;
            }
            None => {
                let admission = Arc::new(Semaphore::new(self.tenant_max_in_flight));
                entries.insert(tenant.clone(), Entry { state, recent_failures, admission });
            }
        }
    }

    pub fn remove(&self, tenant: &TenantId) {
        self.entries.write().unwrap_or_else(|p| p.into_inner()).remove(tenant);
    }

    /// Admits one request of `tenant`; the permit is held until the request completes.
    pub fn admit(&self, tenant: &TenantId) -> Result<OwnedSemaphorePermit, Refusal> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let entry = entries.get(tenant).ok_or_else(|| Refusal::NotRunning(tenant.clone()))?;
        if entry.state == TenantActorState::Degraded {
            return Err(Refusal::Degraded(tenant.clone()));
        }
        entry
            .admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Busy { tenant: tenant.clone(), limit: self.tenant_max_in_flight })
    }

    pub fn health_of(&self, tenant: &TenantId) -> Option<TenantHealth> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.get(tenant).map(|e| TenantHealth {
            tenant_id: tenant.to_string(),
            state: e.state,
            recent_failures: e.recent_failures,
        })
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
        drop(_p1);
        assert!(dir.admit(&a).is_ok(), "a finished request frees its permit");
    }
}

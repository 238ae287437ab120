//! Keeps the per-tenant actors in step with governance state as it is applied on this node:
//! whenever the applied index moves, the full tenant list is read and sent to the supervisor.
//! Every node does this, so a change made through any node reaches every node's actors.

use std::time::Duration;

use custos_actors::NodeMsg;
use custos_raft::{Cluster, Tenant, TenantId};
use ractor::ActorRef;
use tokio::sync::watch;

/// Bursts of applied entries within this interval lead to one sync.
const SYNC_INTERVAL: Duration = Duration::from_millis(50);
const PAGE: usize = 1000;

fn all_tenants(cluster: &Cluster) -> Result<Vec<Tenant>, custos_raft::store::reader::ReadError> {
    let mut tenants = Vec::new();
    let mut after: Option<TenantId> = None;
    loop {
        let page = cluster.reader().tenants(after.as_ref(), PAGE)?;
        let full = page.len() == PAGE;
        after = page.last().map(|t| t.id.clone());
        tenants.extend(page);
        if !full {
            return Ok(tenants);
        }
    }
}

pub async fn sync(cluster: Cluster, supervisor: ActorRef<NodeMsg>, mut stop: watch::Receiver<bool>) {
    let mut metrics = cluster.raft().metrics();
    let mut synced: Option<Option<u64>> = None;
    loop {
        let applied = metrics.borrow_and_update().last_applied.map(|l| l.index);
        if synced != Some(applied) {
            match all_tenants(&cluster) {
                Ok(tenants) => {
                    if supervisor.cast(NodeMsg::Sync(tenants)).is_err() {
                        return;
                    }
                    synced = Some(applied);
                }
                Err(e) => tracing::error!(error = %e, "reading tenants for the actor supervisor failed"),
            }
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
        tokio::time::sleep(SYNC_INTERVAL).await;
    }
}

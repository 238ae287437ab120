//! Keeps the per-tenant actors in step with governance state as it is applied on this node: a
//! full tenant list at start, then, whenever the applied index moves, the tenants changed since
//! (from the state machine's change index). Every node does this, so a change made through any
//! node reaches every node's actors. A tenant deletion seen here also compacts this node's log
//! past it, so the shredded key roots leave the log.

use std::time::Duration;

use custos_actors::NodeMsg;
use custos_raft::{Cluster, Tenant, TenantId, TenantStatus};
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
    // Revision up to which every change has been sent; None until the first full sync.
    let mut cursor: Option<u64> = None;
    let mut seen_applied: Option<u64> = None;
    loop {
        let applied = metrics.borrow_and_update().last_applied.map(|l| l.index);
        if cursor.is_none() || applied != seen_applied {
            // Everything up to `applied` is in the store before the read below starts, so every
            // change with a revision up to it is seen; later ones may be seen twice, harmlessly.
            let upto = applied.unwrap_or(0);
            let sent = match cursor {
                None => all_tenants(&cluster).map(NodeMsg::Sync),
                Some(from) => changed_tenants(&cluster, from).map(|changed| {
                    // Crypto-shredding reaches this node's log and snapshot too: one compaction
                    // past the latest deletion in this batch covers them all.
                    let deleted = changed.iter().filter(|t| t.status == TenantStatus::Deleted).map(|t| t.revision);
                    if let Some(upto) = deleted.max() {
                        tokio::spawn(crate::custody::compact_after_shred(cluster.clone(), upto));
                    }
                    NodeMsg::Changed(changed)
                }),
            };
            match sent {
                Ok(message) => {
                    if supervisor.cast(message).is_err() {
                        return;
                    }
                    cursor = Some(upto);
                    seen_applied = applied;
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading tenants for the actor supervisor failed; retrying");
                    // Retry without waiting for another apply: the actors must not stay stale.
                    tokio::select! {
                        () = tokio::time::sleep(SYNC_INTERVAL) => continue,
                        _ = stop.changed() => return,
                    }
                }
            }
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
        tokio::time::sleep(SYNC_INTERVAL).await;
    }
}

fn changed_tenants(cluster: &Cluster, after: u64) -> Result<Vec<Tenant>, custos_raft::store::reader::ReadError> {
    let mut tenants: Vec<Tenant> = Vec::new();
    let mut cursor: (u64, Option<TenantId>) = (after, None);
    loop {
        let page = cluster.reader().tenants_changed_after(cursor.0, cursor.1.as_ref(), PAGE)?;
        let full = page.len() == PAGE;
        if let Some(last) = page.last() {
            cursor = (last.revision, Some(last.id.clone()));
        }
        tenants.extend(page);
        if !full {
            return Ok(tenants);
        }
    }
}

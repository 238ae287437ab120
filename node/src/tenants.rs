//! Keeps the per-tenant actors in step with governance state as it is applied on this node: a
//! full tenant list at start, then, whenever the applied index moves, the tenants changed since
//! (from the state machine's change index). Every node does this, so a change made through any
//! node reaches every node's actors.
//!
//! Crypto-shredding reaches this node's log too: while the latest tenant deletion it knows of
//! (from the full list at start, then from each change) lies past the log's purged index, a
//! compaction builds a snapshot over it and purges the log up to it. One runs at a time, at
//! most one starts per [`COMPACTION_RETRY`], and one is tried again that long after the last
//! until the log is purged. A node that crashed after applying a deletion and before
//! compacting compacts once it starts again.

use std::time::Duration;

use tokio::time::Instant;

use custos_actors::NodeMsg;
use custos_raft::{Cluster, Tenant, TenantId, TenantStatus};
use ractor::ActorRef;
use tokio::sync::watch;

/// Bursts of applied entries within this interval lead to one sync.
const SYNC_INTERVAL: Duration = Duration::from_millis(50);
/// The least time between the starts of two compactions.
const COMPACTION_RETRY: Duration = Duration::from_secs(5);
const PAGE: usize = 1000;

/// The log compaction that crypto-shredding owes: up to the latest deletion known.
#[derive(Default)]
struct Compaction {
    /// Log index of the latest tenant deletion seen.
    upto: u64,
    running: Option<tokio::task::JoinHandle<()>>,
    /// No compaction starts before this.
    next_try: Option<Instant>,
}

impl Compaction {
    fn note(&mut self, tenants: &[Tenant]) {
        let deleted = tenants.iter().filter(|t| t.status == TenantStatus::Deleted).map(|t| t.revision);
        self.upto = self.upto.max(deleted.max().unwrap_or(0));
    }

    /// Whether the log still holds entries up to the latest deletion.
    fn owed(&self, cluster: &Cluster) -> bool {
        let purged = cluster.raft().metrics().borrow().purged.map(|l| l.index);
        self.upto > purged.unwrap_or(0)
    }

    /// Starts a compaction if one is owed, none is running and the last started long enough
    /// ago; otherwise looks again [`COMPACTION_RETRY`] later.
    fn start(&mut self, cluster: &Cluster) {
        if !self.owed(cluster) {
            return;
        }
        let now = Instant::now();
        let running = self.running.as_ref().is_some_and(|task| !task.is_finished());
        if running {
            self.next_try = Some(now + COMPACTION_RETRY);
            return;
        }
        if self.next_try.is_some_and(|at| now < at) {
            return;
        }
        self.next_try = Some(now + COMPACTION_RETRY);
        self.running = Some(tokio::spawn(crate::custody::compact_after_shred(cluster.clone(), self.upto)));
    }

    /// When to look again, while a compaction is owed.
    fn wake_at(&self, cluster: &Cluster) -> Option<Instant> {
        self.owed(cluster).then(|| self.next_try.unwrap_or_else(Instant::now))
    }
}

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
    let mut compaction = Compaction::default();
    loop {
        let applied = metrics.borrow_and_update().last_applied.map(|l| l.index);
        if cursor.is_none() || applied != seen_applied {
            // Everything up to `applied` is in the store before the read below starts, so every
            // change with a revision up to it is seen; later ones may be seen twice, harmlessly.
            let upto = applied.unwrap_or(0);
            let sent = match cursor {
                None => all_tenants(&cluster).map(|all| {
                    compaction.note(&all);
                    NodeMsg::Sync(all)
                }),
                Some(from) => changed_tenants(&cluster, from).map(|changed| {
                    compaction.note(&changed);
                    NodeMsg::Changed(changed)
                }),
            };
            compaction.start(&cluster);
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
        // The wake-up time is kept across passes: metrics change every tick and must not
        // put it off.
        let wake_at = compaction.wake_at(&cluster);
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            () = tokio::time::sleep_until(wake_at.unwrap_or_else(Instant::now)), if wake_at.is_some() => {
                compaction.start(&cluster)
            }
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

//! The durable outbox: audit events are made durable here, on this node, before the request
//! they record is acknowledged, and stay until a sink has them.
//!
//! One writer task owns the chain heads. It places each record in its tenant's chain and
//! encodes it into the open group as it arrives; the moment the flusher is idle it takes the
//! whole group, appends it to the log with one write and one `fdatasync` (group commit), and
//! only then answers the waiting requests. The shipper reads durable entries in append order
//! and releases them once its sink has accepted them, so a crash at any point replays what was
//! not shipped — under the same event ids.
//!
//! # Layout
//! - `mod.rs` — [`Outbox`]: recording, the writer and flusher tasks, the shipper's view.
//! - `log.rs` — the files under `<data_dir>/audit/outbox`: checksummed segments, the chain-head
//!   checkpoint, the shipped cursor; torn-tail repair on open.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, mpsc, oneshot, Notify};

use super::chain::{seal, GENESIS};
use super::event::{rfc3339_ms, AuditEvent, AuditRecord, AuditStream, SCHEMA_VERSION, SPEC_VERSION};
use super::AuditError;

mod log;

/// Live subscribers that fall this far behind lose the oldest events (and are told so).
const TAIL_CAPACITY: usize = 4096;

/// Bounds of one node's outbox.
#[derive(Debug, Clone)]
pub struct OutboxLimits {
    /// Records per group commit, and entries per shipping batch.
    pub max_batch: usize,
    /// Records waiting for the writer; a full queue makes `record` wait.
    pub queue: usize,
    /// Entries not yet shipped; beyond it, recording fails (fail-closed) or drops (best-effort).
    pub max_depth: u64,
}

/// An event as it waits in the outbox: its tenant, its time and its JSON.
#[derive(Debug, Clone)]
pub struct Entry {
    pub position: u64,
    pub tenant: String,
    pub time_ms: u64,
    pub json: Arc<[u8]>,
}

/// Where a recorded event went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub id: String,
    pub chainseq: u64,
}

/// A committed event, as live subscribers see it.
#[derive(Debug, Clone)]
pub struct Committed {
    pub tenant: String,
    pub event: Arc<AuditEvent>,
}

/// Where a waiting request learns its event's fate.
type Reply = oneshot::Sender<Result<Receipt, AuditError>>;

struct Pending {
    record: AuditRecord,
    time_ms: u64,
    reply: Option<Reply>,
}

/// Where a chain stands: its last sequence number and that event's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    seq: u64,
    hash: [u8; 32],
}

/// Counters for status and metrics.
#[derive(Debug, Default)]
pub struct OutboxStats {
    pub depth: AtomicU64,
    pub committed: AtomicU64,
    pub commits: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
}

pub struct Outbox {
    log: Arc<log::Shared>,
    chain: String,
    node_id: u64,
    tx: mpsc::Sender<Pending>,
    limits: OutboxLimits,
    stats: Arc<OutboxStats>,
    committed: Arc<Notify>,
    tail: broadcast::Sender<Committed>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The last position `pending` returned and the cursor after it, for `remove`.
    read: Mutex<Option<(u64, log::Cursor)>>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir` and starts its writer. Entries left by an earlier
    /// run are pending again. Needs a tokio runtime.
    pub fn open(dir: &Path, node_id: u64, limits: OutboxLimits) -> Result<Arc<Outbox>, AuditError> {
        assert!(limits.max_batch > 0 && limits.queue > 0, "outbox limits must be positive");
        // A fresh outbox (or a node whose data was wiped) starts a new chain, so its sequence
        // numbers never collide with an earlier chain of the same node.
        let new_chain = || format!("node-{node_id}.{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let (log, appender, recovered) = log::Shared::open(dir, new_chain)?;
        let stats = Arc::new(OutboxStats::default());
        stats.depth.store(recovered.next - recovered.shipped, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(limits.queue);
        let (tail, _) = broadcast::channel(TAIL_CAPACITY);
        let outbox = Arc::new(Outbox {
            log: log.clone(),
            chain: recovered.chain,
            node_id,
            tx,
            limits,
            stats,
            committed: Arc::new(Notify::new()),
            tail,
            writer: Mutex::new(None),
            read: Mutex::new(None),
        });
        let writer = Writer {
            outbox: Arc::downgrade(&outbox),
            log,
            heads: recovered.heads,
            next: recovered.next,
            generation: 0,
            failures: Arc::new(AtomicU64::new(0)),
        };
        let handle = tokio::spawn(writer.run(rx, outbox.limits.max_batch, appender));
        *outbox.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(outbox)
    }

    /// This outbox's chain id (the `chain` of every event it writes).
    pub fn chain(&self) -> &str {
        &self.chain
    }

    pub fn stats(&self) -> &OutboxStats {
        &self.stats
    }

    /// Records an event and returns once it is durable on this node.
    pub async fn record(&self, record: AuditRecord) -> Result<Receipt, AuditError> {
        if self.stats.depth.load(Ordering::Relaxed) >= self.limits.max_depth {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            return Err(AuditError::Backlog { depth: self.limits.max_depth });
        }
        let (reply, answer) = oneshot::channel();
        let pending = Pending { record, time_ms: now_ms(), reply: Some(reply) };
        self.tx.send(pending).await.map_err(|_| AuditError::Closed)?;
        answer.await.map_err(|_| AuditError::Closed)?
    }

    /// Queues an event without waiting for it to be durable; when the queue or the outbox is
    /// full the event is dropped and counted. Returns whether it was queued.
    pub fn record_detached(&self, record: AuditRecord) -> bool {
        if self.stats.depth.load(Ordering::Relaxed) >= self.limits.max_depth {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let queued = self.tx.try_send(Pending { record, time_ms: now_ms(), reply: None }).is_ok();
        if !queued {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        queued
    }

    /// Up to `limit` unshipped durable entries, oldest first. Reads files: off the async
    /// threads (the shipper calls it through `spawn_blocking`).
    pub fn pending(&self, limit: usize) -> Result<Vec<Entry>, AuditError> {
        let (entries, after) = self.log.read(limit)?;
        if let Some(last) = entries.last() {
            *self.read.lock().unwrap_or_else(|p| p.into_inner()) = Some((last.position, after));
        }
        Ok(entries)
    }

    /// Releases the oldest pending entries up to and including the last of `entries` (a sink
    /// has accepted them). Their segments go once wholly shipped; the cursor is not flushed,
    /// so after a crash they may be shipped again, under the same ids. Writes files, like
    /// [`Outbox::pending`].
    pub fn remove(&self, entries: &[Entry]) -> Result<(), AuditError> {
        let Some(last) = entries.last() else { return Ok(()) };
        let after = match *self.read.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((position, after)) if position == last.position => after,
            _ => {
                // Not the batch `pending` returned last: find where it ends.
                let (again, after) = self.log.read(entries.len())?;
                if again.last().map(|e| e.position) != Some(last.position) {
                    return Err(AuditError::Storage("released entries are not the oldest pending ones".into()));
                }
                after
            }
        };
        self.log.release(after);
        self.stats.depth.fetch_sub(entries.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Resolves after the next group commit (or at once if one happened since the last call).
    pub async fn committed(&self) {
        self.committed.notified().await
    }

    /// Every event committed from now on, all tenants; callers filter by tenant.
    pub fn subscribe(&self) -> broadcast::Receiver<Committed> {
        self.tail.subscribe()
    }

    /// The chain head (sequence, hex hash) of a stream on this node, from durable state.
    pub fn head(&self, stream: &AuditStream) -> Result<Option<(u64, String)>, AuditError> {
        Ok(self.log.head(stream.as_str()).map(|head| (head.seq, hex::encode(head.hash))))
    }

    /// Stops the writer: records still queued are answered `Closed`, never acknowledged.
    /// Everything acknowledged is already durable.
    pub async fn close(&self) {
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            handle.abort();
            let _ = handle.await;
        }
    }
}

/// Builds groups: places each record in its chain and encodes it as it arrives. A group stays
/// open while the flusher writes the previous one and is handed over the moment the flusher is
/// idle, so every record that arrives during one flush goes out with the next: when idle, a
/// lone record is flushed at once; under load, groups grow with the load and a record waits for
/// at most the flush in progress and its own. The CPU work overlaps with the fsync.
struct Writer {
    outbox: std::sync::Weak<Outbox>,
    log: Arc<log::Shared>,
    heads: HashMap<String, Head>,
    next: u64,
    /// The generation this writer builds for; see [`Flusher`].
    generation: u64,
    failures: Arc<AtomicU64>,
}

type Made = Result<(String, Arc<AuditEvent>), AuditError>;

/// One group, open while records join it, then written as a whole.
#[derive(Default)]
struct Group {
    generation: u64,
    /// Encoded records, positions `first..next`.
    records: Vec<u8>,
    first: u64,
    next: u64,
    /// Chain heads this group moves.
    moved: HashMap<String, Head>,
    pending: Vec<(Option<Reply>, Made)>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Pending>, max_batch: usize, appender: log::Appender) {
        // The flusher holds the one permit while it writes a group, so acquiring it means
        // "the flusher is idle".
        let idle = Arc::new(tokio::sync::Semaphore::new(1));
        let (groups, built) = mpsc::channel(1);
        let flusher = Flusher {
            outbox: self.outbox.clone(),
            appender: Arc::new(Mutex::new(appender)),
            generation: 0,
            failures: self.failures.clone(),
        };
        let flushing = tokio::spawn(flusher.run(built));
        let mut records = Vec::with_capacity(max_batch);
        let mut open = self.open();
        loop {
            tokio::select! {
                biased;
                permit = idle.clone().acquire_owned(), if !open.pending.is_empty() => {
                    let Ok(permit) = permit else { break };
                    let mut group = std::mem::take(&mut open);
                    group.next = self.next;
                    if groups.send((group, permit)).await.is_err() {
                        break;
                    }
                    open = self.open();
                }
                received = rx.recv_many(&mut records, max_batch - open.pending.len()),
                    if open.pending.len() < max_batch =>
                {
                    if received == 0 {
                        break;
                    }
                    let Some(outbox) = self.outbox.upgrade() else { break };
                    for record in records.drain(..) {
                        let Pending { record, time_ms, reply } = record;
                        let made = self.place(&outbox, record, time_ms, &mut open);
                        open.pending.push((reply, made));
                    }
                }
            }
        }
        drop(groups);
        let _ = flushing.await;
    }

    /// A new group. After a failed commit the chain heads and positions start again from what
    /// is durable.
    fn open(&mut self) -> Group {
        let failures = self.failures.load(Ordering::Acquire);
        if failures != self.generation {
            self.generation = failures;
            (self.next, self.heads) = self.log.durable();
        }
        Group { generation: self.generation, first: self.next, next: self.next, ..Group::default() }
    }

    /// Gives one record its place in its chain and adds it to the batch.
    fn place(&mut self, outbox: &Outbox, record: AuditRecord, time_ms: u64, group: &mut Group) -> Made {
        let tenant = record.stream.as_str();
        let head = self.heads.get(tenant).copied().unwrap_or(Head { seq: 0, hash: [0u8; 32] });
        let seq = head.seq + 1;
        let mut event = AuditEvent {
            auditschema: SCHEMA_VERSION,
            chain: outbox.chain.clone(),
            chainhash: String::new(),
            chainprev: if head.seq == 0 { GENESIS.to_string() } else { hex::encode(head.hash) },
            chainseq: seq,
            data: record.data,
            datacontenttype: "application/json".to_string(),
            id: format!("{}.{}.{}", tenant, outbox.chain, seq),
            source: format!("custos://node/{}", outbox.node_id),
            specversion: SPEC_VERSION.to_string(),
            subject: record.subject,
            tenant: tenant.to_string(),
            time: rfc3339_ms(time_ms),
            kind: record.kind.full(),
        };
        let json = seal(&mut event).map_err(|e| AuditError::Storage(e.to_string()))?;
        let mut hash = [0u8; 32];
        // seal always yields 64 hex digits.
        hex::decode_to_slice(&event.chainhash, &mut hash).expect("chain hash is 32 bytes of hex");
        let new_head = Head { seq, hash };
        log::encode(
            &mut group.records,
            &log::Record { position: self.next, time_ms, head: new_head, tenant, json: &json },
        )?;
        // The in-memory head moves now, so the next record (in this group or the next one,
        // built while this one flushes) chains onto it; a failed commit resyncs from the log.
        self.heads.insert(tenant.to_string(), new_head);
        group.moved.insert(tenant.to_string(), new_head);
        self.next += 1;
        Ok((tenant.to_string(), Arc::new(event)))
    }
}

/// Writes groups in the order they were built, one append and one `fdatasync` each, then
/// answers their requests. A failed group bumps the failure generation: a group built before
/// the writer noticed (chained onto the failed one) is refused unwritten, and the writer
/// resyncs its chain heads from the log before building more.
struct Flusher {
    outbox: std::sync::Weak<Outbox>,
    appender: Arc<Mutex<log::Appender>>,
    generation: u64,
    failures: Arc<AtomicU64>,
}

impl Flusher {
    async fn run(mut self, mut built: mpsc::Receiver<(Group, tokio::sync::OwnedSemaphorePermit)>) {
        while let Some((group, _idle)) = built.recv().await {
            let Some(outbox) = self.outbox.upgrade() else { return };
            self.write(&outbox, group).await;
        }
    }

    async fn write(&mut self, outbox: &Outbox, mut group: Group) {
        let stats = &outbox.stats;
        let entries = group.next - group.first;
        let written = if group.generation != self.generation {
            Err(AuditError::Storage("an earlier audit group failed to be written".into()))
        } else {
            // Counted before the entries become visible: the shipper may read, ship and
            // release them before this task runs again, and its decrement must not come
            // first (the depth would wrap around and refuse every request as a backlog).
            stats.depth.fetch_add(entries, Ordering::Relaxed);
            let appender = self.appender.clone();
            let (records, moved) = (std::mem::take(&mut group.records), std::mem::take(&mut group.moved));
            let (first, next) = (group.first, group.next);
            let written = tokio::task::spawn_blocking(move || {
                appender.lock().unwrap_or_else(|p| p.into_inner()).append(&records, first, next, &moved)
            })
            .await
            .unwrap_or_else(|join| Err(AuditError::Storage(join.to_string())));
            if written.is_err() {
                stats.depth.fetch_sub(entries, Ordering::Relaxed);
            }
            written
        };
        match written {
            Ok(()) => {
                stats.committed.fetch_add(entries, Ordering::Relaxed);
                stats.commits.fetch_add(1, Ordering::Relaxed);
                outbox.committed.notify_one();
                for (reply, made) in group.pending {
                    let answer = made.map(|(tenant, event)| {
                        let receipt = Receipt { id: event.id.clone(), chainseq: event.chainseq };
                        // No subscribers is the normal case; a send error only says that.
                        let _ = outbox.tail.send(Committed { tenant, event });
                        receipt
                    });
                    if answer.is_err() {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(answer);
                    }
                }
            }
            Err(error) => {
                if group.generation == self.generation {
                    self.generation += 1;
                    self.failures.store(self.generation, Ordering::Release);
                    tracing::error!(%error, events = group.pending.len(), "audit outbox commit failed");
                }
                stats.failed.fetch_add(group.pending.len() as u64, Ordering::Relaxed);
                for (reply, _) in group.pending {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::Verifier;
    use crate::audit::event::{Actor, AuditData, EventType, Outcome};

    fn limits() -> OutboxLimits {
        OutboxLimits { max_batch: 64, queue: 256, max_depth: 1000 }
    }

    fn record(tenant: &str) -> AuditRecord {
        AuditRecord {
            stream: AuditStream::Tenant(custos_raft::TenantId::new(tenant).unwrap()),
            kind: EventType::KeyEncrypt,
            subject: Some("keys/k".into()),
            data: AuditData::new(Actor::admin(), Outcome::Success),
        }
    }

    fn verify(outbox: &Outbox, tenant: &str) -> crate::audit::chain::Report {
        let mut verifier = Verifier::new(tenant);
        for entry in outbox.pending(10_000).unwrap() {
            verifier.push_raw(&entry.json);
        }
        verifier.finish()
    }

    #[tokio::test]
    async fn concurrent_records_form_one_gapless_chain_per_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), 1, limits()).unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let outbox = outbox.clone();
                tokio::spawn(async move { outbox.record(record(if i % 2 == 0 { "acme" } else { "globex" })).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(outbox.stats().depth.load(Ordering::Relaxed), 200);
        assert!(outbox.stats().commits.load(Ordering::Relaxed) < 200, "records were not grouped");
        for tenant in ["acme", "globex"] {
            let report = verify(&outbox, tenant);
            assert!(report.is_clean(), "{:?}", report.findings);
            assert_eq!(report.chains[0].last_seq, 100);
        }
    }

    #[tokio::test]
    async fn a_reopened_outbox_replays_unshipped_entries_and_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), 1, limits()).unwrap();
        for _ in 0..5 {
            outbox.record(record("acme")).await.unwrap();
        }
        let shipped = outbox.pending(2).unwrap();
        outbox.remove(&shipped).unwrap();
        let chain = outbox.chain().to_string();
        outbox.close().await;
        drop(outbox);

        let outbox = Outbox::open(dir.path(), 1, limits()).unwrap();
        assert_eq!(outbox.chain(), chain);
        let replay = outbox.pending(100).unwrap();
        assert_eq!(replay.len(), 3);
        assert_eq!(outbox.stats().depth.load(Ordering::Relaxed), 3);
        let receipt = outbox.record(record("acme")).await.unwrap();
        assert_eq!(receipt.chainseq, 6);
        assert!(replay.last().unwrap().position < outbox.pending(100).unwrap().last().unwrap().position);
        assert_eq!(
            outbox.head(&AuditStream::Tenant(custos_raft::TenantId::new("acme").unwrap())).unwrap().unwrap().0,
            6
        );
    }

    #[tokio::test]
    async fn a_full_outbox_refuses_or_drops() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), 1, OutboxLimits { max_batch: 8, queue: 8, max_depth: 3 }).unwrap();
        for _ in 0..3 {
            outbox.record(record("acme")).await.unwrap();
        }
        assert!(matches!(outbox.record(record("acme")).await, Err(AuditError::Backlog { depth: 3 })));
        assert!(!outbox.record_detached(record("acme")));
        assert_eq!(outbox.stats().dropped.load(Ordering::Relaxed), 1);
    }
}

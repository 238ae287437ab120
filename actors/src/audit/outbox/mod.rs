//! The durable outbox: audit events are made durable here, on this node, before the request
//! they record is acknowledged, and stay until a sink has them.
//!
//! A request places its own record: it renders what does not depend on its place, then under
//! one lock takes the next place in its tenant's chain, is sealed, encoded and appended to the
//! open group. A committer thread of its own
//! takes the oldest group the moment it is free, appends it to the log with one write and one
//! `fdatasync` (group commit) and answers the group's requests straight from that thread. No
//! task sits between a request and the disk, so a record waits for at most the commit in
//! progress and its own, and under load groups grow with the load. The shipper reads durable
//! entries in append order and releases them once its sink has accepted them, so a crash at
//! any point replays what was not shipped — under the same event ids.
//!
//! # Layout
//! - `mod.rs` — [`Outbox`]: recording, the committer thread, the shipper's view.
//! - `log.rs` — the files under `<data_dir>/audit/outbox`: checksummed segments, the chain-head
//!   checkpoint, the shipped cursor; torn-tail repair on open.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, oneshot, Notify, Semaphore};

use super::chain::{Sealer, Unplaced};
use super::event::{AuditRecord, AuditStream};
use super::AuditError;

mod log;

pub use log::Cursor;

/// Live subscribers of a stream that fall this far behind lose its oldest events (and are told
/// so).
const TAIL_CAPACITY: usize = 4096;

/// Live subscribers, per stream: a stream's channel exists while someone listens to it, so a
/// busy stream never makes another's subscribers lag, and an event wakes only its own
/// stream's. A channel whose subscribers have all gone is dropped by the next event of its
/// stream or the next subscriber of any.
#[derive(Default)]
struct Tails {
    channels: std::sync::RwLock<HashMap<String, broadcast::Sender<Committed>>>,
    /// How many channels there are: placing an event looks no further while there are none.
    open: AtomicUsize,
}

impl Tails {
    fn subscribe(&self, stream: &str) -> broadcast::Receiver<Committed> {
        let mut channels = self.channels.write().unwrap_or_else(|p| p.into_inner());
        channels.retain(|_, sender| sender.receiver_count() > 0);
        let receiver = match channels.get(stream) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = broadcast::channel(TAIL_CAPACITY);
                channels.insert(stream.to_string(), sender);
                receiver
            }
        };
        self.open.store(channels.len(), Ordering::Relaxed);
        receiver
    }

    fn listened(&self, stream: &str) -> bool {
        if self.open.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let listeners = self.channels.read().unwrap_or_else(|p| p.into_inner()).get(stream).map(|s| s.receiver_count());
        if listeners == Some(0) {
            let mut channels = self.channels.write().unwrap_or_else(|p| p.into_inner());
            if channels.get(stream).is_some_and(|sender| sender.receiver_count() == 0) {
                channels.remove(stream);
                self.open.store(channels.len(), Ordering::Relaxed);
            }
        }
        listeners.is_some_and(|n| n > 0)
    }

    fn send(&self, live: Committed) {
        if let Some(sender) = self.channels.read().unwrap_or_else(|p| p.into_inner()).get(&live.tenant) {
            // The subscribers may have gone since; a send error only says that.
            let _ = sender.send(live);
        }
    }
}

/// Bounds of one node's outbox.
#[derive(Debug, Clone)]
pub struct OutboxLimits {
    /// Records per group commit, and entries per shipping batch.
    pub max_batch: usize,
    /// Records placed and not yet committed; when that many wait, `record` waits too.
    pub queue: usize,
    /// Entries not yet shipped; beyond it, recording fails (fail-closed) or drops (best-effort).
    pub max_depth: u64,
    /// A group that no request waits for — best-effort records, and records whose durability
    /// a caller checks later ([`Outbox::record_unwaited`]) — is committed once this long has
    /// passed since its first record, once it holds a quarter of `max_batch`, or at once when
    /// a request that waits joins it (or a group forms behind it): fewer, larger commits (each
    /// an `fdatasync`) for records nobody waits on. Zero never waits.
    pub linger: std::time::Duration,
    /// A group that requests wait for is committed at once, unless the node's CPU is the
    /// bottleneck ([`Saturation`]) and the last commit held at least [`GATHER_MIN`] records:
    /// then it may wait up to this long after its first record for twice as many (at most a
    /// quarter of `max_batch`). The requests would wait for a CPU anyway; fewer `fdatasync`s
    /// leave more of it to them. Zero never waits.
    pub gather: std::time::Duration,
    /// Tells whether the CPU is the bottleneck now.
    pub saturation: Saturation,
}

/// A group commit gathers only after a commit of at least this many records: a lone request,
/// or a few, is never held back.
pub const GATHER_MIN: usize = 4;

/// Share of wall-clock time the async runtime's workers must be busy (not parked) for the
/// node to count as saturated.
const SATURATED_BUSY: f64 = 0.9;

/// How often the committer samples the runtime's busy time.
const SATURATION_SAMPLE: std::time::Duration = std::time::Duration::from_millis(10);

/// Where the committer learns whether the node's CPU is the bottleneck.
#[derive(Clone)]
pub enum Saturation {
    /// Never: groups that requests wait for are always committed at once.
    Never,
    /// When this runtime's workers were busy at least [`SATURATED_BUSY`] of the time since the
    /// last sample (they never park while runnable tasks queue).
    Runtime(tokio::runtime::Handle),
    /// Always: the outbox's own tests.
    #[cfg(test)]
    Always,
}

impl std::fmt::Debug for Saturation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Saturation::Never => "Never",
            Saturation::Runtime(_) => "Runtime",
            #[cfg(test)]
            Saturation::Always => "Always",
        })
    }
}

/// The committer's view of [`Saturation`], sampled at most every [`SATURATION_SAMPLE`].
struct SaturationGauge {
    source: Saturation,
    /// When the busy time was last read, and its sum over the workers then.
    last: Option<(Instant, std::time::Duration)>,
    saturated: bool,
}

impl SaturationGauge {
    fn new(source: Saturation) -> Self {
        SaturationGauge { source, last: None, saturated: false }
    }

    fn saturated(&mut self) -> bool {
        let handle = match &self.source {
            Saturation::Never => return false,
            #[cfg(test)]
            Saturation::Always => return true,
            Saturation::Runtime(handle) => handle,
        };
        let now = Instant::now();
        if self.last.is_some_and(|(at, _)| now.duration_since(at) < SATURATION_SAMPLE) {
            return self.saturated;
        }
        let metrics = handle.metrics();
        let workers = metrics.num_workers();
        let busy: std::time::Duration = (0..workers).map(|w| metrics.worker_total_busy_duration(w)).sum();
        if let Some((at, before)) = self.last {
            let capacity = now.duration_since(at).as_secs_f64() * workers as f64;
            self.saturated = busy.saturating_sub(before).as_secs_f64() >= SATURATED_BUSY * capacity;
        }
        self.last = Some((now, busy));
        self.saturated
    }
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
    pub id: String,
    /// The event as stored and shipped.
    pub json: Arc<[u8]>,
}

/// Where a waiting request learns its event's fate.
type Reply = oneshot::Sender<Result<Receipt, AuditError>>;

/// Resolves once an event placed by [`Outbox::record_unwaited`] is durable, or failed to be.
pub struct Durable(oneshot::Receiver<Result<Receipt, AuditError>>);

impl std::future::Future for Durable {
    type Output = Result<Receipt, AuditError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|answer| answer.unwrap_or(Err(AuditError::Closed)))
    }
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
    /// Events placed and not yet shipped (committed or still in a group).
    pub depth: AtomicU64,
    pub committed: AtomicU64,
    pub commits: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
}

pub struct Outbox {
    core: Arc<Core>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The last position `pending` returned and the cursor after it, for `remove`.
    read: Mutex<Option<(u64, log::Cursor)>>,
}

/// What requests and the committer thread share.
struct Core {
    log: Arc<log::Shared>,
    chain: String,
    /// Renders this outbox's events (source `custos://node/<id>`).
    sealer: Sealer,
    limits: OutboxLimits,
    stats: OutboxStats,
    committed: Notify,
    tails: Tails,
    building: Mutex<Building>,
    /// Signalled when a group is ready for an idle committer, or on close.
    ready: Condvar,
    /// One permit per record that may be placed and not yet committed.
    room: Semaphore,
}

/// The chain heads as records are placed, and the groups waiting to be committed.
struct Building {
    /// Heads including every placed record; a failed commit resets them to the durable ones.
    heads: HashMap<String, Head>,
    /// The position the next placed record takes.
    next: u64,
    /// Oldest first; records join the newest until it holds `max_batch`.
    groups: VecDeque<Group>,
    /// The committer is waiting on `ready` for a group.
    idle: bool,
    /// The committer is waiting on `ready` while the only group lingers.
    lingering: bool,
    /// Records the last commit held.
    last_commit: usize,
    /// While the committer lets a group that requests wait for gather: the records it waits
    /// for (0: none, commit at once).
    gather_target: usize,
    closed: bool,
}

/// One group: encoded records at positions `first..next`, written as a whole.
struct Group {
    records: Vec<u8>,
    first: u64,
    next: u64,
    /// Chain heads this group moves.
    moved: HashMap<String, Head>,
    waiting: Vec<Waiting>,
    /// A request waits on this group now: it never lingers.
    waited: bool,
    /// When its first record was placed.
    opened: Instant,
}

/// A placed record, as its group keeps it until the commit answers.
struct Waiting {
    reply: Option<Reply>,
    receipt: Receipt,
    /// For live subscribers; none when there were none at placement.
    live: Option<Committed>,
}

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir` and starts its committer thread. Entries left
    /// by an earlier run are pending again.
    pub fn open(dir: &Path, node_id: u64, limits: OutboxLimits) -> Result<Arc<Outbox>, AuditError> {
        assert!(limits.max_batch > 0 && limits.queue > 0, "outbox limits must be positive");
        // A fresh outbox (or a node whose data was wiped) starts a new chain, so its sequence
        // numbers never collide with an earlier chain of the same node.
        let new_chain = || format!("node-{node_id}.{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let (log, appender, recovered) = log::Shared::open(dir, new_chain)?;
        let stats = OutboxStats::default();
        stats.depth.store(recovered.next - recovered.shipped, Ordering::Relaxed);
        let sealer = Sealer::new(&recovered.chain, &format!("custos://node/{node_id}"))
            .map_err(|e| AuditError::Storage(e.to_string()))?;
        let core = Arc::new(Core {
            log,
            chain: recovered.chain,
            sealer,
            room: Semaphore::new(limits.queue),
            limits,
            stats,
            committed: Notify::new(),
            tails: Tails::default(),
            building: Mutex::new(Building {
                heads: recovered.heads,
                next: recovered.next,
                groups: VecDeque::new(),
                idle: false,
                lingering: false,
                last_commit: 0,
                gather_target: 0,
                closed: false,
            }),
            ready: Condvar::new(),
        });
        let committer = {
            let core = core.clone();
            std::thread::Builder::new()
                .name("custos-audit-commit".into())
                .spawn(move || core.commit_groups(appender))
                .map_err(|e| AuditError::Storage(format!("starting the audit committer: {e}")))?
        };
        Ok(Arc::new(Outbox { core, committer: Mutex::new(Some(committer)), read: Mutex::new(None) }))
    }

    /// This outbox's chain id (the `chain` of every event it writes).
    pub fn chain(&self) -> &str {
        &self.core.chain
    }

    pub fn stats(&self) -> &OutboxStats {
        &self.core.stats
    }

    /// Records an event and returns once it is durable on this node.
    pub async fn record(&self, record: AuditRecord) -> Result<Receipt, AuditError> {
        self.place_answered(record, true).await?.await
    }

    /// Places an event in its chain now, like [`Outbox::record`], but returns without waiting
    /// for it to be durable: the returned [`Durable`] says when it is. For events whose
    /// durability something else already holds (a Raft entry carrying them): their group may
    /// linger, and the chain keeps the order in which they were placed.
    pub async fn record_unwaited(&self, record: AuditRecord) -> Result<Durable, AuditError> {
        self.place_answered(record, false).await
    }

    /// Places an event once there is room (refused past the backlog bound), with an answer
    /// when it is durable; `waits`: the caller waits for that answer now.
    async fn place_answered(&self, record: AuditRecord, waits: bool) -> Result<Durable, AuditError> {
        let core = &self.core;
        if core.stats.depth.load(Ordering::Relaxed) >= core.limits.max_depth {
            core.stats.failed.fetch_add(1, Ordering::Relaxed);
            return Err(AuditError::Backlog { depth: core.limits.max_depth });
        }
        core.room.acquire().await.map_err(|_| AuditError::Closed)?.forget();
        let (reply, answer) = oneshot::channel();
        if let Err(error) = core.place(record, Some(reply), waits) {
            core.stats.failed.fetch_add(1, Ordering::Relaxed);
            return Err(error);
        }
        Ok(Durable(answer))
    }

    /// Places an event without waiting for it to be durable; when the queue or the outbox is
    /// full the event is dropped and counted. Returns whether it was placed.
    pub fn record_detached(&self, record: AuditRecord) -> bool {
        let core = &self.core;
        let placed = core.stats.depth.load(Ordering::Relaxed) < core.limits.max_depth
            && core.room.try_acquire().map(|permit| permit.forget()).is_ok()
            && core.place(record, None, false).is_ok();
        if !placed {
            core.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        placed
    }

    /// Up to `limit` durable entries not yet sent to the sink, oldest first. Reads files: off
    /// the async threads (the shipper calls it through `spawn_blocking`).
    pub fn pending(&self, limit: usize) -> Result<Vec<Entry>, AuditError> {
        let (entries, after) = self.core.log.read(limit)?;
        if let Some(last) = entries.last() {
            *self.read.lock().unwrap_or_else(|p| p.into_inner()) = Some((last.position, after));
        }
        Ok(entries)
    }

    /// Releases the oldest pending entries up to and including the last of `entries` (a sink
    /// has them durably): [`Outbox::sent`], then [`Outbox::release`]. Writes files, like
    /// [`Outbox::pending`].
    pub fn remove(&self, entries: &[Entry]) -> Result<(), AuditError> {
        if let Some(end) = self.sent(entries)? {
            self.release(end);
        }
        Ok(())
    }

    /// Marks the oldest unsent entries up to and including the last of `entries` sent: a sink
    /// took them, and `pending` goes on after them. They stay in the outbox until released;
    /// the returned cursor (none for no entries) is where they end, for [`Outbox::release`].
    pub fn sent(&self, entries: &[Entry]) -> Result<Option<Cursor>, AuditError> {
        let Some(last) = entries.last() else { return Ok(None) };
        let after = match *self.read.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((position, after)) if position == last.position => after,
            _ => {
                // Not the batch `pending` returned last: find where it ends.
                let (again, after) = self.core.log.read(entries.len())?;
                if again.last().map(|e| e.position) != Some(last.position) {
                    return Err(AuditError::Storage("sent entries are not the oldest unsent ones".into()));
                }
                after
            }
        };
        self.core.log.send(after);
        Ok(Some(after))
    }

    /// Releases the sent entries up to `end` (a cursor [`Outbox::sent`] returned: the sink has
    /// made them and everything before them durable) and returns how many. Their segments go
    /// once wholly shipped; the cursor is not flushed, so after a crash they may be shipped
    /// again, under the same ids. Writes files, like [`Outbox::pending`].
    pub fn release(&self, end: Cursor) -> u64 {
        let released = self.core.log.release(end);
        self.core.stats.depth.fetch_sub(released, Ordering::Relaxed);
        released
    }

    /// Forgets what was sent and not released (the sink failed): `pending` starts again at the
    /// oldest unreleased entry.
    pub fn rewind(&self) {
        self.core.log.rewind();
    }

    /// Resolves after the next group commit (or at once if one happened since the last call).
    pub async fn committed(&self) {
        self.core.committed.notified().await
    }

    /// Every event of `stream` (a tenant id, or `_cluster`) placed and committed from now on.
    pub fn subscribe(&self, stream: &str) -> broadcast::Receiver<Committed> {
        self.core.tails.subscribe(stream)
    }

    /// The chain head (sequence, hex hash) of a stream on this node, from durable state.
    pub fn head(&self, stream: &AuditStream) -> Result<Option<(u64, String)>, AuditError> {
        Ok(self.core.log.head(stream.as_str()).map(|head| (head.seq, hex::encode(head.hash))))
    }

    /// Stops recording: new records are refused `Closed`; records already placed are
    /// committed and answered, then the committer thread ends.
    pub async fn close(&self) {
        self.core.close();
        let committer = self.committer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(committer) = committer {
            if tokio::task::spawn_blocking(move || committer.join()).await.is_err() {
                tracing::error!("the audit committer thread could not be joined");
            }
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.core.close();
    }
}

/// Moves a chain's head; the tenant's name is copied only for a chain new to `heads`.
fn set_head(heads: &mut HashMap<String, Head>, tenant: &str, head: Head) {
    match heads.get_mut(tenant) {
        Some(current) => *current = head,
        None => {
            heads.insert(tenant.to_string(), head);
        }
    }
}

impl Core {
    fn building(&self) -> MutexGuard<'_, Building> {
        self.building.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the only group may wait for more records, the outbox being open: one nobody
    /// waits on while it is small, one requests wait for while the committer gathers and it
    /// holds fewer than the target.
    fn may_linger(&self, building: &Building) -> bool {
        if building.closed || building.groups.len() != 1 {
            return false;
        }
        let group = &building.groups[0];
        if group.waited {
            group.waiting.len() < building.gather_target
        } else {
            !self.limits.linger.is_zero() && group.waiting.len() < self.limits.max_batch / 4
        }
    }

    /// How long the oldest group may wait after its first record, and (for one that requests
    /// wait for) how many records it gathers for.
    fn window(&self, building: &Building, gauge: &mut SaturationGauge) -> (std::time::Duration, usize) {
        if !building.groups[0].waited {
            return (self.limits.linger, 0);
        }
        if self.limits.gather.is_zero() || building.last_commit < GATHER_MIN || !gauge.saturated() {
            return (std::time::Duration::ZERO, 0);
        }
        (self.limits.gather, (2 * building.last_commit).min(self.limits.max_batch / 4))
    }

    fn close(&self) {
        self.building().closed = true;
        self.room.close();
        self.ready.notify_one();
    }

    /// Gives one record (whose caller holds a `room` permit, which passes to the group) its
    /// place in its chain and adds it to the newest group. On an error the permit is given
    /// back and nothing was placed.
    /// `waits`: the caller waits for the record now, so its group must not linger.
    fn place(&self, record: AuditRecord, reply: Option<Reply>, waits: bool) -> Result<(), AuditError> {
        let time_ms = now_ms();
        let placed = match self.sealer.render(&record, time_ms) {
            Ok(rendered) => {
                let mut building = self.building();
                let placed = self.place_locked(&mut building, record.stream.as_str(), &rendered, time_ms, reply, waits);
                let wake = placed.is_ok()
                    && (std::mem::take(&mut building.idle) || (building.lingering && !self.may_linger(&building)));
                drop(building);
                if wake {
                    self.ready.notify_one();
                }
                placed
            }
            Err(e) => Err(AuditError::Storage(e.to_string())),
        };
        if placed.is_err() {
            self.room.add_permits(1);
        }
        placed
    }

    fn place_locked(
        &self,
        building: &mut Building,
        tenant: &str,
        rendered: &Unplaced,
        time_ms: u64,
        reply: Option<Reply>,
        waits: bool,
    ) -> Result<(), AuditError> {
        if building.closed {
            return Err(AuditError::Closed);
        }
        let head = building.heads.get(tenant).copied().unwrap_or(Head { seq: 0, hash: [0u8; 32] });
        let seq = head.seq + 1;
        let sealed = self.sealer.seal(rendered, tenant, seq, (head.seq > 0).then_some(&head.hash));
        let new_head = Head { seq, hash: sealed.hash };
        let position = building.next;
        let max_batch = self.limits.max_batch;
        if building.groups.back().is_none_or(|g| g.waiting.len() >= max_batch) {
            building.groups.push_back(Group {
                records: Vec::new(),
                first: position,
                next: position,
                moved: HashMap::new(),
                waiting: Vec::new(),
                waited: false,
                opened: Instant::now(),
            });
        }
        let group = building.groups.back_mut().expect("a group was just ensured");
        let record = log::Record { position, time_ms, head: new_head, tenant, json: &sealed.json };
        log::encode(&mut group.records, &record)?;
        // The head moves now, so the next record (in this group or a later one, placed while
        // this one commits) chains onto it; a failed commit resets the heads from the log.
        set_head(&mut group.moved, tenant, new_head);
        group.next = position + 1;
        let live = self.tails.listened(tenant).then(|| Committed {
            tenant: tenant.to_string(),
            id: sealed.id.clone(),
            json: Arc::from(sealed.json),
        });
        group.waiting.push(Waiting { reply, receipt: Receipt { id: sealed.id, chainseq: seq }, live });
        group.waited |= waits;
        // Counted from placement: an event waiting in a lingering group is not shipped either,
        // and the shipper's decrement can never come before this increment.
        self.stats.depth.fetch_add(1, Ordering::Relaxed);
        set_head(&mut building.heads, tenant, new_head);
        building.next = position + 1;
        Ok(())
    }

    /// The committer thread: takes the oldest group whenever there is one, appends it and
    /// answers its requests; after a failed commit every group placed behind it (chained onto
    /// it) fails too and placing starts again from what is durable. Ends once closed and empty.
    fn commit_groups(&self, mut appender: log::Appender) {
        let mut gauge = SaturationGauge::new(self.limits.saturation.clone());
        loop {
            let group = {
                let mut building = self.building();
                loop {
                    if building.groups.is_empty() {
                        if building.closed {
                            return;
                        }
                        building.idle = true;
                        building = self.ready.wait(building).unwrap_or_else(|p| p.into_inner());
                        continue;
                    }
                    let (window, target) = self.window(&building, &mut gauge);
                    building.gather_target = target;
                    let linger_until = building.groups[0].opened + window;
                    let now = Instant::now();
                    if !self.may_linger(&building) || now >= linger_until {
                        building.gather_target = 0;
                        let group = building.groups.pop_front().expect("a group is there");
                        building.last_commit = group.waiting.len();
                        break group;
                    }
                    building.lingering = true;
                    building =
                        self.ready.wait_timeout(building, linger_until - now).unwrap_or_else(|p| p.into_inner()).0;
                    building.lingering = false;
                }
            };
            let stats = &self.stats;
            let entries = group.next - group.first;
            match appender.append(&group.records, group.first, group.next, &group.moved) {
                Ok(()) => {
                    stats.committed.fetch_add(entries, Ordering::Relaxed);
                    stats.commits.fetch_add(1, Ordering::Relaxed);
                    self.committed.notify_one();
                    for Waiting { reply, receipt, live } in group.waiting {
                        if let Some(live) = live {
                            self.tails.send(live);
                        }
                        if let Some(reply) = reply {
                            let _ = reply.send(Ok(receipt));
                        }
                    }
                }
                Err(error) => {
                    let mut failed = vec![group];
                    {
                        let mut building = self.building();
                        failed.extend(building.groups.drain(..));
                        (building.next, building.heads) = self.log.durable();
                    }
                    let count: usize = failed.iter().map(|g| g.waiting.len()).sum();
                    stats.depth.fetch_sub(count as u64, Ordering::Relaxed);
                    tracing::error!(%error, events = count, "audit outbox commit failed");
                    stats.failed.fetch_add(count as u64, Ordering::Relaxed);
                    for Waiting { reply, .. } in failed.into_iter().flat_map(|g| g.waiting) {
                        if let Some(reply) = reply {
                            let _ = reply.send(Err(error.clone()));
                        }
                    }
                    self.room.add_permits(count - entries as usize);
                }
            }
            self.room.add_permits(entries as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::audit::chain::Verifier;
    use crate::audit::event::{Actor, AuditData, EventType, Outcome};

    fn limits() -> OutboxLimits {
        OutboxLimits {
            max_batch: 64,
            queue: 256,
            max_depth: 1000,
            linger: Duration::ZERO,
            gather: Duration::ZERO,
            saturation: Saturation::Never,
        }
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

    /// Places `n` records nobody waits on and waits until they are durable.
    async fn record_unwaited(outbox: &Outbox, n: usize) {
        let mut durable = Vec::new();
        for _ in 0..n {
            durable.push(outbox.record_unwaited(record("acme")).await.unwrap());
        }
        for d in durable {
            d.await.unwrap();
        }
    }

    /// After a commit of 8 lingering records, how long one waiting request takes, and the
    /// commits it took.
    async fn wait_after_a_commit_of_eight(saturation: Saturation, gather: Duration) -> (Duration, u64) {
        let dir = tempfile::tempdir().unwrap();
        let limits = OutboxLimits { linger: Duration::from_millis(50), gather, saturation, ..limits() };
        let outbox = Outbox::open(dir.path(), 1, limits).unwrap();
        record_unwaited(&outbox, 8).await;
        assert_eq!(outbox.stats().commits.load(Ordering::Relaxed), 1, "the eight lingered into one commit");
        let started = Instant::now();
        outbox.record(record("acme")).await.unwrap();
        (started.elapsed(), outbox.stats().commits.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn a_waiting_request_gathers_company_only_while_the_node_is_saturated() {
        let (waited, commits) = wait_after_a_commit_of_eight(Saturation::Always, Duration::from_millis(300)).await;
        assert!(waited >= Duration::from_millis(250), "a saturated node committed at once ({waited:?})");
        assert_eq!(commits, 2);
        let (waited, _) = wait_after_a_commit_of_eight(Saturation::Never, Duration::from_secs(30)).await;
        assert!(waited < Duration::from_secs(10), "a node with CPU to spare held a request ({waited:?})");
        // The runtime of this test idles between records: not saturated.
        let runtime = Saturation::Runtime(tokio::runtime::Handle::current());
        let (waited, _) = wait_after_a_commit_of_eight(runtime, Duration::from_secs(30)).await;
        assert!(waited < Duration::from_secs(10), "an idle runtime counted as saturated ({waited:?})");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gathering_group_is_committed_once_it_holds_twice_the_last_commit() {
        let dir = tempfile::tempdir().unwrap();
        let limits = OutboxLimits {
            linger: Duration::from_millis(50),
            gather: Duration::from_secs(30),
            saturation: Saturation::Always,
            ..limits()
        };
        let outbox = Outbox::open(dir.path(), 1, limits).unwrap();
        record_unwaited(&outbox, 4).await;
        let started = Instant::now();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let outbox = outbox.clone();
                tokio::spawn(async move { outbox.record(record("acme")).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the full group waited out the window");
        assert_eq!(outbox.stats().commits.load(Ordering::Relaxed), 2, "the eight gathered into one commit");
        let report = verify(&outbox, "acme");
        assert!(report.is_clean(), "{:?}", report.findings);
    }

    #[tokio::test]
    async fn a_tail_sees_only_its_streams_events_and_another_streams_burst_never_makes_it_lag() {
        let dir = tempfile::tempdir().unwrap();
        let limits = OutboxLimits { max_batch: 1024, queue: 2 * TAIL_CAPACITY, max_depth: 100_000, ..limits() };
        let outbox = Outbox::open(dir.path(), 1, limits).unwrap();
        let mut acme = outbox.subscribe("acme");
        let mut globex = outbox.subscribe("globex");
        outbox.record(record("acme")).await.unwrap();
        for _ in 0..TAIL_CAPACITY + 100 {
            assert!(outbox.record_detached(record("globex")));
        }
        // Groups commit in order: once this one is durable, every event before it is too.
        outbox.record(record("acme")).await.unwrap();
        for seq in [1, 2] {
            let event = acme.try_recv().expect("acme's own events, none missed");
            assert_eq!((event.tenant.as_str(), event.id.ends_with(&format!(".{seq}"))), ("acme", true), "{event:?}");
        }
        assert!(matches!(acme.try_recv(), Err(broadcast::error::TryRecvError::Empty)));
        // The stream with the burst lost its own oldest events, counted as its own.
        assert_eq!(globex.try_recv().unwrap_err(), broadcast::error::TryRecvError::Lagged(100));

        // A channel nobody listens to any more goes with its stream's next event, or the next
        // subscriber; with none left, placing an event looks no further.
        drop((acme, globex));
        outbox.record(record("acme")).await.unwrap();
        assert_eq!(outbox.core.tails.channels.read().unwrap().len(), 1);
        let initech = outbox.subscribe("initech");
        assert_eq!(outbox.core.tails.channels.read().unwrap().keys().collect::<Vec<_>>(), ["initech"]);
        drop(initech);
        outbox.record(record("initech")).await.unwrap();
        assert_eq!(outbox.core.tails.open.load(Ordering::Relaxed), 0);
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_request_never_waits_for_the_linger() {
        let dir = tempfile::tempdir().unwrap();
        let limits = OutboxLimits { linger: Duration::from_secs(30), ..limits() };
        let outbox = Outbox::open(dir.path(), 1, limits).unwrap();
        let started = std::time::Instant::now();
        // Concurrent recorders keep the next group waiting while one commits (load); each
        // group holds requests that wait for it.
        let recorders: Vec<_> = (0..8)
            .map(|_| {
                let outbox = outbox.clone();
                tokio::spawn(async move {
                    for _ in 0..20 {
                        outbox.record(record("acme")).await.unwrap();
                    }
                })
            })
            .collect();
        for recorder in recorders {
            recorder.await.unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "a request waited for the linger");
        assert_eq!(outbox.stats().committed.load(Ordering::Relaxed), 160);
    }

    #[tokio::test]
    async fn records_nobody_waits_on_linger_into_one_commit_until_a_request_waits() {
        let dir = tempfile::tempdir().unwrap();
        let limits = OutboxLimits { linger: Duration::from_secs(30), ..limits() };
        let outbox = Outbox::open(dir.path(), 1, limits).unwrap();
        let commits = || outbox.stats().commits.load(Ordering::Relaxed);
        // Placed in order, none durable yet: their group lingers.
        let mut durable = Vec::new();
        for _ in 0..3 {
            durable.push(outbox.record_unwaited(record("acme")).await.unwrap());
        }
        assert!(outbox.record_detached(record("globex")));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(commits(), 0, "a group nobody waits on lingers");

        // A request that waits joins it: the whole group is committed at once, in order.
        let started = std::time::Instant::now();
        let receipt =
            tokio::time::timeout(Duration::from_secs(10), outbox.record(record("acme"))).await.unwrap().unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(receipt.chainseq, 4);
        assert_eq!(commits(), 1, "one commit for the lingering records and the waiting one");
        let seqs: Vec<u64> =
            futures::future::join_all(durable).await.into_iter().map(|r| r.unwrap().chainseq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_full_outbox_refuses_or_drops() {
        let dir = tempfile::tempdir().unwrap();
        let outbox =
            Outbox::open(dir.path(), 1, OutboxLimits { max_batch: 8, queue: 8, max_depth: 3, ..limits() }).unwrap();
        for _ in 0..3 {
            outbox.record(record("acme")).await.unwrap();
        }
        assert!(matches!(outbox.record(record("acme")).await, Err(AuditError::Backlog { depth: 3 })));
        assert!(!outbox.record_detached(record("acme")));
        assert_eq!(outbox.stats().dropped.load(Ordering::Relaxed), 1);
    }
}

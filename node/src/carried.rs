//! Audit events carried in the Raft log with their governance writes, and the recorder that
//! moves this node's into its audit outbox.
//!
//! In fail-closed mode a request is answered only once its audit event is durable. For a
//! governance write that would be two fsyncs in a row: the Raft entry, then the event's outbox
//! group commit. So the API lets the event ride in the write's own log entry instead
//! (`Command::Audited`, see `api::audit::carry`): it is durable — on a quorum — when the write
//! commits, with one log flush. The state machine keeps it, with the command's outcome, until
//! the node that took the request (its origin) reports it recorded.
//!
//! The middleware still places the event in the outbox when it answers, so it takes its place
//! in the node's chain among the other events, but does not wait for that group's commit. The
//! recorder runs on every node: every `audit.carried_record_interval_ms` it reads the events
//! this node carried, waits until those the middleware placed are durable in the outbox and
//! records the others (after a restart, the placements are gone), then proposes
//! `AuditRecorded` up to the last. Events of a node that left the cluster are recorded by the
//! leader, in its own chain. After a crash between recording and that report the events are
//! recorded again — a second event of the same change, with the same `request_id` — never
//! lost.
//!
//! Carrying pays off for a write that would otherwise commit a group of its own: when more than
//! a few governance writes are in flight on the node, their events share group commits, and
//! the API does not carry (the replicated copy costs every node's apply more than the shared
//! fsync). Nor while the recorder cannot record (outbox full or failing) or falls a full batch
//! behind: events go through the outbox before the answer again, which refuses requests with
//! 503 when it cannot take them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use custos_actors::audit::outbox::Durable;
use custos_actors::audit::{Audit, AuditData, AuditRecord, AuditStream, EventType};
use custos_raft::{CarriedEvent, CarriedPosition, Cluster, Command, NodeId, Proposal, RequestId, TenantId};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use crate::api::error::ApiError;

/// Most events recorded in one round (one group commit, one `AuditRecorded`).
pub const RECORD_BATCH: usize = 1024;
/// Longest wait between rounds after a failure.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often the leader looks for events of nodes that left the cluster, in rounds.
const ADOPT_EVERY: u32 = 250;
/// Most departed origins adopted in one look.
const MAX_ADOPTED: usize = 16;

/// A carried event as the API encodes it: the event the middleware would have recorded, less
/// what only the outcome tells (outcome, reason, status), which the recorder adds.
#[derive(Debug, Serialize, Deserialize)]
pub struct CarriedRecord {
    /// The event type's short name.
    pub kind: String,
    /// The tenant the request named (path or body), valid or not.
    pub tenant: Option<String>,
    pub key: Option<String>,
    pub data: AuditData,
    /// The status the API answers when the command is applied.
    pub success_status: u16,
    /// Names the event the middleware placed in the outbox for the same request, if it did.
    pub token: u64,
}

/// Most carried events the API is placing, or placed, that the recorder has not handled yet.
const MAX_EXPECTED: usize = 65_536;
/// Most governance writes in flight on a node for a new one to carry its event.
const MAX_CARRYING_WRITES: usize = 4;
/// Tokens remembered to recognise an event carried twice by one request (an internal retry).
const MAX_SEEN: usize = 65_536;

/// Tokens of the carried events handled lately, the oldest forgotten first.
#[derive(Default)]
struct Seen {
    tokens: std::collections::HashSet<u64>,
    order: std::collections::VecDeque<u64>,
}

impl Seen {
    fn contains(&self, token: u64) -> bool {
        self.tokens.contains(&token)
    }

    /// Remembers `token`, forgetting the oldest beyond [`MAX_SEEN`].
    fn insert(&mut self, token: u64) {
        if !self.tokens.insert(token) {
            return;
        }
        self.order.push_back(token);
        if self.order.len() > MAX_SEEN {
            if let Some(oldest) = self.order.pop_front() {
                self.tokens.remove(&oldest);
            }
        }
    }
}

/// What the API and the recorder share: whether writes may carry their events (the recorder
/// keeps up), and the carried events the API is about to place, or placed, in the outbox.
pub struct Carrier {
    accepting: AtomicBool,
    /// Governance write requests on this node between their start and their answer.
    writing: AtomicUsize,
    /// By token: where the API hands over its placement of the event.
    expected: Mutex<HashMap<u64, oneshot::Receiver<Durable>>>,
}

impl Default for Carrier {
    fn default() -> Self {
        Carrier { accepting: AtomicBool::new(true), writing: AtomicUsize::new(0), expected: Mutex::new(HashMap::new()) }
    }
}

impl Carrier {
    /// Whether a write should carry its event now: the recorder keeps up, and few governance
    /// writes are in flight on this node. A lone write saves a whole outbox fsync by carrying;
    /// concurrent writes share group commits anyway, and carrying would only add replicated
    /// state to every node's apply (measured: a fifth fewer updates/s at 64 clients).
    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::Relaxed)
            && self.writing.load(Ordering::Relaxed) <= MAX_CARRYING_WRITES
            && self.expected().len() < MAX_EXPECTED
    }

    /// Counts a governance write request until the returned guard drops (its answer).
    pub fn writing(self: &Arc<Self>) -> Writing {
        self.writing.fetch_add(1, Ordering::Relaxed);
        Writing(self.clone())
    }

    fn expected(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Receiver<Durable>>> {
        self.expected.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a write about to carry its event, under a fresh token: until the returned
    /// [`Placement`] is given the event's place in the outbox, or dropped, the recorder waits
    /// for it rather than recording the event itself.
    pub fn expect(self: &Arc<Self>) -> Placement {
        let token = rand::random();
        let (sender, receiver) = oneshot::channel();
        self.expected().insert(token, receiver);
        Placement { carrier: self.clone(), token, sender: Some(sender) }
    }

    fn take(&self, token: u64) -> Option<oneshot::Receiver<Durable>> {
        self.expected().remove(&token)
    }

    fn set(&self, accepting: bool) {
        if self.accepting.swap(accepting, Ordering::Relaxed) != accepting {
            match accepting {
                true => tracing::info!("carried audit events are recorded again; governance writes carry their events"),
                false => {
                    tracing::warn!("carried audit events are not being recorded; governance writes wait for the outbox")
                }
            }
        }
    }
}

/// A governance write request in flight (see [`Carrier::writing`]).
pub struct Writing(Arc<Carrier>);

impl Drop for Writing {
    fn drop(&mut self) {
        self.0.writing.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A write's carried event, expected in the outbox from the API (see [`Carrier::expect`]).
pub struct Placement {
    carrier: Arc<Carrier>,
    pub token: u64,
    sender: Option<oneshot::Sender<Durable>>,
}

impl Placement {
    /// The API placed the event in the outbox.
    pub fn placed(mut self, durable: Durable) {
        if let Some(sender) = self.sender.take() {
            // The recorder may have given up on it already; then it recorded the event itself.
            let _ = sender.send(durable);
        }
    }
}

impl Drop for Placement {
    /// Not placed (the write failed or the request ended first): the recorder records the
    /// event, if the write committed.
    fn drop(&mut self) {
        if self.sender.is_some() {
            self.carrier.take(self.token);
        }
    }
}

/// Counted at most this far for status.
const MAX_COUNTED: usize = 10_000;

/// For cluster status: whether the recorder keeps up, and how many of this node's carried
/// events governance state still holds (at most [`MAX_COUNTED`]; recorded ones leave with the
/// next report).
#[derive(Debug, Serialize)]
pub struct CarriedStatus {
    pub recording: bool,
    pub unreported: Option<usize>,
}

pub fn status(cluster: &Cluster, carrier: &Carrier) -> CarriedStatus {
    CarriedStatus {
        recording: carrier.accepting.load(Ordering::Relaxed),
        unreported: cluster.reader().carried_count(cluster.id(), MAX_COUNTED).ok(),
    }
}

/// The audit record of a carried event, with its outcome. Its stream is the tenant's when
/// the tenant exists (a refused request may name a made-up one), else the cluster's.
fn record_of(cluster: &Cluster, carried: &CarriedEvent, record: CarriedRecord) -> Result<AuditRecord, String> {
    let kind = EventType::parse(&record.kind).ok_or_else(|| format!("unknown event type {}", record.kind))?;
    let (status, reason) = match &carried.rejection {
        None => (StatusCode::from_u16(record.success_status).map_err(|e| e.to_string())?, None),
        Some(rejection) => {
            let error = ApiError::from(rejection.clone());
            (error.status, Some(error.code.to_string()))
        }
    };
    let known = record
        .tenant
        .as_deref()
        .and_then(|t| TenantId::new(t).ok())
        .filter(|tenant| status.is_success() || cluster.reader().tenant(tenant).ok().flatten().is_some());
    let stream = known.map_or(AuditStream::Cluster, AuditStream::Tenant);
    let subject = match (&record.key, &record.tenant) {
        (Some(key), _) => Some(format!("keys/{key}")),
        (None, Some(tenant)) if stream == AuditStream::Cluster => Some(format!("tenants/{tenant}")),
        _ => None,
    };
    let mut data = record.data;
    data.outcome = crate::api::audit::outcome(status);
    data.reason = reason;
    data.details.insert("http_status".into(), status.as_u16().into());
    data.details.insert("raft_index".into(), carried.position.index.into());
    Ok(AuditRecord { stream, kind, subject, data })
}

/// Makes up to [`RECORD_BATCH`] of `origin`'s events after `after` durable in this node's
/// outbox: those the API placed are waited for, the others (the node restarted since, or the
/// request ended before its answer) are recorded now, marked `recorded_from_log`. Returns the position
/// of the last one durable, in log order (None: none were), whether the batch was full, and the
/// error that stopped it early.
async fn record_batch(
    cluster: &Cluster,
    audit: &Audit,
    carrier: &Carrier,
    seen: &mut Seen,
    origin: NodeId,
    after: Option<CarriedPosition>,
) -> (Option<CarriedPosition>, bool, Option<String>) {
    let pending = match cluster.reader().carried(origin, after, RECORD_BATCH) {
        Ok(pending) => pending,
        Err(error) => return (None, false, Some(error.to_string())),
    };
    // Everything is placed first (one group commit for those recorded here), then awaited.
    // A write the cluster retried internally (its answer was lost on the way) applies again as
    // a replay and carries the same event (token) again: one request, one event.
    let mut placed = Vec::with_capacity(pending.len());
    let mut tokens = std::collections::HashSet::new();
    let mut stopped = None;
    for carried in &pending {
        let record = match serde_json::from_slice::<CarriedRecord>(&carried.event) {
            Ok(record) => record,
            // Only this build's API writes them; one that does not decode is a defect to see,
            // never a reason to stop recording the rest.
            Err(error) => {
                tracing::error!(%error, index = carried.position.index, "a carried audit event does not decode");
                placed.push((carried.position, None, None));
                continue;
            }
        };
        let token = record.token;
        if seen.contains(token) || !tokens.insert(token) {
            placed.push((carried.position, None, None));
            continue;
        }
        match durable_of(cluster, audit, carrier, carried, record).await {
            Ok(durable) => placed.push((carried.position, Some(token), durable)),
            Err(error) => {
                stopped = Some(error);
                break;
            }
        }
    }
    let mut last = None;
    for (position, token, durable) in placed {
        if let Some(durable) = durable {
            if let Err(error) = durable.await {
                return (last, false, Some(error.to_string()));
            }
        }
        // Remembered only once durable: a failed round records it again.
        if let Some(token) = token {
            seen.insert(token);
        }
        last = Some(position);
    }
    (last, pending.len() == RECORD_BATCH, stopped)
}

/// The event's way to durability in the outbox: the API's placement, or a recording made now.
/// None for an event whose record makes no event (a defect to see, logged).
async fn durable_of(
    cluster: &Cluster,
    audit: &Audit,
    carrier: &Carrier,
    carried: &CarriedEvent,
    record: CarriedRecord,
) -> Result<Option<Durable>, String> {
    if let Some(placement) = carrier.take(record.token) {
        // The request is still between its write and its answer, or placed the event.
        if let Ok(durable) = placement.await {
            return Ok(Some(durable));
        }
    }
    match record_of(cluster, carried, record) {
        Ok(mut record) => {
            record.data.details.insert("recorded_from_log".into(), true.into());
            audit.outbox().record_unwaited(record).await.map(Some).map_err(|e| e.to_string())
        }
        Err(error) => {
            tracing::error!(%error, index = carried.position.index, "a carried audit event makes no event");
            Ok(None)
        }
    }
}

/// Tells the cluster `origin`'s events through `through` are recorded.
async fn report(cluster: &Cluster, origin: NodeId, through: CarriedPosition) -> Result<(), String> {
    let id = format!("audit-recorded/{origin}/{}/{}", through.index, through.slot);
    let request_id = RequestId::new(id).map_err(|e| e.to_string())?;
    let proposal = Proposal {
        request_id,
        proposed_at_ms: crate::api::now_ms(),
        command: Command::AuditRecorded { origin, through },
    };
    cluster.write(proposal).await.map(|_| ()).map_err(|e| e.to_string())
}

/// On the leader: records the events of nodes no longer in the cluster, which nobody else will.
async fn adopt(cluster: &Cluster, audit: &Audit, carrier: &Carrier, seen: &mut Seen) {
    let me = cluster.id();
    if cluster.node_status().leader_id != Some(me) {
        return;
    }
    let Ok(status) = cluster.status().await else { return };
    let Ok(origins) = cluster.reader().carried_origins(MAX_ADOPTED) else { return };
    for origin in origins.into_iter().filter(|o| !status.members.iter().any(|m| m.id == *o)) {
        loop {
            let (last, full, failed) = record_batch(cluster, audit, carrier, seen, origin, None).await;
            if let Some(last) = last {
                if let Err(error) = report(cluster, origin, last).await {
                    tracing::warn!(origin, %error, "reporting adopted audit events failed; trying again later");
                    return;
                }
                tracing::info!(origin, through = last.index, "recorded the audit events of a node that left");
            }
            if let Some(error) = failed {
                tracing::warn!(origin, %error, "recording adopted audit events failed; trying again later");
                return;
            }
            if !full {
                break;
            }
        }
    }
}

/// The recorder: runs until `stop` turns true, then records and reports what is left once more.
pub async fn record(
    cluster: Cluster,
    audit: Arc<Audit>,
    carrier: Arc<Carrier>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let origin = cluster.id();
    // Recorded through, in this run; and the part of it not yet reported.
    let mut after: Option<CarriedPosition> = None;
    let mut unreported: Option<CarriedPosition> = None;
    let mut backoff = interval;
    let mut rounds: u32 = 0;
    let mut seen = Seen::default();
    loop {
        let stopping = *stop.borrow();
        let (last, full, failed) = record_batch(&cluster, &audit, &carrier, &mut seen, origin, after).await;
        if last.is_some() {
            after = last;
            unreported = last;
        }
        if let Some(through) = unreported {
            match report(&cluster, origin, through).await {
                Ok(()) => unreported = None,
                // Reported with a later round's; recorded events are not read again meanwhile.
                Err(error) => tracing::debug!(%error, "reporting recorded audit events failed; will report later"),
            }
        }
        if let Some(error) = failed {
            tracing::warn!(%error, "recording carried audit events failed; retrying");
            carrier.set(false);
            if stopping {
                return;
            }
            wait(&mut stop, backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        carrier.set(!full);
        backoff = interval;
        rounds = rounds.wrapping_add(1);
        if rounds.is_multiple_of(ADOPT_EVERY) {
            adopt(&cluster, &audit, &carrier, &mut seen).await;
        }
        if stopping {
            return;
        }
        if !full {
            // A report that failed (no leader yet, say) is tried again within a second.
            let period = if unreported.is_some() { interval.min(MAX_BACKOFF) } else { interval };
            wait(&mut stop, period).await;
        }
    }
}

async fn wait(stop: &mut watch::Receiver<bool>, period: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(period) => {}
        _ = stop.changed() => {}
    }
}

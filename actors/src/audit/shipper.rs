//! The shipper: moves outbox entries to the sink, oldest first, at least once.
//!
//! It reads up to `max_batch` entries, submits them to the sink and keeps up to
//! `max_in_flight` such batches on their way at once (a sink such as Kafka queues a batch
//! behind the previous one and acknowledges it later, so the next batch need not wait for
//! that round trip). Entries leave the outbox only once the sink has them durably, oldest
//! batch first: at once for a sink durable on delivery (Kafka), after its next `sync` for one
//! that syncs later (the local log: at most `sync_interval` after a delivery, so one fsync per
//! tenant covers many deliveries). After a failed delivery or sync it waits for the batches
//! still on their way, then sends everything not yet durable again after a backoff that
//! doubles up to a cap, so a sink that is down costs one attempt per backoff period, not a
//! busy loop. After a batch smaller than `max_batch` it lingers before reading again, so under
//! load each delivery (a sink round trip, an fsync, a cursor write) carries many events
//! instead of the few of one group commit.
//!
//! A delivery never times out here (nor in the Kafka sink): giving up on a batch while later
//! ones are on their way could let those land first. A batch unacknowledged for
//! `stalled_after` is reported instead (`last_error`, with the sink's [`AuditSink::problem`]),
//! once per stall. On stop the shipper waits up to `stop_grace` for the batches on their way;
//! what is still unacknowledged then stays in the outbox for the next start.
//!
//! It runs in actors ([`spawn`]): the sink's adapter actor ([`SinkAdapter`], named
//! `custos/<chain>/audit/kafka` or `…/local`) owns one run, which ends with it however it
//! ends, under a [`ShipperSupervisor`] (`custos/<chain>/audit`). A run that panics (or an
//! adapter that ends before a stop) fails its actor; the supervisor counts and reports it and
//! starts a fresh one from the outbox's shipped cursor (what the failed run had
//! sent goes again) after a backoff; more than [`MAX_RESTARTS`] failures within
//! [`RESTART_WINDOW`] leave shipping stopped and say so in status (`shipper_failed`), so a
//! fault that recurs does not spin. The outbox then fills, and fail-closed requests get 503
//! `audit_backlog`. Once the stop signal turns true (or its sender is gone), nothing starts
//! again: a failure while stopping is reported and shipping ends.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::watch;

use super::outbox::{Cursor, Entry, Outbox};
use super::sink::{AuditSink, Delivered, Delivery, SinkError};
use super::AuditError;
use crate::restart::{FailureWindow, RestartPolicy, Verdict};

#[derive(Debug, Clone)]
pub struct ShipperLimits {
    pub max_batch: usize,
    /// Most batches submitted to the sink and not yet answered.
    pub max_in_flight: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long to wait for more entries after delivering a partial batch.
    pub linger: Duration,
    /// How long entries a sink took may wait for its `sync` (sinks that are durable on
    /// delivery never wait).
    pub sync_interval: Duration,
    /// How often an idle shipper looks at the outbox even without a commit signal.
    pub idle_poll: Duration,
    /// How long a batch may wait for the sink before the wait is reported.
    pub stalled_after: Duration,
    /// How long a stopping shipper waits for the batches on their way.
    pub stop_grace: Duration,
}

/// Failed runs tolerated within [`RESTART_WINDOW`] before shipping stays stopped.
pub const MAX_RESTARTS: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct ShipperStats {
    pub shipped: AtomicU64,
    pub batches: AtomicU64,
    pub failures: AtomicU64,
    /// Runs that failed (panicked) and were started again.
    pub restarts: AtomicU64,
    /// Shipping stopped for good after too many failed runs.
    pub failed: AtomicBool,
    pub last_error: Mutex<Option<String>>,
    /// Commit time (ms since the epoch) of the oldest event handed to the sink and not yet
    /// acknowledged; 0 when none waits.
    pub oldest_waiting_ms: AtomicU64,
}

impl ShipperStats {
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A batch submitted to the sink: what it waits for, where it ends in the outbox and when it
/// went out.
struct InFlight {
    delivery: Delivery,
    end: Cursor,
    submitted: Instant,
    /// Commit time of its oldest event.
    oldest_ms: u64,
}

/// What the shipper actors are given: the outbox to read, the sink to feed, their bounds and
/// counters, and the node's stop signal.
#[derive(Clone)]
pub struct ShipperArgs {
    pub outbox: Arc<Outbox>,
    pub sink: Arc<dyn AuditSink>,
    pub limits: ShipperLimits,
    pub stats: Arc<ShipperStats>,
    pub stop: watch::Receiver<bool>,
}

/// Starts the sink's adapter actor under its supervisor, both named after the outbox's chain
/// (`custos/<chain>/audit` and `custos/<chain>/audit/<sink>`; the chain names the node and is
/// unique, and ractor's registry is process-wide). The handle resolves once shipping has
/// stopped: after `stop` turned true and the batches on their way were waited for, or after
/// the supervisor gave up.
pub async fn spawn(args: ShipperArgs) -> Result<tokio::task::JoinHandle<()>, AuditError> {
    let name = format!("custos/{}/audit", args.outbox.chain());
    let (_, handle) = ractor::Actor::spawn(Some(name), ShipperSupervisor, args)
        .await
        .map_err(|e| AuditError::Storage(format!("starting the audit shipper: {e}")))?;
    Ok(handle)
}

/// Supervises the [`SinkAdapter`] actor: a run that fails is counted and reported, and a fresh
/// actor starts from the outbox's shipped cursor after a backoff (what the failed run had sent
/// goes again); more than [`MAX_RESTARTS`] failures within [`RESTART_WINDOW`] leave shipping
/// stopped (`shipper_failed`).
pub struct ShipperSupervisor;

pub struct SupervisorState {
    args: ShipperArgs,
    policy: RestartPolicy,
    failures: FailureWindow,
    /// The adapter actor while it runs (ractor lists a child until after its supervisor has
    /// heard of its end, so the supervisor keeps its own record).
    child: Option<ractor::ActorId>,
}

pub enum SupervisorMsg {
    /// Start the adapter again (after a failure's backoff).
    Restart,
    /// The node's stop signal turned true.
    Stop,
}

impl SupervisorState {
    fn stopping(&self) -> bool {
        stop_requested(&self.args.stop)
    }

    async fn start_adapter(&mut self, myself: &ActorRef<SupervisorMsg>) -> Result<(), ActorProcessingErr> {
        let name = format!("{}/{}", myself.get_name().unwrap_or_default(), self.args.sink.name());
        let (adapter, _) =
            ractor::Actor::spawn_linked(Some(name), SinkAdapter, self.args.clone(), myself.get_cell()).await?;
        self.child = Some(adapter.get_id());
        Ok(())
    }
}

impl ractor::Actor for ShipperSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = ShipperArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: ShipperArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut stop = args.stop.clone();
        let watcher = myself.clone();
        tokio::spawn(async move {
            // Turned true, or the sender is gone: either way shipping ends.
            while !*stop.borrow_and_update() {
                if stop.changed().await.is_err() {
                    break;
                }
            }
            let _ = watcher.cast(SupervisorMsg::Stop);
        });
        let policy = RestartPolicy {
            max_restarts: MAX_RESTARTS,
            window: RESTART_WINDOW,
            backoff_base: args.limits.backoff_min,
            backoff_max: args.limits.backoff_max,
        };
        let mut state = SupervisorState { args, policy, failures: FailureWindow::default(), child: None };
        state.start_adapter(&myself).await?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Restart if !state.stopping() => state.start_adapter(&myself).await?,
            // Stopping: a running adapter ends by itself and is waited for (see
            // `handle_supervisor_evt`); one waiting to start again never does.
            SupervisorMsg::Restart | SupervisorMsg::Stop => {
                if state.child.is_none() {
                    myself.stop(None);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (adapter, failure) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell.get_id(), Some(error.to_string())),
            // Ending by itself is what a stop asks for; otherwise it is a failure too.
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell.get_id(), (!state.stopping()).then(|| reason.unwrap_or_else(|| "stopped".into())))
            }
            _ => return Ok(()),
        };
        if state.child != Some(adapter) {
            return Ok(());
        }
        state.child = None;
        let stats = &state.args.stats;
        if let Some(reason) = &failure {
            *stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("the shipper failed: {reason}"));
        }
        let Some(reason) = failure.filter(|_| !state.stopping()) else {
            // Stopping: nothing starts again; what was not released stays in the outbox.
            myself.stop(None);
            return Ok(());
        };
        let sink = state.args.sink.name();
        match state.failures.record(&state.policy) {
            Verdict::GiveUp => {
                stats.failed.store(true, Ordering::Relaxed);
                tracing::error!(sink, %reason, "the audit shipper failed too often; shipping stays stopped until the node restarts");
                myself.stop(None);
            }
            Verdict::RestartAfter(delay) => {
                stats.restarts.fetch_add(1, Ordering::Relaxed);
                tracing::error!(sink, %reason, "the audit shipper failed; starting it again");
                // What the failed run had sent and not released goes again. Batches it had
                // handed to the sink are not waited for: the local log takes deliveries one
                // at a time, and Kafka keeps a partition's batches in order, so a resent batch
                // lands after them, as a redelivery.
                state.args.outbox.rewind();
                myself.send_after(delay, || SupervisorMsg::Restart);
            }
        }
        Ok(())
    }
}

/// The sink's adapter actor (`…/audit/kafka`, `…/audit/local`): owns one [`run`] of the
/// shipper. It stops when the run ends after a stop, and fails — for its supervisor to
/// start it again — when the run panics.
pub struct SinkAdapter;

pub enum AdapterMsg {
    /// The run ended: `None` after a stop, the panic's message when it failed.
    Ended(Option<String>),
}

/// The adapter's run: ends with the actor however the actor ends (killed, a stop, a failure),
/// so two runs never ship from one outbox.
pub struct Running(tokio::task::AbortHandle);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ractor::Actor for SinkAdapter {
    type Msg = AdapterMsg;
    type State = Running;
    type Arguments = ShipperArgs;

    async fn pre_start(&self, myself: ActorRef<AdapterMsg>, args: ShipperArgs) -> Result<Running, ActorProcessingErr> {
        let ShipperArgs { outbox, sink, limits, stats, stop } = args;
        let running = tokio::spawn(run(outbox, sink, limits, stats, stop));
        let abort = Running(running.abort_handle());
        tokio::spawn(async move {
            let ended = match running.await {
                Ok(()) => None,
                Err(e) if !e.is_panic() => None,
                Err(e) => Some(match e.into_panic().downcast::<String>() {
                    Ok(message) => *message,
                    Err(payload) => {
                        payload.downcast::<&str>().map(|m| m.to_string()).unwrap_or_else(|_| "a panic".into())
                    }
                }),
            };
            let _ = myself.cast(AdapterMsg::Ended(ended));
        });
        Ok(abort)
    }

    async fn handle(
        &self,
        myself: ActorRef<AdapterMsg>,
        message: AdapterMsg,
        _running: &mut Running,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AdapterMsg::Ended(None) => myself.stop(None),
            AdapterMsg::Ended(Some(reason)) => return Err(reason.into()),
        }
        Ok(())
    }
}

/// Whether shipping must end: the stop signal turned true, or its sender is gone.
fn stop_requested(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// Runs until `stop` turns true; then waits (up to `stop_grace`) for the batches on their way
/// and syncs the sink.
pub async fn run(
    outbox: Arc<Outbox>,
    sink: Arc<dyn AuditSink>,
    limits: ShipperLimits,
    stats: Arc<ShipperStats>,
    mut stop: watch::Receiver<bool>,
) {
    assert!(limits.max_batch > 0 && limits.max_in_flight > 0, "the shipper moves at least one batch");
    let mut backoff = limits.backoff_min;
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    // Delivered, not yet synced: since when, and where the last such batch ends.
    let mut unsynced: Option<(Instant, Cursor)> = None;
    // No reading before this (the linger after a partial batch).
    let mut read_after = Instant::now();
    // The last answer from the sink, and whether the current wait for one was reported.
    let mut last_answer = Instant::now();
    let mut stall_reported = false;
    // When a stopping shipper gives up on the batches still on their way.
    let mut stop_by: Option<Instant> = None;
    loop {
        let stopping = stop_requested(&stop);
        if stopping {
            let by = *stop_by.get_or_insert_with(|| Instant::now() + limits.stop_grace);
            if !in_flight.is_empty() && Instant::now() >= by {
                tracing::warn!(
                    sink = sink.name(),
                    batches = in_flight.len(),
                    "stopping with audit batches unacknowledged; they stay in the outbox and go again at the next start"
                );
                return;
            }
        }
        stats.oldest_waiting_ms.store(in_flight.front().map_or(0, |oldest| oldest.oldest_ms), Ordering::Relaxed);
        let waiting_since = in_flight.front().map(|oldest| oldest.submitted.max(last_answer));
        if let Some(since) = waiting_since.filter(|since| !stall_reported && since.elapsed() >= limits.stalled_after) {
            stall_reported = true;
            report_stall(sink.as_ref(), &stats, since.elapsed());
        }
        if let Some((since, end)) = unsynced {
            if (stopping && in_flight.is_empty()) || since.elapsed() >= limits.sync_interval {
                unsynced = None;
                match sink.sync().await {
                    Ok(()) => release(&outbox, &stats, end).await,
                    Err(error) => {
                        retry_all(&outbox, sink.as_ref(), &stats, &mut in_flight, &mut stop, error).await;
                        if !stopping {
                            back_off(&mut stop, &mut backoff, limits.backoff_max).await;
                        }
                        continue;
                    }
                }
            }
        }
        if stopping && in_flight.is_empty() && unsynced.is_none() {
            return;
        }

        // Submit another batch while there is room and nothing to linger for.
        let room = !stopping && in_flight.len() < limits.max_in_flight;
        if room && Instant::now() >= read_after {
            // File reads (mostly from the page cache), off the async threads.
            let reading = outbox.clone();
            let read = tokio::task::spawn_blocking(move || reading.pending(limits.max_batch)).await;
            match read.unwrap_or_else(|join| Err(AuditError::Storage(join.to_string()))) {
                Ok(batch) if !batch.is_empty() => match submit(&outbox, sink.as_ref(), &batch).await {
                    Ok(submitted) => {
                        if batch.len() < limits.max_batch {
                            read_after = Instant::now() + limits.linger;
                        }
                        in_flight.push_back(submitted);
                        continue;
                    }
                    Err(error) => {
                        unsynced = None;
                        retry_all(&outbox, sink.as_ref(), &stats, &mut in_flight, &mut stop, error).await;
                        back_off(&mut stop, &mut backoff, limits.backoff_max).await;
                        continue;
                    }
                },
                Ok(_) => {}
                Err(error) => {
                    tracing::error!(%error, "reading the audit outbox failed");
                    *stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.to_string());
                    back_off(&mut stop, &mut backoff, limits.backoff_max).await;
                    continue;
                }
            }
        }

        // Wait for the oldest batch's answer, new commits (with room), the linger's end, the
        // sync that is due, a stall to report, the end of the stop grace, or stop.
        let now = Instant::now();
        let sync_due = unsynced.map(|(since, _)| (since + limits.sync_interval).max(now));
        let stall_due = waiting_since.filter(|_| !stall_reported).map(|since| since + limits.stalled_after);
        let wake = [sync_due, stall_due, stop_by.filter(|_| stopping)]
            .into_iter()
            .flatten()
            .fold(now + limits.idle_poll, Instant::min);
        let oldest = async {
            match in_flight.front_mut() {
                Some(batch) => (&mut batch.delivery).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            answer = oldest => {
                let batch = in_flight.pop_front().expect("an answer comes from the oldest batch");
                last_answer = Instant::now();
                stall_reported = false;
                match answer {
                    Ok(delivered) => {
                        match delivered {
                            // Behind a batch still waiting for a sync, it waits for it too.
                            Delivered::Durable if unsynced.is_none() => release(&outbox, &stats, batch.end).await,
                            Delivered::Durable | Delivered::Written => {
                                let since = unsynced.map_or_else(Instant::now, |(since, _)| since);
                                unsynced = Some((since, batch.end));
                            }
                        }
                        stats.batches.fetch_add(1, Ordering::Relaxed);
                        let recovered = stats.last_error.lock().unwrap_or_else(|p| p.into_inner()).take();
                        if recovered.is_some() {
                            tracing::info!(sink = sink.name(), "audit sink is delivering again");
                        }
                        backoff = limits.backoff_min;
                    }
                    Err(error) => {
                        unsynced = None;
                        retry_all(&outbox, sink.as_ref(), &stats, &mut in_flight, &mut stop, error).await;
                        back_off(&mut stop, &mut backoff, limits.backoff_max).await;
                    }
                }
            }
            _ = outbox.committed(), if room && read_after <= now => {}
            _ = tokio::time::sleep_until(read_after.into()), if room && read_after > now => {}
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = stop.changed(), if !stopping => {}
        }
    }
}

/// Submits a batch and marks it sent.
async fn submit(outbox: &Outbox, sink: &dyn AuditSink, batch: &[Entry]) -> Result<InFlight, SinkError> {
    let delivery = sink.submit(batch).await?;
    let end = outbox.sent(batch).map_err(|e| SinkError::Storage(e.to_string()))?;
    let oldest_ms = batch.iter().map(|entry| entry.time_ms).min().unwrap_or(0);
    Ok(InFlight { delivery, end: end.expect("a submitted batch is not empty"), submitted: Instant::now(), oldest_ms })
}

/// Releases the entries up to `end`, which the sink holds durably (writes the cursor file, may
/// remove segments: off the async threads).
async fn release(outbox: &Arc<Outbox>, stats: &ShipperStats, end: Cursor) {
    let releasing = outbox.clone();
    match tokio::task::spawn_blocking(move || releasing.release(end)).await {
        Ok(released) => {
            stats.shipped.fetch_add(released, Ordering::Relaxed);
        }
        Err(error) => tracing::error!(%error, "releasing shipped entries from the audit outbox failed"),
    }
}

/// After a failed delivery or sync: waits out the batches still on their way (their answers
/// no longer matter), then everything not yet durable at the sink is sent again. A stop ends
/// the wait: what was not acknowledged stays in the outbox.
async fn retry_all(
    outbox: &Outbox,
    sink: &dyn AuditSink,
    stats: &ShipperStats,
    in_flight: &mut VecDeque<InFlight>,
    stop: &mut watch::Receiver<bool>,
    error: SinkError,
) {
    // Counted and shown at once: the wait below lasts as long as the sink takes to answer.
    stats.failures.fetch_add(1, Ordering::Relaxed);
    let first = stats.last_error.lock().unwrap_or_else(|p| p.into_inner()).replace(error.to_string()).is_none();
    if first {
        tracing::warn!(sink = sink.name(), %error, "audit delivery failed; retrying with backoff");
    }
    let answers = futures::future::join_all(in_flight.drain(..).map(|batch| batch.delivery));
    let stopped = async {
        // Without a sender no stop comes: wait for the answers alone.
        if stop.wait_for(|stopping| *stopping).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = answers => {}
        _ = stopped => {}
    }
    outbox.rewind();
}

/// Reports that the sink has acknowledged nothing for `waited` while a batch waits for it.
fn report_stall(sink: &dyn AuditSink, stats: &ShipperStats, waited: Duration) {
    let mut report =
        format!("{} has acknowledged no batch for {:.1} s; still retrying", sink.name(), waited.as_secs_f64());
    if let Some(problem) = sink.problem() {
        report = format!("{report}: {problem}");
    }
    tracing::warn!(sink = sink.name(), %report, "audit delivery stalled");
    *stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
}

/// Waits out `backoff` (or until stop), then doubles it up to `max`.
async fn back_off(stop: &mut watch::Receiver<bool>, backoff: &mut Duration, max: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        _ = stop.changed() => {}
    }
    *backoff = (*backoff * 2).min(max);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::audit::event::{Actor, AuditData, AuditRecord, AuditStream, EventType, Outcome};
    use crate::audit::outbox::{Entry, OutboxLimits};

    /// A sink that syncs later and fails its first `sync`; it keeps every position delivered.
    #[derive(Default)]
    struct FlakySink {
        delivered: Mutex<Vec<u64>>,
        syncs: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl AuditSink for FlakySink {
        fn name(&self) -> &'static str {
            "flaky"
        }

        async fn deliver(&self, batch: &[Entry]) -> Result<Delivered, SinkError> {
            self.delivered.lock().unwrap().extend(batch.iter().map(|e| e.position));
            Ok(Delivered::Written)
        }

        async fn sync(&self) -> Result<(), SinkError> {
            match self.syncs.fetch_add(1, Ordering::SeqCst) {
                0 => Err(SinkError::Storage("the disk said no".into())),
                _ => Ok(()),
            }
        }
    }

    fn open_outbox(dir: &std::path::Path) -> Arc<Outbox> {
        let limits = OutboxLimits {
            max_batch: 64,
            queue: 64,
            max_depth: 1000,
            linger: Duration::ZERO,
            gather: Duration::ZERO,
            saturation: crate::audit::Saturation::Never,
        };
        Outbox::open(dir, 1, limits).unwrap()
    }

    /// Quick retries, no linger; the fields a test is about are set by the test.
    fn limits(max_batch: usize, max_in_flight: usize) -> ShipperLimits {
        ShipperLimits {
            max_batch,
            max_in_flight,
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(10),
            linger: Duration::ZERO,
            sync_interval: Duration::from_millis(300),
            idle_poll: Duration::from_millis(10),
            stalled_after: Duration::from_secs(10),
            stop_grace: Duration::from_secs(5),
        }
    }

    fn record() -> AuditRecord {
        AuditRecord {
            stream: AuditStream::Tenant(custos_raft::TenantId::new("acme").unwrap()),
            kind: EventType::KeyEncrypt,
            subject: None,
            data: AuditData::new(Actor::admin(), Outcome::Success),
        }
    }

    #[tokio::test]
    async fn entries_stay_in_the_outbox_until_the_sink_synced_them_and_a_failed_sync_sends_them_again() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open_outbox(dir.path());
        for _ in 0..5 {
            outbox.record(record()).await.unwrap();
        }
        let sink = Arc::new(FlakySink::default());
        let stats = Arc::new(ShipperStats::default());
        let (stop, stop_rx) = watch::channel(false);
        let limits = limits(64, 4);
        let shipper = tokio::spawn(run(outbox.clone(), sink.clone(), limits, stats.clone(), stop_rx));

        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*sink.delivered.lock().unwrap(), vec![0, 1, 2, 3, 4], "delivered at once");
        assert_eq!(outbox.stats().depth.load(Ordering::Relaxed), 5, "kept until synced");
        assert_eq!(stats.shipped.load(Ordering::Relaxed), 0);

        // The first sync fails: all five go again, and the second sync releases them.
        let deadline = Instant::now() + Duration::from_secs(5);
        while outbox.stats().depth.load(Ordering::Relaxed) > 0 {
            assert!(Instant::now() < deadline, "the outbox was never released: {:?}", sink.delivered.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(*sink.delivered.lock().unwrap(), vec![0, 1, 2, 3, 4, 0, 1, 2, 3, 4]);
        assert_eq!((stats.shipped.load(Ordering::Relaxed), stats.failures.load(Ordering::Relaxed)), (5, 1));

        // A later entry is released on stop without waiting for the interval.
        outbox.record(record()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.send(true).unwrap();
        shipper.await.unwrap();
        assert_eq!(outbox.stats().depth.load(Ordering::Relaxed), 0);
        assert_eq!(stats.shipped.load(Ordering::Relaxed), 6);
    }

    /// A sink with a bug: its first `failing` deliveries panic; later ones are durable.
    struct PanickySink {
        failing: usize,
        calls: AtomicUsize,
        delivered: Mutex<Vec<u64>>,
    }

    #[async_trait::async_trait]
    impl AuditSink for PanickySink {
        fn name(&self) -> &'static str {
            "panicky"
        }

        async fn deliver(&self, batch: &[Entry]) -> Result<Delivered, SinkError> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.failing {
                panic!("a bug in the sink");
            }
            self.delivered.lock().unwrap().extend(batch.iter().map(|e| e.position));
            Ok(Delivered::Durable)
        }
    }

    #[tokio::test]
    async fn a_failed_adapter_actor_is_started_again_and_one_that_keeps_failing_is_given_up_on() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open_outbox(dir.path());
        for _ in 0..5 {
            outbox.record(record()).await.unwrap();
        }
        let sink = Arc::new(PanickySink { failing: 1, calls: AtomicUsize::new(0), delivered: Mutex::default() });
        let stats = Arc::new(ShipperStats::default());
        let (stop, stop_rx) = watch::channel(false);
        let args = |sink: Arc<PanickySink>, stats: &Arc<ShipperStats>, stop: watch::Receiver<bool>| ShipperArgs {
            outbox: outbox.clone(),
            sink,
            limits: limits(64, 4),
            stats: stats.clone(),
            stop,
        };
        let shipper = spawn(args(sink.clone(), &stats, stop_rx)).await.unwrap();
        until("the events shipped after the failed run", || outbox.stats().depth.load(Ordering::Relaxed) == 0).await;
        assert_eq!(*sink.delivered.lock().unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(stats.restarts.load(Ordering::Relaxed), 1);
        assert!(!stats.failed.load(Ordering::Relaxed));
        // The supervisor and the sink's adapter are actors under the chain's name.
        let supervisor = format!("custos/{}/audit", outbox.chain());
        assert!(ractor::registry::where_is(supervisor.clone()).is_some());
        assert!(ractor::registry::where_is(format!("{supervisor}/panicky")).is_some());
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), shipper).await.expect("shipping stopped").unwrap();
        assert!(ractor::registry::where_is(supervisor.clone()).is_none());
        assert!(ractor::registry::where_is(format!("{supervisor}/panicky")).is_none());

        // A sink that always panics: the supervisor gives up after its bound and says so; the
        // events stay in the outbox.
        let sink =
            Arc::new(PanickySink { failing: usize::MAX, calls: AtomicUsize::new(0), delivered: Mutex::default() });
        outbox.record(record()).await.unwrap();
        let stats = Arc::new(ShipperStats::default());
        let (_stop, stop_rx) = watch::channel(false);
        let shipper = spawn(args(sink, &stats, stop_rx)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), shipper).await.expect("the supervisor gave up").unwrap();
        assert!(stats.failed.load(Ordering::Relaxed));
        assert!(stats.last_error().is_some_and(|e| e.contains("a bug in the sink")), "{:?}", stats.last_error());
        assert_eq!(stats.restarts.load(Ordering::Relaxed), MAX_RESTARTS as u64);
        assert_eq!(outbox.stats().depth.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_stop_while_the_adapter_waits_to_start_again_ends_shipping_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open_outbox(dir.path());
        outbox.record(record()).await.unwrap();
        let sink =
            Arc::new(PanickySink { failing: usize::MAX, calls: AtomicUsize::new(0), delivered: Mutex::default() });
        let stats = Arc::new(ShipperStats::default());
        let (stop, stop_rx) = watch::channel(false);
        let mut limits = limits(64, 4);
        limits.backoff_min = Duration::from_secs(600);
        limits.backoff_max = Duration::from_secs(600);
        let shipper = spawn(ShipperArgs { outbox: outbox.clone(), sink, limits, stats: stats.clone(), stop: stop_rx })
            .await
            .unwrap();
        until("the first failure", || stats.restarts.load(Ordering::Relaxed) == 1).await;
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), shipper).await.expect("no ten-minute wait").unwrap();
        assert!(!stats.failed.load(Ordering::Relaxed));
        assert_eq!(outbox.stats().depth.load(Ordering::Relaxed), 1);
    }

    type Answer = tokio::sync::oneshot::Sender<Result<Delivered, SinkError>>;

    /// A sink whose deliveries are answered by the test, one sender per submitted batch.
    #[derive(Default)]
    struct GatedSink {
        submitted: Mutex<Vec<Vec<u64>>>,
        answers: Mutex<Vec<Option<Answer>>>,
    }

    impl GatedSink {
        fn submitted(&self) -> Vec<Vec<u64>> {
            self.submitted.lock().unwrap().clone()
        }

        fn answer(&self, batch: usize, answer: Result<Delivered, SinkError>) {
            let sender = self.answers.lock().unwrap()[batch].take().expect("each batch is answered once");
            sender.send(answer).unwrap();
        }
    }

    #[async_trait::async_trait]
    impl AuditSink for GatedSink {
        fn name(&self) -> &'static str {
            "gated"
        }

        async fn deliver(&self, batch: &[Entry]) -> Result<Delivered, SinkError> {
            self.submit(batch).await?.await
        }

        async fn submit(&self, batch: &[Entry]) -> Result<Delivery, SinkError> {
            let (sender, receiver) = tokio::sync::oneshot::channel();
            self.submitted.lock().unwrap().push(batch.iter().map(|e| e.position).collect());
            self.answers.lock().unwrap().push(Some(sender));
            Ok(Box::pin(async move { receiver.await.unwrap_or(Err(SinkError::Unavailable("dropped".into()))) }))
        }
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_killed_adapter_takes_its_run_along_and_a_fresh_one_sends_again() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open_outbox(dir.path());
        outbox.record(record()).await.unwrap();
        let sink = Arc::new(GatedSink::default());
        let stats = Arc::new(ShipperStats::default());
        let (stop, stop_rx) = watch::channel(false);
        let args =
            ShipperArgs { outbox: outbox.clone(), sink: sink.clone(), limits: limits(64, 4), stats, stop: stop_rx };
        let shipper = spawn(args).await.unwrap();
        until("the batch is submitted", || sink.submitted().len() == 1).await;
        let adapter = format!("custos/{}/audit/gated", outbox.chain());
        ractor::registry::where_is(adapter).expect("the adapter runs").kill();
        // The killed adapter's run is gone: nothing waits for the batch's answer any more.
        until("the run ends", || sink.answers.lock().unwrap()[0].as_ref().is_some_and(|a| a.is_closed())).await;
        // The supervisor starts a fresh adapter, which sends the unreleased batch again.
        until("the batch is sent again", || sink.submitted() == vec![vec![0], vec![0]]).await;
        sink.answer(1, Ok(Delivered::Durable));
        until("the batch is released", || outbox.stats().depth.load(Ordering::Relaxed) == 0).await;
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), shipper).await.expect("shipping stopped").unwrap();
    }

    /// A sink whose `sync` panics: a failure that comes while the shipper stops.
    struct SyncPanics;

    #[async_trait::async_trait]
    impl AuditSink for SyncPanics {
        fn name(&self) -> &'static str {
            "sync-panics"
        }

        async fn deliver(&self, _batch: &[Entry]) -> Result<Delivered, SinkError> {
            Ok(Delivered::Written)
        }

        async fn sync(&self) -> Result<(), SinkError> {
            panic!("a bug in sync")
        }
    }

    #[tokio::test]
    async fn a_failure_while_stopping_or_a_stop_signal_gone_ends_shipping_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open_outbox(dir.path());
        outbox.record(record()).await.unwrap();
        let mut limits = limits(64, 4);
        limits.sync_interval = Duration::from_secs(600);
        limits.backoff_min = Duration::from_secs(600);
        limits.backoff_max = Duration::from_secs(600);
        let stats = Arc::new(ShipperStats::default());
        let (stop, stop_rx) = watch::channel(false);
        let args = ShipperArgs {
            outbox: outbox.clone(),
            sink: Arc::new(SyncPanics),
            limits: limits.clone(),
            stats: stats.clone(),
            stop: stop_rx,
        };
        let shipper = spawn(args).await.unwrap();
        until("the event is delivered", || stats.batches.load(Ordering::Relaxed) == 1).await;
        // Stopping syncs what was delivered; the sync panics.
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), shipper).await.expect("no wait for a restart").unwrap();
        assert!(stats.last_error().is_some_and(|e| e.contains("a bug in sync")), "{:?}", stats.last_error());
        assert_eq!((stats.restarts.load(Ordering::Relaxed), stats.failed.load(Ordering::Relaxed)), (0, false));
        assert_eq!(outbox.stats().depth.load(Ordering::Relaxed), 1, "kept for the next start");

        // Dropping the stop signal's sender ends shipping as a stop does.
        let (stop, stop_rx) = watch::channel(false);
        let args =
            ShipperArgs { outbox: outbox.clone(), sink: Arc::new(GatedSink::default()), limits, stats, stop: stop_rx };
        let shipper = spawn(args).await.unwrap();
        drop(stop);
        tokio::time::timeout(Duration::from_secs(5), shipper).await.expect("shipping stopped").unwrap();
    }

    #[tokio::test]
    async fn batches_pipeline_up_to_the_bound_and_leave_the_outbox_oldest_first_and_after_a_failure_go_again() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open_outbox(dir.path());
        for _ in 0..30 {
            outbox.record(record()).await.unwrap();
        }
        let depth = || outbox.stats().depth.load(Ordering::Relaxed);
        let sink = Arc::new(GatedSink::default());
        let stats = Arc::new(ShipperStats::default());
        let (stop, stop_rx) = watch::channel(false);
        let limits = limits(10, 2);
        let shipper = tokio::spawn(run(outbox.clone(), sink.clone(), limits, stats.clone(), stop_rx));
        let batch = |from: u64| (from..from + 10).collect::<Vec<_>>();

        // Two batches go out before either is answered; a third waits for room.
        until("two batches are submitted", || sink.submitted().len() == 2).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(sink.submitted(), vec![batch(0), batch(10)]);

        // The younger batch's acknowledgement releases nothing while the older one waits.
        sink.answer(1, Ok(Delivered::Durable));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!((depth(), sink.submitted().len()), (30, 2));

        // The older one's releases both, and the third batch goes out.
        sink.answer(0, Ok(Delivered::Durable));
        until("both are released", || depth() == 10).await;
        until("the third batch is submitted", || sink.submitted().len() == 3).await;
        assert_eq!(sink.submitted()[2], batch(20));

        // It fails: after the backoff it is sent again, whole, and then released.
        sink.answer(2, Err(SinkError::Unavailable("broker down".into())));
        until("the failed batch is sent again", || sink.submitted().len() == 4).await;
        assert_eq!(sink.submitted()[3], batch(20));
        assert_eq!(depth(), 10, "a failed batch stays in the outbox");
        sink.answer(3, Ok(Delivered::Durable));
        until("everything is released", || depth() == 0).await;
        assert_eq!((stats.shipped.load(Ordering::Relaxed), stats.failures.load(Ordering::Relaxed)), (30, 1));

        stop.send(true).unwrap();
        shipper.await.unwrap();
    }

    #[tokio::test]
    async fn a_batch_that_waits_too_long_is_reported_and_a_stop_gives_up_on_it_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open_outbox(dir.path());
        for _ in 0..3 {
            outbox.record(record()).await.unwrap();
        }
        let sink = Arc::new(GatedSink::default());
        let stats = Arc::new(ShipperStats::default());
        let (stop, stop_rx) = watch::channel(false);
        let limits = ShipperLimits {
            idle_poll: Duration::from_secs(5),
            stalled_after: Duration::from_millis(200),
            stop_grace: Duration::from_millis(300),
            ..limits(64, 2)
        };
        let shipper = tokio::spawn(run(outbox.clone(), sink.clone(), limits, stats.clone(), stop_rx));
        until("the batch is submitted", || sink.submitted().len() == 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(stats.last_error(), None, "reported before it stalled");
        assert!(stats.oldest_waiting_ms.load(Ordering::Relaxed) > 0, "the waiting batch's age is not shown");
        until("the stall is reported", || stats.last_error().is_some()).await;
        let report = stats.last_error().unwrap();
        assert!(report.starts_with("gated has acknowledged no batch for 0.2 s; still retrying"), "{report}");
        assert_eq!(stats.failures.load(Ordering::Relaxed), 0, "a stall is not a failure");

        // The answer clears the report and releases the batch.
        sink.answer(0, Ok(Delivered::Durable));
        until("the batch is released", || outbox.stats().depth.load(Ordering::Relaxed) == 0).await;
        assert_eq!(stats.last_error(), None);
        until("nothing waits", || stats.oldest_waiting_ms.load(Ordering::Relaxed) == 0).await;

        // A batch never answered: the stop waits the grace out, then leaves it in the outbox.
        outbox.record(record()).await.unwrap();
        until("the second batch is submitted", || sink.submitted().len() == 2).await;
        let stopping = Instant::now();
        stop.send(true).unwrap();
        shipper.await.unwrap();
        let waited = stopping.elapsed();
        assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(2), "stopped after {waited:?}");
        assert_eq!(
            outbox.stats().depth.load(Ordering::Relaxed),
            1,
            "the unacknowledged entry stays for the next start"
        );
        assert_eq!(stats.shipped.load(Ordering::Relaxed), 3);
    }
}

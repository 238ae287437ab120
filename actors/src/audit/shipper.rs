//! The shipper: moves outbox entries to the sink, oldest first, at least once.
//!
//! It takes up to `max_batch` entries, hands them to the sink, and removes them from the
//! outbox only once the sink has them durably: at once for a sink durable on delivery
//! (Kafka), after its next `sync` for one that syncs later (the local log: at most
//! `sync_interval` after a delivery, so one fsync per tenant covers many deliveries). After a
//! failed delivery or sync, everything not yet durable is sent again after a backoff that
//! doubles up to a cap, so a sink that is down costs one attempt per backoff period, not a
//! busy loop. After a batch smaller than `max_batch` it lingers before
//! reading again, so under load each delivery (a sink round trip, an fsync, a cursor write)
//! carries many events instead of the few of one group commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::outbox::Outbox;
use super::sink::{AuditSink, Delivered, SinkError};
use super::AuditError;

#[derive(Debug, Clone)]
pub struct ShipperLimits {
    pub max_batch: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long to wait for more entries after delivering a partial batch.
    pub linger: Duration,
    /// How long entries a sink took may wait for its `sync` (sinks that are durable on
    /// delivery never wait).
    pub sync_interval: Duration,
    /// How often an idle shipper looks at the outbox even without a commit signal.
    pub idle_poll: Duration,
}

#[derive(Debug, Default)]
pub struct ShipperStats {
    pub shipped: AtomicU64,
    pub batches: AtomicU64,
    pub failures: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl ShipperStats {
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Runs until `stop` turns true.
pub async fn run(
    outbox: Arc<Outbox>,
    sink: Arc<dyn AuditSink>,
    limits: ShipperLimits,
    stats: Arc<ShipperStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = limits.backoff_min;
    // When the oldest delivery the sink has not yet made durable was made.
    let mut unsynced: Option<Instant> = None;
    loop {
        let stopping = *stop.borrow();
        if unsynced.is_some_and(|since| stopping || since.elapsed() >= limits.sync_interval) {
            unsynced = None;
            if let Err(error) = settle(&outbox, sink.as_ref(), &stats).await {
                failed(&outbox, sink.as_ref(), &stats, error);
                if !stopping {
                    wait(&mut stop, backoff).await;
                    backoff = (backoff * 2).min(limits.backoff_max);
                }
                continue;
            }
        }
        if stopping {
            return;
        }
        // File reads (mostly from the page cache), off the async threads.
        let reading = outbox.clone();
        let read = tokio::task::spawn_blocking(move || reading.pending(limits.max_batch)).await;
        let batch = match read.unwrap_or_else(|join| Err(AuditError::Storage(join.to_string()))) {
            Ok(batch) => batch,
            Err(error) => {
                tracing::error!(%error, "reading the audit outbox failed");
                *stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.to_string());
                wait(&mut stop, backoff).await;
                backoff = (backoff * 2).min(limits.backoff_max);
                continue;
            }
        };
        if batch.is_empty() {
            let idle = match unsynced {
                Some(since) => limits.sync_interval.saturating_sub(since.elapsed()).min(limits.idle_poll),
                None => limits.idle_poll,
            };
            tokio::select! {
                _ = outbox.committed() => {}
                _ = tokio::time::sleep(idle) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let delivered = sink.deliver(&batch).await.and_then(|delivered| {
            outbox.sent(&batch).map_err(|e| SinkError::Storage(e.to_string()))?;
            Ok(delivered)
        });
        match delivered {
            Ok(delivered) => {
                if delivered == Delivered::Durable {
                    release(&outbox, &stats).await;
                } else {
                    unsynced.get_or_insert_with(Instant::now);
                }
                stats.batches.fetch_add(1, Ordering::Relaxed);
                let recovered = stats.last_error.lock().unwrap_or_else(|p| p.into_inner()).take();
                if recovered.is_some() {
                    tracing::info!(sink = sink.name(), "audit sink is delivering again");
                }
                backoff = limits.backoff_min;
                if batch.len() < limits.max_batch && !limits.linger.is_zero() {
                    wait(&mut stop, limits.linger).await;
                }
            }
            Err(error) => {
                unsynced = None;
                failed(&outbox, sink.as_ref(), &stats, error);
                wait(&mut stop, backoff).await;
                backoff = (backoff * 2).min(limits.backoff_max);
            }
        }
    }
}

/// Makes what the sink took durable, then releases it from the outbox.
async fn settle(outbox: &Arc<Outbox>, sink: &dyn AuditSink, stats: &ShipperStats) -> Result<(), SinkError> {
    sink.sync().await?;
    release(outbox, stats).await;
    Ok(())
}

/// Releases every sent entry (writes the cursor file, may remove segments: off the async
/// threads).
async fn release(outbox: &Arc<Outbox>, stats: &ShipperStats) {
    let releasing = outbox.clone();
    match tokio::task::spawn_blocking(move || releasing.release()).await {
        Ok(released) => {
            stats.shipped.fetch_add(released, Ordering::Relaxed);
        }
        Err(error) => tracing::error!(%error, "releasing shipped entries from the audit outbox failed"),
    }
}

/// After a failed delivery or sync, everything not yet durable at the sink is sent again.
fn failed(outbox: &Outbox, sink: &dyn AuditSink, stats: &ShipperStats, error: SinkError) {
    outbox.rewind();
    stats.failures.fetch_add(1, Ordering::Relaxed);
    let first = stats.last_error.lock().unwrap_or_else(|p| p.into_inner()).replace(error.to_string()).is_none();
    if first {
        tracing::warn!(sink = sink.name(), %error, "audit delivery failed; retrying with backoff");
    }
}

async fn wait(stop: &mut watch::Receiver<bool>, period: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(period) => {}
        _ = stop.changed() => {}
    }
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
        let outbox = Outbox::open(
            dir.path(),
            1,
            OutboxLimits { max_batch: 64, queue: 64, max_depth: 1000, linger: Duration::ZERO },
        )
        .unwrap();
        for _ in 0..5 {
            outbox.record(record()).await.unwrap();
        }
        let sink = Arc::new(FlakySink::default());
        let stats = Arc::new(ShipperStats::default());
        let (stop, stop_rx) = watch::channel(false);
        let limits = ShipperLimits {
            max_batch: 64,
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(10),
            linger: Duration::ZERO,
            sync_interval: Duration::from_millis(300),
            idle_poll: Duration::from_millis(10),
        };
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
}

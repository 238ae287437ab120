//! The shipper: moves outbox entries to the sink, oldest first, at least once.
//!
//! It takes up to `max_batch` entries, hands them to the sink, and removes them from the
//! outbox only after the sink has accepted the whole batch. A failed batch is retried whole
//! after a backoff that doubles up to a cap, so a sink that is down costs one attempt per
//! backoff period, not a busy loop. After a batch smaller than `max_batch` it lingers before
//! reading again, so under load each delivery (a sink round trip, an fsync, a cursor write)
//! carries many events instead of the few of one group commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::outbox::Outbox;
use super::sink::AuditSink;
use super::AuditError;

#[derive(Debug, Clone)]
pub struct ShipperLimits {
    pub max_batch: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long to wait for more entries after delivering a partial batch.
    pub linger: Duration,
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
    loop {
        if *stop.borrow() {
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
            tokio::select! {
                _ = outbox.committed() => {}
                _ = tokio::time::sleep(limits.idle_poll) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        match sink.deliver(&batch).await {
            Ok(()) => {
                let (releasing, shipped) = (outbox.clone(), batch.len() as u64);
                let released = tokio::task::spawn_blocking(move || releasing.remove(&batch)).await;
                if let Err(error) = released.unwrap_or_else(|join| Err(AuditError::Storage(join.to_string()))) {
                    // The batch was delivered; it will be delivered again (same ids) later.
                    tracing::error!(%error, "removing shipped entries from the audit outbox failed");
                }
                stats.shipped.fetch_add(shipped, Ordering::Relaxed);
                stats.batches.fetch_add(1, Ordering::Relaxed);
                let recovered = stats.last_error.lock().unwrap_or_else(|p| p.into_inner()).take();
                if recovered.is_some() {
                    tracing::info!(sink = sink.name(), "audit sink is delivering again");
                }
                backoff = limits.backoff_min;
                if shipped < limits.max_batch as u64 && !limits.linger.is_zero() {
                    wait(&mut stop, limits.linger).await;
                }
            }
            Err(error) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                let first =
                    stats.last_error.lock().unwrap_or_else(|p| p.into_inner()).replace(error.to_string()).is_none();
                if first {
                    tracing::warn!(sink = sink.name(), %error, pending = batch.len(), "audit delivery failed; retrying with backoff");
                }
                wait(&mut stop, backoff).await;
                backoff = (backoff * 2).min(limits.backoff_max);
            }
        }
    }
}

async fn wait(stop: &mut watch::Receiver<bool>, period: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(period) => {}
        _ = stop.changed() => {}
    }
}

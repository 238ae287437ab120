//! Audit: every decision and key operation becomes a hash-chained CloudEvent, durable in this
//! node's outbox before the request is answered, then shipped at least once to a sink.
//!
//! [`Audit`] is the node's handle. In `fail-closed` mode [`Audit::record`] returns only once
//! the event is durable, and an error if it cannot be made so — the caller then fails the
//! request. In `best-effort` mode it queues the event and returns at once; events that do not
//! fit are dropped and counted.
//!
//! # Layout
//! - `event.rs` — [`AuditRecord`] (what callers give) and [`AuditEvent`] (the envelope).
//! - `chain.rs` — the canonical hash and the [`chain::Verifier`].
//! - `outbox/` — the group-committed outbox: its committer thread and its segment files.
//! - `shipper.rs` — the loop that moves outbox entries to the sink.
//! - `sink/` — the [`sink::AuditSink`] port, the local log and Kafka adapters.
//!
//! Only `outbox/log.rs` writes the outbox's files (`<data_dir>/audit/outbox`). No secret ever
//! enters an event: callers pass HMACs (see [`Audit::hmac`]) where a value would identify one.

pub mod chain;
pub mod event;
pub mod outbox;
pub mod shipper;
pub mod sink;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::watch;

pub use event::{Actor, AuditData, AuditEvent, AuditRecord, AuditStream, EventType, Outcome};
pub use outbox::{Outbox, OutboxLimits, Receipt, Saturation};
pub use shipper::{ShipperLimits, ShipperStats};
pub use sink::{AuditSink, Delivered, KafkaSink, LocalLog, SinkError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("audit outbox storage failed: {0}")]
    Storage(String),
    #[error("the audit outbox holds {depth} undelivered events, its limit")]
    Backlog { depth: u64 },
    #[error("the audit outbox is shut down")]
    Closed,
    #[error(transparent)]
    Sink(#[from] SinkError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditMode {
    /// A request fails when its event cannot be made durable.
    FailClosed,
    /// Requests never wait for audit; events that cannot be queued are dropped and counted.
    BestEffort,
    /// Nothing is recorded. For benchmarks (`custos bench audit` compares against it) and
    /// development only; status shows it.
    Off,
}

impl AuditMode {
    /// The name used in configuration and status.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditMode::FailClosed => "fail-closed",
            AuditMode::BestEffort => "best-effort",
            AuditMode::Off => "off",
        }
    }
}

pub enum SinkChoice {
    Local(sink::local::LocalLogLimits),
    Kafka(sink::kafka::KafkaSinkConfig),
    /// Any other sink (a decorated one in benchmarks, a future RabbitMQ sink).
    Other(Arc<dyn AuditSink>),
}

pub struct AuditSettings {
    pub node_id: u64,
    /// `<data_dir>/audit`: the outbox and the local log live under it.
    pub dir: PathBuf,
    pub mode: AuditMode,
    /// Streams (tenant ids) recorded under another mode than `mode`.
    pub stream_modes: HashMap<String, AuditMode>,
    pub outbox: OutboxLimits,
    pub shipper: ShipperLimits,
    pub sink: SinkChoice,
}

/// Figures for cluster status and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct AuditStatus {
    pub mode: AuditMode,
    pub sink: &'static str,
    pub chain: String,
    pub outbox_depth: u64,
    pub committed: u64,
    pub group_commits: u64,
    /// fsyncs of the local log's files and directories (the embedded sink only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_log_fsyncs: Option<u64>,
    pub dropped: u64,
    pub failed: u64,
    pub shipped: u64,
    pub delivery_failures: u64,
    /// Shipper runs that failed and were started again.
    pub shipper_restarts: u64,
    /// Shipping stopped after too many failed runs: events stay in the outbox until the node
    /// restarts.
    pub shipper_failed: bool,
    /// Milliseconds from commit to Kafka acknowledgement of the last batch's oldest event, or,
    /// while a batch waits longer than that for Kafka, how long its oldest event has waited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka_lag_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

pub struct Audit {
    mode: AuditMode,
    stream_modes: HashMap<String, AuditMode>,
    outbox: Arc<Outbox>,
    sink: Arc<dyn AuditSink>,
    local: Option<Arc<LocalLog>>,
    kafka: Option<Arc<KafkaSink>>,
    shipper_stats: Arc<ShipperStats>,
    stop: watch::Sender<bool>,
    shipper: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Audit {
    /// Opens the outbox (replaying what an earlier run left), builds the sink and starts the
    /// shipper's actors (see [`shipper::spawn`]).
    pub async fn open(settings: AuditSettings) -> Result<Arc<Audit>, AuditError> {
        let outbox = Outbox::open(&settings.dir.join("outbox"), settings.node_id, settings.outbox)?;
        let (sink, local, kafka): (Arc<dyn AuditSink>, _, _) = match settings.sink {
            SinkChoice::Local(limits) => {
                let log = Arc::new(LocalLog::open(&settings.dir.join("log"), limits)?);
                (log.clone(), Some(log), None)
            }
            SinkChoice::Kafka(config) => {
                let kafka = Arc::new(KafkaSink::new(config)?);
                (kafka.clone(), None, Some(kafka))
            }
            SinkChoice::Other(sink) => (sink, None, None),
        };
        let shipper_stats = Arc::new(ShipperStats::default());
        let (stop, stop_rx) = watch::channel(false);
        if let Some(log) = &local {
            tokio::spawn(sweep_local_log(log.clone(), stop.subscribe()));
        }
        let shipper = shipper::spawn(shipper::ShipperArgs {
            outbox: outbox.clone(),
            sink: sink.clone(),
            limits: settings.shipper,
            stats: shipper_stats.clone(),
            stop: stop_rx,
        })
        .await?;
        Ok(Arc::new(Audit {
            mode: settings.mode,
            stream_modes: settings.stream_modes,
            outbox,
            sink,
            local,
            kafka,
            shipper_stats,
            stop,
            shipper: std::sync::Mutex::new(Some(shipper)),
        }))
    }

    /// The node's mode; see [`Audit::mode_of`] for a stream's.
    pub fn mode(&self) -> AuditMode {
        self.mode
    }

    /// The mode a stream is recorded under: its exception, or the node's mode. With the node
    /// off, everything is.
    pub fn mode_of(&self, stream: &AuditStream) -> AuditMode {
        if self.mode == AuditMode::Off {
            return AuditMode::Off;
        }
        self.stream_modes.get(stream.as_str()).copied().unwrap_or(self.mode)
    }

    /// Records one event under its stream's mode (see the module docs).
    pub async fn record(&self, record: AuditRecord) -> Result<(), AuditError> {
        match self.mode_of(&record.stream) {
            AuditMode::FailClosed => self.outbox.record(record).await.map(|_| ()),
            AuditMode::BestEffort => {
                if !self.outbox.record_detached(record) {
                    tracing::warn!("audit event dropped: the outbox queue is full (best-effort mode)");
                }
                Ok(())
            }
            AuditMode::Off => Ok(()),
        }
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// The local log, when it is the sink.
    pub fn local(&self) -> Option<&Arc<LocalLog>> {
        self.local.as_ref()
    }

    pub fn kafka(&self) -> Option<&Arc<KafkaSink>> {
        self.kafka.as_ref()
    }

    pub fn status(&self) -> AuditStatus {
        let stats = self.outbox.stats();
        AuditStatus {
            mode: self.mode,
            sink: self.sink.name(),
            chain: self.outbox.chain().to_string(),
            outbox_depth: stats.depth.load(Ordering::Relaxed),
            committed: stats.committed.load(Ordering::Relaxed),
            group_commits: stats.commits.load(Ordering::Relaxed),
            local_log_fsyncs: self.local.as_ref().map(|l| l.fsyncs()),
            dropped: stats.dropped.load(Ordering::Relaxed),
            failed: stats.failed.load(Ordering::Relaxed),
            shipped: self.shipper_stats.shipped.load(Ordering::Relaxed),
            delivery_failures: self.shipper_stats.failures.load(Ordering::Relaxed),
            shipper_restarts: self.shipper_stats.restarts.load(Ordering::Relaxed),
            shipper_failed: self.shipper_stats.failed.load(Ordering::Relaxed),
            kafka_lag_ms: self.kafka.as_ref().map(|k| {
                let last = k.stats().last_lag_ms.load(Ordering::Relaxed);
                match self.shipper_stats.oldest_waiting_ms.load(Ordering::Relaxed) {
                    0 => last,
                    oldest => last.max(outbox::now_ms().saturating_sub(oldest)),
                }
            }),
            last_error: self.shipper_stats.last_error(),
        }
    }

    /// Stops the shipper and closes the outbox; unshipped entries wait for the next start.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let shipper = self.shipper.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(shipper) = shipper {
            let _ = shipper.await;
        }
        self.outbox.close().await;
    }
}

/// How long after start the first retention sweep runs (a node restarted more often than
/// the sweep interval still sweeps).
const FIRST_SWEEP_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Applies the local log's retention to every tenant shortly after start, then every
/// [`sink::local::SWEEP_INTERVAL`], until the audit stops.
async fn sweep_local_log(log: Arc<LocalLog>, mut stop: watch::Receiver<bool>) {
    let mut wait = FIRST_SWEEP_AFTER;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        wait = sink::local::SWEEP_INTERVAL;
        let log = log.clone();
        match tokio::task::spawn_blocking(move || log.sweep()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(removed)) => tracing::info!(removed, "audit log: segments past retention removed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "audit log: applying retention failed; trying again later"),
            Err(e) => tracing::warn!(error = %e, "audit log: the retention sweep failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tenant_exception_changes_only_that_tenants_mode() {
        let dir = tempfile::tempdir().unwrap();
        let open = |mode| {
            Audit::open(AuditSettings {
                node_id: 1,
                dir: dir.path().join(format!("{mode:?}")),
                mode,
                stream_modes: HashMap::from([("acme".to_string(), AuditMode::BestEffort)]),
                outbox: OutboxLimits {
                    max_batch: 8,
                    queue: 8,
                    max_depth: 8,
                    linger: std::time::Duration::ZERO,
                    gather: std::time::Duration::ZERO,
                    saturation: outbox::Saturation::Never,
                },
                shipper: ShipperLimits {
                    max_batch: 8,
                    max_in_flight: 2,
                    backoff_min: std::time::Duration::from_millis(10),
                    backoff_max: std::time::Duration::from_millis(10),
                    linger: std::time::Duration::ZERO,
                    sync_interval: std::time::Duration::ZERO,
                    idle_poll: std::time::Duration::from_millis(10),
                    stalled_after: std::time::Duration::from_secs(10),
                    stop_grace: std::time::Duration::from_secs(5),
                },
                sink: SinkChoice::Local(sink::local::LocalLogLimits {
                    segment_bytes: 1 << 20,
                    retention: std::time::Duration::from_secs(60),
                    max_bytes_per_tenant: 1 << 30,
                }),
            })
        };
        let tenant = |id: &str| AuditStream::Tenant(custos_raft::TenantId::new(id).unwrap());
        let audit = open(AuditMode::FailClosed).await.unwrap();
        assert_eq!(audit.mode_of(&tenant("acme")), AuditMode::BestEffort);
        assert_eq!(audit.mode_of(&tenant("globex")), AuditMode::FailClosed);
        assert_eq!(audit.mode_of(&AuditStream::Cluster), AuditMode::FailClosed);
        audit.shutdown().await;
        let off = open(AuditMode::Off).await.unwrap();
        assert_eq!(off.mode_of(&tenant("acme")), AuditMode::Off);
        off.shutdown().await;
    }
}

//! Where shipped audit events go: the [`AuditSink`] port and its adapters.
//!
//! - `local.rs` — [`LocalLog`], the embedded default: a segmented append-only log per tenant.
//! - `kafka.rs` — [`KafkaSink`], the enterprise backbone (rdkafka, idempotent, acks=all).
//!
//! A sink takes a batch of outbox entries and returns only once all of them are durable at the
//! sink, each tenant's events in the order given. The shipper retries a failed batch whole, so
//! a sink sees redeliveries; events carry stable ids for consumers to dedupe on.

pub mod kafka;
pub mod local;

pub use kafka::KafkaSink;
pub use local::LocalLog;

use super::outbox::Entry;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The sink is unreachable or refused the batch; the shipper backs off and retries.
    #[error("audit sink unavailable: {0}")]
    Unavailable(String),
    /// Local storage failed.
    #[error("audit log storage: {0}")]
    Storage(String),
    #[error("invalid audit sink configuration: {0}")]
    Config(String),
}

#[async_trait::async_trait]
pub trait AuditSink: Send + Sync + 'static {
    /// `local` or `kafka`, for status and metrics.
    fn name(&self) -> &'static str;

    /// Makes every entry durable at the sink, each tenant's in the order given.
    async fn deliver(&self, batch: &[Entry]) -> Result<(), SinkError>;
}

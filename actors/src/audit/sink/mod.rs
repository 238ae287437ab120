//! Where shipped audit events go: the [`AuditSink`] port and its adapters.
//!
//! - `local.rs` — [`LocalLog`], the embedded default: a segmented append-only log per tenant.
//! - `kafka.rs` — [`KafkaSink`], the enterprise backbone (rdkafka, idempotent, acks=all).
//!
//! A sink takes a batch of outbox entries, each tenant's events in the order given, and says
//! whether they are durable when it returns or only once its next [`AuditSink::sync`] has
//! returned; the outbox keeps them until then. After a failure the shipper sends everything
//! not yet durable again, so a sink sees redeliveries; events carry stable ids for consumers
//! to dedupe on.

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

/// What a delivered batch is at the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Durable already (Kafka: acknowledged by all in-sync replicas).
    Durable,
    /// Written and readable, durable once [`AuditSink::sync`] returns.
    Written,
}

/// A batch handed to a sink, resolving once the sink holds it (see [`Delivered`]).
pub type Delivery = futures::future::BoxFuture<'static, Result<Delivered, SinkError>>;

#[async_trait::async_trait]
pub trait AuditSink: Send + Sync + 'static {
    /// `local` or `kafka`, for status and metrics.
    fn name(&self) -> &'static str;

    /// Hands every entry to the sink, each tenant's in the order given.
    async fn deliver(&self, batch: &[Entry]) -> Result<Delivered, SinkError>;

    /// Hands the batch over and returns once the sink has it queued, with the [`Delivery`]
    /// to wait for: batches submitted one after another reach the sink in that order, so the
    /// shipper keeps several in flight. An error here means at most a prefix of the batch was
    /// queued; the shipper then queues nothing more before it sends the batch again.
    /// Sinks that cannot queue deliver before returning.
    ///
    /// Order: when a delivery fails, no event queued after it may become durable before it
    /// (the shipper sends both again, in order, but cannot take back what the sink kept).
    async fn submit(&self, batch: &[Entry]) -> Result<Delivery, SinkError> {
        let delivered = self.deliver(batch).await;
        Ok(Box::pin(std::future::ready(delivered)))
    }

    /// What keeps the sink from delivering, when it knows (a broker it cannot reach), for a
    /// batch that waits longer than expected.
    fn problem(&self) -> Option<String> {
        None
    }

    /// Makes everything delivered so far durable.
    async fn sync(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

//! The Kafka audit sink: rdkafka's `FutureProducer`, idempotent, `acks=all`.
//!
//! Each event is one record in CloudEvents structured mode (`content-type:
//! application/cloudevents+json`), keyed by its tenant id. A tenant's events all go to one
//! partition, [`partition_for`] (CRC-32 of the tenant id modulo the topic's partitions), so
//! they stay in order and a reader of one tenant reads one partition only. Topics are created when first needed, with the configured partitions,
//! replication factor and retention.
//!
//! Order: a consumer never sees a later event of a chain before an earlier one — only exact
//! redeliveries. The producer runs with the gapless guarantee: a failure that could leave a
//! hole in a partition is fatal to that producer, so every record queued behind the failed
//! one fails too, the batches are reported failed, and a fresh producer sends them again
//! whole. Records never expire in the producer (`message.timeout.ms = 0`): the guarantee
//! does not cover expiry, and an expired record was followed by later ones that the brokers
//! took once they were back, ahead of its resend. While the brokers are down, records wait
//! in the producer (at most the shipper's batches in flight) and events in the outbox; the
//! shipper reports a batch that waits too long, with the client's last error ([`AuditSink::problem`]).
//! A record the producer refuses to queue fails its batch at once, so the shipper queues
//! nothing behind the hole.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{AuditSink, Delivered, Delivery, SinkError};
use crate::audit::outbox::{now_ms, Entry};

/// Where a tenant's events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicLayout {
    /// One topic for every tenant, partitioned by tenant id.
    Shared { topic: String },
    /// One topic per tenant: `<prefix><tenant>`.
    PerTenant { prefix: String },
}

impl TopicLayout {
    pub fn topic_for(&self, tenant: &str) -> String {
        match self {
            TopicLayout::Shared { topic } => topic.clone(),
            TopicLayout::PerTenant { prefix } => format!("{prefix}{tenant}"),
        }
    }
}

#[derive(Clone)]
pub struct KafkaSinkConfig {
    /// `host:port,host:port`.
    pub brokers: String,
    pub layout: TopicLayout,
    pub partitions: i32,
    pub replication_factor: i32,
    /// `retention.ms` of created topics; -1 keeps events forever.
    pub retention_ms: i64,
    /// Bound on topic creation and metadata requests (records themselves never expire).
    pub request_timeout: Duration,
    /// Records the producer may hold unacknowledged (its queue bound).
    pub max_in_flight: usize,
    /// Further librdkafka properties: security protocol, TLS files, SASL settings.
    pub client_properties: Vec<(String, String)>,
}

impl std::fmt::Debug for KafkaSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Properties may carry a SASL password: names only.
        let properties: Vec<&str> = self.client_properties.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("KafkaSinkConfig")
            .field("brokers", &self.brokers)
            .field("layout", &self.layout)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("retention_ms", &self.retention_ms)
            .field("request_timeout", &self.request_timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("client_properties", &properties)
            .finish()
    }
}

/// Delivery counters for status and metrics.
#[derive(Debug, Default)]
pub struct KafkaStats {
    pub delivered: AtomicU64,
    /// Milliseconds from the commit of the last batch's oldest event to Kafka's acknowledgement.
    pub last_lag_ms: AtomicU64,
    pub failed_batches: AtomicU64,
    pub producer_restarts: AtomicU64,
}

pub struct KafkaSink {
    shared: Arc<Shared>,
    admin: AdminClient<DefaultClientContext>,
    /// Topics known to exist, with their partition counts.
    topics: Mutex<HashMap<String, i32>>,
}

/// The producer's client context: keeps the client's last error (a broker unreachable, a
/// failed authentication) for status while deliveries wait.
#[derive(Clone, Default)]
struct SinkContext {
    problem: Arc<Mutex<Option<String>>>,
}

/// librdkafka flags `enable.gapless.guarantee` as experimental in a warning each time a
/// producer starts; the sink sets it on purpose, so that warning says nothing to an operator.
fn expected_warning(fac: &str, message: &str) -> bool {
    fac == "CONFWARN" && message.contains("enable.gapless.guarantee")
}

impl rdkafka::ClientContext for SinkContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        if !expected_warning(fac, message) {
            DefaultClientContext.log(level, fac, message);
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "kafka client error");
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{error}: {reason}"));
    }
}

type SinkProducer = FutureProducer<SinkContext>;

/// What a submitted batch still waiting for Kafka's acknowledgements needs too.
struct Shared {
    config: KafkaSinkConfig,
    producer: Mutex<Arc<SinkProducer>>,
    context: SinkContext,
    stats: Arc<KafkaStats>,
}

impl Shared {
    fn producer(&self) -> Arc<SinkProducer> {
        self.producer.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Counts a failed batch (the shipper keeps its error for status). After a fatal error
    /// (the gapless guarantee tripped, a fenced epoch) the producer refuses everything: it is
    /// replaced, so the retried batch starts a fresh sequence.
    fn fail(&self, error: String) -> SinkError {
        self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
        let mut current = self.producer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((code, reason)) = current.client().fatal_error() {
            tracing::warn!(%code, %reason, "kafka producer hit a fatal error; starting a new one");
            if let Ok(fresh) = producer(&self.config, &self.context) {
                *current = Arc::new(fresh);
                self.stats.producer_restarts.fetch_add(1, Ordering::Relaxed);
            }
        }
        SinkError::Unavailable(error)
    }

    /// Counts a batch of `events` acknowledged, the oldest committed at `oldest_ms`.
    fn delivered(&self, events: u64, oldest_ms: u64) {
        self.stats.delivered.fetch_add(events, Ordering::Relaxed);
        self.stats.last_lag_ms.store(now_ms().saturating_sub(oldest_ms), Ordering::Relaxed);
        *self.context.problem.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

fn client_config(config: &KafkaSinkConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.brokers);
    // librdkafka waits up to 10 s between reconnects by default, so a broker back after an
    // outage went unnoticed for that long while the outbox filled; audit shipping wants it
    // within a second.
    client.set("reconnect.backoff.max.ms", "1000").set("retry.backoff.max.ms", "1000");
    for (key, value) in &config.client_properties {
        client.set(key, value);
    }
    client
}

/// The producer settings of the sink; public so a benchmark can run a plain producer with
/// exactly the same ones.
pub fn producer_settings(config: &KafkaSinkConfig) -> ClientConfig {
    let mut client = client_config(config);
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("enable.gapless.guarantee", "true")
        .set("max.in.flight.requests.per.connection", "5")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        // Never expire a record: see the module docs.
        .set("message.timeout.ms", "0")
        .set("queue.buffering.max.messages", config.max_in_flight.to_string());
    client
}

fn producer(config: &KafkaSinkConfig, context: &SinkContext) -> Result<SinkProducer, SinkError> {
    producer_settings(config).create_with_context(context.clone()).map_err(|e| SinkError::Config(e.to_string()))
}

impl KafkaSink {
    /// Builds the producer and admin clients; connects lazily, so a broker that is down now
    /// only delays delivery.
    pub fn new(config: KafkaSinkConfig) -> Result<KafkaSink, SinkError> {
        if config.partitions < 1 || config.replication_factor < 1 || config.max_in_flight == 0 {
            return Err(SinkError::Config(
                "partitions, replication factor and in-flight bound must be positive".into(),
            ));
        }
        let context = SinkContext::default();
        let producer = producer(&config, &context)?;
        let admin = client_config(&config).create().map_err(|e| SinkError::Config(e.to_string()))?;
        let shared = Shared {
            config,
            producer: Mutex::new(Arc::new(producer)),
            context,
            stats: Arc::new(KafkaStats::default()),
        };
        Ok(KafkaSink { shared: Arc::new(shared), admin, topics: Mutex::new(HashMap::new()) })
    }

    pub fn stats(&self) -> Arc<KafkaStats> {
        self.shared.stats.clone()
    }

    pub fn config(&self) -> &KafkaSinkConfig {
        &self.shared.config
    }

    /// Creates the topics not known yet (an existing topic is fine) and learns their
    /// partition counts, which may differ from the configured count for topics made by others.
    async fn ensure_topics(&self, topics: HashSet<String>) -> Result<HashMap<String, i32>, SinkError> {
        let missing: Vec<String> = {
            let known = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            topics.iter().filter(|t| !known.contains_key(*t)).cloned().collect()
        };
        if !missing.is_empty() {
            let retention = self.shared.config.retention_ms.to_string();
            let specs: Vec<NewTopic> = missing
                .iter()
                .map(|t| {
                    NewTopic::new(
                        t,
                        self.shared.config.partitions,
                        TopicReplication::Fixed(self.shared.config.replication_factor),
                    )
                    .set("retention.ms", &retention)
                })
                .collect();
            // Bounded on the client side too: with the broker down, the request would otherwise
            // wait for the socket timeout (60 s), and the shipper would report nothing meanwhile.
            let options = AdminOptions::new()
                .operation_timeout(Some(self.shared.config.request_timeout))
                .request_timeout(Some(self.shared.config.request_timeout));
            let results = self
                .admin
                .create_topics(specs.iter(), &options)
                .await
                .map_err(|e| SinkError::Unavailable(format!("creating topics: {e}")))?;
            for result in results {
                match result {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((topic, code)) => {
                        return Err(SinkError::Unavailable(format!("creating topic {topic}: {code}")))
                    }
                }
            }
            let producer = self.shared.producer();
            let timeout = self.shared.config.request_timeout;
            let counts = tokio::task::spawn_blocking(move || -> Result<Vec<(String, i32)>, SinkError> {
                missing.into_iter().map(|t| Ok((t.clone(), partition_count(producer.client(), &t, timeout)?))).collect()
            })
            .await
            .map_err(|e| SinkError::Unavailable(e.to_string()))??;
            self.topics.lock().unwrap_or_else(|p| p.into_inner()).extend(counts);
        }
        let known = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        Ok(topics.into_iter().filter_map(|t| known.get(&t).map(|n| (t, *n))).collect())
    }
}

#[async_trait::async_trait]
impl AuditSink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn problem(&self) -> Option<String> {
        self.shared.context.problem.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn deliver(&self, batch: &[Entry]) -> Result<Delivered, SinkError> {
        self.submit(batch).await?.await
    }

    /// Queues every record with the producer, in order, and returns the wait for their
    /// acknowledgements: a batch submitted after it is queued behind it, and the idempotent
    /// producer keeps that order on each partition.
    async fn submit(&self, batch: &[Entry]) -> Result<Delivery, SinkError> {
        if batch.is_empty() {
            return Ok(Box::pin(std::future::ready(Ok(Delivered::Durable))));
        }
        let topics: Vec<String> = batch.iter().map(|e| self.shared.config.layout.topic_for(&e.tenant)).collect();
        let partitions = match self.ensure_topics(topics.iter().cloned().collect()).await {
            Ok(partitions) => partitions,
            Err(error) => return Err(self.shared.fail(error.to_string())),
        };
        let producer = self.shared.producer();
        let mut deliveries = Vec::with_capacity(batch.len());
        for (entry, topic) in batch.iter().zip(&topics) {
            let headers = OwnedHeaders::new()
                .insert(Header { key: "content-type", value: Some("application/cloudevents+json") })
                .insert(Header { key: "tenant", value: Some(entry.tenant.as_str()) });
            let Some(count) = partitions.get(topic) else {
                return Err(self.shared.fail(format!("topic {topic} has no known partitions")));
            };
            let record = FutureRecord::to(topic)
                .partition(partition_for(&entry.tenant, *count))
                .key(entry.tenant.as_str())
                .payload(entry.json.as_ref())
                .headers(headers);
            match producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                // Failing the batch now keeps the shipper from queueing anything behind the
                // hole; the records before it may still be delivered, and come again with the
                // batch's resend.
                Err((error, _)) => return Err(self.shared.fail(format!("the producer refused a record: {error}"))),
            }
        }
        let shared = self.shared.clone();
        let events = batch.len() as u64;
        let oldest = batch.iter().map(|e| e.time_ms).min().unwrap_or(0);
        Ok(Box::pin(async move {
            let mut first_error = None;
            for delivery in futures::future::join_all(deliveries).await {
                match delivery {
                    Ok(Ok(_)) => {}
                    Ok(Err((error, _))) => {
                        first_error.get_or_insert_with(|| error.to_string());
                    }
                    Err(_) => {
                        first_error.get_or_insert_with(|| "the producer was replaced before delivery".into());
                    }
                }
            }
            if let Some(error) = first_error {
                return Err(shared.fail(error));
            }
            shared.delivered(events, oldest);
            Ok(Delivered::Durable)
        }))
    }
}

/// A consumer that reads assigned partitions only: no group membership, no committed offsets.
fn reader_config(config: &KafkaSinkConfig, group: &str) -> ClientConfig {
    let mut client = client_config(config);
    client.set("group.id", group).set("enable.auto.commit", "false").set("enable.partition.eof", "false");
    client
}

/// The partition holding all of a tenant's events in a topic of `partitions` partitions.
pub fn partition_for(tenant: &str, partitions: i32) -> i32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (crc32fast::hash(tenant.as_bytes()) % partitions as u32) as i32
}

fn partition_count<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<i32, SinkError> {
    let metadata = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| SinkError::Unavailable(format!("metadata of {topic}: {e}")))?;
    let count = metadata.topics().iter().find(|t| t.name() == topic).map(|t| t.partitions().len()).unwrap_or(0);
    if count == 0 {
        return Err(SinkError::Unavailable(format!("topic {topic} does not exist (yet)")));
    }
    Ok(count as i32)
}

/// A page of one tenant's records: `(offset, payload)` in offset order, and the offset the
/// next page starts at.
pub struct KafkaPage {
    pub records: Vec<(i64, Vec<u8>)>,
    pub next: i64,
    /// The oldest offset the partition holds: above 0 once retention removed records.
    pub low: i64,
}

/// Reads up to `limit` of a tenant's records from offset `from` (or the oldest kept) to what
/// the partition holds now. Blocking: call it from a blocking thread. An absent topic is an
/// empty page.
pub fn read_tenant_page(
    config: &KafkaSinkConfig,
    tenant: &str,
    from: i64,
    limit: usize,
    timeout: Duration,
) -> Result<KafkaPage, SinkError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};

    let unavailable = |what: &str, e: rdkafka::error::KafkaError| SinkError::Unavailable(format!("{what}: {e}"));
    let topic = config.layout.topic_for(tenant);
    let consumer: BaseConsumer =
        reader_config(config, "custos-audit-reader").create().map_err(|e| SinkError::Config(e.to_string()))?;
    let partitions = match partition_count(consumer.client(), &topic, timeout) {
        Ok(n) => n,
        Err(_) => return Ok(KafkaPage { records: Vec::new(), next: from.max(0), low: 0 }),
    };
    let partition = partition_for(tenant, partitions);
    let (low, high) =
        consumer.fetch_watermarks(&topic, partition, timeout).map_err(|e| unavailable("watermarks", e))?;
    let start = from.max(low);
    let mut records = Vec::new();
    if start >= high || limit == 0 {
        return Ok(KafkaPage { records, next: start, low });
    }
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&topic, partition, Offset::Offset(start))
        .map_err(|e| unavailable("assignment", e))?;
    consumer.assign(&assignment).map_err(|e| unavailable("assign", e))?;
    let deadline = std::time::Instant::now() + timeout;
    let mut next = start;
    while next < high && records.len() < limit {
        if std::time::Instant::now() >= deadline {
            return Err(SinkError::Unavailable(format!("reading {topic} did not finish within {timeout:?}")));
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
        let message = message.map_err(|e| unavailable("consume", e))?;
        next = message.offset() + 1;
        if message.key() == Some(tenant.as_bytes()) {
            records.push((message.offset(), message.payload().unwrap_or_default().to_vec()));
        }
    }
    Ok(KafkaPage { records, next, low })
}

/// Every record of a tenant its topic holds now, oldest first, page by page. Returns the
/// oldest offset the partition held when reading began (above 0 once retention removed
/// records).
pub fn read_tenant(
    config: &KafkaSinkConfig,
    tenant: &str,
    timeout: Duration,
    mut f: impl FnMut(i64, &[u8]),
) -> Result<i64, SinkError> {
    let mut from = 0;
    let mut low = None;
    loop {
        let page = read_tenant_page(config, tenant, from, 10_000, timeout)?;
        let low = *low.get_or_insert(page.low);
        for (offset, payload) in &page.records {
            f(*offset, payload);
        }
        if page.next == from {
            return Ok(low);
        }
        from = page.next;
    }
}

/// A live reader of one tenant's partition, from the records produced after it was opened.
pub struct KafkaTail {
    consumer: rdkafka::consumer::StreamConsumer,
    tenant: String,
}

impl KafkaTail {
    /// Assigns the tenant's partition at its end. Blocking (it reads metadata): call it from a
    /// blocking thread. Fails when the tenant's topic does not exist yet.
    pub fn open(config: &KafkaSinkConfig, tenant: &str, timeout: Duration) -> Result<KafkaTail, SinkError> {
        use rdkafka::consumer::{Consumer, StreamConsumer};
        use rdkafka::{Offset, TopicPartitionList};

        let topic = config.layout.topic_for(tenant);
        let consumer: StreamConsumer =
            reader_config(config, "custos-audit-tail").create().map_err(|e| SinkError::Config(e.to_string()))?;
        let partitions = partition_count(consumer.client(), &topic, timeout)?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&topic, partition_for(tenant, partitions), Offset::End)
            .map_err(|e| SinkError::Unavailable(format!("assignment: {e}")))?;
        consumer.assign(&assignment).map_err(|e| SinkError::Unavailable(format!("assign: {e}")))?;
        Ok(KafkaTail { consumer, tenant: tenant.to_string() })
    }

    /// The next record of the tenant.
    pub async fn next(&self) -> Result<Vec<u8>, SinkError> {
        use rdkafka::Message;
        loop {
            let message = self.consumer.recv().await.map_err(|e| SinkError::Unavailable(format!("consume: {e}")))?;
            if message.key() == Some(self.tenant.as_bytes()) {
                return Ok(message.payload().unwrap_or_default().to_vec());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_gapless_guarantee_warning_is_kept_out_of_the_log() {
        let experimental = "[thrd:app]: Configuration property enable.gapless.guarantee is experimental: When set to \
                            `true`, any error that could result in a gap …";
        assert!(expected_warning("CONFWARN", experimental));
        assert!(!expected_warning(
            "CONFWARN",
            "[thrd:app]: Configuration property queue.buffering.max.ms is deprecated"
        ));
        assert!(!expected_warning("GETPID", "Failed to acquire idempotence PID: enable.gapless.guarantee"));
    }
}

//! The Kafka audit sink: rdkafka's `FutureProducer`, idempotent, `acks=all`.
//!
//! Each event is one record in CloudEvents structured mode (`content-type:
//! application/cloudevents+json`), keyed by its tenant id so a tenant's events stay in one
//! partition, in order. Topics are created when first needed, with the configured partitions,
//! replication factor and retention. The producer runs with the gapless guarantee: a failure
//! that could leave a hole in a partition is fatal to that producer, the batch is reported
//! failed, and a fresh producer sends it again whole, so a consumer never sees a later event
//! of a chain before an earlier one — only exact redeliveries.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{AuditSink, SinkError};
use crate::audit::outbox::Entry;

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

#[derive(Debug, Clone)]
pub struct KafkaSinkConfig {
    /// `host:port,host:port`.
    pub brokers: String,
    pub layout: TopicLayout,
    pub partitions: i32,
    pub replication_factor: i32,
    /// `retention.ms` of created topics; -1 keeps events forever.
    pub retention_ms: i64,
    /// How long librdkafka keeps retrying one record before the batch fails.
    pub message_timeout: Duration,
    /// Records the producer may hold unacknowledged (its queue bound).
    pub max_in_flight: usize,
    /// Further librdkafka properties: security protocol, TLS files, SASL settings.
    pub client_properties: Vec<(String, String)>,
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
    config: KafkaSinkConfig,
    producer: Mutex<Arc<FutureProducer>>,
    admin: AdminClient<DefaultClientContext>,
    created: Mutex<HashSet<String>>,
    stats: Arc<KafkaStats>,
    last_error: Mutex<Option<String>>,
}

fn client_config(config: &KafkaSinkConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.brokers);
    for (key, value) in &config.client_properties {
        client.set(key, value);
    }
    client
}

fn producer(config: &KafkaSinkConfig) -> Result<FutureProducer, SinkError> {
    let mut client = client_config(config);
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("enable.gapless.guarantee", "true")
        .set("max.in.flight.requests.per.connection", "5")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", config.message_timeout.as_millis().to_string())
        .set("queue.buffering.max.messages", config.max_in_flight.to_string())
        // The Java client's partitioner, so other producers of the same keys agree.
        .set("partitioner", "murmur2_random");
    client.create().map_err(|e| SinkError::Config(e.to_string()))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
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
        let producer = producer(&config)?;
        let admin = client_config(&config).create().map_err(|e| SinkError::Config(e.to_string()))?;
        Ok(KafkaSink {
            config,
            producer: Mutex::new(Arc::new(producer)),
            admin,
            created: Mutex::new(HashSet::new()),
            stats: Arc::new(KafkaStats::default()),
            last_error: Mutex::new(None),
        })
    }

    pub fn stats(&self) -> Arc<KafkaStats> {
        self.stats.clone()
    }

    /// The last delivery error, cleared by the next successful batch.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn config(&self) -> &KafkaSinkConfig {
        &self.config
    }

    async fn ensure_topics(&self, topics: HashSet<String>) -> Result<(), SinkError> {
        let missing: Vec<String> = {
            let created = self.created.lock().unwrap_or_else(|p| p.into_inner());
            topics.into_iter().filter(|t| !created.contains(t)).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let retention = self.config.retention_ms.to_string();
        let specs: Vec<NewTopic> = missing
            .iter()
            .map(|t| {
                NewTopic::new(t, self.config.partitions, TopicReplication::Fixed(self.config.replication_factor))
                    .set("retention.ms", &retention)
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(self.config.message_timeout));
        let results = self
            .admin
            .create_topics(specs.iter(), &options)
            .await
            .map_err(|e| SinkError::Unavailable(format!("creating topics: {e}")))?;
        let mut created = self.created.lock().unwrap_or_else(|p| p.into_inner());
        for result in results {
            match result {
                Ok(topic) | Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    created.insert(topic);
                }
                Err((topic, code)) => return Err(SinkError::Unavailable(format!("creating topic {topic}: {code}"))),
            }
        }
        Ok(())
    }

    fn fail(&self, error: String) -> SinkError {
        self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.clone());
        // After a fatal error (the gapless guarantee tripped, a fenced epoch) the producer
        // refuses everything: replace it, so the retried batch starts a fresh sequence.
        let mut current = self.producer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((code, reason)) = current.client().fatal_error() {
            tracing::warn!(%code, %reason, "kafka producer hit a fatal error; starting a new one");
            if let Ok(fresh) = producer(&self.config) {
                *current = Arc::new(fresh);
                self.stats.producer_restarts.fetch_add(1, Ordering::Relaxed);
            }
        }
        SinkError::Unavailable(error)
    }
}

#[async_trait::async_trait]
impl AuditSink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn deliver(&self, batch: &[Entry]) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let topics: Vec<String> = batch.iter().map(|e| self.config.layout.topic_for(&e.tenant)).collect();
        if let Err(error) = self.ensure_topics(topics.iter().cloned().collect()).await {
            return Err(self.fail(error.to_string()));
        }
        let producer = self.producer.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut deliveries = Vec::with_capacity(batch.len());
        let mut refused = None;
        for (entry, topic) in batch.iter().zip(&topics) {
            let headers = OwnedHeaders::new()
                .insert(Header { key: "content-type", value: Some("application/cloudevents+json") })
                .insert(Header { key: "tenant", value: Some(entry.tenant.as_str()) });
            let record =
                FutureRecord::to(topic).key(entry.tenant.as_str()).payload(entry.json.as_ref()).headers(headers);
            match producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((error, _)) => {
                    // Nothing after a refused record may be sent, or it would overtake it.
                    refused = Some(error.to_string());
                    break;
                }
            }
        }
        let mut first_error = refused;
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
            return Err(self.fail(error));
        }
        self.stats.delivered.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let oldest = batch.iter().map(|e| e.time_ms).min().unwrap_or(0);
        self.stats.last_lag_ms.store(now_ms().saturating_sub(oldest), Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }
}

/// Reads every record of one tenant that its topic holds now, partition by partition, each in
/// offset order, and hands its payload to `f` with the partition and offset. Blocking: call it
/// from a blocking thread. Records of other tenants (shared layout) are skipped by key.
pub fn read_tenant(
    config: &KafkaSinkConfig,
    tenant: &str,
    timeout: Duration,
    mut f: impl FnMut(i32, i64, &[u8]),
) -> Result<(), SinkError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};

    let unavailable = |what: &str, e: rdkafka::error::KafkaError| SinkError::Unavailable(format!("{what}: {e}"));
    let topic = config.layout.topic_for(tenant);
    let mut client = client_config(config);
    client
        .set("group.id", "custos-audit-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer = client.create().map_err(|e| SinkError::Config(e.to_string()))?;
    let metadata = consumer.fetch_metadata(Some(&topic), timeout).map_err(|e| unavailable("metadata", e))?;
    let Some(partitions) = metadata.topics().iter().find(|t| t.name() == topic).map(|t| t.partitions().len()) else {
        return Ok(());
    };
    let mut assignment = TopicPartitionList::new();
    let mut remaining = Vec::new();
    for partition in 0..partitions as i32 {
        let (low, high) =
            consumer.fetch_watermarks(&topic, partition, timeout).map_err(|e| unavailable("watermarks", e))?;
        if high > low {
            assignment
                .add_partition_offset(&topic, partition, Offset::Offset(low))
                .map_err(|e| unavailable("assignment", e))?;
            remaining.push((partition, high));
        }
    }
    if remaining.is_empty() {
        return Ok(());
    }
    consumer.assign(&assignment).map_err(|e| unavailable("assign", e))?;
    let deadline = std::time::Instant::now() + timeout;
    while !remaining.is_empty() {
        if std::time::Instant::now() >= deadline {
            return Err(SinkError::Unavailable(format!("reading {topic} did not finish within {timeout:?}")));
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
        let message = message.map_err(|e| unavailable("consume", e))?;
        let (partition, offset) = (message.partition(), message.offset());
        if message.key() == Some(tenant.as_bytes()) {
            f(partition, offset, message.payload().unwrap_or_default());
        }
        remaining.retain(|(p, high)| !(*p == partition && offset + 1 >= *high));
    }
    Ok(())
}

//! Wires audit into the node: the outbox, shipper and sink from the `audit` configuration.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use custos_actors::audit::chain::{Anchor, Cut, Verifier};
use custos_actors::audit::shipper::ShipperLimits;
use custos_actors::audit::sink::kafka::{KafkaSinkConfig, TopicLayout};
use custos_actors::audit::sink::local::LocalLogLimits;
use custos_actors::audit::{Audit, AuditMode, AuditSettings, OutboxLimits, Saturation, SinkChoice};
use custos_config::{
    AuditConfig, AuditKafkaConfig, AuditModeConfig, AuditSinkKind, KafkaSaslMechanism, KafkaSecurityProtocol,
    KafkaTopicLayout,
};

use crate::NodeError;

/// The librdkafka client settings of the Kafka sink (and of `custos audit` readers).
pub fn kafka_sink_config(k: &AuditKafkaConfig, max_batch: usize) -> Result<KafkaSinkConfig, NodeError> {
    let mut properties = Vec::new();
    let protocol = match k.security_protocol {
        KafkaSecurityProtocol::Plaintext => "plaintext",
        KafkaSecurityProtocol::Ssl => "ssl",
        KafkaSecurityProtocol::SaslPlaintext => "sasl_plaintext",
        KafkaSecurityProtocol::SaslSsl => "sasl_ssl",
    };
    properties.push(("security.protocol".to_string(), protocol.to_string()));
    let path = |p: &Path| p.display().to_string();
    if let Some(ca) = &k.ca_file {
        properties.push(("ssl.ca.location".into(), path(ca)));
    }
    if let (Some(cert), Some(key)) = (&k.cert_file, &k.key_file) {
        properties.push(("ssl.certificate.location".into(), path(cert)));
        properties.push(("ssl.key.location".into(), path(key)));
    }
    if let Some(user) = &k.sasl_username {
        let mechanism = match k.sasl_mechanism {
            KafkaSaslMechanism::Plain => "PLAIN",
            KafkaSaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            KafkaSaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        };
        let password = match (&k.sasl_password_file, &k.sasl_password_env) {
            (Some(file), _) => std::fs::read_to_string(file)
                .map_err(|e| NodeError::Audit(format!("reading {}: {e}", file.display())))?
                .trim()
                .to_string(),
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                NodeError::Audit(format!("environment variable {var} (audit.kafka.sasl_password_env) is not set"))
            })?,
            (None, None) => return Err(NodeError::Audit("SASL needs audit.kafka.sasl_password_file or _env".into())),
        };
        properties.push(("sasl.mechanism".into(), mechanism.into()));
        properties.push(("sasl.username".into(), user.clone()));
        properties.push(("sasl.password".into(), password));
    }
    Ok(KafkaSinkConfig {
        brokers: k.brokers.clone(),
        layout: match k.topic_layout {
            KafkaTopicLayout::Shared => TopicLayout::Shared { topic: k.topic.clone() },
            KafkaTopicLayout::PerTenant => TopicLayout::PerTenant { prefix: k.topic_prefix.clone() },
        },
        partitions: k.partitions,
        replication_factor: k.replication_factor,
        retention_ms: k.retention_ms,
        request_timeout: Duration::from_millis(k.request_timeout_ms),
        max_in_flight: k.max_in_flight.max(max_batch),
        client_properties: properties,
    })
}

/// Opens the node's audit under `<data_dir>/audit`; the outbox replays what an earlier run
/// left unshipped.
pub async fn open(config: &AuditConfig, node_id: u64, data_dir: &Path) -> Result<Arc<Audit>, NodeError> {
    let sink = match config.sink {
        AuditSinkKind::Local => SinkChoice::Local(LocalLogLimits {
            segment_bytes: config.local.segment_bytes,
            retention: Duration::from_millis(config.local.retention_ms),
            max_bytes_per_tenant: config.local.max_bytes_per_tenant,
        }),
        AuditSinkKind::Kafka => SinkChoice::Kafka(kafka_sink_config(&config.kafka, config.max_batch_events)?),
    };
    let mode = |m: AuditModeConfig| match m {
        AuditModeConfig::FailClosed => AuditMode::FailClosed,
        AuditModeConfig::BestEffort => AuditMode::BestEffort,
        AuditModeConfig::Off => AuditMode::Off,
    };
    if config.mode == AuditModeConfig::Off {
        tracing::warn!("audit.mode = \"off\": nothing this node does is audited");
    }
    Audit::open(AuditSettings {
        node_id,
        dir: data_dir.join("audit"),
        mode: mode(config.mode),
        stream_modes: config.tenant_modes.iter().map(|(tenant, m)| (tenant.clone(), mode(*m))).collect(),
        outbox: OutboxLimits {
            max_batch: config.max_batch_events,
            queue: config.queue_events,
            max_depth: config.max_outbox_events,
            linger: Duration::from_micros(config.commit_linger_us),
            gather: Duration::from_micros(config.commit_gather_us),
            saturation: tokio::runtime::Handle::try_current().map_or(Saturation::Never, Saturation::Runtime),
        },
        shipper: ShipperLimits {
            max_batch: config.max_batch_events,
            max_in_flight: config.ship_max_batches_in_flight,
            backoff_min: Duration::from_millis(config.ship_backoff_min_ms),
            backoff_max: Duration::from_millis(config.ship_backoff_max_ms),
            linger: Duration::from_millis(config.ship_linger_ms),
            sync_interval: Duration::from_millis(config.local.sync_interval_ms),
            idle_poll: Duration::from_secs(1),
            stalled_after: Duration::from_millis(config.ship_stalled_after_ms),
            stop_grace: Duration::from_millis(config.ship_stop_grace_ms),
        },
        sink,
    })
    .await
    .map_err(|e| NodeError::Audit(e.to_string()))
}

/// Where `custos audit verify` reads a stream from.
pub enum StreamSource {
    /// A local audit log directory (`<data_dir>/audit/log`, or a copy of it).
    LocalLog(std::path::PathBuf),
    Kafka(KafkaSinkConfig),
}

impl StreamSource {
    /// The sink a node with this configuration ships to.
    pub fn of(config: &custos_config::Config) -> Result<StreamSource, NodeError> {
        Ok(match config.audit.sink {
            AuditSinkKind::Local => StreamSource::LocalLog(config.node.data_dir.join("audit").join("log")),
            AuditSinkKind::Kafka => {
                StreamSource::Kafka(kafka_sink_config(&config.audit.kafka, config.audit.max_batch_events)?)
            }
        })
    }

    pub fn describe(&self) -> String {
        match self {
            StreamSource::LocalLog(dir) => format!("local log {}", dir.display()),
            StreamSource::Kafka(k) => format!("Kafka {} ({:?})", k.brokers, k.layout),
        }
    }
}

/// Reads a whole stream (a tenant id, or `_cluster`) and checks its chains, each from its
/// anchor if one is given. A stream whose oldest entries retention removed is checked from
/// what it retains; a Kafka partition that starts after offset 0 while the configured
/// retention keeps everything is a finding. A stream with redeliveries far behind their
/// originals is read twice (see [`Verifier`]). Blocking.
pub fn verify(
    source: &StreamSource,
    stream: &str,
    anchors: Vec<Anchor>,
) -> Result<custos_actors::audit::chain::Report, NodeError> {
    let mut verifier = Verifier::new(stream);
    for anchor in anchors {
        verifier.anchor(anchor);
    }
    match source {
        StreamSource::LocalLog(dir) => {
            if !dir.is_dir() {
                return Err(NodeError::Audit(format!("{} is not a directory", dir.display())));
            }
            let log = custos_actors::audit::LocalLog::open(
                dir,
                LocalLogLimits { segment_bytes: u64::MAX, retention: Duration::MAX, max_bytes_per_tenant: u64::MAX },
            )
            .map_err(|e| NodeError::Audit(e.to_string()))?;
            let read = |verifier: &mut Verifier| {
                log.for_each_raw(stream, |line| verifier.push_raw(line)).map_err(|e| NodeError::Audit(e.to_string()))
            };
            if read(&mut verifier)? > 0 {
                // A node's log holds its own chains one after another.
                verifier.after_retention(Cut::Sequential);
            }
            if verifier.needs_rereading() {
                verifier.reread();
                read(&mut verifier)?;
            }
        }
        StreamSource::Kafka(config) => {
            let read = |verifier: &mut Verifier| {
                custos_actors::audit::sink::kafka::read_tenant(config, stream, Duration::from_secs(30), |_, payload| {
                    verifier.push_raw(payload)
                })
                .map_err(|e| NodeError::Audit(e.to_string()))
            };
            match read(&mut verifier)? {
                0 => {}
                // Nothing expires: something else removed the partition's first records.
                low if config.retention_ms < 0 => verifier.truncated(low as u64),
                _ => verifier.after_retention(Cut::Interleaved),
            }
            if verifier.needs_rereading() {
                verifier.reread();
                read(&mut verifier)?;
            }
        }
    }
    Ok(verifier.finish())
}

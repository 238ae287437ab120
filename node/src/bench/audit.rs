//! `custos bench audit`: what auditing to a real Kafka costs, against a plain producer.
//!
//! One Apache Kafka 4.x broker (KRaft, `deploy/scripts/kafka.sh`) serves three measurements
//! in one run:
//!
//! 1. **Pipeline**: many tasks record events through the node's audit path (fail-closed: each
//!    waits until its event is durable in the outbox), the shipper delivers them to Kafka.
//!    Prints events/s made durable and delivered, the mean group-commit size and the latency
//!    from commit to Kafka's acknowledgement (p50/p99).
//! 2. **Baseline**: a plain rdkafka producer with the sink's settings (idempotent, acks=all,
//!    lz4, linger 5 ms) sending payloads of the same size with the same in-flight bound.
//! 3. **End to end**: encrypt over HTTPS on one node with audit to Kafka against the same
//!    build with `audit.mode = "off"`, at each client count: ops/s, the throughput loss, and
//!    the node's CPU time per encrypt (what auditing costs the node itself; the broker and
//!    the load client share the machine).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use custos_actors::audit::outbox::Entry;
use custos_actors::audit::shipper::ShipperLimits;
use custos_actors::audit::sink::kafka::{producer_settings, KafkaSink, KafkaSinkConfig, TopicLayout};
use custos_actors::audit::sink::{Delivered, Delivery};
use custos_actors::audit::{
    Actor, Audit, AuditData, AuditMode, AuditRecord, AuditSettings, AuditSink, AuditStream, EventType, OutboxLimits,
    Outcome, Saturation, SinkChoice, SinkError,
};
use custos_chaos_tests::{KafkaBroker, ProcessCluster};
use custos_raft::TenantId;
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

use super::encrypt::{bench_node, run_measured, Target};

#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    /// HTTP load clients, one run per count and mode.
    pub clients: Vec<usize>,
    /// Concurrent recorders in the pipeline run.
    pub recorders: usize,
    /// `deploy/scripts/kafka.sh`, which installs and runs the broker.
    pub kafka_script: PathBuf,
}

const MAX_BATCH: usize = 1024;
const TENANTS: usize = 16;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn quantile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64
}

fn sink_config(brokers: &str, topic: &str) -> KafkaSinkConfig {
    KafkaSinkConfig {
        brokers: brokers.to_string(),
        layout: TopicLayout::Shared { topic: topic.to_string() },
        partitions: 6,
        replication_factor: 1,
        retention_ms: -1,
        request_timeout: Duration::from_secs(30),
        max_in_flight: 100_000,
        client_properties: Vec::new(),
    }
}

/// The Kafka sink, timing each event from its commit to Kafka's acknowledgement.
struct TimedSink {
    inner: KafkaSink,
    latencies_ms: Arc<Mutex<Vec<u64>>>,
    event_bytes: AtomicU64,
}

#[async_trait::async_trait]
impl AuditSink for TimedSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn deliver(&self, batch: &[Entry]) -> Result<Delivered, SinkError> {
        self.submit(batch).await?.await
    }

    async fn submit(&self, batch: &[Entry]) -> Result<Delivery, SinkError> {
        let delivery = self.inner.submit(batch).await?;
        if let Some(entry) = batch.first() {
            self.event_bytes.store(entry.json.len() as u64, Ordering::Relaxed);
        }
        let committed: Vec<u64> = batch.iter().map(|e| e.time_ms).collect();
        let latencies = self.latencies_ms.clone();
        Ok(Box::pin(async move {
            let delivered = delivery.await?;
            let now = now_ms();
            let mut latencies = latencies.lock().unwrap_or_else(|p| p.into_inner());
            latencies.extend(committed.iter().map(|t| now.saturating_sub(*t)));
            Ok(delivered)
        }))
    }
}

fn record(n: usize) -> AuditRecord {
    let tenant = TenantId::new(format!("bench-{}", n % TENANTS)).expect("a valid tenant id");
    let mut data = AuditData::new(Actor::admin(), Outcome::Success);
    data.key_id = Some("payments".into());
    data.key_version = Some(3);
    data.request_id = Some(uuid::Uuid::new_v4().to_string());
    data.details.insert("context_hmac".into(), json!("5".repeat(64)));
    AuditRecord {
        stream: AuditStream::Tenant(tenant),
        kind: EventType::KeyEncrypt,
        subject: Some("keys/payments".into()),
        data,
    }
}

struct Pipeline {
    recorded_per_sec: f64,
    delivered_per_sec: f64,
    events: u64,
    group_size: f64,
    p50_ms: f64,
    p99_ms: f64,
    event_bytes: usize,
}

async fn pipeline(brokers: &str, duration: Duration, recorders: usize) -> Result<Pipeline> {
    let dir = tempfile::tempdir()?;
    let sink = Arc::new(TimedSink {
        inner: KafkaSink::new(sink_config(brokers, "custos.bench.audit"))?,
        latencies_ms: Arc::new(Mutex::new(Vec::new())),
        event_bytes: AtomicU64::new(0),
    });
    let audit = Audit::open(AuditSettings {
        node_id: 1,
        dir: dir.path().to_path_buf(),
        mode: AuditMode::FailClosed,
        stream_modes: Default::default(),
        outbox: OutboxLimits {
            max_batch: MAX_BATCH,
            queue: 16_384,
            max_depth: 10_000_000,
            linger: Duration::from_micros(custos_config::AuditConfig::default().commit_linger_us),
            gather: Duration::from_micros(custos_config::AuditConfig::default().commit_gather_us),
            saturation: Saturation::Runtime(tokio::runtime::Handle::current()),
        },
        shipper: ShipperLimits {
            max_batch: MAX_BATCH,
            max_in_flight: custos_config::AuditConfig::default().ship_max_batches_in_flight,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            linger: Duration::from_millis(5),
            sync_interval: Duration::from_millis(100),
            idle_poll: Duration::from_millis(100),
            stalled_after: Duration::from_secs(10),
            stop_grace: Duration::from_secs(5),
        },
        sink: SinkChoice::Other(sink.clone()),
    })
    .await?;
    // Warm up: topic creation and connections are not part of the figures.
    audit.record(record(0)).await?;
    wait_drained(&audit, Duration::from_secs(60)).await?;
    let event_bytes = sink.event_bytes.load(Ordering::Relaxed) as usize;
    sink.latencies_ms.lock().unwrap_or_else(|p| p.into_inner()).clear();
    let status = audit.status();
    let (committed_before, commits_before) = (status.committed, status.group_commits);

    let recorded = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..recorders)
        .map(|i| {
            let (audit, recorded, stop) = (audit.clone(), recorded.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = i;
                while !stop.load(Ordering::Relaxed) {
                    if audit.record(record(n)).await.is_ok() {
                        recorded.fetch_add(1, Ordering::Relaxed);
                    }
                    n += recorders;
                }
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    let recording = start.elapsed();
    wait_drained(&audit, Duration::from_secs(300)).await?;
    let delivering = start.elapsed();
    let events = recorded.load(Ordering::Relaxed);
    let status = audit.status();
    let commits = (status.group_commits - commits_before).max(1);
    let mut latencies = std::mem::take(&mut *sink.latencies_ms.lock().unwrap_or_else(|p| p.into_inner()));
    latencies.sort_unstable();
    audit.shutdown().await;
    Ok(Pipeline {
        recorded_per_sec: events as f64 / recording.as_secs_f64(),
        delivered_per_sec: events as f64 / delivering.as_secs_f64(),
        events,
        group_size: (status.committed - committed_before) as f64 / commits as f64,
        p50_ms: quantile(&latencies, 0.50),
        p99_ms: quantile(&latencies, 0.99),
        event_bytes,
    })
}

async fn wait_drained(audit: &Audit, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while audit.outbox().stats().depth.load(Ordering::Relaxed) > 0 {
        if Instant::now() > deadline {
            bail!("the audit outbox did not drain: {:?}", audit.status());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

struct Baseline {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// A plain producer with the sink's settings, `MAX_BATCH` records in flight.
async fn baseline(brokers: &str, duration: Duration, event_bytes: usize) -> Result<Baseline> {
    let config = sink_config(brokers, "custos.bench.baseline");
    // Creating the topic the way the sink does keeps partitions and settings equal.
    let creator = KafkaSink::new(config.clone())?;
    creator
        .deliver(&[Entry { position: 0, tenant: "bench-0".into(), time_ms: now_ms(), json: Arc::from(&b"{}"[..]) }])
        .await?;
    let producer: FutureProducer = producer_settings(&config).create()?;
    let payload = vec![b'x'; event_bytes.max(1)];
    let keys: Vec<String> = (0..TENANTS).map(|i| format!("bench-{i}")).collect();
    let mut in_flight = FuturesUnordered::new();
    let mut latencies_us = Vec::new();
    let (mut sent, mut acked) = (0usize, 0u64);
    let start = Instant::now();
    while start.elapsed() < duration {
        while in_flight.len() < MAX_BATCH {
            let key = &keys[sent % TENANTS];
            let partition = custos_actors::audit::sink::kafka::partition_for(key, 6);
            let record = FutureRecord::to("custos.bench.baseline").partition(partition).key(key).payload(&payload);
            let began = Instant::now();
            match producer.send_result(record) {
                Ok(delivery) => in_flight.push(async move { (delivery.await, began) }),
                Err((e, _)) => bail!("the baseline producer refused a record: {e}"),
            }
            sent += 1;
        }
        if let Some((result, began)) = in_flight.next().await {
            if matches!(result, Ok(Ok(_))) {
                acked += 1;
                latencies_us.push(began.elapsed().as_micros() as u64);
            }
        }
    }
    while let Some((result, began)) = in_flight.next().await {
        if matches!(result, Ok(Ok(_))) {
            acked += 1;
            latencies_us.push(began.elapsed().as_micros() as u64);
        }
    }
    let elapsed = start.elapsed();
    latencies_us.sort_unstable();
    Ok(Baseline {
        per_sec: acked as f64 / elapsed.as_secs_f64(),
        p50_ms: quantile(&latencies_us, 0.50) / 1000.0,
        p99_ms: quantile(&latencies_us, 0.99) / 1000.0,
    })
}

pub(super) fn client_tls(cluster: &ProcessCluster) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in crate::tls::load_certs(&cluster.root().join("tls/ca.pem"))? {
        roots.add(cert)?;
    }
    Ok(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
}

pub async fn run(options: Options) -> Result<()> {
    if options.recorders == 0 || options.clients.is_empty() {
        bail!("--recorders and --clients must be positive");
    }
    crate::tls::install_crypto_provider();
    eprintln!("starting Apache Kafka (KRaft) on 127.0.0.1 …");
    let kafka = KafkaBroker::start(&options.kafka_script).context("starting Kafka for the benchmark")?;
    let brokers = kafka.bootstrap()?;

    let p = pipeline(&brokers, options.duration, options.recorders).await?;
    println!(
        "audit pipeline: {} recorders, fail-closed (each waits for its group commit), {} tenants, {}-byte events, shipper batches of {MAX_BATCH}, 1 Kafka broker, {} s",
        options.recorders,
        TENANTS,
        p.event_bytes,
        options.duration.as_secs()
    );
    let b = baseline(&brokers, options.duration, p.event_bytes).await?;
    println!("{:<34} {:>12} {:>12} {:>10} {:>10}", "", "events/s", "group size", "p50 ms", "p99 ms");
    println!(
        "{:<34} {:>12.0} {:>12.1} {:>10} {:>10}",
        "custos: durable in the outbox", p.recorded_per_sec, p.group_size, "-", "-"
    );
    println!(
        "{:<34} {:>12.0} {:>12} {:>10.1} {:>10.1}",
        "custos: delivered to Kafka", p.delivered_per_sec, "-", p.p50_ms, p.p99_ms
    );
    println!("{:<34} {:>12.0} {:>12} {:>10.1} {:>10.1}", "plain rdkafka producer", b.per_sec, "-", b.p50_ms, b.p99_ms);
    println!(
        "({} events; custos latency is commit → Kafka ack; the baseline's is send → ack; delivered/baseline = {:.2})",
        p.events,
        p.delivered_per_sec / b.per_sec
    );

    println!();
    let exe = std::env::current_exe().context("locating the custos binary")?;
    let off = bench_node(&exe, &[("CUSTOS_AUDIT__MODE", "off")]).await?;
    let kafka_env = [
        ("CUSTOS_AUDIT__SINK", "kafka"),
        ("CUSTOS_AUDIT__KAFKA__BROKERS", brokers.as_str()),
        ("CUSTOS_AUDIT__KAFKA__REPLICATION_FACTOR", "1"),
        ("CUSTOS_AUDIT__KAFKA__PARTITIONS", "6"),
    ];
    let audited = bench_node(&exe, &kafka_env).await?;
    let mut best_effort_env = kafka_env.to_vec();
    best_effort_env.push(("CUSTOS_AUDIT__MODE", "best-effort"));
    let best_effort = bench_node(&exe, &best_effort_env).await?;
    let payload = json!({ "plaintext": STANDARD.encode([0x5a; 128]) });
    println!(
        "end to end: encrypt of 128 bytes over HTTPS/1.1 on 1 node with audit to Kafka, fail-closed and best-effort, vs audit off (same build), {} s per run",
        options.duration.as_secs()
    );
    println!(
        "{:>7} {:>10} {:>12} {:>8} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "clients",
        "off ops/s",
        "closed ops/s",
        "loss %",
        "b-eff ops/s",
        "loss %",
        "off p99",
        "cl. p99",
        "be. p99",
        "off cpu",
        "cl. cpu",
        "be. cpu"
    );
    for &clients in &options.clients {
        let mut figures = Vec::new();
        for cluster in [&off, &audited, &best_effort] {
            let auth = ("authorization", format!("Bearer {}", cluster.token().context("no admin token")?));
            let url = cluster.url(1, "/v1/tenants/bench/keys/k/encrypt")?;
            let target = Target::new("custos", "encrypt", &url, &auth, &payload, &client_tls(cluster)?)?;
            figures.push(run_measured(target, clients, options.duration, &cluster.pids()).await);
        }
        let ((o, o_cpu), (a, a_cpu), (b, b_cpu)) = (&figures[0], &figures[1], &figures[2]);
        let loss = |x: &super::load::RunStats| 100.0 * (1.0 - x.ops_per_sec() / o.ops_per_sec());
        println!(
            "{:>7} {:>10.0} {:>12.0} {:>8.1} {:>12.0} {:>8.1} {:>8.2} {:>8.2} {:>8.2} {:>8.0} {:>8.0} {:>8.0}",
            clients,
            o.ops_per_sec(),
            a.ops_per_sec(),
            loss(a),
            b.ops_per_sec(),
            loss(b),
            o.latency_ms(0.99),
            a.latency_ms(0.99),
            b.latency_ms(0.99),
            o_cpu,
            a_cpu,
            b_cpu
        );
    }
    println!("(p99 in ms; cpu: the node's user + system CPU µs per encrypt)");
    for (name, cluster) in [("fail-closed", &audited), ("best-effort", &best_effort)] {
        let status = cluster.get(1, "/v1/cluster/status").await?;
        println!("{name} node after the runs: {}", status.body["audit"]);
    }
    Ok(())
}

//! Audit shipping to a real Apache Kafka 4.x (KRaft), started by the project's own script
//! (`deploy/scripts/kafka.sh`, which resolves the broker from Maven Central when missing).
//! A missing or broken Kafka fails these tests; they never skip.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use custos_actors::audit::chain::Verifier;
use custos_actors::audit::shipper::ShipperLimits;
use custos_actors::audit::sink::kafka::{read_tenant, read_tenant_page, KafkaSinkConfig, TopicLayout};
use custos_actors::audit::{
    Actor, Audit, AuditData, AuditError, AuditEvent, AuditMode, AuditRecord, AuditSettings, AuditStream, EventType,
    OutboxLimits, Outcome, Saturation, SinkChoice,
};
use custos_chaos_tests::KafkaBroker;
use custos_raft::TenantId;

fn broker() -> KafkaBroker {
    let script = KafkaBroker::script_in(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    KafkaBroker::start(&script).expect("Apache Kafka is required for these tests")
}

fn kafka_config(broker: &KafkaBroker, layout: TopicLayout) -> KafkaSinkConfig {
    KafkaSinkConfig {
        brokers: broker.bootstrap().unwrap(),
        layout,
        partitions: 3,
        replication_factor: 1,
        retention_ms: -1,
        request_timeout: Duration::from_secs(3),
        max_in_flight: 10_000,
        client_properties: Vec::new(),
    }
}

const STALLED_AFTER: Duration = Duration::from_secs(2);
const STOP_GRACE: Duration = Duration::from_secs(2);

async fn open(dir: &Path, mode: AuditMode, max_depth: u64, kafka: KafkaSinkConfig) -> Arc<Audit> {
    Audit::open(AuditSettings {
        node_id: 1,
        dir: dir.to_path_buf(),
        mode,
        stream_modes: Default::default(),
        outbox: OutboxLimits {
            max_batch: 256,
            queue: 1024,
            max_depth,
            linger: Duration::ZERO,
            gather: Duration::ZERO,
            saturation: Saturation::Never,
        },
        shipper: ShipperLimits {
            max_batch: 256,
            // Several batches on their way, so a broker outage fails some of them at once.
            max_in_flight: 4,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            linger: Duration::from_millis(5),
            sync_interval: Duration::from_millis(100),
            idle_poll: Duration::from_millis(200),
            stalled_after: STALLED_AFTER,
            stop_grace: STOP_GRACE,
        },
        sink: SinkChoice::Kafka(kafka),
    })
    .await
    .expect("audit opens")
}

fn record(tenant: &str, n: u64) -> AuditRecord {
    let mut data = AuditData::new(Actor::admin(), Outcome::Success);
    data.key_id = Some(format!("k{}", n % 4));
    AuditRecord {
        stream: AuditStream::Tenant(TenantId::new(tenant).unwrap()),
        kind: EventType::KeyEncrypt,
        subject: None,
        data,
    }
}

async fn drained(audit: &Audit, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while audit.outbox().stats().depth.load(Ordering::Relaxed) > 0 {
        assert!(Instant::now() < deadline, "outbox not drained: {:?}", audit.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything Kafka holds for a tenant, as (offset, event).
async fn read_back(config: &KafkaSinkConfig, tenant: &str) -> Vec<(i64, AuditEvent)> {
    let (config, tenant) = (config.clone(), tenant.to_string());
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        read_tenant(&config, &tenant, Duration::from_secs(30), |o, bytes| {
            out.push((o, serde_json::from_slice::<AuditEvent>(bytes).expect("an audit event")));
        })
        .expect("read back from Kafka");
        out
    })
    .await
    .unwrap()
}

fn verify(events: &[(i64, AuditEvent)], tenant: &str) -> custos_actors::audit::chain::Report {
    let mut verifier = Verifier::new(tenant);
    for (_, event) in events {
        verifier.push(event.clone());
    }
    verifier.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_kafka_keyed_by_tenant_in_chain_order_and_verify() {
    let kafka = broker();
    let dir = tempfile::tempdir().unwrap();
    let config = kafka_config(&kafka, TopicLayout::Shared { topic: "custos.audit".into() });
    let audit = open(dir.path(), AuditMode::FailClosed, 100_000, config.clone()).await;

    let tasks: Vec<_> = (0..600u64)
        .map(|n| {
            let audit = audit.clone();
            tokio::spawn(async move { audit.record(record(["acme", "globex", "initech"][(n % 3) as usize], n)).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().expect("recorded");
    }
    drained(&audit, Duration::from_secs(60)).await;

    for tenant in ["acme", "globex", "initech"] {
        let events = read_back(&config, tenant).await;
        assert_eq!(events.len(), 200, "{tenant}");
        assert!(events.iter().all(|(_, e)| e.tenant == tenant), "another tenant's event under {tenant}'s key");
        let seqs: Vec<u64> = events.iter().map(|(_, e)| e.chainseq).collect();
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>(), "{tenant}'s events are not in chain order");
        let report = verify(&events, tenant);
        assert!(report.is_clean(), "{tenant}: {:?}", report.findings);
    }
    // Pages continue where the previous one ended.
    let (config2, tenant) = (config.clone(), "acme");
    let pages = tokio::task::spawn_blocking(move || {
        let first = read_tenant_page(&config2, tenant, 0, 150, Duration::from_secs(30)).unwrap();
        let second = read_tenant_page(&config2, tenant, first.next, 150, Duration::from_secs(30)).unwrap();
        (first.records.len(), second.records.len(), second.next)
    })
    .await
    .unwrap();
    assert_eq!((pages.0, pages.1), (150, 50));
    audit.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_crash_under_load_loses_no_acknowledged_event_and_fail_closed_refuses_past_the_backlog() {
    let kafka = broker();
    let dir = tempfile::tempdir().unwrap();
    let config = kafka_config(&kafka, TopicLayout::PerTenant { prefix: "custos.audit.".into() });
    let max_depth = 400;
    let audit = open(dir.path(), AuditMode::FailClosed, max_depth, config.clone()).await;
    for n in 0..50 {
        audit.record(record("acme", n)).await.unwrap();
    }
    drained(&audit, Duration::from_secs(60)).await;

    kafka.run("kill").unwrap();
    // Load while the broker is down: the outbox absorbs it up to its bound, then fail-closed
    // refuses clearly instead of acknowledging what it cannot keep.
    let mut acknowledged: HashMap<&str, u64> = HashMap::from([("acme", 50), ("globex", 0)]);
    let mut refused = 0;
    for n in 0..600u64 {
        let tenant = if n % 2 == 0 { "acme" } else { "globex" };
        match audit.record(record(tenant, n)).await {
            Ok(()) => *acknowledged.get_mut(tenant).unwrap() += 1,
            Err(AuditError::Backlog { depth }) => {
                assert_eq!(depth, max_depth);
                refused += 1;
            }
            Err(other) => panic!("unexpected audit error {other}"),
        }
    }
    assert!(refused > 0, "the outbox never filled: {:?}", audit.status());
    // Batches wait for the broker (they never expire); status must say why nothing ships.
    let deadline = Instant::now() + Duration::from_secs(30);
    while audit.status().last_error.is_none() {
        assert!(Instant::now() < deadline, "no delivery failure reported: {:?}", audit.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    kafka.run("restart").unwrap();
    drained(&audit, Duration::from_secs(90)).await;
    for (tenant, count) in acknowledged {
        let events = read_back(&config, tenant).await;
        let report = verify(&events, tenant);
        assert!(report.is_clean(), "{tenant}: {:?}", report.findings);
        let distinct: std::collections::HashSet<&str> = events.iter().map(|(_, e)| e.id.as_str()).collect();
        assert_eq!(distinct.len() as u64, count, "{tenant}: acknowledged events missing from Kafka");
        assert_eq!(report.chains[0].last_seq, count);
    }
    audit.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_effort_keeps_answering_while_the_broker_is_down_and_catches_up() {
    let kafka = broker();
    let dir = tempfile::tempdir().unwrap();
    let config = kafka_config(&kafka, TopicLayout::Shared { topic: "custos.audit".into() });
    let audit = open(dir.path(), AuditMode::BestEffort, 100_000, config.clone()).await;
    kafka.run("stop").unwrap();
    let started = Instant::now();
    for n in 0..500 {
        audit.record(record("acme", n)).await.expect("best-effort never fails a request");
    }
    assert!(started.elapsed() < Duration::from_secs(2), "best-effort requests waited for the sink");
    kafka.run("restart").unwrap();
    // Queued events become durable shortly after; wait until all of them are shipped.
    let deadline = Instant::now() + Duration::from_secs(90);
    while audit.status().shipped < 500 {
        assert!(Instant::now() < deadline, "not shipped: {:?}", audit.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = read_back(&config, "acme").await;
    let report = verify(&events, "acme");
    assert!(report.is_clean(), "{:?}", report.findings);
    assert_eq!(report.chains[0].last_seq, 500);
    assert_eq!(audit.status().dropped, 0);
    audit.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_wait_out_a_long_outage_without_failing_so_no_later_event_overtakes_an_earlier_one() {
    let kafka = broker();
    let dir = tempfile::tempdir().unwrap();
    let config = kafka_config(&kafka, TopicLayout::Shared { topic: "custos.audit.waits".into() });
    let audit = open(dir.path(), AuditMode::FailClosed, 100_000, config.clone()).await;
    for n in 0..50 {
        audit.record(record("acme", n)).await.unwrap();
    }
    drained(&audit, Duration::from_secs(60)).await;

    kafka.run("kill").unwrap();
    // Batches go out at different moments while the broker is down, and the outage lasts
    // longer than any request timeout. Had the oldest expired while a younger one waited, the
    // younger would land first once the broker is back.
    for n in 50..80 {
        audit.record(record("acme", n)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + STALLED_AFTER + Duration::from_secs(10);
    loop {
        let status = audit.status();
        if status.last_error.as_deref().is_some_and(|e| e.starts_with("kafka has acknowledged no batch for")) {
            break;
        }
        assert!(Instant::now() < deadline, "the stall was not reported: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(audit.status().delivery_failures, 0, "a batch failed while the broker was merely down");
    // The delivery lag counts the wait of the oldest event still on its way.
    let lag = audit.status().kafka_lag_ms.unwrap();
    assert!(lag >= STALLED_AFTER.as_millis() as u64, "lag {lag} ms while nothing was delivered for longer");

    // Stopping during the outage gives up after the grace period; the outbox keeps the rest.
    let stopping = Instant::now();
    audit.shutdown().await;
    assert!(stopping.elapsed() < STOP_GRACE + Duration::from_secs(3), "shutdown hung on the outage");
    drop(audit);

    kafka.run("restart").unwrap();
    let audit = open(dir.path(), AuditMode::FailClosed, 100_000, config.clone()).await;
    drained(&audit, Duration::from_secs(90)).await;
    let events = read_back(&config, "acme").await;
    let report = verify(&events, "acme");
    assert!(report.is_clean(), "{:?}", report.findings);
    assert_eq!(report.chains[0].last_seq, 80);
    let distinct: std::collections::HashSet<&str> = events.iter().map(|(_, e)| e.id.as_str()).collect();
    assert_eq!(distinct.len(), 80, "acknowledged events missing from Kafka");
    audit.shutdown().await;
}

//! Chaos smoke: the register workload against three `custos` processes while the harness
//! cuts the leader off from the majority and heals it, twice; the recorded history must be
//! linearizable for every register. `CUSTOS_CHAOS_SEED` replays a run.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use custos_chaos_tests::history::{check, Phase};
use custos_chaos_tests::workload::{run, Workload};
use custos_chaos_tests::ProcessCluster;
use reqwest::Method;
use serde_json::json;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_custos"))
}

fn seed() -> u64 {
    std::env::var("CUSTOS_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261123)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_partitions_keep_register_histories_linearizable() {
    let seed = seed();
    let mut cluster = ProcessCluster::with_links(binary(), 3, &[]).await.expect("prepare");
    cluster.form().await.expect("form");
    let keys: Vec<String> = (1..=3).map(|i| format!("reg-{i}")).collect();
    let mut initial = HashMap::new();
    for key in &keys {
        let body = json!({ "id": key, "display_name": "init", "region": "eu" });
        let reply = cluster.call(1, Method::POST, "/v1/tenants", Some(&body), &[]).await.unwrap();
        assert_eq!(reply.status, 201, "{}", reply.body);
        initial.insert(key.clone(), Some("init".to_string()));
    }
    let cluster = Arc::new(cluster);
    let duration = Duration::from_secs(24);
    let workload = tokio::spawn(run(cluster.clone(), Workload { keys: keys.clone(), clients: 4, duration, seed }));

    // The nemesis: cut the current leader off from the majority, then heal; twice.
    let all = cluster.ids();
    let mut recovery = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let leader = cluster.wait_leader(&all, Duration::from_secs(10)).await.unwrap();
        let rest: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
        cluster.partition(&[&[leader], &rest]).unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        cluster.heal();
        let healed = Instant::now();
        let node = rest[0];
        loop {
            let body = json!({ "display_name": format!("probe-{}", healed.elapsed().as_nanos()) });
            let reply = cluster.call(node, Method::PATCH, "/v1/tenants/probe-missing", Some(&body), &[]).await;
            // Any answer from the state machine (404 here) shows writes commit again.
            if reply.is_ok_and(|r| r.status == 404) {
                break;
            }
            assert!(healed.elapsed() < Duration::from_secs(20), "no write committed 20 s after healing");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        recovery.push(healed.elapsed());
    }
    let recorded = workload.await.unwrap();
    let history = cluster.root().join("history.jsonl");
    std::fs::write(&history, recorded.to_jsonl()).unwrap();

    let verdicts = check(&recorded.events, &initial).expect("the linearizability checker runs (Go is required)");
    let anomalies: Vec<_> = verdicts.iter().filter(|v| !v.linearizable()).collect();
    println!(
        "chaos leader-partition seed={seed} duration={}s: ops ok={} failed={} indeterminate={} anomalies={} recovery={:?}",
        duration.as_secs(),
        recorded.count(Phase::Ok),
        recorded.count(Phase::Fail),
        recorded.count(Phase::Info),
        anomalies.len(),
        recovery,
    );
    assert!(anomalies.is_empty(), "not linearizable: {anomalies:?}; history in {}", history.display());
    assert!(recorded.count(Phase::Ok) >= 100, "too little progress to mean anything: {}", recorded.count(Phase::Ok));
}

//! Chaos smoke: the register workload against three `custos` processes while a nemesis
//! partitions or kills the leader; the recorded history must be linearizable for every
//! register, and every node must serve again afterwards. `CUSTOS_CHAOS_SEED` replays a run.

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

/// A formed 3-node cluster with proxied links and three registers set to "init".
async fn registers() -> (Arc<ProcessCluster>, Vec<String>, HashMap<String, Option<String>>) {
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
    (Arc::new(cluster), keys, initial)
}

/// After the run every node holds, in its own state, what a linearizable read returns: no
/// acknowledged write is missing anywhere once the faults are over.
async fn converged(cluster: &ProcessCluster, initial: &HashMap<String, Option<String>>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for key in initial.keys() {
        let path = format!("/v1/tenants/{key}");
        let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(10)).await.unwrap();
        let truth = cluster.get(leader, &path).await.unwrap();
        assert_eq!(truth.status, 200, "{}", truth.body);
        for node in cluster.ids() {
            loop {
                let local = cluster.get(node, &format!("{path}?consistency=stale")).await.unwrap();
                if local.body["display_name"] == truth.body["display_name"] {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {node} holds {} for {key}, the cluster {}",
                    local.body["display_name"],
                    truth.body["display_name"]
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Waits until a write through `node` reaches the state machine again.
async fn writes_commit_through(cluster: &ProcessCluster, node: u64, within: Duration) -> Duration {
    let since = Instant::now();
    loop {
        let body = json!({ "display_name": "probe" });
        let reply = cluster.call(node, Method::PATCH, "/v1/tenants/probe-missing", Some(&body), &[]).await;
        // Any answer from the state machine (404 here) shows writes commit again.
        if reply.is_ok_and(|r| r.status == 404) {
            return since.elapsed();
        }
        assert!(since.elapsed() < within, "no write committed through node {node} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A scenario under way: the cluster, its registers and the workload running against them.
struct Scenario {
    name: &'static str,
    seed: u64,
    duration: Duration,
    cluster: Arc<ProcessCluster>,
    initial: HashMap<String, Option<String>>,
    workload: tokio::task::JoinHandle<custos_chaos_tests::workload::Recorded>,
}

impl Scenario {
    /// Forms the cluster and starts 4 clients for 24 s; the test then plays the nemesis.
    async fn start(name: &'static str) -> Scenario {
        let seed = seed();
        let duration = Duration::from_secs(24);
        let (cluster, keys, initial) = registers().await;
        let workload = tokio::spawn(run(cluster.clone(), Workload { keys, clients: 4, duration, seed }));
        Scenario { name, seed, duration, cluster, initial, workload }
    }

    /// Waits for the workload, checks the history, prints the summary line and fails on
    /// anomalies or too little progress.
    async fn finish(self, recovery: &[Duration]) {
        let recorded = self.workload.await.unwrap();
        converged(&self.cluster, &self.initial).await;
        let history = self.cluster.root().join("history.jsonl");
        std::fs::write(&history, recorded.to_jsonl()).unwrap();
        let verdicts =
            check(&recorded.events, &self.initial).expect("the linearizability checker runs (Go is required)");
        let anomalies: Vec<_> = verdicts.iter().filter(|v| !v.linearizable()).collect();
        println!(
            "chaos {} seed={} duration={}s: ops ok={} failed={} indeterminate={} anomalies={} recovery={recovery:?}",
            self.name,
            self.seed,
            self.duration.as_secs(),
            recorded.count(Phase::Ok),
            recorded.count(Phase::Fail),
            recorded.count(Phase::Info),
            anomalies.len(),
        );
        assert!(anomalies.is_empty(), "not linearizable: {anomalies:?}; history in {}", history.display());
        let ok = recorded.count(Phase::Ok);
        assert!(ok >= 100, "too little progress to mean anything: {ok}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_partitions_keep_register_histories_linearizable() {
    let scenario = Scenario::start("leader-partition").await;
    let cluster = scenario.cluster.clone();
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
        // The isolated old leader must serve writes again once healed.
        recovery.push(writes_commit_through(&cluster, leader, Duration::from_secs(20)).await);
    }
    scenario.finish(&recovery).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kills_keep_register_histories_linearizable() {
    let scenario = Scenario::start("leader-kill").await;
    let cluster = scenario.cluster.clone();
    // The nemesis: SIGKILL the current leader, restart it a little later; twice.
    let all = cluster.ids();
    let mut recovery = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let leader = cluster.wait_leader(&all, Duration::from_secs(10)).await.unwrap();
        cluster.kill(leader).unwrap();
        let killed = Instant::now();
        let rest: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
        cluster.wait_leader(&rest, Duration::from_secs(15)).await.unwrap();
        recovery.push(killed.elapsed());
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.start(leader).unwrap();
        cluster.wait_healthy(leader, Duration::from_secs(30)).await.unwrap();
        writes_commit_through(&cluster, leader, Duration::from_secs(20)).await;
    }
    scenario.finish(&recovery).await;
}

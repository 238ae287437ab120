//! Partitions through the chaos harness's per-link proxies: three `custos` processes whose
//! Raft traffic runs through a fault proxy on every directed link.

use std::path::Path;
use std::time::{Duration, Instant};

use custos_chaos_tests::ProcessCluster;
use reqwest::Method;
use serde_json::json;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_custos"))
}

async fn create(cluster: &ProcessCluster, node: u64, id: &str) -> u16 {
    let body = json!({ "id": id, "display_name": id, "region": "eu" });
    cluster.call(node, Method::POST, "/v1/tenants", Some(&body), &[]).await.map(|r| r.status).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_majority_stops_serving_linearizable_reads_steps_down_and_catches_up() {
    let mut cluster = ProcessCluster::with_links(binary(), 3, &[]).await.expect("prepare");
    cluster.form().await.expect("form");
    let all = cluster.ids();
    let old = cluster.wait_leader(&all, Duration::from_secs(10)).await.unwrap();
    assert_eq!(create(&cluster, old, "before").await, 201);
    let majority: Vec<u64> = all.iter().copied().filter(|id| *id != old).collect();

    cluster.partition(&[&[old], &majority]).unwrap();

    // The majority elects a leader of its own and takes writes.
    let new = cluster.wait_leader(&majority, Duration::from_secs(15)).await.unwrap();
    assert_ne!(new, old);
    let deadline = Instant::now() + Duration::from_secs(15);
    while create(&cluster, new, "after").await != 201 {
        assert!(Instant::now() < deadline, "the majority never took a write");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The cut-off leader answers no linearizable read: it cannot confirm it still leads.
    let read = cluster.get(old, "/v1/tenants/before").await.unwrap();
    assert!(
        read.status == 503 || read.status == 504,
        "linearizable read on the cut-off leader: {} {}",
        read.status,
        read.body
    );
    // A stale read still answers from its own state, which lacks the majority's write.
    let stale = cluster.get(old, "/v1/tenants/after?consistency=stale").await.unwrap();
    assert_eq!(stale.status, 404, "{}", stale.body);
    // And it stops calling itself leader.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = cluster.node_status(old).await.unwrap();
        if status["state"] != "leader" {
            break;
        }
        assert!(Instant::now() < deadline, "the cut-off node still says it leads: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Healed, it follows the new leader and reads the write it missed, linearizably.
    cluster.heal();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let read = cluster.get(old, "/v1/tenants/after").await.unwrap();
        if read.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the healed node never caught up: {} {}", read.status, read.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

//! A 3-node cluster of real `custos` processes on loopback: replication, forwarding,
//! linearizable follower reads, leader failover, restart and catch-up by snapshot.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use custos_chaos_tests::ProcessCluster;
use reqwest::Method;
use serde_json::json;

/// Short Raft timings keep failover quick; tiny snapshot thresholds make the log purge early
/// so a lagging node must catch up by snapshot.
const ENV: &[(&str, &str)] = &[
    ("CUSTOS_RAFT__HEARTBEAT_INTERVAL_MS", "50"),
    ("CUSTOS_RAFT__ELECTION_TIMEOUT_MS_MIN", "300"),
    ("CUSTOS_RAFT__ELECTION_TIMEOUT_MS_MAX", "600"),
    ("CUSTOS_RAFT__SNAPSHOT_AFTER_ENTRIES", "20"),
    ("CUSTOS_RAFT__LOG_ENTRIES_KEPT_AFTER_SNAPSHOT", "0"),
];

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_custos"))
}

/// Creates a tenant through `node`; returns true when the write was acknowledged.
async fn create(cluster: &ProcessCluster, node: u64, id: &str) -> bool {
    let body = json!({ "id": id, "display_name": format!("Tenant {id}"), "region": "eu-west" });
    match cluster.call(node, Method::POST, "/v1/tenants", Some(&body), &[]).await {
        Ok(reply) => reply.status == 201,
        Err(_) => false,
    }
}

/// Ids of all tenants in `node`'s local state (stale read).
async fn local_tenants(cluster: &ProcessCluster, node: u64) -> BTreeSet<String> {
    let reply = cluster.get(node, "/v1/tenants?consistency=stale&limit=1000").await.expect("list tenants");
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["tenants"]
        .as_array()
        .expect("tenant array")
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

/// The tenants whose actors run on the node of this cluster status.
fn running_actors(status: &serde_json::Value) -> BTreeSet<String> {
    status["tenant_actors"]
        .as_array()
        .map(|a| {
            a.iter().filter(|t| t["state"] == "running").map(|t| t["tenant_id"].as_str().unwrap().to_string()).collect()
        })
        .unwrap_or_default()
}

/// Waits until every node in `nodes` holds the same tenants, including every acknowledged
/// one. Writes whose outcome the client never learned may or may not be there; nothing that
/// was never attempted may be.
async fn wait_converged(
    cluster: &ProcessCluster,
    nodes: &[u64],
    acked: &BTreeSet<String>,
    attempted: &BTreeSet<String>,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut views = Vec::new();
        for node in nodes {
            let found = local_tenants(cluster, *node).await;
            assert!(
                found.is_subset(attempted),
                "node {node} holds tenants nobody created: {:?}",
                found.difference(attempted)
            );
            views.push(found);
        }
        if views.iter().all(|v| acked.is_subset(v) && v == &views[0]) {
            return;
        }
        assert!(Instant::now() < deadline, "nodes {nodes:?} did not converge");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_cluster_survives_failover_and_catches_up() {
    let mut cluster = ProcessCluster::new(binary(), 3, ENV).expect("prepare cluster");
    let mut acked = BTreeSet::new();
    let mut attempted = BTreeSet::new();

    // Init on node 1, join 2 and 3 (learner, then voter).
    cluster.form().await.expect("form cluster");
    let status = cluster.get(2, "/v1/cluster/status").await.unwrap();
    let members = status.body["cluster"]["members"].as_array().expect("members").clone();
    assert_eq!(members.len(), 3, "{}", status.body);
    assert!(members.iter().all(|m| m["voter"] == true), "{}", status.body);

    // Writes through the leader and through a follower (forwarded) are both acknowledged.
    let leader = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(10)).await.unwrap();
    let follower = [1, 2, 3].into_iter().find(|n| *n != leader).unwrap();
    for (node, id) in [(leader, "via-leader"), (follower, "via-follower")] {
        attempted.insert(id.to_string());
        assert!(create(&cluster, node, id).await, "write through node {node}");
        acked.insert(id.to_string());
    }

    // A linearizable read on any node sees a write acknowledged on another node just before.
    for i in 0..12u64 {
        let writer = i % 3 + 1;
        let reader = (i + 1) % 3 + 1;
        let id = format!("lin-{i}");
        attempted.insert(id.clone());
        assert!(create(&cluster, writer, &id).await);
        acked.insert(id.clone());
        let read = cluster.get(reader, &format!("/v1/tenants/{id}")).await.unwrap();
        assert_eq!(read.status, 200, "node {reader} missed {id} written on node {writer}: {}", read.body);
    }

    // SIGKILL the leader: the survivors elect a new leader and keep accepting writes.
    cluster.kill(leader).expect("kill leader");
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != leader).collect();
    let new_leader = cluster.wait_leader(&survivors, Duration::from_secs(15)).await.expect("new leader");
    assert_ne!(new_leader, leader);
    for i in 0..10 {
        let id = format!("after-failover-{i}");
        attempted.insert(id.clone());
        assert!(create(&cluster, survivors[i % 2], &id).await, "write {id} after failover");
        acked.insert(id);
    }

    // The killed node restarts from its data dir and catches up.
    cluster.start(leader).unwrap();
    cluster.wait_healthy(leader, Duration::from_secs(20)).await.unwrap();
    wait_converged(&cluster, &[1, 2, 3], &acked, &attempted).await;

    // Stop a follower and write on. A leader keeps log entries a stopped follower's
    // replication still waits for, so the leader is then restarted: the new term's leader
    // purges its log past the stopped follower's last entry after later snapshots, and the
    // follower can only catch up by installing a snapshot.
    let current = cluster.wait_leader(&[1, 2, 3], Duration::from_secs(10)).await.unwrap();
    let lagging = [1, 2, 3].into_iter().find(|n| *n != current).unwrap();
    let lagging_last = cluster.node_status(lagging).await.unwrap()["last_log_index"].as_u64().unwrap();
    cluster.stop(lagging).unwrap();
    let writers: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != lagging).collect();
    let mut n = 0;
    for _ in 0..40 {
        let id = format!("while-down-{n}");
        attempted.insert(id.clone());
        assert!(create(&cluster, writers[n % 2], &id).await, "write {id} with one node down");
        acked.insert(id);
        n += 1;
    }
    cluster.stop(current).unwrap();
    cluster.start(current).unwrap();
    cluster.wait_healthy(current, Duration::from_secs(20)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let purged = loop {
        let id = format!("while-down-{n}");
        attempted.insert(id.clone());
        if create(&cluster, writers[n % 2], &id).await {
            acked.insert(id);
        }
        n += 1;
        let leader = cluster.wait_leader(&writers, Duration::from_secs(10)).await.unwrap();
        let purged = cluster.node_status(leader).await.unwrap()["purged_index"].as_u64().unwrap_or(0);
        if purged > lagging_last {
            break purged;
        }
        assert!(Instant::now() < deadline, "leader never purged past {lagging_last} (purged {purged})");
    };
    assert!(purged > lagging_last);
    cluster.start(lagging).unwrap();
    cluster.wait_healthy(lagging, Duration::from_secs(20)).await.unwrap();

    // Every acknowledged write is present on every node, and nothing else is.
    wait_converged(&cluster, &[1, 2, 3], &acked, &attempted).await;
    let caught_up = cluster.node_status(lagging).await.unwrap();
    assert!(caught_up["snapshot_index"].as_u64().unwrap_or(0) > lagging_last, "{caught_up}");
    // A leader encoded a copy of its state for it, and counted it.
    let mut copies = 0;
    for node in writers.iter().copied() {
        copies += cluster.node_status(node).await.unwrap()["snapshot_copies"].as_u64().unwrap_or(0);
    }
    assert!(copies >= 1, "no snapshot copy counted");

    // A tenant's actors start on a node with its first request there, and only its: the other
    // tenants were never used and have none. A suspension made through one node stops them on
    // every node.
    let suspended = acked.iter().next().unwrap().clone();
    for node in [1, 2, 3] {
        let body = json!({ "id": format!("k{node}") });
        let path = format!("/v1/tenants/{suspended}/keys");
        let reply = cluster.call(node, Method::POST, &path, Some(&body), &[]).await.unwrap();
        assert_eq!(reply.status, 201, "node {node}: {}", reply.body);
    }
    let used: BTreeSet<String> = [suspended.clone()].into();
    for node in [1, 2, 3] {
        let status = cluster.get(node, "/v1/cluster/status").await.unwrap().body;
        assert_eq!(running_actors(&status), used, "node {node}");
    }
    let reply =
        cluster.call(lagging, Method::POST, &format!("/v1/tenants/{suspended}/suspend"), None, &[]).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let expected = BTreeSet::new();
    for node in [1, 2, 3] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = cluster.get(node, "/v1/cluster/status").await.unwrap().body;
            let running = running_actors(&status);
            if running == expected {
                break;
            }
            assert!(Instant::now() < deadline, "node {node} runs actors for {running:?}, expected {expected:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Pre-vote: a follower the leader cannot reach (here a one-way fault, as for a node restarting
/// or waiting for its catch-up snapshot) hears no leader and times out, but the other voters
/// still hear one, so it starts no election. Without pre-vote it would raise its term, and the
/// leader would step down on the raised term as soon as it reached the follower again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_the_leader_cannot_reach_does_not_depose_it() {
    let mut cluster = ProcessCluster::with_links(binary(), 3, ENV).await.expect("prepare");
    cluster.form().await.expect("form");
    let all = cluster.ids();
    let leader = cluster.wait_leader(&all, Duration::from_secs(10)).await.unwrap();
    let follower = *all.iter().find(|id| **id != leader).unwrap();
    let other = *all.iter().find(|id| **id != leader && **id != follower).unwrap();
    let term = cluster.node_status(leader).await.unwrap()["term"].clone();

    // The leader's messages stop reaching the follower for ten longest election timeouts;
    // writes go on through the other follower.
    cluster.link(leader, follower).unwrap().set(custos_chaos_tests::Fault::Cut);
    for i in 0..20 {
        let body = json!({ "id": format!("cut-{i}"), "display_name": "d", "region": "eu" });
        let reply = cluster.call(other, Method::POST, "/v1/tenants", Some(&body), &[]).await.unwrap();
        assert_eq!(reply.status, 201, "write {i} during the fault: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    cluster.heal();

    // The follower catches up under the same leader, in the same term.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !local_tenants(&cluster, follower).await.contains("cut-19") {
        assert!(Instant::now() < deadline, "the follower never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for node in all {
        let status = cluster.node_status(node).await.unwrap();
        assert_eq!(status["term"], term, "node {node}: {status}");
        assert_eq!(status["leader_id"], leader, "node {node}: {status}");
    }
}

/// The first linearizable read on `node` that gets an answer, retried while the node is still
/// starting or has no quorum yet.
async fn first_read(cluster: &ProcessCluster, node: u64, path: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(reply) = cluster.get(node, path).await {
            if reply.status == 200 {
                return reply.body;
            }
            assert!(reply.status >= 500, "node {node} refused the read: {} {}", reply.status, reply.body);
        }
        assert!(Instant::now() < deadline, "node {node} served no read after restarting");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every node is killed right after a write is acknowledged, so neither the committed index
/// nor the applied state behind it is flushed, then all restart. The old leader leads its
/// term again without an election; the first read it serves must still see the write, which
/// is in its flushed log. A single node (`custos dev`) must not wait forever either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_read_after_a_full_restart_sees_the_last_acknowledged_write() {
    for nodes in [3, 1] {
        full_restarts(nodes).await;
    }
}

async fn full_restarts(nodes: u64) {
    let mut cluster = ProcessCluster::new(binary(), nodes, ENV).expect("prepare cluster");
    cluster.form().await.expect("form cluster");
    let all = cluster.ids();
    let mut leader = cluster.wait_leader(&all, Duration::from_secs(10)).await.unwrap();
    assert!(create(&cluster, leader, "register").await);
    for round in 0..4 {
        let name = format!("acknowledged before crash {round}");
        let body = json!({ "display_name": name });
        let reply = cluster.call(leader, Method::PATCH, "/v1/tenants/register", Some(&body), &[]).await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        for id in &all {
            cluster.kill(*id).unwrap();
        }
        for id in &all {
            cluster.start(*id).unwrap();
        }
        let read = first_read(&cluster, leader, "/v1/tenants/register").await;
        assert_eq!(read["display_name"], name.as_str(), "{nodes} node(s), round {round}: a stale read");
        leader = cluster.wait_leader(&all, Duration::from_secs(20)).await.unwrap();
    }
}

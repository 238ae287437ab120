//! Key custody through the API of a 3-node cluster of real `custos` processes: keys made
//! through one node work through the others, rotations and retirements reach every node,
//! bad ciphertexts get clear errors, and deleting a tenant crypto-shreds it everywhere.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use custos_actors::custody::crypto::{labelled_aad, unwrap_key, SecretKey};
use custos_actors::custody::master::{MasterKey, MasterKeySource};
use custos_actors::custody::provider::{CoreStorageProvider, SealedLocal};
use custos_chaos_tests::{files_under, ApiReply, ProcessCluster};
use custos_raft::{KeyId, TenantId};
use reqwest::Method;
use serde_json::{json, Value};

const ENV: &[(&str, &str)] = &[
    ("CUSTOS_RAFT__HEARTBEAT_INTERVAL_MS", "50"),
    ("CUSTOS_RAFT__ELECTION_TIMEOUT_MS_MIN", "300"),
    ("CUSTOS_RAFT__ELECTION_TIMEOUT_MS_MAX", "600"),
    ("CUSTOS_CUSTODY__SCHEDULE_INTERVAL_MS", "200"),
    ("CUSTOS_CUSTODY__MAX_BATCH_ITEMS", "4"),
    ("CUSTOS_LIMITS__TENANT_MAX_IN_FLIGHT", "2"),
];

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_custos"))
}

async fn post(cluster: &ProcessCluster, node: u64, path: impl Into<String>, body: Value) -> ApiReply {
    cluster.call(node, Method::POST, &path.into(), Some(&body), &[]).await.expect("request")
}

fn ok(reply: &ApiReply, status: u16) -> &Value {
    assert_eq!(reply.status, status, "{}", reply.body);
    &reply.body
}

fn assert_code(reply: &ApiReply, status: u16, code: &str) {
    assert_eq!((reply.status, reply.code()), (status, Some(code)), "{}", reply.body);
}

/// Repeats `call` until `done` accepts its reply (a follower applies within a few heartbeats).
async fn eventually<F, Fut>(what: &str, mut call: F, done: impl Fn(&ApiReply) -> bool) -> ApiReply
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ApiReply>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = call().await;
        if done(&reply) || Instant::now() > deadline {
            assert!(done(&reply), "{what}: {} {}", reply.status, reply.body);
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn setup(cluster: &ProcessCluster, tenant: &str, key: &str) {
    let body = json!({ "id": tenant, "display_name": tenant, "region": "eu-west" });
    ok(&post(cluster, 1, "/v1/tenants", body).await, 201);
    // The tenant's first request on the node waits for its actors to start there.
    ok(&post(cluster, 1, format!("/v1/tenants/{tenant}/keys"), json!({ "id": key })).await, 201);
}

fn b64(s: &str) -> String {
    STANDARD.encode(s.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_work_through_every_node() {
    let mut cluster = ProcessCluster::new(binary(), 3, ENV).expect("prepare");
    cluster.form().await.expect("form");
    setup(&cluster, "acme", "orders").await;
    setup(&cluster, "other", "orders").await;
    let keys = "/v1/tenants/acme/keys/orders";
    let context = json!({ "table": "orders", "row": "42" });

    // The fault hook is not routed unless configured.
    let reply = post(&cluster, 1, "/v1/tenants/acme/faults", json!({ "child": "custody" })).await;
    assert_code(&reply, 404, "not_found");
    let shown = cluster.get(2, "/v1/tenants/acme").await.unwrap();
    assert_eq!(shown.body["key_provider"], "sealed-local", "{}", shown.body);

    // Encrypt through node 1, decrypt through node 3.
    let sealed =
        post(&cluster, 1, &format!("{keys}/encrypt"), json!({ "plaintext": b64("4111"), "context": context })).await;
    let v1 = ok(&sealed, 200)["ciphertext"].as_str().unwrap().to_string();
    assert!(v1.starts_with("custos:v1:"));
    assert_eq!(sealed.body["key_version"], 1);
    let decrypt = json!({ "ciphertext": v1, "context": context });
    let opened = eventually(
        "decrypt on node 3",
        || post(&cluster, 3, format!("{keys}/decrypt"), decrypt.clone()),
        |r| r.status == 200,
    )
    .await;
    assert_eq!(opened.body["plaintext"], b64("4111"));

    // Wrong context, wrong tenant, tampered and garbage ciphertexts.
    let wrong_ctx = post(&cluster, 2, &format!("{keys}/decrypt"), json!({ "ciphertext": v1, "context": {} })).await;
    assert_code(&wrong_ctx, 422, "decryption_failed");
    let other_tenant = eventually(
        "decrypt under another tenant",
        || post(&cluster, 2, "/v1/tenants/other/keys/orders/decrypt", decrypt.clone()),
        |r| r.status != 503 && r.status != 404,
    )
    .await;
    assert_code(&other_tenant, 422, "decryption_failed");
    let mut raw = STANDARD.decode(v1.trim_start_matches("custos:v1:")).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 1;
    let tampered = format!("custos:v1:{}", STANDARD.encode(raw));
    let reply =
        post(&cluster, 1, &format!("{keys}/decrypt"), json!({ "ciphertext": tampered, "context": context })).await;
    assert_code(&reply, 422, "decryption_failed");
    let reply = post(&cluster, 1, &format!("{keys}/decrypt"), json!({ "ciphertext": "vault:v1:abc" })).await;
    assert_code(&reply, 400, "malformed_ciphertext");

    // A rotation through node 2 is what every node encrypts with next; old ciphertexts still
    // open.
    let rotated = post(&cluster, 2, &format!("{keys}/rotate"), json!({})).await;
    assert_eq!(ok(&rotated, 200)["latest_version"], 2);
    let body = json!({ "plaintext": b64("x"), "context": context });
    for node in [1, 3, 2] {
        eventually(
            &format!("node {node} encrypts with version 2"),
            || post(&cluster, node, format!("{keys}/encrypt"), body.clone()),
            |r| r.status == 200 && r.body["key_version"] == 2,
        )
        .await;
    }
    let rewrapped = post(&cluster, 3, &format!("{keys}/rewrap"), decrypt.clone()).await;
    assert_eq!(ok(&rewrapped, 200)["key_version"], 2);
    let v2 = rewrapped.body["ciphertext"].as_str().unwrap().to_string();

    // Retiring version 1 through node 1 reaches node 3; the rewrapped copy still opens.
    let body = json!({ "min_decryption_version": 2 });
    ok(&post(&cluster, 1, &format!("{keys}/config"), body).await, 200);
    eventually(
        "node 3 refuses version 1",
        || post(&cluster, 3, format!("{keys}/decrypt"), decrypt.clone()),
        |r| r.code() == Some("key_version_retired"),
    )
    .await;
    let reply = post(&cluster, 3, &format!("{keys}/decrypt"), json!({ "ciphertext": v2, "context": context })).await;
    assert_eq!(ok(&reply, 200)["plaintext"], b64("4111"));

    // Data keys: the ciphertext opens to the plaintext; wrapped-only omits it.
    let dk = post(&cluster, 1, &format!("{keys}/datakey"), json!({ "context": { "file": "a" } })).await;
    let dk = ok(&dk, 200).clone();
    let opened = post(
        &cluster,
        1,
        &format!("{keys}/decrypt"),
        json!({ "ciphertext": dk["ciphertext"], "context": { "file": "a" } }),
    )
    .await;
    assert_eq!(ok(&opened, 200)["plaintext"], dk["plaintext"]);
    let wrapped = post(&cluster, 1, &format!("{keys}/datakey"), json!({ "include_plaintext": false })).await;
    assert!(ok(&wrapped, 200).get("plaintext").is_none());

    // Batches: per-item outcomes, bounded size.
    let items = json!({ "items": [{ "plaintext": b64("a") }, { "plaintext": "not base64!" }] });
    let batch = post(&cluster, 1, &format!("{keys}/encrypt/batch"), items).await;
    let results = ok(&batch, 200)["results"].as_array().unwrap().clone();
    assert!(results[0]["ciphertext"].is_string());
    assert_eq!(results[1]["error"]["code"], "invalid_base64");
    let too_many = json!({ "items": vec![json!({ "plaintext": b64("a") }); 5] });
    assert_code(&post(&cluster, 1, &format!("{keys}/encrypt/batch"), too_many).await, 400, "invalid_batch");

    // A tenant's in-flight bound on a node (2 here): concurrent key creations, each held
    // through its Raft commit, meet 429 tenant_busy; the others succeed.
    let calls = (0..16).map(|i| post(&cluster, 3, "/v1/tenants/acme/keys", json!({ "id": format!("busy-{i}") })));
    let replies = futures::future::join_all(calls).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    let odd: Vec<&serde_json::Value> =
        replies.iter().filter(|r| r.status != 201 && r.code() != Some("tenant_busy")).map(|r| &r.body).collect();
    assert!(odd.is_empty(), "{statuses:?}: {odd:?}");
    assert!(statuses.contains(&429) && statuses.contains(&201), "{statuses:?}");
    let busy = replies.iter().find(|r| r.status == 429).unwrap();
    assert!(busy.headers.get("retry-after").is_some(), "429 carries Retry-After");

    // Disabled keys refuse work; scheduled destruction happens on the leader's schedule.
    ok(&post(&cluster, 2, &format!("{keys}/disable"), json!({})).await, 200);
    let reply = post(&cluster, 1, &format!("{keys}/encrypt"), json!({ "plaintext": b64("a") })).await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    ok(&post(&cluster, 2, &format!("{keys}/enable"), json!({})).await, 200);
    ok(&post(&cluster, 1, &format!("{keys}/destroy"), json!({ "delay_ms": 0 })).await, 200);
    eventually(
        "scheduled destruction",
        || async { cluster.get(3, keys).await.unwrap() },
        |r| r.body["state"] == "destroyed",
    )
    .await;
    let reply = post(&cluster, 3, &format!("{keys}/decrypt"), json!({ "ciphertext": v2, "context": context })).await;
    assert_code(&reply, 410, "key_destroyed");
}

/// The tenant's plaintext L1, L2 and L3 keys, recovered from node 1's stopped store with the
/// master key, as an attacker holding both would.
async fn plaintext_keys(cluster: &ProcessCluster, tenant: &TenantId, key: &KeyId) -> Vec<SecretKey> {
    let master = MasterKey::load(&MasterKeySource::File(cluster.root().join("master.key"))).unwrap();
    let master_copy = MasterKey::new(master.key().clone());
    let store_dir = cluster.root().join("node-1/data/raft");
    let (_log, _sm, reader) =
        custos_raft::store::open(&store_dir, custos_raft::store::StoreOptions::default()).unwrap();
    let custody = reader.custody(tenant).unwrap().expect("custody before deletion");
    let l1 = unwrap_key(
        master_copy.key(),
        &custody.root[9..],
        &labelled_aad("custos/l1/sealed-local/v1", &[tenant.as_str().as_bytes()]),
    )
    .unwrap();
    let provider: Arc<dyn CoreStorageProvider> = Arc::new(SealedLocal::new(master));
    let kek = provider.unwrap(tenant, &custody.root, &custody.kek_wrapped).await.unwrap();
    let mut keys = vec![l1, kek.clone()];
    for version in 1..=2u32 {
        let stored = reader.key_version(tenant, key, version).unwrap().unwrap();
        let aad = labelled_aad(
            "custos/l3/v1",
            &[tenant.as_str().as_bytes(), key.as_str().as_bytes(), &version.to_be_bytes()],
        );
        keys.push(unwrap_key(&kek, &stored.wrapped, &aad).unwrap());
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_keys_at_rest_and_deletion_shreds_everywhere() {
    // The encrypted-fs edge cache puts cached keys on disk too: wrapped, so the scan below
    // covers it.
    let env: Vec<(&str, &str)> = ENV.iter().copied().chain([("CUSTOS_CUSTODY__EDGE", "encrypted-fs")]).collect();
    let mut cluster = ProcessCluster::new(binary(), 3, &env).expect("prepare");
    cluster.form().await.expect("form");
    setup(&cluster, "acme", "orders").await;
    let keys = "/v1/tenants/acme/keys/orders";
    ok(&post(&cluster, 1, &format!("{keys}/rotate"), json!({})).await, 200);
    let sealed = post(&cluster, 1, &format!("{keys}/encrypt"), json!({ "plaintext": b64("secret") })).await;
    let ciphertext = ok(&sealed, 200)["ciphertext"].as_str().unwrap().to_string();
    let decrypt = json!({ "ciphertext": ciphertext });
    for node in 1..=3 {
        eventually("decrypt", || post(&cluster, node, format!("{keys}/decrypt"), decrypt.clone()), |r| r.status == 200)
            .await;
    }

    // Stopped, every data dir is scanned for the plaintext of every key in the hierarchy.
    for node in 1..=3 {
        cluster.stop(node).unwrap();
    }
    let (tenant, key) = (TenantId::new("acme").unwrap(), KeyId::new("orders").unwrap());
    let cached = cluster.root().join("node-1/data/edge/acme");
    assert!(cached.join("kek").is_file(), "node 1 cached the tenant's KEK on disk");
    let secrets = plaintext_keys(&cluster, &tenant, &key).await;
    assert_eq!(secrets.len(), 4);
    for file in files_under(cluster.root()) {
        let bytes = std::fs::read(&file).unwrap();
        for secret in &secrets {
            assert!(
                !bytes.windows(32).any(|w| w == secret.expose()),
                "plaintext key material found in {}",
                file.display()
            );
        }
    }

    // Deletion through node 2 shreds the tenant on every node, and stays so across restarts.
    for node in 1..=3 {
        cluster.start(node).unwrap();
    }
    for node in 1..=3 {
        cluster.wait_healthy(node, Duration::from_secs(20)).await.unwrap();
    }
    cluster.wait_leader(&[1, 2, 3], Duration::from_secs(20)).await.unwrap();
    let deleted = eventually(
        "delete",
        || async { cluster.call(2, Method::DELETE, "/v1/tenants/acme", None, &[]).await.unwrap() },
        |r| r.status == 200,
    )
    .await;
    assert_eq!(deleted.body["status"], "deleted");
    let deleted_at = deleted.body["revision"].as_u64().unwrap();
    // Killed at once, nodes have applied the deletion (the one that answered has) without
    // compacting their logs yet: they compact once they are back.
    for node in 1..=3 {
        cluster.kill(node).unwrap();
    }
    for node in 1..=3 {
        cluster.start(node).unwrap();
    }
    for node in 1..=3 {
        cluster.wait_healthy(node, Duration::from_secs(20)).await.unwrap();
    }
    cluster.wait_leader(&[1, 2, 3], Duration::from_secs(20)).await.unwrap();
    for node in 1..=3 {
        eventually(
            "the log purged past the deletion",
            || async { cluster.get(node, "/v1/cluster/status?scope=node").await.unwrap() },
            |r| r.body["node"]["purged_index"].as_u64().is_some_and(|purged| purged >= deleted_at),
        )
        .await;
    }
    for round in 0..2 {
        for node in 1..=3 {
            let reply = eventually(
                "decrypt after deletion",
                || post(&cluster, node, format!("{keys}/decrypt"), decrypt.clone()),
                |r| r.status == 410,
            )
            .await;
            assert_code(&reply, 410, "tenant_deleted");
        }
        if round == 0 {
            // More entries let every node purge the tenant's key records.
            for i in 0..4 {
                let body = json!({ "id": format!("later-{i}"), "display_name": "later", "region": "eu" });
                ok(&post(&cluster, 1, "/v1/tenants", body).await, 201);
            }
            for node in 1..=3 {
                cluster.stop(node).unwrap();
                cluster.start(node).unwrap();
            }
            for node in 1..=3 {
                cluster.wait_healthy(node, Duration::from_secs(20)).await.unwrap();
            }
            cluster.wait_leader(&[1, 2, 3], Duration::from_secs(20)).await.unwrap();
        }
    }
    // Governance state on every node has neither the roots nor the key records, and no
    // node keeps cached keys of the tenant.
    for node in 1..=3 {
        cluster.stop(node).unwrap();
        let cached = cluster.root().join(format!("node-{node}/data/edge/acme"));
        assert!(!cached.exists(), "node {node} kept {}", cached.display());
        let store_dir = cluster.root().join(format!("node-{node}/data/raft"));
        let (_log, _sm, reader) =
            custos_raft::store::open(&store_dir, custos_raft::store::StoreOptions::default()).unwrap();
        assert!(reader.custody(&tenant).unwrap().is_none(), "node {node} still has the tenant's roots");
        assert!(reader.keys(&tenant, None, 10).unwrap().is_empty(), "node {node} still has key records");
        assert!(reader.key_version(&tenant, &key, 1).unwrap().is_none());
    }
}

/// This tenant's entry in the node's `tenant_actors` status.
async fn actor_state(cluster: &ProcessCluster, tenant: &str) -> Value {
    let status = cluster.get(1, "/v1/cluster/status").await.unwrap();
    status.body["tenant_actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant_id"] == tenant)
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_actors_keep_failing_is_refused_on_its_node_only() {
    let env = [
        ("CUSTOS_ACTORS__FAULT_INJECTION", "true"),
        ("CUSTOS_ACTORS__MAX_RESTARTS", "2"),
        ("CUSTOS_ACTORS__RESTART_BACKOFF_MS", "20"),
        ("CUSTOS_ACTORS__RESTART_BACKOFF_MAX_MS", "100"),
    ];
    let mut cluster = ProcessCluster::new(binary(), 1, &env).expect("prepare");
    cluster.form().await.expect("form");
    setup(&cluster, "bad", "k").await;
    setup(&cluster, "good", "k").await;
    // Every tenant has its four actors on the node, each answering a health probe.
    let actors = cluster.get(1, "/v1/tenants/good/actors").await.unwrap();
    assert_eq!(actors.body["state"], "running", "{}", actors.body);
    let children = actors.body["children"].as_array().unwrap().clone();
    assert_eq!(children.len(), 4, "{}", actors.body);
    assert!(children.iter().all(|c| c["healthy"] == true), "{}", actors.body);
    let encrypt = |tenant: &'static str| {
        post(&cluster, 1, format!("/v1/tenants/{tenant}/keys/k/encrypt"), json!({ "plaintext": b64("x") }))
    };

    // Two custody failures are restarted after a backoff; the third exceeds the budget of two.
    for round in 1..=3u64 {
        eventually(
            "inject a custody fault",
            || post(&cluster, 1, "/v1/tenants/bad/faults", json!({ "child": "custody" })),
            |r| r.status == 202,
        )
        .await;
        let want = if round < 3 { "running" } else { "degraded" };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state = actor_state(&cluster, "bad").await;
            if state["state"] == want && state["recent_failures"] == round {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: {state}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The other tenant serves throughout.
        assert_eq!(encrypt("good").await.status, 200, "round {round}");
    }
    assert_code(&encrypt("bad").await, 503, "tenant_degraded");
    let actors = cluster.get(1, "/v1/tenants/bad/actors").await.unwrap();
    assert_eq!(actors.body["state"], "degraded", "{}", actors.body);
    assert!(actors.body["children"].as_array().unwrap().iter().all(|c| c["healthy"] == false), "{}", actors.body);
    assert_eq!(actor_state(&cluster, "good").await["state"], "running");
    let reply = post(&cluster, 1, "/v1/tenants/bad/faults", json!({ "child": "custody" })).await;
    assert_code(&reply, 409, "actor_not_running");

    // A change to the tenant gives it a fresh start.
    ok(&post(&cluster, 1, "/v1/tenants/bad/suspend", json!({})).await, 200);
    ok(&post(&cluster, 1, "/v1/tenants/bad/resume", json!({})).await, 200);
    eventually("serving again", || encrypt("bad"), |r| r.status == 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tenants_actors_stop_and_its_key_schedule_or_next_request_starts_them() {
    let idle = [("CUSTOS_ACTORS__IDLE_STOP_MS", "1000"), ("CUSTOS_CUSTODY__KEY_CACHE_TTL_MS", "1000")];
    let env: Vec<(&str, &str)> = ENV.iter().copied().chain(idle).collect();
    let mut cluster = ProcessCluster::new(binary(), 1, &env).expect("prepare");
    cluster.form().await.expect("form");
    setup(&cluster, "acme", "doomed").await;
    ok(&post(&cluster, 1, "/v1/tenants/acme/keys", json!({ "id": "kept" })).await, 201);
    let actors = || async { cluster.get(1, "/v1/tenants/acme/actors").await.unwrap() };
    assert_eq!(actors().await.body["state"], "running");

    // Destruction falls due in 4 s; the tree stops after 1 s without requests.
    ok(&post(&cluster, 1, "/v1/tenants/acme/keys/doomed/destroy", json!({ "delay_ms": 4000 })).await, 200);
    let idle = eventually("the tree stops", actors, |r| r.body["state"] == "idle").await;
    assert!(idle.body["children"].as_array().unwrap().is_empty(), "{}", idle.body);
    assert_eq!(cluster.get(1, "/v1/tenants/acme/keys/doomed").await.unwrap().body["state"], "destroy_scheduled");

    // The leader's schedule finds the due key and starts the tree to destroy it.
    eventually(
        "scheduled destruction of an idle tenant's key",
        || async { cluster.get(1, "/v1/tenants/acme/keys/doomed").await.unwrap() },
        |r| r.body["state"] == "destroyed",
    )
    .await;

    // Idle again, the next request is served at once.
    eventually("the tree stops again", actors, |r| r.body["state"] == "idle").await;
    let sealed = post(&cluster, 1, "/v1/tenants/acme/keys/kept/encrypt", json!({ "plaintext": b64("x") })).await;
    ok(&sealed, 200);
    assert_eq!(actors().await.body["state"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_works_at_once_on_a_follower_its_creation_has_not_reached_yet() {
    let cluster = {
        // Replication waits at most one heartbeat interval for an answer: longer than the
        // delayed link's round trip, so the follower lags without falling out.
        let env = [
            ("CUSTOS_RAFT__HEARTBEAT_INTERVAL_MS", "300"),
            ("CUSTOS_RAFT__ELECTION_TIMEOUT_MS_MIN", "1500"),
            ("CUSTOS_RAFT__ELECTION_TIMEOUT_MS_MAX", "3000"),
        ];
        let mut cluster = ProcessCluster::with_links(binary(), 3, &env).await.expect("prepare");
        cluster.form().await.expect("form");
        cluster
    };
    let all = cluster.ids();
    let leader = cluster.wait_leader(&all, Duration::from_secs(10)).await.unwrap();
    let follower = *all.iter().find(|id| **id != leader).unwrap();
    setup(&cluster, "acme", "orders").await;
    eventually(
        "the tenant serves on the follower",
        || post(&cluster, follower, "/v1/tenants/acme/keys/orders/encrypt", json!({ "plaintext": b64("x") })),
        |r| r.status == 200,
    )
    .await;

    // The leader's appends reach the follower late; the other follower makes the quorum.
    cluster.link(leader, follower).unwrap().set(custos_chaos_tests::Fault::Delay(Duration::from_millis(40)));
    let fresh = "/v1/tenants/acme/keys/fresh";
    ok(&post(&cluster, leader, "/v1/tenants/acme/keys", json!({ "id": "fresh" })).await, 201);
    let sealed = post(&cluster, follower, &format!("{fresh}/encrypt"), json!({ "plaintext": b64("now") })).await;
    assert_eq!(ok(&sealed, 200)["key_version"], 1);

    // A version rotated in through the leader opens on the follower as soon as it is sealed.
    ok(&post(&cluster, leader, &format!("{fresh}/rotate"), json!({})).await, 200);
    let sealed = post(&cluster, leader, &format!("{fresh}/encrypt"), json!({ "plaintext": b64("now") })).await;
    assert_eq!(ok(&sealed, 200)["key_version"], 2);
    let body = json!({ "ciphertext": sealed.body["ciphertext"] });
    let opened = post(&cluster, follower, &format!("{fresh}/decrypt"), body).await;
    assert_eq!(ok(&opened, 200)["plaintext"], b64("now"));

    // A key that exists nowhere is still a clear 404 after the barrier.
    let reply =
        post(&cluster, follower, "/v1/tenants/acme/keys/nothing/encrypt", json!({ "plaintext": b64("x") })).await;
    assert_code(&reply, 404, "key_not_found");

    // A tenant created through the leader serves on the follower at once: its first request
    // there waits for the read barrier and for its actors to start.
    let tenant = json!({ "id": "late", "display_name": "Late", "region": "eu-west" });
    ok(&post(&cluster, leader, "/v1/tenants", tenant).await, 201);
    let reply = post(&cluster, follower, "/v1/tenants/late/keys", json!({ "id": "k" })).await;
    ok(&reply, 201);
    let reply = post(&cluster, follower, "/v1/tenants/nowhere/keys", json!({ "id": "k" })).await;
    assert_code(&reply, 404, "tenant_not_found");
    // So is its audit stream (every tenant-scoped route shares the lookup).
    let tenant = json!({ "id": "later", "display_name": "Later", "region": "eu-west" });
    ok(&post(&cluster, leader, "/v1/tenants", tenant).await, 201);
    let reply = cluster.get(follower, "/v1/tenants/later/audit").await.unwrap();
    assert_eq!(reply.status, 200, "a tenant created elsewhere has no stream on the follower: {}", reply.body);
    cluster.heal();
}

//! Audit through real `custos` processes: every auditable action yields its event and no
//! secret; tenants see only their own stream; `custos audit verify` finds tampering; a node
//! killed with events still in its outbox ships them after restart, to a real Kafka started
//! by `deploy/scripts/kafka.sh` (never skipped); a governance write's event carried in its
//! Raft entry survives its node's crash, and its node's removal from the cluster.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use custos_actors::audit::chain::Verifier;
use custos_actors::audit::sink::kafka::{read_tenant, KafkaSinkConfig, TopicLayout};
use custos_actors::audit::AuditEvent;
use custos_chaos_tests::{KafkaBroker, ProcessCluster};
use reqwest::Method;
use serde_json::{json, Value};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_custos"))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

async fn call(cluster: &ProcessCluster, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let reply = cluster.call(1, method, path, body.as_ref(), &[]).await.expect("request");
    (reply.status, reply.body)
}

/// Creates a tenant. Its actors start with its first request on a node, which waits for them
/// rather than being refused (a refusal would be an audit event of its own).
async fn create_tenant(cluster: &ProcessCluster, id: &str) {
    let (status, body) =
        call(cluster, Method::POST, "/v1/tenants", Some(json!({"id": id, "display_name": id, "region": "eu"}))).await;
    assert_eq!(status, 201, "{body}");
}

/// Renames a tenant through `node` under the request id `request_id` (a governance write).
async fn rename(cluster: &ProcessCluster, node: u64, tenant: &str, request_id: &str) {
    let body = json!({"display_name": format!("{tenant} renamed by {request_id}")});
    let path = format!("/v1/tenants/{tenant}");
    let reply =
        cluster.call(node, Method::PATCH, &path, Some(&body), &[("x-request-id", request_id)]).await.expect("rename");
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// Every event of a tenant's stream, through node 1's API, page by page.
async fn stream(cluster: &ProcessCluster, tenant: &str) -> Vec<Value> {
    stream_on(cluster, 1, tenant).await
}

/// Every event of a tenant's stream as `node` keeps it, page by page.
async fn stream_on(cluster: &ProcessCluster, node: u64, tenant: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from = 0;
    loop {
        let path = format!("/v1/tenants/{tenant}/audit?from={from}&limit=3");
        let reply = cluster.call(node, Method::GET, &path, None, &[]).await.expect("request");
        let (status, page) = (reply.status, reply.body);
        assert_eq!(status, 200, "{page}");
        let batch = page["events"].as_array().unwrap().clone();
        let next = page["next"].as_u64().unwrap();
        if batch.is_empty() && next == from {
            return events;
        }
        events.extend(batch);
        from = next;
    }
}

/// Waits until the node has shipped everything it committed.
async fn shipped(cluster: &ProcessCluster) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = call(cluster, Method::GET, "/v1/cluster/status", None).await;
        assert_eq!(status, 200, "{body}");
        if body["audit"]["outbox_depth"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "outbox not drained: {}", body["audit"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kinds(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["type"].as_str().unwrap().trim_start_matches("dev.custos.").to_string()).collect()
}

/// Runs `custos audit tail` for a tenant until it has printed `count` events (as JSON lines),
/// while `act` keeps generating activity for several tenants; returns the events it printed.
async fn tail_while<F, Fut>(cluster: &ProcessCluster, tenant: &str, count: u64, act: F) -> Vec<Value>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let base = cluster.url(1, "").unwrap();
    let mut child = tokio::process::Command::new(binary())
        .args(["audit", "tail", "--tenant", tenant, "--count", &count.to_string(), "-o", "json"])
        .env("CUSTOS_ADDR", base.trim_end_matches('/'))
        .env("CUSTOS_CA_CERT", cluster.root().join("tls/ca.pem"))
        .env("CUSTOS_TOKEN", cluster.token().unwrap())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("custos audit tail");
    let deadline = Instant::now() + Duration::from_secs(60);
    // The tail only sees events after it subscribed, so activity continues until it has enough.
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the tail did not print {count} events");
        act().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = child.wait_with_output().await.unwrap();
    assert!(status.success(), "tail failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("a JSON event")).collect()
}

fn verify_cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(binary()).arg("audit").arg("verify").args(args).output().expect("custos audit verify");
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_auditable_action_yields_its_event_without_secrets_in_its_tenants_stream_only() {
    let mut cluster = ProcessCluster::new(binary(), 1, &[]).expect("prepare");
    cluster.form().await.expect("form");
    let token = cluster.token().unwrap().to_string();
    for id in ["acme", "globex"] {
        create_tenant(&cluster, id).await;
    }
    let (status, body) = call(&cluster, Method::POST, "/v1/tenants/acme/keys", Some(json!({"id": "payments"}))).await;
    assert_eq!(status, 201, "{body}");
    let secret_plaintext = "c2VjcmV0LXBsYWludGV4dC0xMjM0"; // "secret-plaintext-1234"
    let context = json!({"patient": "alice-7781"});
    let (status, sealed) = call(
        &cluster,
        Method::POST,
        "/v1/tenants/acme/keys/payments/encrypt",
        Some(json!({"plaintext": secret_plaintext, "context": context})),
    )
    .await;
    assert_eq!(status, 200, "{sealed}");
    let (status, body) = call(
        &cluster,
        Method::POST,
        "/v1/tenants/acme/keys/payments/decrypt",
        Some(json!({"ciphertext": sealed["ciphertext"], "context": context})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(&cluster, Method::POST, "/v1/tenants/acme/keys/payments/rotate", Some(json!({}))).await;
    assert_eq!(status, 200, "{body}");
    let (status, data_key) =
        call(&cluster, Method::POST, "/v1/tenants/acme/keys/payments/datakey", Some(json!({}))).await;
    assert_eq!(status, 200, "{data_key}");
    // A wrong-context decrypt fails; a request with a bad token is refused.
    let (status, _) = call(
        &cluster,
        Method::POST,
        "/v1/tenants/acme/keys/payments/decrypt",
        Some(json!({"ciphertext": sealed["ciphertext"], "context": {"patient": "bob"}})),
    )
    .await;
    assert_eq!(status, 422);
    let bad = cluster
        .call_raw(
            1,
            Method::POST,
            "/v1/tenants/acme/keys/payments/encrypt",
            br#"{"plaintext":"AA=="}"#.to_vec(),
            &[("content-type", "application/json"), ("authorization", "Bearer cst_forged")],
        )
        .await
        .unwrap();
    assert_eq!(bad.status, 401);
    // globex: one failed encrypt of a key it does not have.
    let (status, _) =
        call(&cluster, Method::POST, "/v1/tenants/globex/keys/payments/encrypt", Some(json!({"plaintext": "AA=="})))
            .await;
    assert_eq!(status, 404);
    shipped(&cluster).await;

    let acme = stream(&cluster, "acme").await;
    assert_eq!(
        kinds(&acme),
        [
            "tenant.create",
            "key.create",
            "key.encrypt",
            "key.decrypt",
            "key.rotate",
            "key.generate_data_key",
            "key.decrypt",
            "auth.authenticate"
        ]
    );
    assert!(acme.iter().all(|e| e["tenant"] == "acme" && e["source"] == "custos://node/1"), "{acme:#?}");
    let data: Vec<&Value> = acme.iter().map(|e| &e["data"]).collect();
    for d in &data[..6] {
        assert_eq!((d["actor"]["kind"].as_str(), d["outcome"].as_str()), (Some("admin"), Some("success")), "{d}");
    }
    assert_eq!(data[2]["key_id"], "payments");
    assert_eq!(data[2]["key_version"], 1);
    assert_eq!(data[5]["key_version"], 2, "the data key comes from the rotated version");
    assert_eq!(data[2]["details"]["context_hmac"], data[3]["details"]["context_hmac"], "one context, one HMAC");
    assert!(data[2]["details"]["context_hmac"].as_str().is_some_and(|h| h.len() == 64));
    assert_eq!((data[6]["outcome"].as_str(), data[6]["reason"].as_str()), (Some("failure"), Some("decryption_failed")));
    assert_ne!(data[6]["details"]["context_hmac"], data[2]["details"]["context_hmac"]);
    assert_eq!((data[7]["actor"]["kind"].as_str(), data[7]["outcome"].as_str()), (Some("anonymous"), Some("denied")));
    assert_eq!(acme[0]["data"]["details"]["region"], "eu");

    // No secret material anywhere in the stream.
    let text = serde_json::to_string(&acme).unwrap();
    for secret in [
        secret_plaintext,
        "alice-7781",
        "bob",
        data_key["plaintext"].as_str().unwrap(),
        sealed["ciphertext"].as_str().unwrap(),
        token.as_str(),
        "cst_forged",
    ] {
        assert!(!text.contains(secret), "the audit stream holds {secret:?}");
    }

    // globex sees only its own events.
    let globex = stream(&cluster, "globex").await;
    assert_eq!(kinds(&globex), ["tenant.create", "key.encrypt"]);
    assert!(globex.iter().all(|e| e["tenant"] == "globex"));
    assert_eq!(globex[1]["data"]["reason"], "key_not_found");
    let (status, body) = call(&cluster, Method::GET, "/v1/tenants/acme/audit?type=key.rotate", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(kinds(body["events"].as_array().unwrap()), ["key.rotate"]);
    let (status, body) = call(&cluster, Method::GET, "/v1/tenants/acme/audit?type=key.nothing", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_query")));
    let (status, body) = call(&cluster, Method::GET, "/v1/tenants/nobody/audit", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("tenant_not_found")));
    // Reading a tenant's stream is recorded in the cluster stream, with the reader.
    shipped(&cluster).await;
    let (status, body) = call(&cluster, Method::GET, "/v1/cluster/audit?limit=1000", None).await;
    assert_eq!(status, 200, "{body}");
    let cluster_events = body["events"].as_array().unwrap();
    let reads: Vec<&Value> = cluster_events.iter().filter(|e| e["type"] == "dev.custos.audit.read").collect();
    assert!(reads.iter().any(|e| e["subject"] == "tenants/acme/audit" && e["data"]["actor"]["kind"] == "admin"));
    assert!(reads.iter().any(|e| e["subject"] == "tenants/nobody/audit" && e["data"]["outcome"] == "failure"));
    assert!(cluster_events.iter().all(|e| e["tenant"] == "_cluster"));

    // A live tail of acme shows acme's events only, while globex is just as busy.
    let node = &cluster;
    let activity = || async move {
        for tenant in ["globex", "acme"] {
            let path = format!("/v1/tenants/{tenant}/keys/payments/encrypt");
            call(node, Method::POST, &path, Some(json!({"plaintext": "AA=="}))).await;
        }
    };
    let tailed = tail_while(&cluster, "acme", 3, activity).await;
    assert_eq!(tailed.len(), 3);
    assert!(tailed.iter().all(|e| e["tenant"] == "acme" && e["type"] == "dev.custos.key.encrypt"), "{tailed:#?}");
    let acme = stream(&cluster, "acme").await;
    // The page names this node's chain head: the last event of the stream.
    let (_, page) = call(&cluster, Method::GET, "/v1/tenants/acme/audit?limit=1", None).await;
    let last = acme.last().unwrap();
    assert_eq!(page["chain_head"]["chain"], last["chain"], "{page}");
    assert_eq!(page["chain_head"]["seq"], last["chainseq"], "{page}");
    assert_eq!(page["chain_head"]["hash"], last["chainhash"], "{page}");

    // Metrics: per known tenant and operation; made-up tenants share one label value.
    let (status, metrics) = call(&cluster, Method::GET, "/metrics", None).await;
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap();
    for line in [
        r#"custos_requests_total{tenant="acme",operation="key.encrypt",outcome="success"}"#,
        r#"custos_requests_total{tenant="globex",operation="key.encrypt",outcome="failure"}"#,
        r#"custos_requests_total{tenant="_none",operation="audit.read",outcome="failure"}"#,
        "custos_request_duration_seconds_bucket{",
        "custos_raft_term ",
        "custos_raft_apply_lag ",
        "custos_raft_snapshot_index ",
        "custos_raft_snapshot_copies_total ",
        "custos_audit_outbox_depth ",
        "custos_audit_committed_total ",
        r#"custos_key_provider_up{provider="sealed-local"} 1"#,
        r#"custos_tenant_actor_trees{state="degraded"} 0"#,
    ] {
        assert!(metrics.contains(line), "metrics lack {line}:\n{metrics}");
    }
    assert!(!metrics.contains("nobody"), "an unknown tenant got a label");
    let trees = metrics.lines().find_map(|l| l.strip_prefix(r#"custos_tenant_actor_trees{state="running"} "#));
    assert!(trees.is_some_and(|n| n != "0"), "acme's tree runs here:\n{metrics}");
    let unauthenticated = cluster.call_raw(1, Method::GET, "/metrics", Vec::new(), &[]).await.unwrap();
    assert_eq!(unauthenticated.status, 401);

    // The chains verify, through the events the API served and through the CLI on the log.
    let mut verifier = Verifier::new("acme");
    for event in &acme {
        verifier.push(serde_json::from_value::<AuditEvent>(event.clone()).unwrap());
    }
    assert!(verifier.finish().is_clean());
    let config = cluster.root().join("node-1/custos.toml");
    let (code, out) = verify_cli(&["--tenant", "acme", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("clean"), "{out}");

    // Tampering with the log: verify names it and fails.
    cluster.stop(1).unwrap();
    let log_dir = cluster.root().join("node-1/data/audit/log");
    let segment = std::fs::read_dir(log_dir.join("acme")).unwrap().next().unwrap().unwrap().path();
    let original = std::fs::read_to_string(&segment).unwrap();
    std::fs::write(&segment, original.replacen("\"outcome\":\"denied\"", "\"outcome\":\"success\"", 1)).unwrap();
    let (code, out) = verify_cli(&["--tenant", "acme", "--log-dir", log_dir.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("\"kind\":\"modified\""), "{out}");
    let mut lines: Vec<&str> = original.lines().collect();
    lines.remove(3);
    std::fs::write(&segment, lines.join("\n") + "\n").unwrap();
    let (code, out) = verify_cli(&["--tenant", "acme", "--log-dir", log_dir.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("\"kind\":\"missing\""), "{out}");
    let mut lines: Vec<&str> = original.lines().collect();
    lines.swap(2, 3);
    std::fs::write(&segment, lines.join("\n") + "\n").unwrap();
    let (code, out) = verify_cli(&["--tenant", "acme", "--log-dir", log_dir.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("\"kind\":\"reordered\""), "{out}");

    // Retention removed the oldest events (the log now starts at position 3): the chain is
    // checked from what is left. The anchor an earlier run printed still holds, and finds a
    // tail cut off afterwards, which the chain alone cannot show.
    std::fs::write(&segment, &original).unwrap();
    let dir = log_dir.to_str().unwrap();
    let (code, out) = verify_cli(&["--tenant", "acme", "--log-dir", dir]);
    assert_eq!(code, 0, "{out}");
    let anchor = out.split("--anchor ").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap().to_string();
    let lines: Vec<&str> = original.lines().collect();
    std::fs::remove_file(&segment).unwrap();
    let retained = log_dir.join("acme").join(format!("{:020}.jsonl", 3));
    std::fs::write(&retained, lines[3..].join("\n") + "\n").unwrap();
    let (code, out) = verify_cli(&["--tenant", "acme", "--log-dir", dir, "--anchor", &anchor]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("after retention"), "{out}");
    std::fs::write(&retained, lines[3..lines.len() - 1].join("\n") + "\n").unwrap();
    let (code, out) = verify_cli(&["--tenant", "acme", "--log-dir", dir]);
    assert_eq!(code, 0, "without an anchor a cut-off tail goes unseen: {out}");
    let (code, out) = verify_cli(&["--tenant", "acme", "--log-dir", dir, "--anchor", &anchor]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("\"kind\":\"missing\""), "{out}");
    let (code, out) = verify_cli(&["--tenant", "acme", "--log-dir", dir, "--anchor", "nonsense"]);
    assert_eq!(code, 2, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_to_a_tenant_and_its_keys_yields_exactly_its_event() {
    let mut cluster = ProcessCluster::new(binary(), 1, &[]).expect("prepare");
    cluster.form().await.expect("form");
    create_tenant(&cluster, "acme").await;
    let keys = "/v1/tenants/acme/keys";
    let mut expect = vec!["tenant.create"];
    let mut step = |method: Method, path: String, body: Value, status: u16, kind: &'static str| {
        expect.push(kind);
        let cluster = &cluster;
        async move {
            let (got, reply) = call(cluster, method, &path, Some(body)).await;
            assert_eq!(got, status, "{path}: {reply}");
            reply
        }
    };
    step(Method::POST, keys.into(), json!({"id": "k"}), 201, "key.create").await;
    step(Method::POST, format!("{keys}/k/config"), json!({"min_decryption_version": 1}), 200, "key.configure").await;
    step(Method::POST, format!("{keys}/k/disable"), json!({}), 200, "key.disable").await;
    step(Method::POST, format!("{keys}/k/enable"), json!({}), 200, "key.enable").await;
    step(Method::POST, format!("{keys}/k/destroy"), json!({"delay_ms": 3_600_000}), 200, "key.schedule_destroy").await;
    step(Method::DELETE, format!("{keys}/k/destroy"), json!({}), 200, "key.cancel_destroy").await;
    let items = json!({"items": [{"plaintext": "AA=="}, {"plaintext": "AQ=="}]});
    let sealed = step(Method::POST, format!("{keys}/k/encrypt/batch"), items, 200, "key.encrypt").await;
    let first = sealed["results"][0]["ciphertext"].clone();
    step(Method::POST, format!("{keys}/k/rotate"), json!({}), 200, "key.rotate").await;
    step(Method::POST, format!("{keys}/k/rewrap"), json!({"ciphertext": first}), 200, "key.rewrap").await;
    let items = json!({"items": [{"ciphertext": first}]});
    step(Method::POST, format!("{keys}/k/decrypt/batch"), items, 200, "key.decrypt").await;
    let body = json!({"include_plaintext": false});
    step(Method::POST, format!("{keys}/k/datakey"), body, 200, "key.generate_data_key").await;
    let body = json!({"name": "ci", "scopes": ["keys:read"]});
    let api_key = step(Method::POST, "/v1/tenants/acme/apikeys".into(), body, 201, "apikey.create").await;
    let id = api_key["id"].as_str().unwrap().to_string();
    let rotated =
        step(Method::POST, format!("/v1/tenants/acme/apikeys/{id}/rotate"), json!({}), 200, "apikey.rotate").await;
    step(Method::POST, format!("/v1/tenants/acme/apikeys/{id}/revoke"), json!({}), 200, "apikey.revoke").await;
    step(Method::POST, "/v1/tenants/acme/suspend".into(), json!({}), 200, "tenant.update").await;
    step(Method::POST, "/v1/tenants/acme/resume".into(), json!({}), 200, "tenant.update").await;
    step(Method::DELETE, "/v1/tenants/acme".into(), json!({}), 200, "tenant.delete").await;
    shipped(&cluster).await;

    // The tenant is gone from the API: its stream is read from the node's log.
    let dir = cluster.root().join("node-1/data/audit/log/acme");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    segments.sort();
    let events: Vec<Value> = segments
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .flat_map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(kinds(&events), expect);
    for event in &events {
        let data = &event["data"];
        assert_eq!(
            (data["actor"]["kind"].as_str(), data["outcome"].as_str()),
            (Some("admin"), Some("success")),
            "{event}"
        );
        assert_eq!(event["tenant"], "acme");
    }
    let by_kind =
        |kind: &str| events.iter().find(|e| e["type"] == format!("dev.custos.{kind}")).unwrap()["data"].clone();
    for kind in ["key.configure", "key.disable", "key.enable", "key.schedule_destroy", "key.cancel_destroy"] {
        assert_eq!(by_kind(kind)["key_id"], "k", "{kind}");
    }
    assert_eq!(by_kind("key.encrypt")["details"]["items"], 2);
    assert_eq!(by_kind("key.decrypt")["details"]["items"], 1);
    assert_eq!(
        (&by_kind("key.rewrap")["key_version"], &by_kind("key.rewrap")["details"]["from_version"]),
        (&json!(2), &json!(1))
    );
    assert_eq!(by_kind("key.generate_data_key")["details"]["include_plaintext"], false);
    // No secret: neither API key token, nor a ciphertext.
    let text = serde_json::to_string(&events).unwrap();
    for secret in [api_key["token"].as_str().unwrap(), rotated["token"].as_str().unwrap(), first.as_str().unwrap()] {
        assert!(!text.contains(secret), "the stream holds {secret:?}");
    }
    let mut verifier = Verifier::new("acme");
    events.into_iter().for_each(|e| verifier.push(serde_json::from_value(e).unwrap()));
    assert!(verifier.finish().is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_work_the_leader_does_by_itself_and_every_read_are_audited() {
    let env = [("CUSTOS_CUSTODY__SCHEDULE_INTERVAL_MS", "200")];
    let mut cluster = ProcessCluster::new(binary(), 1, &env).expect("prepare");
    cluster.form().await.expect("form");
    create_tenant(&cluster, "acme").await;
    let (status, body) = call(&cluster, Method::POST, "/v1/tenants/acme/keys", Some(json!({"id": "old"}))).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) =
        call(&cluster, Method::POST, "/v1/tenants/acme/keys/old/destroy", Some(json!({"delay_ms": 0}))).await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, key) = call(&cluster, Method::GET, "/v1/tenants/acme/keys/old", None).await;
        assert_eq!(status, 200, "{key}");
        if key["state"] == "destroyed" {
            break;
        }
        assert!(Instant::now() < deadline, "the leader did not destroy the due key: {key}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shipped(&cluster).await;

    // The test's own reads of the key are in the stream too (access.read).
    let (reads, acme): (Vec<Value>, Vec<Value>) =
        stream(&cluster, "acme").await.into_iter().partition(|e| e["type"] == "dev.custos.access.read");
    assert!(!reads.is_empty());
    for read in &reads {
        assert_eq!(
            (read["data"]["actor"]["kind"].as_str(), read["subject"].as_str()),
            (Some("admin"), Some("keys/old"))
        );
        assert_eq!(read["data"]["details"]["route"], "/v1/tenants/{tenant}/keys/{key}", "{read}");
    }
    assert_eq!(kinds(&acme), ["tenant.create", "key.create", "key.schedule_destroy", "key.destroy"]);
    let destroyed = &acme[3]["data"];
    assert_eq!((destroyed["actor"]["kind"].as_str(), destroyed["outcome"].as_str()), (Some("system"), Some("success")));
    assert_eq!((destroyed["key_id"].as_str(), &destroyed["details"]["scheduled"]), (Some("old"), &json!(true)));
    assert_eq!(acme[3]["subject"], "keys/old");
    let mut verifier = Verifier::new("acme");
    for event in stream(&cluster, "acme").await {
        verifier.push(serde_json::from_value::<AuditEvent>(event).unwrap());
    }
    assert!(verifier.finish().is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_a_full_outbox_ships_every_acknowledged_event_after_restart() {
    let kafka = KafkaBroker::start(&KafkaBroker::script_in(&repo_root())).expect("Apache Kafka is required here");
    let brokers = kafka.bootstrap().unwrap();
    let env = [
        ("CUSTOS_AUDIT__SINK", "kafka"),
        ("CUSTOS_AUDIT__KAFKA__BROKERS", brokers.as_str()),
        ("CUSTOS_AUDIT__KAFKA__PARTITIONS", "3"),
        ("CUSTOS_AUDIT__KAFKA__REPLICATION_FACTOR", "1"),
        ("CUSTOS_AUDIT__KAFKA__REQUEST_TIMEOUT_MS", "2000"),
        ("CUSTOS_AUDIT__SHIP_BACKOFF_MAX_MS", "500"),
        ("CUSTOS_AUDIT__MAX_BATCH_EVENTS", "16"),
        ("CUSTOS_AUDIT__MAX_OUTBOX_EVENTS", "50"),
    ];
    let mut cluster = ProcessCluster::new(binary(), 1, &env).expect("prepare");
    cluster.form().await.expect("form");
    create_tenant(&cluster, "acme").await;
    let (status, body) = call(&cluster, Method::POST, "/v1/tenants/acme/keys", Some(json!({"id": "k"}))).await;
    assert_eq!(status, 201, "{body}");
    shipped(&cluster).await;

    // The broker goes away; requests keep being answered, their events wait in the outbox.
    kafka.run("stop").unwrap();
    let mut acknowledged = 2;
    for _ in 0..40 {
        let (status, body) =
            call(&cluster, Method::POST, "/v1/tenants/acme/keys/k/encrypt", Some(json!({"plaintext": "aGVsbG8="})))
                .await;
        assert_eq!(status, 200, "{body}");
        acknowledged += 1;
    }
    let (_, status) = call(&cluster, Method::GET, "/v1/cluster/status", None).await;
    assert!(status["audit"]["outbox_depth"].as_u64().unwrap() >= 40, "{}", status["audit"]);
    // Past the outbox's bound, fail-closed refuses clearly instead of answering what it
    // could not record.
    let mut refused = None;
    for _ in 0..20 {
        let (status, body) =
            call(&cluster, Method::POST, "/v1/tenants/acme/keys/k/encrypt", Some(json!({"plaintext": "aGVsbG8="})))
                .await;
        match status {
            200 => acknowledged += 1,
            _ => {
                refused = Some((status, body));
                break;
            }
        }
    }
    let (status, body) = refused.expect("the outbox never filled");
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("audit_backlog")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("fail-closed"), "{body}");

    cluster.kill(1).unwrap();
    kafka.run("restart").unwrap();
    cluster.start(1).unwrap();
    cluster.wait_healthy(1, Duration::from_secs(30)).await.unwrap();
    shipped(&cluster).await;

    // With Kafka as the sink, the tail reads the tenant's partition.
    let (node, encrypted) = (&cluster, &std::sync::atomic::AtomicU64::new(0));
    let activity = || async move {
        let (status, _) =
            call(node, Method::POST, "/v1/tenants/acme/keys/k/encrypt", Some(json!({"plaintext": "aGk="}))).await;
        if status == 200 {
            encrypted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    };
    let tailed = tail_while(&cluster, "acme", 2, activity).await;
    acknowledged += encrypted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(tailed.iter().all(|e| e["tenant"] == "acme" && e["source"] == "custos://node/1"), "{tailed:#?}");
    shipped(&cluster).await;

    let config = KafkaSinkConfig {
        brokers: brokers.clone(),
        layout: TopicLayout::Shared { topic: "custos.audit".into() },
        partitions: 3,
        replication_factor: 1,
        retention_ms: -1,
        request_timeout: Duration::from_secs(5),
        max_in_flight: 1000,
        client_properties: Vec::new(),
    };
    let events = tokio::task::spawn_blocking(move || {
        let mut events = Vec::new();
        read_tenant(&config, "acme", Duration::from_secs(30), |_, bytes| {
            events.push(serde_json::from_slice::<AuditEvent>(bytes).unwrap())
        })
        .unwrap();
        events
    })
    .await
    .unwrap();
    let mut ids = std::collections::HashMap::new();
    for event in &events {
        if let Some(earlier) = ids.insert(event.id.clone(), event.clone()) {
            assert_eq!(&earlier, event, "a redelivery differs from the first delivery");
        }
    }
    assert_eq!(ids.len() as u64, acknowledged, "acknowledged events missing from Kafka");
    let mut verifier = Verifier::new("acme");
    events.into_iter().for_each(|e| verifier.push(e));
    let report = verifier.finish();
    assert!(report.is_clean(), "{:?}", report.findings);

    let config = cluster.root().join("node-1/custos.toml");
    let out = Command::new(binary())
        .args(["audit", "verify", "--tenant", "acme", "--config", config.to_str().unwrap()])
        .envs(env)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// A governance write's audit event rides in its Raft entry: a node killed right after the
/// answer, before it recorded the event, records it from the log when it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_before_recording_a_governance_writes_event_records_it_from_the_raft_log() {
    // The recorder looks once a minute, after a look at start: nothing written after that is
    // recorded from the log, or reported recorded, before the kill.
    let env = [("CUSTOS_AUDIT__CARRIED_RECORD_INTERVAL_MS", "60000"), ("CUSTOS_AUDIT__COMMIT_LINGER_US", "10000")];
    let mut cluster = ProcessCluster::new(binary(), 1, &env).expect("prepare");
    cluster.form().await.expect("form");
    create_tenant(&cluster, "acme").await;
    rename(&cluster, 1, "acme", "rename-acme").await;
    cluster.kill(1).unwrap();

    cluster.start(1).unwrap();
    cluster.wait_healthy(1, Duration::from_secs(30)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let renames = loop {
        // Shipping is at least once: a redelivery after the kill repeats an event, id and all.
        let mut renames: Vec<Value> = Vec::new();
        for event in stream(&cluster, "acme").await {
            if event["data"]["request_id"] == "rename-acme" && renames.iter().all(|e| e["id"] != event["id"]) {
                renames.push(event);
            }
        }
        if renames.iter().any(|e| e["data"]["details"]["recorded_from_log"] == true) {
            break renames;
        }
        assert!(Instant::now() < deadline, "the rename's event was not recorded from the log: {renames:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The one placed before the kill may have become durable too: then it is there twice, both
    // telling the same change.
    assert!(renames.len() <= 2, "{renames:#?}");
    for event in &renames {
        assert_eq!(event["type"], "dev.custos.tenant.update");
        assert_eq!(event["data"]["outcome"], "success");
        assert_eq!(event["data"]["actor"]["kind"], "admin");
        assert_eq!(event["data"]["details"]["http_status"], 200);
    }
    let recovered = renames.iter().find(|e| e["data"]["details"]["recorded_from_log"] == true).unwrap();
    assert!(recovered["data"]["details"]["raft_index"].as_u64().is_some(), "{recovered:#}");

    // Once recorded, the node reported it: governance state holds none of its events, and a
    // later restart records nothing from the log again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status) = call(&cluster, Method::GET, "/v1/cluster/status?scope=node", None).await;
        if status["carried_audit"]["unreported"] == 0 {
            assert_eq!(status["carried_audit"]["recording"], true, "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "carried events never reported: {}", status["carried_audit"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before: std::collections::HashSet<String> =
        stream(&cluster, "acme").await.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    cluster.stop(1).unwrap();
    cluster.start(1).unwrap();
    cluster.wait_healthy(1, Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    shipped(&cluster).await;
    let again: Vec<Value> =
        stream(&cluster, "acme").await.into_iter().filter(|e| !before.contains(e["id"].as_str().unwrap())).collect();
    assert!(again.iter().all(|e| e["data"]["details"]["recorded_from_log"] != true), "recorded twice: {again:#?}");

    // The chain verifies.
    shipped(&cluster).await;
    let mut verifier = Verifier::new("acme");
    for event in stream(&cluster, "acme").await {
        verifier.push(serde_json::from_value::<AuditEvent>(event).unwrap());
    }
    let report = verifier.finish();
    assert!(report.is_clean(), "{:?}", report.findings);
}

/// Events a node carried and never recorded are recorded by the leader, in its own chain, once
/// that node has left the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_records_the_carried_events_of_a_node_removed_before_it_recorded_them() {
    let mut cluster = ProcessCluster::new(binary(), 3, &[]).expect("prepare");
    // Node 3 looks for its carried events once a minute, after a look at start.
    let config = cluster.config_file(3).unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[audit]\ncarried_record_interval_ms = 60000\n");
    std::fs::write(&config, text).unwrap();
    cluster.form().await.expect("form");
    create_tenant(&cluster, "acme").await;
    rename(&cluster, 3, "acme", "rename-via-3").await;
    cluster.kill(3).unwrap();
    let (status, body) = call(&cluster, Method::DELETE, "/v1/cluster/members/3", None).await;
    assert_eq!(status, 200, "{body}");

    let leader = cluster.wait_leader(&[1, 2], Duration::from_secs(10)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let adopted = loop {
        let events = stream_on(&cluster, leader, "acme").await;
        if let Some(event) = events.into_iter().find(|e| e["data"]["request_id"] == "rename-via-3") {
            break event;
        }
        assert!(Instant::now() < deadline, "the leader never recorded node 3's carried event");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(adopted["type"], "dev.custos.tenant.update");
    assert_eq!(adopted["source"], format!("custos://node/{leader}"));
    assert_eq!(adopted["data"]["details"]["recorded_from_log"], true);
    assert_eq!(adopted["data"]["outcome"], "success");
}

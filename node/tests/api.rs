//! The client API of a single node: bad input gets a clear 4xx with a machine-readable code
//! and leaves state unchanged; idempotent retries apply once; pagination is complete.

use std::path::Path;

use custos_chaos_tests::{ApiReply, ProcessCluster};
use reqwest::Method;
use serde_json::{json, Value};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_custos"))
}

async fn single_node() -> ProcessCluster {
    let mut cluster = ProcessCluster::new(binary(), 1, &[("CUSTOS_LIMITS__MAX_BODY_BYTES", "2048")]).expect("prepare");
    cluster.form().await.expect("form");
    cluster
}

async fn post_raw(
    cluster: &ProcessCluster,
    path: &str,
    body: &str,
    content_type: Option<&str>,
    token: Option<&str>,
) -> ApiReply {
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(ct) = content_type {
        headers.push(("content-type", ct));
    }
    let auth;
    if let Some(token) = token {
        auth = format!("Bearer {token}");
        headers.push(("authorization", &auth));
    }
    cluster.call_raw(1, Method::POST, path, body.as_bytes().to_vec(), &headers).await.expect("request")
}

fn assert_error(reply: &ApiReply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.code(), Some(code), "{}", reply.body);
    assert!(reply.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", reply.body);
}

async fn tenant_ids(cluster: &ProcessCluster) -> Vec<String> {
    let reply = cluster.get(1, "/v1/tenants?include_deleted=true&limit=1000").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["tenants"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_structured_errors_and_changes_nothing() {
    let cluster = single_node().await;
    let token = cluster.token().unwrap().to_string();
    let good = json!({ "id": "acme", "display_name": "Acme", "region": "eu-west" });
    let created = cluster.call(1, Method::POST, "/v1/tenants", Some(&good), &[]).await.unwrap();
    assert_eq!(created.status, 201, "{}", created.body);
    let before = tenant_ids(&cluster).await;

    // Malformed JSON, unknown fields, wrong types and missing fields.
    let json_ct = Some("application/json");
    assert_error(
        &post_raw(&cluster, "/v1/tenants", "{\"id\": \"x\",", json_ct, Some(&token)).await,
        400,
        "malformed_json",
    );
    let unknown = r#"{"id":"x1","display_name":"X","region":"eu","admin":true}"#;
    assert_error(&post_raw(&cluster, "/v1/tenants", unknown, json_ct, Some(&token)).await, 400, "invalid_body");
    assert_error(
        &post_raw(&cluster, "/v1/tenants", r#"{"id":7,"display_name":"X","region":"eu"}"#, json_ct, Some(&token)).await,
        400,
        "invalid_body",
    );
    assert_error(
        &post_raw(&cluster, "/v1/tenants", r#"{"id":"x2"}"#, json_ct, Some(&token)).await,
        400,
        "invalid_body",
    );
    assert_error(&post_raw(&cluster, "/v1/tenants", "{}", None, Some(&token)).await, 415, "unsupported_media_type");

    // Oversized body (limit set to 2 KiB for this node).
    let big = json!({ "id": "big", "display_name": "x".repeat(4096), "region": "eu" }).to_string();
    assert_error(&post_raw(&cluster, "/v1/tenants", &big, json_ct, Some(&token)).await, 413, "body_too_large");

    // Invalid identifiers and field values.
    for (id, region, name) in [("UPPER", "eu", "X"), ("-x", "eu", "X"), ("ok", "EU WEST", "X")] {
        let body = json!({ "id": id, "display_name": name, "region": region }).to_string();
        assert_error(&post_raw(&cluster, "/v1/tenants", &body, json_ct, Some(&token)).await, 400, "invalid_id");
    }
    let control = json!({ "id": "ctl", "display_name": "bad\u{0007}name", "region": "eu" }).to_string();
    assert_error(&post_raw(&cluster, "/v1/tenants", &control, json_ct, Some(&token)).await, 400, "invalid_field");
    assert_error(&cluster.get(1, "/v1/tenants/Not_Valid").await.unwrap(), 400, "invalid_id");
    assert_error(&cluster.get(1, "/v1/tenants?limit=0").await.unwrap(), 400, "invalid_query");
    assert_error(&cluster.get(1, "/v1/tenants?bogus=1").await.unwrap(), 400, "invalid_query");
    assert_error(&cluster.get(1, "/v1/tenants?consistency=eventual").await.unwrap(), 400, "invalid_query");
    assert_error(
        &post_raw(&cluster, "/v1/tenants", &good.to_string(), json_ct, Some(&token)).await,
        409,
        "tenant_exists",
    );

    // Missing or wrong admin token.
    let body = json!({ "id": "intruder", "display_name": "X", "region": "eu" }).to_string();
    let missing = post_raw(&cluster, "/v1/tenants", &body, json_ct, None).await;
    assert_error(&missing, 401, "unauthenticated");
    assert!(missing.headers.contains_key("www-authenticate"));
    assert_error(&post_raw(&cluster, "/v1/tenants", &body, json_ct, Some("cst_wrong")).await, 401, "unauthenticated");
    for path in ["/v1/tenants", "/v1/cluster/status", "/v1/tenants/acme"] {
        let anonymous = cluster.call_raw(1, Method::GET, path, Vec::new(), &[]).await.unwrap();
        assert_error(&anonymous, 401, "unauthenticated");
        let malformed = cluster
            .call_raw(1, Method::GET, path, Vec::new(), &[("authorization", "Basic YWRtaW46YWRtaW4=")])
            .await
            .unwrap();
        assert_error(&malformed, 401, "unauthenticated");
    }

    // Unknown routes and methods, and a second init.
    assert_error(&cluster.get(1, "/v1/nothing-here").await.unwrap(), 404, "not_found");
    assert_error(&cluster.call(1, Method::PUT, "/v1/tenants", None, &[]).await.unwrap(), 405, "method_not_allowed");
    assert_error(
        &cluster.call(1, Method::POST, "/v1/cluster/init", None, &[]).await.unwrap(),
        409,
        "already_initialized",
    );
    assert_error(
        &cluster.call(1, Method::POST, "/v1/tenants/nobody/suspend", None, &[]).await.unwrap(),
        404,
        "tenant_not_found",
    );

    // None of it changed state.
    assert_eq!(tenant_ids(&cluster).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_lifecycle_and_pagination() {
    let cluster = single_node().await;

    // A retried create with the same Idempotency-Key applies once and replays the outcome.
    let body = json!({ "id": "acme", "display_name": "Acme", "region": "eu-west" });
    let key = [("idempotency-key", "create-acme-1")];
    let first = cluster.call(1, Method::POST, "/v1/tenants", Some(&body), &key).await.unwrap();
    let retry = cluster.call(1, Method::POST, "/v1/tenants", Some(&body), &key).await.unwrap();
    assert_eq!(first.status, 201);
    assert_eq!(retry.status, 201);
    assert_eq!(first.body, retry.body);
    assert_eq!(retry.headers.get("idempotent-replayed").map(|v| v.to_str().unwrap()), Some("true"));
    // The same key for a different request is refused.
    let other = json!({ "id": "other", "display_name": "Other", "region": "eu-west" });
    assert_error(
        &cluster.call(1, Method::POST, "/v1/tenants", Some(&other), &key).await.unwrap(),
        422,
        "idempotency_key_reused",
    );
    assert_error(
        &cluster.call(1, Method::POST, "/v1/tenants", Some(&other), &[("idempotency-key", "has space")]).await.unwrap(),
        400,
        "invalid_idempotency_key",
    );

    // Suspend, resume and delete; a deleted tenant stays as a tombstone and cannot come back.
    let suspended = cluster.call(1, Method::POST, "/v1/tenants/acme/suspend", None, &[]).await.unwrap();
    assert_eq!(suspended.body["status"], "suspended");
    let resumed = cluster.call(1, Method::POST, "/v1/tenants/acme/resume", None, &[]).await.unwrap();
    assert_eq!(resumed.body["status"], "active");
    let deleted = cluster.call(1, Method::DELETE, "/v1/tenants/acme", None, &[]).await.unwrap();
    assert_eq!(deleted.body["status"], "deleted");
    assert_error(
        &cluster.call(1, Method::POST, "/v1/tenants/acme/resume", None, &[]).await.unwrap(),
        410,
        "tenant_deleted",
    );
    assert_error(&cluster.call(1, Method::POST, "/v1/tenants", Some(&body), &[]).await.unwrap(), 409, "tenant_exists");
    let listed = cluster.get(1, "/v1/tenants").await.unwrap();
    assert_eq!(listed.body["tenants"], json!([]), "deleted tenants are hidden by default");
    let tombstone = cluster.get(1, "/v1/tenants/acme?consistency=stale").await.unwrap();
    assert_eq!(tombstone.body["status"], "deleted");

    // Pages of 3 over 8 tenants return each one exactly once, in order.
    for i in 0..8 {
        let t = json!({ "id": format!("t-{i}"), "display_name": format!("T {i}"), "region": "eu" });
        assert_eq!(cluster.call(1, Method::POST, "/v1/tenants", Some(&t), &[]).await.unwrap().status, 201);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let path = match &after {
            Some(a) => format!("/v1/tenants?limit=3&after={a}"),
            None => "/v1/tenants?limit=3".to_string(),
        };
        let page = cluster.get(1, &path).await.unwrap();
        seen.extend(page.body["tenants"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_string()));
        match page.body["next_after"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..8).map(|i| format!("t-{i}")).collect();
    assert_eq!(seen, expected);

    // Readiness and health answer JSON.
    let ready = cluster.get(1, "/readyz").await.unwrap();
    assert_eq!(ready.body["ready"], Value::Bool(true));
    assert_eq!(cluster.get(1, "/healthz").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_update_with_a_stale_revision_is_refused_and_with_the_current_one_applies() {
    let cluster = single_node().await;
    let created = cluster
        .call(1, Method::POST, "/v1/tenants", Some(&json!({"id": "acme", "display_name": "Acme", "region": "eu"})), &[])
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.body);
    let revision = created.body["revision"].as_u64().unwrap();

    let stale = json!({"display_name": "Stale", "expected_revision": revision + 1000});
    let refused = cluster.call(1, Method::PATCH, "/v1/tenants/acme", Some(&stale), &[]).await.unwrap();
    assert_error(&refused, 409, "stale_revision");

    let current = json!({"display_name": "Acme Corp", "expected_revision": revision});
    let updated = cluster.call(1, Method::PATCH, "/v1/tenants/acme", Some(&current), &[]).await.unwrap();
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(updated.body["display_name"], "Acme Corp");
    assert!(updated.body["revision"].as_u64().unwrap() > revision);
    // The same compare-and-set again is now stale.
    let again = cluster.call(1, Method::PATCH, "/v1/tenants/acme", Some(&current), &[]).await.unwrap();
    assert_error(&again, 409, "stale_revision");
    let unconditional = json!({"display_name": "Acme"});
    let updated = cluster.call(1, Method::PATCH, "/v1/tenants/acme", Some(&unconditional), &[]).await.unwrap();
    assert_eq!(updated.status, 200, "{}", updated.body);
}

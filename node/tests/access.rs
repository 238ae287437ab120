//! Access control through a real 3-node cluster: API keys (scopes within the creator's,
//! rotation overlap, revocation on every node, rate tiers), tenant isolation on every
//! tenant-scoped route, policy documents with ABAC rules, just-in-time grants, and the audit
//! trail of API-key use.

use std::path::Path;
use std::time::Duration;

use custos_chaos_tests::{eventually, tenant_routes, ApiReply, ProcessCluster};
use reqwest::Method;
use serde_json::{json, Value};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_custos"))
}

async fn admin(cluster: &ProcessCluster, method: Method, path: &str, body: Value) -> Value {
    let reply = cluster.call(1, method, path, Some(&body), &[]).await.expect("request");
    assert!(reply.status < 300, "{path}: {} {}", reply.status, reply.body);
    reply.body
}

async fn as_key(
    cluster: &ProcessCluster,
    node: u64,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> ApiReply {
    cluster.call_as(node, token, method, path, body.as_ref(), &[]).await.expect("request")
}

fn token(reply: &Value) -> String {
    reply["token"].as_str().expect("a token in the answer").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_policies_and_tenant_isolation() {
    let env = [
        ("CUSTOS_IDENTITY__API_KEY_TIERS__TINY__PER_SECOND", "0.5"),
        ("CUSTOS_IDENTITY__API_KEY_TIERS__TINY__BURST", "3"),
        // Keys expiring within 2 days are announced, checked every second.
        ("CUSTOS_IDENTITY__API_KEY_EXPIRY_WARNING_DAYS", "2"),
        ("CUSTOS_CUSTODY__SCHEDULE_INTERVAL_MS", "1000"),
    ];
    let mut cluster = ProcessCluster::new(binary(), 3, &env).expect("prepare");
    cluster.form().await.expect("form");
    for tenant in ["acme", "globex"] {
        admin(&cluster, Method::POST, "/v1/tenants", json!({ "id": tenant, "display_name": tenant, "region": "eu" }))
            .await;
        // The tenant's actors start right after the apply; until then: 503 tenant_starting.
        let path = format!("/v1/tenants/{tenant}/keys");
        let created = eventually(Duration::from_secs(10), async || {
            cluster.call(1, Method::POST, &path, Some(&json!({ "id": "orders" })), &[]).await.unwrap().status == 201
        });
        assert!(created.await, "creating a key in {tenant}");
    }
    // The platform's own key custody has a tenant id no tenant may take.
    let body = json!({ "id": "custos-platform", "display_name": "x", "region": "eu" });
    let reserved = cluster.call(1, Method::POST, "/v1/tenants", Some(&body), &[]).await.unwrap();
    assert_eq!((reserved.status, reserved.code()), (409, Some("tenant_exists")), "{}", reserved.body);
    let scopes = json!([
        "tenants:read",
        "keys:read",
        "keys:create",
        "keys:encrypt",
        "keys:decrypt",
        "apikeys:create",
        "apikeys:read"
    ]);

    // A key that would carry a permission needing MFA is refused; so is an unknown scope.
    let mfa = cluster
        .call(
            1,
            Method::POST,
            "/v1/tenants/acme/apikeys",
            Some(&json!({ "name": "x", "scopes": ["keys:destroy"] })),
            &[],
        )
        .await
        .unwrap();
    assert_eq!((mfa.status, mfa.code()), (400, Some("scope_requires_mfa")), "{}", mfa.body);
    let unknown = cluster
        .call(1, Method::POST, "/v1/tenants/acme/apikeys", Some(&json!({ "name": "x", "scopes": ["keys:fly"] })), &[])
        .await
        .unwrap();
    assert_eq!((unknown.status, unknown.code()), (400, Some("unknown_permission")), "{}", unknown.body);

    // The admin mints one key per tenant; the token is shown once, never listed.
    let acme =
        admin(&cluster, Method::POST, "/v1/tenants/acme/apikeys", json!({ "name": "app", "scopes": scopes })).await;
    let globex =
        admin(&cluster, Method::POST, "/v1/tenants/globex/apikeys", json!({ "name": "app", "scopes": scopes })).await;
    let (acme_token, acme_id) = (token(&acme), acme["id"].as_str().unwrap().to_string());
    let short_lived = json!({ "name": "short", "scopes": ["keys:read"], "rotation_days": 1 });
    let short_lived = admin(&cluster, Method::POST, "/v1/tenants/acme/apikeys", short_lived).await;
    let short_id = short_lived["id"].as_str().unwrap().to_string();
    let globex_id = globex["id"].as_str().unwrap().to_string();
    assert!(acme_token.starts_with(&format!("cak_{acme_id}_")));
    let listed = cluster.get(2, "/v1/tenants/acme/apikeys").await.unwrap();
    assert_eq!(listed.body["api_keys"].as_array().unwrap().len(), 2, "{}", listed.body);
    assert!(!listed.body.to_string().contains(&acme_token[acme_id.len() + 5..]), "the secret is never listed");

    // The key works on every node within its scopes, and is refused beyond them.
    let encrypt = || {
        let body = json!({ "plaintext": "aGVsbG8=" });
        as_key(&cluster, 3, &acme_token, Method::POST, "/v1/tenants/acme/keys/orders/encrypt", Some(body))
    };
    assert!(eventually(Duration::from_secs(10), async || encrypt().await.status != 503).await);
    let encrypted = encrypt().await;
    assert_eq!(encrypted.status, 200, "{}", encrypted.body);
    let rotate = as_key(&cluster, 2, &acme_token, Method::POST, "/v1/tenants/acme/keys/orders/rotate", None).await;
    assert_eq!((rotate.status, rotate.code()), (403, Some("forbidden")), "{}", rotate.body);
    assert!(rotate.body["error"]["details"]["decision_id"].as_str().is_some_and(|d| d.starts_with("dec_")));
    assert_eq!(rotate.body["error"]["details"]["rule"], "default_deny");

    // Tenant isolation: every tenant-scoped route, with acme's key against globex, is refused
    // and never shows globex's data.
    for (method, route, body) in tenant_routes() {
        let path = route.replace("{t}", "globex").replace("{k}", &globex_id);
        let reply = as_key(&cluster, 1, &acme_token, method.clone(), &path, body).await;
        assert!(matches!(reply.status, 403 | 404), "{method} {path}: {} {}", reply.status, reply.body);
        assert!(!reply.body.to_string().contains("custos:v1:"), "{method} {path}: {}", reply.body);
    }
    let tenants = as_key(&cluster, 1, &acme_token, Method::GET, "/v1/tenants", None).await;
    let ids: Vec<_> = tenants.body["tenants"].as_array().unwrap().iter().map(|t| t["id"].clone()).collect();
    assert_eq!(ids, [json!("acme")], "a tenant's key lists only its tenant");
    let platform = as_key(&cluster, 1, &acme_token, Method::GET, "/v1/cluster/status", None).await;
    assert_eq!(platform.status, 403);
    // Globex's own key still works on globex: nothing above changed it.
    let own = as_key(&cluster, 1, &token(&globex), Method::GET, "/v1/tenants/globex/keys/orders", None).await;
    assert_eq!(own.status, 200, "{}", own.body);

    // A key cannot mint scopes its holder does not have; within them it can.
    let wider = as_key(
        &cluster,
        1,
        &acme_token,
        Method::POST,
        "/v1/tenants/acme/apikeys",
        Some(json!({ "name": "wider", "scopes": ["audit:read"] })),
    )
    .await;
    assert_eq!((wider.status, wider.code()), (403, Some("scope_not_held")), "{}", wider.body);
    let narrow = as_key(
        &cluster,
        1,
        &acme_token,
        Method::POST,
        "/v1/tenants/acme/apikeys",
        Some(json!({ "name": "narrow", "scopes": ["keys:encrypt"], "tier": "tiny" })),
    )
    .await;
    assert_eq!(narrow.status, 201, "{}", narrow.body);
    let (narrow_token, narrow_id) = (token(&narrow.body), narrow.body["id"].as_str().unwrap().to_string());

    // Rate tiers: the tiny tier allows a burst of 3, then 429 with Retry-After.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let reply = as_key(&cluster, 2, &narrow_token, Method::GET, "/v1/tenants/acme/keys", None).await;
        if reply.status == 429 {
            assert_eq!(reply.code(), Some("rate_limited"));
            let after: u64 = reply.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=2).contains(&after), "Retry-After {after}");
        }
        statuses.push(reply.status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 2, "{statuses:?}");

    // Rotation with a 3 s overlap: both secrets work on another node, then only the new one.
    let rotated = admin(
        &cluster,
        Method::POST,
        &format!("/v1/tenants/acme/apikeys/{narrow_id}/rotate"),
        json!({ "overlap_s": 3 }),
    )
    .await;
    let new_token = token(&rotated);
    assert_ne!(new_token, narrow_token);
    let works = |node, token: String| {
        let cluster = &cluster;
        async move {
            let reply = as_key(
                cluster,
                node,
                &token,
                Method::POST,
                "/v1/tenants/acme/keys/orders/encrypt",
                Some(json!({ "plaintext": "aGk=" })),
            )
            .await;
            reply.status
        }
    };
    assert!(eventually(Duration::from_secs(5), async || works(3, new_token.clone()).await == 200).await);
    assert_eq!(works(1, narrow_token.clone()).await, 200, "the old secret works inside the overlap");
    assert!(
        eventually(Duration::from_secs(8), async || works(1, narrow_token.clone()).await == 401).await,
        "the old secret stops after the overlap"
    );

    // Revocation takes effect on every node.
    admin(&cluster, Method::POST, &format!("/v1/tenants/acme/apikeys/{narrow_id}/revoke"), json!({})).await;
    for node in 1..=3 {
        assert!(
            eventually(Duration::from_secs(5), async || works(node, new_token.clone()).await == 401).await,
            "node {node} still accepts a revoked key"
        );
    }

    // A policy rule: decrypting needs environment prod.
    let policy = json!({
        "rules": [{ "id": "prod-only", "permissions": ["keys:decrypt"], "conditions": [{ "type": "environment", "allowed": ["prod"] }] }],
        "revision": 0,
    });
    admin(&cluster, Method::PUT, "/v1/tenants/acme/policy", policy.clone()).await;
    let stale = cluster.call(1, Method::PUT, "/v1/tenants/acme/policy", Some(&policy), &[]).await.unwrap();
    assert_eq!((stale.status, stale.code()), (409, Some("stale_revision")), "{}", stale.body);
    let ciphertext = encrypted.body["ciphertext"].clone();
    let decrypt = |headers: Vec<(&'static str, &'static str)>| {
        let (cluster, token, ciphertext) = (&cluster, acme_token.clone(), ciphertext.clone());
        async move {
            cluster
                .call_as(
                    2,
                    &token,
                    Method::POST,
                    "/v1/tenants/acme/keys/orders/decrypt",
                    Some(&json!({ "ciphertext": ciphertext })),
                    &headers,
                )
                .await
                .unwrap()
        }
    };
    assert!(eventually(Duration::from_secs(5), async || decrypt(vec![]).await.status == 403).await);
    let denied = decrypt(vec![]).await;
    assert_eq!(denied.body["error"]["details"]["rule"], "rule:prod-only", "{}", denied.body);
    let allowed = decrypt(vec![("custos-environment", "prod")]).await;
    assert_eq!((allowed.status, allowed.body["plaintext"].as_str()), (200, Some("aGVsbG8=")), "{}", allowed.body);
    // The same question through the decision endpoint: answered, not refused.
    let asked = as_key(
        &cluster,
        3,
        &acme_token,
        Method::POST,
        "/v1/tenants/acme/authorize",
        Some(json!({ "permission": "keys:decrypt", "attributes": { "environment": "staging" } })),
    )
    .await;
    assert_eq!((asked.status, asked.body["allowed"].as_bool()), (200, Some(false)), "{}", asked.body);
    assert_eq!(asked.body["rule"], "rule:prod-only");

    // A just-in-time grant lets the key rotate until it is revoked.
    let grant = admin(
        &cluster,
        Method::POST,
        "/v1/tenants/acme/grants",
        json!({ "subject": format!("apikey:{acme_id}"), "permissions": ["keys:rotate"], "reason": "incident 7", "duration_s": 600 }),
    )
    .await;
    let rotate = || as_key(&cluster, 1, &acme_token, Method::POST, "/v1/tenants/acme/keys/orders/rotate", None);
    let elevated = rotate().await;
    assert_eq!(elevated.status, 200, "{}", elevated.body);
    admin(&cluster, Method::DELETE, &format!("/v1/tenants/acme/grants/{}", grant["id"].as_str().unwrap()), json!({}))
        .await;
    assert_eq!(rotate().await.status, 403);

    // Every use of an API key is in the tenant's audit stream, with the key as actor, and a
    // refusal carries its decision id.
    let read = as_key(&cluster, 1, &acme_token, Method::GET, "/v1/tenants/acme/keys/orders", None).await;
    assert_eq!(read.status, 200, "{}", read.body);
    let audited = eventually(Duration::from_secs(10), async || {
        let page = cluster.get(1, "/v1/tenants/acme/audit?limit=1000").await.unwrap();
        let events = page.body["events"].as_array().cloned().unwrap_or_default();
        let by_key = |e: &&Value| e["data"]["actor"]["id"] == json!(format!("apikey:{acme_id}"));
        let used = events.iter().filter(by_key).any(|e| e["type"] == "dev.custos.apikey.use");
        let refused = events.iter().filter(by_key).any(|e| {
            e["data"]["outcome"] == "denied" && e["data"]["decision_id"].as_str().is_some_and(|d| d.starts_with("dec_"))
        });
        used && refused
    })
    .await;
    let page = cluster.get(1, "/v1/tenants/acme/audit?limit=1000").await.unwrap();
    let by_key: Vec<_> = page.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"]["actor"]["kind"] == "api_key")
        .map(|e| (e["type"].clone(), e["data"]["outcome"].clone(), e["data"]["decision_id"].clone()))
        .collect();
    assert!(audited, "API-key use and refusals are audited: {by_key:?}");

    // The key is exchanged for a platform token (once the leader has made the first signing
    // key), which any node accepts within the key's scopes, and gateways can check against the
    // published keys.
    let exchange = async || as_key(&cluster, 2, &acme_token, Method::POST, "/v1/auth/token", None).await;
    assert!(eventually(Duration::from_secs(20), async || exchange().await.status == 200).await, "no token issued");
    let issued = exchange().await;
    let jwt = issued.body["access_token"].as_str().unwrap().to_string();
    assert_eq!(issued.body["token_type"], "Bearer");
    let jwks = cluster.call_raw(3, Method::GET, "/.well-known/jwks.json", Vec::new(), &[]).await.unwrap();
    let header: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, jwt.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(jwks.body["keys"].as_array().unwrap().iter().any(|k| k["kid"] == header["kid"]), "{}", jwks.body);
    assert_eq!(header["alg"], "RS256");
    let discovery =
        cluster.call_raw(1, Method::GET, "/.well-known/openid-configuration", Vec::new(), &[]).await.unwrap();
    assert_eq!(discovery.body["issuer"], "custos");
    let with_jwt = as_key(&cluster, 3, &jwt, Method::GET, "/v1/tenants/acme/keys/orders", None).await;
    assert_eq!(with_jwt.status, 200, "{}", with_jwt.body);
    assert_eq!(as_key(&cluster, 3, &jwt, Method::GET, "/v1/tenants/globex/keys/orders", None).await.status, 403);
    let mut tampered = jwt.clone();
    tampered.pop();
    tampered.push(if jwt.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(as_key(&cluster, 1, &tampered, Method::GET, "/v1/tenants/acme/keys/orders", None).await.status, 401);

    // Revoking the key ends its tokens too, on every node.
    admin(&cluster, Method::POST, &format!("/v1/tenants/acme/apikeys/{acme_id}/revoke"), json!({})).await;
    for node in 1..=3 {
        let refused = eventually(Duration::from_secs(5), async || {
            as_key(&cluster, node, &jwt, Method::GET, "/v1/tenants/acme/keys/orders", None).await.status == 401
        });
        assert!(refused.await, "node {node} still accepts a token of a revoked key");
    }

    // The key whose secret expires within the warning window was announced once, by the
    // leader, in the tenant's stream (each node's local log holds the events it recorded).
    let announcements = async || {
        let mut found = Vec::new();
        for node in 1..=3 {
            let page = cluster.get(node, "/v1/tenants/acme/audit?type=apikey.expiring&limit=1000").await.unwrap();
            for event in page.body["events"].as_array().cloned().unwrap_or_default() {
                found.push((event["subject"].clone(), event["data"]["actor"]["kind"].clone()));
            }
        }
        found
    };
    assert!(eventually(Duration::from_secs(15), async || !announcements().await.is_empty()).await, "no announcement");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let found = announcements().await;
    assert_eq!(found, vec![(json!(format!("apikeys/{short_id}")), json!("system"))], "announced once: {found:?}");
}

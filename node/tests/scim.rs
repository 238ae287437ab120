//! SCIM 2.0 provisioning and native sign-in through a real 3-node cluster: an IdP's
//! provisioning client (an API key with `users:provision`) creates, filters, pages, patches
//! and deletes users and groups on any node; people of a natively signing-in tenant sign in
//! with their password and TOTP code; deprovisioning a person ends their sessions and revokes
//! their API keys on every node.

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

struct Scim<'a> {
    cluster: &'a ProcessCluster,
    token: String,
}

impl Scim<'_> {
    async fn call(&self, node: u64, method: Method, path: &str, body: Option<Value>) -> ApiReply {
        let path = format!("/scim/v2/acme{path}");
        self.cluster.call_as(node, &self.token, method, &path, body.as_ref(), &[]).await.expect("request")
    }

    async fn call_with(&self, node: u64, method: Method, path: &str, body: Value, header: (&str, &str)) -> ApiReply {
        let path = format!("/scim/v2/acme{path}");
        self.cluster.call_as(node, &self.token, method, &path, Some(&body), &[header]).await.expect("request")
    }

    async fn list(&self, node: u64, query: &str) -> Value {
        let reply = self.call(node, Method::GET, &format!("/Users?{query}"), None).await;
        assert_eq!(reply.status, 200, "{query}: {}", reply.body);
        reply.body
    }
}

/// Signs in natively on `node`; the session cookie, or the error answer.
async fn sign_in(
    cluster: &ProcessCluster,
    node: u64,
    user: &str,
    password: &str,
    totp: Option<&str>,
) -> Result<String, ApiReply> {
    let mut body = json!({ "tenant": "acme", "username": user, "password": password });
    if let Some(code) = totp {
        body["totp"] = json!(code);
    }
    let bytes = serde_json::to_vec(&body).unwrap();
    let reply = cluster
        .call_raw(node, Method::POST, "/v1/auth/native/login", bytes, &[("content-type", "application/json")])
        .await
        .expect("request");
    if reply.status != 200 {
        return Err(reply);
    }
    let set = reply.headers["set-cookie"].to_str().unwrap();
    assert!(set.contains("HttpOnly") && set.contains("Secure") && set.contains("SameSite=Lax"), "{set}");
    Ok(set.split(';').next().unwrap().to_string())
}

async fn with_cookie(
    cluster: &ProcessCluster,
    node: u64,
    cookie: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> ApiReply {
    let mut headers = vec![("cookie", cookie), ("x-custos-csrf", "1")];
    let bytes = match body {
        Some(body) => {
            headers.push(("content-type", "application/json"));
            serde_json::to_vec(&body).unwrap()
        }
        None => Vec::new(),
    };
    cluster.call_raw(node, method, path, bytes, &headers).await.expect("request")
}

fn totp_now(secret_base32: &str) -> String {
    let secret = totp_rs::Secret::Encoded(secret_base32.to_string()).to_bytes().expect("a base32 secret");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    custos_actors::identity::native::totp_code(&secret, now).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scim_provisioning_native_sign_in_and_deprovisioning() {
    let mut cluster = ProcessCluster::new(binary(), 3, &[]).expect("prepare");
    cluster.form().await.expect("form");
    for tenant in ["acme", "globex"] {
        admin(&cluster, Method::POST, "/v1/tenants", json!({ "id": tenant, "display_name": tenant, "region": "eu" }))
            .await;
    }
    let created = admin(
        &cluster,
        Method::POST,
        "/v1/tenants/acme/apikeys",
        json!({ "name": "entra-provisioning", "scopes": ["users:provision"] }),
    )
    .await;
    let scim = Scim { cluster: &cluster, token: created["token"].as_str().unwrap().to_string() };

    // Discovery.
    let config = scim.call(2, Method::GET, "/ServiceProviderConfig", None).await;
    assert_eq!(config.status, 200, "{}", config.body);
    assert_eq!(config.headers["content-type"], "application/scim+json");
    assert_eq!(
        (config.body["patch"]["supported"].clone(), config.body["filter"]["supported"].clone()),
        (json!(true), json!(true))
    );
    let types = scim.call(3, Method::GET, "/ResourceTypes", None).await;
    assert_eq!(types.body["totalResults"], 2);
    let schema = scim.call(1, Method::GET, "/Schemas/urn:ietf:params:scim:schemas:core:2.0:User", None).await;
    assert!(schema.body["attributes"].as_array().unwrap().iter().any(|a| a["name"] == "userName"), "{}", schema.body);

    // Users, created on different nodes.
    let alice = scim
        .call(
            2,
            Method::POST,
            "/Users",
            Some(json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "alice",
                "externalId": "entra-0001",
                "name": { "givenName": "Alice", "familyName": "Martin" },
                "emails": [{ "value": "alice@acme.example", "type": "work", "primary": true }],
                "password": "alice-password-1",
                "roles": [{ "value": "operator" }],
                "urn:custos:params:scim:schemas:extension:2.0:User": { "lineOfBusiness": ["security"] },
            })),
        )
        .await;
    assert_eq!(alice.status, 201, "{}", alice.body);
    assert!(alice.headers["location"]
        .to_str()
        .unwrap()
        .ends_with(&format!("/scim/v2/acme/Users/{}", alice.body["id"].as_str().unwrap())));
    assert!(alice.headers.contains_key("etag"));
    assert!(alice.body.get("password").is_none() && !alice.body.to_string().contains("alice-password"));
    let alice_id = alice.body["id"].as_str().unwrap().to_string();
    let bob = scim
        .call(
            3,
            Method::POST,
            "/Users",
            Some(json!({ "userName": "bob", "emails": [{ "value": "bob@acme.example", "type": "home" }] })),
        )
        .await;
    assert_eq!(bob.status, 201, "{}", bob.body);
    let bob_id = bob.body["id"].as_str().unwrap().to_string();
    let carol = scim.call(1, Method::POST, "/Users", Some(json!({ "userName": "carol", "active": false }))).await;
    assert_eq!(carol.status, 201, "{}", carol.body);
    // userName is unique without regard to case; only tenant roles may be given.
    let twin = scim.call(1, Method::POST, "/Users", Some(json!({ "userName": "ALICE" }))).await;
    assert_eq!((twin.status, twin.body["scimType"].clone()), (409, json!("uniqueness")), "{}", twin.body);
    let platform = scim
        .call(1, Method::POST, "/Users", Some(json!({ "userName": "eve", "roles": [{ "value": "super_admin" }] })))
        .await;
    assert_eq!((platform.status, platform.body["scimType"].clone()), (400, json!("invalidValue")), "{}", platform.body);
    let short = scim.call(1, Method::POST, "/Users", Some(json!({ "userName": "eve", "password": "short" }))).await;
    assert_eq!((short.status, short.code()), (400, Some("invalid_password")), "{}", short.body);

    // Filters and pages, on any node.
    let found = scim.list(3, "filter=userName%20eq%20%22Alice%22").await;
    assert_eq!((found["totalResults"].clone(), found["Resources"][0]["id"].clone()), (json!(1), json!(alice_id)));
    let work = scim.list(1, "filter=emails%5Btype%20eq%20%22work%22%20and%20value%20ew%20%22acme.example%22%5D").await;
    assert_eq!(work["totalResults"], 1, "{work}");
    let inactive = scim.list(2, "filter=active%20eq%20false").await;
    assert_eq!(inactive["Resources"][0]["userName"], "carol");
    let page = scim.list(2, "startIndex=2&count=1&attributes=userName").await;
    assert_eq!(
        (page["totalResults"].clone(), page["itemsPerPage"].clone(), page["startIndex"].clone()),
        (json!(3), json!(1), json!(2))
    );
    assert!(page["Resources"][0].get("emails").is_none(), "only the asked attributes: {page}");
    let bad = scim.call(1, Method::GET, "/Users?filter=userName%20eq", None).await;
    assert_eq!((bad.status, bad.body["scimType"].clone()), (400, json!("invalidFilter")), "{}", bad.body);

    // Groups: a group named like a role gives its members that role.
    let group = scim
        .call(1, Method::POST, "/Groups", Some(json!({ "displayName": "admin", "members": [{ "value": bob_id }] })))
        .await;
    assert_eq!(group.status, 201, "{}", group.body);
    let group_id = group.body["id"].as_str().unwrap().to_string();
    let patched = scim
        .call(
            2,
            Method::PATCH,
            &format!("/Groups/{group_id}"),
            Some(json!({
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [
                    { "op": "Add", "path": "members", "value": [{ "value": alice_id }] },
                    { "op": "Remove", "path": format!("members[value eq \"{bob_id}\"]") },
                ],
            })),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(
        patched.body["members"],
        json!([{ "value": alice_id, "display": "alice", "type": "User", "$ref": patched.body["members"][0]["$ref"] }])
    );
    let groups = scim
        .call(3, Method::GET, "/Groups?filter=displayName%20eq%20%22ADMIN%22&excludedAttributes=members", None)
        .await;
    assert_eq!(groups.body["totalResults"], 1, "{}", groups.body);
    assert!(groups.body["Resources"][0].get("members").is_none());
    let shown = scim.call(3, Method::GET, &format!("/Users/{alice_id}"), None).await;
    assert_eq!(shown.body["groups"][0]["display"], "admin", "{}", shown.body);

    // Replace and patch compare versions: a stale If-Match is refused.
    let etag = shown.headers["etag"].to_str().unwrap().to_string();
    let patch = json!({ "Operations": [{ "op": "replace", "path": "name.givenName", "value": "Alicia" }] });
    let renamed =
        scim.call_with(1, Method::PATCH, &format!("/Users/{alice_id}"), patch.clone(), ("if-match", &etag)).await;
    assert_eq!(renamed.status, 200, "{}", renamed.body);
    assert_eq!(renamed.body["name"]["givenName"], "Alicia");
    let stale = scim.call_with(2, Method::PATCH, &format!("/Users/{alice_id}"), patch, ("if-match", &etag)).await;
    assert_eq!((stale.status, stale.code()), (412, Some("stale_version")), "{}", stale.body);
    let put = scim
        .call(
            2,
            Method::PUT,
            &format!("/Users/{bob_id}"),
            Some(json!({ "userName": "bob", "password": "bob-password-1" })),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert!(put.body["emails"].as_array().unwrap().is_empty(), "PUT replaces: {}", put.body);

    // Native sign-in for the tenant; roles come from the entry and its groups.
    let bind = cluster
        .call(1, Method::PUT, "/v1/tenants/acme/identity-provider", Some(&json!({ "kind": "native" })), &[])
        .await
        .unwrap();
    assert_eq!(bind.status, 200, "{}", bind.body);
    let refused = sign_in(&cluster, 2, "alice", "wrong-password", None).await.unwrap_err();
    assert_eq!((refused.status, refused.code()), (401, Some("invalid_credentials")));
    let unknown = sign_in(&cluster, 2, "mallory", "alice-password-1", None).await.unwrap_err();
    assert_eq!(
        (unknown.status, unknown.code()),
        (401, Some("invalid_credentials")),
        "unknown names get the same answer"
    );
    let carol_in = sign_in(&cluster, 2, "carol", "anything-at-all", None).await.unwrap_err();
    assert_eq!(carol_in.status, 401);
    let cookie = sign_in(&cluster, 1, "alice", "alice-password-1", None).await.expect("alice signs in");
    let me = with_cookie(&cluster, 3, &cookie, Method::GET, "/v1/auth/session", None).await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(
        (me.body["subject"].clone(), me.body["idp"].clone(), me.body["lob"].clone()),
        (json!("user:alice"), json!("native"), json!(["security"]))
    );
    let roles: Vec<&str> = me.body["roles"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(roles.contains(&"operator") && roles.contains(&"admin"), "{roles:?}");
    let key = with_cookie(
        &cluster,
        2,
        &cookie,
        Method::POST,
        "/v1/tenants/acme/apikeys",
        Some(json!({ "name": "alice-ci", "scopes": ["keys:read"] })),
    )
    .await;
    assert_eq!(key.status, 201, "{}", key.body);
    let alice_key = key.body["token"].as_str().unwrap().to_string();
    let bob_cookie = sign_in(&cluster, 3, "bob", "bob-password-1", None).await.expect("bob signs in");

    // TOTP: once enrolled, a code is needed and each code counts once.
    let enrolled =
        cluster.call(2, Method::POST, &format!("/v1/tenants/acme/users/{alice_id}/totp"), None, &[]).await.unwrap();
    assert_eq!(enrolled.status, 200, "{}", enrolled.body);
    assert!(enrolled.body["otpauth_uri"].as_str().unwrap().starts_with("otpauth://totp/"));
    let secret = enrolled.body["secret"].as_str().unwrap().to_string();
    let needs = sign_in(&cluster, 1, "alice", "alice-password-1", None).await.unwrap_err();
    assert_eq!((needs.status, needs.code()), (401, Some("mfa_required")));
    let wrong = sign_in(&cluster, 1, "alice", "alice-password-1", Some("000000")).await.unwrap_err();
    assert_eq!(wrong.code(), Some("invalid_credentials"));
    // A code whose step is about to end could be refused as a replay of itself below.
    let into_step = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() % 30;
    if into_step > 25 {
        tokio::time::sleep(Duration::from_secs(31 - into_step)).await;
    }
    let code = totp_now(&secret);
    let mfa_cookie = sign_in(&cluster, 3, "alice", "alice-password-1", Some(&code)).await.expect("with the code");
    let me = with_cookie(&cluster, 1, &mfa_cookie, Method::GET, "/v1/auth/session", None).await;
    assert_eq!(me.body["mfa_verified"], true, "{}", me.body);
    let replay = sign_in(&cluster, 2, "alice", "alice-password-1", Some(&code)).await.unwrap_err();
    assert_eq!((replay.status, replay.code()), (401, Some("totp_replayed")), "{}", replay.body);
    let shown = scim.call(1, Method::GET, &format!("/Users/{alice_id}"), None).await;
    assert_eq!(shown.body["urn:custos:params:scim:schemas:extension:2.0:User"]["mfaEnrolled"], true);

    // Deprovisioning: deleting alice ends both her sessions and revokes her key, everywhere.
    let deleted = scim.call(2, Method::DELETE, &format!("/Users/{alice_id}"), None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    for node in 1..=3 {
        for session in [&cookie, &mfa_cookie] {
            let ended = eventually(Duration::from_secs(5), async || {
                with_cookie(&cluster, node, session, Method::GET, "/v1/auth/session", None).await.status == 401
            });
            assert!(ended.await, "a deleted person's session ends on node {node}");
        }
        let key = eventually(Duration::from_secs(5), async || {
            cluster.call_as(node, &alice_key, Method::GET, "/v1/tenants/acme/keys", None, &[]).await.unwrap().status
                == 401
        });
        assert!(key.await, "a deleted person's API key stops on node {node}");
    }
    assert_eq!(
        sign_in(&cluster, 1, "alice", "alice-password-1", Some(&totp_now(&secret))).await.unwrap_err().status,
        401
    );
    let gone = scim.call(3, Method::GET, &format!("/Users/{alice_id}"), None).await;
    assert_eq!(gone.status, 404);
    let group = scim.call(3, Method::GET, &format!("/Groups/{group_id}"), None).await;
    assert_eq!(group.body["members"], json!([]), "deleting a person takes them out of their groups");
    // Deactivating (Entra ID sends the boolean as a string) ends bob's session.
    let off = json!({ "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{ "op": "Replace", "value": { "active": "False" } }] });
    let deactivated = scim.call(1, Method::PATCH, &format!("/Users/{bob_id}"), Some(off)).await;
    assert_eq!((deactivated.status, deactivated.body["active"].clone()), (200, json!(false)), "{}", deactivated.body);
    let ended = eventually(Duration::from_secs(5), async || {
        with_cookie(&cluster, 2, &bob_cookie, Method::GET, "/v1/auth/session", None).await.status == 401
    });
    assert!(ended.await, "a deactivated person's session ends");

    // Another tenant's directory is out of reach of acme's provisioning key.
    for (method, route, body) in tenant_routes().into_iter().filter(|(_, r, _)| r.starts_with("/scim/")) {
        let path = route.replace("{t}", "globex");
        let reply = cluster.call_as(1, &scim.token, method.clone(), &path, body.as_ref(), &[]).await.unwrap();
        assert!(matches!(reply.status, 403 | 404), "{method} {path}: {} {}", reply.status, reply.body);
    }

    // The audit trail records each directory change and never a password or TOTP secret.
    // Without Kafka each node keeps the events of the requests it answered.
    let mut text = String::new();
    for node in 1..=3 {
        text.push_str(&cluster.get(node, "/v1/tenants/acme/audit?limit=1000").await.unwrap().body.to_string());
    }
    for kind in [
        "directory.user_create",
        "directory.user_update",
        "directory.user_delete",
        "directory.group_create",
        "directory.group_update",
        "access.identity_provider",
        "auth.login",
    ] {
        assert!(text.contains(&format!("dev.custos.{kind}")), "{kind} is audited");
    }
    assert!(!text.contains("alice-password-1") && !text.contains(&secret), "no secret in the audit trail");
}

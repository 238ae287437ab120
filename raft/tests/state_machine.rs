//! The governance state machine applies each request once and enforces tenant lifecycle rules.

use custos_raft::access::{AccessPolicy, CustomRole, LoginState, SecretMatch, SessionRecord};
use custos_raft::directory::{DirectoryGroup, DirectoryUser, NativeSignIn};
use custos_raft::store::{self, StateMachineStore};
use custos_raft::{
    ApiKeyId, CarriedAudit, CarriedPosition, Command, CoreProviderKind, DirectoryId, GrantId, KeyAlgorithm, KeyChange,
    KeyId, KeyPurpose, KeyState, Output, Proposal, Proposals, RegionLabel, Rejection, RequestId, SessionId,
    TenantCustody, TenantId, TenantStatus, TypeConfig,
};
use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

fn proposal(index: u64, request_id: &str, command: Command) -> Proposal {
    Proposal { request_id: RequestId::new(request_id).unwrap(), proposed_at_ms: 1_000 + index, command }
}

fn batch(index: u64, proposals: Vec<Proposal>) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposals(proposals)),
    }
}

fn entry(index: u64, request_id: &str, command: Command) -> Entry<TypeConfig> {
    batch(index, vec![proposal(index, request_id, command)])
}

fn tenant(id: &str) -> TenantId {
    TenantId::new(id).unwrap()
}

fn create(id: &str) -> Command {
    Command::CreateTenant {
        id: tenant(id),
        display_name: format!("Tenant {id}"),
        region: RegionLabel::new("eu-west").unwrap(),
        custody: TenantCustody {
            provider: CoreProviderKind::SealedLocal,
            root: format!("root of {id}").into_bytes(),
            kek_wrapped: format!("kek of {id}").into_bytes(),
            keys_created: 0,
        },
    }
}

fn key(id: &str) -> KeyId {
    KeyId::new(id).unwrap()
}

fn create_key(tenant_id: &str, key_id: &str, material: &[u8]) -> Command {
    Command::CreateKey {
        tenant: tenant(tenant_id),
        key: key(key_id),
        purpose: KeyPurpose::EncryptDecrypt,
        algorithm: KeyAlgorithm::Aes256Gcm,
        rotation_period_ms: None,
        material: material.to_vec(),
    }
}

fn rotate(tenant_id: &str, key_id: &str, expected_latest: u32) -> Command {
    Command::RotateKey {
        tenant: tenant(tenant_id),
        key: key(key_id),
        expected_latest,
        material: format!("v{}", expected_latest + 1).into_bytes(),
    }
}

fn change(tenant_id: &str, key_id: &str, change: KeyChange) -> Command {
    Command::ChangeKey { tenant: tenant(tenant_id), key: key(key_id), change }
}

async fn apply(sm: &mut StateMachineStore, e: Entry<TypeConfig>) -> custos_raft::Response {
    let mut responses = sm.apply([e]).await.expect("apply").pop().expect("one entry");
    assert_eq!(responses.len(), 1);
    responses.pop().expect("one response")
}

#[tokio::test]
async fn retried_request_applies_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, reader) = store::open(dir.path(), custos_raft::store::StoreOptions::default()).unwrap();

    // First attempt creates the tenant.
    let first = apply(&mut sm, entry(1, "req-1", create("acme"))).await;
    assert!(!first.replayed);
    assert!(matches!(first.outcome, Ok(Output::Tenant(ref t)) if t.revision == 1));

    // The retry (same id, same command, later log index) replays the first outcome.
    let retry = apply(&mut sm, entry(2, "req-1", create("acme"))).await;
    assert!(retry.replayed);
    assert_eq!(retry.outcome, first.outcome);

    // A new request id for the same create is refused: the tenant exists.
    let again = apply(&mut sm, entry(3, "req-2", create("acme"))).await;
    assert_eq!(again.outcome, Err(Rejection::TenantExists(tenant("acme"))));

    // Reusing an id for another command is refused rather than silently replayed.
    let reused = apply(&mut sm, entry(4, "req-1", create("other"))).await;
    assert_eq!(reused.outcome, Err(Rejection::RequestIdReused(RequestId::new("req-1").unwrap())));
    assert!(reader.tenant(&tenant("other")).unwrap().is_none());
}

#[tokio::test]
async fn a_snapshot_records_where_it_ends_and_a_follower_is_sent_a_copy_kept_until_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, _reader) = store::open(dir.path(), custos_raft::store::StoreOptions::default()).unwrap();
    assert!(sm.get_current_snapshot().await.unwrap().is_none(), "nothing to send before the first snapshot");

    apply(&mut sm, entry(1, "req-1", create("acme"))).await;
    let built = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(1));
    let current = sm.get_current_snapshot().await.unwrap().expect("a snapshot was built");
    assert_eq!(current.meta, built.meta, "nothing applied since: the same snapshot");

    // Later applies are in the data sent, under a meta that says how far it goes.
    apply(&mut sm, entry(2, "req-2", create("beta"))).await;
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.last_log_id.map(|l| l.index), Some(2));
    let other = tempfile::tempdir().unwrap();
    let (_other_log, mut follower, follower_reader) =
        store::open(other.path(), custos_raft::store::StoreOptions::default()).unwrap();
    follower.install_snapshot(&current.meta, current.snapshot).await.unwrap();
    assert!(follower_reader.tenant(&tenant("acme")).unwrap().is_some());
    assert!(follower_reader.tenant(&tenant("beta")).unwrap().is_some());
    assert_eq!(follower.applied_state().await.unwrap().0.map(|l| l.index), Some(2));
    assert_eq!(follower.get_current_snapshot().await.unwrap().unwrap().meta, current.meta);

    // The copy a follower was sent serves the next one until another snapshot is recorded.
    apply(&mut sm, entry(3, "req-3", create("gamma"))).await;
    let reused = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(reused.meta, current.meta, "the log after the copy is still there");
    sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let fresh = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(fresh.meta.last_log_id.map(|l| l.index), Some(3));
}

#[tokio::test(start_paused = true)]
async fn a_copy_kept_for_followers_is_dropped_after_a_minute() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, _reader) = store::open(dir.path(), custos_raft::store::StoreOptions::default()).unwrap();
    apply(&mut sm, entry(1, "req-1", create("acme"))).await;
    sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let sent = sm.get_current_snapshot().await.unwrap().unwrap();
    let other = tempfile::tempdir().unwrap();
    let (_other_log, mut follower, _) = store::open(other.path(), custos_raft::store::StoreOptions::default()).unwrap();
    follower.install_snapshot(&sent.meta, sent.snapshot).await.unwrap();

    apply(&mut sm, entry(2, "req-2", create("beta"))).await;
    let index = |s: &openraft::Snapshot<TypeConfig>| s.meta.last_log_id.map(|l| l.index);
    assert_eq!(index(&sm.get_current_snapshot().await.unwrap().unwrap()), Some(1), "kept");
    tokio::time::sleep(std::time::Duration::from_secs(61)).await;
    assert_eq!(index(&sm.get_current_snapshot().await.unwrap().unwrap()), Some(2), "dropped after a minute");
}

#[tokio::test]
async fn tenant_lifecycle_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, reader) = store::open(dir.path(), custos_raft::store::StoreOptions::default()).unwrap();
    apply(&mut sm, entry(1, "c", create("acme"))).await;

    // Suspend, resume, and a status the tenant already has are all accepted.
    for (i, status) in [(2, TenantStatus::Suspended), (3, TenantStatus::Suspended), (4, TenantStatus::Active)] {
        let r =
            apply(&mut sm, entry(i, &format!("s{i}"), Command::SetTenantStatus { id: tenant("acme"), status })).await;
        assert!(matches!(r.outcome, Ok(Output::Tenant(ref t)) if t.status == status), "{r:?}");
    }

    // Delete tombstones: the record stays, marked deleted, and nothing revives it.
    let deleted = apply(&mut sm, entry(5, "d", Command::DeleteTenant { id: tenant("acme") })).await;
    assert!(matches!(deleted.outcome, Ok(Output::Tenant(ref t)) if t.status == TenantStatus::Deleted));
    let resume =
        apply(&mut sm, entry(6, "r", Command::SetTenantStatus { id: tenant("acme"), status: TenantStatus::Active }))
            .await;
    assert_eq!(resume.outcome, Err(Rejection::TenantDeleted(tenant("acme"))));
    let recreate = apply(&mut sm, entry(7, "c2", create("acme"))).await;
    assert_eq!(recreate.outcome, Err(Rejection::TenantExists(tenant("acme"))));
    assert_eq!(reader.tenant(&tenant("acme")).unwrap().unwrap().status, TenantStatus::Deleted);

    // Unknown tenants are reported as such.
    let missing = apply(&mut sm, entry(8, "m", Command::DeleteTenant { id: tenant("nobody") })).await;
    assert_eq!(missing.outcome, Err(Rejection::TenantNotFound(tenant("nobody"))));
}

#[tokio::test]
async fn request_records_expire_after_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, _reader) =
        store::open(dir.path(), custos_raft::store::StoreOptions { dedup_window_entries: 1_000, ..Default::default() })
            .unwrap();
    apply(&mut sm, entry(1, "old", create("t1"))).await;
    // Far beyond the window the old id is forgotten, so it is applied as a new request.
    for i in 2..=1_010 {
        sm.apply([Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), i), payload: EntryPayload::Blank }])
            .await
            .unwrap();
    }
    let late = apply(&mut sm, entry(1_011, "old", Command::DeleteTenant { id: tenant("t1") })).await;
    assert!(!late.replayed);
}

#[tokio::test]
async fn proposals_batched_in_one_entry_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, reader) = store::open(dir.path(), custos_raft::store::StoreOptions::default()).unwrap();
    let suspend = Command::SetTenantStatus { id: tenant("acme"), status: TenantStatus::Suspended };
    // Create, then suspend the same tenant, then a retry of the create, all in one entry.
    let responses = sm
        .apply([batch(
            1,
            vec![proposal(1, "c", create("acme")), proposal(1, "s", suspend), proposal(1, "c", create("acme"))],
        )])
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(responses.len(), 3);
    assert!(matches!(responses[0].outcome, Ok(Output::Tenant(ref t)) if t.status == TenantStatus::Active));
    assert!(matches!(responses[1].outcome, Ok(Output::Tenant(ref t)) if t.status == TenantStatus::Suspended));
    assert!(responses[2].replayed, "the retry inside the same entry replays the first outcome");
    assert_eq!(responses[2].outcome, responses[0].outcome);
    assert_eq!(reader.tenant(&tenant("acme")).unwrap().unwrap().status, TenantStatus::Suspended);
}

#[tokio::test]
async fn entries_applied_in_one_call_see_each_other_and_expire_across_it() {
    let dir = tempfile::tempdir().unwrap();
    // A dedup window of 10 entries, so a request record written by this call also expires in it.
    let (_log, mut sm, reader) =
        store::open(dir.path(), custos_raft::store::StoreOptions { dedup_window_entries: 10, ..Default::default() })
            .unwrap();
    let blank = |i| Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), i), payload: EntryPayload::Blank };
    let suspend = Command::SetTenantStatus { id: tenant("acme"), status: TenantStatus::Suspended };
    // More entries than one engine write takes: a create, a retry of it past the window (both in
    // the first engine write), then a suspend of the tenant in the second.
    let mut entries = vec![entry(1, "c", create("acme"))];
    entries.extend((2..20).map(blank));
    entries.push(entry(20, "c", create("acme")));
    entries.extend((21..150).map(blank));
    entries.push(entry(150, "s", suspend));
    let responses = sm.apply(entries).await.unwrap();
    assert_eq!(responses.len(), 150);
    // The create's record expired before the retry, though neither was written to the engine
    // yet: the retry is a new request, refused because the tenant exists.
    assert!(!responses[19][0].replayed);
    assert_eq!(responses[19][0].outcome, Err(Rejection::TenantExists(tenant("acme"))));
    assert!(matches!(responses[149][0].outcome, Ok(Output::Tenant(ref t)) if t.status == TenantStatus::Suspended));
    assert_eq!(reader.tenant(&tenant("acme")).unwrap().unwrap().status, TenantStatus::Suspended);
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|id| id.index), Some(150));
}

#[tokio::test]
async fn change_feed_lists_each_tenant_once_at_its_latest_revision() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, reader) = store::open(dir.path(), custos_raft::store::StoreOptions::default()).unwrap();
    apply(&mut sm, entry(1, "a", create("alpha"))).await;
    apply(&mut sm, entry(2, "b", create("beta"))).await;
    apply(&mut sm, entry(3, "s", Command::SetTenantStatus { id: tenant("alpha"), status: TenantStatus::Suspended }))
        .await;

    // From the start: beta (2), then alpha at its newer revision (3); no stale alpha entry.
    let all: Vec<(String, u64)> = reader
        .tenants_changed_after(0, None, 100)
        .unwrap()
        .into_iter()
        .map(|t| (t.id.to_string(), t.revision))
        .collect();
    assert_eq!(all, [("beta".to_string(), 2), ("alpha".to_string(), 3)]);
    // After revision 2 only the later change remains; the limit bounds a page.
    let later: Vec<String> =
        reader.tenants_changed_after(2, None, 100).unwrap().into_iter().map(|t| t.id.to_string()).collect();
    assert_eq!(later, ["alpha"]);
    let first = reader.tenants_changed_after(0, None, 1).unwrap();
    assert_eq!(first.len(), 1);
    let next = reader.tenants_changed_after(first[0].revision, Some(&first[0].id), 1).unwrap();
    assert_eq!(next[0].id.as_str(), "alpha", "paging resumes after the last tenant returned");
    assert!(reader.tenants_changed_after(3, None, 100).unwrap().is_empty());
}

#[tokio::test]
async fn a_retried_create_with_fresh_material_replays_and_remembers_no_material() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, reader) = store::open(dir.path(), custos_raft::store::StoreOptions::default()).unwrap();
    apply(&mut sm, entry(1, "t", create("acme"))).await;
    let first = apply(&mut sm, entry(2, "k", create_key("acme", "orders", b"material-one"))).await;
    // The retry went through another node, which generated other material: same request.
    let retry = apply(&mut sm, entry(3, "k", create_key("acme", "orders", b"material-two"))).await;
    assert!(retry.replayed);
    assert_eq!(retry.outcome, first.outcome);
    assert_eq!(reader.key_version(&tenant("acme"), &key("orders"), 1).unwrap().unwrap().wrapped, b"material-one");
    // A reused id for another key is still refused.
    let reused = apply(&mut sm, entry(4, "k", create_key("acme", "invoices", b"m"))).await;
    assert_eq!(reused.outcome, Err(Rejection::RequestIdReused(RequestId::new("k").unwrap())));
}

#[tokio::test]
async fn key_lifecycle_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, reader) = store::open(dir.path(), custos_raft::store::StoreOptions::default()).unwrap();
    apply(&mut sm, entry(1, "t", create("acme"))).await;
    let created = apply(&mut sm, entry(2, "k1", create_key("acme", "orders", b"v1"))).await;
    assert!(matches!(created.outcome, Ok(Output::Key(ref k)) if k.latest_version == 1 && k.state == KeyState::Enabled));
    let dup = apply(&mut sm, entry(3, "k2", create_key("acme", "orders", b"x"))).await;
    assert_eq!(dup.outcome, Err(Rejection::KeyExists(key("orders"))));

    // Rotation is a compare-and-set on the latest version: a second rotation from the same
    // starting point adds nothing.
    let rotated = apply(&mut sm, entry(4, "r1", rotate("acme", "orders", 1))).await;
    assert!(matches!(rotated.outcome, Ok(Output::Key(ref k)) if k.latest_version == 2));
    let stale = apply(&mut sm, entry(5, "r2", rotate("acme", "orders", 1))).await;
    assert_eq!(stale.outcome, Err(Rejection::StaleKeyVersion { key: key("orders"), expected: 1, latest: 2 }));

    // Minimum decryption version stays within the versions that exist.
    let too_high = apply(
        &mut sm,
        entry(
            6,
            "m1",
            change(
                "acme",
                "orders",
                KeyChange::Configure { min_decryption_version: Some(3), rotation_period_ms: None },
            ),
        ),
    )
    .await;
    assert!(matches!(too_high.outcome, Err(Rejection::InvalidKeyChange(_))));
    let min = apply(
        &mut sm,
        entry(
            7,
            "m2",
            change(
                "acme",
                "orders",
                KeyChange::Configure { min_decryption_version: Some(2), rotation_period_ms: None },
            ),
        ),
    )
    .await;
    assert!(matches!(min.outcome, Ok(Output::Key(ref k)) if k.min_decryption_version == 2));

    // A disabled key refuses rotation; enabling brings it back.
    apply(&mut sm, entry(8, "d", change("acme", "orders", KeyChange::Disable))).await;
    let refused = apply(&mut sm, entry(9, "r3", rotate("acme", "orders", 2))).await;
    assert_eq!(refused.outcome, Err(Rejection::KeyNotEnabled { key: key("orders"), state: "disabled".into() }));
    apply(&mut sm, entry(10, "e", change("acme", "orders", KeyChange::Enable))).await;

    // Destruction only once scheduled and due (entry 11 is proposed at 1011 ms).
    let early =
        apply(&mut sm, entry(11, "x0", Command::DestroyKey { tenant: tenant("acme"), key: key("orders") })).await;
    assert!(matches!(early.outcome, Err(Rejection::KeyNotEnabled { .. })));
    apply(&mut sm, entry(12, "s", change("acme", "orders", KeyChange::ScheduleDestroy { delay_ms: 2 }))).await;
    let not_due =
        apply(&mut sm, entry(13, "x1", Command::DestroyKey { tenant: tenant("acme"), key: key("orders") })).await;
    assert_eq!(not_due.outcome, Err(Rejection::DestroyNotDue { key: key("orders"), at_ms: 1_014 }));
    let destroyed =
        apply(&mut sm, entry(14, "x2", Command::DestroyKey { tenant: tenant("acme"), key: key("orders") })).await;
    assert!(matches!(destroyed.outcome, Ok(Output::Key(ref k)) if k.state == KeyState::Destroyed));
    for version in 1..=2 {
        assert!(reader.key_version(&tenant("acme"), &key("orders"), version).unwrap().is_none());
    }
    let after = apply(&mut sm, entry(15, "e2", change("acme", "orders", KeyChange::Enable))).await;
    assert_eq!(after.outcome, Err(Rejection::KeyDestroyed(key("orders"))));
    let recreate = apply(&mut sm, entry(16, "k3", create_key("acme", "orders", b"x"))).await;
    assert_eq!(recreate.outcome, Err(Rejection::KeyExists(key("orders"))), "key ids are never reused");
}

#[tokio::test]
async fn keys_need_an_active_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, _reader) = store::open(dir.path(), custos_raft::store::StoreOptions::default()).unwrap();
    let none = apply(&mut sm, entry(1, "k0", create_key("ghost", "k", b"m"))).await;
    assert_eq!(none.outcome, Err(Rejection::TenantNotFound(tenant("ghost"))));
    apply(&mut sm, entry(2, "t", create("acme"))).await;
    apply(&mut sm, entry(3, "s", Command::SetTenantStatus { id: tenant("acme"), status: TenantStatus::Suspended }))
        .await;
    let suspended = apply(&mut sm, entry(4, "k1", create_key("acme", "k", b"m"))).await;
    assert_eq!(suspended.outcome, Err(Rejection::TenantNotActive(tenant("acme"))));
}

#[tokio::test]
async fn deleting_a_tenant_shreds_its_roots_then_purges_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, reader) = store::open(dir.path(), custos_raft::store::StoreOptions::default()).unwrap();
    apply(&mut sm, entry(1, "t", create("acme"))).await;
    apply(&mut sm, entry(2, "u", create("other"))).await;
    let mut index = 3;
    for k in 0..40 {
        apply(&mut sm, entry(index, &format!("k{k}"), create_key("acme", &format!("key-{k}"), b"m"))).await;
        index += 1;
        apply(&mut sm, entry(index, &format!("r{k}"), rotate("acme", &format!("key-{k}"), 1))).await;
        index += 1;
    }
    apply(&mut sm, entry(index, "o", create_key("other", "kept", b"m"))).await;
    index += 1;
    assert!(reader.custody(&tenant("acme")).unwrap().is_some());

    apply(&mut sm, entry(index, "d", Command::DeleteTenant { id: tenant("acme") })).await;
    index += 1;
    // The roots are gone with the delete itself.
    assert!(reader.custody(&tenant("acme")).unwrap().is_none());
    // 120 key records (40 keys, 80 versions) go 64 per entry; later entries finish the job.
    for _ in 0..3 {
        sm.apply([Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Blank }])
            .await
            .unwrap();
        index += 1;
    }
    assert!(reader.keys(&tenant("acme"), None, 1000).unwrap().is_empty());
    assert!(reader.key_version(&tenant("acme"), &key("key-0"), 1).unwrap().is_none());
    // Other tenants keep theirs.
    assert!(reader.custody(&tenant("other")).unwrap().is_some());
    assert_eq!(reader.keys(&tenant("other"), None, 10).unwrap().len(), 1);
}

#[tokio::test]
async fn a_deleted_tenants_external_root_stays_pending_until_recorded_destroyed() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, reader) = store::open(dir.path(), custos_raft::store::StoreOptions::default()).unwrap();
    let mut on_vault = create("bank");
    if let Command::CreateTenant { custody, .. } = &mut on_vault {
        custody.provider = CoreProviderKind::Vault;
        custody.root = b"{\"namespace\":\"custos/bank\"}".to_vec();
    }
    apply(&mut sm, entry(1, "v", on_vault)).await;
    apply(&mut sm, entry(2, "l", create("local"))).await;
    apply(&mut sm, entry(3, "d1", Command::DeleteTenant { id: tenant("bank") })).await;
    apply(&mut sm, entry(4, "d2", Command::DeleteTenant { id: tenant("local") })).await;

    // Only the root held outside governance state waits, with where it is but no key material.
    let pending = reader.pending_shreds(10).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!((pending[0].tenant.as_str(), pending[0].provider), ("bank", CoreProviderKind::Vault));
    assert!(reader.custody(&tenant("bank")).unwrap().is_none(), "the wrapped KEK is gone at once");

    apply(&mut sm, entry(5, "x", Command::RootDestroyed { tenant: tenant("bank") })).await;
    assert!(reader.pending_shreds(10).unwrap().is_empty());
}

fn api_key(id: &str) -> ApiKeyId {
    ApiKeyId::new(id).unwrap()
}

fn create_api_key(tenant_id: &str, id: &str, secret: u8) -> Command {
    Command::CreateApiKey {
        tenant: tenant(tenant_id),
        id: api_key(id),
        name: "ci".into(),
        scopes: vec!["keys:encrypt".into()],
        tier: "standard".into(),
        created_by: "user:alice".into(),
        secret_sha256: [secret; 32],
        rotation_period_ms: 100_000,
    }
}

#[tokio::test]
async fn api_keys_rotate_with_an_overlap_and_revoke_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, reader) = store::open(dir.path(), custos_raft::store::StoreOptions::default()).unwrap();
    apply(&mut sm, entry(1, "t", create("acme"))).await;

    // Created at 1002: the secret works until its rotation period ends.
    let created = apply(&mut sm, entry(2, "k", create_api_key("acme", "key1", 1))).await;
    assert!(matches!(created.outcome, Ok(Output::ApiKey(ref k)) if k.expires_at_ms == 101_002));
    let stored = reader.api_key_by_id(&api_key("key1")).unwrap().expect("indexed by id");
    assert_eq!(stored.check_secret(&[1; 32], 101_001), Some(SecretMatch::Current));
    assert_eq!(stored.check_secret(&[1; 32], 101_002), None);

    // A retry from another node carries another secret: it replays, and the first hash stays.
    let retry = apply(&mut sm, entry(3, "k", create_api_key("acme", "key1", 9))).await;
    assert!(retry.replayed);
    assert_eq!(reader.api_key_by_id(&api_key("key1")).unwrap().unwrap().secret_sha256, [1; 32]);

    // Rotation at 1004 with a 500 ms overlap: both secrets work until 1504, then only the new.
    let rotate =
        Command::RotateApiKey { tenant: tenant("acme"), id: api_key("key1"), secret_sha256: [2; 32], overlap_ms: 500 };
    apply(&mut sm, entry(4, "r", rotate)).await.outcome.unwrap();
    let rotated = reader.api_key_by_id(&api_key("key1")).unwrap().unwrap();
    assert_eq!(rotated.check_secret(&[1; 32], 1_503), Some(SecretMatch::Previous));
    assert_eq!(rotated.check_secret(&[1; 32], 1_504), None);
    assert_eq!(rotated.check_secret(&[2; 32], 1_504), Some(SecretMatch::Current));
    assert_eq!(rotated.expires_at_ms, 101_004);

    // Revocation ends every secret and cannot be rotated away.
    let revoke = Command::RevokeApiKey { tenant: tenant("acme"), id: api_key("key1") };
    apply(&mut sm, entry(5, "v", revoke)).await.outcome.unwrap();
    let revoked = reader.api_key(&tenant("acme"), &api_key("key1")).unwrap().unwrap();
    assert_eq!(revoked.check_secret(&[2; 32], 1_006), None);
    let again =
        Command::RotateApiKey { tenant: tenant("acme"), id: api_key("key1"), secret_sha256: [3; 32], overlap_ms: 0 };
    assert_eq!(apply(&mut sm, entry(6, "r2", again)).await.outcome, Err(Rejection::ApiKeyRevoked(api_key("key1"))));

    // Ids are global: another tenant cannot reuse one; keys list per tenant.
    apply(&mut sm, entry(7, "t2", create("globex"))).await;
    let clash = apply(&mut sm, entry(8, "k2", create_api_key("globex", "key1", 4))).await;
    assert_eq!(clash.outcome, Err(Rejection::ApiKeyExists(api_key("key1"))));
    assert_eq!(reader.api_keys(&tenant("acme"), None, 10).unwrap().len(), 1);
    assert!(reader.api_keys(&tenant("globex"), None, 10).unwrap().is_empty());
}

#[tokio::test]
async fn grants_expire_by_themselves_and_policies_compare_and_set() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, reader) = store::open(dir.path(), custos_raft::store::StoreOptions::default()).unwrap();
    apply(&mut sm, entry(1, "t", create("acme"))).await;

    // A grant proposed at 1002 for one minute expires at 61002, and is dropped by the first
    // write after that.
    let grant_for = |id: &str, duration_ms| Command::GrantAccess {
        tenant: tenant("acme"),
        id: GrantId::new(id).unwrap(),
        subject: "user:bob".into(),
        permissions: vec!["keys:destroy".into()],
        reason: "incident 42".into(),
        granted_by: "user:alice".into(),
        duration_ms,
    };
    let grant = |id: &str| grant_for(id, 60_000);
    let granted = apply(&mut sm, entry(2, "g1", grant("g1"))).await;
    assert!(matches!(granted.outcome, Ok(Output::Grant(ref g)) if g.expires_at_ms == 61_002));
    let later = Proposal { request_id: RequestId::new("g2").unwrap(), proposed_at_ms: 61_002, command: grant("g2") };
    apply(&mut sm, batch(3, vec![later])).await.outcome.unwrap();
    let grants = reader.access(&tenant("acme")).unwrap().unwrap().grants;
    assert_eq!(grants.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(), ["g2"]);

    // Too long a grant is refused.
    let long = grant_for("g3", 13 * 3600 * 1000);
    assert!(matches!(apply(&mut sm, entry(4, "g3", long)).await.outcome, Err(Rejection::InvalidAccess(_))));

    // Policy documents are replaced with compare-and-set on their own revision (0 = unwritten).
    let policy = AccessPolicy {
        roles: vec![CustomRole {
            name: "auditor".into(),
            description: String::new(),
            permissions: vec!["audit:read".into()],
        }],
        ..AccessPolicy::default()
    };
    let put = |expected| Command::PutAccessPolicy {
        tenant: tenant("acme"),
        policy: policy.clone(),
        expected_revision: expected,
    };
    apply(&mut sm, entry(5, "p1", put(Some(0)))).await.outcome.unwrap();
    let stale = apply(&mut sm, entry(6, "p2", put(Some(0)))).await;
    assert_eq!(stale.outcome, Err(Rejection::StalePolicyRevision { tenant: tenant("acme"), expected: 0, actual: 5 }));
    apply(&mut sm, entry(7, "p3", put(Some(5)))).await.outcome.unwrap();
    let access = reader.access(&tenant("acme")).unwrap().unwrap();
    assert_eq!((access.policy.revision, access.policy.roles.len(), access.grants.len()), (7, 1, 1));

    // A deleted tenant takes no access writes.
    apply(&mut sm, entry(8, "d", Command::DeleteTenant { id: tenant("acme") })).await;
    assert_eq!(apply(&mut sm, entry(9, "p4", put(None))).await.outcome, Err(Rejection::TenantDeleted(tenant("acme"))));
}

fn login(state: &str) -> Command {
    Command::BeginLogin {
        login: LoginState {
            state: state.into(),
            nonce: "n".into(),
            pkce_verifier_sealed: vec![1, 2, 3],
            provider: "keycloak".into(),
            tenant: None,
            return_to: None,
            created_at_ms: 0,
            expires_at_ms: 600_000,
        },
    }
}

fn complete(state: &str, session: &str) -> Command {
    Command::CompleteLogin {
        state: state.into(),
        session: SessionRecord {
            id: SessionId::new(session).unwrap(),
            secret_sha256: [7; 32],
            subject: "user:alice".into(),
            tenant: Some(tenant("acme")),
            roles: vec!["admin".into()],
            lob: vec![],
            mfa_verified: false,
            idp: "keycloak".into(),
            idp_sub: "a1".into(),
            created_at_ms: 0,
            last_seen_ms: 0,
            idle_timeout_ms: 1_000,
            expires_at_ms: 10_000,
            revoked_at_ms: None,
        },
        max_sessions_per_user: 2,
    }
}

#[tokio::test]
async fn sign_ins_complete_once_and_sessions_are_bounded_per_person() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, reader) = store::open(dir.path(), custos_raft::store::StoreOptions::default()).unwrap();
    apply(&mut sm, entry(1, "t", create("acme"))).await;

    // A sign-in completes once: the state is consumed with the session's creation.
    apply(&mut sm, entry(2, "l1", login("state-1"))).await.outcome.unwrap();
    assert!(reader.login("state-1").unwrap().is_some());
    let created = apply(&mut sm, entry(3, "c1", complete("state-1", "s1"))).await;
    assert!(
        matches!(created.outcome, Ok(Output::Session(ref s)) if s.created_at_ms == 1_003 && s.expires_at_ms == 11_003)
    );
    assert!(reader.login("state-1").unwrap().is_none());
    let again = apply(&mut sm, entry(4, "c1-again", complete("state-1", "s1b"))).await;
    assert_eq!(again.outcome, Err(Rejection::LoginNotFound));

    // A sign-in past its expiry is refused (proposed after the ten minutes it had).
    apply(&mut sm, entry(5, "l2", login("state-2"))).await.outcome.unwrap();
    let late = Proposal {
        request_id: RequestId::new("c2").unwrap(),
        proposed_at_ms: 700_000,
        command: complete("state-2", "s2"),
    };
    assert_eq!(apply(&mut sm, batch(6, vec![late])).await.outcome, Err(Rejection::LoginNotFound));

    // Two sessions per person: the third ends the oldest, in the same apply.
    for (index, state, session) in [(7, "state-3", "s3"), (9, "state-4", "s4")] {
        apply(&mut sm, entry(index, &format!("l-{state}"), login(state))).await.outcome.unwrap();
        apply(&mut sm, entry(index + 1, &format!("c-{state}"), complete(state, session))).await.outcome.unwrap();
    }
    let live = |id: &str, at| reader.session(&SessionId::new(id).unwrap()).unwrap().is_some_and(|s| s.live_at(at));
    assert!(!live("s1", 1_011), "the oldest session was ended");
    assert!(live("s3", 1_011) && live("s4", 1_011));

    // Idle sessions lapse unless touched; revoked ones stay ended.
    assert!(!live("s3", 2_009), "idle for a second");
    let touch = Proposal {
        request_id: RequestId::new("touch").unwrap(),
        proposed_at_ms: 1_900,
        command: Command::TouchSession { id: SessionId::new("s3").unwrap(), at_ms: 1_900 },
    };
    apply(&mut sm, batch(11, vec![touch])).await.outcome.unwrap();
    assert!(live("s3", 2_009));
    apply(&mut sm, entry(12, "revoke", Command::RevokeSession { id: SessionId::new("s3").unwrap() }))
        .await
        .outcome
        .unwrap();
    assert!(!live("s3", 1_013));
}

fn directory_user(id: &str, name: &str) -> DirectoryUser {
    DirectoryUser {
        id: DirectoryId::new(id).unwrap(),
        user_name: name.into(),
        external_id: None,
        display_name: None,
        given_name: None,
        family_name: None,
        emails: vec![],
        active: true,
        roles: vec![],
        lob: vec![],
        password_hash: None,
        totp_sealed: None,
        totp_last_step: 0,
        created_at_ms: 0,
        modified_at_ms: 0,
        revision: 0,
    }
}

fn put_user(user: DirectoryUser, expected_revision: Option<u64>) -> Command {
    Command::PutDirectoryUser { tenant: tenant("acme"), user, expected_revision }
}

#[tokio::test]
async fn directory_names_are_unique_and_versions_compare_and_set() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, reader) = store::open(dir.path(), custos_raft::store::StoreOptions::default()).unwrap();
    apply(&mut sm, entry(1, "t", create("acme"))).await;
    apply(&mut sm, entry(2, "u1", put_user(directory_user("u1", "alice"), None))).await.outcome.unwrap();
    // The same name in another case is the same name; the same id cannot be created twice.
    let clash = apply(&mut sm, entry(3, "u2", put_user(directory_user("u2", "ALICE"), None))).await;
    assert!(matches!(clash.outcome, Err(Rejection::DirectoryConflict(_))), "{clash:?}");
    let again = apply(&mut sm, entry(4, "u1b", put_user(directory_user("u1", "alice2"), None))).await;
    assert!(matches!(again.outcome, Err(Rejection::DirectoryConflict(_))));
    // A replace names the version it read.
    let stale = apply(&mut sm, entry(5, "r1", put_user(directory_user("u1", "alice"), Some(1)))).await;
    assert!(matches!(stale.outcome, Err(Rejection::StaleDirectoryRevision { actual: 2, .. })));
    let renamed = apply(&mut sm, entry(6, "r2", put_user(directory_user("u1", "alice.m"), Some(2)))).await;
    assert!(matches!(renamed.outcome, Ok(Output::DirectoryUser(ref u)) if u.revision == 6 && u.created_at_ms == 1_002));
    // The old name is free again and the new one finds the user.
    assert!(reader.directory_user_by_name(&tenant("acme"), "alice").unwrap().is_none());
    assert_eq!(reader.directory_user_by_name(&tenant("acme"), "Alice.M").unwrap().unwrap().id.as_str(), "u1");
    apply(&mut sm, entry(7, "u3", put_user(directory_user("u3", "alice"), None))).await.outcome.unwrap();

    // Groups hold only users of the directory; deleting a user takes it out of its groups.
    let group = |members: &[&str]| DirectoryGroup {
        id: DirectoryId::new("g1").unwrap(),
        display_name: "admin".into(),
        external_id: None,
        members: members.iter().map(|m| DirectoryId::new(*m).unwrap()).collect(),
        created_at_ms: 0,
        modified_at_ms: 0,
        revision: 0,
    };
    let put_group =
        |g, expected_revision| Command::PutDirectoryGroup { tenant: tenant("acme"), group: g, expected_revision };
    let unknown = apply(&mut sm, entry(8, "g0", put_group(group(&["u1", "nobody"]), None))).await;
    assert!(matches!(unknown.outcome, Err(Rejection::InvalidAccess(_))));
    apply(&mut sm, entry(9, "g1", put_group(group(&["u3", "u1", "u1"]), None))).await.outcome.unwrap();
    let g1 = DirectoryId::new("g1").unwrap();
    assert_eq!(reader.directory_group(&tenant("acme"), &g1).unwrap().unwrap().members.len(), 2, "deduplicated");
    let delete = Command::DeleteDirectoryUser { tenant: tenant("acme"), id: DirectoryId::new("u1").unwrap() };
    apply(&mut sm, entry(10, "del", delete)).await.outcome.unwrap();
    let members = reader.directory_group(&tenant("acme"), &g1).unwrap().unwrap().members;
    assert_eq!(members, vec![DirectoryId::new("u3").unwrap()]);
    assert_eq!(reader.directory(&tenant("acme")).unwrap().users, 1);

    // Deleting the tenant purges its directory (with the entries after the deletion).
    apply(&mut sm, entry(11, "dt", Command::DeleteTenant { id: tenant("acme") })).await.outcome.unwrap();
    apply(&mut sm, entry(12, "next", create("globex"))).await.outcome.unwrap();
    assert!(reader.directory_users(&tenant("acme"), None, 10).unwrap().is_empty());
    assert!(reader.directory_groups(&tenant("acme"), None, 10).unwrap().is_empty());
}

#[tokio::test]
async fn deprovisioning_ends_sessions_and_revokes_api_keys_in_the_same_apply() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, reader) = store::open(dir.path(), custos_raft::store::StoreOptions::default()).unwrap();
    apply(&mut sm, entry(1, "t", create("acme"))).await;
    apply(&mut sm, entry(2, "t2", create("globex"))).await;
    // Before the directory holds anyone, every sign-in of the tenant is admitted.
    apply(&mut sm, entry(3, "l1", login("state-1"))).await.outcome.unwrap();
    apply(&mut sm, entry(4, "c1", complete("state-1", "s1"))).await.outcome.unwrap();
    apply(&mut sm, entry(5, "k1", create_api_key("acme", "k1", 1))).await.outcome.unwrap();
    // The same subject in another tenant is another person.
    let mut other = complete("state-2", "s2");
    if let Command::CompleteLogin { session, .. } = &mut other {
        session.tenant = Some(tenant("globex"));
    }
    apply(&mut sm, entry(6, "l2", login("state-2"))).await.outcome.unwrap();
    apply(&mut sm, entry(7, "c2", other)).await.outcome.unwrap();

    // Once the directory holds people, only they sign in.
    apply(&mut sm, entry(8, "bob", put_user(directory_user("u2", "bob"), None))).await.outcome.unwrap();
    apply(&mut sm, entry(9, "l3", login("state-3"))).await.outcome.unwrap();
    let refused = apply(&mut sm, entry(10, "c3", complete("state-3", "s3"))).await;
    assert_eq!(refused.outcome, Err(Rejection::NotProvisioned("user:alice".into())));

    // Provisioned, alice signs in; deactivated, everything she held ends at once.
    apply(&mut sm, entry(11, "alice", put_user(directory_user("u1", "alice"), None))).await.outcome.unwrap();
    let live = |id: &str| reader.session(&SessionId::new(id).unwrap()).unwrap().is_some_and(|s| s.live_at(1_020));
    assert!(live("s1") && live("s2"));
    let inactive = DirectoryUser { active: false, ..directory_user("u1", "alice") };
    apply(&mut sm, entry(12, "off", put_user(inactive, Some(11)))).await.outcome.unwrap();
    assert!(!live("s1"), "her acme session ended");
    assert!(live("s2"), "the globex person of the same name is untouched");
    let key = reader.api_key(&tenant("acme"), &api_key("k1")).unwrap().unwrap();
    assert_eq!(key.revoked_at_ms, Some(1_012));
    apply(&mut sm, entry(13, "l4", login("state-4"))).await.outcome.unwrap();
    let refused = apply(&mut sm, entry(14, "c4", complete("state-4", "s4"))).await;
    assert_eq!(refused.outcome, Err(Rejection::NotProvisioned("user:alice".into())));
}

#[tokio::test]
async fn native_sessions_need_an_active_user_and_a_fresh_totp_step() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, reader) = store::open(dir.path(), custos_raft::store::StoreOptions::default()).unwrap();
    apply(&mut sm, entry(1, "t", create("acme"))).await;
    apply(&mut sm, entry(2, "alice", put_user(directory_user("u1", "alice"), None))).await.outcome.unwrap();
    let open = |session: &str, totp_step| {
        let Command::CompleteLogin { session: mut record, .. } = complete("unused", session) else { unreachable!() };
        record.idp = "native".into();
        Command::OpenSession {
            user: DirectoryId::new("u1").unwrap(),
            session: record,
            max_sessions_per_user: 5,
            totp_step,
        }
    };
    let refused = apply(&mut sm, entry(3, "o1", open("s1", Some(10)))).await;
    assert!(matches!(refused.outcome, Err(Rejection::InvalidAccess(_))), "the tenant does not sign in natively");
    let native = Command::SetNativeSignIn { tenant: tenant("acme"), native: Some(NativeSignIn { mfa_required: true }) };
    apply(&mut sm, entry(4, "n", native)).await.outcome.unwrap();
    apply(&mut sm, entry(5, "o2", open("s2", Some(10)))).await.outcome.unwrap();
    assert_eq!(
        reader.directory_user(&tenant("acme"), &DirectoryId::new("u1").unwrap()).unwrap().unwrap().totp_last_step,
        10
    );
    // A code's time step is accepted once.
    assert_eq!(apply(&mut sm, entry(6, "o3", open("s3", Some(10)))).await.outcome, Err(Rejection::TotpReplayed));
    apply(&mut sm, entry(7, "o4", open("s4", Some(11)))).await.outcome.unwrap();
    let delete = Command::DeleteDirectoryUser { tenant: tenant("acme"), id: DirectoryId::new("u1").unwrap() };
    apply(&mut sm, entry(8, "del", delete)).await.outcome.unwrap();
    let refused = apply(&mut sm, entry(9, "o5", open("s5", Some(12)))).await;
    assert_eq!(refused.outcome, Err(Rejection::NotProvisioned("user:alice".into())));
    assert!(!reader.session(&SessionId::new("s4").unwrap()).unwrap().unwrap().live_at(1_010));
}

fn audited(origin: u64, event: &str, command: Command) -> Command {
    Command::Audited { command: Box::new(command), audit: CarriedAudit { origin, event: event.as_bytes().to_vec() } }
}

fn at(index: u64, slot: u32) -> CarriedPosition {
    CarriedPosition { index, slot }
}

#[tokio::test]
async fn carried_audit_events_are_kept_with_their_outcome_until_their_origin_recorded_them() {
    use openraft::RaftSnapshotBuilder;

    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, reader) = store::open(dir.path(), custos_raft::store::StoreOptions::default()).unwrap();
    // An audited command applies as the command itself.
    let created = apply(&mut sm, entry(1, "c1", audited(2, "create acme", create("acme")))).await;
    assert!(matches!(created.outcome, Ok(Output::Tenant(ref t)) if t.id == tenant("acme")));

    // A refused one, a retry (its own event, the same request: replayed) and another node's.
    let rename = Command::UpdateTenant { id: tenant("acme"), display_name: "Acme".into(), expected_revision: None };
    let responses = sm
        .apply([batch(
            2,
            vec![
                proposal(2, "c2", audited(2, "create acme again", create("acme"))),
                proposal(2, "c1", audited(2, "retry", create("acme"))),
                proposal(2, "u1", audited(3, "rename", rename)),
            ],
        )])
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(responses[0].outcome, Err(Rejection::TenantExists(tenant("acme"))));
    assert!(responses[1].replayed && responses[1].outcome == created.outcome);
    assert_eq!(reader.tenant(&tenant("acme")).unwrap().unwrap().display_name, "Acme");

    let kept = reader.carried(2, None, 10).unwrap();
    let positions: Vec<CarriedPosition> = kept.iter().map(|e| e.position).collect();
    assert_eq!(positions, vec![at(1, 0), at(2, 0), at(2, 1)]);
    let events: Vec<&[u8]> = kept.iter().map(|e| e.event.as_slice()).collect();
    assert_eq!(events, vec![&b"create acme"[..], b"create acme again", b"retry"]);
    assert_eq!(
        kept.iter().map(|e| (e.rejection.clone(), e.replayed)).collect::<Vec<_>>(),
        vec![(None, false), (Some(Rejection::TenantExists(tenant("acme"))), false), (None, true)]
    );
    assert_eq!(reader.carried(2, Some(at(1, 0)), 10).unwrap().len(), 2, "paged after a position");
    assert_eq!(reader.carried(3, None, 10).unwrap()[0].position, at(2, 2));
    assert_eq!(reader.carried_origins(10).unwrap(), vec![2, 3]);

    // Recorded through (2, 0): node 2's later event stays, node 3's too.
    apply(&mut sm, entry(3, "r1", Command::AuditRecorded { origin: 2, through: at(2, 0) })).await;
    assert_eq!(reader.carried(2, None, 10).unwrap().iter().map(|e| e.position).collect::<Vec<_>>(), vec![at(2, 1)]);
    assert_eq!(reader.carried(3, None, 10).unwrap().len(), 1);

    // They travel in snapshots: a node that installs one still holds them.
    sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let snapshot = sm.get_current_snapshot().await.unwrap().expect("a snapshot was built");
    let other = tempfile::tempdir().unwrap();
    let (_log, mut installed, other_reader) =
        store::open(other.path(), custos_raft::store::StoreOptions::default()).unwrap();
    installed.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    assert_eq!(other_reader.carried(2, None, 10).unwrap(), reader.carried(2, None, 10).unwrap());
    assert_eq!(other_reader.carried_origins(10).unwrap(), vec![2, 3]);

    // Once every event is recorded, nothing is left.
    apply(&mut sm, entry(4, "r2", Command::AuditRecorded { origin: 2, through: at(4, 0) })).await;
    apply(&mut sm, entry(5, "r3", Command::AuditRecorded { origin: 3, through: at(2, 2) })).await;
    assert_eq!(reader.carried_origins(10).unwrap(), Vec::<u64>::new());
}

//! The governance state machine applies each request once and enforces tenant lifecycle rules.

use custos_raft::store::{self, StateMachineStore};
use custos_raft::{
    Command, Output, Proposal, Proposals, RegionLabel, Rejection, RequestId, TenantId, TenantStatus, TypeConfig,
};
use openraft::storage::RaftStateMachine;
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
    }
}

async fn apply(sm: &mut StateMachineStore, e: Entry<TypeConfig>) -> custos_raft::Response {
    let mut responses = sm.apply([e]).await.expect("apply").pop().expect("one entry");
    assert_eq!(responses.len(), 1);
    responses.pop().expect("one response")
}

#[tokio::test]
async fn retried_request_applies_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, reader) = store::open(dir.path(), 100_000).unwrap();

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
async fn tenant_lifecycle_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, reader) = store::open(dir.path(), 100_000).unwrap();
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
    let (_log, mut sm, _reader) = store::open(dir.path(), 1_000).unwrap();
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
    let (_log, mut sm, reader) = store::open(dir.path(), 100_000).unwrap();
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
async fn change_feed_lists_each_tenant_once_at_its_latest_revision() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm, reader) = store::open(dir.path(), 100_000).unwrap();
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

//! The custody actor of one tenant: owns the tenant's cached working keys on this node and
//! runs the tenant's scheduled key work (rotation and destruction) when this node leads. Each
//! piece of scheduled work is audited (actor `system`, `details.scheduled`) before it is
//! proposed, and a refusal after it is audited as a failure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use custos_raft::store::reader::{GovernanceReader, ReadError};
use custos_raft::{Command, KeyId, KeyRecord, KeyState, Proposal, RequestId, TenantId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::service::Custody;
use crate::audit::{self, AuditData, AuditRecord, AuditStream, EventType, Outcome};
use crate::{ProposeError, Proposer};

/// Keys read per page of the leader's schedule scan.
const SCAN_PAGE: usize = 1000;

#[derive(Debug)]
pub enum CustodyMsg {
    /// Does the scheduled work of these keys, found due by the leader's scan ([`due_keys`]).
    RunSchedule(Vec<KeyId>),
    Health(RpcReplyPort<()>),
    /// Fails the actor: the fault hook of supervision and chaos tests (see
    /// [`crate::inject_fault`]).
    InjectFault,
}

pub struct CustodyArgs {
    pub tenant: TenantId,
    pub custody: Arc<Custody>,
    pub proposer: Option<Arc<dyn Proposer>>,
}

pub struct CustodyActor;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Whether a key has scheduled work due at `now`: its destruction or its next rotation.
fn is_due(record: &KeyRecord, now: u64) -> bool {
    matches!(record.state, KeyState::DestroyScheduled { at_ms } if at_ms <= now)
        || record.rotation_due_at_ms().is_some_and(|due| due <= now)
}

/// Bounds of one schedule scan: each tick does a bounded share and the next goes on from
/// there, so keys that stay due (their work keeps failing) never starve the keys after them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScanBounds {
    /// Key records read, of any tenant.
    pub read: usize,
    /// Due keys handed out.
    pub due: usize,
    /// Due keys handed to one tenant per scan; its further due keys wait for the next pass.
    pub due_per_tenant: usize,
}

/// What one scan found, and where the next one goes on (`None`: from the first key).
#[derive(Debug, Default)]
pub(crate) struct DueScan {
    pub due: BTreeMap<TenantId, Vec<KeyId>>,
    pub resume_after: Option<KeyRecord>,
}

/// The keys of `serving` tenants with scheduled work due at `now`, by tenant, scanning all
/// tenants' keys in order after `after` within `bounds`. Keys of other tenants (suspended,
/// degraded here) are read but not handed out.
pub(crate) fn due_keys(
    reader: &GovernanceReader,
    now: u64,
    after: Option<KeyRecord>,
    serving: impl Fn(&TenantId) -> bool,
    bounds: ScanBounds,
) -> Result<DueScan, ReadError> {
    assert!(bounds.read > 0 && bounds.due > 0 && bounds.due_per_tenant > 0, "empty scan bounds: {bounds:?}");
    let mut scan = DueScan::default();
    let (mut read, mut found) = (0, 0);
    let mut after = after;
    loop {
        let page = reader.all_keys(after.as_ref(), SCAN_PAGE.min(bounds.read - read))?;
        let full = !page.is_empty() && page.len() == SCAN_PAGE.min(bounds.read - read);
        for record in page {
            read += 1;
            if is_due(&record, now) && serving(&record.tenant) {
                let keys = scan.due.entry(record.tenant.clone()).or_default();
                // Keys come in tenant order: past its share, a tenant's keys are passed over.
                if keys.len() < bounds.due_per_tenant {
                    keys.push(record.id.clone());
                    found += 1;
                    if found == bounds.due {
                        scan.resume_after = Some(record);
                        return Ok(scan);
                    }
                }
            }
            after = Some(record);
        }
        if !full {
            return Ok(scan);
        }
        if read == bounds.read {
            scan.resume_after = after;
            return Ok(scan);
        }
    }
}

/// The scheduled command a key needs now, if any. Request ids name the key's state, so the
/// same due work proposed twice (by two ticks, or a new leader) is applied once.
async fn due_command(
    custody: &Custody,
    record: &KeyRecord,
    now: u64,
) -> Result<Option<(String, Command)>, super::CustodyError> {
    let (tenant, key) = (record.tenant.clone(), record.id.clone());
    if let KeyState::DestroyScheduled { at_ms } = record.state {
        if at_ms <= now {
            let id = format!("schedule/destroy/{tenant}/{key}/{at_ms}");
            return Ok(Some((id, Command::DestroyKey { tenant, key })));
        }
    }
    if record.rotation_due_at_ms().is_some_and(|due| due <= now) {
        let latest = record.latest_version;
        let material = custody.new_key_material(&tenant, &key, latest + 1).await?;
        let id = format!("schedule/rotate/{tenant}/{key}/{latest}");
        return Ok(Some((id, Command::RotateKey { tenant, key, expected_latest: latest, material })));
    }
    Ok(None)
}

/// The audit event of scheduled key work (`None` for any other command).
fn scheduled_event(
    record: &KeyRecord,
    command: &Command,
    request_id: &RequestId,
    outcome: Outcome,
) -> Option<AuditRecord> {
    let (kind, version) = match command {
        Command::RotateKey { expected_latest, .. } => (EventType::KeyRotate, Some(expected_latest + 1)),
        Command::DestroyKey { .. } => (EventType::KeyDestroy, None),
        _ => return None,
    };
    let mut data = AuditData::new(audit::Actor::system(), outcome);
    data.key_id = Some(record.id.to_string());
    data.key_version = version;
    data.request_id = Some(request_id.as_str().to_string());
    data.details.insert("scheduled".into(), true.into());
    if outcome != Outcome::Success {
        data.reason = Some("scheduled_work_refused".into());
    }
    Some(AuditRecord {
        stream: AuditStream::Tenant(record.tenant.clone()),
        kind,
        subject: Some(format!("keys/{}", record.id)),
        data,
    })
}

impl CustodyArgs {
    /// Proposes the due work of `keys`, each read again first: the scan that named them may be
    /// a tick old.
    async fn run_schedule(&self, keys: Vec<KeyId>) {
        let Some(proposer) = self.proposer.clone() else { return };
        if !proposer.is_leader() {
            return;
        }
        let tenant = &self.tenant;
        let now = now_ms();
        for key in keys {
            let record = match self.custody.reader().key(tenant, &key) {
                Ok(Some(record)) => record,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(tenant_id = %tenant, key_id = %key, error = %e, "reading a key for the key schedule failed");
                    continue;
                }
            };
            let command = match due_command(&self.custody, &record, now).await {
                Ok(Some(command)) => command,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(tenant_id = %tenant, key_id = %key, error = %e, "scheduled key work failed");
                    continue;
                }
            };
            let (request_id, command) = command;
            let kind = command.kind();
            let Ok(request_id) = RequestId::new(request_id) else { continue };
            // Durable before the work is proposed: a crash in between leaves an event whose
            // work the next tick proposes again (under the same request id), never work
            // without its event.
            if let Some(event) = scheduled_event(&record, &command, &request_id, Outcome::Success) {
                if let Err(e) = proposer.record(event).await {
                    tracing::warn!(tenant_id = %tenant, key_id = %key, error = %e, "auditing scheduled key work failed; it waits for the next tick");
                    continue;
                }
            }
            let refused = scheduled_event(&record, &command, &request_id, Outcome::Failure);
            let proposal = Proposal { request_id, proposed_at_ms: now, command };
            match proposer.propose(proposal).await {
                Ok(()) => tracing::info!(tenant_id = %tenant, key_id = %key, command = kind, "scheduled key work done"),
                // It may still apply; if not, the next tick proposes it again (same request id).
                Err(ProposeError::Unknown(e)) => {
                    tracing::warn!(tenant_id = %tenant, key_id = %key, error = %e, "scheduled key work unanswered")
                }
                Err(ProposeError::Refused(e)) => {
                    tracing::warn!(tenant_id = %tenant, key_id = %key, error = %e, "scheduled key work refused");
                    if let Some(mut event) = refused {
                        event.data.details.insert("error".into(), e.into());
                        if let Err(e) = proposer.record(event).await {
                            tracing::warn!(tenant_id = %tenant, key_id = %key, error = %e, "auditing refused scheduled key work failed");
                        }
                    }
                }
            }
        }
    }
}

impl Actor for CustodyActor {
    type Msg = CustodyMsg;
    type State = CustodyArgs;
    type Arguments = CustodyArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<CustodyMsg>,
        args: CustodyArgs,
    ) -> Result<CustodyArgs, ActorProcessingErr> {
        // A (re)started actor rebuilds from governance state: nothing cached survives it.
        args.custody.edge().evict_tenant(&args.tenant);
        tracing::debug!(tenant_id = %args.tenant, "custody actor started");
        Ok(args)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<CustodyMsg>,
        state: &mut CustodyArgs,
    ) -> Result<(), ActorProcessingErr> {
        state.custody.edge().evict_tenant(&state.tenant);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<CustodyMsg>,
        message: CustodyMsg,
        state: &mut CustodyArgs,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CustodyMsg::RunSchedule(keys) => state.run_schedule(keys).await,
            CustodyMsg::Health(reply) => {
                // The caller may have timed out; nothing to do then.
                let _ = reply.send(());
            }
            CustodyMsg::InjectFault => return Err("fault injected".into()),
        }
        Ok(())
    }
}

/// Applies `command` as the only proposal of log entry `index`, proposed at 1 000 ms, and
/// asserts it succeeded: state for actor tests, as Raft would have applied it.
#[cfg(test)]
pub(crate) async fn apply_for_test(sm: &mut custos_raft::store::StateMachineStore, index: u64, command: Command) {
    use custos_raft::{Proposals, TypeConfig};
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    let proposal =
        Proposal { request_id: RequestId::new(format!("r{index}")).unwrap(), proposed_at_ms: 1_000, command };
    let entry: Entry<TypeConfig> = Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposals(vec![proposal])),
    };
    let outcome = sm.apply([entry]).await.unwrap().pop().unwrap().pop().unwrap().outcome;
    assert!(outcome.is_ok(), "{outcome:?}");
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use custos_raft::{CoreProviderKind, KeyAlgorithm, KeyChange, KeyPurpose, RegionLabel, TenantId};

    use super::*;
    use crate::custody::edge::MemoryEdge;
    use crate::custody::master::MasterKey;
    use crate::custody::provider::SealedLocal;
    use crate::custody::SecretKey;

    /// Keeps proposals and audit events, in order, instead of replicating and recording them.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Result<Proposal, AuditRecord>>>);

    #[async_trait::async_trait]
    impl Proposer for Recorder {
        fn is_leader(&self) -> bool {
            true
        }
        async fn propose(&self, proposal: Proposal) -> Result<(), ProposeError> {
            self.0.lock().unwrap().push(Ok(proposal));
            Ok(())
        }
        async fn record(&self, record: AuditRecord) -> Result<(), String> {
            self.0.lock().unwrap().push(Err(record));
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_leader_rotates_keys_whose_period_has_passed_and_destroys_due_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm, reader) = custos_raft::store::open(
            dir.path(),
            custos_raft::store::StoreOptions { dedup_window_entries: 1000, ..Default::default() },
        )
        .unwrap();
        let provider = Arc::new(SealedLocal::new(MasterKey::new(SecretKey::generate())));
        let edge = Arc::new(MemoryEdge::new(16, Duration::from_secs(60)));
        let custody = Arc::new(Custody::new(reader, vec![provider], CoreProviderKind::SealedLocal, edge));
        let tenant = TenantId::new("acme").unwrap();
        let roots = custody.provision_tenant(&tenant, None).await.unwrap();
        let region = RegionLabel::new("eu").unwrap();
        apply_for_test(
            &mut sm,
            1,
            Command::CreateTenant { id: tenant.clone(), display_name: "A".into(), region, custody: roots },
        )
        .await;
        // Created at 1 000 ms with a one-minute period: long due. Another key has no period,
        // and a third is scheduled for destruction at 1 000 ms.
        for (index, (id, period)) in [(2, ("rotating", Some(60_000))), (3, ("steady", None)), (4, ("doomed", None))] {
            let key = KeyId::new(id).unwrap();
            let material = custody.new_key_material(&tenant, &key, 1).await.unwrap();
            let create = Command::CreateKey {
                tenant: tenant.clone(),
                key,
                purpose: KeyPurpose::EncryptDecrypt,
                algorithm: KeyAlgorithm::Aes256Gcm,
                rotation_period_ms: period,
                material,
            };
            apply_for_test(&mut sm, index, create).await;
        }
        let doomed = KeyId::new("doomed").unwrap();
        let schedule = KeyChange::ScheduleDestroy { delay_ms: 0 };
        apply_for_test(
            &mut sm,
            5,
            Command::ChangeKey { tenant: tenant.clone(), key: doomed.clone(), change: schedule },
        )
        .await;

        // The scan names the due keys, not the steady one, of the tenants this node serves.
        let all = ScanBounds { read: 100, due: 10, due_per_tenant: 10 };
        let scan = due_keys(custody.reader(), now_ms(), None, |_| true, all).unwrap();
        let keys = scan.due.get(&tenant).cloned().unwrap_or_default();
        assert_eq!(scan.due.len(), 1);
        assert_eq!(keys, [doomed.clone(), KeyId::new("rotating").unwrap()]);
        assert!(scan.resume_after.is_none(), "one scan covered every key");
        assert!(due_keys(custody.reader(), 0, None, |_| true, all).unwrap().due.is_empty(), "nothing is due yet");
        assert!(due_keys(custody.reader(), now_ms(), None, |_| false, all).unwrap().due.is_empty());
        // A tenant's share per scan leaves its other due keys for the next pass; the scan goes
        // on to the end.
        let share = ScanBounds { read: 100, due: 10, due_per_tenant: 1 };
        let scan = due_keys(custody.reader(), now_ms(), None, |_| true, share).unwrap();
        assert_eq!(scan.due[&tenant], std::slice::from_ref(&doomed));
        assert!(scan.resume_after.is_none());
        // Bounded scans go on where the last one stopped, and wrap around at the end.
        for bounds in
            [ScanBounds { read: 1, due: 10, due_per_tenant: 10 }, ScanBounds { read: 100, due: 1, due_per_tenant: 10 }]
        {
            let (mut seen, mut after) = (Vec::new(), None);
            for _ in 0..5 {
                let scan = due_keys(custody.reader(), now_ms(), after, |_| true, bounds).unwrap();
                seen.extend(scan.due.into_values().flatten());
                after = scan.resume_after;
                if after.is_none() {
                    break;
                }
            }
            assert_eq!(seen, keys, "{bounds:?}");
            assert!(after.is_none(), "{bounds:?}: the pass ends within five scans");
        }

        let recorder = Arc::new(Recorder::default());
        let args = CustodyArgs { tenant: tenant.clone(), custody: custody.clone(), proposer: Some(recorder.clone()) };
        args.run_schedule(keys.clone()).await;
        args.run_schedule(keys).await;

        let done = recorder.0.lock().unwrap().clone();
        // Each piece of work is audited (actor system, the version a rotation makes) just
        // before it is proposed.
        for pair in done.chunks(2) {
            let [Err(event), Ok(proposal)] = pair else { panic!("not an event then its proposal: {pair:?}") };
            assert_eq!(event.data.actor, audit::Actor::system());
            assert_eq!(event.data.request_id.as_deref(), Some(proposal.request_id.as_str()));
            assert_eq!(event.data.details["scheduled"], true);
            match &proposal.command {
                Command::RotateKey { key, .. } => {
                    assert_eq!((event.kind, event.data.key_version), (EventType::KeyRotate, Some(2)));
                    assert_eq!(event.subject.as_deref(), Some(format!("keys/{key}").as_str()));
                }
                Command::DestroyKey { key, .. } => {
                    assert_eq!(event.kind, EventType::KeyDestroy);
                    assert_eq!(event.data.key_id.as_deref(), Some(key.as_str()));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let proposals: Vec<Proposal> = done.into_iter().filter_map(Result::ok).collect();
        let ids: Vec<&str> = proposals.iter().map(|p| p.request_id.as_str()).collect();
        // Two ticks propose the same work under the same ids, so it applies once.
        assert_eq!(
            ids,
            [
                "schedule/destroy/acme/doomed/1000",
                "schedule/rotate/acme/rotating/1",
                "schedule/destroy/acme/doomed/1000",
                "schedule/rotate/acme/rotating/1"
            ]
        );
        let Command::RotateKey { expected_latest, material, .. } = &proposals[1].command else {
            panic!("not a rotation: {:?}", proposals[1].command);
        };
        assert_eq!(*expected_latest, 1);
        // The new version's material unwraps under the tenant KEK for version 2.
        let kek = custody.kek(&tenant).await.unwrap();
        let aad = crate::custody::service::l3_aad(&tenant, &KeyId::new("rotating").unwrap(), 2);
        assert!(crate::custody::crypto::unwrap_key(&kek, material, &aad).is_ok());
    }
}

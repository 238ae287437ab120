//! The governance state machine on a [`KvEngine`], with snapshots.
//!
//! A normal entry carries a batch of proposals (see `Cluster`'s batcher). Each log entry is
//! applied as one atomic batch that also advances the applied log id, so the
//! stored state always corresponds to exactly one applied prefix of the log. Applied state is
//! not flushed per entry: it becomes durable with the next log flush (the engine recovers a
//! prefix), and anything lost is re-applied from the durable log on restart.
//!
//! Key layout in [`Space::State`]:
//! - `m/applied`, `m/membership` — the applied log id and membership;
//! - `m/admin` — the admin token hash;
//! - `t/<tenant id>` — tenant records;
//! - `v/<revision be><tenant id>` — the same tenants by last change, for change feeds;
//! - `r/<request id>` — outcomes of applied requests, for exactly-once apply;
//! - `q/<index be><request id>` — the same requests by log index, to expire them.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode};
use super::engine::{Batch, KvEngine, Space};
use crate::command::{Command, Output, Proposal, Rejection, Response};
use crate::state::{Tenant, TenantStatus};
use crate::types::{NodeId, NodeInfo, TenantId};
use crate::TypeConfig;

pub(crate) const APPLIED_KEY: &[u8] = b"m/applied";
pub(crate) const MEMBERSHIP_KEY: &[u8] = b"m/membership";
pub(crate) const ADMIN_KEY: &[u8] = b"m/admin";
pub(crate) const TENANT_PREFIX: &[u8] = b"t/";
pub(crate) const TENANT_REVISION_PREFIX: &[u8] = b"v/";
const REQUEST_PREFIX: &[u8] = b"r/";
const REQUEST_INDEX_PREFIX: &[u8] = b"q/";
const SNAPSHOT_KEY: &[u8] = b"current";

/// Largest number of expired request records removed while applying one entry, so one apply
/// never does unbounded work.
const MAX_EXPIRED_PER_APPLY: usize = 64;

pub(crate) fn tenant_key(id: &TenantId) -> Vec<u8> {
    [TENANT_PREFIX, id.as_str().as_bytes()].concat()
}

/// Key of the change index: tenants ordered by the log index of their last change.
pub(crate) fn tenant_revision_key(revision: u64, id: &str) -> Vec<u8> {
    [TENANT_REVISION_PREFIX, &revision.to_be_bytes()[..], id.as_bytes()].concat()
}

/// Writes a tenant record and moves its entry in the change index.
fn put_tenant(txn: &mut Txn, tenant: &Tenant, previous_revision: Option<u64>) -> Result<(), StorageError<NodeId>> {
    if let Some(previous) = previous_revision {
        txn.delete(tenant_revision_key(previous, tenant.id.as_str()));
    }
    txn.put_raw(tenant_revision_key(tenant.revision, tenant.id.as_str()), Vec::new());
    txn.put(tenant_key(&tenant.id), tenant)
}

fn request_key(id: &str) -> Vec<u8> {
    [REQUEST_PREFIX, id.as_bytes()].concat()
}

fn request_index_key(index: u64, id: &str) -> Vec<u8> {
    [REQUEST_INDEX_PREFIX, &index.to_be_bytes()[..], id.as_bytes()].concat()
}

/// What the state machine remembers of an applied request.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RequestRecord {
    /// The command, so a reused id with a different command is refused.
    command: Command,
    outcome: Result<Output, Rejection>,
}

/// A snapshot as stored and sent: every key of the state space at one applied log id.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, NodeInfo>,
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The writes of one log entry: visible to later reads of the same entry (a batch of
/// proposals may create a tenant and then change it), and written as one atomic batch.
struct Txn<'a> {
    engine: &'a dyn KvEngine,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Txn<'a> {
    fn new(engine: &'a dyn KvEngine) -> Self {
        Txn { engine, writes: BTreeMap::new() }
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError<NodeId>> {
        let bytes = match self.writes.get(key) {
            Some(pending) => pending.clone(),
            None => self.engine.get(Space::State, key).map_err(sm_read_err)?,
        };
        bytes.map(|b| decode(&b).map_err(sm_read_err)).transpose()
    }

    fn put<T: Serialize>(&mut self, key: impl Into<Vec<u8>>, value: &T) -> Result<(), StorageError<NodeId>> {
        self.writes.insert(key.into(), Some(encode(value).map_err(sm_write_err)?));
        Ok(())
    }

    fn put_raw(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    fn commit(self) -> Result<(), StorageError<NodeId>> {
        let mut batch = Batch::default();
        for (key, value) in self.writes {
            match value {
                Some(value) => batch.put(key, value),
                None => batch.delete(key),
            }
        }
        self.engine.write(Space::State, batch).map_err(sm_write_err)
    }
}

/// The state machine handed to openraft. Reads for clients go through
/// [`crate::GovernanceReader`] on the same engine.
#[derive(Clone)]
pub struct StateMachineStore {
    engine: Arc<dyn KvEngine>,
    dedup_window_entries: u64,
    snapshot_counter: Arc<AtomicU64>,
}

fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(&e).into()
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

impl StateMachineStore {
    pub fn new(engine: Arc<dyn KvEngine>, dedup_window_entries: u64) -> Self {
        StateMachineStore { engine, dedup_window_entries, snapshot_counter: Arc::new(AtomicU64::new(0)) }
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError<NodeId>> {
        match self.engine.get(Space::State, key).map_err(sm_read_err)? {
            Some(bytes) => decode(&bytes).map(Some).map_err(sm_read_err),
            None => Ok(None),
        }
    }

    fn apply_entry(&self, entry: &Entry<TypeConfig>) -> Result<Vec<Response>, StorageError<NodeId>> {
        let log_id = *entry.get_log_id();
        let mut txn = Txn::new(self.engine.as_ref());
        let responses = match &entry.payload {
            EntryPayload::Blank => Vec::new(),
            EntryPayload::Membership(membership) => {
                txn.put(MEMBERSHIP_KEY, &StoredMembership::new(Some(log_id), membership.clone()))?;
                Vec::new()
            }
            EntryPayload::Normal(proposals) => {
                let responses = proposals
                    .0
                    .iter()
                    .map(|proposal| self.apply_proposal(log_id.index, proposal, &mut txn))
                    .collect::<Result<Vec<_>, _>>()?;
                assert_eq!(responses.len(), proposals.0.len(), "one response per proposal");
                responses
            }
        };
        self.expire_requests(log_id.index, &mut txn)?;
        txn.put(APPLIED_KEY, &Some(log_id))?;
        txn.commit()?;
        Ok(responses)
    }

    fn apply_proposal(&self, index: u64, proposal: &Proposal, txn: &mut Txn) -> Result<Response, StorageError<NodeId>> {
        let id = proposal.request_id.as_str();
        if let Some(record) = txn.get::<RequestRecord>(&request_key(id))? {
            let outcome = if record.command == proposal.command {
                record.outcome
            } else {
                Err(Rejection::RequestIdReused(proposal.request_id.clone()))
            };
            return Ok(Response { outcome, replayed: true });
        }
        let outcome = self.execute(index, proposal, txn)?;
        let record = RequestRecord { command: proposal.command.clone(), outcome: outcome.clone() };
        txn.put(request_key(id), &record)?;
        txn.put_raw(request_index_key(index, id), Vec::new());
        Ok(Response { outcome, replayed: false })
    }

    fn execute(
        &self,
        index: u64,
        proposal: &Proposal,
        txn: &mut Txn,
    ) -> Result<Result<Output, Rejection>, StorageError<NodeId>> {
        let now = proposal.proposed_at_ms;
        Ok(match &proposal.command {
            Command::SetAdminToken { token_sha256 } => {
                if txn.get::<[u8; 32]>(ADMIN_KEY)?.is_some() {
                    Err(Rejection::AdminTokenAlreadySet)
                } else {
                    txn.put(ADMIN_KEY, token_sha256)?;
                    Ok(Output::Done)
                }
            }
            Command::CreateTenant { id, display_name, region } => {
                if txn.get::<Tenant>(&tenant_key(id))?.is_some() {
                    Err(Rejection::TenantExists(id.clone()))
                } else {
                    let tenant = Tenant {
                        id: id.clone(),
                        display_name: display_name.clone(),
                        region: region.clone(),
                        status: TenantStatus::Active,
                        created_at_ms: now,
                        updated_at_ms: now,
                        revision: index,
                    };
                    put_tenant(txn, &tenant, None)?;
                    Ok(Output::Tenant(tenant))
                }
            }
            Command::SetTenantStatus { id, status } => match txn.get::<Tenant>(&tenant_key(id))? {
                None => Err(Rejection::TenantNotFound(id.clone())),
                Some(t) if t.status == TenantStatus::Deleted => Err(Rejection::TenantDeleted(id.clone())),
                Some(_) if *status == TenantStatus::Deleted => Err(Rejection::InvalidStatus(*status)),
                Some(t) if t.status == *status => Ok(Output::Tenant(t)),
                Some(mut t) => {
                    let previous = t.revision;
                    t.status = *status;
                    t.updated_at_ms = now;
                    t.revision = index;
                    put_tenant(txn, &t, Some(previous))?;
                    Ok(Output::Tenant(t))
                }
            },
            Command::DeleteTenant { id } => match txn.get::<Tenant>(&tenant_key(id))? {
                None => Err(Rejection::TenantNotFound(id.clone())),
                Some(t) if t.status == TenantStatus::Deleted => Ok(Output::Tenant(t)),
                Some(mut t) => {
                    let previous = t.revision;
                    t.status = TenantStatus::Deleted;
                    t.updated_at_ms = now;
                    t.revision = index;
                    put_tenant(txn, &t, Some(previous))?;
                    Ok(Output::Tenant(t))
                }
            },
        })
    }

    /// Forgets request records older than the dedup window, a few at a time.
    fn expire_requests(&self, index: u64, txn: &mut Txn) -> Result<(), StorageError<NodeId>> {
        let Some(horizon) = index.checked_sub(self.dedup_window_entries) else {
            return Ok(());
        };
        let from = Bound::Included(REQUEST_INDEX_PREFIX.to_vec());
        let to = Bound::Excluded(request_index_key(horizon, ""));
        let expired = self.engine.range(Space::State, from, to, MAX_EXPIRED_PER_APPLY).map_err(sm_read_err)?;
        for (key, _) in expired {
            let id = &key[REQUEST_INDEX_PREFIX.len() + 8..];
            txn.delete(request_key(&String::from_utf8_lossy(id)));
            txn.delete(key);
        }
        Ok(())
    }

    fn read_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let Some(bytes) = self.engine.get(Space::Snapshot, SNAPSHOT_KEY).map_err(sm_read_err)? else {
            return Ok(None);
        };
        let file: SnapshotFile = decode(&bytes).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(Some(Snapshot { meta: file.meta, snapshot: Box::new(Cursor::new(bytes)) }))
    }
}

/// Builds snapshots from a copy of the state taken in `get_snapshot_builder`, which openraft
/// calls between applies, so the copy is one consistent applied prefix even though building
/// and saving run concurrently with later applies.
pub struct SnapshotBuilder {
    store: StateMachineStore,
    /// The copy, or the storage error met while taking it (reported by `build_snapshot`).
    captured: Result<Captured, StorageError<NodeId>>,
}

struct Captured {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, NodeInfo>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let captured =
            std::mem::replace(&mut self.captured, Err(sm_read_err(std::io::Error::other("snapshot already built"))))?;
        let counter = self.store.snapshot_counter.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match captured.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, counter),
            None => format!("none-{counter}"),
        };
        let meta =
            SnapshotMeta { last_log_id: captured.last_applied, last_membership: captured.membership, snapshot_id };
        let file = SnapshotFile { meta: meta.clone(), entries: captured.entries };
        let store = self.store.clone();
        let signature = meta.signature();
        let bytes = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, StorageError<NodeId>> {
            let bytes = encode(&file).map_err(|e| StorageIOError::write_snapshot(Some(signature.clone()), &e))?;
            let mut batch = Batch::default();
            batch.put(SNAPSHOT_KEY, bytes.clone());
            store
                .engine
                .write(Space::Snapshot, batch)
                .map_err(|e| StorageIOError::write_snapshot(Some(signature.clone()), &e))?;
            store.engine.flush().map_err(|e| StorageIOError::write_snapshot(Some(signature), &e))?;
            Ok(bytes)
        })
        .await
        .map_err(sm_write_err)??;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeInfo>), StorageError<NodeId>> {
        let applied = self.get::<Option<LogId<NodeId>>>(APPLIED_KEY)?.flatten();
        let membership = self.get(MEMBERSHIP_KEY)?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Response>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        entries.into_iter().map(|entry| self.apply_entry(&entry)).collect()
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let captured = match self.applied_state().await {
            Ok((last_applied, membership)) => self
                .engine
                .range(Space::State, Bound::Unbounded, Bound::Unbounded, usize::MAX)
                .map(|entries| Captured { entries, last_applied, membership })
                .map_err(sm_read_err),
            Err(e) => Err(e),
        };
        SnapshotBuilder { store: self.clone(), captured }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let signature = meta.signature();
        let file: SnapshotFile =
            decode(&bytes).map_err(|e| StorageIOError::read_snapshot(Some(signature.clone()), &e))?;
        assert_eq!(file.meta.last_log_id, meta.last_log_id, "snapshot data does not match its meta");
        let mut entries = file.entries;
        entries.retain(|(k, _)| k.as_slice() != APPLIED_KEY && k.as_slice() != MEMBERSHIP_KEY);
        entries.push((APPLIED_KEY.to_vec(), encode(&meta.last_log_id).map_err(sm_write_err)?));
        entries.push((MEMBERSHIP_KEY.to_vec(), encode(&meta.last_membership).map_err(sm_write_err)?));
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StorageError<NodeId>> {
            engine.replace_all(Space::State, entries).map_err(sm_write_err)?;
            let mut batch = Batch::default();
            batch.put(SNAPSHOT_KEY, bytes);
            engine
                .write(Space::Snapshot, batch)
                .map_err(|e| StorageIOError::write_snapshot(Some(signature.clone()), &e))?;
            engine.flush().map_err(|e| StorageIOError::write_snapshot(Some(signature), &e))?;
            Ok(())
        })
        .await
        .map_err(sm_write_err)??;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        self.read_snapshot()
    }
}

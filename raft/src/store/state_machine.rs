//! The governance state machine on a [`KvEngine`], with snapshots.
//!
//! A normal entry carries a batch of proposals (see `Cluster`'s batcher). Each log entry is
//! applied as one atomic batch that also advances the applied log id, so the
//! stored state always corresponds to exactly one applied prefix of the log. Applied state is
//! not flushed per entry: it becomes durable with the next log flush (the engine recovers a
//! prefix), and anything lost is re-applied from the durable log on restart.
//!
//! The state in the engine is its own snapshot: building one flushes the state and records
//! the log id it has reached, so openraft may purge the log behind it, with no copy made. A
//! copy is taken only when a follower needs the data, and encoded as a [`SnapshotFile`].
//!
//! Key layout in [`Space::State`]:
//! - `m/applied`, `m/membership` — the applied log id and membership;
//! - `m/admin` — the admin token hash;
//! - `m/platform`, `m/platform-revision` — the platform's key custody and token-signing keys;
//! - `t/<tenant id>` — tenant records;
//! - `v/<revision be><tenant id>` — the same tenants by last change, for change feeds;
//! - `r/<request id>` — outcomes of applied requests, for exactly-once apply;
//! - `q/<index be>` — the ids of the requests first applied at that log index, to expire
//!   them (one key per entry, not per request; data written before this layout has
//!   `q/<index be><request id>` keys with empty values, expired the same way);
//! - `c/<tenant id>` — the tenant's key roots ([`TenantCustody`]);
//! - `k/<tenant id>/<key id>` — L3 key metadata;
//! - `x/<tenant id>/<key id>/<version be>` — each key version's wrapped material;
//! - `p/<tenant id>` — a deleted tenant whose key records are still being removed;
//! - `s/<tenant id>` — a deleted tenant's root still to be destroyed at its provider;
//! - `a/<tenant id>` — the tenant's access state (policy document, grants); `w/<tenant id>`
//!   — its revision alone;
//! - `y/<tenant id>/<api key id>` — API keys; `i/<api key id>` — the tenant of each key;
//! - `b/<tenant id>` — the tenant's own identity provider;
//! - `g/<origin be><index be><slot be>` — audit events carried with their commands, until
//!   their origin node has recorded them (`carried.rs`).
//!
//! Access-control commands are applied in `access.rs`, sign-in commands (with their own keys)
//! in `sessions.rs`.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode};
use super::copies::Copies;
use super::engine::{Batch, KvEngine, Space};
use super::snapshot_data::SnapshotData;
use crate::command::{
    CarriedPosition, Command, Output, Proposal, Rejection, Response, MAX_KEYS_PER_TENANT, MAX_KEY_VERSIONS,
};
use crate::state::{
    CoreProviderKind, KeyChange, KeyRecord, KeyState, KeyVersion, PendingShred, Tenant, TenantCustody, TenantStatus,
};
use crate::types::{KeyId, NodeId, NodeInfo, TenantId};
use crate::TypeConfig;

pub(crate) const APPLIED_KEY: &[u8] = b"m/applied";
pub(crate) const MEMBERSHIP_KEY: &[u8] = b"m/membership";
pub(crate) const ADMIN_KEY: &[u8] = b"m/admin";
pub(crate) const TENANT_PREFIX: &[u8] = b"t/";
pub(crate) const TENANT_REVISION_PREFIX: &[u8] = b"v/";
pub(crate) const CUSTODY_PREFIX: &[u8] = b"c/";
pub(crate) const KEY_PREFIX: &[u8] = b"k/";
pub(crate) const KEY_VERSION_PREFIX: &[u8] = b"x/";
const PURGE_PREFIX: &[u8] = b"p/";
pub(crate) const PENDING_SHRED_PREFIX: &[u8] = b"s/";
const REQUEST_PREFIX: &[u8] = b"r/";
const REQUEST_INDEX_PREFIX: &[u8] = b"q/";
/// In [`Space::Snapshot`]: the meta of the latest snapshot built or installed.
const SNAPSHOT_META_KEY: &[u8] = b"meta";
/// In [`Space::Snapshot`]: a full copy of the state, as earlier versions stored each snapshot.
const LEGACY_SNAPSHOT_KEY: &[u8] = b"current";

/// How long a copy encoded for a follower is kept for the next ones.
const KEEP_COPY_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// Largest number of request-index keys expired while applying one entry (each holds the
/// requests of one entry, themselves bounded by the write batch), so one apply never does
/// unbounded work.
const MAX_EXPIRED_PER_APPLY: usize = 64;
/// Most log entries whose writes are committed to the engine as one batch.
const MAX_ENTRIES_PER_WRITE: usize = 64;
/// Largest number of a deleted tenant's key records removed while applying one entry.
const MAX_PURGED_PER_APPLY: usize = 64;

pub(crate) fn custody_key(tenant: &TenantId) -> Vec<u8> {
    [CUSTODY_PREFIX, tenant.as_str().as_bytes()].concat()
}

/// `k/<tenant>/`: every key record of a tenant.
pub(crate) fn tenant_keys_prefix(tenant: &TenantId) -> Vec<u8> {
    [KEY_PREFIX, tenant.as_str().as_bytes(), b"/"].concat()
}

pub(crate) fn key_key(tenant: &TenantId, key: &KeyId) -> Vec<u8> {
    [&tenant_keys_prefix(tenant)[..], key.as_str().as_bytes()].concat()
}

/// `x/<tenant>/`: every key version of a tenant.
fn tenant_versions_prefix(tenant: &TenantId) -> Vec<u8> {
    [KEY_VERSION_PREFIX, tenant.as_str().as_bytes(), b"/"].concat()
}

pub(crate) fn key_version_key(tenant: &TenantId, key: &KeyId, version: u32) -> Vec<u8> {
    [&tenant_versions_prefix(tenant)[..], key.as_str().as_bytes(), b"/", &version.to_be_bytes()[..]].concat()
}

pub(crate) fn pending_shred_key(tenant: &TenantId) -> Vec<u8> {
    [PENDING_SHRED_PREFIX, tenant.as_str().as_bytes()].concat()
}

fn purge_key(tenant: &TenantId) -> Vec<u8> {
    [PURGE_PREFIX, tenant.as_str().as_bytes()].concat()
}

/// The exclusive upper bound of every key starting with `prefix` (which ends in '/').
pub(crate) fn prefix_end(prefix: &[u8]) -> Bound<Vec<u8>> {
    let mut end = prefix.to_vec();
    // Every prefix here ends in '/', so incrementing its last byte cannot overflow.
    *end.last_mut().expect("prefix is not empty") += 1;
    Bound::Excluded(end)
}

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

fn request_index_key(index: u64) -> Vec<u8> {
    [REQUEST_INDEX_PREFIX, &index.to_be_bytes()[..]].concat()
}

/// Longest accepted rotation period: ten years.
const MAX_ROTATION_PERIOD_MS: u64 = 10 * 366 * 24 * 3600 * 1000;
/// Shortest accepted rotation period: one minute.
const MIN_ROTATION_PERIOD_MS: u64 = 60 * 1000;

fn check_rotation_period(period: Option<u64>) -> Result<(), String> {
    match period {
        Some(p) if !(MIN_ROTATION_PERIOD_MS..=MAX_ROTATION_PERIOD_MS).contains(&p) => {
            Err(format!("rotation period must be between {MIN_ROTATION_PERIOD_MS} ms and {MAX_ROTATION_PERIOD_MS} ms"))
        }
        _ => Ok(()),
    }
}

/// Applies a settings or lifecycle change to a key record, or says why it is refused.
fn change_key(record: &mut KeyRecord, change: &KeyChange, now: u64) -> Result<(), Rejection> {
    let key = &record.id;
    if record.state == KeyState::Destroyed {
        return Err(Rejection::KeyDestroyed(key.clone()));
    }
    match change {
        KeyChange::Enable => match record.state {
            KeyState::DestroyScheduled { .. } => {
                return Err(Rejection::InvalidKeyChange(format!(
                    "key {key} is scheduled for destruction; cancel the destruction to enable it"
                )))
            }
            _ => record.state = KeyState::Enabled,
        },
        KeyChange::Disable => match record.state {
            KeyState::DestroyScheduled { .. } => {
                return Err(Rejection::InvalidKeyChange(format!("key {key} is scheduled for destruction")))
            }
            _ => record.state = KeyState::Disabled,
        },
        KeyChange::Configure { min_decryption_version, rotation_period_ms } => {
            if let Some(version) = min_decryption_version {
                if *version == 0 || *version > record.latest_version {
                    return Err(Rejection::InvalidKeyChange(format!(
                        "minimum decryption version must be between 1 and the latest version {}",
                        record.latest_version
                    )));
                }
            }
            if let Some(period) = rotation_period_ms {
                check_rotation_period(*period).map_err(Rejection::InvalidKeyChange)?;
            }
            // Checked above, so both apply or neither.
            if let Some(version) = min_decryption_version {
                record.min_decryption_version = *version;
            }
            if let Some(period) = rotation_period_ms {
                record.rotation_period_ms = *period;
            }
        }
        KeyChange::ScheduleDestroy { delay_ms } => {
            record.state = KeyState::DestroyScheduled { at_ms: now.saturating_add(*delay_ms) };
        }
        KeyChange::CancelDestroy => match record.state {
            KeyState::DestroyScheduled { .. } => record.state = KeyState::Enabled,
            _ => return Err(Rejection::InvalidKeyChange(format!("key {key} is not scheduled for destruction"))),
        },
    }
    Ok(())
}

/// What the state machine remembers of an applied request.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RequestRecord {
    /// The command without generated material, so a reused id with a different command is
    /// refused.
    command: Command,
    outcome: Result<Output, Rejection>,
}

/// A snapshot as stored and sent: every key of the state space at one applied log id.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, NodeInfo>,
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A stored key and its value.
type KeyValue = (Vec<u8>, Vec<u8>);

/// The writes of log entries applied together: visible to later reads of the same and later
/// entries (a batch of proposals may create a tenant and then change it), and written as one
/// atomic batch with the applied log id, so a crash loses whole entries, which are applied
/// again from the log.
pub(super) struct Txn<'a> {
    engine: &'a dyn KvEngine,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Txn<'a> {
    fn new(engine: &'a dyn KvEngine) -> Self {
        Txn { engine, writes: BTreeMap::new() }
    }

    pub(super) fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError<NodeId>> {
        let bytes = match self.writes.get(key) {
            Some(pending) => pending.clone(),
            None => self.engine.get(Space::State, key).map_err(sm_read_err)?,
        };
        bytes.map(|b| decode(&b).map_err(sm_read_err)).transpose()
    }

    /// Up to `limit` entries from `from` (inclusive) to `to`, as this entry's writes so far
    /// leave them.
    pub(super) fn range(
        &self,
        from: &[u8],
        to: Bound<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError<NodeId>> {
        let bounds = (Bound::Included(from.to_vec()), to.clone());
        let pending: Vec<_> = self.writes.range(bounds).collect();
        // Enough stored entries that the pending deletions cannot leave fewer than `limit`.
        let stored = self
            .engine
            .range(Space::State, Bound::Included(from.to_vec()), to, limit + pending.len())
            .map_err(sm_read_err)?;
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = stored.into_iter().collect();
        for (key, value) in pending {
            match value {
                Some(value) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }

    pub(super) fn put<T: Serialize>(&mut self, key: impl Into<Vec<u8>>, value: &T) -> Result<(), StorageError<NodeId>> {
        self.writes.insert(key.into(), Some(encode(value).map_err(sm_write_err)?));
        Ok(())
    }

    pub(super) fn put_raw(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    pub(super) fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    fn commit(self, copies: &Copies) -> Result<(), StorageError<NodeId>> {
        let mut batch = Batch::default();
        for (key, value) in self.writes {
            match value {
                Some(value) => batch.put(key, value),
                None => batch.delete(key),
            }
        }
        copies.write(self.engine, batch).map_err(sm_write_err)
    }
}

/// The state machine handed to openraft. Reads for clients go through
/// [`crate::GovernanceReader`] on the same engine.
#[derive(Clone)]
pub struct StateMachineStore {
    engine: Arc<dyn KvEngine>,
    dedup_window_entries: u64,
    /// Copies of the state being read for followers; every state write goes through it.
    copies: Arc<Copies>,
    /// The last copy encoded for a follower, reused for the next ones until a snapshot is
    /// recorded, for [`KEEP_COPY_FOR`] at most: a follower that stays unreachable must not
    /// cost a copy per retry, and an idle cluster must not hold a copy of its state forever.
    encoded: Arc<Mutex<EncodedCopy>>,
    /// Copies of the state encoded for followers since the node started.
    copies_encoded: Arc<AtomicU64>,
}

/// See [`StateMachineStore::encoded`].
#[derive(Default)]
struct EncodedCopy {
    /// Counts recorded snapshots; a copy begun before the latest one is not kept.
    generation: u64,
    /// Counts copies kept, so the timer that drops one spares its successor.
    kept: u64,
    last: Option<KeptCopy>,
}

/// Keeps `copy` for later followers unless a snapshot was recorded since it began (in
/// `generation`), and drops it after [`KEEP_COPY_FOR`] unless a later copy replaced it. Runs
/// where the copy was produced: on the blocking pool, inside the runtime.
fn keep_copy(encoded: &Arc<Mutex<EncodedCopy>>, generation: u64, copy: KeptCopy) {
    let mut guard = encoded.lock().unwrap_or_else(|p| p.into_inner());
    if guard.generation != generation {
        return;
    }
    guard.last = Some(copy);
    guard.kept += 1;
    let (kept, encoded) = (guard.kept, Arc::clone(encoded));
    tokio::spawn(async move {
        tokio::time::sleep(KEEP_COPY_FOR).await;
        let mut guard = encoded.lock().unwrap_or_else(|p| p.into_inner());
        if guard.kept == kept {
            guard.last = None;
        }
    });
}

/// A copy encoded for a follower and the snapshot meta it was sent with.
#[derive(Clone)]
struct KeptCopy {
    meta: SnapshotMeta<NodeId, NodeInfo>,
    bytes: Arc<Vec<u8>>,
}

pub(super) fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(&e).into()
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

impl StateMachineStore {
    pub fn new(engine: Arc<dyn KvEngine>, dedup_window_entries: u64) -> Self {
        StateMachineStore {
            engine,
            dedup_window_entries,
            copies: Arc::default(),
            encoded: Arc::default(),
            copies_encoded: Arc::default(),
        }
    }

    /// Counts the copies of the state encoded for followers, for status and metrics.
    pub fn copies_encoded(&self) -> Arc<AtomicU64> {
        self.copies_encoded.clone()
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError<NodeId>> {
        match self.engine.get(Space::State, key).map_err(sm_read_err)? {
            Some(bytes) => decode(&bytes).map(Some).map_err(sm_read_err),
            None => Ok(None),
        }
    }

    /// Applies one entry's writes to `txn`, which the caller commits.
    fn apply_entry(&self, entry: &Entry<TypeConfig>, txn: &mut Txn) -> Result<Vec<Response>, StorageError<NodeId>> {
        let log_id = *entry.get_log_id();
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
                    .enumerate()
                    .map(|(slot, proposal)| {
                        let position = CarriedPosition { index: log_id.index, slot: slot as u32 };
                        self.apply_proposal(position, proposal, txn)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                assert_eq!(responses.len(), proposals.0.len(), "one response per proposal");
                // The requests first applied here, to expire with this entry.
                let recorded: Vec<&str> = proposals
                    .0
                    .iter()
                    .zip(&responses)
                    .filter(|(_, response)| !response.replayed)
                    .map(|(proposal, _)| proposal.request_id.as_str())
                    .collect();
                if !recorded.is_empty() {
                    txn.put(request_index_key(log_id.index), &recorded)?;
                }
                responses
            }
        };
        self.expire_requests(log_id.index, txn)?;
        self.purge_deleted_keys(txn)?;
        txn.put(APPLIED_KEY, &Some(log_id))?;
        Ok(responses)
    }

    /// Applies one proposal at `position` (its entry's index, its place in the entry) and
    /// keeps the event of an audited one.
    fn apply_proposal(
        &self,
        position: CarriedPosition,
        proposal: &Proposal,
        txn: &mut Txn,
    ) -> Result<Response, StorageError<NodeId>> {
        let response = self.apply_command(position.index, proposal, txn)?;
        if let Command::Audited { audit, .. } = &proposal.command {
            super::carried::keep(txn, audit, position, &response)?;
        }
        Ok(response)
    }

    fn apply_command(&self, index: u64, proposal: &Proposal, txn: &mut Txn) -> Result<Response, StorageError<NodeId>> {
        let id = proposal.request_id.as_str();
        let command = proposal.command.unaudited();
        if let Some(record) = txn.get::<RequestRecord>(&request_key(id))? {
            let outcome = if record.command == command.without_material() {
                record.outcome
            } else {
                Err(Rejection::RequestIdReused(proposal.request_id.clone()))
            };
            return Ok(Response { outcome, replayed: true });
        }
        let outcome = self.execute(index, proposal.proposed_at_ms, command, txn)?;
        let record = RequestRecord { command: command.without_material(), outcome: outcome.clone() };
        txn.put(request_key(id), &record)?;
        Ok(Response { outcome, replayed: false })
    }

    /// Executes a command (never `Audited`: its command is executed) at `now`, the proposal's
    /// time.
    fn execute(
        &self,
        index: u64,
        now: u64,
        command: &Command,
        txn: &mut Txn,
    ) -> Result<Result<Output, Rejection>, StorageError<NodeId>> {
        Ok(match command {
            Command::Audited { command, .. } => return self.execute(index, now, command.unaudited(), txn),
            Command::AuditRecorded { origin, through } => {
                super::carried::drop_recorded(txn, *origin, *through)?;
                Ok(Output::Done)
            }
            Command::SetAdminToken { token_sha256 } => {
                if txn.get::<[u8; 32]>(ADMIN_KEY)?.is_some() {
                    Err(Rejection::AdminTokenAlreadySet)
                } else {
                    txn.put(ADMIN_KEY, token_sha256)?;
                    Ok(Output::Done)
                }
            }
            Command::CreateTenant { id, display_name, region, custody } => {
                // The platform's own custody lives under its id: it exists, as far as tenants go.
                if id.as_str() == crate::access::PLATFORM_TENANT || txn.get::<Tenant>(&tenant_key(id))?.is_some() {
                    Err(Rejection::TenantExists(id.clone()))
                } else {
                    txn.put(custody_key(id), custody)?;
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
            Command::UpdateTenant { id, display_name, expected_revision } => {
                match txn.get::<Tenant>(&tenant_key(id))? {
                    None => Err(Rejection::TenantNotFound(id.clone())),
                    Some(t) if t.status == TenantStatus::Deleted => Err(Rejection::TenantDeleted(id.clone())),
                    Some(t) if expected_revision.is_some_and(|r| r != t.revision) => Err(Rejection::StaleRevision {
                        tenant: id.clone(),
                        expected: expected_revision.unwrap_or_default(),
                        actual: t.revision,
                    }),
                    Some(mut t) => {
                        let previous = t.revision;
                        t.display_name = display_name.clone();
                        t.updated_at_ms = now;
                        t.revision = index;
                        put_tenant(txn, &t, Some(previous))?;
                        Ok(Output::Tenant(t))
                    }
                }
            }
            Command::DeleteTenant { id } => match txn.get::<Tenant>(&tenant_key(id))? {
                None => Err(Rejection::TenantNotFound(id.clone())),
                Some(t) if t.status == TenantStatus::Deleted => Ok(Output::Tenant(t)),
                Some(mut t) => {
                    let previous = t.revision;
                    t.status = TenantStatus::Deleted;
                    t.updated_at_ms = now;
                    t.revision = index;
                    put_tenant(txn, &t, Some(previous))?;
                    // Crypto-shredding: without the KEK wrapped under L1, no key below it can be
                    // unwrapped. The key records themselves go a few per entry; a root held
                    // outside governance state waits for the leader to destroy it there.
                    if let Some(custody) = txn.get::<TenantCustody>(&custody_key(id))? {
                        if custody.provider != CoreProviderKind::SealedLocal {
                            let pending =
                                PendingShred { tenant: id.clone(), provider: custody.provider, root: custody.root };
                            txn.put(pending_shred_key(id), &pending)?;
                        }
                    }
                    txn.delete(custody_key(id));
                    txn.delete(super::access::binding_key(id));
                    txn.put_raw(purge_key(id), Vec::new());
                    Ok(Output::Tenant(t))
                }
            },
            Command::RootDestroyed { tenant } => {
                txn.delete(pending_shred_key(tenant));
                Ok(Output::Done)
            }
            Command::CreateKey { tenant, key, purpose, algorithm, rotation_period_ms, material } => {
                let mut custody = match self.key_tenant(txn, tenant)? {
                    Ok(custody) => custody,
                    Err(rejection) => return Ok(Err(rejection)),
                };
                if txn.get::<KeyRecord>(&key_key(tenant, key))?.is_some() {
                    return Ok(Err(Rejection::KeyExists(key.clone())));
                }
                if custody.keys_created >= MAX_KEYS_PER_TENANT {
                    return Ok(Err(Rejection::TooManyKeys(tenant.clone())));
                }
                if let Err(reason) = check_rotation_period(*rotation_period_ms) {
                    return Ok(Err(Rejection::InvalidKeyChange(reason)));
                }
                custody.keys_created += 1;
                txn.put(custody_key(tenant), &custody)?;
                let record = KeyRecord {
                    tenant: tenant.clone(),
                    id: key.clone(),
                    purpose: *purpose,
                    algorithm: *algorithm,
                    state: KeyState::Enabled,
                    latest_version: 1,
                    min_decryption_version: 1,
                    rotation_period_ms: *rotation_period_ms,
                    created_at_ms: now,
                    rotated_at_ms: now,
                    updated_at_ms: now,
                    revision: index,
                };
                let version = KeyVersion { version: 1, created_at_ms: now, wrapped: material.clone() };
                txn.put(key_version_key(tenant, key, 1), &version)?;
                txn.put(key_key(tenant, key), &record)?;
                Ok(Output::Key(record))
            }
            Command::RotateKey { tenant, key, expected_latest, material } => {
                let mut record = match self.existing_key(txn, tenant, key)? {
                    Ok(record) => record,
                    Err(rejection) => return Ok(Err(rejection)),
                };
                if let Err(rejection) = record.state.check_enabled(key) {
                    return Ok(Err(rejection));
                }
                if record.latest_version != *expected_latest {
                    return Ok(Err(Rejection::StaleKeyVersion {
                        key: key.clone(),
                        expected: *expected_latest,
                        latest: record.latest_version,
                    }));
                }
                if record.latest_version >= MAX_KEY_VERSIONS {
                    return Ok(Err(Rejection::TooManyVersions(key.clone())));
                }
                record.latest_version += 1;
                record.rotated_at_ms = now;
                record.updated_at_ms = now;
                record.revision = index;
                let version =
                    KeyVersion { version: record.latest_version, created_at_ms: now, wrapped: material.clone() };
                txn.put(key_version_key(tenant, key, record.latest_version), &version)?;
                txn.put(key_key(tenant, key), &record)?;
                Ok(Output::Key(record))
            }
            Command::ChangeKey { tenant, key, change } => {
                let mut record = match self.existing_key(txn, tenant, key)? {
                    Ok(record) => record,
                    Err(rejection) => return Ok(Err(rejection)),
                };
                if let Err(rejection) = change_key(&mut record, change, now) {
                    return Ok(Err(rejection));
                }
                record.updated_at_ms = now;
                record.revision = index;
                txn.put(key_key(tenant, key), &record)?;
                Ok(Output::Key(record))
            }
            Command::PutAccessPolicy { .. }
            | Command::GrantAccess { .. }
            | Command::RevokeGrant { .. }
            | Command::CreateApiKey { .. }
            | Command::RotateApiKey { .. }
            | Command::RevokeApiKey { .. }
            | Command::PutSigningKeys { .. }
            | Command::AnnounceApiKeyExpiry { .. }
            | Command::BindIdentityProvider { .. } => super::access::execute(txn, index, now, command)?,
            Command::BeginLogin { .. }
            | Command::CompleteLogin { .. }
            | Command::TouchSession { .. }
            | Command::RevokeSession { .. } => super::sessions::execute(txn, now, command)?,
            Command::PutDirectoryUser { .. }
            | Command::DeleteDirectoryUser { .. }
            | Command::PutDirectoryGroup { .. }
            | Command::DeleteDirectoryGroup { .. }
            | Command::SetNativeSignIn { .. }
            | Command::OpenSession { .. } => super::directory::execute(txn, index, now, command)?,
            Command::DestroyKey { tenant, key } => {
                let mut record = match self.existing_key(txn, tenant, key)? {
                    Ok(record) => record,
                    Err(rejection) => return Ok(Err(rejection)),
                };
                match record.state {
                    KeyState::DestroyScheduled { at_ms } if at_ms <= now => {}
                    KeyState::DestroyScheduled { at_ms } => {
                        return Ok(Err(Rejection::DestroyNotDue { key: key.clone(), at_ms }))
                    }
                    other => {
                        return Ok(Err(Rejection::KeyNotEnabled {
                            key: key.clone(),
                            state: other.as_str().to_string(),
                        }))
                    }
                }
                // Bounded by MAX_KEY_VERSIONS.
                for version in 1..=record.latest_version {
                    txn.delete(key_version_key(tenant, key, version));
                }
                record.state = KeyState::Destroyed;
                record.updated_at_ms = now;
                record.revision = index;
                txn.put(key_key(tenant, key), &record)?;
                Ok(Output::Key(record))
            }
        })
    }

    /// The custody of a tenant that may have keys created: it exists and is active.
    fn key_tenant(
        &self,
        txn: &Txn,
        tenant: &TenantId,
    ) -> Result<Result<TenantCustody, Rejection>, StorageError<NodeId>> {
        Ok(match txn.get::<Tenant>(&tenant_key(tenant))? {
            None => Err(Rejection::TenantNotFound(tenant.clone())),
            Some(t) if t.status == TenantStatus::Deleted => Err(Rejection::TenantDeleted(tenant.clone())),
            Some(t) if t.status != TenantStatus::Active => Err(Rejection::TenantNotActive(tenant.clone())),
            Some(_) => match txn.get::<TenantCustody>(&custody_key(tenant))? {
                Some(custody) => Ok(custody),
                None => Err(Rejection::NoCustody(tenant.clone())),
            },
        })
    }

    /// An existing key of an active tenant.
    fn existing_key(
        &self,
        txn: &Txn,
        tenant: &TenantId,
        key: &KeyId,
    ) -> Result<Result<KeyRecord, Rejection>, StorageError<NodeId>> {
        if let Err(rejection) = self.key_tenant(txn, tenant)? {
            return Ok(Err(rejection));
        }
        Ok(txn.get::<KeyRecord>(&key_key(tenant, key))?.ok_or_else(|| Rejection::KeyNotFound(key.clone())))
    }

    /// Removes a few key records of deleted tenants; a tenant is done once none are left.
    fn purge_deleted_keys(&self, txn: &mut Txn) -> Result<(), StorageError<NodeId>> {
        let pending = self
            .engine
            .range(Space::State, Bound::Included(PURGE_PREFIX.to_vec()), prefix_end(PURGE_PREFIX), 1)
            .map_err(sm_read_err)?;
        let Some((marker, _)) = pending.into_iter().next() else {
            return Ok(());
        };
        let raw = String::from_utf8_lossy(&marker[PURGE_PREFIX.len()..]).into_owned();
        let tenant = TenantId::new(raw).map_err(sm_read_err)?;
        let mut budget = MAX_PURGED_PER_APPLY;
        txn.delete(super::directory::meta_key(&tenant));
        let directory = super::directory::tenant_prefixes(&tenant);
        for prefix in [tenant_versions_prefix(&tenant), tenant_keys_prefix(&tenant)].into_iter().chain(directory) {
            let found = self
                .engine
                .range(Space::State, Bound::Included(prefix.clone()), prefix_end(&prefix), budget)
                .map_err(sm_read_err)?;
            budget -= found.len();
            for (key, _) in found {
                txn.delete(key);
            }
            if budget == 0 {
                return Ok(());
            }
        }
        txn.delete(marker);
        Ok(())
    }

    /// Forgets request records older than the dedup window, the requests of a few entries at
    /// a time.
    fn expire_requests(&self, index: u64, txn: &mut Txn) -> Result<(), StorageError<NodeId>> {
        let Some(horizon) = index.checked_sub(self.dedup_window_entries) else {
            return Ok(());
        };
        // Through the transaction: an earlier entry applied with this one may have expired some.
        let to = Bound::Excluded(request_index_key(horizon));
        for (key, value) in txn.range(REQUEST_INDEX_PREFIX, to, MAX_EXPIRED_PER_APPLY)? {
            let after_index = &key[REQUEST_INDEX_PREFIX.len() + 8..];
            let ids: Vec<String> = if after_index.is_empty() {
                decode(&value).map_err(sm_read_err)?
            } else {
                // The earlier layout: one key per request, its id after the index.
                vec![String::from_utf8_lossy(after_index).into_owned()]
            };
            for id in ids {
                txn.delete(request_key(&id));
            }
            txn.delete(key);
        }
        Ok(())
    }
}

/// Records snapshots: the state machine already lives durably in the engine, so a snapshot
/// needs no copy of its own (as with etcd's backend). Building one records the applied log id
/// and membership at a point between applies, flushed together with the state they describe,
/// after which openraft may purge the log up to it. The data sent to a follower is copied from
/// the state when a follower needs it ([`StateMachineStore::get_current_snapshot`]).
pub struct SnapshotBuilder {
    store: StateMachineStore,
    /// The applied state when openraft asked for the builder, or the storage error met
    /// reading it (reported by `build_snapshot`).
    captured: Result<SnapshotMeta<NodeId, NodeInfo>, StorageError<NodeId>>,
}

/// A snapshot's id follows from the log id it ends at: the state there is the same on every
/// node, so two snapshots with the same id have the same data.
fn snapshot_meta(
    last_log_id: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, NodeInfo>,
) -> SnapshotMeta<NodeId, NodeInfo> {
    let snapshot_id = match last_log_id {
        Some(id) => format!("{}-{}", id.leader_id, id.index),
        None => "none".to_owned(),
    };
    SnapshotMeta { last_log_id, last_membership, snapshot_id }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    /// The returned snapshot carries no data: openraft keeps only the meta of a snapshot it
    /// built (to purge the log), and asks `get_current_snapshot` for data to send.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let meta =
            std::mem::replace(&mut self.captured, Err(sm_read_err(std::io::Error::other("snapshot already built"))))?;
        let started = std::time::Instant::now();
        self.store.record_snapshot(&meta).await?;
        tracing::info!(
            last_log_index = meta.last_log_id.map(|l| l.index),
            flush_ms = started.elapsed().as_millis() as u64,
            "state machine snapshot recorded"
        );
        Ok(Snapshot { meta, snapshot: Box::new(SnapshotData::from_bytes(Vec::new())) })
    }
}

impl StateMachineStore {
    /// Makes the state up to `meta` durable, then records `meta` as the latest snapshot. Runs
    /// in the state machine worker or after it captured `meta`: applies that follow only move
    /// the durable state further, which is still a valid state past the snapshot.
    async fn record_snapshot(&self, meta: &SnapshotMeta<NodeId, NodeInfo>) -> Result<(), StorageError<NodeId>> {
        let signature = meta.signature();
        let mut batch = Batch::default();
        batch.put(SNAPSHOT_META_KEY, encode(meta).map_err(sm_write_err)?);
        // A copy stored by earlier versions, now superseded.
        batch.delete(LEGACY_SNAPSHOT_KEY);
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StorageError<NodeId>> {
            // The engine recovers a prefix of its writes, so once the meta is durable so is
            // every apply before it.
            engine
                .write(Space::Snapshot, batch)
                .map_err(|e| StorageIOError::write_snapshot(Some(signature.clone()), &e))?;
            engine.flush().map_err(|e| StorageIOError::write_snapshot(Some(signature), &e))?;
            Ok(())
        })
        .await
        .map_err(sm_write_err)??;
        // The log may now be purged past a kept copy, which a follower could then not continue
        // from.
        let mut encoded = self.encoded.lock().unwrap_or_else(|p| p.into_inner());
        encoded.generation += 1;
        encoded.last = None;
        Ok(())
    }

    /// Whether a snapshot was ever built or installed here (or stored by an earlier version).
    fn has_snapshot(&self) -> Result<bool, StorageError<NodeId>> {
        let read = |key| self.engine.get(Space::Snapshot, key).map_err(|e| StorageIOError::read_snapshot(None, &e));
        Ok(read(SNAPSHOT_META_KEY)?.is_some() || read(LEGACY_SNAPSHOT_KEY)?.is_some())
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
        // Entries applied together are written together, at most MAX_ENTRIES_PER_WRITE in
        // one batch: an engine batch costs far more than its keys.
        let mut responses = Vec::new();
        let mut txn = Txn::new(self.engine.as_ref());
        let mut pending = 0;
        for entry in entries {
            responses.push(self.apply_entry(&entry, &mut txn)?);
            pending += 1;
            if pending == MAX_ENTRIES_PER_WRITE {
                std::mem::replace(&mut txn, Txn::new(self.engine.as_ref())).commit(&self.copies)?;
                pending = 0;
            }
        }
        if pending > 0 {
            txn.commit(&self.copies)?;
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let captured = self.applied_state().await.map(|(applied, membership)| snapshot_meta(applied, membership));
        SnapshotBuilder { store: self.clone(), captured }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError<NodeId>> {
        Ok(Box::new(SnapshotData::from_bytes(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError<NodeId>> {
        let signature = meta.signature();
        let bytes =
            snapshot.into_bytes().await.map_err(|e| StorageIOError::read_snapshot(Some(signature.clone()), &e))?;
        let file: SnapshotFile =
            decode(&bytes).map_err(|e| StorageIOError::read_snapshot(Some(signature.clone()), &e))?;
        assert_eq!(file.meta.last_log_id, meta.last_log_id, "snapshot data does not match its meta");
        let mut entries = file.entries;
        entries.retain(|(k, _)| k.as_slice() != APPLIED_KEY && k.as_slice() != MEMBERSHIP_KEY);
        entries.push((APPLIED_KEY.to_vec(), encode(&meta.last_log_id).map_err(sm_write_err)?));
        entries.push((MEMBERSHIP_KEY.to_vec(), encode(&meta.last_membership).map_err(sm_write_err)?));
        let (engine, copies) = (self.engine.clone(), self.copies.clone());
        tokio::task::spawn_blocking(move || copies.replace_all(engine.as_ref(), entries))
            .await
            .map_err(sm_write_err)?
            .map_err(sm_write_err)?;
        self.record_snapshot(meta).await
    }

    /// The state as it is now, once a snapshot was built or installed here, or the copy
    /// last encoded for a follower if no snapshot was recorded since (a follower installing
    /// it continues from the log after it, which a purge has not reached).
    ///
    /// openraft asks for it in the state machine worker, between applies, so a copy begun here
    /// is exactly the applied prefix the meta names. It is read and encoded only if openraft
    /// sends it to a follower, beside the applies that go on meanwhile.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        if !self.has_snapshot()? {
            return Ok(None);
        }
        let (generation, last) = {
            let encoded = self.encoded.lock().unwrap_or_else(|p| p.into_inner());
            (encoded.generation, encoded.last.clone())
        };
        if let Some(KeptCopy { meta, bytes }) = last {
            // Copied off the worker, when sent.
            let data = SnapshotData::deferred(move || Ok(bytes.to_vec()));
            return Ok(Some(Snapshot { meta, snapshot: Box::new(data) }));
        }
        let (applied, membership) = self.applied_state().await?;
        let meta = snapshot_meta(applied, membership);
        let copy = self.copies.begin();
        let (engine, file_meta, encoded) = (self.engine.clone(), meta.clone(), self.encoded.clone());
        let copies_encoded = self.copies_encoded.clone();
        let data = SnapshotData::deferred(move || {
            let started = std::time::Instant::now();
            let last_log_index = file_meta.last_log_id.map(|l| l.index);
            let entries = copy.read(engine.as_ref()).map_err(std::io::Error::other)?;
            let keys = entries.len();
            let kept_meta = file_meta.clone();
            let bytes = encode(&SnapshotFile { meta: file_meta, entries }).map_err(std::io::Error::other)?;
            keep_copy(&encoded, generation, KeptCopy { meta: kept_meta, bytes: Arc::new(bytes.clone()) });
            copies_encoded.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                last_log_index,
                keys,
                bytes = bytes.len(),
                copy_ms = started.elapsed().as_millis() as u64,
                "state machine snapshot copied for a follower"
            );
            Ok(bytes)
        });
        Ok(Some(Snapshot { meta, snapshot: Box::new(data) }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;
    use crate::command::Proposals;
    use crate::types::RequestId;

    fn entry(index: u64, requests: &[&str]) -> Entry<TypeConfig> {
        let proposals = requests
            .iter()
            .map(|id| Proposal {
                request_id: RequestId::new(*id).unwrap(),
                proposed_at_ms: index,
                command: Command::SetTenantStatus {
                    id: TenantId::new("acme").unwrap(),
                    status: TenantStatus::Suspended,
                },
            })
            .collect();
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposals(proposals)),
        }
    }

    fn blank(index: u64) -> Entry<TypeConfig> {
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Blank }
    }

    fn engine_in(dir: &tempfile::TempDir) -> Arc<dyn KvEngine> {
        Arc::new(super::super::sled_engine::SledEngine::open(dir.path(), 64 << 20).unwrap())
    }

    fn keys(engine: &dyn KvEngine, prefix: &[u8]) -> Vec<Vec<u8>> {
        let end = Bound::Excluded([prefix, &[0xff][..]].concat());
        engine
            .range(Space::State, Bound::Included(prefix.to_vec()), end, 100)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    #[tokio::test]
    async fn one_index_key_per_entry_expires_its_requests_and_the_earlier_layout_expires_too() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine_in(&dir);
        let mut sm = StateMachineStore::new(engine.clone(), 10);

        // Three requests in one entry (one a retry of another): two records, one index key.
        let responses = sm.apply(vec![entry(1, &["a", "b", "a"])]).await.unwrap();
        assert_eq!(responses[0].iter().map(|r| r.replayed).collect::<Vec<_>>(), [false, false, true]);
        assert_eq!(keys(engine.as_ref(), REQUEST_PREFIX), [b"r/a".to_vec(), b"r/b".to_vec()]);
        assert_eq!(keys(engine.as_ref(), REQUEST_INDEX_PREFIX), [request_index_key(1)]);

        // A request recorded under the earlier layout, at index 2.
        let record = engine.get(Space::State, b"r/a").unwrap().unwrap();
        let mut older = Batch::default();
        older.put(request_key("old"), record);
        older.put([&request_index_key(2)[..], b"old"].concat(), Vec::new());
        engine.write(Space::State, older).unwrap();

        // Within the window both are remembered: retries replay.
        let retried = sm.apply(vec![entry(5, &["b", "old"])]).await.unwrap();
        assert!(retried[0].iter().all(|r| r.replayed));
        // Past it, every one of them is forgotten, index keys included.
        sm.apply((6..=13).map(blank).collect::<Vec<_>>()).await.unwrap();
        assert!(keys(engine.as_ref(), REQUEST_PREFIX).is_empty(), "{:?}", keys(engine.as_ref(), REQUEST_PREFIX));
        assert!(keys(engine.as_ref(), REQUEST_INDEX_PREFIX).is_empty());
        let fresh = sm.apply(vec![entry(14, &["a"])]).await.unwrap();
        assert!(!fresh[0][0].replayed, "an expired request id is new again");
    }

    #[tokio::test]
    async fn a_copy_stored_by_an_earlier_version_counts_as_a_snapshot_until_the_next_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine_in(&dir);
        let mut sm = StateMachineStore::new(engine.clone(), 10);
        sm.apply(vec![entry(1, &["a"])]).await.unwrap();
        let mut legacy = Batch::default();
        legacy.put(LEGACY_SNAPSHOT_KEY, b"an earlier version's copy".to_vec());
        engine.write(Space::Snapshot, legacy).unwrap();

        let current = sm.get_current_snapshot().await.unwrap().expect("the earlier snapshot is honoured");
        assert_eq!(current.meta.last_log_id.map(|l| l.index), Some(1));

        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert!(engine.get(Space::Snapshot, LEGACY_SNAPSHOT_KEY).unwrap().is_none(), "the old copy is dropped");
        assert!(engine.get(Space::Snapshot, SNAPSHOT_META_KEY).unwrap().is_some());
    }
}

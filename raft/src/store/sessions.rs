//! Applies the sign-in commands: login states (so a sign-in started on one node completes on
//! another) and sessions (valid on every node, revoked everywhere at once).
//!
//! Keys: `l/<state>` login states, `o/<expires be><state>` the same by expiry; `u/<session
//! id>` sessions, `e/<expires be><session id>` the same by absolute expiry, `j/<subject
//! hash>/<created be><session id>` each person's sessions, oldest first. Expired login states
//! and sessions are removed a bounded number per apply.

use openraft::StorageError;
use sha2::{Digest, Sha256};

use super::state_machine::{prefix_end, Txn};
use crate::access::{LoginState, SessionRecord, MAX_LOGIN_TTL_MS, MAX_SESSIONS_PER_USER, MAX_SESSION_MS};
use crate::command::{Command, Output, Rejection};
use crate::types::{NodeId, SessionId, TenantId};

const LOGIN_PREFIX: &[u8] = b"l/";
const LOGIN_EXPIRY_PREFIX: &[u8] = b"o/";
pub(crate) const SESSION_PREFIX: &[u8] = b"u/";
const SESSION_EXPIRY_PREFIX: &[u8] = b"e/";
const SUBJECT_PREFIX: &[u8] = b"j/";

/// Most expired login states and sessions removed while applying one command.
const MAX_PURGED_PER_APPLY: usize = 32;

pub(crate) fn login_key(state: &str) -> Vec<u8> {
    [LOGIN_PREFIX, state.as_bytes()].concat()
}

fn login_expiry_key(expires_at_ms: u64, state: &str) -> Vec<u8> {
    [LOGIN_EXPIRY_PREFIX, &expires_at_ms.to_be_bytes()[..], state.as_bytes()].concat()
}

pub(crate) fn session_key(id: &SessionId) -> Vec<u8> {
    [SESSION_PREFIX, id.as_str().as_bytes()].concat()
}

fn session_expiry_key(expires_at_ms: u64, id: &SessionId) -> Vec<u8> {
    [SESSION_EXPIRY_PREFIX, &expires_at_ms.to_be_bytes()[..], id.as_str().as_bytes()].concat()
}

/// `j/<hex sha256 of subject>/`: a person's sessions (subjects may hold any character).
fn subject_prefix(subject: &str) -> Vec<u8> {
    let digest: String = Sha256::digest(subject.as_bytes())[..16].iter().map(|b| format!("{b:02x}")).collect();
    [SUBJECT_PREFIX, digest.as_bytes(), b"/"].concat()
}

fn subject_key(session: &SessionRecord) -> Vec<u8> {
    [&subject_prefix(&session.subject)[..], &session.created_at_ms.to_be_bytes()[..], session.id.as_str().as_bytes()]
        .concat()
}

type Applied = Result<Result<Output, Rejection>, StorageError<NodeId>>;

pub(super) fn execute(txn: &mut Txn, now: u64, command: &Command) -> Applied {
    match command {
        Command::BeginLogin { login } => {
            purge_expired(txn, now)?;
            let ttl = login.expires_at_ms.saturating_sub(login.created_at_ms);
            if ttl == 0 || ttl > MAX_LOGIN_TTL_MS || login.state.is_empty() || login.state.len() > 128 {
                return Ok(Err(Rejection::InvalidAccess("a sign-in lasts at most an hour and has a state".into())));
            }
            let mut login = login.clone();
            login.created_at_ms = now;
            login.expires_at_ms = now.saturating_add(ttl);
            txn.put_raw(login_expiry_key(login.expires_at_ms, &login.state), Vec::new());
            txn.put(login_key(&login.state), &login)?;
            Ok(Ok(Output::Done))
        }
        Command::CompleteLogin { state, session, max_sessions_per_user } => {
            let Some(login) = txn.get::<LoginState>(&login_key(state))? else {
                return Ok(Err(Rejection::LoginNotFound));
            };
            // A sign-in completes once.
            txn.delete(login_key(state));
            txn.delete(login_expiry_key(login.expires_at_ms, state));
            if login.expires_at_ms <= now {
                return Ok(Err(Rejection::LoginNotFound));
            }
            if let Some(tenant) = &session.tenant {
                if !super::directory::admits(txn, tenant, &session.subject)? {
                    return Ok(Err(Rejection::NotProvisioned(session.subject.clone())));
                }
            }
            open(txn, now, session, *max_sessions_per_user)
        }
        Command::TouchSession { id, at_ms } => {
            let Some(mut session) = txn.get::<SessionRecord>(&session_key(id))? else {
                return Ok(Err(Rejection::SessionNotFound(id.clone())));
            };
            // Only a live session is kept alive, and only forward in time.
            if session.live_at(now) && *at_ms > session.last_seen_ms {
                session.last_seen_ms = (*at_ms).min(now);
                txn.put(session_key(id), &session)?;
            }
            Ok(Ok(Output::Session(session)))
        }
        Command::RevokeSession { id } => {
            let Some(session) = txn.get::<SessionRecord>(&session_key(id))? else {
                return Ok(Err(Rejection::SessionNotFound(id.clone())));
            };
            let revoked = if session.revoked_at_ms.is_none() { end(txn, session, now, true)? } else { session };
            Ok(Ok(Output::Session(revoked)))
        }
        // The state machine dispatches only the commands above here.
        other => unreachable!("{} is not a sign-in command", other.kind()),
    }
}

/// Creates `session` at `now`; the person's oldest live sessions beyond `max_sessions_per_user`
/// end.
pub(super) fn open(txn: &mut Txn, now: u64, session: &SessionRecord, max_sessions_per_user: u32) -> Applied {
    let length = session.expires_at_ms.saturating_sub(session.created_at_ms);
    if length == 0 || length > MAX_SESSION_MS || session.idle_timeout_ms == 0 {
        return Ok(Err(Rejection::InvalidAccess("a session lasts at most 30 days".into())));
    }
    let mut session = session.clone();
    session.created_at_ms = now;
    session.last_seen_ms = now;
    session.expires_at_ms = now.saturating_add(length);
    session.revoked_at_ms = None;
    let limit = max_sessions_per_user.clamp(1, MAX_SESSIONS_PER_USER) as usize;
    let live = live_sessions(txn, &session.subject, now)?;
    let excess = (live.len() + 1).saturating_sub(limit);
    for old in live.into_iter().take(excess) {
        end(txn, old, now, true)?;
    }
    txn.put_raw(session_expiry_key(session.expires_at_ms, &session.id), Vec::new());
    txn.put_raw(subject_key(&session), Vec::new());
    txn.put(session_key(&session.id), &session)?;
    Ok(Ok(Output::Session(session)))
}

/// Ends every session `subject` holds in `tenant` (deprovisioning).
pub(super) fn revoke_subject(
    txn: &mut Txn,
    tenant: &TenantId,
    subject: &str,
    now: u64,
) -> Result<(), StorageError<NodeId>> {
    for session in live_sessions(txn, subject, now)? {
        if session.tenant.as_ref() == Some(tenant) {
            end(txn, session, now, true)?;
        }
    }
    Ok(())
}

/// The live sessions of `subject`, oldest first; dead ones found on the way leave its index.
fn live_sessions(txn: &mut Txn, subject: &str, now: u64) -> Result<Vec<SessionRecord>, StorageError<NodeId>> {
    let prefix = subject_prefix(subject);
    let existing = txn.range(&prefix, prefix_end(&prefix), MAX_SESSIONS_PER_USER as usize + 1)?;
    let mut live = Vec::new();
    for (key, _) in existing {
        let id = &key[prefix.len() + 8..];
        let id = SessionId::new(String::from_utf8_lossy(id).into_owned()).map_err(super::state_machine::sm_read_err)?;
        match txn.get::<SessionRecord>(&session_key(&id))? {
            Some(old) if old.live_at(now) => live.push(old),
            Some(old) => {
                end(txn, old, now, false)?;
            }
            None => txn.delete(key),
        }
    }
    Ok(live)
}

/// Ends a session: revoked (kept as a tombstone until its absolute expiry, so every node sees
/// why) or, when `revoke` is false, an already dead one dropped from its person's index.
fn end(
    txn: &mut Txn,
    mut session: SessionRecord,
    now: u64,
    revoke: bool,
) -> Result<SessionRecord, StorageError<NodeId>> {
    txn.delete(subject_key(&session));
    if revoke && session.revoked_at_ms.is_none() {
        session.revoked_at_ms = Some(now);
        txn.put(session_key(&session.id), &session)?;
    }
    Ok(session)
}

/// Removes a bounded number of expired login states and sessions.
fn purge_expired(txn: &mut Txn, now: u64) -> Result<(), StorageError<NodeId>> {
    let until = |prefix: &[u8]| std::ops::Bound::Excluded([prefix, &now.to_be_bytes()[..]].concat());
    for (key, _) in txn.range(LOGIN_EXPIRY_PREFIX, until(LOGIN_EXPIRY_PREFIX), MAX_PURGED_PER_APPLY)? {
        let state = String::from_utf8_lossy(&key[LOGIN_EXPIRY_PREFIX.len() + 8..]).into_owned();
        txn.delete(login_key(&state));
        txn.delete(key);
    }
    for (key, _) in txn.range(SESSION_EXPIRY_PREFIX, until(SESSION_EXPIRY_PREFIX), MAX_PURGED_PER_APPLY)? {
        let raw = String::from_utf8_lossy(&key[SESSION_EXPIRY_PREFIX.len() + 8..]).into_owned();
        if let Ok(id) = SessionId::new(raw) {
            if let Some(session) = txn.get::<SessionRecord>(&session_key(&id))? {
                txn.delete(subject_key(&session));
            }
            txn.delete(session_key(&id));
        }
        txn.delete(key);
    }
    Ok(())
}

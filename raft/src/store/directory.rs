//! Applies the directory commands (users, groups, native sign-in) and deprovisioning.
//!
//! Keys, each under the tenant: `du/<tenant>/<id>` users, `dn/<tenant>/<name key>` the user id
//! by user name, `dg/<tenant>/<id>` groups, `dh/<tenant>/<name key>` the group id by display
//! name, `dd/<tenant>` the directory's counts and native sign-in setting.

use openraft::StorageError;

use super::access::{access_key, access_revision_key, binding_key, tenant_api_keys_prefix};
use super::sessions;
use super::state_machine::{prefix_end, tenant_key, Txn};
use crate::access::{ApiKeyRecord, TenantAccess, MAX_API_KEYS_PER_TENANT};
use crate::command::{Command, Output, Rejection};
use crate::directory::{
    check_group, check_user, name_key, DirectoryGroup, DirectoryMeta, DirectoryUser, MAX_DIRECTORY_GROUPS,
    MAX_DIRECTORY_USERS,
};
use crate::state::{Tenant, TenantStatus};
use crate::types::{DirectoryId, NodeId, TenantId};

const USER_PREFIX: &str = "du/";
const USER_NAME_PREFIX: &str = "dn/";
const GROUP_PREFIX: &str = "dg/";
const GROUP_NAME_PREFIX: &str = "dh/";
const META_PREFIX: &str = "dd/";

pub(crate) fn users_prefix(tenant: &TenantId) -> Vec<u8> {
    format!("{USER_PREFIX}{tenant}/").into_bytes()
}

pub(crate) fn user_key(tenant: &TenantId, id: &DirectoryId) -> Vec<u8> {
    format!("{USER_PREFIX}{tenant}/{id}").into_bytes()
}

pub(crate) fn user_name_key(tenant: &TenantId, name: &str) -> Vec<u8> {
    format!("{USER_NAME_PREFIX}{tenant}/{}", name_key(name)).into_bytes()
}

pub(crate) fn groups_prefix(tenant: &TenantId) -> Vec<u8> {
    format!("{GROUP_PREFIX}{tenant}/").into_bytes()
}

pub(crate) fn group_key(tenant: &TenantId, id: &DirectoryId) -> Vec<u8> {
    format!("{GROUP_PREFIX}{tenant}/{id}").into_bytes()
}

fn group_name_key(tenant: &TenantId, name: &str) -> Vec<u8> {
    format!("{GROUP_NAME_PREFIX}{tenant}/{}", name_key(name)).into_bytes()
}

pub(crate) fn meta_key(tenant: &TenantId) -> Vec<u8> {
    format!("{META_PREFIX}{tenant}").into_bytes()
}

/// Every key prefix holding a tenant's directory, for purging a deleted tenant.
pub(crate) fn tenant_prefixes(tenant: &TenantId) -> [Vec<u8>; 4] {
    [
        users_prefix(tenant),
        format!("{USER_NAME_PREFIX}{tenant}/").into_bytes(),
        groups_prefix(tenant),
        format!("{GROUP_NAME_PREFIX}{tenant}/").into_bytes(),
    ]
}

type Applied = Result<Result<Output, Rejection>, StorageError<NodeId>>;

pub(super) fn execute(txn: &mut Txn, index: u64, now: u64, command: &Command) -> Applied {
    match command {
        Command::PutDirectoryUser { tenant, user, expected_revision } => {
            let mut meta = match live_meta(txn, tenant, true)? {
                Ok(meta) => meta,
                Err(rejection) => return Ok(Err(rejection)),
            };
            if let Err(reason) = check_user(user) {
                return Ok(Err(Rejection::InvalidAccess(reason)));
            }
            let old = txn.get::<DirectoryUser>(&user_key(tenant, &user.id))?;
            let stored = old.as_ref().map(|o| (o.revision, o.created_at_ms));
            let limit = (&mut meta.users, MAX_DIRECTORY_USERS);
            let created_at_ms = match versioned(tenant, &user.id, *expected_revision, stored, limit, now) {
                Ok(at) => at,
                Err(rejection) => return Ok(Err(rejection)),
            };
            let name = user_name_key(tenant, &user.user_name);
            if let Some(taken) = name_taken(txn, &name, &user.id, "userName", &user.user_name, tenant)? {
                return Ok(Err(taken));
            }
            let mut ended = Vec::new();
            if let Some(old) = &old {
                if name_key(&old.user_name) != name_key(&user.user_name) {
                    txn.delete(user_name_key(tenant, &old.user_name));
                }
                if old.subject() != user.subject() {
                    ended.push(old.subject());
                }
            }
            // An inactive person holds nothing, so only a change to inactive (or a new name)
            // has access to take away.
            if !user.active && old.as_ref().is_none_or(|o| o.active || o.subject() != user.subject()) {
                ended.push(user.subject());
            }
            let mut user = user.clone();
            user.created_at_ms = created_at_ms;
            user.modified_at_ms = now;
            user.revision = index;
            txn.put(name, &user.id)?;
            txn.put(user_key(tenant, &user.id), &user)?;
            put_meta(txn, tenant, meta, index)?;
            for subject in ended {
                deprovision(txn, tenant, &subject, now, index)?;
            }
            Ok(Ok(Output::DirectoryUser(user)))
        }
        Command::DeleteDirectoryUser { tenant, id } => {
            let mut meta = match live_meta(txn, tenant, false)? {
                Ok(meta) => meta,
                Err(rejection) => return Ok(Err(rejection)),
            };
            let Some(user) = txn.get::<DirectoryUser>(&user_key(tenant, id))? else {
                return Ok(Err(Rejection::DirectoryEntryNotFound(id.clone())));
            };
            txn.delete(user_key(tenant, id));
            txn.delete(user_name_key(tenant, &user.user_name));
            meta.users = meta.users.saturating_sub(1);
            put_meta(txn, tenant, meta, index)?;
            let prefix = groups_prefix(tenant);
            for (key, _) in txn.range(&prefix, prefix_end(&prefix), MAX_DIRECTORY_GROUPS as usize)? {
                if let Some(mut group) = txn.get::<DirectoryGroup>(&key)? {
                    if group.members.contains(id) {
                        group.members.retain(|m| m != id);
                        group.modified_at_ms = now;
                        group.revision = index;
                        txn.put(key, &group)?;
                    }
                }
            }
            deprovision(txn, tenant, &user.subject(), now, index)?;
            Ok(Ok(Output::DirectoryUser(user)))
        }
        Command::PutDirectoryGroup { tenant, group, expected_revision } => {
            let mut meta = match live_meta(txn, tenant, true)? {
                Ok(meta) => meta,
                Err(rejection) => return Ok(Err(rejection)),
            };
            if let Err(reason) = check_group(group) {
                return Ok(Err(Rejection::InvalidAccess(reason)));
            }
            let old = txn.get::<DirectoryGroup>(&group_key(tenant, &group.id))?;
            let stored = old.as_ref().map(|o| (o.revision, o.created_at_ms));
            let limit = (&mut meta.groups, MAX_DIRECTORY_GROUPS);
            let created_at_ms = match versioned(tenant, &group.id, *expected_revision, stored, limit, now) {
                Ok(at) => at,
                Err(rejection) => return Ok(Err(rejection)),
            };
            let name = group_name_key(tenant, &group.display_name);
            if let Some(taken) = name_taken(txn, &name, &group.id, "displayName", &group.display_name, tenant)? {
                return Ok(Err(taken));
            }
            let mut group = group.clone();
            group.members.sort();
            group.members.dedup();
            for member in &group.members {
                if txn.get::<DirectoryUser>(&user_key(tenant, member))?.is_none() {
                    return Ok(Err(Rejection::InvalidAccess(format!("member {member} is not a user of this tenant"))));
                }
            }
            if let Some(old) = &old {
                if name_key(&old.display_name) != name_key(&group.display_name) {
                    txn.delete(group_name_key(tenant, &old.display_name));
                }
            }
            group.created_at_ms = created_at_ms;
            group.modified_at_ms = now;
            group.revision = index;
            txn.put(name, &group.id)?;
            txn.put(group_key(tenant, &group.id), &group)?;
            put_meta(txn, tenant, meta, index)?;
            Ok(Ok(Output::DirectoryGroup(group)))
        }
        Command::DeleteDirectoryGroup { tenant, id } => {
            let mut meta = match live_meta(txn, tenant, false)? {
                Ok(meta) => meta,
                Err(rejection) => return Ok(Err(rejection)),
            };
            let Some(group) = txn.get::<DirectoryGroup>(&group_key(tenant, id))? else {
                return Ok(Err(Rejection::DirectoryEntryNotFound(id.clone())));
            };
            txn.delete(group_key(tenant, id));
            txn.delete(group_name_key(tenant, &group.display_name));
            meta.groups = meta.groups.saturating_sub(1);
            put_meta(txn, tenant, meta, index)?;
            Ok(Ok(Output::DirectoryGroup(group)))
        }
        Command::SetNativeSignIn { tenant, native } => {
            let mut meta = match live_meta(txn, tenant, false)? {
                Ok(meta) => meta,
                Err(rejection) => return Ok(Err(rejection)),
            };
            if native.is_some() {
                // A tenant signs in through one provider.
                txn.delete(binding_key(tenant));
            }
            meta.native = native.clone();
            put_meta(txn, tenant, meta, index)?;
            Ok(Ok(Output::Done))
        }
        Command::OpenSession { user, session, max_sessions_per_user, totp_step } => {
            let Some(tenant) = &session.tenant else {
                return Ok(Err(Rejection::InvalidAccess("a native session belongs to a tenant".into())));
            };
            let meta = match live_meta(txn, tenant, true)? {
                Ok(meta) => meta,
                Err(rejection) => return Ok(Err(rejection)),
            };
            if meta.native.is_none() {
                return Ok(Err(Rejection::InvalidAccess(format!("tenant {tenant} does not sign in natively"))));
            }
            let record = txn.get::<DirectoryUser>(&user_key(tenant, user))?;
            let Some(mut record) = record.filter(|u| u.active && u.subject() == session.subject) else {
                return Ok(Err(Rejection::NotProvisioned(session.subject.clone())));
            };
            if let Some(step) = totp_step {
                if *step <= record.totp_last_step {
                    return Ok(Err(Rejection::TotpReplayed));
                }
                record.totp_last_step = *step;
                record.revision = index;
                txn.put(user_key(tenant, user), &record)?;
            }
            sessions::open(txn, now, session, *max_sessions_per_user)
        }
        // The state machine dispatches only the commands above here.
        other => unreachable!("{} is not a directory command", other.kind()),
    }
}

/// The conflict when another entry than `id` holds the name indexed under `key`.
fn name_taken(
    txn: &Txn,
    key: &[u8],
    id: &DirectoryId,
    attribute: &str,
    name: &str,
    tenant: &TenantId,
) -> Result<Option<Rejection>, StorageError<NodeId>> {
    Ok(match txn.get::<DirectoryId>(key)? {
        Some(holder) if holder != *id => {
            Some(Rejection::DirectoryConflict(format!("{attribute} {name:?} is taken in tenant {tenant}")))
        }
        _ => None,
    })
}

/// The creation time of an entry being written: now for a create (counted against `limit`,
/// refused if the id exists), the stored one for a replace (refused unless the entry is still
/// at `expected`). `stored` is the entry's (revision, creation time).
fn versioned(
    tenant: &TenantId,
    id: &DirectoryId,
    expected: Option<u64>,
    stored: Option<(u64, u64)>,
    (count, max): (&mut u64, u64),
    now: u64,
) -> Result<u64, Rejection> {
    match (expected, stored) {
        (None, Some(_)) => Err(Rejection::DirectoryConflict(format!("directory entry {id} exists"))),
        (None, None) if *count >= max => Err(Rejection::TooManyDirectoryEntries(tenant.clone())),
        (None, None) => {
            *count += 1;
            Ok(now)
        }
        (Some(_), None) => Err(Rejection::DirectoryEntryNotFound(id.clone())),
        (Some(expected), Some((actual, _))) if expected != actual => {
            Err(Rejection::StaleDirectoryRevision { id: id.clone(), expected, actual })
        }
        (Some(_), Some((_, created_at_ms))) => Ok(created_at_ms),
    }
}

/// Whether a person an identity provider vouched for may sign in to `tenant`: always while
/// the tenant's directory is empty; once it holds people, only an active one of that name.
pub(super) fn admits(txn: &Txn, tenant: &TenantId, subject: &str) -> Result<bool, StorageError<NodeId>> {
    let meta = txn.get::<DirectoryMeta>(&meta_key(tenant))?.unwrap_or_default();
    if meta.users == 0 {
        return Ok(true);
    }
    let Some(name) = subject.strip_prefix("user:") else {
        return Ok(false);
    };
    let Some(id) = txn.get::<DirectoryId>(&user_name_key(tenant, name))? else {
        return Ok(false);
    };
    Ok(txn.get::<DirectoryUser>(&user_key(tenant, &id))?.is_some_and(|u| u.active && u.subject() == subject))
}

/// Stops native sign-in (the tenant bound an OIDC provider instead).
pub(super) fn stop_native(txn: &mut Txn, tenant: &TenantId, index: u64) -> Result<(), StorageError<NodeId>> {
    if let Some(mut meta) = txn.get::<DirectoryMeta>(&meta_key(tenant))? {
        if meta.native.take().is_some() {
            put_meta(txn, tenant, meta, index)?;
        }
    }
    Ok(())
}

/// Takes every access `subject` holds in `tenant` away: its sessions end, the API keys it
/// created are revoked and its just-in-time grants are dropped.
fn deprovision(
    txn: &mut Txn,
    tenant: &TenantId,
    subject: &str,
    now: u64,
    index: u64,
) -> Result<(), StorageError<NodeId>> {
    sessions::revoke_subject(txn, tenant, subject, now)?;
    let prefix = tenant_api_keys_prefix(tenant);
    for (key, _) in txn.range(&prefix, prefix_end(&prefix), MAX_API_KEYS_PER_TENANT as usize)? {
        let Some(mut record) = txn.get::<ApiKeyRecord>(&key)? else { continue };
        if record.created_by == subject && record.revoked_at_ms.is_none() {
            record.revoked_at_ms = Some(now);
            record.previous = None;
            record.revision = index;
            txn.put(key, &record)?;
        }
    }
    if let Some(mut access) = txn.get::<TenantAccess>(&access_key(tenant))? {
        let before = access.grants.len();
        access.grants.retain(|g| g.subject != subject && g.expires_at_ms > now);
        if access.grants.len() != before {
            access.revision = index;
            txn.put(access_key(tenant), &access)?;
            txn.put(access_revision_key(tenant), &index)?;
        }
    }
    Ok(())
}

/// The directory meta of a tenant that exists and is not deleted (and, with `active`, is
/// active).
fn live_meta(
    txn: &Txn,
    tenant: &TenantId,
    active: bool,
) -> Result<Result<DirectoryMeta, Rejection>, StorageError<NodeId>> {
    Ok(match txn.get::<Tenant>(&tenant_key(tenant))? {
        None => Err(Rejection::TenantNotFound(tenant.clone())),
        Some(t) if t.status == TenantStatus::Deleted => Err(Rejection::TenantDeleted(tenant.clone())),
        Some(t) if active && t.status != TenantStatus::Active => Err(Rejection::TenantNotActive(tenant.clone())),
        Some(_) => Ok(txn.get::<DirectoryMeta>(&meta_key(tenant))?.unwrap_or_default()),
    })
}

fn put_meta(txn: &mut Txn, tenant: &TenantId, mut meta: DirectoryMeta, index: u64) -> Result<(), StorageError<NodeId>> {
    meta.revision = index;
    txn.put(meta_key(tenant), &meta)
}

//! Applies the access-control commands: policy documents, just-in-time grants, API keys.
//!
//! Like every apply, deterministic: time comes from the proposal, and expired grants are
//! dropped by comparing with it.

use openraft::StorageError;

use super::state_machine::{tenant_key, Txn};
use crate::access::{
    check_permissions, check_policy, check_text, ApiKeyRecord, IdentityBinding, JitGrant, PlatformKeys, RetiringSecret,
    TenantAccess, MAX_API_KEYS_PER_TENANT, MAX_API_KEY_OVERLAP_MS, MAX_API_KEY_ROTATION_MS, MAX_GRANTS_PER_TENANT,
    MAX_GRANT_DURATION_MS, MAX_SIGNING_KEYS, MIN_API_KEY_ROTATION_MS, MIN_GRANT_DURATION_MS,
};
use crate::command::{Command, Output, Rejection};
use crate::state::{Tenant, TenantStatus};
use crate::types::{ApiKeyId, NodeId, TenantId};

pub(crate) const ACCESS_PREFIX: &[u8] = b"a/";
pub(crate) const API_KEY_PREFIX: &[u8] = b"y/";
pub(crate) const API_KEY_INDEX_PREFIX: &[u8] = b"i/";
pub(crate) const ACCESS_REVISION_PREFIX: &[u8] = b"w/";
pub(crate) const PLATFORM_KEYS_KEY: &[u8] = b"m/platform";
pub(crate) const BINDING_PREFIX: &[u8] = b"b/";

/// `b/<tenant>`: the tenant's own identity provider.
pub(crate) fn binding_key(tenant: &TenantId) -> Vec<u8> {
    [BINDING_PREFIX, tenant.as_str().as_bytes()].concat()
}
pub(crate) const PLATFORM_KEYS_REVISION_KEY: &[u8] = b"m/platform-revision";

pub(crate) fn access_key(tenant: &TenantId) -> Vec<u8> {
    [ACCESS_PREFIX, tenant.as_str().as_bytes()].concat()
}

/// `w/<tenant>`: the revision of the tenant's access state alone, so a node can check whether
/// its compiled policy is current without decoding the whole record.
pub(crate) fn access_revision_key(tenant: &TenantId) -> Vec<u8> {
    [ACCESS_REVISION_PREFIX, tenant.as_str().as_bytes()].concat()
}

/// `y/<tenant>/`: every API key of a tenant.
pub(crate) fn tenant_api_keys_prefix(tenant: &TenantId) -> Vec<u8> {
    [API_KEY_PREFIX, tenant.as_str().as_bytes(), b"/"].concat()
}

pub(crate) fn api_key_key(tenant: &TenantId, id: &ApiKeyId) -> Vec<u8> {
    [&tenant_api_keys_prefix(tenant)[..], id.as_str().as_bytes()].concat()
}

/// `i/<id>`: which tenant an API key belongs to (a token names only the key).
pub(crate) fn api_key_index_key(id: &ApiKeyId) -> Vec<u8> {
    [API_KEY_INDEX_PREFIX, id.as_str().as_bytes()].concat()
}

type Applied = Result<Result<Output, Rejection>, StorageError<NodeId>>;

/// Applies one access-control command at log `index`, proposed at `now`.
pub(super) fn execute(txn: &mut Txn, index: u64, now: u64, command: &Command) -> Applied {
    match command {
        Command::PutAccessPolicy { tenant, policy, expected_revision } => {
            let mut access = match live_access(txn, tenant, false)? {
                Ok(access) => access,
                Err(rejection) => return Ok(Err(rejection)),
            };
            if let Some(expected) = expected_revision {
                if *expected != access.policy.revision {
                    return Ok(Err(Rejection::StalePolicyRevision {
                        tenant: tenant.clone(),
                        expected: *expected,
                        actual: access.policy.revision,
                    }));
                }
            }
            if let Err(reason) = check_policy(policy) {
                return Ok(Err(Rejection::InvalidAccess(reason)));
            }
            access.policy = policy.clone();
            access.policy.revision = index;
            Ok(Ok(Output::Access(put_access(txn, tenant, access, index, now)?)))
        }
        Command::GrantAccess { tenant, id, subject, permissions, reason, granted_by, duration_ms } => {
            let mut access = match live_access(txn, tenant, true)? {
                Ok(access) => access,
                Err(rejection) => return Ok(Err(rejection)),
            };
            if !(MIN_GRANT_DURATION_MS..=MAX_GRANT_DURATION_MS).contains(duration_ms) {
                return Ok(Err(Rejection::InvalidAccess(format!(
                    "a grant lasts between {MIN_GRANT_DURATION_MS} ms and {MAX_GRANT_DURATION_MS} ms"
                ))));
            }
            let checked = check_permissions(permissions)
                .and_then(|()| check_text("subject", subject))
                .and_then(|()| check_text("reason", reason))
                .and_then(|()| check_text("granted_by", granted_by));
            if let Err(reason) = checked {
                return Ok(Err(Rejection::InvalidAccess(reason)));
            }
            access.grants.retain(|g| g.expires_at_ms > now);
            if access.grants.iter().any(|g| g.id == *id) {
                return Ok(Err(Rejection::InvalidAccess(format!("grant {id} already exists"))));
            }
            if access.grants.len() >= MAX_GRANTS_PER_TENANT {
                return Ok(Err(Rejection::TooManyGrants(tenant.clone())));
            }
            let grant = JitGrant {
                id: id.clone(),
                subject: subject.clone(),
                permissions: permissions.clone(),
                reason: reason.clone(),
                granted_by: granted_by.clone(),
                granted_at_ms: now,
                expires_at_ms: now.saturating_add(*duration_ms),
            };
            access.grants.push(grant.clone());
            put_access(txn, tenant, access, index, now)?;
            Ok(Ok(Output::Grant(grant)))
        }
        Command::RevokeGrant { tenant, grant } => {
            let mut access = match live_access(txn, tenant, false)? {
                Ok(access) => access,
                Err(rejection) => return Ok(Err(rejection)),
            };
            access.grants.retain(|g| g.expires_at_ms > now);
            let before = access.grants.len();
            access.grants.retain(|g| g.id != *grant);
            if access.grants.len() == before {
                return Ok(Err(Rejection::GrantNotFound(grant.clone())));
            }
            Ok(Ok(Output::Access(put_access(txn, tenant, access, index, now)?)))
        }
        Command::CreateApiKey { tenant, id, name, scopes, tier, created_by, secret_sha256, rotation_period_ms } => {
            let mut access = match live_access(txn, tenant, true)? {
                Ok(access) => access,
                Err(rejection) => return Ok(Err(rejection)),
            };
            if txn.get::<TenantId>(&api_key_index_key(id))?.is_some() {
                return Ok(Err(Rejection::ApiKeyExists(id.clone())));
            }
            if access.api_keys_created >= MAX_API_KEYS_PER_TENANT {
                return Ok(Err(Rejection::TooManyApiKeys(tenant.clone())));
            }
            if !(MIN_API_KEY_ROTATION_MS..=MAX_API_KEY_ROTATION_MS).contains(rotation_period_ms) {
                return Ok(Err(Rejection::InvalidAccess(format!(
                    "an API key's rotation period is between {MIN_API_KEY_ROTATION_MS} ms and {MAX_API_KEY_ROTATION_MS} ms"
                ))));
            }
            let checked = check_permissions(scopes)
                .and_then(|()| check_text("name", name))
                .and_then(|()| check_text("tier", tier))
                .and_then(|()| check_text("created_by", created_by));
            if let Err(reason) = checked {
                return Ok(Err(Rejection::InvalidAccess(reason)));
            }
            access.api_keys_created += 1;
            put_access(txn, tenant, access, index, now)?;
            let record = ApiKeyRecord {
                id: id.clone(),
                tenant: tenant.clone(),
                name: name.clone(),
                scopes: scopes.clone(),
                tier: tier.clone(),
                created_by: created_by.clone(),
                created_at_ms: now,
                secret_sha256: *secret_sha256,
                secret_issued_at_ms: now,
                previous: None,
                rotation_period_ms: *rotation_period_ms,
                expires_at_ms: now.saturating_add(*rotation_period_ms),
                revoked_at_ms: None,
                expiry_announced_for_ms: None,
                revision: index,
            };
            txn.put(api_key_index_key(id), tenant)?;
            txn.put(api_key_key(tenant, id), &record)?;
            Ok(Ok(Output::ApiKey(record)))
        }
        Command::RotateApiKey { tenant, id, secret_sha256, overlap_ms } => {
            let mut record = match existing_key(txn, tenant, id)? {
                Ok(record) => record,
                Err(rejection) => return Ok(Err(rejection)),
            };
            if *overlap_ms > MAX_API_KEY_OVERLAP_MS {
                return Ok(Err(Rejection::InvalidAccess(format!(
                    "the overlap of a rotation is at most {MAX_API_KEY_OVERLAP_MS} ms"
                ))));
            }
            // The outgoing secret works for the overlap, but never past its own expiry.
            let valid_until_ms = now.saturating_add(*overlap_ms).min(record.expires_at_ms);
            record.previous = (valid_until_ms > now)
                .then_some(RetiringSecret { secret_sha256: record.secret_sha256, valid_until_ms });
            record.secret_sha256 = *secret_sha256;
            record.secret_issued_at_ms = now;
            record.expires_at_ms = now.saturating_add(record.rotation_period_ms);
            record.revision = index;
            txn.put(api_key_key(tenant, id), &record)?;
            Ok(Ok(Output::ApiKey(record)))
        }
        Command::RevokeApiKey { tenant, id } => {
            let mut record = match txn.get::<ApiKeyRecord>(&api_key_key(tenant, id))? {
                Some(record) => record,
                None => return Ok(Err(Rejection::ApiKeyNotFound(id.clone()))),
            };
            if record.revoked_at_ms.is_none() {
                record.revoked_at_ms = Some(now);
                record.previous = None;
                record.revision = index;
                txn.put(api_key_key(tenant, id), &record)?;
            }
            Ok(Ok(Output::ApiKey(record)))
        }
        Command::BindIdentityProvider { tenant, binding } => {
            if let Err(rejection) = live_access(txn, tenant, false)? {
                return Ok(Err(rejection));
            }
            match binding {
                None => {
                    if txn.get::<IdentityBinding>(&binding_key(tenant))?.is_none() {
                        return Ok(Err(Rejection::NoIdentityProvider(tenant.clone())));
                    }
                    txn.delete(binding_key(tenant));
                }
                Some(binding) => {
                    let checked = check_text("name", &binding.name)
                        .and_then(|()| check_text("issuer", &binding.issuer))
                        .and_then(|()| check_text("client_id", &binding.client_id))
                        .and_then(|()| check_permissions(&binding.default_roles));
                    if let Err(reason) = checked {
                        return Ok(Err(Rejection::InvalidAccess(reason)));
                    }
                    let mut binding = binding.clone();
                    binding.revision = index;
                    txn.put(binding_key(tenant), &binding)?;
                    // A tenant signs in through one provider.
                    super::directory::stop_native(txn, tenant, index)?;
                    return Ok(Ok(Output::Binding(binding)));
                }
            }
            Ok(Ok(Output::Done))
        }
        Command::AnnounceApiKeyExpiry { tenant, id, secret_issued_at_ms } => {
            let Some(mut record) = txn.get::<ApiKeyRecord>(&api_key_key(tenant, id))? else {
                return Ok(Err(Rejection::ApiKeyNotFound(id.clone())));
            };
            if record.secret_issued_at_ms == *secret_issued_at_ms {
                record.expiry_announced_for_ms = Some(*secret_issued_at_ms);
                record.revision = index;
                txn.put(api_key_key(tenant, id), &record)?;
            }
            Ok(Ok(Output::ApiKey(record)))
        }
        Command::PutSigningKeys { custody, keys, expected_revision } => {
            let current = txn.get::<PlatformKeys>(PLATFORM_KEYS_KEY)?;
            let actual = current.as_ref().map_or(0, |c| c.revision);
            if actual != *expected_revision {
                return Ok(Err(Rejection::StaleSigningKeys { expected: *expected_revision, actual }));
            }
            if keys.len() > MAX_SIGNING_KEYS || keys.iter().any(|k| k.kid.is_empty() || k.kid.len() > 64) {
                return Ok(Err(Rejection::InvalidAccess(format!(
                    "at most {MAX_SIGNING_KEYS} signing keys, each with a 1 to 64 byte kid"
                ))));
            }
            // The platform's custody is set once; a rotation proposed by any node keeps it.
            let custody = match current {
                Some(current) if current.custody != *custody => {
                    return Ok(Err(Rejection::InvalidAccess("the platform's key custody is already set".into())))
                }
                Some(current) => current.custody,
                None => custody.clone(),
            };
            let keys = PlatformKeys { custody, signing: keys.clone(), revision: index };
            txn.put(PLATFORM_KEYS_KEY, &keys)?;
            txn.put(PLATFORM_KEYS_REVISION_KEY, &index)?;
            Ok(Ok(Output::Done))
        }
        // The state machine dispatches only the commands above here.
        other => unreachable!("{} is not an access-control command", other.kind()),
    }
}

/// The access state of a tenant that exists and is not deleted (and, with `active`, is
/// active), or a new empty one.
fn live_access(
    txn: &Txn,
    tenant: &TenantId,
    active: bool,
) -> Result<Result<TenantAccess, Rejection>, StorageError<NodeId>> {
    Ok(match txn.get::<Tenant>(&tenant_key(tenant))? {
        None => Err(Rejection::TenantNotFound(tenant.clone())),
        Some(t) if t.status == TenantStatus::Deleted => Err(Rejection::TenantDeleted(tenant.clone())),
        Some(t) if active && t.status != TenantStatus::Active => Err(Rejection::TenantNotActive(tenant.clone())),
        Some(_) => Ok(txn.get::<TenantAccess>(&access_key(tenant))?.unwrap_or_default()),
    })
}

/// An existing, unrevoked API key of an active tenant.
fn existing_key(
    txn: &Txn,
    tenant: &TenantId,
    id: &ApiKeyId,
) -> Result<Result<ApiKeyRecord, Rejection>, StorageError<NodeId>> {
    if let Err(rejection) = live_access(txn, tenant, true)? {
        return Ok(Err(rejection));
    }
    Ok(match txn.get::<ApiKeyRecord>(&api_key_key(tenant, id))? {
        None => Err(Rejection::ApiKeyNotFound(id.clone())),
        Some(record) if record.revoked_at_ms.is_some() => Err(Rejection::ApiKeyRevoked(id.clone())),
        Some(record) => Ok(record),
    })
}

/// Stores the access state at `index`, without the grants that have expired by `now`.
fn put_access(
    txn: &mut Txn,
    tenant: &TenantId,
    mut access: TenantAccess,
    index: u64,
    now: u64,
) -> Result<TenantAccess, StorageError<NodeId>> {
    access.grants.retain(|g| g.expires_at_ms > now);
    access.revision = index;
    txn.put(access_key(tenant), &access)?;
    txn.put(access_revision_key(tenant), &index)?;
    Ok(access)
}

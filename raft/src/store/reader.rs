//! Read access to applied governance state for the API. It never writes.

use std::ops::Bound;
use std::sync::Arc;

use super::access::{
    access_key, access_revision_key, api_key_index_key, api_key_key, binding_key, tenant_api_keys_prefix,
    API_KEY_PREFIX, PLATFORM_KEYS_KEY, PLATFORM_KEYS_REVISION_KEY,
};
use super::carried::{carried_key, origin_end, origin_prefix, CARRIED_PREFIX};
use super::codec::decode;
use super::directory::{group_key, groups_prefix, meta_key, user_key, user_name_key, users_prefix};
use super::engine::{EngineError, KvEngine, Space};
use super::sessions::{login_key, session_key};
use super::state_machine::{
    custody_key, key_key, key_version_key, prefix_end, tenant_key, tenant_keys_prefix, tenant_revision_key, ADMIN_KEY,
    KEY_PREFIX, PENDING_SHRED_PREFIX, TENANT_PREFIX, TENANT_REVISION_PREFIX,
};
use crate::access::{ApiKeyRecord, IdentityBinding, LoginState, PlatformKeys, SessionRecord, TenantAccess};
use crate::command::{CarriedEvent, CarriedPosition};
use crate::directory::{DirectoryGroup, DirectoryMeta, DirectoryUser};
use crate::state::{KeyRecord, KeyVersion, PendingShred, Tenant, TenantCustody};
use crate::types::{ApiKeyId, DirectoryId, KeyId, NodeId, SessionId, TenantId};

/// A read failure: the engine failed or a stored value is corrupt.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("corrupt value under {key}: {source}")]
    Corrupt { key: String, source: super::codec::CodecError },
}

/// Reads the locally applied state machine. Whether a read is linearizable is decided by the
/// caller (see [`crate::Cluster::read_barrier`]) before it reads through here.
#[derive(Clone)]
pub struct GovernanceReader {
    engine: Arc<dyn KvEngine>,
}

impl GovernanceReader {
    pub(crate) fn new(engine: Arc<dyn KvEngine>) -> Self {
        GovernanceReader { engine }
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, ReadError> {
        match self.engine.get(Space::State, key)? {
            Some(bytes) => decode(&bytes)
                .map(Some)
                .map_err(|source| ReadError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), source }),
            None => Ok(None),
        }
    }

    /// Up to `limit` values from `from` to `to`, decoded.
    fn decode_range<T: serde::de::DeserializeOwned>(
        &self,
        from: Bound<Vec<u8>>,
        to: Bound<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<T>, ReadError> {
        self.engine
            .range(Space::State, from, to, limit)?
            .into_iter()
            .map(|(key, value)| {
                decode(&value)
                    .map_err(|source| ReadError::Corrupt { key: String::from_utf8_lossy(&key).into_owned(), source })
            })
            .collect()
    }

    pub fn tenant(&self, id: &TenantId) -> Result<Option<Tenant>, ReadError> {
        self.get(&tenant_key(id))
    }

    /// Up to `limit` tenants with ids strictly after `after`, in id order.
    pub fn tenants(&self, after: Option<&TenantId>, limit: usize) -> Result<Vec<Tenant>, ReadError> {
        let from = match after {
            Some(id) => Bound::Excluded(tenant_key(id)),
            None => Bound::Included(TENANT_PREFIX.to_vec()),
        };
        self.decode_range(from, prefix_end(TENANT_PREFIX), limit)
    }

    /// Up to `limit` tenants whose last change comes after (`revision`, `after_id`) — after
    /// every change at `revision` when `after_id` is None — in (revision, id) order: a change
    /// feed for followers of governance state on this node. Page with the last tenant returned.
    pub fn tenants_changed_after(
        &self,
        revision: u64,
        after_id: Option<&TenantId>,
        limit: usize,
    ) -> Result<Vec<Tenant>, ReadError> {
        // Ids use only bytes below 0x7f, so "\x7f" sorts after every id of a revision.
        let from = Bound::Excluded(tenant_revision_key(revision, after_id.map_or("\u{7f}", |id| id.as_str())));
        let mut tenants = Vec::new();
        for (key, _) in self.engine.range(Space::State, from, prefix_end(TENANT_REVISION_PREFIX), limit)? {
            let raw_id = &key[TENANT_REVISION_PREFIX.len() + 8..];
            let corrupt = || ReadError::Corrupt {
                key: String::from_utf8_lossy(&key).into_owned(),
                source: super::codec::CodecError::Decode("change index names an invalid or missing tenant".into()),
            };
            let id = TenantId::new(String::from_utf8_lossy(raw_id).into_owned()).map_err(|_| corrupt())?;
            tenants.push(self.tenant(&id)?.ok_or_else(corrupt)?);
        }
        Ok(tenants)
    }

    /// Up to `limit` audit events `origin` carried with its commands and has not reported
    /// recorded, after `after` (from the first when None), in log order.
    pub fn carried(
        &self,
        origin: NodeId,
        after: Option<CarriedPosition>,
        limit: usize,
    ) -> Result<Vec<CarriedEvent>, ReadError> {
        let from = match after {
            Some(position) => Bound::Excluded(carried_key(origin, position)),
            None => Bound::Included(origin_prefix(origin)),
        };
        self.decode_range(from, origin_end(origin), limit)
    }

    /// How many events `origin` carried and has not reported recorded, counted up to `limit`.
    pub fn carried_count(&self, origin: NodeId, limit: usize) -> Result<usize, ReadError> {
        let from = Bound::Included(origin_prefix(origin));
        Ok(self.engine.range_rev_keys(Space::State, from, origin_end(origin), limit)?.len())
    }

    /// The nodes with carried events not reported recorded, up to `limit` of them, in id order.
    pub fn carried_origins(&self, limit: usize) -> Result<Vec<NodeId>, ReadError> {
        let mut origins = Vec::new();
        let mut from = Bound::Included(CARRIED_PREFIX.to_vec());
        while origins.len() < limit {
            let Some((key, _)) = self.engine.range(Space::State, from, prefix_end(CARRIED_PREFIX), 1)?.pop() else {
                break;
            };
            let raw: [u8; 8] = key
                .get(CARRIED_PREFIX.len()..CARRIED_PREFIX.len() + 8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| ReadError::Corrupt {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    source: super::codec::CodecError::Decode("a carried event key without its origin".into()),
                })?;
            let origin = NodeId::from_be_bytes(raw);
            origins.push(origin);
            match origin_end(origin) {
                Bound::Excluded(end) => from = Bound::Included(end),
                _ => break,
            }
        }
        Ok(origins)
    }

    /// SHA-256 of the bootstrap admin token, once the cluster was initialised.
    pub fn admin_token_sha256(&self) -> Result<Option<[u8; 32]>, ReadError> {
        self.get(ADMIN_KEY)
    }

    /// Up to `limit` deleted tenants whose roots are still to be destroyed at their provider.
    pub fn pending_shreds(&self, limit: usize) -> Result<Vec<PendingShred>, ReadError> {
        let from = Bound::Included(PENDING_SHRED_PREFIX.to_vec());
        self.decode_range(from, prefix_end(PENDING_SHRED_PREFIX), limit)
    }

    /// The key roots of a tenant; absent once the tenant is deleted.
    pub fn custody(&self, tenant: &TenantId) -> Result<Option<TenantCustody>, ReadError> {
        self.get(&custody_key(tenant))
    }

    pub fn key(&self, tenant: &TenantId, key: &KeyId) -> Result<Option<KeyRecord>, ReadError> {
        self.get(&key_key(tenant, key))
    }

    /// One version's wrapped material; absent once the key is destroyed.
    pub fn key_version(&self, tenant: &TenantId, key: &KeyId, version: u32) -> Result<Option<KeyVersion>, ReadError> {
        self.get(&key_version_key(tenant, key, version))
    }

    /// Up to `limit` keys of a tenant with ids strictly after `after`, in id order.
    pub fn keys(&self, tenant: &TenantId, after: Option<&KeyId>, limit: usize) -> Result<Vec<KeyRecord>, ReadError> {
        let prefix = tenant_keys_prefix(tenant);
        let from = match after {
            Some(key) => Bound::Excluded(key_key(tenant, key)),
            None => Bound::Included(prefix.clone()),
        };
        self.decode_range(from, prefix_end(&prefix), limit)
    }

    /// Up to `limit` keys of every tenant after `after` (a key returned by an earlier call), in
    /// (tenant, id) order: for the leader's key schedule.
    pub fn all_keys(&self, after: Option<&KeyRecord>, limit: usize) -> Result<Vec<KeyRecord>, ReadError> {
        let from = match after {
            Some(key) => Bound::Excluded(key_key(&key.tenant, &key.id)),
            None => Bound::Included(KEY_PREFIX.to_vec()),
        };
        self.decode_range(from, prefix_end(KEY_PREFIX), limit)
    }

    /// A tenant's access state; None until its first access-control write.
    pub fn access(&self, tenant: &TenantId) -> Result<Option<TenantAccess>, ReadError> {
        self.get(&access_key(tenant))
    }

    /// The platform's key custody and token-signing keys, once the leader created them.
    pub fn platform_keys(&self) -> Result<Option<PlatformKeys>, ReadError> {
        self.get(PLATFORM_KEYS_KEY)
    }

    /// The tenant's own identity provider, if it has one.
    pub fn identity_binding(&self, tenant: &TenantId) -> Result<Option<IdentityBinding>, ReadError> {
        self.get(&binding_key(tenant))
    }

    /// A sign-in in progress, by its OAuth state.
    pub fn login(&self, state: &str) -> Result<Option<LoginState>, ReadError> {
        self.get(&login_key(state))
    }

    pub fn session(&self, id: &SessionId) -> Result<Option<SessionRecord>, ReadError> {
        self.get(&session_key(id))
    }

    /// The revision of the platform keys alone (0 before they exist).
    pub fn platform_keys_revision(&self) -> Result<u64, ReadError> {
        Ok(self.get(PLATFORM_KEYS_REVISION_KEY)?.unwrap_or(0))
    }

    /// The revision of a tenant's access state (0 before its first access-control write).
    pub fn access_revision(&self, tenant: &TenantId) -> Result<u64, ReadError> {
        Ok(self.get(&access_revision_key(tenant))?.unwrap_or(0))
    }

    /// An API key by id alone, as a presented token names it.
    pub fn api_key_by_id(&self, id: &ApiKeyId) -> Result<Option<ApiKeyRecord>, ReadError> {
        match self.get::<TenantId>(&api_key_index_key(id))? {
            Some(tenant) => self.api_key(&tenant, id),
            None => Ok(None),
        }
    }

    pub fn api_key(&self, tenant: &TenantId, id: &ApiKeyId) -> Result<Option<ApiKeyRecord>, ReadError> {
        self.get(&api_key_key(tenant, id))
    }

    /// Up to `limit` API keys of every tenant after `after` (a key returned by an earlier
    /// call), in (tenant, id) order: for scans by the leader.
    pub fn all_api_keys(&self, after: Option<&ApiKeyRecord>, limit: usize) -> Result<Vec<ApiKeyRecord>, ReadError> {
        let from = match after {
            Some(key) => Bound::Excluded(api_key_key(&key.tenant, &key.id)),
            None => Bound::Included(API_KEY_PREFIX.to_vec()),
        };
        self.decode_range(from, prefix_end(API_KEY_PREFIX), limit)
    }

    /// Up to `limit` API keys of a tenant with ids strictly after `after`, in id order.
    pub fn api_keys(
        &self,
        tenant: &TenantId,
        after: Option<&ApiKeyId>,
        limit: usize,
    ) -> Result<Vec<ApiKeyRecord>, ReadError> {
        let prefix = tenant_api_keys_prefix(tenant);
        let from = match after {
            Some(id) => Bound::Excluded(api_key_key(tenant, id)),
            None => Bound::Included(prefix.clone()),
        };
        self.decode_range(from, prefix_end(&prefix), limit)
    }

    /// A tenant's directory counts and native sign-in setting (empty before its first write).
    pub fn directory(&self, tenant: &TenantId) -> Result<DirectoryMeta, ReadError> {
        Ok(self.get(&meta_key(tenant))?.unwrap_or_default())
    }

    pub fn directory_user(&self, tenant: &TenantId, id: &DirectoryId) -> Result<Option<DirectoryUser>, ReadError> {
        self.get(&user_key(tenant, id))
    }

    /// A directory user by user name, compared without regard to case.
    pub fn directory_user_by_name(&self, tenant: &TenantId, name: &str) -> Result<Option<DirectoryUser>, ReadError> {
        match self.get::<DirectoryId>(&user_name_key(tenant, name))? {
            Some(id) => self.directory_user(tenant, &id),
            None => Ok(None),
        }
    }

    /// Up to `limit` users of a tenant's directory with ids strictly after `after`, in id order.
    pub fn directory_users(
        &self,
        tenant: &TenantId,
        after: Option<&DirectoryId>,
        limit: usize,
    ) -> Result<Vec<DirectoryUser>, ReadError> {
        let prefix = users_prefix(tenant);
        let from = match after {
            Some(id) => Bound::Excluded(user_key(tenant, id)),
            None => Bound::Included(prefix.clone()),
        };
        self.decode_range(from, prefix_end(&prefix), limit)
    }

    pub fn directory_group(&self, tenant: &TenantId, id: &DirectoryId) -> Result<Option<DirectoryGroup>, ReadError> {
        self.get(&group_key(tenant, id))
    }

    /// Up to `limit` groups of a tenant's directory with ids strictly after `after`, in id
    /// order.
    pub fn directory_groups(
        &self,
        tenant: &TenantId,
        after: Option<&DirectoryId>,
        limit: usize,
    ) -> Result<Vec<DirectoryGroup>, ReadError> {
        let prefix = groups_prefix(tenant);
        let from = match after {
            Some(id) => Bound::Excluded(group_key(tenant, id)),
            None => Bound::Included(prefix.clone()),
        };
        self.decode_range(from, prefix_end(&prefix), limit)
    }
}

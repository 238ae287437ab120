//! The write commands of the governance state machine and their outcomes.
//!
//! A [`Proposal`] is what goes into the Raft log. It carries the client's [`RequestId`] (for
//! exactly-once apply) and the leader-assigned time, so that applying it is deterministic on
//! every node: the state machine never reads a clock.

use serde::{Deserialize, Serialize};

use crate::access::{
    AccessPolicy, ApiKeyRecord, IdentityBinding, JitGrant, LoginState, SessionRecord, SigningKey, TenantAccess,
};
use crate::directory::{DirectoryGroup, DirectoryUser, NativeSignIn};
use crate::state::{KeyAlgorithm, KeyChange, KeyPurpose, KeyRecord, KeyState, Tenant, TenantCustody, TenantStatus};
use crate::types::{ApiKeyId, DirectoryId, GrantId, KeyId, NodeId, RegionLabel, RequestId, SessionId, TenantId};

/// Most keys one tenant may ever create. A constant, not configuration: every node must apply
/// the same rule.
pub const MAX_KEYS_PER_TENANT: u64 = 10_000;
/// Most versions of one key; destroying a key removes them all in one apply.
pub const MAX_KEY_VERSIONS: u32 = 1_000;

/// One entry of application data in the Raft log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub request_id: RequestId,
    /// Milliseconds since the Unix epoch, read by the node that accepted the request.
    pub proposed_at_ms: u64,
    pub command: Command,
}

/// The application data of one Raft log entry: proposals the leader batched together. They are
/// applied in order, atomically, each with its own outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposals(pub Vec<Proposal>);

impl Proposal {
    /// A cheap upper estimate of the encoded size, used to bound batches.
    pub fn approx_bytes(&self) -> usize {
        64 + self.request_id.as_str().len() + self.command.approx_bytes()
    }
}

impl Command {
    /// A cheap upper estimate of the command's variable-length content.
    fn approx_bytes(&self) -> usize {
        match self {
            Command::SetAdminToken { .. } => 32,
            Command::CreateTenant { id, display_name, region, custody } => {
                id.as_str().len()
                    + display_name.len()
                    + region.as_str().len()
                    + custody.root.len()
                    + custody.kek_wrapped.len()
            }
            Command::SetTenantStatus { id, .. } | Command::DeleteTenant { id } => id.as_str().len(),
            Command::CreateKey { tenant, key, material, .. } | Command::RotateKey { tenant, key, material, .. } => {
                tenant.as_str().len() + key.as_str().len() + material.len()
            }
            Command::ChangeKey { tenant, key, .. } | Command::DestroyKey { tenant, key } => {
                tenant.as_str().len() + key.as_str().len()
            }
            Command::RootDestroyed { tenant } => tenant.as_str().len(),
            Command::UpdateTenant { id, display_name, .. } => id.as_str().len() + display_name.len(),
            Command::PutAccessPolicy { tenant, policy, .. } => {
                let texts = |list: &[String]| list.iter().map(|s| s.len() + 8).sum::<usize>();
                tenant.as_str().len()
                    + policy.rego.as_ref().map_or(0, String::len)
                    + policy
                        .roles
                        .iter()
                        .map(|r| r.name.len() + r.description.len() + texts(&r.permissions))
                        .sum::<usize>()
                    + policy
                        .rules
                        .iter()
                        .map(|r| r.id.len() + r.description.len() + texts(&r.permissions) + 64 * r.conditions.len())
                        .sum::<usize>()
                    + policy.mfa_required.as_deref().map_or(0, texts)
            }
            Command::GrantAccess { tenant, subject, permissions, reason, granted_by, .. } => {
                tenant.as_str().len()
                    + subject.len()
                    + reason.len()
                    + granted_by.len()
                    + permissions.iter().map(String::len).sum::<usize>()
            }
            Command::RevokeGrant { tenant, grant } => tenant.as_str().len() + grant.as_str().len(),
            Command::CreateApiKey { tenant, id, name, scopes, tier, created_by, .. } => {
                tenant.as_str().len()
                    + id.as_str().len()
                    + name.len()
                    + tier.len()
                    + created_by.len()
                    + scopes.iter().map(|s| s.len() + 8).sum::<usize>()
                    + 32
            }
            Command::RotateApiKey { tenant, id, .. } => tenant.as_str().len() + id.as_str().len() + 32,
            Command::RevokeApiKey { tenant, id } | Command::AnnounceApiKeyExpiry { tenant, id, .. } => {
                tenant.as_str().len() + id.as_str().len()
            }
            Command::BeginLogin { login } => {
                login.state.len()
                    + login.nonce.len()
                    + login.pkce_verifier_sealed.len()
                    + login.provider.len()
                    + login.return_to.as_ref().map_or(0, String::len)
            }
            Command::CompleteLogin { state, session, .. } => {
                state.len()
                    + session.subject.len()
                    + session.idp.len()
                    + session.idp_sub.len()
                    + session.roles.iter().chain(&session.lob).map(|s| s.len() + 8).sum::<usize>()
                    + 64
            }
            Command::TouchSession { id, .. } | Command::RevokeSession { id } => id.as_str().len(),
            Command::BindIdentityProvider { tenant, binding } => {
                tenant.as_str().len()
                    + binding.as_ref().map_or(0, |b| {
                        b.name.len()
                            + b.issuer.len()
                            + b.client_id.len()
                            + b.client_secret_sealed.len()
                            + b.default_roles.iter().map(|r| r.len() + 8).sum::<usize>()
                    })
            }
            Command::PutDirectoryUser { tenant, user, .. } => {
                let texts = |list: &[String]| list.iter().map(|s| s.len() + 8).sum::<usize>();
                let opt = |o: &Option<String>| o.as_ref().map_or(0, String::len);
                tenant.as_str().len()
                    + user.id.as_str().len()
                    + user.user_name.len()
                    + opt(&user.external_id)
                    + opt(&user.display_name)
                    + opt(&user.given_name)
                    + opt(&user.family_name)
                    + opt(&user.password_hash)
                    + user.totp_sealed.as_ref().map_or(0, Vec::len)
                    + user.emails.iter().map(|e| e.value.len() + opt(&e.kind) + 8).sum::<usize>()
                    + texts(&user.roles)
                    + texts(&user.lob)
            }
            Command::PutDirectoryGroup { tenant, group, .. } => {
                tenant.as_str().len()
                    + group.id.as_str().len()
                    + group.display_name.len()
                    + group.external_id.as_ref().map_or(0, String::len)
                    + group.members.iter().map(|m| m.as_str().len() + 8).sum::<usize>()
            }
            Command::DeleteDirectoryUser { tenant, id } | Command::DeleteDirectoryGroup { tenant, id } => {
                tenant.as_str().len() + id.as_str().len()
            }
            Command::SetNativeSignIn { tenant, .. } => tenant.as_str().len(),
            Command::OpenSession { user, session, .. } => {
                user.as_str().len()
                    + session.subject.len()
                    + session.idp.len()
                    + session.idp_sub.len()
                    + session.roles.iter().chain(&session.lob).map(|s| s.len() + 8).sum::<usize>()
                    + 64
            }
            Command::PutSigningKeys { custody, keys, .. } => {
                custody.root.len()
                    + custody.kek_wrapped.len()
                    + keys
                        .iter()
                        .map(|k| k.kid.len() + k.public_key.len() + k.private_wrapped.len() + 64)
                        .sum::<usize>()
            }
            Command::Audited { command, audit } => command.approx_bytes() + audit.event.len() + 16,
            Command::AuditRecorded { .. } => 24,
        }
    }
}

/// Every change to governance state. Variants are verbs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Records the SHA-256 of the bootstrap admin token. Accepted once, at cluster init.
    SetAdminToken {
        token_sha256: [u8; 32],
    },
    CreateTenant {
        id: TenantId,
        display_name: String,
        region: RegionLabel,
        /// The tenant's key roots, provisioned by the node that accepted the request.
        custody: TenantCustody,
    },
    SetTenantStatus {
        id: TenantId,
        status: TenantStatus,
    },
    /// Tombstones the tenant: it stays listed as deleted and its id is never reused. Its key
    /// roots are removed at once (crypto-shredding); its key records follow a few per entry.
    DeleteTenant {
        id: TenantId,
    },
    /// Creates an L3 key with version 1, whose material (wrapped under the tenant KEK) was
    /// generated by the node that accepted the request.
    CreateKey {
        tenant: TenantId,
        key: KeyId,
        purpose: KeyPurpose,
        algorithm: KeyAlgorithm,
        rotation_period_ms: Option<u64>,
        material: Vec<u8>,
    },
    /// Adds the next version. Refused unless the latest version is still `expected_latest`, so
    /// concurrent or repeated rotations (a scheduler on a new leader) add one version, not two.
    RotateKey {
        tenant: TenantId,
        key: KeyId,
        expected_latest: u32,
        material: Vec<u8>,
    },
    ChangeKey {
        tenant: TenantId,
        key: KeyId,
        change: KeyChange,
    },
    /// Destroys a key whose scheduled destruction time has passed: every version's material
    /// is removed.
    DestroyKey {
        tenant: TenantId,
        key: KeyId,
    },
    /// A deleted tenant's root was destroyed at its provider; forgets the pending shred.
    RootDestroyed {
        tenant: TenantId,
    },
    /// Changes a tenant's display name; with `expected_revision`, only while the tenant is
    /// still at that revision (compare-and-set).
    UpdateTenant {
        id: TenantId,
        display_name: String,
        expected_revision: Option<u64>,
    },
    /// Replaces a tenant's access policy document; with `expected_revision`, only while the
    /// document is still at that revision (0: never written).
    PutAccessPolicy {
        tenant: TenantId,
        policy: AccessPolicy,
        expected_revision: Option<u64>,
    },
    /// Grants `subject` the `permissions` from now for `duration_ms`.
    GrantAccess {
        tenant: TenantId,
        id: GrantId,
        subject: String,
        permissions: Vec<String>,
        reason: String,
        granted_by: String,
        duration_ms: u64,
    },
    /// Ends a grant before it expires.
    RevokeGrant {
        tenant: TenantId,
        grant: GrantId,
    },
    /// Creates an API key whose secret (generated and shown once by the node that accepted the
    /// request) hashes to `secret_sha256`.
    CreateApiKey {
        tenant: TenantId,
        id: ApiKeyId,
        name: String,
        scopes: Vec<String>,
        tier: String,
        created_by: String,
        secret_sha256: [u8; 32],
        rotation_period_ms: u64,
    },
    /// Issues a new secret; the current one keeps working for `overlap_ms`.
    RotateApiKey {
        tenant: TenantId,
        id: ApiKeyId,
        secret_sha256: [u8; 32],
        overlap_ms: u64,
    },
    RevokeApiKey {
        tenant: TenantId,
        id: ApiKeyId,
    },
    /// Records that the coming expiry of the key's secret issued at `secret_issued_at_ms` was
    /// announced; a no-op when the key has been rotated since.
    AnnounceApiKeyExpiry {
        tenant: TenantId,
        id: ApiKeyId,
        secret_issued_at_ms: u64,
    },
    /// Starts a sign-in; it may complete on any node until it expires.
    BeginLogin {
        login: LoginState,
    },
    /// Completes a sign-in: consumes its state and creates the session in the same apply; the
    /// person's oldest sessions beyond `max_sessions_per_user` are revoked.
    CompleteLogin {
        state: String,
        session: SessionRecord,
        max_sessions_per_user: u32,
    },
    /// Records that a session was in use at `at_ms` (idle timeout).
    TouchSession {
        id: SessionId,
        at_ms: u64,
    },
    RevokeSession {
        id: SessionId,
    },
    /// Sets (or, with None, removes) the tenant's own identity provider.
    BindIdentityProvider {
        tenant: TenantId,
        binding: Option<IdentityBinding>,
    },
    /// Replaces the token-signing keys (the leader's rotation), only while they are still at
    /// `expected_revision` (0: none yet). The first write also records the platform's key
    /// custody, generated by the proposing node; later writes must carry the same.
    PutSigningKeys {
        custody: TenantCustody,
        keys: Vec<SigningKey>,
        expected_revision: u64,
    },
    /// Creates (with no `expected_revision`) or replaces (only while still at
    /// `expected_revision`) a directory user. Making the user inactive, or renaming it, ends the
    /// sessions and revokes the API keys of the person it named, in the same apply.
    PutDirectoryUser {
        tenant: TenantId,
        user: DirectoryUser,
        expected_revision: Option<u64>,
    },
    /// Deprovisions a user: removes it from the directory and its groups, ends its sessions,
    /// revokes the API keys it created and drops its just-in-time grants, in one apply.
    DeleteDirectoryUser {
        tenant: TenantId,
        id: DirectoryId,
    },
    /// Creates or replaces a directory group, like [`Command::PutDirectoryUser`].
    PutDirectoryGroup {
        tenant: TenantId,
        group: DirectoryGroup,
        expected_revision: Option<u64>,
    },
    DeleteDirectoryGroup {
        tenant: TenantId,
        id: DirectoryId,
    },
    /// Makes the tenant's people sign in natively (removing any OIDC binding), or, with None,
    /// stops native sign-in.
    SetNativeSignIn {
        tenant: TenantId,
        native: Option<NativeSignIn>,
    },
    /// Opens a session for a directory user who signed in natively. Refused unless the user is
    /// still active and its tenant still signs in natively; a TOTP step must be later than the
    /// last one the user used.
    OpenSession {
        user: DirectoryId,
        session: SessionRecord,
        max_sessions_per_user: u32,
        totp_step: Option<u64>,
    },
    /// A command whose audit event rides in the same log entry: applied as `command`, then
    /// the event is kept with the outcome, replicated and in snapshots, until the node that
    /// took the request has recorded it in its audit outbox (`AuditRecorded`). So the change
    /// and its audit event become durable together, with one log flush.
    Audited {
        command: Box<Command>,
        audit: CarriedAudit,
    },
    /// The events `origin` carried, up to and including `through`, are in its audit outbox:
    /// they are dropped (at most [`MAX_CARRIED_DROPPED_PER_APPLY`] per apply).
    AuditRecorded {
        origin: NodeId,
        through: CarriedPosition,
    },
}

/// Largest carried audit event (the node's encoding of it).
pub const MAX_CARRIED_AUDIT_BYTES: usize = 8 * 1024;
/// Most carried events one `AuditRecorded` drops; its origin records fewer per batch.
pub const MAX_CARRIED_DROPPED_PER_APPLY: usize = 4096;

/// An audit event riding with its command: the node that records it (the one that took the
/// request) and the event, opaque to Raft (the node's audit layer encodes and decodes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedAudit {
    pub origin: NodeId,
    pub event: Vec<u8>,
}

/// Where a carried event was applied: the entry's log index and the proposal's place in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CarriedPosition {
    pub index: u64,
    pub slot: u32,
}

/// A carried event as governance state keeps it: with how its command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedEvent {
    pub position: CarriedPosition,
    pub event: Vec<u8>,
    /// Why the command was refused; None when it was applied (or replayed an applied one).
    pub rejection: Option<Rejection>,
    /// The request id had been applied before: the stored outcome was returned.
    pub replayed: bool,
}

impl Command {
    /// Name used in traces and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::SetAdminToken { .. } => "set_admin_token",
            Command::CreateTenant { .. } => "create_tenant",
            Command::SetTenantStatus { .. } => "set_tenant_status",
            Command::DeleteTenant { .. } => "delete_tenant",
            Command::CreateKey { .. } => "create_key",
            Command::RotateKey { .. } => "rotate_key",
            Command::ChangeKey { .. } => "change_key",
            Command::DestroyKey { .. } => "destroy_key",
            Command::RootDestroyed { .. } => "root_destroyed",
            Command::UpdateTenant { .. } => "update_tenant",
            Command::PutAccessPolicy { .. } => "put_access_policy",
            Command::GrantAccess { .. } => "grant_access",
            Command::RevokeGrant { .. } => "revoke_grant",
            Command::CreateApiKey { .. } => "create_api_key",
            Command::RotateApiKey { .. } => "rotate_api_key",
            Command::RevokeApiKey { .. } => "revoke_api_key",
            Command::PutSigningKeys { .. } => "put_signing_keys",
            Command::AnnounceApiKeyExpiry { .. } => "announce_api_key_expiry",
            Command::BeginLogin { .. } => "begin_login",
            Command::CompleteLogin { .. } => "complete_login",
            Command::TouchSession { .. } => "touch_session",
            Command::RevokeSession { .. } => "revoke_session",
            Command::BindIdentityProvider { .. } => "bind_identity_provider",
            Command::PutDirectoryUser { .. } => "put_directory_user",
            Command::DeleteDirectoryUser { .. } => "delete_directory_user",
            Command::PutDirectoryGroup { .. } => "put_directory_group",
            Command::DeleteDirectoryGroup { .. } => "delete_directory_group",
            Command::SetNativeSignIn { .. } => "set_native_sign_in",
            Command::OpenSession { .. } => "open_session",
            Command::Audited { command, .. } => command.kind(),
            Command::AuditRecorded { .. } => "audit_recorded",
        }
    }

    /// The command itself, without an audit event riding with it.
    pub fn unaudited(&self) -> &Command {
        match self {
            Command::Audited { command, .. } => command.unaudited(),
            command => command,
        }
    }

    /// The command with the material the accepting node generated left out. This is what the
    /// state machine remembers for deduplication: a client's retry of a create or rotate
    /// carries fresh material but is the same request, and remembered requests must not keep
    /// copies of material that crypto-shredding removes.
    pub fn without_material(&self) -> Command {
        // A retry carries its own audit event; the request is the command alone.
        let mut command = self.unaudited().clone();
        match &mut command {
            Command::CreateTenant { custody, .. } => {
                custody.root.clear();
                custody.kek_wrapped.clear();
            }
            Command::CreateKey { material, .. } | Command::RotateKey { material, .. } => material.clear(),
            // A retry carries a fresh secret; it is still the same request.
            Command::CreateApiKey { secret_sha256, .. } | Command::RotateApiKey { secret_sha256, .. } => {
                *secret_sha256 = [0; 32]
            }
            Command::BeginLogin { login } => login.pkce_verifier_sealed.clear(),
            Command::CompleteLogin { session, .. } | Command::OpenSession { session, .. } => {
                session.secret_sha256 = [0; 32]
            }
            // A retry hashes the password with a fresh salt and seals with a fresh nonce.
            Command::PutDirectoryUser { user, .. } => {
                user.password_hash = None;
                user.totp_sealed = None;
            }
            Command::PutSigningKeys { custody, keys, .. } => {
                custody.root.clear();
                custody.kek_wrapped.clear();
                keys.iter_mut().for_each(|k| k.private_wrapped.clear());
            }
            _ => {}
        }
        command
    }
}

/// What applying one log entry produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub outcome: Result<Output, Rejection>,
    /// True when this request id had already been applied and the stored outcome was returned.
    pub replayed: bool,
}

/// The successful result of a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Output {
    Done,
    Tenant(Tenant),
    Key(KeyRecord),
    // New variants go last: stored outcomes are encoded by variant index.
    Access(TenantAccess),
    Grant(JitGrant),
    ApiKey(ApiKeyRecord),
    Session(SessionRecord),
    Binding(IdentityBinding),
    DirectoryUser(DirectoryUser),
    DirectoryGroup(DirectoryGroup),
}

/// A command the state machine refused. Deterministic: every node refuses it the same way.
/// These are the caller's fault and map to 4xx at the API edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("tenant {0} already exists")]
    TenantExists(TenantId),
    #[error("tenant {0} does not exist")]
    TenantNotFound(TenantId),
    #[error("tenant {0} has been deleted")]
    TenantDeleted(TenantId),
    #[error("a deleted tenant cannot be given status {0:?}; deletion is final")]
    InvalidStatus(TenantStatus),
    #[error("the admin token has already been set")]
    AdminTokenAlreadySet,
    #[error("request id {0} was already used for a different command")]
    RequestIdReused(RequestId),
    #[error("tenant {0} is not active")]
    TenantNotActive(TenantId),
    #[error("tenant {0} has no key custody")]
    NoCustody(TenantId),
    #[error("key {0} already exists")]
    KeyExists(KeyId),
    #[error("key {0} does not exist")]
    KeyNotFound(KeyId),
    #[error("key {0} has been destroyed")]
    KeyDestroyed(KeyId),
    #[error("key {key} is {state}, not enabled")]
    KeyNotEnabled { key: KeyId, state: String },
    #[error("key {key} is at version {latest}, not {expected}")]
    StaleKeyVersion { key: KeyId, expected: u32, latest: u32 },
    #[error("{0}")]
    InvalidKeyChange(String),
    #[error("tenant {0} has created the most keys a tenant may have ({MAX_KEYS_PER_TENANT})")]
    TooManyKeys(TenantId),
    #[error("key {0} has the most versions a key may have ({MAX_KEY_VERSIONS})")]
    TooManyVersions(KeyId),
    #[error("key {key} is not due for destruction until {at_ms}")]
    DestroyNotDue { key: KeyId, at_ms: u64 },
    // New variants go last: stored outcomes are encoded by variant index.
    #[error("tenant {tenant} is at revision {actual}, not {expected}")]
    StaleRevision { tenant: TenantId, expected: u64, actual: u64 },
    #[error("{0}")]
    InvalidAccess(String),
    #[error("the access policy of tenant {tenant} is at revision {actual}, not {expected}")]
    StalePolicyRevision { tenant: TenantId, expected: u64, actual: u64 },
    #[error("grant {0} does not exist or has expired")]
    GrantNotFound(GrantId),
    #[error("tenant {0} has the most unexpired grants a tenant may have")]
    TooManyGrants(TenantId),
    #[error("API key {0} already exists")]
    ApiKeyExists(ApiKeyId),
    #[error("API key {0} does not exist")]
    ApiKeyNotFound(ApiKeyId),
    #[error("API key {0} has been revoked")]
    ApiKeyRevoked(ApiKeyId),
    #[error("tenant {0} has created the most API keys a tenant may have")]
    TooManyApiKeys(TenantId),
    #[error("the signing keys are at revision {actual}, not {expected}")]
    StaleSigningKeys { expected: u64, actual: u64 },
    #[error("this sign-in is unknown, already completed or expired; start again")]
    LoginNotFound,
    #[error("session {0} does not exist")]
    SessionNotFound(SessionId),
    #[error("tenant {0} has no identity provider of its own")]
    NoIdentityProvider(TenantId),
    #[error("directory entry {0} does not exist")]
    DirectoryEntryNotFound(DirectoryId),
    #[error("{0}")]
    DirectoryConflict(String),
    #[error("directory entry {id} is at version {actual}, not {expected}")]
    StaleDirectoryRevision { id: DirectoryId, expected: u64, actual: u64 },
    #[error("tenant {0} holds the most directory entries a tenant may have")]
    TooManyDirectoryEntries(TenantId),
    #[error("{0} is not an active person of this tenant's directory")]
    NotProvisioned(String),
    #[error("this one-time code was already used; wait for the next one")]
    TotpReplayed,
}

impl KeyState {
    /// The rejection for an operation that needs an enabled key, if this state refuses it.
    pub fn check_enabled(self, key: &KeyId) -> Result<(), Rejection> {
        match self {
            KeyState::Enabled => Ok(()),
            KeyState::Destroyed => Err(Rejection::KeyDestroyed(key.clone())),
            other => Err(Rejection::KeyNotEnabled { key: key.clone(), state: other.as_str().to_string() }),
        }
    }
}

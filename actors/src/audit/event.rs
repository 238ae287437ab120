//! The audit event: a CloudEvents 1.0 JSON envelope with Custos' chain extensions.
//!
//! Schema version 1 is documented in docs/audit.md. What a caller hands in is an
//! [`AuditRecord`]; the outbox turns it into an [`AuditEvent`] by giving it an id, a time, its
//! place in the chain and its hash.

use custos_raft::TenantId;
use serde::{Deserialize, Serialize};

/// CloudEvents `specversion`.
pub const SPEC_VERSION: &str = "1.0";
/// The version of the `data` schema and of the chain rules; bumped on any change to either.
pub const SCHEMA_VERSION: u32 = 1;
/// Every event type starts with this.
pub const TYPE_PREFIX: &str = "dev.custos.";

/// What happened, as the CloudEvents `type` (after [`TYPE_PREFIX`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    TenantCreate,
    TenantUpdate,
    TenantDelete,
    KeyCreate,
    KeyRotate,
    KeyConfigure,
    KeyEnable,
    KeyDisable,
    KeyScheduleDestroy,
    KeyCancelDestroy,
    /// A key scheduled for destruction was destroyed (by the leader, actor `system`).
    KeyDestroy,
    KeyEncrypt,
    KeyDecrypt,
    KeyRewrap,
    KeyGenerateDataKey,
    /// A request that presented credentials: accepted or refused.
    Authentication,
    /// An admin action that is not a governance change (fault injection, cluster membership).
    AdminAction,
    /// Someone read an audit stream.
    AuditRead,
    /// An authorization decision asked through the API, or a denial of a plain read.
    Authorization,
    /// A tenant's access policy document was replaced.
    PolicyUpdate,
    /// A just-in-time grant was given or revoked.
    GrantCreate,
    GrantRevoke,
    ApiKeyCreate,
    ApiKeyRotate,
    ApiKeyRevoke,
    /// A request authenticated by an API key that no other event records (a plain read).
    ApiKeyUse,
    /// A plain read (a `GET` of tenants, keys, policy, grants, sessions…) by any other principal.
    Read,
    /// A platform token was issued.
    TokenIssue,
    /// An API key's secret expires soon (announced once per secret, by the leader).
    ApiKeyExpiring,
    /// A person signed in through an identity provider (a session was created), or failed to.
    SignIn,
    /// A session was ended by its holder.
    SignOut,
    /// A tenant's identity provider was bound, changed or removed.
    IdentityProviderUpdate,
    /// A directory user was provisioned (SCIM).
    DirectoryUserCreate,
    /// A directory user was changed (SCIM replace or patch, TOTP enrolment); deactivating one
    /// also ends its sessions and revokes its API keys.
    DirectoryUserUpdate,
    /// A directory user was deprovisioned: its sessions ended and its API keys were revoked.
    DirectoryUserDelete,
    DirectoryGroupCreate,
    DirectoryGroupUpdate,
    DirectoryGroupDelete,
    /// A deleted tenant's root was destroyed at its provider (by the leader, actor `system`).
    TenantShred,
}

impl EventType {
    pub const ALL: [EventType; 39] = [
        EventType::TenantCreate,
        EventType::TenantUpdate,
        EventType::TenantDelete,
        EventType::KeyCreate,
        EventType::KeyRotate,
        EventType::KeyConfigure,
        EventType::KeyEnable,
        EventType::KeyDisable,
        EventType::KeyScheduleDestroy,
        EventType::KeyCancelDestroy,
        EventType::KeyDestroy,
        EventType::KeyEncrypt,
        EventType::KeyDecrypt,
        EventType::KeyRewrap,
        EventType::KeyGenerateDataKey,
        EventType::Authentication,
        EventType::AdminAction,
        EventType::AuditRead,
        EventType::Authorization,
        EventType::PolicyUpdate,
        EventType::GrantCreate,
        EventType::GrantRevoke,
        EventType::ApiKeyCreate,
        EventType::ApiKeyRotate,
        EventType::ApiKeyRevoke,
        EventType::ApiKeyUse,
        EventType::Read,
        EventType::TokenIssue,
        EventType::ApiKeyExpiring,
        EventType::SignIn,
        EventType::SignOut,
        EventType::IdentityProviderUpdate,
        EventType::DirectoryUserCreate,
        EventType::DirectoryUserUpdate,
        EventType::DirectoryUserDelete,
        EventType::DirectoryGroupCreate,
        EventType::DirectoryGroupUpdate,
        EventType::DirectoryGroupDelete,
        EventType::TenantShred,
    ];

    /// The type without [`TYPE_PREFIX`], e.g. `key.encrypt`.
    pub fn short(self) -> &'static str {
        match self {
            EventType::TenantCreate => "tenant.create",
            EventType::TenantUpdate => "tenant.update",
            EventType::TenantDelete => "tenant.delete",
            EventType::KeyCreate => "key.create",
            EventType::KeyRotate => "key.rotate",
            EventType::KeyConfigure => "key.configure",
            EventType::KeyEnable => "key.enable",
            EventType::KeyDisable => "key.disable",
            EventType::KeyScheduleDestroy => "key.schedule_destroy",
            EventType::KeyCancelDestroy => "key.cancel_destroy",
            EventType::KeyDestroy => "key.destroy",
            EventType::KeyEncrypt => "key.encrypt",
            EventType::KeyDecrypt => "key.decrypt",
            EventType::KeyRewrap => "key.rewrap",
            EventType::KeyGenerateDataKey => "key.generate_data_key",
            EventType::Authentication => "auth.authenticate",
            EventType::AdminAction => "admin.action",
            EventType::AuditRead => "audit.read",
            EventType::Authorization => "authz.decide",
            EventType::PolicyUpdate => "access.policy_update",
            EventType::GrantCreate => "access.grant",
            EventType::GrantRevoke => "access.revoke_grant",
            EventType::ApiKeyCreate => "apikey.create",
            EventType::ApiKeyRotate => "apikey.rotate",
            EventType::ApiKeyRevoke => "apikey.revoke",
            EventType::ApiKeyUse => "apikey.use",
            EventType::Read => "access.read",
            EventType::TokenIssue => "auth.token",
            EventType::ApiKeyExpiring => "apikey.expiring",
            EventType::SignIn => "auth.login",
            EventType::SignOut => "auth.logout",
            EventType::IdentityProviderUpdate => "access.identity_provider",
            EventType::DirectoryUserCreate => "directory.user_create",
            EventType::DirectoryUserUpdate => "directory.user_update",
            EventType::DirectoryUserDelete => "directory.user_delete",
            EventType::DirectoryGroupCreate => "directory.group_create",
            EventType::DirectoryGroupUpdate => "directory.group_update",
            EventType::DirectoryGroupDelete => "directory.group_delete",
            EventType::TenantShred => "tenant.shred",
        }
    }

    /// The full CloudEvents type, e.g. `dev.custos.key.encrypt`.
    pub fn full(self) -> String {
        format!("{TYPE_PREFIX}{}", self.short())
    }

    /// Parses a full or short type name.
    pub fn parse(name: &str) -> Option<EventType> {
        let short = name.strip_prefix(TYPE_PREFIX).unwrap_or(name);
        EventType::ALL.into_iter().find(|t| t.short() == short)
    }
}

/// Who acted. `idp` and `idp_sub` record where an external identity came from, for audit only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// Stable id within the kind; never a credential.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp_sub: Option<String>,
    /// `admin` (the bootstrap admin token), `api_key`, `user`, `system` (the node itself) or
    /// `anonymous` (no or unusable credentials).
    pub kind: String,
}

impl Actor {
    pub fn admin() -> Actor {
        Actor { kind: "admin".into(), id: "bootstrap-admin".into(), idp: None, idp_sub: None }
    }

    pub fn system() -> Actor {
        Actor { kind: "system".into(), id: "custos".into(), idp: None, idp_sub: None }
    }

    pub fn anonymous() -> Actor {
        Actor { kind: "anonymous".into(), id: "-".into(), idp: None, idp_sub: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    /// Refused by authentication, authorization or admission.
    Denied,
    /// Attempted and failed (bad input, a key state, a provider error).
    Failure,
}

/// The event's `data`: never secrets. Values that would identify a secret (an encryption
/// context, a credential prefix) appear only as HMACs under the tenant's audit key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditData {
    pub actor: Actor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_id: Option<String>,
    /// Further non-secret facts about the action (item counts, HMACs, changed fields).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub details: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_version: Option<u32>,
    pub outcome: Outcome,
    /// The machine-readable error code when the outcome is not success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl AuditData {
    pub fn new(actor: Actor, outcome: Outcome) -> AuditData {
        AuditData {
            actor,
            outcome,
            reason: None,
            request_id: None,
            decision_id: None,
            key_id: None,
            key_version: None,
            details: serde_json::Map::new(),
        }
    }
}

/// Whose audit stream an event belongs to: a tenant's, or the cluster's own (membership and
/// other actions no tenant owns).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AuditStream {
    Tenant(TenantId),
    Cluster,
}

impl AuditStream {
    /// The cluster stream's name: `_` cannot start a tenant id, so it never collides with one.
    pub const CLUSTER: &'static str = "_cluster";

    /// The event's `tenant` attribute, Kafka key and local log directory.
    pub fn as_str(&self) -> &str {
        match self {
            AuditStream::Tenant(tenant) => tenant.as_str(),
            AuditStream::Cluster => Self::CLUSTER,
        }
    }
}

/// What a caller records; the outbox makes an [`AuditEvent`] of it.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub stream: AuditStream,
    pub kind: EventType,
    /// What the event is about inside the tenant, e.g. `keys/payments`.
    pub subject: Option<String>,
    pub data: AuditData,
}

/// One audit event as stored, shipped and verified.
///
/// Fields — here and in [`AuditData`] and [`Actor`] — are declared in the sorted order of their
/// JSON names, and `chainhash` is left out while empty, so serializing an event with an empty
/// `chainhash` yields exactly its canonical form (`chain.rs`) without going through a
/// `serde_json::Value`. A test holds the two equal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    /// Extension: [`SCHEMA_VERSION`].
    pub auditschema: u32,
    /// Extension: the chain this event belongs to — one per tenant per node outbox.
    pub chain: String,
    /// Extension: hex SHA-256 of this event's canonical form.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chainhash: String,
    /// Extension: hex SHA-256 of the previous event of this chain (64 zeros for the first).
    pub chainprev: String,
    /// Extension: 1 for a chain's first event, then +1 without gaps.
    pub chainseq: u64,
    pub data: AuditData,
    pub datacontenttype: String,
    /// Stable across redelivery: consumers dedupe on it.
    pub id: String,
    /// `custos://node/<id>`.
    pub source: String,
    pub specversion: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Extension: the tenant the event belongs to ([`AuditStream::CLUSTER`] for the cluster's).
    pub tenant: String,
    /// RFC 3339, UTC, millisecond precision.
    pub time: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl AuditEvent {
    /// Milliseconds since the Unix epoch of [`AuditEvent::time`], if it parses.
    pub fn time_ms(&self) -> Option<u64> {
        let t = time::OffsetDateTime::parse(&self.time, &time::format_description::well_known::Rfc3339).ok()?;
        u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
    }
}

/// Formats milliseconds since the epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let nanos = i128::from(unix_ms) * 1_000_000;
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    t.format(&format).unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_through_its_name() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(&t.full()), Some(t));
            assert_eq!(EventType::parse(t.short()), Some(t));
        }
        assert_eq!(EventType::parse("dev.custos.nothing"), None);
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}

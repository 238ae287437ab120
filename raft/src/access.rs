//! Access-control state: each tenant's policy document (custom roles, ABAC rules, which
//! permissions need MFA, an optional Rego constraint), its just-in-time grants, and its API
//! keys.
//!
//! Permissions and role names are stored as the strings clients wrote; the node's policy
//! engine validates them before proposing and compiles them for decisions. The state machine
//! checks only what every node must refuse alike: sizes, counts and time bounds.

use serde::{Deserialize, Serialize};

use crate::state::TenantCustody;
use crate::types::{ApiKeyId, GrantId, SessionId, TenantId};

/// Most custom roles of one tenant.
pub const MAX_CUSTOM_ROLES: usize = 100;
/// Most ABAC rules of one tenant.
pub const MAX_RULES: usize = 100;
/// Most permissions (or patterns) one role, rule, grant or API key names.
pub const MAX_PERMISSIONS_PER_ENTRY: usize = 64;
/// Most conditions of one rule.
pub const MAX_CONDITIONS_PER_RULE: usize = 8;
/// Longest name, description or attribute value, in bytes.
pub const MAX_TEXT_BYTES: usize = 256;
/// Largest Rego module a tenant may attach.
pub const MAX_REGO_BYTES: usize = 64 * 1024;
/// Most unexpired just-in-time grants of one tenant.
pub const MAX_GRANTS_PER_TENANT: usize = 1_000;
/// Longest just-in-time grant: a working day.
pub const MAX_GRANT_DURATION_MS: u64 = 12 * 3600 * 1000;
/// Shortest just-in-time grant.
pub const MIN_GRANT_DURATION_MS: u64 = 60 * 1000;
/// Most API keys one tenant may ever create (revoked ones included).
pub const MAX_API_KEYS_PER_TENANT: u64 = 10_000;
/// Default rotation period of an API key (ADR-006: rotation every 90 days).
pub const DEFAULT_API_KEY_ROTATION_MS: u64 = 90 * 24 * 3600 * 1000;
/// Bounds of an API key's rotation period.
pub const MIN_API_KEY_ROTATION_MS: u64 = 60 * 1000;
pub const MAX_API_KEY_ROTATION_MS: u64 = 366 * 24 * 3600 * 1000;
/// Longest overlap in which a rotated-out secret still works.
pub const MAX_API_KEY_OVERLAP_MS: u64 = 7 * 24 * 3600 * 1000;

/// A tenant's access state: one record, so a decision sees one consistent version of it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TenantAccess {
    pub policy: AccessPolicy,
    /// Unexpired just-in-time grants; expired ones are dropped whenever the record is written.
    pub grants: Vec<JitGrant>,
    /// API keys ever created for the tenant (bounds them).
    pub api_keys_created: u64,
    /// Log index of the last change to any part of the record.
    pub revision: u64,
}

/// The document a tenant admin replaces as a whole (`PUT .../policy`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AccessPolicy {
    pub roles: Vec<CustomRole>,
    pub rules: Vec<AccessRule>,
    /// Permissions that need an MFA-verified principal; None keeps the engine's default set.
    pub mfa_required: Option<Vec<String>>,
    /// A Rego module whose `data.custos.allow` must also hold for a request to be allowed.
    pub rego: Option<String>,
    /// Log index at which this document was last replaced (0: never written).
    pub revision: u64,
}

/// A role a tenant defines in addition to the built-in ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomRole {
    pub name: String,
    pub description: String,
    /// Permissions or patterns such as `keys:*`.
    pub permissions: Vec<String>,
}

/// An ABAC rule: whenever a request needs one of `permissions`, every condition must hold.
/// Rules only ever take permissions away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRule {
    pub id: String,
    pub description: String,
    pub permissions: Vec<String>,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// The resource's line of business (the request's `lob` attribute) must be one of the
    /// principal's lines of business. A request without one is refused.
    LineOfBusiness,
    /// The request's `environment` attribute must be one of these (e.g. only `prod`).
    Environment { allowed: Vec<String> },
    /// The decision time, in `time_zone` (an IANA name), must fall on one of `days`
    /// (0 = Monday … 6 = Sunday) between `start_minute` (inclusive) and `end_minute`
    /// (exclusive) minutes after midnight.
    TimeWindow { time_zone: String, days: Vec<u8>, start_minute: u16, end_minute: u16 },
}

/// A time-bound elevation of one principal, replicated like any other write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JitGrant {
    pub id: GrantId,
    /// The principal's subject, as the policy engine names it (`user:alice`, `apikey:…`).
    pub subject: String,
    pub permissions: Vec<String>,
    pub reason: String,
    pub granted_by: String,
    pub granted_at_ms: u64,
    pub expires_at_ms: u64,
}

/// An API key. The token is `cak_<id>_<secret>`; only the secret's SHA-256 is stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: ApiKeyId,
    pub tenant: TenantId,
    pub name: String,
    /// The permissions the key carries (a subset of its creator's when it was created).
    pub scopes: Vec<String>,
    /// The rate tier, one of the deployment's configured tiers.
    pub tier: String,
    pub created_by: String,
    pub created_at_ms: u64,
    pub secret_sha256: [u8; 32],
    /// When the current secret was issued.
    pub secret_issued_at_ms: u64,
    /// A rotated-out secret and until when it still works.
    pub previous: Option<RetiringSecret>,
    pub rotation_period_ms: u64,
    /// The current secret stops working at this time unless the key is rotated before.
    pub expires_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
    /// The `secret_issued_at_ms` of the secret whose coming expiry was announced (an
    /// `apikey.expiring` audit event), so each secret is announced once.
    pub expiry_announced_for_ms: Option<u64>,
    /// Log index of the last change.
    pub revision: u64,
}

impl std::fmt::Debug for ApiKeyRecord {
    // Hashes are not secrets, but they have no business in logs either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyRecord")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("scopes", &self.scopes)
            .field("tier", &self.tier)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("revoked_at_ms", &self.revoked_at_ms)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiringSecret {
    pub secret_sha256: [u8; 32],
    pub valid_until_ms: u64,
}

/// Which secret of a key a presented token matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretMatch {
    Current,
    /// The rotated-out secret, inside its overlap window.
    Previous,
}

impl ApiKeyRecord {
    /// Whether a token whose secret hashes to `sha256` authenticates at `now_ms`, and as which
    /// secret. Compares in constant time; revoked and expired keys never match.
    pub fn check_secret(&self, sha256: &[u8; 32], now_ms: u64) -> Option<SecretMatch> {
        if self.revoked_at_ms.is_some() {
            return None;
        }
        let current = constant_time_eq(&self.secret_sha256, sha256) && now_ms < self.expires_at_ms;
        let previous = self
            .previous
            .as_ref()
            .is_some_and(|p| constant_time_eq(&p.secret_sha256, sha256) && now_ms < p.valid_until_ms);
        match (current, previous) {
            (true, _) => Some(SecretMatch::Current),
            (false, true) => Some(SecretMatch::Previous),
            _ => None,
        }
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    bool::from(subtle::ConstantTimeEq::ct_eq(&a[..], &b[..]))
}

/// The tenant id under which the platform's own key custody (token-signing keys) is held by
/// the core provider. No tenant may take it.
pub const PLATFORM_TENANT: &str = "custos-platform";
/// Most token-signing keys published at once (the active one, the next, retiring ones).
pub const MAX_SIGNING_KEYS: usize = 8;

/// How platform tokens are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SigningAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 and a 2048-bit key.
    Rs256,
    /// Ed25519.
    EdDsa,
}

impl SigningAlgorithm {
    /// The JOSE name (`alg`).
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::Rs256 => "RS256",
            SigningAlgorithm::EdDsa => "EdDSA",
        }
    }
}

/// A token-signing key. Its private half is wrapped under the platform KEK, which the core
/// provider holds like a tenant's; its public half is published in the JWKS.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey {
    pub kid: String,
    pub algorithm: SigningAlgorithm,
    /// RS256: the PKCS#1 DER public key; EdDSA: the 32-byte public key.
    pub public_key: Vec<u8>,
    /// RS256: PKCS#1 DER, EdDSA: PKCS#8 DER; sealed under the platform KEK.
    pub private_wrapped: Vec<u8>,
    pub created_at_ms: u64,
    /// Tokens are signed with the key of the latest activation at or before now; a key is
    /// published before it activates, so verifiers know it in time.
    pub activates_at_ms: u64,
    /// When it leaves the JWKS: after the last token it signed has expired.
    pub retires_at_ms: Option<u64>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("activates_at_ms", &self.activates_at_ms)
            .field("retires_at_ms", &self.retires_at_ms)
            .finish_non_exhaustive()
    }
}

/// The platform's key custody and its token-signing keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformKeys {
    pub custody: TenantCustody,
    pub signing: Vec<SigningKey>,
    /// Log index of the last change.
    pub revision: u64,
}

/// Longest time between starting a sign-in and completing it.
pub const MAX_LOGIN_TTL_MS: u64 = 3600 * 1000;
/// Most sessions one person may hold at once, whatever the configuration says.
pub const MAX_SESSIONS_PER_USER: u32 = 100;
/// Longest session.
pub const MAX_SESSION_MS: u64 = 30 * 24 * 3600 * 1000;

/// A tenant's own identity provider (ADR-0002: bring your own IdP by configuration): an OIDC
/// provider — Entra ID, Okta, Google, a Keycloak realm — found by its issuer's discovery
/// document. Everyone who signs in through it belongs to the tenant.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityBinding {
    /// Recorded as `idp` in sessions and audit events.
    pub name: String,
    pub issuer: String,
    pub client_id: String,
    /// The client secret, sealed under the tenant KEK (so deleting the tenant shreds it).
    pub client_secret_sealed: Vec<u8>,
    /// Roles given to people whose provider asserts none of Custos' roles.
    pub default_roles: Vec<String>,
    /// Log index of the last change.
    pub revision: u64,
}

impl std::fmt::Debug for IdentityBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityBinding")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// A sign-in in progress: what the callback needs, kept in governance state so that it may
/// complete on any node.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    /// The OAuth `state` the provider returns (random, also the record's key).
    pub state: String,
    pub nonce: String,
    /// The PKCE verifier, sealed under the platform KEK.
    pub pkce_verifier_sealed: Vec<u8>,
    /// The identity provider's name.
    pub provider: String,
    /// The tenant whose own identity provider is used; None for the deployment's.
    pub tenant: Option<TenantId>,
    /// Where to send the browser once signed in (a path on Custos).
    pub return_to: Option<String>,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
}

impl std::fmt::Debug for LoginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginState")
            .field("provider", &self.provider)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish_non_exhaustive()
    }
}

/// A signed-in person's session, valid on every node. The cookie is `<id>.<secret>`; only the
/// secret's SHA-256 is stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: SessionId,
    pub secret_sha256: [u8; 32],
    /// `user:<name>` as grants and audit name the person.
    pub subject: String,
    pub tenant: Option<TenantId>,
    pub roles: Vec<String>,
    pub lob: Vec<String>,
    pub mfa_verified: bool,
    pub idp: String,
    pub idp_sub: String,
    pub created_at_ms: u64,
    /// Refreshed (through Raft, at most every quarter of the idle timeout) while in use.
    pub last_seen_ms: u64,
    pub idle_timeout_ms: u64,
    /// The absolute end.
    pub expires_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
}

impl std::fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRecord")
            .field("id", &self.id)
            .field("subject", &self.subject)
            .field("tenant", &self.tenant)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("revoked_at_ms", &self.revoked_at_ms)
            .finish_non_exhaustive()
    }
}

impl SessionRecord {
    /// Whether the session admits a request at `now_ms`: not revoked, not past its absolute
    /// end, not idle for longer than its idle timeout.
    pub fn live_at(&self, now_ms: u64) -> bool {
        self.revoked_at_ms.is_none()
            && now_ms < self.expires_at_ms
            && now_ms < self.last_seen_ms.saturating_add(self.idle_timeout_ms)
    }
}

/// Checks what the state machine must refuse alike on every node in a policy document./// Checks what the state machine must refuse alike on every node in a policy document.
pub fn check_policy(policy: &AccessPolicy) -> Result<(), String> {
    if policy.roles.len() > MAX_CUSTOM_ROLES {
        return Err(format!("at most {MAX_CUSTOM_ROLES} custom roles"));
    }
    if policy.rules.len() > MAX_RULES {
        return Err(format!("at most {MAX_RULES} rules"));
    }
    for role in &policy.roles {
        check_text("role name", &role.name)?;
        check_text("role description", &role.description)?;
        check_permissions(&role.permissions)?;
    }
    for rule in &policy.rules {
        check_text("rule id", &rule.id)?;
        check_text("rule description", &rule.description)?;
        check_permissions(&rule.permissions)?;
        if rule.conditions.len() > MAX_CONDITIONS_PER_RULE {
            return Err(format!("a rule has at most {MAX_CONDITIONS_PER_RULE} conditions"));
        }
        for condition in &rule.conditions {
            match condition {
                Condition::LineOfBusiness => {}
                Condition::Environment { allowed } => {
                    if allowed.len() > MAX_PERMISSIONS_PER_ENTRY {
                        return Err(format!("an environment condition names at most {MAX_PERMISSIONS_PER_ENTRY}"));
                    }
                    allowed.iter().try_for_each(|e| check_text("environment", e))?;
                }
                Condition::TimeWindow { time_zone, days, start_minute, end_minute } => {
                    check_text("time zone", time_zone)?;
                    if days.is_empty() || days.len() > 7 || days.iter().any(|d| *d > 6) {
                        return Err("time window days are 0 (Monday) to 6 (Sunday), at least one".into());
                    }
                    if start_minute >= end_minute || *end_minute > 24 * 60 {
                        return Err("a time window needs start_minute < end_minute <= 1440".into());
                    }
                }
            }
        }
    }
    if let Some(mfa) = &policy.mfa_required {
        check_permissions(mfa)?;
    }
    if policy.rego.as_ref().is_some_and(|r| r.len() > MAX_REGO_BYTES) {
        return Err(format!("a Rego module is at most {MAX_REGO_BYTES} bytes"));
    }
    Ok(())
}

pub fn check_permissions(permissions: &[String]) -> Result<(), String> {
    if permissions.len() > MAX_PERMISSIONS_PER_ENTRY {
        return Err(format!("at most {MAX_PERMISSIONS_PER_ENTRY} permissions per entry"));
    }
    permissions.iter().try_for_each(|p| check_text("permission", p))
}

pub fn check_text(what: &str, text: &str) -> Result<(), String> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(format!("{what} is longer than {MAX_TEXT_BYTES} bytes"));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("{what} contains control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(expires_at_ms: u64) -> ApiKeyRecord {
        ApiKeyRecord {
            id: ApiKeyId::new("k1").unwrap(),
            tenant: TenantId::new("acme").unwrap(),
            name: "ci".into(),
            scopes: vec![],
            tier: "standard".into(),
            created_by: "admin".into(),
            created_at_ms: 0,
            secret_sha256: [1; 32],
            secret_issued_at_ms: 0,
            previous: Some(RetiringSecret { secret_sha256: [2; 32], valid_until_ms: 50 }),
            rotation_period_ms: 100,
            expires_at_ms,
            revoked_at_ms: None,
            expiry_announced_for_ms: None,
            revision: 1,
        }
    }

    #[test]
    fn secrets_match_only_while_valid() {
        let k = key(100);
        // The current secret until expiry; the previous one only inside its overlap.
        assert_eq!(k.check_secret(&[1; 32], 99), Some(SecretMatch::Current));
        assert_eq!(k.check_secret(&[1; 32], 100), None);
        assert_eq!(k.check_secret(&[2; 32], 49), Some(SecretMatch::Previous));
        assert_eq!(k.check_secret(&[2; 32], 50), None);
        assert_eq!(k.check_secret(&[3; 32], 0), None);
        // Revocation ends both at once.
        let revoked = ApiKeyRecord { revoked_at_ms: Some(10), ..k };
        assert_eq!(revoked.check_secret(&[1; 32], 11), None);
        assert_eq!(revoked.check_secret(&[2; 32], 11), None);
    }

    #[test]
    fn policy_bounds_are_checked() {
        let window = |start, end, days: Vec<u8>| AccessPolicy {
            rules: vec![AccessRule {
                id: "hours".into(),
                description: String::new(),
                permissions: vec!["findings:*".into()],
                conditions: vec![Condition::TimeWindow {
                    time_zone: "Europe/Paris".into(),
                    days,
                    start_minute: start,
                    end_minute: end,
                }],
            }],
            ..AccessPolicy::default()
        };
        assert!(check_policy(&window(540, 1080, vec![0, 4])).is_ok());
        assert!(check_policy(&window(1080, 540, vec![0])).is_err());
        assert!(check_policy(&window(0, 1441, vec![0])).is_err());
        assert!(check_policy(&window(0, 60, vec![7])).is_err());
        assert!(check_policy(&window(0, 60, vec![])).is_err());
        let too_many = AccessPolicy {
            roles: (0..=MAX_CUSTOM_ROLES)
                .map(|i| CustomRole { name: format!("r{i}"), description: String::new(), permissions: vec![] })
                .collect(),
            ..AccessPolicy::default()
        };
        assert!(check_policy(&too_many).is_err());
    }
}

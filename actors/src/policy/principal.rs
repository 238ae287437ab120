//! The platform identity model: who is asking, after authentication and claim normalisation.

use custos_raft::TenantId;

use super::permission::PermissionSet;

/// How the principal authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// The bootstrap admin token created at `cluster init`: a platform super admin.
    Bootstrap,
    /// A person signed in through an identity provider (or holding a platform token issued to
    /// one).
    User,
    /// A machine holding an API key (or a platform token exchanged for one).
    ApiKey,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Bootstrap => "bootstrap",
            PrincipalKind::User => "user",
            PrincipalKind::ApiKey => "api_key",
        }
    }
}

/// An authenticated caller. Every identity source — the bootstrap token, API keys, platform
/// tokens, identity providers — is normalised into this before any decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// Stable name used by grants and audit: `user:<name>`, `apikey:<id>`, `bootstrap`.
    pub subject: String,
    pub kind: PrincipalKind,
    /// The tenant the principal belongs to; None for platform principals, which may act on
    /// any tenant.
    pub tenant: Option<TenantId>,
    /// Role names: built-in ones, or the tenant's custom roles.
    pub roles: Vec<String>,
    /// Permissions held directly (an API key's scopes, a platform token's permissions).
    pub permissions: PermissionSet,
    /// Lines of business the principal works for (ABAC).
    pub lob: Vec<String>,
    pub mfa_verified: bool,
    /// Which identity provider vouched for the principal, and its subject there: recorded for
    /// audit, never used for decisions.
    pub idp: String,
    pub idp_sub: String,
}

impl Principal {
    /// The holder of the bootstrap admin token. It counts as MFA-verified: it is a break-glass
    /// credential kept offline, and without it a fresh cluster could not be configured.
    pub fn bootstrap() -> Principal {
        Principal {
            subject: "bootstrap".into(),
            kind: PrincipalKind::Bootstrap,
            tenant: None,
            roles: vec!["super_admin".into()],
            permissions: PermissionSet::EMPTY,
            lob: Vec::new(),
            mfa_verified: true,
            idp: "custos".into(),
            idp_sub: "bootstrap".into(),
        }
    }
}

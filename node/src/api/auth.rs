//! Authentication and the authorization guard.
//!
//! [`authenticate`] runs once per `/v1` request, in the audit middleware, before the handler:
//! a presented credential that does not authenticate is refused there (401), whatever the
//! route, and an API key over its rate gets 429 with Retry-After. What authenticated becomes
//! a [`Principal`] in the request's extensions. Handlers take a [`Caller`] and ask
//! [`Caller::authorize`] for the permission the route needs; the decision (allow or deny)
//! lands in the request's [`DecisionSlot`] for the audit event.
//!
//! Credentials, all as `Authorization: Bearer <token>`:
//! - `cst_…` — the bootstrap admin token (its SHA-256 is in governance state): a platform
//!   super admin.
//! - `cak_<id>_<secret>` — an API key of one tenant, looked up by its public id; only the
//!   secret's SHA-256 is stored. Its scopes are its permissions. A key unknown here is looked
//!   up again after one read barrier, so a key is usable on every node once its creation
//!   was acknowledged.
//! - `eyJ…` — a platform token (JWT) signed by a published signing key; its claims are the
//!   principal (`idp`/`idp_sub` only for audit).
//!
//! Without an Authorization header, the session cookie of a signed-in person (`login.rs`).

use std::sync::{Arc, Mutex};

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use base64::Engine;
use custos_actors::policy::{
    AccessRequest, Attributes, Decision, DenyKind, Permission, PermissionSet, Principal, PrincipalKind,
};
use custos_raft::{ApiKeyId, SessionId, TenantId, TenantStatus};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::error::ApiError;
use super::{now_ms, AppState};

/// Prefix of admin tokens, so a leaked token is recognisable by secret scanners.
pub const TOKEN_PREFIX: &str = "cst_";
/// Prefix of API key tokens.
pub const API_KEY_PREFIX: &str = "cak_";
/// Request headers carrying the ABAC attributes of the resource a request acts on.
pub const LOB_HEADER: &str = "custos-lob";
/// The session cookie: `<session id>.<secret>`.
pub const SESSION_COOKIE: &str = "custos_session";
/// A request authenticated by the session cookie that changes anything must carry this
/// header (any value): another site cannot make a browser send it (CSRF).
pub const CSRF_HEADER: &str = "x-custos-csrf";
pub const ENVIRONMENT_HEADER: &str = "custos-environment";

/// A new random admin token. Returned once to the operator, never stored in the clear.
pub fn new_admin_token() -> Zeroizing<String> {
    Zeroizing::new(format!("{TOKEN_PREFIX}{}", random_secret().as_str()))
}

/// 256 random bits, base64url.
pub fn random_secret() -> Zeroizing<String> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref()))
}

pub fn token_sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A public identifier (API keys, sessions): 16 characters of a-z and 2-7, 80 bits, an id no
/// one guesses or collides with.
pub fn random_id() -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| ALPHABET[(b & 31) as usize] as char).collect()
}

/// A new API key: its public id, the token shown once, and the hash that is stored.
pub struct NewApiKey {
    pub id: ApiKeyId,
    pub token: Zeroizing<String>,
    pub secret_sha256: [u8; 32],
}

/// Mints an API key token (for a new key, or a new secret of `id`).
pub fn new_api_key(id: Option<ApiKeyId>) -> NewApiKey {
    let id = id.unwrap_or_else(|| ApiKeyId::new(random_id()).expect("lowercase letters and digits make a valid id"));
    let secret = random_secret();
    let secret_sha256 = token_sha256(&secret);
    let token = Zeroizing::new(format!("{API_KEY_PREFIX}{id}_{}", secret.as_str()));
    NewApiKey { id, token, secret_sha256 }
}

/// The principal a request authenticated as (a request extension).
#[derive(Clone)]
pub struct Authenticated(pub Arc<Principal>);

/// The last authorization decision of a request, for its audit event (a request extension).
#[derive(Clone, Default)]
pub struct DecisionSlot(Arc<Mutex<Option<String>>>);

impl DecisionSlot {
    fn record(&self, decision: &Decision) {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(decision.id.to_string());
    }

    pub fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }

    /// The decision so far, leaving it in place.
    pub fn peek(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// Authenticates the request's credentials, if it presents any. A presented credential that
/// does not authenticate is an error; none at all is `Ok(None)` (the route decides).
pub async fn authenticate(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Option<Principal>, ApiError> {
    let Some(header) = headers.get(AUTHORIZATION) else {
        return match session_cookie(headers) {
            Some((id, secret)) => session(state, method, headers, &id, &secret).await.map(Some),
            None => Ok(None),
        };
    };
    let token = header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthenticated("the Authorization header must be: Bearer <token>"))?;
    if let Some(rest) = token.strip_prefix(API_KEY_PREFIX) {
        return api_key(state, rest).await.map(Some);
    }
    // A JWS in compact form starts with its base64url header, `{"` → `eyJ`.
    if token.starts_with("eyJ") {
        return platform_token(state, token).map(Some);
    }
    let expected = match state.admin_sha256.get() {
        Some(hash) => *hash,
        None => {
            let hash = state.cluster.reader().admin_token_sha256()?.ok_or_else(|| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_initialized",
                    "this node has no admin credential yet: initialise the cluster or wait until this node has joined",
                )
            })?;
            // The state machine accepts the admin hash once and never changes it.
            *state.admin_sha256.get_or_init(|| hash)
        }
    };
    if bool::from(token_sha256(token).ct_eq(&expected)) {
        Ok(Some(Principal::bootstrap()))
    } else {
        Err(ApiError::unauthenticated("the token is not valid"))
    }
}

/// `<id>_<secret>` of an API key token: the key must exist, be unrevoked and unexpired, its
/// tenant active, and the key within its rate.
async fn api_key(state: &AppState, rest: &str) -> Result<Principal, ApiError> {
    let invalid = || ApiError::unauthenticated("the API key is not valid (unknown, revoked, expired or mistyped)");
    let (id, secret) = rest.split_once('_').ok_or_else(invalid)?;
    let id = ApiKeyId::new(id).map_err(|_| invalid())?;
    let secret_sha256 = token_sha256(secret);
    let matches = |record: &Option<custos_raft::access::ApiKeyRecord>| {
        record.as_ref().is_some_and(|r| r.check_secret(&secret_sha256, now_ms()).is_some())
    };
    let mut record = state.cluster.reader().api_key_by_id(&id)?;
    if !matches(&record) {
        // A key (or secret) created or rotated through another node works here as soon as
        // its write was acknowledged: catch up with the leader once before refusing.
        if state.cluster.read_barrier(custos_raft::Consistency::Linearizable).await.is_ok() {
            record = state.cluster.reader().api_key_by_id(&id)?;
        }
    }
    if !matches(&record) {
        return Err(invalid());
    }
    let record = record.ok_or_else(invalid)?;
    match state.cluster.reader().tenant(&record.tenant)? {
        Some(tenant) if tenant.status == TenantStatus::Active => {}
        _ => return Err(ApiError::unauthenticated(format!("the API key's tenant {} is not active", record.tenant))),
    }
    admit_key(state, &record)?;
    // Scopes were checked when the key was created.
    let permissions = permissions_of(&record.scopes);
    Ok(Principal {
        subject: format!("apikey:{}", record.id),
        kind: PrincipalKind::ApiKey,
        tenant: Some(record.tenant),
        roles: Vec::new(),
        permissions,
        lob: Vec::new(),
        mfa_verified: false,
        idp: "custos".into(),
        idp_sub: record.id.to_string(),
    })
}

/// The `(id, secret)` of the session cookie, if the request carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<(String, String)> {
    headers.get_all(COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        let (id, secret) = value.split_once('.')?;
        (name == SESSION_COOKIE).then(|| (id.to_string(), secret.to_string()))
    })
}

/// A session cookie: the session must exist (after one read barrier: it may have been
/// created through another node a moment ago), match its secret, be live and belong to an
/// active tenant. A request that changes anything must carry [`CSRF_HEADER`]. While in use, the
/// session's last activity is refreshed through Raft at most every quarter of its idle timeout.
async fn session(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    id: &str,
    secret: &str,
) -> Result<Principal, ApiError> {
    let invalid =
        || ApiError::unauthenticated("the session is not valid (signed out, expired or unknown): sign in again");
    let id = SessionId::new(id).map_err(|_| invalid())?;
    let mut record = state.cluster.reader().session(&id)?;
    if record.is_none() && state.cluster.read_barrier(custos_raft::Consistency::Linearizable).await.is_ok() {
        record = state.cluster.reader().session(&id)?;
    }
    let record = record.ok_or_else(invalid)?;
    let now = now_ms();
    if !bool::from(token_sha256(secret).ct_eq(&record.secret_sha256)) || !record.live_at(now) {
        return Err(invalid());
    }
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe && !headers.contains_key(CSRF_HEADER) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf_required",
            format!("a change made with the session cookie needs the {CSRF_HEADER} header"),
        ));
    }
    if let Some(tenant) = &record.tenant {
        match state.cluster.reader().tenant(tenant)? {
            Some(t) if t.status == TenantStatus::Active => {}
            _ => return Err(ApiError::unauthenticated(format!("the session's tenant {tenant} is not active"))),
        }
    }
    if now.saturating_sub(record.last_seen_ms) > record.idle_timeout_ms / 4 {
        touch(state, &record.id, now);
    }
    Ok(Principal {
        subject: record.subject,
        kind: PrincipalKind::User,
        tenant: record.tenant,
        roles: record.roles,
        permissions: PermissionSet::EMPTY,
        lob: record.lob,
        mfa_verified: record.mfa_verified,
        idp: record.idp,
        idp_sub: record.idp_sub,
    })
}

/// Records a session's activity in the background; skipped when many are in flight (the next
/// request will try again).
fn touch(state: &AppState, id: &SessionId, now: u64) {
    let Ok(permit) = state.touches.clone().try_acquire_owned() else { return };
    let (cluster, id) = (state.cluster.clone(), id.clone());
    tokio::spawn(async move {
        let _permit = permit;
        // One request id per session and quarter-minute, so retries and racing nodes dedupe.
        let Ok(request_id) = custos_raft::RequestId::new(format!("touch/{id}/{}", now / 15_000)) else { return };
        let proposal = custos_raft::Proposal {
            request_id,
            proposed_at_ms: now,
            command: custos_raft::Command::TouchSession { id, at_ms: now },
        };
        if let Err(e) = cluster.write(proposal).await {
            tracing::debug!(error = %e, "recording session activity failed; the next request retries");
        }
    });
}

/// A platform token: valid against the published signing keys, and, when it was exchanged
/// for an API key, that key must still be unrevoked (revocation reaches its tokens at once)
/// and within its rate.
fn platform_token(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    let claims = state.tokens.verify(token)?;
    let invalid = || ApiError::unauthenticated("the token is not valid: malformed claims");
    let tenant = claims.tenant_id.as_deref().map(TenantId::new).transpose().map_err(|_| invalid())?;
    let kind = match claims.sub.strip_prefix("apikey:") {
        Some(id) => {
            let id = ApiKeyId::new(id).map_err(|_| invalid())?;
            let record = state.cluster.reader().api_key_by_id(&id)?;
            let live = record.as_ref().is_some_and(|r| r.revoked_at_ms.is_none() && Some(&r.tenant) == tenant.as_ref());
            let Some(record) = record.filter(|_| live) else {
                return Err(ApiError::unauthenticated("the token's API key has been revoked"));
            };
            admit_key(state, &record)?;
            PrincipalKind::ApiKey
        }
        None => {
            // A token issued from a session lives no longer than the session.
            if let Some(sid) = &claims.sid {
                let id = SessionId::new(sid.clone()).map_err(|_| invalid())?;
                let live = state.cluster.reader().session(&id)?.is_some_and(|s| s.live_at(now_ms()));
                if !live {
                    return Err(ApiError::unauthenticated("the token's session has ended"));
                }
            }
            PrincipalKind::User
        }
    };
    if let Some(tenant) = &tenant {
        match state.cluster.reader().tenant(tenant)? {
            Some(t) if t.status == TenantStatus::Active => {}
            _ => return Err(ApiError::unauthenticated(format!("the token's tenant {tenant} is not active"))),
        }
    }
    Ok(Principal {
        subject: claims.sub,
        kind,
        tenant,
        roles: claims.roles,
        permissions: permissions_of(&claims.permissions),
        lob: claims.lob,
        mfa_verified: claims.mfa_verified,
        idp: claims.idp,
        idp_sub: claims.idp_sub,
    })
}

/// Permission names as a set; a name the catalog no longer knows is inert.
fn permissions_of(names: &[String]) -> PermissionSet {
    names.iter().filter_map(|s| PermissionSet::parse(&[s]).ok()).fold(PermissionSet::EMPTY, PermissionSet::union)
}

/// The key's rate tier on this node, or 429 with Retry-After.
fn admit_key(state: &AppState, record: &custos_raft::access::ApiKeyRecord) -> Result<(), ApiError> {
    state.rate_limiter.admit(&record.id, &record.tier).map_err(|retry_after| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("API key {} is over the rate of its tier {:?} on this node", record.id, record.tier),
        )
        .retry_after(retry_after)
    })
}

/// The authenticated caller of a handler, with the request's ABAC attributes.
pub struct Caller {
    pub principal: Arc<Principal>,
    attributes: Attributes,
    slot: Option<DecisionSlot>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let missing = || ApiError::unauthenticated("missing Authorization: Bearer <token>");
        let slot = parts.extensions.get::<DecisionSlot>().cloned();
        let principal = match parts.extensions.get::<Authenticated>() {
            Some(authenticated) => authenticated.0.clone(),
            // Routes outside the audit middleware (`/metrics`) authenticate here.
            None if slot.is_none() => {
                Arc::new(authenticate(state, &parts.method, &parts.headers).await?.ok_or_else(missing)?)
            }
            None => return Err(missing()),
        };
        let header = |name: &str| -> Result<Option<String>, ApiError> {
            parts
                .headers
                .get(name)
                .map(|v| {
                    v.to_str().ok().filter(|v| !v.is_empty() && v.len() <= 256).map(str::to_string).ok_or_else(|| {
                        ApiError::bad_request("invalid_header", format!("{name} must be 1 to 256 printable characters"))
                    })
                })
                .transpose()
        };
        let attributes = Attributes { lob: header(LOB_HEADER)?, environment: header(ENVIRONMENT_HEADER)? };
        Ok(Caller { principal, attributes, slot })
    }
}

impl Caller {
    /// Allows the request if the policy engine gives the caller `permission` on `tenant`
    /// (None: on the platform); otherwise 403 with the decision.
    pub fn authorize(
        &self,
        state: &AppState,
        tenant: Option<&TenantId>,
        permission: Permission,
    ) -> Result<Decision, ApiError> {
        let decision = self.decide(state, &self.principal, tenant, permission, &self.attributes)?;
        if decision.allowed {
            Ok(decision)
        } else {
            Err(forbidden(&decision))
        }
    }

    /// Decides for any principal (the caller's own, or one the caller asks about), recording
    /// the decision for the request's audit event; a denial is an answer, not an error.
    pub fn decide(
        &self,
        state: &AppState,
        principal: &Principal,
        tenant: Option<&TenantId>,
        permission: Permission,
        attributes: &Attributes,
    ) -> Result<Decision, ApiError> {
        let request = AccessRequest { tenant, permission, attributes, now_ms: now_ms() };
        let decision = state.policy.decide(principal, &request)?;
        if let Some(slot) = &self.slot {
            slot.record(&decision);
        }
        Ok(decision)
    }
}

/// The 403 of a denied decision: its id, rule and reasons go to the caller.
fn forbidden(decision: &Decision) -> ApiError {
    let code = match decision.deny {
        Some(DenyKind::MfaRequired) => "mfa_required",
        _ => "forbidden",
    };
    ApiError::new(StatusCode::FORBIDDEN, code, decision.reasons.join("; ")).details(serde_json::json!({
        "decision_id": decision.id.to_string(),
        "rule": decision.rule,
        "reasons": decision.reasons,
    }))
}

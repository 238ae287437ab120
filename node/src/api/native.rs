//! The `native` identity provider at the API edge: people of a tenant's directory sign in with
//! their password (and TOTP code, once enrolled) at `POST /v1/auth/native/login`, and an admin
//! enrolls or removes a person's TOTP secret at `…/users/{user}/totp`.
//!
//! Password work (argon2id) runs on the blocking pool, at most [`MAX_HASHING`] at once per
//! node. Failed sign-ins are counted per tenant and user name on each node: after
//! [`MAX_FAILURES`] in [`FAILURE_WINDOW`] that name is refused with 429 until the window ends.
//! An unknown name costs as much time as a known one and gets the same answer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use custos_actors::custody::crypto::{labelled_aad, open, seal};
use custos_actors::identity::{native, ExternalIdentity};
use custos_actors::policy::{BuiltinRole, Permission};
use custos_raft::directory::{DirectoryUser, MAX_DIRECTORY_GROUPS};
use custos_raft::{Command, Consistency, DirectoryId, Output, Proposal, Rejection, TenantId};
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use super::audit::Note;
use super::auth::Caller;
use super::error::ApiError;
use super::{now_ms, AppState, CasAttempts};

/// Most password hashes computed at once on a node.
pub const MAX_HASHING: usize = 2;
/// Failed sign-ins of one name tolerated per window.
pub const MAX_FAILURES: u32 = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Most names whose failures a node tracks.
const MAX_TRACKED: usize = 10_000;

/// Hashes a new password (None when none is given).
pub async fn hash_password(state: &AppState, password: Option<Zeroizing<String>>) -> Result<Option<String>, ApiError> {
    let Some(password) = password else { return Ok(None) };
    let _permit = state.password_work.acquire().await.map_err(|_| ApiError::internal("the node is stopping"))?;
    let hashed = tokio::task::spawn_blocking(move || native::hash_password(&password))
        .await
        .map_err(|e| ApiError::internal(format!("hashing panicked: {e}")))?;
    match hashed {
        Ok(hash) => Ok(Some(hash)),
        Err(native::NativeError::PasswordLength) => {
            Err(ApiError::bad_request("invalid_password", native::NativeError::PasswordLength.to_string()))
        }
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

async fn verify_password(state: &AppState, password: Zeroizing<String>, hash: String) -> Result<bool, ApiError> {
    let _permit = state.password_work.acquire().await.map_err(|_| ApiError::internal("the node is stopping"))?;
    tokio::task::spawn_blocking(move || native::verify_password(&password, &hash))
        .await
        .map_err(|e| ApiError::internal(format!("verifying panicked: {e}")))?
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// Whether a name is a role a tenant's directory may give: a built-in tenant role (not the
/// platform's `super_admin`) or one of the tenant's custom roles.
pub fn tenant_roles(state: &AppState, tenant: &TenantId) -> Result<impl Fn(&str) -> bool, ApiError> {
    let custom: Vec<String> = state
        .cluster
        .reader()
        .access(tenant)?
        .map(|a| a.policy.roles.into_iter().map(|r| r.name).collect())
        .unwrap_or_default();
    Ok(move |name: &str| {
        BuiltinRole::from_name(name).is_some_and(|b| b != BuiltinRole::SuperAdmin) || custom.iter().any(|c| c == name)
    })
}

/// The roles and lines of business a directory entry gives its person: its own roles, and
/// each group's name that is a role of the tenant (built-in or custom).
pub fn directory_access(
    state: &AppState,
    tenant: &TenantId,
    user: &DirectoryUser,
) -> Result<(Vec<String>, Vec<String>), ApiError> {
    let is_role = tenant_roles(state, tenant)?;
    let mut roles = user.roles.clone();
    for group in state.cluster.reader().directory_groups(tenant, None, MAX_DIRECTORY_GROUPS as usize)? {
        if group.members.contains(&user.id) && is_role(&group.display_name) && !roles.contains(&group.display_name) {
            roles.push(group.display_name);
        }
    }
    Ok((roles, user.lob.clone()))
}

/// Failed sign-ins per tenant and user name on this node.
#[derive(Default)]
pub struct LoginThrottle {
    failures: std::sync::Mutex<HashMap<String, (u32, Instant)>>,
}

impl LoginThrottle {
    /// How long `name` must wait, if it is locked out.
    fn locked(&self, name: &str) -> Option<Duration> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let (count, since) = failures.get(name)?;
        let left = FAILURE_WINDOW.checked_sub(since.elapsed())?;
        (*count >= MAX_FAILURES).then_some(left)
    }

    fn fail(&self, name: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= MAX_TRACKED {
            failures.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
            if failures.len() >= MAX_TRACKED {
                // Forget the oldest rather than grow without bound.
                if let Some(oldest) = failures.iter().min_by_key(|(_, (_, since))| *since).map(|(k, _)| k.clone()) {
                    failures.remove(&oldest);
                }
            }
        }
        let entry = failures.entry(name.to_string()).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }

    fn succeed(&self, name: &str) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    tenant: String,
    username: String,
    password: Zeroizing<String>,
    /// The current code of the person's authenticator app, once enrolled.
    #[serde(default)]
    totp: Option<Zeroizing<String>>,
}

fn invalid_credentials() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", "the user name, password or one-time code is wrong")
}

fn totp_aad(tenant: &TenantId, user: &DirectoryId) -> Vec<u8> {
    labelled_aad("custos/totp/v1", &[tenant.as_str().as_bytes(), user.as_str().as_bytes()])
}

/// `POST /v1/auth/native/login`: signs a person of a natively signing-in tenant in; answers
/// with the session cookie.
pub async fn login(
    State(state): State<AppState>,
    body: Result<Json<LoginBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let tenant = TenantId::new(body.tenant.clone())?;
    let throttle_key = format!("{tenant}/{}", body.username.trim().to_lowercase());
    if let Some(wait) = state.login_throttle.locked(&throttle_key) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_failures",
            "too many failed sign-ins; wait",
        )
        .retry_after(wait));
    }
    state.cluster.read_barrier(Consistency::Linearizable).await?;
    let reader = state.cluster.reader();
    let Some(settings) = reader.directory(&tenant)?.native else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "native_sign_in_disabled",
            format!("tenant {tenant} does not sign in with Custos passwords"),
        ));
    };
    let user = reader.directory_user_by_name(&tenant, body.username.trim())?.filter(|u| u.active);
    let hash = user.as_ref().and_then(|u| u.password_hash.clone()).unwrap_or_else(|| native::decoy_hash().to_string());
    let matched = verify_password(&state, body.password.clone(), hash).await?;
    let user = match user {
        Some(user) if matched && user.password_hash.is_some() => user,
        _ => {
            state.login_throttle.fail(&throttle_key);
            return Err(invalid_credentials());
        }
    };
    let totp_step = match (&user.totp_sealed, &body.totp) {
        (None, _) if settings.mfa_required => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "mfa_enrollment_required",
                "this tenant requires a one-time code and this person has no authenticator enrolled; ask an admin",
            ))
        }
        (None, _) => None,
        (Some(_), None) => {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "mfa_required", "send the one-time code as `totp`"))
        }
        (Some(sealed), Some(code)) => {
            let kek = state.custody.kek(&tenant).await?;
            let secret = Zeroizing::new(
                open(&kek, sealed, &totp_aad(&tenant, &user.id))
                    .map_err(|_| ApiError::internal("a stored TOTP secret does not open under the tenant KEK"))?,
            );
            match native::totp_step(&secret, code.trim(), now_ms() / 1000)
                .map_err(|e| ApiError::internal(e.to_string()))?
            {
                Some(step) => Some(step),
                None => {
                    state.login_throttle.fail(&throttle_key);
                    return Err(invalid_credentials());
                }
            }
        }
    };
    let (roles, lob) = directory_access(&state, &tenant, &user)?;
    let identity = ExternalIdentity {
        idp: "native".into(),
        subject: user.id.to_string(),
        username: Some(user.user_name.clone()),
        tenant: Some(tenant.to_string()),
        roles,
        lob,
        mfa_verified: totp_step.is_some(),
    };
    let (session, cookie) = super::login::new_session(&state, &identity)?;
    let expires_at_ms = session.expires_at_ms;
    let subject = session.subject.clone();
    let command = Command::OpenSession {
        user: user.id.clone(),
        session,
        max_sessions_per_user: state.identity.max_sessions_per_user,
        totp_step,
    };
    let request_id = custos_raft::RequestId::new(format!("native-login/{}", super::auth::random_id()))?;
    let outcome = state.cluster.write(Proposal { request_id, proposed_at_ms: now_ms(), command }).await?.outcome;
    match outcome {
        Ok(_) => {}
        Err(Rejection::TotpReplayed) => {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "totp_replayed", Rejection::TotpReplayed.to_string()))
        }
        Err(other) => return Err(other.into()),
    }
    state.login_throttle.succeed(&throttle_key);
    let mut response = Json(json!({
        "subject": subject,
        "tenant_id": tenant.as_str(),
        "mfa_verified": identity.mfa_verified,
        "expires_at_ms": expires_at_ms,
    }))
    .into_response();
    super::login::set_session_cookie(&state, &mut response, &cookie)?;
    let note = Note { tenant: Some(tenant), ..Note::default() }
        .detail("subject", subject)
        .detail("idp", "native")
        .detail("idp_sub", user.id.to_string())
        .detail("mfa_verified", identity.mfa_verified);
    response.extensions_mut().insert(note);
    Ok(response)
}

fn user_path(path: Result<Path<(String, String)>, PathRejection>) -> Result<(TenantId, DirectoryId), ApiError> {
    let Path((tenant, user)) = path?;
    Ok((TenantId::new(tenant)?, DirectoryId::new(user)?))
}

/// `POST /v1/tenants/{tenant}/users/{user}/totp`: gives the person a new TOTP secret (replacing
/// any earlier one) and returns it once, as base32 and as an `otpauth://` URI.
pub async fn enroll_totp(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (tenant, id) = user_path(path)?;
    caller.authorize(&state, Some(&tenant), Permission::UsersManage)?;
    let secret = native::new_totp_secret();
    let kek = state.custody.kek(&tenant).await?;
    let sealed = seal(&kek, &secret, &totp_aad(&tenant, &id));
    let user = change_totp(&state, &headers, &tenant, &id, Some(sealed)).await?;
    let issuer = format!("Custos {tenant}");
    let uri = native::totp_uri(&secret, &issuer, &user.user_name).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((
        StatusCode::OK,
        Json(json!({
            "user": id.as_str(),
            "user_name": user.user_name,
            "secret": native::totp_secret_base32(&secret),
            "otpauth_uri": uri,
        })),
    )
        .into_response())
}

/// `DELETE …/users/{user}/totp`: the person signs in with the password alone again (unless
/// the tenant requires a code).
pub async fn remove_totp(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (tenant, id) = user_path(path)?;
    caller.authorize(&state, Some(&tenant), Permission::UsersManage)?;
    change_totp(&state, &headers, &tenant, &id, None).await?;
    Ok(Json(json!({ "user": id.as_str(), "mfa_enrolled": false })).into_response())
}

async fn change_totp(
    state: &AppState,
    headers: &HeaderMap,
    tenant: &TenantId,
    id: &DirectoryId,
    sealed: Option<Vec<u8>>,
) -> Result<DirectoryUser, ApiError> {
    let mut attempts = CasAttempts::new(headers, true)?;
    loop {
        let request_id = attempts.next_id()?;
        state.cluster.read_barrier(Consistency::Linearizable).await?;
        let current = state
            .cluster
            .reader()
            .directory_user(tenant, id)?
            .ok_or_else(|| Rejection::DirectoryEntryNotFound(id.clone()))?;
        let expected_revision = Some(current.revision);
        let user = DirectoryUser { totp_sealed: sealed.clone(), ..current };
        let command = Command::PutDirectoryUser { tenant: tenant.clone(), user, expected_revision };
        match state.cluster.write(Proposal { request_id, proposed_at_ms: now_ms(), command }).await?.outcome {
            Ok(Output::DirectoryUser(user)) => return Ok(user),
            Ok(_) => return Err(ApiError::internal("the state machine answered with the wrong kind of result")),
            Err(rejection) => {
                let error = ApiError::from(rejection);
                if !attempts.again(&error) {
                    return Err(error);
                }
            }
        }
    }
}

//! `/v1/tenants/{tenant}/identity-provider`: which identity provider a tenant's people sign in
//! with, bound by configuration (ADR-0002). Either the tenant's own OIDC provider (Entra ID,
//! Okta, Google, a Keycloak realm …; `kind` absent or `"oidc"`): its people then sign in with
//! `GET /v1/auth/login?tenant=<tenant>`, and its client secret is sealed under the tenant KEK.
//! Or `{"kind":"native"}`: the people of the tenant's directory sign in with a password (and
//! TOTP) at `POST /v1/auth/native/login`. Without a binding, the deployment's provider.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use custos_actors::custody::crypto::seal;
use custos_actors::identity::OidcSettings;
use custos_actors::policy::Permission;
use custos_raft::access::IdentityBinding;
use custos_raft::directory::NativeSignIn;
use custos_raft::{Command, Output, TenantId};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::access::tenant_path;
use super::auth::Caller;
use super::error::ApiError;
use super::login::idp_secret_aad;
use super::{replicate, AppState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindBody {
    /// Recorded as `idp` (e.g. `acme-entra`).
    name: String,
    /// The issuer whose `/.well-known/openid-configuration` describes the provider.
    issuer: String,
    client_id: String,
    client_secret: Zeroizing<String>,
    /// Roles for people the provider gives none of Custos' roles.
    #[serde(default)]
    default_roles: Vec<String>,
}

/// `{"kind":"native"}`: passwords (and TOTP codes) held by the tenant's directory.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeBody {
    #[serde(rename = "kind")]
    _kind: String,
    /// Every sign-in needs a TOTP code.
    #[serde(default)]
    mfa_required: bool,
}

#[derive(Serialize)]
pub struct BindingView {
    kind: &'static str,
    name: String,
    issuer: String,
    client_id: String,
    default_roles: Vec<String>,
    revision: u64,
    /// Where the provider must send browsers back (register it there).
    redirect_uri: String,
    /// Where the tenant's people start signing in.
    login_path: String,
}

fn view(state: &AppState, tenant: &TenantId, binding: IdentityBinding) -> BindingView {
    BindingView {
        kind: "oidc",
        name: binding.name,
        issuer: binding.issuer,
        client_id: binding.client_id,
        default_roles: binding.default_roles,
        revision: binding.revision,
        redirect_uri: state.sign_in.redirect_uri().to_string(),
        login_path: format!("/v1/auth/login?tenant={tenant}"),
    }
}

/// `PUT`: binds (or replaces) the tenant's provider, once it answers discovery.
pub async fn put(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let tenant = tenant_path(path)?;
    caller.authorize(&state, Some(&tenant), Permission::UsersManage)?;
    let Json(mut body) = body?;
    let invalid = |e: serde_json::Error| ApiError::bad_request("invalid_body", e.to_string());
    match body.get("kind").and_then(|k| k.as_str()) {
        Some("native") => {
            let native: NativeBody = serde_json::from_value(body).map_err(invalid)?;
            let settings = NativeSignIn { mfa_required: native.mfa_required };
            let command = Command::SetNativeSignIn { tenant, native: Some(settings.clone()) };
            return replicate(&state, &headers, command, StatusCode::OK, |output| match output {
                Output::Done => Some(native_view(&settings)),
                _ => None,
            })
            .await;
        }
        Some("oidc") | None => {
            if let Some(map) = body.as_object_mut() {
                map.remove("kind");
            }
        }
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_field",
                format!("kind is \"oidc\" or \"native\", not {other:?}"),
            ))
        }
    }
    let body: BindBody = serde_json::from_value(body).map_err(invalid)?;
    let valid_name = !body.name.is_empty()
        && body.name.len() <= 64
        && body.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !valid_name {
        return Err(ApiError::bad_request("invalid_field", "name is 1 to 64 letters, digits or '-'"));
    }
    if !(body.issuer.starts_with("https://") || body.issuer.starts_with("http://")) || body.client_id.is_empty() {
        return Err(ApiError::bad_request("invalid_field", "issuer must be an http(s) URL and client_id non-empty"));
    }
    let settings = OidcSettings {
        name: body.name.clone(),
        issuer: body.issuer.clone(),
        client_id: body.client_id.clone(),
        client_secret: body.client_secret.clone(),
        redirect_uri: state.sign_in.redirect_uri().to_string(),
        clock_skew: std::time::Duration::from_secs(60),
    };
    state.sign_in.probe(settings).await?;
    let kek = state.custody.kek(&tenant).await?;
    let binding = IdentityBinding {
        name: body.name,
        issuer: body.issuer,
        client_id: body.client_id,
        client_secret_sealed: seal(&kek, body.client_secret.as_bytes(), &idp_secret_aad(&tenant)),
        default_roles: body.default_roles,
        revision: 0,
    };
    let command = Command::BindIdentityProvider { tenant: tenant.clone(), binding: Some(binding) };
    // The answer comes from the apply itself: this node may not have applied it yet.
    replicate(&state, &headers, command, StatusCode::OK, |output| match output {
        Output::Binding(binding) => Some(view(&state, &tenant, binding)),
        _ => None,
    })
    .await
}

fn native_view(settings: &NativeSignIn) -> serde_json::Value {
    serde_json::json!({
        "kind": "native",
        "mfa_required": settings.mfa_required,
        "login_path": "/v1/auth/native/login",
    })
}

/// `GET`: the binding, without its secret.
pub async fn get(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let tenant = tenant_path(path)?;
    caller.authorize(&state, Some(&tenant), Permission::UsersManage)?;
    state.cluster.read_barrier(custos_raft::Consistency::Linearizable).await?;
    let reader = state.cluster.reader();
    if let Some(binding) = reader.identity_binding(&tenant)? {
        return Ok(Json(view(&state, &tenant, binding)).into_response());
    }
    match reader.directory(&tenant)?.native {
        Some(settings) => Ok(Json(native_view(&settings)).into_response()),
        None => Err(custos_raft::Rejection::NoIdentityProvider(tenant).into()),
    }
}

/// `DELETE`: the tenant's people sign in through the deployment's provider again.
pub async fn delete(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let tenant = tenant_path(path)?;
    caller.authorize(&state, Some(&tenant), Permission::UsersManage)?;
    state.cluster.read_barrier(custos_raft::Consistency::Linearizable).await?;
    let command = match state.cluster.reader().directory(&tenant)?.native {
        Some(_) => Command::SetNativeSignIn { tenant, native: None },
        None => Command::BindIdentityProvider { tenant, binding: None },
    };
    replicate(&state, &headers, command, StatusCode::OK, |output| match output {
        Output::Done => Some(serde_json::json!({ "unbound": true })),
        _ => None,
    })
    .await
}

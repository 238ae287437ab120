//! Platform tokens at the edge: `POST /v1/auth/token` exchanges an API key or a signed-in
//! session for a short-lived JWT; `/.well-known/jwks.json` and `/.well-known/openid-configuration` publish what
//! gateways need to validate tokens without calling Custos.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use custos_actors::identity::{PlatformClaims, TokenError};
use custos_actors::policy::{PermissionSet, PrincipalKind, TenantPolicy};
use serde_json::{json, Value};

use super::auth::Caller;
use super::error::ApiError;
use super::{now_ms, AppState};

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::NoSigningKey => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "signing_key_unavailable", e.to_string())
            }
            TokenError::Invalid(_) => ApiError::unauthenticated(e.to_string()),
            TokenError::Read(read) => read.into(),
            TokenError::Custody(custody) => custody.into(),
            TokenError::Signing(_) => {
                tracing::error!(error = %e, "the active signing key is unusable");
                ApiError::internal("the active signing key is unusable; see the node's log")
            }
        }
    }
}

/// `POST /v1/auth/token` with an API key or a signed-in session (with its CSRF header): a
/// platform token carrying the principal's tenant, roles and permissions (an API key's scopes;
/// what a person's roles and grants give), valid for `identity.token_ttl_s`. A session's
/// token names the session (`sid`) and stops working when the session ends.
pub async fn exchange(
    caller: Caller,
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let principal = caller.principal.clone();
    let (permissions, sid) = match principal.kind {
        PrincipalKind::ApiKey => (principal.permissions, None),
        PrincipalKind::User => {
            let sid = super::auth::session_cookie(&headers).map(|(id, _)| id).ok_or_else(|| {
                ApiError::bad_request("unsupported_credential", "a person exchanges their session cookie for a token")
            })?;
            let granted = match &principal.tenant {
                Some(tenant) => match state.policy.compiled(tenant)?.as_ref() {
                    Ok(policy) => policy.granted(&principal, now_ms()),
                    Err(_) => PermissionSet::EMPTY,
                },
                None => TenantPolicy::builtin().granted(&principal, now_ms()),
            };
            (granted, Some(sid))
        }
        PrincipalKind::Bootstrap => {
            return Err(ApiError::bad_request(
                "unsupported_credential",
                "the bootstrap admin token is not exchanged; create an API key or sign in",
            ))
        }
    };
    let settings = state.tokens.settings().clone();
    let (token, exp) = state
        .tokens
        .issue(now_ms(), |iat, exp| PlatformClaims {
            sub: principal.subject.clone(),
            iss: settings.issuer.clone(),
            aud: settings.audience.clone(),
            exp,
            iat,
            nbf: iat,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            roles: principal.roles.clone(),
            tenant_id: principal.tenant.as_ref().map(|t| t.to_string()),
            permissions: permissions.names(),
            lob: principal.lob.clone(),
            mfa_verified: principal.mfa_verified,
            idp: principal.idp.clone(),
            idp_sub: principal.idp_sub.clone(),
            sid,
        })
        .await?;
    Ok(Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": exp.saturating_sub(now_ms() / 1000),
        "scope": permissions.names().join(" "),
    })))
}

/// `GET /.well-known/jwks.json`: every published signing key (the active one, the next one
/// ahead of its activation, and retiring ones until their last token expired).
pub async fn jwks(State(state): State<AppState>) -> Result<Response, ApiError> {
    let mut response = Json(state.tokens.jwks()?).into_response();
    // Short enough that a verifier sees a new key during its publish-ahead time.
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    Ok(response)
}

/// `GET /.well-known/openid-configuration`: the issuer and where its keys are, for gateways.
pub async fn discovery(State(state): State<AppState>) -> Json<Value> {
    let settings = state.tokens.settings();
    let base = format!("https://{}", state.cluster.info().api_addr);
    Json(json!({
        "issuer": settings.issuer,
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "token_endpoint": format!("{base}/v1/auth/token"),
        "id_token_signing_alg_values_supported": [settings.algorithm.as_str()],
        "token_endpoint_auth_methods_supported": ["bearer"],
        "claims_supported": [
            "sub", "iss", "aud", "exp", "iat", "nbf", "jti", "roles", "tenant_id", "permissions", "lob", "mfa_verified", "idp", "idp_sub"
        ],
    }))
}

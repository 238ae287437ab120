//! `/v1/tenants/{tenant}/apikeys`: API keys for machines.
//!
//! A key's token (`cak_<id>_<secret>`) is returned once, by the create or rotate that made
//! it; only the secret's SHA-256 is replicated. A key's scopes must be permissions its
//! creator holds, and none that needs MFA (a machine never has a second factor).

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use custos_actors::policy::{Permission, PermissionSet};
use custos_raft::access::ApiKeyRecord;
use custos_raft::{ApiKeyId, Command, Output, Proposal, Rejection, TenantId};
use serde::{Deserialize, Serialize};

use super::access::check_held;
use super::auth::{new_api_key, Caller};
use super::error::ApiError;
use super::{now_ms, request_id, AppState};

const DAY_MS: u64 = 24 * 3600 * 1000;

fn key_path(path: Result<Path<(String, String)>, PathRejection>) -> Result<(TenantId, ApiKeyId), ApiError> {
    let Path((tenant, id)) = path?;
    Ok((TenantId::new(tenant)?, ApiKeyId::new(id)?))
}

#[derive(Debug, Serialize)]
pub struct ApiKeyView {
    id: String,
    tenant_id: String,
    name: String,
    scopes: Vec<String>,
    tier: String,
    created_by: String,
    created_at_ms: u64,
    /// When the current secret was issued and when it stops working unless rotated.
    secret_issued_at_ms: u64,
    expires_at_ms: u64,
    rotation_period_days: u64,
    /// Until when the previous secret still works, inside a rotation's overlap.
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_valid_until_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at_ms: Option<u64>,
    /// Only in the answer of the create or rotate that issued it.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

impl From<ApiKeyRecord> for ApiKeyView {
    fn from(k: ApiKeyRecord) -> Self {
        ApiKeyView {
            id: k.id.to_string(),
            tenant_id: k.tenant.to_string(),
            name: k.name,
            scopes: k.scopes,
            tier: k.tier,
            created_by: k.created_by,
            created_at_ms: k.created_at_ms,
            secret_issued_at_ms: k.secret_issued_at_ms,
            expires_at_ms: k.expires_at_ms,
            rotation_period_days: k.rotation_period_ms / DAY_MS,
            previous_valid_until_ms: k.previous.map(|p| p.valid_until_ms),
            revoked_at_ms: k.revoked_at_ms,
            token: None,
        }
    }
}

/// Replicates a command that issues a secret and answers with the key and its token. A
/// retry of a request already applied cannot show the secret again (only its hash was kept):
/// it gets 409 `secret_already_issued`.
async fn issue(
    state: &AppState,
    headers: &HeaderMap,
    command: Command,
    token: zeroize::Zeroizing<String>,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let proposal = Proposal { request_id: request_id(headers)?, proposed_at_ms: now_ms(), command };
    let response = state.cluster.write(proposal).await?;
    let record = match response.outcome? {
        Output::ApiKey(record) => record,
        _ => return Err(ApiError::internal("the state machine answered a command with the wrong kind of result")),
    };
    if response.replayed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "secret_already_issued",
            format!(
                "this request was already applied and its token returned then; rotate key {} for a new one",
                record.id
            ),
        ));
    }
    let mut view = ApiKeyView::from(record);
    view.token = Some(token.as_str().to_string());
    Ok((status, Json(view)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    name: String,
    scopes: Vec<String>,
    /// One of the deployment's `identity.api_key_tiers`; its default tier when absent.
    tier: Option<String>,
    /// Days a secret works before it must be rotated; `identity.api_key_rotation_days` when
    /// absent.
    rotation_days: Option<u64>,
}

/// `POST /v1/tenants/{tenant}/apikeys`.
pub async fn create(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<CreateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Path(tenant) = path?;
    let tenant = TenantId::new(tenant)?;
    caller.authorize(&state, Some(&tenant), Permission::ApikeysCreate)?;
    let Json(body) = body?;
    let scopes =
        PermissionSet::parse(&body.scopes).map_err(|e| ApiError::bad_request("unknown_permission", e.to_string()))?;
    if scopes.is_empty() || body.name.trim().is_empty() {
        return Err(ApiError::bad_request("invalid_body", "an API key needs a name and at least one scope"));
    }
    check_held(&state, &caller, &tenant, scopes)?;
    let compiled = state.policy.compiled(&tenant)?;
    if let Ok(policy) = compiled.as_ref() {
        let needs_mfa: Vec<_> = scopes.iter().filter(|p| policy.needs_mfa(*p)).map(Permission::as_str).collect();
        if !needs_mfa.is_empty() {
            return Err(ApiError::bad_request(
                "scope_requires_mfa",
                format!("an API key cannot carry permissions that require MFA: {needs_mfa:?}"),
            ));
        }
    }
    let tier = body.tier.unwrap_or_else(|| state.rate_limiter.default_tier().to_string());
    if !state.rate_limiter.has_tier(&tier) {
        return Err(ApiError::bad_request("unknown_tier", format!("tier {tier:?} is not configured on this node")));
    }
    let days = body.rotation_days.unwrap_or(state.identity.api_key_rotation_days);
    let key = new_api_key(None);
    let command = Command::CreateApiKey {
        tenant,
        id: key.id,
        name: body.name,
        scopes: scopes.names(),
        tier,
        created_by: caller.principal.subject.clone(),
        secret_sha256: key.secret_sha256,
        rotation_period_ms: days.saturating_mul(DAY_MS),
    };
    issue(&state, &headers, command, key.token, StatusCode::CREATED).await
}

#[derive(Debug, Serialize)]
struct KeyList {
    api_keys: Vec<ApiKeyView>,
}

/// `GET /v1/tenants/{tenant}/apikeys`: every key of the tenant, revoked ones included.
pub async fn list(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<impl Serialize>, ApiError> {
    let Path(tenant) = path?;
    let tenant = TenantId::new(tenant)?;
    caller.authorize(&state, Some(&tenant), Permission::ApikeysRead)?;
    state.cluster.read_barrier(custos_raft::Consistency::Linearizable).await?;
    let keys = state.cluster.reader().api_keys(&tenant, None, custos_raft::access::MAX_API_KEYS_PER_TENANT as usize)?;
    Ok(Json(KeyList { api_keys: keys.into_iter().map(ApiKeyView::from).collect() }))
}

/// `GET /v1/tenants/{tenant}/apikeys/{apikey}`.
pub async fn get(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<ApiKeyView>, ApiError> {
    let (tenant, id) = key_path(path)?;
    caller.authorize(&state, Some(&tenant), Permission::ApikeysRead)?;
    state.cluster.read_barrier(custos_raft::Consistency::Linearizable).await?;
    let record = state.cluster.reader().api_key(&tenant, &id)?.ok_or(Rejection::ApiKeyNotFound(id))?;
    Ok(Json(record.into()))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// Seconds the current secret keeps working; `identity.api_key_overlap_s` when absent.
    overlap_s: Option<u64>,
}

/// `POST /v1/tenants/{tenant}/apikeys/{apikey}/rotate`: a new secret; the old one works for
/// the overlap.
pub async fn rotate(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let (tenant, id) = key_path(path)?;
    caller.authorize(&state, Some(&tenant), Permission::ApikeysCreate)?;
    // The body is optional, so it is parsed here rather than by the Json extractor.
    let body: RotateBody = if body.is_empty() {
        RotateBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?
    };
    let overlap_ms = body.overlap_s.unwrap_or(state.identity.api_key_overlap_s).saturating_mul(1000);
    let key = new_api_key(Some(id.clone()));
    let command = Command::RotateApiKey { tenant, id, secret_sha256: key.secret_sha256, overlap_ms };
    issue(&state, &headers, command, key.token, StatusCode::OK).await
}

/// `POST /v1/tenants/{tenant}/apikeys/{apikey}/revoke`: every secret of the key stops working
/// on each node as soon as it applies this.
pub async fn revoke(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (tenant, id) = key_path(path)?;
    caller.authorize(&state, Some(&tenant), Permission::ApikeysRevoke)?;
    super::replicate(&state, &headers, Command::RevokeApiKey { tenant, id }, StatusCode::OK, |output| match output {
        Output::ApiKey(record) => Some(ApiKeyView::from(record)),
        _ => None,
    })
    .await
}

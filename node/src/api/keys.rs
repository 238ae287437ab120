//! `/v1/tenants/{tenant}/keys`: L3 key management — create, list, get, rotate, configure,
//! enable/disable, scheduled destruction. Every request of a tenant passes its admission.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use custos_actors::{NodeMsg, Refusal};
use custos_raft::{
    Command, KeyAlgorithm, KeyChange, KeyId, KeyPurpose, KeyRecord, KeyState, Output, Rejection, TenantId, TenantStatus,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

use super::auth::Caller;
use super::error::ApiError;
use super::{page_limit, replicate, AppState, ReadConsistency};
use custos_actors::policy::Permission;

/// Default delay before a scheduled destruction: time to notice a mistake and cancel.
const DEFAULT_DESTROY_DELAY_MS: u64 = 7 * 24 * 3600 * 1000;

/// How long a request waits for its tenant's actors to start on this node.
const START_WAIT: Duration = Duration::from_secs(5);

/// A tenant's request may start: the tenant is active ([`super::applied_tenant`]) and its
/// actors serve here with room under its in-flight bound. The permit is held to the end. A
/// tenant with no actors on this node (not used here yet, or idle for a while) has them
/// started, and the request waits for that.
pub(super) async fn admit(state: &AppState, tenant: &TenantId) -> Result<OwnedSemaphorePermit, ApiError> {
    if let Some(refused) = not_serving(state, tenant).await? {
        return Err(refused);
    }
    let deadline = tokio::time::Instant::now() + START_WAIT;
    let mut asked = false;
    loop {
        match state.directory.admit(tenant) {
            Err(Refusal::NotRunning(_)) => {}
            admitted => return Ok(admitted?),
        }
        // Checked again once waiting, so a start published in between still wakes this request.
        let waiter = state.directory.waiter(tenant);
        let published = waiter.notified();
        match state.directory.admit(tenant) {
            Err(Refusal::NotRunning(_)) => {}
            admitted => return Ok(admitted?),
        }
        if asked {
            // Woken, yet nothing runs: the tenant may have stopped being active meanwhile.
            if let Some(refused) = not_serving(state, tenant).await? {
                return Err(refused);
            }
        } else {
            asked = true;
            // The supervisor reads the tenant again and starts nothing unless it is active.
            let (reply, answer) = ractor::concurrency::oneshot();
            if state.supervisor.cast(NodeMsg::Activate(tenant.clone(), Some(reply.into()))).is_err() {
                return Err(Refusal::NotRunning(tenant.clone()).into());
            }
            match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(true)) => {}
                // Suspended or deleted since it was read above: say so rather than wait.
                Ok(Ok(false)) => {
                    return Err(not_serving(state, tenant)
                        .await?
                        .unwrap_or_else(|| Refusal::NotRunning(tenant.clone()).into()))
                }
                Ok(Err(_)) | Err(_) => return Err(Refusal::NotRunning(tenant.clone()).into()),
            }
        }
        if tokio::time::timeout_at(deadline, published).await.is_err() {
            return Err(Refusal::NotRunning(tenant.clone()).into());
        }
    }
}

/// Why `tenant`'s requests are refused by its governance state (absent, deleted, not active);
/// `None` when it is active.
async fn not_serving(state: &AppState, tenant: &TenantId) -> Result<Option<ApiError>, ApiError> {
    Ok(match super::applied_tenant(state, tenant).await? {
        None => Some(Rejection::TenantNotFound(tenant.clone()).into()),
        Some(t) if t.status == TenantStatus::Deleted => Some(Rejection::TenantDeleted(tenant.clone()).into()),
        Some(t) if t.status != TenantStatus::Active => Some(Rejection::TenantNotActive(tenant.clone()).into()),
        Some(_) => None,
    })
}

pub(super) fn key_path(path: Result<Path<(String, String)>, PathRejection>) -> Result<(TenantId, KeyId), ApiError> {
    let Path((tenant, key)) = path?;
    Ok((TenantId::new(tenant)?, KeyId::new(key)?))
}

/// A key as the API shows it. No material, wrapped or not, ever leaves through the API.
#[derive(Debug, Serialize)]
pub struct KeyView {
    tenant: String,
    id: String,
    purpose: &'static str,
    algorithm: &'static str,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    destroy_at_ms: Option<u64>,
    latest_version: u32,
    min_decryption_version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    rotation_period_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_rotation_at_ms: Option<u64>,
    created_at_ms: u64,
    rotated_at_ms: u64,
    updated_at_ms: u64,
    revision: u64,
}

impl From<KeyRecord> for KeyView {
    fn from(k: KeyRecord) -> Self {
        let destroy_at_ms = match k.state {
            KeyState::DestroyScheduled { at_ms } => Some(at_ms),
            _ => None,
        };
        KeyView {
            tenant: k.tenant.to_string(),
            id: k.id.to_string(),
            purpose: match k.purpose {
                KeyPurpose::EncryptDecrypt => "encrypt_decrypt",
            },
            algorithm: match k.algorithm {
                KeyAlgorithm::Aes256Gcm => "aes-256-gcm",
            },
            state: k.state.as_str(),
            destroy_at_ms,
            latest_version: k.latest_version,
            min_decryption_version: k.min_decryption_version,
            rotation_period_ms: k.rotation_period_ms,
            next_rotation_at_ms: k.rotation_due_at_ms(),
            created_at_ms: k.created_at_ms,
            rotated_at_ms: k.rotated_at_ms,
            updated_at_ms: k.updated_at_ms,
            revision: k.revision,
        }
    }
}

/// Replicates a key command and renders the key.
async fn write(
    state: &AppState,
    headers: &HeaderMap,
    command: Command,
    status: StatusCode,
) -> Result<Response, ApiError> {
    replicate(state, headers, command, status, |output| match output {
        Output::Key(key) => Some(KeyView::from(key)),
        _ => None,
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    id: String,
    /// Rotate automatically once the latest version is this old.
    rotation_period_ms: Option<u64>,
}

pub async fn create(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<CreateKey>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Path(tenant) = path?;
    let tenant = TenantId::new(tenant)?;
    caller.authorize(&state, Some(&tenant), Permission::KeysCreate)?;
    let Json(body) = body?;
    let key = KeyId::new(body.id)?;
    let _permit = admit(&state, &tenant).await?;
    let material = state.custody.new_key_material(&tenant, &key, 1).await?;
    let command = Command::CreateKey {
        tenant,
        key,
        purpose: KeyPurpose::EncryptDecrypt,
        algorithm: KeyAlgorithm::Aes256Gcm,
        rotation_period_ms: body.rotation_period_ms,
        material,
    };
    write(&state, &headers, command, StatusCode::CREATED).await
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    #[serde(default)]
    consistency: ReadConsistency,
    limit: Option<usize>,
    after: Option<String>,
}

#[derive(Debug, Serialize)]
struct KeyList {
    keys: Vec<KeyView>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<String>,
}

pub async fn list(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<impl Serialize>, ApiError> {
    let Path(tenant) = path?;
    let tenant = TenantId::new(tenant)?;
    caller.authorize(&state, Some(&tenant), Permission::KeysRead)?;
    let Query(params) = params?;
    let limit = page_limit(&state, params.limit)?;
    let after = params.after.map(KeyId::new).transpose()?;
    state.cluster.read_barrier(params.consistency.into()).await?;
    if state.cluster.reader().tenant(&tenant)?.is_none() {
        return Err(Rejection::TenantNotFound(tenant).into());
    }
    let page = state.cluster.reader().keys(&tenant, after.as_ref(), limit)?;
    let next_after = if page.len() == limit { page.last().map(|k| k.id.to_string()) } else { None };
    Ok(Json(KeyList { keys: page.into_iter().map(KeyView::from).collect(), next_after }))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GetParams {
    #[serde(default)]
    consistency: ReadConsistency,
}

pub async fn get(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    params: Result<Query<GetParams>, QueryRejection>,
) -> Result<Json<KeyView>, ApiError> {
    let (tenant, key) = key_path(path)?;
    caller.authorize(&state, Some(&tenant), Permission::KeysRead)?;
    let Query(params) = params?;
    state.cluster.read_barrier(params.consistency.into()).await?;
    match state.cluster.reader().key(&tenant, &key)? {
        Some(record) => Ok(Json(record.into())),
        None => Err(Rejection::KeyNotFound(key).into()),
    }
}

pub async fn rotate(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (tenant, key) = key_path(path)?;
    caller.authorize(&state, Some(&tenant), Permission::KeysRotate)?;
    let _permit = admit(&state, &tenant).await?;
    // The latest version as of now, so a rotation racing another one is refused, not doubled.
    state.cluster.read_barrier(custos_raft::Consistency::Linearizable).await?;
    let record = state.cluster.reader().key(&tenant, &key)?.ok_or_else(|| Rejection::KeyNotFound(key.clone()))?;
    record.state.check_enabled(&key)?;
    let material = state.custody.new_key_material(&tenant, &key, record.latest_version + 1).await?;
    let command = Command::RotateKey { tenant, key, expected_latest: record.latest_version, material };
    write(&state, &headers, command, StatusCode::OK).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Configure {
    min_decryption_version: Option<u32>,
    /// Milliseconds; 0 turns automatic rotation off.
    rotation_period_ms: Option<u64>,
}

pub async fn configure(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<Configure>, JsonRejection>,
) -> Result<Response, ApiError> {
    let (tenant, key) = key_path(path)?;
    caller.authorize(&state, Some(&tenant), Permission::KeysConfigure)?;
    let Json(body) = body?;
    if body.min_decryption_version.is_none() && body.rotation_period_ms.is_none() {
        return Err(ApiError::bad_request("invalid_body", "give min_decryption_version, rotation_period_ms or both"));
    }
    let change = KeyChange::Configure {
        min_decryption_version: body.min_decryption_version,
        rotation_period_ms: body.rotation_period_ms.map(|p| (p > 0).then_some(p)),
    };
    write(&state, &headers, Command::ChangeKey { tenant, key, change }, StatusCode::OK).await
}

async fn change(
    caller: Caller,
    state: AppState,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    change: KeyChange,
) -> Result<Response, ApiError> {
    let (tenant, key) = key_path(path)?;
    let permission = match change {
        KeyChange::ScheduleDestroy { .. } | KeyChange::CancelDestroy => Permission::KeysDestroy,
        _ => Permission::KeysConfigure,
    };
    caller.authorize(&state, Some(&tenant), permission)?;
    write(&state, &headers, Command::ChangeKey { tenant, key, change }, StatusCode::OK).await
}

pub async fn enable(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    change(caller, state, headers, path, KeyChange::Enable).await
}

pub async fn disable(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    change(caller, state, headers, path, KeyChange::Disable).await
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDestroy {
    /// Delay before destruction; 7 days when absent. The key refuses every operation meanwhile.
    delay_ms: Option<u64>,
}

pub async fn schedule_destroy(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // The body is optional, so it is parsed here rather than by the Json extractor.
    let body: ScheduleDestroy = if body.is_empty() {
        ScheduleDestroy::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?
    };
    let delay_ms = body.delay_ms.unwrap_or(DEFAULT_DESTROY_DELAY_MS);
    change(caller, state, headers, path, KeyChange::ScheduleDestroy { delay_ms }).await
}

pub async fn cancel_destroy(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    change(caller, state, headers, path, KeyChange::CancelDestroy).await
}

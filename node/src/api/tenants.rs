//! `/v1/tenants`: create, list, get, suspend, resume, delete.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use custos_raft::{check_display_name, Command, CoreProviderKind, Output, RegionLabel, Tenant, TenantId, TenantStatus};
use serde::{Deserialize, Serialize};

use custos_actors::{ChildHealth, TenantActorState, TenantHealth};

use super::auth::Caller;
use super::error::ApiError;
use super::{page_limit, replicate, AppState, ReadConsistency};
use custos_actors::policy::Permission;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    id: String,
    display_name: String,
    region: String,
    /// `sealed-local` or `vault`; the node's `custody.provider` when absent.
    key_provider: Option<String>,
}

/// A tenant as the API shows it.
#[derive(Debug, Serialize)]
pub struct TenantView {
    id: String,
    display_name: String,
    region: String,
    status: &'static str,
    created_at_ms: u64,
    updated_at_ms: u64,
    revision: u64,
    /// Which core provider holds the tenant's root key; shown by get (absent once deleted).
    #[serde(skip_serializing_if = "Option::is_none")]
    key_provider: Option<&'static str>,
}

impl From<Tenant> for TenantView {
    fn from(t: Tenant) -> Self {
        TenantView {
            id: t.id.to_string(),
            display_name: t.display_name,
            region: t.region.to_string(),
            status: t.status.as_str(),
            created_at_ms: t.created_at_ms,
            updated_at_ms: t.updated_at_ms,
            revision: t.revision,
            key_provider: None,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    #[serde(default)]
    consistency: ReadConsistency,
    limit: Option<usize>,
    after: Option<String>,
    #[serde(default)]
    include_deleted: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GetParams {
    #[serde(default)]
    consistency: ReadConsistency,
}

#[derive(Debug, Serialize)]
struct TenantList {
    tenants: Vec<TenantView>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<String>,
}

/// Replicates a tenant command and renders the tenant.
async fn write(
    state: &AppState,
    headers: &HeaderMap,
    command: Command,
    status: StatusCode,
) -> Result<Response, ApiError> {
    replicate(state, headers, command, status, |output| match output {
        Output::Tenant(tenant) => Some(TenantView::from(tenant)),
        _ => None,
    })
    .await
}

fn tenant_id(path: Result<Path<String>, PathRejection>) -> Result<TenantId, ApiError> {
    let Path(id) = path?;
    Ok(TenantId::new(id)?)
}

pub async fn create(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<CreateTenant>, JsonRejection>,
) -> Result<Response, ApiError> {
    caller.authorize(&state, None, Permission::TenantsCreate)?;
    let Json(body) = body?;
    let id = TenantId::new(body.id)?;
    if id.as_str() == custos_raft::access::PLATFORM_TENANT {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "tenant_exists",
            format!("tenant id {id} is reserved for the platform's own key custody"),
        ));
    }
    let region = RegionLabel::new(body.region)?;
    check_display_name(&body.display_name)
        .map_err(|reason| ApiError::bad_request("invalid_field", format!("display_name {reason}")))?;
    let provider = match body.key_provider.as_deref() {
        None => None,
        Some(name) => Some(CoreProviderKind::from_name(name).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_field",
                format!("key_provider {name:?} is not one of \"sealed-local\", \"vault\""),
            )
        })?),
    };
    // An id taken on this node is refused before anything is provisioned (the write checks
    // again, against the log) — unless the request may be a retry, whose earlier answer the
    // write replays. A live tenant's own roots then stand in for new ones: the write replays
    // or refuses, and never stores them, since the id is taken.
    let taken = state.cluster.reader().tenant(&id)?;
    let retry = headers.contains_key(super::IDEMPOTENCY_HEADER);
    if taken.is_some() && !retry {
        return Err(custos_raft::Rejection::TenantExists(id).into());
    }
    let live_custody = match &taken {
        Some(t) if t.status != TenantStatus::Deleted => state.cluster.reader().custody(&id)?,
        _ => None,
    };
    let (custody, provisioned) = match live_custody {
        Some(custody) => (custody, None),
        // The tenant's key roots exist before the tenant does, so it is never without custody.
        None => {
            let custody = state.custody.provision_tenant(&id, provider).await?;
            let provisioned = (custody.provider, custody.root.clone());
            (custody, Some(provisioned))
        }
    };
    let note = super::audit::Note { tenant: Some(id.clone()), ..Default::default() }
        .detail("region", region.as_str())
        .detail("key_provider", custody.provider.as_str());
    super::audit::annotate(&note);
    let command = Command::CreateTenant { id: id.clone(), display_name: body.display_name, region, custody };
    let written = write(&state, &headers, command, StatusCode::CREATED).await;
    let fresh = matches!(&written, Ok(response) if !response.headers().contains_key("idempotent-replayed"));
    if let (false, Some(provisioned)) = (fresh, provisioned) {
        // In a task of its own: a request cut short (a deadline, a client gone) still cleans up.
        tokio::spawn(discard_unstored(state.clone(), id, provisioned));
    }
    let mut response = written?;
    response.extensions_mut().insert(note);
    Ok(response)
}

/// After a create that did not store what it provisioned (refused, or a replay), what it
/// provisioned goes unless the id's tenant holds it (see [`unstored_root_goes`]). Deletion is
/// final and a live tenant's provider never changes, so a local read that shows either needs
/// no barrier. Failures are logged: the root is left as it was.
async fn discard_unstored(state: AppState, id: TenantId, (provider, root): (CoreProviderKind, Vec<u8>)) {
    let verdict = || -> Option<bool> {
        let tenant = state.cluster.reader().tenant(&id).ok()??;
        let live_provider = match tenant.status {
            TenantStatus::Deleted => None,
            _ => Some(state.cluster.reader().custody(&id).ok()??.provider),
        };
        Some(unstored_root_goes(live_provider, provider))
    };
    let goes = match verdict() {
        Some(goes) => goes,
        None => {
            if let Err(e) = state.cluster.read_barrier(custos_raft::Consistency::Linearizable).await {
                tracing::warn!(tenant_id = %id, error = %e, "no read barrier after a refused create; what it provisioned stays");
                return;
            }
            // Still no tenant: the write failed without an answer and may yet apply with this
            // very root, so it stays.
            verdict().unwrap_or(false)
        }
    };
    if goes {
        if let Err(e) = state.custody.discard_root(&id, provider, &root).await {
            tracing::warn!(tenant_id = %id, error = %e, "destroying what a refused create provisioned failed");
        }
    }
}

/// Whether a root provisioned for a tenant id whose create stored nothing must be destroyed,
/// given the provider of the live tenant holding the id (`None`: the tenant is deleted).
/// - Deleted: provisioning brought back what its deletion shredded (a Vault namespace), and
///   nothing would ever shred it again.
/// - Live on another provider (a retried create, with another `key_provider`, on a node that
///   did not know the tenant yet): nothing uses what was provisioned.
/// - Live on the same provider: roots are named after their tenant, so provisioning found the
///   tenant's own, which stays.
fn unstored_root_goes(live_provider: Option<CoreProviderKind>, provisioned: CoreProviderKind) -> bool {
    live_provider != Some(provisioned)
}

pub async fn list(
    caller: Caller,
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<impl Serialize>, ApiError> {
    let Query(params) = params?;
    let limit = page_limit(&state, params.limit)?;
    // A tenant's principal sees its own tenant; the platform's sees them all.
    let own = caller.principal.tenant.clone();
    caller.authorize(&state, own.as_ref(), Permission::TenantsRead)?;
    let mut after = params.after.map(TenantId::new).transpose()?;
    state.cluster.read_barrier(params.consistency.into()).await?;
    if let Some(own) = own {
        let tenants = state.cluster.reader().tenant(&own)?.into_iter().map(TenantView::from).collect();
        return Ok(Json(TenantList { tenants, next_after: None }));
    }
    // Deleted tenants may be filtered out, so scan pages until `limit` tenants are found.
    let mut tenants = Vec::with_capacity(limit);
    let more;
    loop {
        let page = state.cluster.reader().tenants(after.as_ref(), limit)?;
        let full = page.len() == limit;
        for tenant in page {
            after = Some(tenant.id.clone());
            if params.include_deleted || tenant.status != TenantStatus::Deleted {
                tenants.push(TenantView::from(tenant));
                if tenants.len() == limit {
                    break;
                }
            }
        }
        if tenants.len() == limit || !full {
            more = tenants.len() == limit;
            break;
        }
    }
    let next_after = if more { after.map(|id| id.to_string()) } else { None };
    Ok(Json(TenantList { tenants, next_after }))
}

pub async fn get(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<GetParams>, QueryRejection>,
) -> Result<Json<TenantView>, ApiError> {
    let id = tenant_id(path)?;
    caller.authorize(&state, Some(&id), Permission::TenantsRead)?;
    let Query(params) = params?;
    state.cluster.read_barrier(params.consistency.into()).await?;
    match state.cluster.reader().tenant(&id)? {
        Some(tenant) => {
            let mut view = TenantView::from(tenant);
            view.key_provider = state.cluster.reader().custody(&id)?.map(|c| c.provider.as_str());
            Ok(Json(view))
        }
        None => Err(custos_raft::Rejection::TenantNotFound(id).into()),
    }
}

/// A tenant's actors on this node.
#[derive(Debug, Serialize)]
pub struct ActorsView {
    node_id: u64,
    /// `tenant_id`, `state` (`idle`: no actors here until its next request; `running`,
    /// `restarting`, `degraded`) and `recent_failures`.
    #[serde(flatten)]
    state: TenantHealth,
    children: Vec<ChildHealth>,
}

/// `GET /v1/tenants/{id}/actors`: the state of the tenant's actor tree on the serving node
/// and a health probe of each child.
pub async fn actors(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ActorsView>, ApiError> {
    let id = tenant_id(path)?;
    caller.authorize(&state, Some(&id), Permission::TenantsRead)?;
    if super::applied_tenant(&state, &id).await?.is_none() {
        return Err(custos_raft::Rejection::TenantNotFound(id).into());
    }
    let node_id = state.cluster.id();
    let health = state.directory.health_of(&id).unwrap_or_else(|| TenantHealth {
        tenant_id: id.to_string(),
        state: TenantActorState::Idle,
        recent_failures: 0,
    });
    let children = custos_actors::tenant_children(node_id, &id).await.unwrap_or_default();
    Ok(Json(ActorsView { node_id, state: health, children }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    display_name: String,
    /// Apply only while the tenant is at this `revision` (compare-and-set); 409
    /// `stale_revision` otherwise.
    expected_revision: Option<u64>,
}

/// `PATCH /v1/tenants/{id}`: changes the display name, optionally as a compare-and-set.
pub async fn update(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<UpdateTenant>, JsonRejection>,
) -> Result<Response, ApiError> {
    let id = tenant_id(path)?;
    caller.authorize(&state, Some(&id), Permission::TenantsUpdate)?;
    let Json(body) = body?;
    check_display_name(&body.display_name)
        .map_err(|reason| ApiError::bad_request("invalid_field", format!("display_name {reason}")))?;
    let command =
        Command::UpdateTenant { id, display_name: body.display_name, expected_revision: body.expected_revision };
    write(&state, &headers, command, StatusCode::OK).await
}

pub async fn suspend(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = tenant_id(path)?;
    // Suspension is the platform's decision (billing, abuse), not the tenant's.
    caller.authorize(&state, None, Permission::TenantsUpdate)?;
    write(&state, &headers, Command::SetTenantStatus { id, status: TenantStatus::Suspended }, StatusCode::OK).await
}

pub async fn resume(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = tenant_id(path)?;
    caller.authorize(&state, None, Permission::TenantsUpdate)?;
    write(&state, &headers, Command::SetTenantStatus { id, status: TenantStatus::Active }, StatusCode::OK).await
}

pub async fn delete(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = tenant_id(path)?;
    caller.authorize(&state, Some(&id), Permission::TenantsDelete)?;
    // Governance state drops the roots in this write; a root held by a provider elsewhere is
    // destroyed there by the leader (`custody::shred_pending`), and every node drops its
    // cached keys when the tenant's actors stop.
    write(&state, &headers, Command::DeleteTenant { id }, StatusCode::OK).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unstored_root_goes_unless_the_live_tenant_uses_that_provider() {
        use CoreProviderKind::{SealedLocal, Vault};
        // Deleted: what provisioning brought back goes.
        assert!(unstored_root_goes(None, Vault));
        // Live on another provider: the namespace made for the retry is nobody's.
        assert!(unstored_root_goes(Some(SealedLocal), Vault));
        // Live on Vault: provisioning found the tenant's own namespace.
        assert!(!unstored_root_goes(Some(Vault), Vault));
    }
}

//! `POST /v1/tenants/{tenant}/faults`: makes one of a tenant's actors on this node fail, for
//! supervision and chaos tests. Routed only when `actors.fault_injection` is on.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use custos_actors::ChildKind;
use custos_raft::TenantId;
use serde::Deserialize;

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use custos_actors::policy::Permission;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    child: ChildKind,
}

pub async fn inject(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<Fault>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    caller.authorize(&state, None, Permission::ClusterManage)?;
    let Path(tenant) = path?;
    let tenant = TenantId::new(tenant)?;
    let Json(Fault { child }) = body?;
    if custos_actors::inject_fault(state.cluster.id(), &tenant, child) {
        Ok(StatusCode::ACCEPTED)
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "actor_not_running",
            format!("tenant {tenant} has no running {} actor on this node", child.as_str()),
        ))
    }
}

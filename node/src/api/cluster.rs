//! `/v1/cluster`: init, self, status, members.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use custos_actors::custody::edge::EdgeStats;
use custos_actors::custody::provider::ProviderHealth;
use custos_actors::{NodeMsg, TenantHealth};
use custos_raft::{ClusterStatus, NodeId, NodeInfo, NodeStatus};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::auth::{new_admin_token, token_sha256, Caller};
use super::error::ApiError;
use super::{now_ms, AppState};
use custos_actors::policy::Permission;

/// Makes this pristine node a one-member cluster. The admin token is in this response only.
pub async fn init(State(state): State<AppState>) -> Result<(StatusCode, Json<Value>), ApiError> {
    let token = new_admin_token();
    state.cluster.initialize(token_sha256(&token), now_ms()).await?;
    tracing::info!(node_id = state.cluster.id(), "cluster initialised");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "node_id": state.cluster.id(),
            "admin_token": token.as_str(),
            "note": "store the admin token now: it is shown once and only its hash is kept",
        })),
    ))
}

#[derive(Serialize)]
pub struct SelfView {
    node_id: NodeId,
    raft_addr: String,
    api_addr: String,
    member: bool,
}

/// Who this node is; used by `custos cluster join` before the node is a member.
pub async fn node_self(State(state): State<AppState>) -> Json<SelfView> {
    let info = state.cluster.info();
    Json(SelfView {
        node_id: state.cluster.id(),
        raft_addr: info.raft_addr.clone(),
        api_addr: info.api_addr.clone(),
        member: state.cluster.is_member(),
    })
}

#[derive(Serialize)]
pub struct StatusView {
    /// The leader's view, or absent when no leader could be reached.
    cluster: Option<ClusterStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_error: Option<String>,
    node: NodeStatus,
    /// This node's tenant actors, or absent if the supervisor did not answer in time.
    tenant_actors: Option<Vec<TenantHealth>>,
    custody: CustodyView,
    /// This node's audit outbox and its delivery to the sink.
    audit: custos_actors::audit::AuditStatus,
    /// The audit events this node's governance writes carried in Raft entries.
    carried_audit: crate::carried::CarriedStatus,
}

/// Key custody on this node: its core providers and its edge cache.
#[derive(Serialize)]
pub struct CustodyView {
    default_provider: &'static str,
    providers: Vec<ProviderHealth>,
    edge: EdgeStats,
}

/// `?scope=node` answers from this node alone, without asking the leader for the cluster's
/// view: quick whether or not there is a leader (for monitors polling through elections).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StatusQuery {
    #[serde(default)]
    scope: StatusScope,
}

#[derive(Debug, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StatusScope {
    #[default]
    Cluster,
    Node,
}

pub async fn status(
    caller: Caller,
    State(state): State<AppState>,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Json<StatusView>, ApiError> {
    caller.authorize(&state, None, Permission::ClusterRead)?;
    let Query(query) = query?;
    let node = state.cluster.node_status();
    let (cluster, cluster_error) = match query.scope {
        StatusScope::Node => (None, None),
        StatusScope::Cluster => match state.cluster.status().await {
            Ok(status) => (Some(status), None),
            Err(e) => (None, Some(e.to_string())),
        },
    };
    let tenant_actors = ractor::call_t!(state.supervisor, NodeMsg::Health, 1000).ok();
    let custody = CustodyView {
        default_provider: state.custody.default_provider().as_str(),
        providers: state.custody.provider_health(),
        edge: state.custody.edge().stats(),
    };
    let audit = state.audit.status();
    let carried_audit = crate::carried::status(&state.cluster, &state.carrier);
    Ok(Json(StatusView { cluster, cluster_error, node, tenant_actors, custody, audit, carried_audit }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    node_id: NodeId,
    raft_addr: String,
    api_addr: String,
}

fn check_addr(field: &str, value: &str) -> Result<(), ApiError> {
    let ok = value.len() <= 255
        && value
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request("invalid_field", format!("{field} must be host:port with a non-zero port")))
    }
}

/// Adds a node: learner first, then voter once it has caught up.
pub async fn add_member(
    caller: Caller,
    State(state): State<AppState>,
    body: Result<Json<AddMember>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.authorize(&state, None, Permission::ClusterManage)?;
    let Json(body) = body?;
    if body.node_id == 0 {
        return Err(ApiError::bad_request("invalid_field", "node_id must be a positive integer"));
    }
    check_addr("raft_addr", &body.raft_addr)?;
    check_addr("api_addr", &body.api_addr)?;
    let info = NodeInfo { raft_addr: body.raft_addr, api_addr: body.api_addr };
    state.cluster.add_voter(body.node_id, info).await?;
    Ok(Json(json!({ "node_id": body.node_id, "voter": true })))
}

pub async fn remove_member(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<NodeId>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.authorize(&state, None, Permission::ClusterManage)?;
    let Path(id) = path?;
    state.cluster.remove_node(id).await?;
    Ok(Json(json!({ "node_id": id, "removed": true })))
}

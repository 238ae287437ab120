use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;

/// Liveness: the process serves HTTP and its Raft core runs.
pub async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let running = state.cluster.raft().metrics().borrow().running_state.is_ok();
    if running {
        (StatusCode::OK, Json(json!({ "status": "ok" })))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "raft_stopped" })))
    }
}

/// Readiness: this node is a cluster member and knows a leader, so it can serve requests.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let node = state.cluster.node_status();
    let reason = if !state.cluster.is_member() {
        Some("not a cluster member yet")
    } else if node.leader_id.is_none() {
        Some("no leader known")
    } else {
        None
    };
    match reason {
        None => (StatusCode::OK, Json(json!({ "ready": true, "leader_id": node.leader_id }))),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "ready": false, "reason": reason }))),
    }
}

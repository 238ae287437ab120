use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::path;
use crate::cluster::{Cluster, LeaderOp};
use crate::store::codec::{decode, encode};
use crate::TypeConfig;
use openraft::raft::{AppendEntriesResponse, InstallSnapshotRequest};

/// The routes of the Raft listener. The caller serves them behind mutual TLS.
pub fn router(cluster: Cluster, max_body_bytes: usize) -> Router {
    Router::new()
        .route(path::APPEND, post(append))
        .route(path::VOTE, post(vote))
        .route(path::SNAPSHOT, post(snapshot))
        .route(path::LEADER_OP, post(leader_op))
        .route(path::PRE_VOTE, post(pre_vote))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(cluster)
}

fn decode_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    decode(body).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()).into_response())
}

fn encode_reply<T: Serialize>(reply: &T) -> Response {
    match encode(reply) {
        Ok(bytes) => bytes.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn append(State(cluster): State<Cluster>, body: Bytes) -> Response {
    match decode_body(&body) {
        Ok(rpc) => {
            let reply = cluster.raft().append_entries(rpc).await;
            // Anything but a higher vote means the sender is the leader this node follows.
            if matches!(&reply, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
                cluster.record_leader_contact();
            }
            encode_reply(&reply)
        }
        Err(r) => r,
    }
}

async fn vote(State(cluster): State<Cluster>, body: Bytes) -> Response {
    match decode_body(&body) {
        Ok(rpc) => encode_reply(&cluster.raft().vote(rpc).await),
        Err(r) => r,
    }
}

async fn snapshot(State(cluster): State<Cluster>, body: Bytes) -> Response {
    match decode_body::<InstallSnapshotRequest<TypeConfig>>(&body) {
        Ok(rpc) => {
            let vote = rpc.vote;
            let reply = cluster.raft().install_snapshot(rpc).await;
            if matches!(&reply, Ok(r) if r.vote == vote) {
                cluster.record_leader_contact();
            }
            encode_reply(&reply)
        }
        Err(r) => r,
    }
}

/// A pre-vote: does this node hear a live leader? (See `crate::prevote`.) The body is empty.
async fn pre_vote(State(cluster): State<Cluster>) -> Response {
    encode_reply(&cluster.live_leader())
}

async fn leader_op(State(cluster): State<Cluster>, body: Bytes) -> Response {
    match decode_body::<LeaderOp>(&body) {
        Ok(op) => encode_reply(&cluster.execute_as_leader(op).await),
        Err(r) => r,
    }
}

use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::path;
use crate::store::codec::{decode, encode};
use crate::types::{NodeId, NodeInfo};
use crate::TypeConfig;

/// Why a call to a peer failed before producing an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("peer {addr} unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("peer {addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("peer {addr} answered with HTTP {status}")]
    Status { addr: String, status: u16 },
    #[error("malformed message from or to peer {addr}: {reason}")]
    Codec { addr: String, reason: String },
}

/// An HTTPS client presenting this node's certificate and trusting only the cluster CA.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    /// Advertised address → the address actually dialled (`raft.dial_overrides`).
    dial: std::sync::Arc<std::collections::BTreeMap<String, String>>,
}

impl PeerClient {
    pub fn new(
        tls: rustls::ClientConfig,
        dial: std::collections::BTreeMap<String, String>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(8)
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        Ok(PeerClient { http, dial: std::sync::Arc::new(dial) })
    }

    /// Sends one request and decodes the answer. `timeout` bounds the whole exchange.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let codec = |reason: String| CallError::Codec { addr: addr.to_string(), reason };
        let body = encode(request).map_err(|e| codec(e.to_string()))?;
        let dialled = self.dial.get(addr).map_or(addr, String::as_str);
        let send = self.http.post(format!("https://{dialled}{path}")).body(body).timeout(timeout).send();
        let response = send.await.map_err(|e| {
            if e.is_timeout() {
                CallError::Timeout { addr: addr.to_string(), timeout }
            } else {
                CallError::Unreachable { addr: addr.to_string(), reason: error_chain(&e) }
            }
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(CallError::Status { addr: addr.to_string(), status: status.as_u16() });
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CallError::Unreachable { addr: addr.to_string(), reason: error_chain(&e) })?;
        decode(&bytes).map_err(|e| codec(e.to_string()))
    }
}

/// An error and all its sources on one line: transport errors from reqwest and hyper say what
/// actually failed (refused, TLS, timeout) only in their sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// openraft's network factory: one [`Connection`] per target, sharing the client's pool.
#[derive(Clone)]
pub struct Network {
    peers: PeerClient,
}

impl Network {
    pub fn new(peers: PeerClient) -> Self {
        Network { peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Connection {
        Connection { target, addr: node.raft_addr.clone(), peers: self.peers.clone() }
    }
}

/// The link to one peer.
pub struct Connection {
    target: NodeId,
    addr: String,
    peers: PeerClient,
}

impl Connection {
    async fn rpc<Req, Resp, E>(
        &self,
        path: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let timeout = option.hard_ttl();
        let reply: Result<Resp, RaftError<NodeId, E>> =
            self.peers.call(&self.addr, path, request, timeout).await.map_err(|e| match e {
                CallError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                CallError::Timeout { .. } | CallError::Status { .. } | CallError::Codec { .. } => {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.rpc(path::APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.rpc(path::SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.rpc(path::VOTE, &rpc, &option).await
    }
}

//! [`Cluster`]: this node's handle on the replicated governance state. Writes and
//! linearizable reads reach the leader from any node; membership changes run on the leader.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{ChangeMembers, Raft, ServerState};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::batcher::{BatchLimits, Batcher, Executor};
use crate::command::{Command, Proposal, Proposals, Response};
use crate::network::{path, CallError, Network, PeerClient};
use crate::prevote;
use crate::store::{self, GovernanceReader, LogStore};
use crate::types::{NodeId, NodeInfo, RequestId};
use crate::TypeConfig;

/// Why a cluster operation failed. Each variant tells the API edge which status to use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ClusterError {
    #[error("this node is not part of an initialised cluster yet")]
    NotInitialized,
    #[error("this node already belongs to a cluster")]
    AlreadyInitialized,
    #[error("no leader could be reached: {0}")]
    NoLeader(String),
    #[error("the cluster cannot serve this now: {0}")]
    Unavailable(String),
    #[error("membership change refused: {0}")]
    Membership(String),
    #[error("the Raft node stopped: {0}")]
    Fatal(String),
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read started, on any node.
    #[default]
    Linearizable,
    /// Whatever this node has applied; may lag the leader.
    Stale,
}

/// Work that must run on the leader, sent there by whichever node received it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderOp {
    /// A batch of proposals, appended as one log entry.
    Write(Proposals),
    /// Confirms leadership with a quorum and returns the index a linearizable read must see.
    ReadIndex,
    AddVoter {
        id: NodeId,
        info: NodeInfo,
    },
    RemoveNode {
        id: NodeId,
    },
    Status,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderOutput {
    Written(Vec<Response>),
    ReadIndex(u64),
    MembershipChanged,
    Status(ClusterStatus),
}

/// Why the leader (or the node that believed it was) could not run an operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderFailure {
    /// Leadership moved; try again where the metrics point.
    NotLeader,
    Failed(ClusterError),
}

/// The cluster as the leader sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub committed_index: u64,
    pub members: Vec<MemberStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub raft_addr: String,
    pub api_addr: String,
    pub voter: bool,
    /// Last log index the leader knows this member holds (leader's view only).
    pub matched_index: Option<u64>,
    /// Entries this member is behind the leader's log.
    pub lag: Option<u64>,
}

/// One node's own view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub state: String,
    pub term: u64,
    pub leader_id: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub committed_index: u64,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// Flushes to disk since the node started: divide by committed writes for fsyncs/write.
    pub fsyncs: u64,
    /// Copies of the whole state encoded for followers behind the purged log, since the node
    /// started (each costs about 2 µs per stored key).
    #[serde(default)]
    pub snapshot_copies: u64,
}

/// How a node starts its Raft part.
pub struct ClusterOptions<'a> {
    pub node_id: NodeId,
    pub info: NodeInfo,
    pub raft: &'a custos_config::RaftConfig,
    pub data_dir: &'a Path,
    /// TLS for calls to peers: this node's certificate and the cluster CA as the only root.
    pub peer_tls: rustls::ClientConfig,
    /// Attempts to reach a leader before an operation fails with [`ClusterError::NoLeader`].
    pub leader_attempts: u32,
}

/// Cheap to clone; every clone drives the same Raft node.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    info: NodeInfo,
    raft: Raft<TypeConfig>,
    reader: GovernanceReader,
    log: LogStore,
    peers: PeerClient,
    rpc_timeout: Duration,
    leader_attempts: u32,
    /// Batches this node's writes on their way to the leader.
    forward: Batcher<ClusterError>,
    /// On the leader: merges incoming batches into one log entry.
    entries: Batcher<LeaderFailure>,
    snapshot_copies: Arc<std::sync::atomic::AtomicU64>,
    /// When this node last accepted a leader's message, for pre-votes.
    contact: Arc<prevote::Contact>,
    /// How recent a leader's contact must be to count as live.
    lease: Duration,
    /// Set when this node started as the leader of its term; see [`RestoredLeadership`].
    restored: Option<RestoredLeadership>,
}

/// A node whose stored vote is its own committed one starts as the leader of that term again,
/// without an election, so openraft appends no blank entry in a new term (nor in this one, if
/// the log already holds an entry of it). It then takes its read index from the committed
/// index it restored, and the committed marker is not flushed (nor is the applied state):
/// after a crash, that index can be older than writes this leader acknowledged before it,
/// which are in its flushed log. A linearizable read served
/// from it would miss them. So while the term lasts, a read index is at least the last log
/// index stored at start: everything the leader may have acknowledged. Its entries belong to
/// this leader's term or precede one that does, so they commit as soon as a quorum holds them
/// again; once the term ends, a new leader's blank entry bounds reads as openraft intends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RestoredLeadership {
    term: u64,
    last_log_index: u64,
}

impl RestoredLeadership {
    fn at_start(
        id: NodeId,
        vote: Option<&openraft::Vote<NodeId>>,
        last_log: Option<openraft::LogId<NodeId>>,
    ) -> Option<Self> {
        let vote = vote?;
        (vote.is_committed() && vote.leader_id().voted_for() == Some(id)).then(|| RestoredLeadership {
            term: vote.leader_id().get_term(),
            last_log_index: last_log.map_or(0, |l| l.index),
        })
    }

    /// The least read index while the leader is in `term`.
    fn floor(restored: Option<Self>, term: u64) -> u64 {
        restored.filter(|r| r.term == term).map_or(0, |r| r.last_log_index)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("opening storage: {0}")]
    Storage(#[from] store::EngineError),
    #[error("invalid Raft configuration: {0}")]
    Config(#[from] openraft::ConfigError),
    #[error("building the peer client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("starting Raft: {0}")]
    Raft(Box<openraft::error::Fatal<NodeId>>),
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((25u64 << attempt.min(5)).min(800))
}

impl Cluster {
    pub async fn start(options: ClusterOptions<'_>) -> Result<Cluster, StartError> {
        let r = options.raft;
        let dir = options.data_dir.join("raft");
        let store_options = store::StoreOptions::from(r);
        let (log, sm, reader) = tokio::task::spawn_blocking(move || store::open(&dir, store_options))
            .await
            .map_err(|e| store::EngineError(format!("storage open task failed: {e}")))??;
        let config = openraft::Config {
            cluster_name: "custos".into(),
            heartbeat_interval: r.heartbeat_interval_ms,
            election_timeout_min: r.election_timeout_ms_min,
            election_timeout_max: r.election_timeout_ms_max,
            install_snapshot_timeout: r.install_snapshot_timeout_ms,
            max_payload_entries: r.max_entries_per_append,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_after_entries),
            snapshot_max_chunk_size: r.snapshot_chunk_bytes,
            max_in_snapshot_log_to_keep: r.log_entries_kept_after_snapshot,
            // Off until the pre-vote guard finds a majority without a leader.
            enable_elect: false,
            ..Default::default()
        }
        .validate()?;
        let restored = {
            let mut log = log.clone();
            let vote = log.read_vote().await.map_err(|e| store::EngineError(format!("reading the vote: {e}")))?;
            let state = log.get_log_state().await.map_err(|e| store::EngineError(format!("reading the log: {e}")))?;
            RestoredLeadership::at_start(options.node_id, vote.as_ref(), state.last_log_id)
        };
        if let Some(r) = restored {
            tracing::info!(
                term = r.term,
                last_log_index = r.last_log_index,
                "starting as the leader of its term again"
            );
        }
        let peers = PeerClient::new(options.peer_tls, options.raft.dial_overrides.clone())?;
        let snapshot_copies = sm.copies_encoded();
        let raft = Raft::new(options.node_id, Arc::new(config), Network::new(peers.clone()), log.clone(), sm)
            .await
            .map_err(|e| StartError::Raft(Box::new(e)))?;
        tokio::spawn(check_quorum(
            raft.clone(),
            options.node_id,
            // Twice the longest election timeout: a quorum slow to acknowledge under load (a
            // follower's fsync, a node catching up as it joins) is not a lost quorum.
            Duration::from_millis(2 * r.election_timeout_ms_max),
            Duration::from_millis(r.heartbeat_interval_ms),
        ));
        let contact = Arc::new(prevote::Contact::new());
        let lease = Duration::from_millis(r.election_timeout_ms_max);
        tokio::spawn(prevote::guard(
            raft.clone(),
            options.node_id,
            peers.clone(),
            contact.clone(),
            prevote::Timings {
                tick: Duration::from_millis(r.heartbeat_interval_ms),
                silence: Duration::from_millis(r.election_timeout_ms_min),
                ask: Duration::from_millis(r.election_timeout_ms_max / 2)
                    .max(Duration::from_millis(r.heartbeat_interval_ms)),
            },
        ));
        let limits = BatchLimits {
            max_proposals: r.max_proposals_per_entry,
            max_bytes: r.max_entry_bytes,
            max_in_flight: r.max_batches_in_flight,
        };
        // The forwarding batcher holds the cluster weakly, so dropping the last Cluster still
        // closes storage.
        let entry_raft = raft.clone();
        let to_log: Executor<LeaderFailure> = Arc::new(move |proposals| {
            let raft = entry_raft.clone();
            Box::pin(
                async move { raft.client_write(Proposals(proposals)).await.map(|w| w.data).map_err(write_failure) },
            )
        });
        let entries = Batcher::start(to_log, limits);
        Ok(Cluster {
            inner: Arc::new_cyclic(|weak: &std::sync::Weak<Inner>| {
                let weak = weak.clone();
                let to_leader: Executor<ClusterError> = Arc::new(move |proposals| {
                    let weak = weak.clone();
                    Box::pin(async move {
                        match weak.upgrade() {
                            Some(inner) => Cluster { inner }.write_batch(proposals).await,
                            None => Err(ClusterError::Fatal("the node is shutting down".into())),
                        }
                    })
                });
                Inner {
                    id: options.node_id,
                    info: options.info,
                    raft,
                    reader,
                    log,
                    peers,
                    rpc_timeout: Duration::from_millis(r.rpc_timeout_ms),
                    leader_attempts: options.leader_attempts,
                    forward: Batcher::start(to_leader, limits),
                    entries,
                    snapshot_copies,
                    contact,
                    lease,
                    restored,
                }
            }),
        })
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn info(&self) -> &NodeInfo {
        &self.inner.info
    }

    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.inner.raft
    }

    /// A leader's append or snapshot chunk was accepted: the pre-vote guard's clock.
    pub(crate) fn record_leader_contact(&self) {
        self.inner.contact.record();
    }

    /// This node's pre-vote answer: whether it is in touch with a live leader.
    pub(crate) fn live_leader(&self) -> bool {
        prevote::live_leader(&self.inner.raft, &self.inner.contact, self.inner.lease)
    }

    /// Applied state, for reads after [`Cluster::read_barrier`].
    pub fn reader(&self) -> &GovernanceReader {
        &self.inner.reader
    }

    /// True once this node holds any membership (it was initialised or joined).
    pub fn is_member(&self) -> bool {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let member = metrics.membership_config.membership().nodes().next().is_some();
        member
    }

    /// Makes this pristine node a one-member cluster and records the admin token hash.
    pub async fn initialize(&self, admin_token_sha256: [u8; 32], now_ms: u64) -> Result<(), ClusterError> {
        let members = BTreeMap::from([(self.inner.id, self.inner.info.clone())]);
        match self.inner.raft.initialize(members).await {
            Ok(()) => {}
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => return Err(ClusterError::AlreadyInitialized),
            Err(RaftError::APIError(e)) => return Err(ClusterError::Membership(e.to_string())),
            Err(RaftError::Fatal(e)) => return Err(ClusterError::Fatal(e.to_string())),
        }
        // A one-member cluster elects itself at once; wait for that before the first write so
        // it is not refused as coming from a non-member.
        let id = self.inner.id;
        self.inner
            .raft
            .wait(Some(self.inner.rpc_timeout * 5))
            .metrics(|m| m.current_leader == Some(id), "leadership after initialize")
            .await
            .map_err(|e| ClusterError::Unavailable(format!("no leader after initialize: {e}")))?;
        let proposal = Proposal {
            // Fixed id: a retried init replays instead of failing.
            request_id: RequestId::new("cluster-init-admin-token").expect("constant id is valid"),
            proposed_at_ms: now_ms,
            command: Command::SetAdminToken { token_sha256: admin_token_sha256 },
        };
        let response = self.write(proposal).await?;
        response.outcome.map(|_| ()).map_err(|e| ClusterError::Membership(e.to_string()))
    }

    /// Replicates a write through the leader (batched with concurrent writes) and returns what
    /// applying it produced.
    ///
    /// Runs in a `raft.write` span (the command's kind, then its outcome: `applied`,
    /// `rejected` or `replayed`), so a traced request shows how long its write took.
    pub async fn write(&self, proposal: Proposal) -> Result<Response, ClusterError> {
        let span =
            tracing::info_span!("raft.write", command = proposal.command.kind(), outcome = tracing::field::Empty);
        let stopped = ClusterError::Fatal("the write batcher has stopped".into());
        let mut responses = self.inner.forward.submit(vec![proposal], stopped).instrument(span.clone()).await?;
        // The batcher returns exactly one response per submitted proposal.
        assert_eq!(responses.len(), 1, "one response for one proposal");
        let response = responses.remove(0);
        let outcome = match (&response.outcome, response.replayed) {
            (_, true) => "replayed",
            (Ok(_), false) => "applied",
            (Err(_), false) => "rejected",
        };
        span.record("outcome", outcome);
        Ok(response)
    }

    /// Replicates one batch through the leader; used by the batcher.
    async fn write_batch(&self, proposals: Vec<Proposal>) -> Result<Vec<Response>, ClusterError> {
        match self.on_leader(LeaderOp::Write(Proposals(proposals))).await? {
            LeaderOutput::Written(responses) => Ok(responses),
            other => Err(unexpected(other)),
        }
    }

    /// Returns once a read of local state reflects every write acknowledged before the call.
    ///
    /// A linearizable barrier runs in a `raft.read_barrier` span with the read index.
    pub async fn read_barrier(&self, consistency: Consistency) -> Result<(), ClusterError> {
        if consistency == Consistency::Stale {
            return Ok(());
        }
        let span = tracing::info_span!("raft.read_barrier", read_index = tracing::field::Empty);
        async {
            let index = match self.on_leader(LeaderOp::ReadIndex).await? {
                LeaderOutput::ReadIndex(index) => index,
                other => return Err(unexpected(other)),
            };
            tracing::Span::current().record("read_index", index);
            self.inner
                .raft
                .wait(Some(self.inner.rpc_timeout * 4))
                .applied_index_at_least(Some(index), "linearizable read")
                .await
                .map_err(|e| {
                    ClusterError::Unavailable(format!("this node did not catch up to the read index {index}: {e}"))
                })?;
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Adds a node as a learner, waits for it to catch up, then makes it a voter.
    pub async fn add_voter(&self, id: NodeId, info: NodeInfo) -> Result<(), ClusterError> {
        self.on_leader(LeaderOp::AddVoter { id, info }).await.map(|_| ())
    }

    /// Removes a node from the membership (voter and learner alike).
    pub async fn remove_node(&self, id: NodeId) -> Result<(), ClusterError> {
        self.on_leader(LeaderOp::RemoveNode { id }).await.map(|_| ())
    }

    /// The leader's view of the cluster.
    pub async fn status(&self) -> Result<ClusterStatus, ClusterError> {
        match self.on_leader(LeaderOp::Status).await? {
            LeaderOutput::Status(status) => Ok(status),
            other => Err(unexpected(other)),
        }
    }

    /// This node's own view, without asking anyone.
    pub fn node_status(&self) -> NodeStatus {
        let m = self.inner.raft.metrics().borrow().clone();
        NodeStatus {
            id: self.inner.id,
            state: server_state(m.state, m.membership_config.membership().voter_ids().any(|v| v == self.inner.id))
                .into(),
            term: m.current_term,
            leader_id: m.current_leader,
            last_log_index: m.last_log_index,
            committed_index: self.inner.log.committed_index(),
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            fsyncs: self.inner.log.flush_count(),
            snapshot_copies: self.inner.snapshot_copies.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Stops Raft. Storage is closed when the last clone is dropped.
    /// Stops Raft, then flushes storage so the applied state on disk is current: a restart
    /// need not re-apply, and tools reading a stopped node's store see what it served.
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown reported an error");
        }
        if let Err(e) = self.inner.log.flush().await {
            tracing::warn!(error = %e, "flushing storage at shutdown failed");
        }
    }

    /// Runs `op` on the leader: here if this node leads, otherwise on the leader over the
    /// transport. Retries with backoff while leadership is unknown or moving.
    async fn on_leader(&self, op: LeaderOp) -> Result<LeaderOutput, ClusterError> {
        let mut last_problem = String::from("no leader known");
        for attempt in 0..self.inner.leader_attempts {
            let (leader, leader_info, member) = {
                let metrics = self.inner.raft.metrics();
                let m = metrics.borrow();
                let membership = m.membership_config.clone();
                let leader = m.current_leader;
                drop(m);
                let leader_info = leader.and_then(|l| membership.membership().get_node(&l).cloned());
                let member = membership.membership().nodes().next().is_some();
                (leader, leader_info, member)
            };
            if !member {
                return Err(ClusterError::NotInitialized);
            }
            let reply = match (leader, leader_info) {
                (Some(leader), _) if leader == self.inner.id => self.execute_as_leader(op.clone()).await,
                (Some(leader), Some(info)) => {
                    let timeout = match &op {
                        // Adding a voter waits for the learner to catch up, which may take a
                        // snapshot transfer; the API's request deadline bounds it instead.
                        LeaderOp::AddVoter { .. } => Duration::from_secs(3600),
                        _ => self.inner.rpc_timeout * 2,
                    };
                    match self
                        .inner
                        .peers
                        .call::<_, Result<LeaderOutput, LeaderFailure>>(&info.raft_addr, path::LEADER_OP, &op, timeout)
                        .await
                    {
                        Ok(reply) => reply,
                        Err(e) => {
                            last_problem = format!("leader {leader}: {e}");
                            if let CallError::Codec { .. } = e {
                                return Err(ClusterError::Unavailable(last_problem));
                            }
                            Err(LeaderFailure::NotLeader)
                        }
                    }
                }
                _ => Err(LeaderFailure::NotLeader),
            };
            match reply {
                Ok(output) => return Ok(output),
                Err(LeaderFailure::Failed(e)) => return Err(e),
                Err(LeaderFailure::NotLeader) => tokio::time::sleep(backoff(attempt)).await,
            }
        }
        Err(ClusterError::NoLeader(last_problem))
    }

    /// Runs `op` on this node, which must be the leader. Called locally and by the transport.
    pub async fn execute_as_leader(&self, op: LeaderOp) -> Result<LeaderOutput, LeaderFailure> {
        let raft = &self.inner.raft;
        match op {
            LeaderOp::Write(proposals) => {
                let stopped = LeaderFailure::Failed(ClusterError::Fatal("the entry batcher has stopped".into()));
                self.inner.entries.submit(proposals.0, stopped).await.map(LeaderOutput::Written)
            }
            LeaderOp::ReadIndex => {
                // The term before the read index (and no metrics guard held across the wait):
                // metrics never run ahead of the core, so a term that ends meanwhile leaves the
                // floor in place, where it is merely not needed.
                let term = raft.metrics().borrow().current_term;
                match raft.get_read_log_id().await {
                    Ok((read_log_id, _)) => {
                        let index = read_log_id.map(|l| l.index).unwrap_or(0);
                        Ok(LeaderOutput::ReadIndex(index.max(RestoredLeadership::floor(self.inner.restored, term))))
                    }
                    Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => Err(LeaderFailure::NotLeader),
                    Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => Err(LeaderFailure::Failed(
                        ClusterError::Unavailable(format!("no quorum confirmed leadership: {q}")),
                    )),
                    Err(RaftError::Fatal(e)) => Err(LeaderFailure::Failed(ClusterError::Fatal(e.to_string()))),
                }
            }
            LeaderOp::AddVoter { id, info } => {
                raft.add_learner(id, info, true).await.map_err(write_failure)?;
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(write_failure)?;
                Ok(LeaderOutput::MembershipChanged)
            }
            LeaderOp::RemoveNode { id } => {
                let is_voter = raft.metrics().borrow().membership_config.membership().voter_ids().any(|v| v == id);
                if is_voter {
                    raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                        .await
                        .map_err(write_failure)?;
                }
                raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                    .await
                    .map_err(write_failure)?;
                Ok(LeaderOutput::MembershipChanged)
            }
            LeaderOp::Status => {
                let m = raft.metrics().borrow().clone();
                if m.current_leader != Some(self.inner.id) {
                    return Err(LeaderFailure::NotLeader);
                }
                let membership = m.membership_config.membership();
                let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
                let last = m.last_log_index.unwrap_or(0);
                let members = membership
                    .nodes()
                    .map(|(id, info)| {
                        let matched_index = if *id == self.inner.id {
                            m.last_log_index
                        } else {
                            m.replication.as_ref().and_then(|r| r.get(id).cloned().flatten()).map(|l| l.index)
                        };
                        MemberStatus {
                            id: *id,
                            raft_addr: info.raft_addr.clone(),
                            api_addr: info.api_addr.clone(),
                            voter: voters.contains(id),
                            matched_index,
                            lag: Some(last.saturating_sub(matched_index.unwrap_or(0))),
                        }
                    })
                    .collect();
                Ok(LeaderOutput::Status(ClusterStatus {
                    leader_id: m.current_leader,
                    term: m.current_term,
                    committed_index: self.inner.log.committed_index(),
                    members,
                }))
            }
        }
    }
}

fn write_failure(e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> LeaderFailure {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => LeaderFailure::NotLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            LeaderFailure::Failed(ClusterError::Membership(e.to_string()))
        }
        RaftError::Fatal(e) => LeaderFailure::Failed(ClusterError::Fatal(e.to_string())),
    }
}

fn unexpected(output: LeaderOutput) -> ClusterError {
    ClusterError::Unavailable(format!("leader answered with an unexpected reply {output:?}"))
}

/// The "check quorum" rule (Raft thesis §6.2), which openraft 0.9 lacks: a leader that has not
/// heard from a quorum for `limit` (twice the longest election timeout) stops leading, so a leader cut off from the majority no
/// longer calls itself leader (status, forwarding) while the majority elects another. Linearizable
/// reads on it already fail before that (they need a quorum). Runs until Raft shuts down.
///
/// It steps down by granting its vote for the next term to another voter, with its own last
/// log id — what a vote request from that voter would do, and accepted once the leader's
/// lease has run out. Voting for a candidate that never asked only spends this node's vote in
/// that term; the node then follows nobody until an election is allowed (see `prevote`). A
/// leader that no quorum of its current membership has acknowledged at all counts as quiet
/// since it began leading with that membership.
async fn check_quorum(raft: Raft<TypeConfig>, id: NodeId, limit: Duration, every: Duration) {
    let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
    let mut ticker = tokio::time::interval(every);
    // The term and membership this node leads with, and since when: a leader no quorum of that
    // membership has acknowledged yet has been quiet since then.
    type Leading = (u64, Option<openraft::LogId<NodeId>>, std::time::Instant);
    let mut leading: Option<Leading> = None;
    loop {
        ticker.tick().await;
        let (state, quiet_ms, term, last_index, other, membership) = {
            let m = raft.metrics().borrow().clone();
            let other = m.membership_config.membership().voter_ids().find(|v| *v != id);
            let membership = *m.membership_config.log_id();
            (m.state, m.millis_since_quorum_ack, m.current_term, m.last_log_index, other, membership)
        };
        let quiet_ms = match state {
            ServerState::Leader => {
                let since = match leading {
                    Some((t, m, since)) if t == term && m == membership => since,
                    _ => leading.insert((term, membership, std::time::Instant::now())).2,
                };
                Some(quiet_ms.unwrap_or_else(|| since.elapsed().as_millis() as u64))
            }
            _ => {
                leading = None;
                quiet_ms
            }
        };
        match state {
            ServerState::Shutdown => return,
            ServerState::Leader if quiet_ms.is_some_and(|ms| ms > limit_ms) => {
                // A one-voter cluster is its own quorum and never gets here.
                let Some(other) = other else { continue };
                tracing::warn!(
                    quiet_ms,
                    term,
                    "no quorum has acknowledged this leader within the election timeout; stepping down"
                );
                // A leader's last entry is of its own term (it appends one when elected).
                let last =
                    last_index.map(|index| openraft::LogId::new(openraft::CommittedLeaderId::new(term, id), index));
                let request = openraft::raft::VoteRequest::new(openraft::Vote::new(term + 1, other), last);
                if let Err(e) = raft.vote(request).await {
                    tracing::warn!(error = %e, "stepping down failed");
                }
            }
            _ => {}
        }
    }
}

fn server_state(state: ServerState, voter: bool) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Candidate => "candidate",
        ServerState::Follower if voter => "follower",
        ServerState::Follower | ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

#[cfg(test)]
mod tests {
    use openraft::{LogId, Vote};

    use super::RestoredLeadership;

    fn log_id(term: u64, index: u64) -> Option<LogId<u64>> {
        Some(LogId::new(openraft::CommittedLeaderId::new(term, 1), index))
    }

    #[test]
    fn only_a_node_whose_committed_vote_is_its_own_starts_as_leader() {
        let restored = RestoredLeadership::at_start(1, Some(&Vote::new_committed(7, 1)), log_id(7, 420));
        assert_eq!(restored, Some(RestoredLeadership { term: 7, last_log_index: 420 }));
        // Another node's leadership, a vote not yet won, no vote at all.
        assert_eq!(RestoredLeadership::at_start(2, Some(&Vote::new_committed(7, 1)), log_id(7, 420)), None);
        assert_eq!(RestoredLeadership::at_start(1, Some(&Vote::new(7, 1)), log_id(7, 420)), None);
        assert_eq!(RestoredLeadership::at_start(1, None, None), None);
    }

    #[test]
    fn reads_wait_for_the_whole_stored_log_while_the_restored_term_lasts() {
        let restored = Some(RestoredLeadership { term: 7, last_log_index: 420 });
        assert_eq!(RestoredLeadership::floor(restored, 7), 420);
        // A later term began with a blank entry of its own, past everything stored before.
        assert_eq!(RestoredLeadership::floor(restored, 8), 0);
        assert_eq!(RestoredLeadership::floor(None, 7), 0);
    }
}

//! Pre-vote (Raft thesis §9.6), which openraft 0.9 lacks: a voter that stops hearing from a
//! leader starts an election only once a majority of voters has stopped hearing from one too.
//!
//! Without it, a voter that only the leader cannot reach for a while — one restarting, one
//! whose catch-up snapshot is still being encoded, one behind a one-way fault — runs out its
//! election timeout and raises its term. Its vote requests are refused (the other voters still
//! hear the leader), but the raised term is not: the next time the leader reaches it, the
//! answer carries the higher term and the working leader steps down. Writes then wait for an
//! election.
//!
//! Here openraft's election timer stays off (`runtime_config().elect(false)`) while this voter
//! hears a leader. Once it has heard none for the shortest election timeout it asks the other
//! voters over `/raft/pre-vote`; each answers with [`live_leader`], judged over the longest
//! election timeout. The timer is switched on only when a majority, this voter included, hears
//! no leader — during a membership change a majority of each configuration, as an election
//! needs. A peer that cannot be reached counts against an election: it could not vote in one
//! either.
//!
//! This does not lengthen failover: after losing its leader, openraft itself waits out the
//! leader's lease (the longest election timeout) plus a random election timeout before it
//! stands, and by then the other voters' contact with the old leader is older than the lease.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{Raft, ServerState};

use crate::network::{path, CallError, PeerClient};
use crate::types::NodeId;
use crate::TypeConfig;

/// When this node last heard from a leader it accepted.
pub(crate) struct Contact {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last contact; `u64::MAX` before the first.
    last_ms: AtomicU64,
}

impl Contact {
    pub(crate) fn new() -> Self {
        Contact { epoch: Instant::now(), last_ms: AtomicU64::new(u64::MAX) }
    }

    /// A leader's append or snapshot chunk was accepted just now.
    pub(crate) fn record(&self) {
        self.last_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub(crate) fn heard_within(&self, window: Duration) -> bool {
        let last = self.last_ms.load(Ordering::Relaxed);
        last != u64::MAX && (self.epoch.elapsed().as_millis() as u64).saturating_sub(last) <= window.as_millis() as u64
    }
}

/// What this node answers a pre-vote: whether it is in touch with a live leader — it leads and
/// a quorum acknowledged it within `lease`, or it accepted a leader's message within `lease`.
pub(crate) fn live_leader(raft: &Raft<TypeConfig>, contact: &Contact, lease: Duration) -> bool {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    match m.state {
        ServerState::Leader => m.millis_since_quorum_ack.is_some_and(|ms| ms <= lease.as_millis() as u64),
        _ => contact.heard_within(lease),
    }
}

/// The timings of the guard, from the Raft configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timings {
    /// How often the guard looks: the heartbeat interval.
    pub tick: Duration,
    /// Silence after which peers are asked: the shortest election timeout. Each answers with
    /// [`live_leader`] over the longest election timeout, within which openraft's followers
    /// refuse votes too.
    pub silence: Duration,
    /// How long a peer may take to answer: half the longest election timeout, at least a tick.
    pub ask: Duration,
}

/// Switches this node's elections on and off by the pre-vote rule until Raft shuts down.
pub(crate) async fn guard(raft: Raft<TypeConfig>, id: NodeId, peers: PeerClient, contact: Arc<Contact>, t: Timings) {
    let mut allowed: Option<bool> = None;
    let mut ticker = tokio::time::interval(t.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (state, voters, configs) = {
            let m = raft.metrics().borrow().clone();
            let membership = m.membership_config.membership();
            let voters: Vec<(NodeId, String)> = membership
                .voter_ids()
                .filter_map(|v| membership.get_node(&v).map(|n| (v, n.raft_addr.clone())))
                .collect();
            (m.state, voters, membership.get_joint_config().clone())
        };
        let allow = match state {
            ServerState::Shutdown => return,
            // A leader runs no election timer; learners never elect.
            ServerState::Leader => continue,
            _ if !voters.iter().any(|(v, _)| *v == id) => continue,
            _ if contact.heard_within(t.silence) => false,
            _ => {
                let without = voters_without_leader(&peers, id, &voters, t.ask).await;
                majority_of_each(&configs, &without)
            }
        };
        if allowed != Some(allow) {
            if allow {
                tracing::info!("no majority of voters hears a leader; elections allowed");
            } else if allowed.is_some() {
                tracing::info!("a leader is live; elections held");
            }
            raft.runtime_config().elect(allow);
            allowed = Some(allow);
        }
    }
}

/// Asks every other voter whether it hears a leader; returns the voters that do not, this one
/// included.
async fn voters_without_leader(
    peers: &PeerClient,
    id: NodeId,
    voters: &[(NodeId, String)],
    timeout: Duration,
) -> BTreeSet<NodeId> {
    let asks = voters.iter().filter(|(v, _)| *v != id).map(|(v, addr)| async move {
        let without_leader = match peers.call::<(), bool>(addr, path::PRE_VOTE, &(), timeout).await {
            Ok(live) => !live,
            // A node of an earlier version has no pre-vote; it would answer a real vote by
            // Raft's own rules, so it does not hold this one back.
            Err(CallError::Status { status: 404, .. }) => true,
            Err(_) => false,
        };
        without_leader.then_some(*v)
    });
    let mut without: BTreeSet<NodeId> = futures::future::join_all(asks).await.into_iter().flatten().collect();
    without.insert(id);
    without
}

/// Whether `without` holds a majority of every configuration: one outside a membership change,
/// the old and the new one during it, as a vote needs.
fn majority_of_each(configs: &[BTreeSet<NodeId>], without: &BTreeSet<NodeId>) -> bool {
    !configs.is_empty() && configs.iter().all(|config| config.intersection(without).count() * 2 > config.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn one_configuration_needs_a_strict_majority() {
        let configs = [set(&[1, 2, 3])];
        assert!(majority_of_each(&configs, &set(&[1, 2])));
        assert!(!majority_of_each(&configs, &set(&[1])));
        let even = [set(&[1, 2, 3, 4])];
        assert!(!majority_of_each(&even, &set(&[1, 2])), "half is not a majority");
        assert!(majority_of_each(&even, &set(&[1, 2, 3])));
    }

    #[test]
    fn a_membership_change_needs_a_majority_of_both_configurations() {
        // Replacing 1 by 4: 2 and 3 are a majority of both, though only half of all four.
        let joint = [set(&[1, 2, 3]), set(&[2, 3, 4])];
        assert!(majority_of_each(&joint, &set(&[2, 3])));
        // A majority of all five voters, but not of the new configuration.
        let grow = [set(&[1, 2, 3]), set(&[3, 4, 5])];
        assert!(!majority_of_each(&grow, &set(&[1, 2, 3])));
        assert!(majority_of_each(&grow, &set(&[2, 3, 4])));
        assert!(!majority_of_each(&[], &set(&[1])), "no configuration, no election");
    }

    #[tokio::test]
    async fn contact_counts_only_within_its_window() {
        let contact = Contact::new();
        assert!(!contact.heard_within(Duration::from_secs(3600)), "never heard");
        contact.record();
        assert!(contact.heard_within(Duration::from_millis(200)));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!contact.heard_within(Duration::from_millis(20)));
        assert!(contact.heard_within(Duration::from_secs(1)));
    }
}

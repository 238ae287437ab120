//! Batching of proposals, used twice on every node.
//!
//! openraft 0.9 appends and flushes each client write on its own before taking the next, so
//! one proposal per entry costs one fsync per write; and a follower forwarding each write on
//! its own costs one RPC per write. So every node batches the writes it receives before
//! forwarding them to the leader, and the leader merges the batches it receives (its own and
//! the followers') into one log entry. A batcher keeps at most `raft.max_batches_in_flight`
//! batches out; while they are out, new requests queue and then leave together (bounded by
//! `raft.max_proposals_per_entry` and `raft.max_entry_bytes`). An idle node still sends a lone
//! proposal at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::command::{Proposal, Response};

/// Requests waiting for a batch before `submit` waits (backpressure toward the API, whose
/// in-flight bound is the real admission control).
const QUEUE_CAPACITY: usize = 8192;

/// Carries one merged batch to where it is applied and returns one response per proposal.
pub(crate) type Executor<E> =
    Arc<dyn Fn(Vec<Proposal>) -> Pin<Box<dyn Future<Output = Result<Vec<Response>, E>> + Send>> + Send + Sync>;

struct Pending<E> {
    proposals: Vec<Proposal>,
    reply: oneshot::Sender<Result<Vec<Response>, E>>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    pub max_proposals: usize,
    pub max_bytes: usize,
    pub max_in_flight: usize,
}

pub(crate) struct Batcher<E> {
    tx: mpsc::Sender<Pending<E>>,
}

impl<E: Clone + Send + 'static> Batcher<E> {
    pub(crate) fn start(executor: Executor<E>, limits: BatchLimits) -> Self {
        assert!(limits.max_proposals > 0 && limits.max_in_flight > 0, "batch limits must be positive");
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run(executor, rx, limits));
        Batcher { tx }
    }

    /// Sends `proposals` in some upcoming batch and returns their own outcomes, in order.
    /// `stopped` is the error returned when the batcher is gone.
    pub(crate) async fn submit(&self, proposals: Vec<Proposal>, stopped: E) -> Result<Vec<Response>, E> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Pending { proposals, reply }).await.is_err() {
            return Err(stopped);
        }
        answer.await.unwrap_or(Err(stopped))
    }
}

fn bytes_of(proposals: &[Proposal]) -> usize {
    proposals.iter().map(Proposal::approx_bytes).sum()
}

async fn run<E: Clone + Send + 'static>(
    executor: Executor<E>,
    mut rx: mpsc::Receiver<Pending<E>>,
    limits: BatchLimits,
) {
    let permits = Arc::new(Semaphore::new(limits.max_in_flight));
    let mut carry: Option<Pending<E>> = None;
    loop {
        // The semaphore is never closed, so acquiring only waits.
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let (mut count, mut bytes) = (first.proposals.len(), bytes_of(&first.proposals));
        let mut batch = vec![first];
        while count < limits.max_proposals {
            let Ok(next) = rx.try_recv() else { break };
            let (n, size) = (next.proposals.len(), bytes_of(&next.proposals));
            if count + n > limits.max_proposals || bytes + size > limits.max_bytes {
                carry = Some(next);
                break;
            }
            count += n;
            bytes += size;
            batch.push(next);
        }
        let executor = executor.clone();
        tokio::spawn(async move {
            let mut proposals = Vec::with_capacity(count);
            let mut replies = Vec::with_capacity(batch.len());
            for pending in batch {
                replies.push((pending.proposals.len(), pending.reply));
                proposals.extend(pending.proposals);
            }
            match executor(proposals).await {
                Ok(responses) => {
                    assert_eq!(responses.len(), count, "one response per proposal");
                    let mut responses = responses.into_iter();
                    for (n, reply) in replies {
                        // A caller that gave up (deadline passed) no longer waits; its write stands.
                        let _ = reply.send(Ok(responses.by_ref().take(n).collect()));
                    }
                }
                Err(e) => {
                    for (_, reply) in replies {
                        // As above: nobody may be waiting any more.
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}

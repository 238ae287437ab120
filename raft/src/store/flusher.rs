//! Group commit for the log store. `append` writes entries to the engine (readable at once)
//! and queues its completion callback here; one background task flushes the engine and then
//! completes every callback queued before that flush started. While a flush runs, later
//! appends queue up and share the next one, so concurrent writes cost far less than one fsync
//! each. Requests are completed strictly in the order they were queued. The flusher runs on a
//! thread of its own.

use std::sync::Arc;

use openraft::storage::LogFlushed;
use tokio::sync::{mpsc, oneshot};

use super::engine::{EngineError, KvEngine};
use crate::TypeConfig;

/// Queued completions before `append` waits for the flusher (backpressure, not a drop).
const QUEUE_CAPACITY: usize = 4096;

enum Request {
    /// Tell openraft these appended entries are durable.
    Append(LogFlushed<TypeConfig>),
    /// Wake a caller that needs everything written so far to be durable.
    Barrier(oneshot::Sender<Result<(), String>>),
}

/// Handle to the flusher task; cheap to clone. The task ends when every handle is dropped.
#[derive(Clone)]
pub(crate) struct GroupFlusher {
    tx: mpsc::Sender<Request>,
}

impl GroupFlusher {
    /// Starts the flusher on a thread of its own: flushing blocks, and a dedicated thread
    /// spares each flush a hand-off through the runtime's blocking pool.
    pub(crate) fn start(engine: Arc<dyn KvEngine>) -> Result<Self, EngineError> {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name("custos-log-flush".into())
            .spawn(move || run(engine, rx))
            .map_err(|e| EngineError(format!("starting the log flusher thread: {e}")))?;
        Ok(GroupFlusher { tx })
    }

    /// Completes `callback` once a flush that started after this call has finished.
    pub(crate) async fn complete_after_flush(&self, callback: LogFlushed<TypeConfig>) -> Result<(), EngineError> {
        self.tx.send(Request::Append(callback)).await.map_err(|_| EngineError("the log flusher has stopped".into()))
    }

    /// Returns once everything written before the call is durable.
    pub(crate) async fn barrier(&self) -> Result<(), EngineError> {
        let (done, wait) = oneshot::channel();
        self.tx.send(Request::Barrier(done)).await.map_err(|_| EngineError("the log flusher has stopped".into()))?;
        match wait.await {
            Ok(result) => result.map_err(EngineError),
            Err(_) => Err(EngineError("the log flusher stopped before flushing".into())),
        }
    }
}

fn run(engine: Arc<dyn KvEngine>, mut rx: mpsc::Receiver<Request>) {
    let mut batch = Vec::new();
    // Ends when every sender (every LogStore clone) is gone.
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < QUEUE_CAPACITY {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        // Every request in `batch` was queued after its writes reached the engine, so one flush
        // started now covers all of them.
        let result = engine.flush().map_err(|e| e.to_string());
        for request in batch.drain(..) {
            match request {
                Request::Append(callback) => callback.log_io_completed(result.clone().map_err(std::io::Error::other)),
                // The waiter may have been cancelled; nobody is left to tell.
                Request::Barrier(done) => drop(done.send(result.clone())),
            }
        }
    }
}

//! Durable storage of the Raft log and the governance state machine. Only this module touches
//! the storage engine, and only `sled_engine.rs` imports sled.

mod access;
mod carried;
pub mod codec;
mod copies;
mod directory;
pub mod engine;
mod flusher;
mod log_store;
pub mod reader;
mod sessions;
mod sled_engine;
mod snapshot_data;
mod state_machine;

use std::path::Path;
use std::sync::Arc;

pub use engine::{EngineError, KvEngine, Space};
pub use log_store::LogStore;
pub use reader::GovernanceReader;
pub use snapshot_data::SnapshotData;
pub use state_machine::{SnapshotBuilder, StateMachineStore};

/// How the node's storage is opened (`[raft]` in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// How many log entries back request ids are remembered.
    pub dedup_window_entries: u64,
    /// The storage engine's page cache.
    pub engine_cache_bytes: u64,
}

impl From<&custos_config::RaftConfig> for StoreOptions {
    fn from(raft: &custos_config::RaftConfig) -> Self {
        StoreOptions { dedup_window_entries: raft.dedup_window_entries, engine_cache_bytes: raft.engine_cache_bytes }
    }
}

/// The configuration's defaults.
impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions::from(&custos_config::RaftConfig::default())
    }
}

/// Opens the node's storage in `dir` (the log store starts its flusher thread) and returns the
/// log store, the state machine and a reader over the same engine.
pub fn open(dir: &Path, options: StoreOptions) -> Result<(LogStore, StateMachineStore, GovernanceReader), EngineError> {
    let engine: Arc<dyn KvEngine> = Arc::new(sled_engine::SledEngine::open(dir, options.engine_cache_bytes)?);
    Ok((
        LogStore::new(engine.clone())?,
        StateMachineStore::new(engine.clone(), options.dedup_window_entries),
        GovernanceReader::new(engine),
    ))
}

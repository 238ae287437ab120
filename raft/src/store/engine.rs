//! The storage trait the Raft stores are written against, so the engine underneath (sled
//! today) can be replaced without touching Raft code.

use std::ops::Bound;

/// The key spaces a node keeps. Each is an independent ordered map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Space {
    /// Raft log entries keyed by big-endian index.
    Log,
    /// Vote, committed and purged markers.
    Meta,
    /// The governance state machine, applied index and membership included.
    State,
    /// The latest snapshot (meta and data).
    Snapshot,
}

impl Space {
    pub const ALL: [Space; 4] = [Space::Log, Space::Meta, Space::State, Space::Snapshot];

    pub fn name(self) -> &'static str {
        match self {
            Space::Log => "log",
            Space::Meta => "meta",
            Space::State => "state",
            Space::Snapshot => "snapshot",
        }
    }
}

/// An engine failure. Always an operating error (disk, corruption), never the caller's fault.
#[derive(Debug, thiserror::Error)]
#[error("storage engine: {0}")]
pub struct EngineError(pub String);

pub type Key = Vec<u8>;
pub type Value = Vec<u8>;

/// Writes applied atomically to one space: after a crash either all or none are visible.
#[derive(Debug, Default)]
pub struct Batch {
    pub(crate) ops: Vec<(Key, Option<Value>)>,
}

impl Batch {
    pub fn put(&mut self, key: impl Into<Key>, value: Value) {
        self.ops.push((key.into(), Some(value)));
    }

    pub fn delete(&mut self, key: impl Into<Key>) {
        self.ops.push((key.into(), None));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// An ordered key-value engine with atomic batches and an explicit durability point.
///
/// Writes are visible to reads as soon as they return but durable only after [`flush`]
/// returns, and the engine recovers to a prefix of the writes made: a write that survived a
/// crash implies every earlier write survived too.
///
/// [`flush`]: KvEngine::flush
pub trait KvEngine: Send + Sync + 'static {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Value>, EngineError>;

    /// Writes the batch atomically.
    fn write(&self, space: Space, batch: Batch) -> Result<(), EngineError>;

    /// Writes each entry in order, without the cost of an atomic batch: after a crash a prefix
    /// of them survives (see above).
    fn put_each(&self, space: Space, entries: Vec<(Key, Value)>) -> Result<(), EngineError>;

    /// Up to `limit` entries in key order within the bounds.
    fn range(
        &self,
        space: Space,
        from: Bound<Key>,
        to: Bound<Key>,
        limit: usize,
    ) -> Result<Vec<(Key, Value)>, EngineError>;

    /// Up to `limit` keys in reverse key order within the bounds.
    fn range_rev_keys(
        &self,
        space: Space,
        from: Bound<Key>,
        to: Bound<Key>,
        limit: usize,
    ) -> Result<Vec<Key>, EngineError>;

    fn last(&self, space: Space) -> Result<Option<(Key, Value)>, EngineError>;

    /// Replaces the whole content of a space atomically.
    fn replace_all(&self, space: Space, entries: Vec<(Key, Value)>) -> Result<(), EngineError>;

    /// Makes every write made so far durable. Blocks: call it off the async runtime.
    fn flush(&self) -> Result<(), EngineError>;

    /// How many flushes reached the disk since the engine was opened.
    fn flush_count(&self) -> u64;
}

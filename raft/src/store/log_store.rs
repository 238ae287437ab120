//! The Raft log, vote and commit markers on a [`KvEngine`].
//!
//! Durability contract (openraft storage v2): `save_vote` returns only after the vote is
//! flushed; `append` makes entries readable at once and reports them flushed through the
//! callback only after an engine flush that started after the write has returned (group
//! commit, see `flusher.rs`). Truncation waits for earlier appends' flushes and is flushed.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, OptionalSend, RaftLogId, RaftLogReader, StorageError, StorageIOError, Vote};

use super::codec::{decode, encode};
use super::engine::{Batch, KvEngine, Space};
use super::flusher::GroupFlusher;
use crate::types::NodeId;
use crate::TypeConfig;

const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const PURGED_KEY: &[u8] = b"last_purged";

/// Largest number of entries read in one call; openraft asks for bounded ranges already, this
/// keeps a malformed range from loading the whole log.
const MAX_ENTRIES_PER_READ: usize = 64 * 1024;

fn index_key(index: u64) -> Vec<u8> {
    index.to_be_bytes().to_vec()
}

fn key_index(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    // Every key in the log space was written by index_key, so it is exactly 8 bytes.
    assert_eq!(key.len(), 8, "log key of unexpected length {}", key.len());
    bytes.copy_from_slice(key);
    u64::from_be_bytes(bytes)
}

/// Log storage shared by the Raft core and its readers.
#[derive(Clone)]
pub struct LogStore {
    engine: Arc<dyn KvEngine>,
    /// Highest committed index this node has recorded; read by cluster status.
    committed_index: Arc<AtomicU64>,
    flusher: GroupFlusher,
}

impl LogStore {
    /// Starts the group-commit flusher thread.
    pub fn new(engine: Arc<dyn KvEngine>) -> Result<Self, super::engine::EngineError> {
        let flusher = GroupFlusher::start(engine.clone())?;
        Ok(LogStore { engine, committed_index: Arc::new(AtomicU64::new(0)), flusher })
    }

    /// The committed index as last recorded by Raft (0 before the first commit).
    pub fn committed_index(&self) -> u64 {
        self.committed_index.load(Ordering::Relaxed)
    }

    /// Flushes to disk since the node started (votes, appends, truncations, snapshots).
    pub fn flush_count(&self) -> u64 {
        self.engine.flush_count()
    }

    /// Returns once every write made so far is durable, after every earlier append.
    pub(crate) async fn flush(&self) -> Result<(), super::engine::EngineError> {
        self.flusher.barrier().await
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageIOError<NodeId>> {
        match self.engine.get(Space::Meta, key).map_err(|e| StorageIOError::read(&e))? {
            Some(bytes) => decode(&bytes).map(Some).map_err(|e| StorageIOError::read(&e)),
            None => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let from = match range.start_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let rows =
            self.engine.range(Space::Log, from, to, MAX_ENTRIES_PER_READ).map_err(|e| StorageIOError::read_logs(&e))?;
        let mut entries = Vec::with_capacity(rows.len());
        for (key, value) in rows {
            let entry: Entry<TypeConfig> =
                decode(&value).map_err(|e| StorageIOError::read_log_at_index(key_index(&key), &e))?;
            // A checksum-valid entry stored under another index means the store is corrupt.
            assert_eq!(entry.get_log_id().index, key_index(&key), "log entry stored under the wrong index");
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.read_meta(PURGED_KEY)?;
        let last = match self.engine.last(Space::Log).map_err(|e| StorageIOError::read_logs(&e))? {
            Some((_, value)) => {
                Some(*decode::<Entry<TypeConfig>>(&value).map_err(|e| StorageIOError::read_logs(&e))?.get_log_id())
            }
            None => None,
        };
        Ok(LogState { last_purged_log_id, last_log_id: last.or(last_purged_log_id) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut batch = Batch::default();
        batch.put(VOTE_KEY, encode(vote).map_err(|e| StorageIOError::write_vote(&e))?);
        self.engine.write(Space::Meta, batch).map_err(|e| StorageIOError::write_vote(&e))?;
        self.flush().await.map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.read_meta(VOTE_KEY)?)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        // Not flushed: a follower re-learns a lost marker from the leader; a node that starts
        // as the leader of its term again bounds its reads by its whole log instead
        // (`RestoredLeadership` in cluster.rs).
        let mut batch = Batch::default();
        batch.put(COMMITTED_KEY, encode(&committed).map_err(|e| StorageIOError::write(&e))?);
        self.engine.write(Space::Meta, batch).map_err(|e| StorageIOError::write(&e))?;
        if let Some(log_id) = committed {
            self.committed_index.fetch_max(log_id.index, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let committed: Option<Option<LogId<NodeId>>> = self.read_meta(COMMITTED_KEY)?;
        let committed = committed.flatten();
        if let Some(log_id) = committed {
            self.committed_index.fetch_max(log_id.index, Ordering::Relaxed);
        }
        Ok(committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            let index = entry.get_log_id().index;
            encoded.push((index_key(index), encode(&entry).map_err(|e| StorageIOError::write_logs(&e))?));
        }
        // Not one atomic batch: entries are acknowledged only after the flush, and a crash
        // before it keeps a prefix of them, which is a valid log.
        self.engine.put_each(Space::Log, encoded).map_err(|e| StorageIOError::write_logs(&e))?;
        // Readable now; durable (and reported so through the callback) after the next group
        // flush. Returning early lets openraft queue more appends behind this flush.
        self.flusher.complete_after_flush(callback).await.map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // Entries at and after log_id conflict with the leader's log. They are removed and the
        // removal flushed, so a crash cannot resurrect them next to newer entries.
        let keys = self
            .engine
            .range_rev_keys(Space::Log, Bound::Included(index_key(log_id.index)), Bound::Unbounded, usize::MAX)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let mut batch = Batch::default();
        for key in keys {
            batch.delete(key);
        }
        self.engine.write(Space::Log, batch).map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush().await.map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // The purged marker is written before the entries go, so a crash between the two writes
        // leaves extra entries (harmless) rather than a hole.
        let mut marker = Batch::default();
        marker.put(PURGED_KEY, encode(&log_id).map_err(|e| StorageIOError::write_logs(&e))?);
        self.engine.write(Space::Meta, marker).map_err(|e| StorageIOError::write_logs(&e))?;
        let keys = self
            .engine
            .range_rev_keys(Space::Log, Bound::Unbounded, Bound::Included(index_key(log_id.index)), usize::MAX)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let mut batch = Batch::default();
        for key in keys {
            batch.delete(key);
        }
        self.engine.write(Space::Log, batch).map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

//! [`KvEngine`] on sled. This is the only file of Custos that imports sled.
//!
//! Atomic batches are not sled's `apply_batch`: each of those seals and writes sled's log
//! buffer twice (before and after its manifest), handing both writes to sled's I/O threads,
//! whose pool wakes every idle thread for each. That was a fifth of the nodes' CPU under a
//! write load. Instead a batch of several operations is made atomic with a redo record, relying
//! on sled recovering a prefix of the writes made (see [`KvEngine`]):
//! 1. the batch's operations are inserted into the `redo` tree, in chunks small enough for
//!    sled's log buffer, each chunk knowing how many there are;
//! 2. the operations are applied one by one;
//! 3. the chunks are removed.
//!
//! A crash before every chunk is durable leaves none of the operations applied (they come
//! after); a crash after leaves the whole record, which opening the engine applies again (the
//! operations are plain puts and removes, so applying them twice is harmless) before anything
//! reads. A lock keeps a batch all-or-nothing for readers too, as sled's own batches are, and
//! keeps every other write from landing between a batch's operations and the removal of its
//! record (a crash could otherwise keep that write and then replay the older batch over it):
//! reads (a long range read step by step, as sled's iterators lock) and single writes share
//! it, a batch and a whole-space replacement hold it alone. A batch that fails midway leaves
//! the engine refusing writes until it is opened again, which completes or drops the record.
//!
//! One limit is sled's, not the record's: a value over about 128 KiB is written to a file of
//! its own that sled does not fsync, so after a power loss it may be missing while later
//! writes survive. Redo chunks stay under it; governance records are far smaller, and a log
//! entry reaches it only with a write batch of large proposals.
//!
//! A node must not go back to a release before this scheme after an unclean stop: that
//! release ignores the `redo` tree, so it would keep a torn batch, and a later upgrade would
//! replay the stale record.

use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::codec::{decode, encode};
use super::engine::{Batch, EngineError, Key, KvEngine, Space, Value};

/// The tree holding the redo record of the batch being written.
const REDO_TREE: &str = "redo";
/// Bytes of operations per redo chunk: well under the largest record sled writes inline in
/// its log (a quarter of its 512 KiB segment); a larger one goes to a file of its own.
const REDO_CHUNK_BYTES: usize = 48 * 1024;

/// Entries read under the lock at a time by a range read: the bound on how long a read holds
/// batches back.
const READ_STEP: usize = 1024;

/// One chunk of a redo record: how many chunks the record has, the space (its index in
/// [`Space::ALL`]) and some of the batch's operations.
type RedoChunk = (u32, u8, Vec<(Key, Option<Value>)>);

/// sled database with one tree per [`Space`].
pub struct SledEngine {
    db: sled::Db,
    trees: [sled::Tree; 4],
    redo: sled::Tree,
    /// Shared by reads and single writes, held alone by a batch and a whole-space replacement.
    gate: RwLock<()>,
    /// A batch failed midway: its record may be left, so writes are refused until reopening.
    broken: AtomicBool,
    flushes: AtomicU64,
}

fn err(e: impl std::fmt::Display) -> EngineError {
    EngineError(e.to_string())
}

fn space_index(space: Space) -> usize {
    // Space::ALL lists every variant, so the position always exists.
    Space::ALL.iter().position(|s| *s == space).expect("every Space is in Space::ALL")
}

/// Splits a batch's operations into redo chunks of about [`REDO_CHUNK_BYTES`] each (an
/// operation larger than that is a chunk of its own).
fn redo_chunks(ops: &[(Key, Option<Value>)]) -> Vec<&[(Key, Option<Value>)]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (key, value)) in ops.iter().enumerate() {
        let size = key.len() + value.as_ref().map_or(0, Vec::len) + 8;
        if bytes > 0 && bytes + size > REDO_CHUNK_BYTES {
            chunks.push(&ops[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < ops.len() {
        chunks.push(&ops[start..]);
    }
    chunks
}

impl SledEngine {
    /// Opens (or creates) the database in `dir`, caching up to `cache_bytes` of pages, and
    /// completes a batch a crash interrupted.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self, EngineError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // Durability comes from explicit flushes; the background flush only bounds how much
            // unflushed state-machine work a crash can lose (it is replayed from the log).
            .flush_every_ms(Some(1000))
            .open()
            .map_err(err)?;
        let open = |name: &str| db.open_tree(name).map_err(err);
        let trees = [
            open(Space::ALL[0].name())?,
            open(Space::ALL[1].name())?,
            open(Space::ALL[2].name())?,
            open(Space::ALL[3].name())?,
        ];
        let redo = open(REDO_TREE)?;
        let engine = SledEngine {
            db,
            trees,
            redo,
            gate: RwLock::new(()),
            broken: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
        };
        engine.finish_interrupted_batch()?;
        Ok(engine)
    }

    fn tree(&self, space: Space) -> &sled::Tree {
        &self.trees[space_index(space)]
    }

    fn read_gate(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_gate(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|p| p.into_inner())
    }

    fn check_whole(&self) -> Result<(), EngineError> {
        if self.broken.load(Ordering::Acquire) {
            return Err(EngineError("a batch failed midway; the engine takes writes again once reopened".into()));
        }
        Ok(())
    }

    /// Reads up to `limit` items in steps of at most [`READ_STEP`], the lock taken for each, so
    /// a long read does not hold batches back. `step(n, last)` reads up to `n` items following
    /// `last`, the final item of the step before (`None` for the first).
    fn read_in_steps<T>(
        &self,
        limit: usize,
        mut step: impl FnMut(usize, Option<&T>) -> Result<Vec<T>, EngineError>,
    ) -> Result<Vec<T>, EngineError> {
        let mut out: Vec<T> = Vec::new();
        while out.len() < limit {
            let wanted = (limit - out.len()).min(READ_STEP);
            let part = {
                let _gate = self.read_gate();
                step(wanted, out.last())?
            };
            let done = part.len() < wanted;
            out.extend(part);
            if done {
                break;
            }
        }
        Ok(out)
    }

    fn apply_ops(tree: &sled::Tree, ops: Vec<(Key, Option<Value>)>) -> Result<(), EngineError> {
        for (key, value) in ops {
            match value {
                Some(value) => tree.insert(key, value).map(drop).map_err(err)?,
                None => tree.remove(key).map(drop).map_err(err)?,
            }
        }
        Ok(())
    }

    /// Applies the redo record left by a crash if all of it is there, and removes it.
    fn finish_interrupted_batch(&self) -> Result<(), EngineError> {
        let mut chunks = Vec::new();
        for item in self.redo.iter() {
            let (_, value) = item.map_err(err)?;
            let chunk: RedoChunk = decode(&value).map_err(|e| EngineError(format!("redo record: {e}")))?;
            chunks.push(chunk);
        }
        let total = chunks.first().map(|c| c.0 as usize);
        if total == Some(chunks.len()) {
            for (_, space, ops) in chunks {
                let tree =
                    self.trees.get(space as usize).ok_or_else(|| EngineError(format!("redo record: space {space}")))?;
                Self::apply_ops(tree, ops)?;
            }
        }
        // An incomplete record: the crash came before any of its operations was written.
        self.redo.clear().map_err(err)?;
        Ok(())
    }
}

impl KvEngine for SledEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Value>, EngineError> {
        let _gate = self.read_gate();
        Ok(self.tree(space).get(key).map_err(err)?.map(|v| v.to_vec()))
    }

    fn write(&self, space: Space, batch: Batch) -> Result<(), EngineError> {
        let tree = self.tree(space);
        // A one-key write is atomic on its own.
        if batch.ops.len() <= 1 {
            let _gate = self.read_gate();
            self.check_whole()?;
            return Self::apply_ops(tree, batch.ops);
        }
        let space_byte = space_index(space) as u8;
        let chunks = redo_chunks(&batch.ops);
        let records = chunks
            .iter()
            .map(|ops| {
                encode(&(chunks.len() as u32, space_byte, ops)).map_err(|e| EngineError(format!("redo record: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let count = records.len() as u32;
        let _gate = self.write_gate();
        self.check_whole()?;
        // Cleared only once the whole sequence has succeeded: an error or a panic leaves it set.
        self.broken.store(true, Ordering::Release);
        for (i, record) in (0..count).zip(records) {
            self.redo.insert(i.to_be_bytes(), record).map_err(err)?;
        }
        Self::apply_ops(tree, batch.ops)?;
        for i in 0..count {
            self.redo.remove(i.to_be_bytes()).map_err(err)?;
        }
        self.broken.store(false, Ordering::Release);
        Ok(())
    }

    fn put_each(&self, space: Space, entries: Vec<(Key, Value)>) -> Result<(), EngineError> {
        let _gate = self.read_gate();
        self.check_whole()?;
        let tree = self.tree(space);
        for (key, value) in entries {
            tree.insert(key, value).map_err(err)?;
        }
        Ok(())
    }

    fn range(
        &self,
        space: Space,
        from: Bound<Key>,
        to: Bound<Key>,
        limit: usize,
    ) -> Result<Vec<(Key, Value)>, EngineError> {
        let tree = self.tree(space);
        self.read_in_steps(limit, |step, after: Option<&(Key, Value)>| {
            let from = after.map_or_else(|| from.clone(), |(key, _)| Bound::Excluded(key.clone()));
            tree.range::<Key, _>((from, to.clone()))
                .take(step)
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(err))
                .collect()
        })
    }

    fn range_rev_keys(
        &self,
        space: Space,
        from: Bound<Key>,
        to: Bound<Key>,
        limit: usize,
    ) -> Result<Vec<Key>, EngineError> {
        let tree = self.tree(space);
        self.read_in_steps(limit, |step, after: Option<&Key>| {
            let to = after.map_or_else(|| to.clone(), |key| Bound::Excluded(key.clone()));
            tree.range::<Key, _>((from.clone(), to))
                .rev()
                .take(step)
                .map(|r| r.map(|(k, _)| k.to_vec()).map_err(err))
                .collect()
        })
    }

    fn last(&self, space: Space) -> Result<Option<(Key, Value)>, EngineError> {
        let _gate = self.read_gate();
        Ok(self.tree(space).last().map_err(err)?.map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn replace_all(&self, space: Space, entries: Vec<(Key, Value)>) -> Result<(), EngineError> {
        let _gate = self.write_gate();
        self.check_whole()?;
        let tree = self.tree(space);
        let mut b = sled::Batch::default();
        for key in tree.iter().keys() {
            b.remove(key.map_err(err)?);
        }
        for (key, value) in entries {
            b.insert(key, value);
        }
        tree.apply_batch(b).map_err(err)
    }

    fn flush(&self) -> Result<(), EngineError> {
        self.db.flush().map_err(err)?;
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(dir: &Path) -> SledEngine {
        SledEngine::open(dir, 16 << 20).unwrap()
    }

    fn batch(ops: &[(&str, Option<&str>)]) -> Batch {
        let mut batch = Batch::default();
        for (key, value) in ops {
            match value {
                Some(value) => batch.put(key.as_bytes().to_vec(), value.as_bytes().to_vec()),
                None => batch.delete(key.as_bytes().to_vec()),
            }
        }
        batch
    }

    fn value(engine: &SledEngine, key: &str) -> Option<String> {
        engine.get(Space::State, key.as_bytes()).unwrap().map(|v| String::from_utf8(v).unwrap())
    }

    /// Leaves in the redo tree the first `present` chunks of a record of `ops` split in
    /// `chunks`, and applies the first `applied` operations: a crash's leftovers.
    fn leave_crashed_batch(dir: &Path, ops: &[(&str, Option<&str>)], chunks: usize, present: usize, applied: usize) {
        let engine = engine(dir);
        let ops = batch(ops).ops;
        let per = ops.len().div_ceil(chunks);
        for (i, part) in ops.chunks(per).enumerate().take(present) {
            let record = encode(&(chunks as u32, space_index(Space::State) as u8, part)).unwrap();
            engine.redo.insert((i as u32).to_be_bytes(), record).unwrap();
        }
        SledEngine::apply_ops(engine.tree(Space::State), ops[..applied].to_vec()).unwrap();
        engine.flush().unwrap();
    }

    #[test]
    fn a_batch_is_applied_whole_and_leaves_no_redo_record() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        e.write(Space::State, batch(&[("a", Some("1")), ("b", Some("2"))])).unwrap();
        e.write(Space::State, batch(&[("a", None), ("c", Some("3"))])).unwrap();
        assert_eq!((value(&e, "a"), value(&e, "b"), value(&e, "c")), (None, Some("2".into()), Some("3".into())));
        assert!(e.redo.is_empty());
    }

    #[test]
    fn a_batch_larger_than_a_chunk_is_split_and_applied_whole() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        let big = "x".repeat(1000);
        let mut b = Batch::default();
        for i in 0..200 {
            b.put(format!("k{i:03}").into_bytes(), big.clone().into_bytes());
        }
        assert!(redo_chunks(&b.ops).len() > 1, "the batch spans several chunks");
        e.write(Space::State, b).unwrap();
        assert_eq!(e.range(Space::State, Bound::Unbounded, Bound::Unbounded, 1000).unwrap().len(), 200);
        assert!(e.redo.is_empty());
    }

    #[test]
    fn a_batch_cut_short_after_its_redo_record_is_completed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let ops = [("a", Some("new")), ("b", None), ("c", Some("3")), ("d", Some("4"))];
        {
            let e = engine(dir.path());
            e.write(Space::State, batch(&[("a", Some("old")), ("b", Some("2"))])).unwrap();
        }
        leave_crashed_batch(dir.path(), &ops, 2, 2, 1);
        let e = engine(dir.path());
        assert_eq!(value(&e, "a").as_deref(), Some("new"));
        assert_eq!(value(&e, "b"), None);
        assert_eq!(value(&e, "c").as_deref(), Some("3"));
        assert_eq!(value(&e, "d").as_deref(), Some("4"));
        assert!(e.redo.is_empty());
    }

    #[test]
    fn an_incomplete_redo_record_is_dropped_and_nothing_of_its_batch_applied() {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = engine(dir.path());
            e.write(Space::State, batch(&[("a", Some("old")), ("b", Some("2"))])).unwrap();
        }
        // The crash came while the record's second chunk was being written.
        leave_crashed_batch(dir.path(), &[("a", Some("new")), ("b", None), ("c", Some("3"))], 2, 1, 0);
        let e = engine(dir.path());
        assert_eq!((value(&e, "a"), value(&e, "b"), value(&e, "c")), (Some("old".into()), Some("2".into()), None));
        assert!(e.redo.is_empty());
    }

    #[test]
    fn after_a_batch_failed_midway_writes_are_refused_until_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        e.broken.store(true, Ordering::Release);
        for result in [
            e.write(Space::State, batch(&[("a", Some("1"))])),
            e.write(Space::State, batch(&[("a", Some("1")), ("b", Some("2"))])),
            e.put_each(Space::Log, vec![(b"k".to_vec(), b"v".to_vec())]),
            e.replace_all(Space::State, Vec::new()),
        ] {
            assert!(result.unwrap_err().0.contains("failed midway"));
        }
        assert_eq!(value(&e, "a"), None, "reads go on");
        drop(e);
        let e = engine(dir.path());
        e.write(Space::State, batch(&[("a", Some("1")), ("b", Some("2"))])).unwrap();
        assert_eq!(value(&e, "b").as_deref(), Some("2"));
    }

    #[test]
    fn range_reads_longer_than_a_step_return_every_key_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        let keys: Vec<Key> = (0..2 * READ_STEP as u32 + 10).map(|i| i.to_be_bytes().to_vec()).collect();
        e.put_each(Space::Log, keys.iter().map(|k| (k.clone(), b"v".to_vec())).collect()).unwrap();
        let all = e.range(Space::Log, Bound::Unbounded, Bound::Unbounded, usize::MAX).unwrap();
        assert_eq!(all.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), keys);
        let some = e.range(Space::Log, Bound::Excluded(keys[5].clone()), Bound::Unbounded, READ_STEP + 3).unwrap();
        assert_eq!(some.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), keys[6..READ_STEP + 9].to_vec());
        let rev =
            e.range_rev_keys(Space::Log, Bound::Unbounded, Bound::Excluded(keys[2000].clone()), usize::MAX).unwrap();
        assert_eq!(rev, keys[..2000].iter().rev().cloned().collect::<Vec<_>>());
        let rev_some = e.range_rev_keys(Space::Log, Bound::Included(keys[10].clone()), Bound::Unbounded, 1500).unwrap();
        assert_eq!(rev_some, keys.iter().rev().take(1500).cloned().collect::<Vec<_>>());
    }

    #[test]
    fn chunks_hold_about_the_chunk_size_and_every_operation_once() {
        let ops: Vec<(Key, Option<Value>)> =
            (0..100u32).map(|i| (i.to_be_bytes().to_vec(), Some(vec![0u8; 2000]))).collect();
        let chunks = redo_chunks(&ops);
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), 100);
        assert!(chunks.iter().all(|c| c.len() * 2012 <= REDO_CHUNK_BYTES));
        let huge = vec![(b"k".to_vec(), Some(vec![0u8; 3 * REDO_CHUNK_BYTES])), (b"l".to_vec(), None)];
        assert_eq!(redo_chunks(&huge).iter().map(|c| c.len()).collect::<Vec<_>>(), vec![1, 1]);
    }
}

//! [`KvEngine`] on sled. This is the only file of Custos that imports sled.

use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::engine::{Batch, EngineError, Key, KvEngine, Space, Value};

/// sled database with one tree per [`Space`].
pub struct SledEngine {
    db: sled::Db,
    trees: [sled::Tree; 4],
    flushes: AtomicU64,
}

fn err(e: impl std::fmt::Display) -> EngineError {
    EngineError(e.to_string())
}

impl SledEngine {
    /// Opens (or creates) the database in `dir`, caching up to `cache_bytes` of pages.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self, EngineError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // Durability comes from explicit flushes; the background flush only bounds how much
            // unflushed state-machine work a crash can lose (it is replayed from the log).
            .flush_every_ms(Some(1000))
            .open()
            .map_err(err)?;
        let open = |s: Space| db.open_tree(s.name()).map_err(err);
        let trees = [open(Space::ALL[0])?, open(Space::ALL[1])?, open(Space::ALL[2])?, open(Space::ALL[3])?];
        Ok(SledEngine { db, trees, flushes: AtomicU64::new(0) })
    }

    fn tree(&self, space: Space) -> &sled::Tree {
        let index = Space::ALL.iter().position(|s| *s == space);
        // Space::ALL lists every variant, so the position always exists.
        &self.trees[index.expect("every Space is in Space::ALL")]
    }
}

impl KvEngine for SledEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Value>, EngineError> {
        Ok(self.tree(space).get(key).map_err(err)?.map(|v| v.to_vec()))
    }

    fn write(&self, space: Space, mut batch: Batch) -> Result<(), EngineError> {
        // A one-key write is atomic on its own. sled's batches are not free: each seals and
        // writes its log buffer twice (before and after its manifest), a write and a
        // `sync_file_range` each, handed to sled's I/O threads.
        if batch.ops.len() == 1 {
            let tree = self.tree(space);
            let (key, value) = batch.ops.pop().expect("one operation");
            return match value {
                Some(value) => tree.insert(key, value).map(drop).map_err(err),
                None => tree.remove(key).map(drop).map_err(err),
            };
        }
        let mut b = sled::Batch::default();
        for (key, value) in batch.ops {
            match value {
                Some(value) => b.insert(key, value),
                None => b.remove(key),
            }
        }
        self.tree(space).apply_batch(b).map_err(err)
    }

    fn put_each(&self, space: Space, entries: Vec<(Key, Value)>) -> Result<(), EngineError> {
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
        self.tree(space)
            .range::<Key, _>((from, to))
            .take(limit)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(err))
            .collect()
    }

    fn range_rev_keys(
        &self,
        space: Space,
        from: Bound<Key>,
        to: Bound<Key>,
        limit: usize,
    ) -> Result<Vec<Key>, EngineError> {
        self.tree(space)
            .range::<Key, _>((from, to))
            .rev()
            .take(limit)
            .map(|r| r.map(|(k, _)| k.to_vec()).map_err(err))
            .collect()
    }

    fn last(&self, space: Space) -> Result<Option<(Key, Value)>, EngineError> {
        Ok(self.tree(space).last().map_err(err)?.map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn replace_all(&self, space: Space, entries: Vec<(Key, Value)>) -> Result<(), EngineError> {
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

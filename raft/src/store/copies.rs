//! Consistent copies of the state space, read while applies go on.
//!
//! The engine has no point-in-time views, so a copy works like copy-on-write: while a copy is
//! open, every write to the state space first saves, for that copy, the value each of its keys
//! had when the copy began (once per key). Reading the copy takes a saved value in preference
//! to the live one and adds the saved keys it did not meet, so the result is the state at the
//! moment the copy began, however long the reading takes and whatever is written meanwhile.
//!
//! Every write to [`Space::State`] must go through [`Copies::write`] or
//! [`Copies::replace_all`]; `state_machine.rs` is their only caller.
//!
//! Layout: [`Copies`] (the open copies and the write path), [`Copy`] (one open copy, read
//! once).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use super::engine::{Batch, EngineError, Key, KvEngine, Space, Value};

/// Keys read from the engine per step of a copy: the bound on what one step holds besides
/// the copy itself, and on how long one step keeps writers waiting.
const KEYS_PER_STEP: usize = 1024;

/// Capture-time values of the keys written since a copy began (`None`: absent then).
type Saved = BTreeMap<Key, Option<Value>>;

#[derive(Default)]
struct Open {
    next_id: u64,
    copies: BTreeMap<u64, Saved>,
}

/// The copies open on one engine's state space.
#[derive(Default)]
pub(super) struct Copies {
    open: Mutex<Open>,
}

impl Copies {
    fn lock(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Begins a copy of the state as it is now. Call it where no write is under way (the
    /// state machine worker, between applies).
    pub(super) fn begin(self: &Arc<Self>) -> Copy {
        let mut open = self.lock();
        let id = open.next_id;
        open.next_id += 1;
        open.copies.insert(id, Saved::new());
        Copy { copies: self.clone(), id, done: false }
    }

    /// Writes `batch` to the state space atomically, first saving for each open copy the
    /// values it replaces.
    pub(super) fn write(&self, engine: &dyn KvEngine, batch: Batch) -> Result<(), EngineError> {
        let mut open = self.lock();
        if !open.copies.is_empty() {
            for (key, _) in &batch.ops {
                if open.copies.values().all(|saved| saved.contains_key(key)) {
                    continue;
                }
                let before = engine.get(Space::State, key)?;
                for saved in open.copies.values_mut() {
                    saved.entry(key.clone()).or_insert_with(|| before.clone());
                }
            }
        }
        // Under the lock: a reader that meets the new value finds the saved one too.
        engine.write(Space::State, batch)
    }

    /// Replaces the whole state space atomically, first saving for each open copy every value
    /// it had not saved yet (installing a snapshot while a copy is open is rare: the copies
    /// are for followers, the snapshots come from a leader).
    pub(super) fn replace_all(&self, engine: &dyn KvEngine, entries: Vec<(Key, Value)>) -> Result<(), EngineError> {
        let mut open = self.lock();
        if !open.copies.is_empty() {
            let before = engine.range(Space::State, Bound::Unbounded, Bound::Unbounded, usize::MAX)?;
            for saved in open.copies.values_mut() {
                for (key, value) in &before {
                    saved.entry(key.clone()).or_insert_with(|| Some(value.clone()));
                }
                for (key, _) in &entries {
                    saved.entry(key.clone()).or_insert(None);
                }
            }
        }
        engine.replace_all(Space::State, entries)
    }
}

/// One open copy. Dropping it unread closes it.
pub(super) struct Copy {
    copies: Arc<Copies>,
    id: u64,
    done: bool,
}

impl Copy {
    /// Every key and value of the state when the copy began, in key order. Blocks: call it
    /// off the async runtime.
    pub(super) fn read(self, engine: &dyn KvEngine) -> Result<Vec<(Key, Value)>, EngineError> {
        self.read_in_steps(engine, KEYS_PER_STEP)
    }

    fn read_in_steps(mut self, engine: &dyn KvEngine, keys_per_step: usize) -> Result<Vec<(Key, Value)>, EngineError> {
        let mut entries = Vec::new();
        let mut from = Bound::Unbounded;
        loop {
            let step = engine.range(Space::State, from, Bound::Unbounded, keys_per_step)?;
            let full = step.len() == keys_per_step;
            from = match step.last() {
                Some((key, _)) => Bound::Excluded(key.clone()),
                None => break,
            };
            // After the read: a value written since the copy began was saved before it was
            // written, so checking now catches it.
            let open = self.copies.lock();
            let saved = open.copies.get(&self.id).expect("an unread copy stays open");
            entries.extend(step.into_iter().filter(|(key, _)| !saved.contains_key(key)));
            drop(open);
            if !full {
                break;
            }
        }
        let saved = self.copies.lock().copies.remove(&self.id).expect("an unread copy stays open");
        self.done = true;
        entries.extend(saved.into_iter().filter_map(|(key, value)| value.map(|value| (key, value))));
        // Two sorted runs: the stable sort merges them in linear time. A key read unchanged
        // and written after its step was checked is in both, with the same value.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|a, b| a.0 == b.0);
        Ok(entries)
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        if !self.done {
            self.copies.lock().copies.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sled_engine::SledEngine;

    fn engine() -> (tempfile::TempDir, Arc<dyn KvEngine>) {
        let dir = tempfile::tempdir().unwrap();
        let engine: Arc<dyn KvEngine> = Arc::new(SledEngine::open(dir.path(), 64 << 20).unwrap());
        (dir, engine)
    }

    fn key(i: u32) -> Key {
        format!("k{i:06}").into_bytes()
    }

    fn put(copies: &Copies, engine: &dyn KvEngine, key: Key, value: &str) {
        let mut batch = Batch::default();
        batch.put(key, value.as_bytes().to_vec());
        copies.write(engine, batch).unwrap();
    }

    fn all(engine: &dyn KvEngine) -> Vec<(Key, Value)> {
        engine.range(Space::State, Bound::Unbounded, Bound::Unbounded, usize::MAX).unwrap()
    }

    #[test]
    fn a_copy_is_the_state_when_it_began_whatever_is_written_while_it_is_read() {
        let (_dir, engine) = engine();
        let copies = Arc::new(Copies::default());
        for i in 0..3000 {
            put(&copies, engine.as_ref(), key(i * 2), "before");
        }
        let expected = all(engine.as_ref());
        let copy = copies.begin();

        // A writer changes, deletes and adds keys all over the space while the copy is read a
        // few keys at a time.
        let writer = {
            let (copies, engine) = (copies.clone(), engine.clone());
            std::thread::spawn(move || {
                // From the last key down: the reader, going up, meets keys already changed.
                for round in 0..3 {
                    for i in (0..6000).step_by(7).rev() {
                        let mut batch = Batch::default();
                        match (i + round) % 3 {
                            0 => batch.put(key(i), b"after".to_vec()),
                            1 => batch.delete(key(i)),
                            _ => batch.put(key(i + 1), b"new".to_vec()),
                        }
                        copies.write(engine.as_ref(), batch).unwrap();
                    }
                }
            })
        };
        let copied = copy.read_in_steps(engine.as_ref(), 3).unwrap();
        writer.join().unwrap();

        assert_eq!(copied, expected);
        assert_ne!(all(engine.as_ref()), expected, "the writer changed the live state");
        assert!(copies.lock().copies.is_empty(), "a read copy is closed");
    }

    #[test]
    fn writes_after_a_copy_began_are_not_in_it_and_a_dropped_copy_saves_nothing_more() {
        let (_dir, engine) = engine();
        let copies = Arc::new(Copies::default());
        put(&copies, engine.as_ref(), key(1), "one");
        put(&copies, engine.as_ref(), key(2), "two");
        let copy = copies.begin();
        let unread = copies.begin();
        put(&copies, engine.as_ref(), key(1), "changed");
        put(&copies, engine.as_ref(), key(3), "added");
        let mut deleted = Batch::default();
        deleted.delete(key(2));
        copies.write(engine.as_ref(), deleted).unwrap();
        copies.replace_all(engine.as_ref(), vec![(key(4), b"installed".to_vec())]).unwrap();
        drop(unread);

        let copied = copy.read(engine.as_ref()).unwrap();
        assert_eq!(copied, vec![(key(1), b"one".to_vec()), (key(2), b"two".to_vec())]);
        assert_eq!(all(engine.as_ref()), vec![(key(4), b"installed".to_vec())]);
        assert!(copies.lock().copies.is_empty());
    }
}

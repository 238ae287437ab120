//! `memory`: key material in one fixed slab allocated at start, locked in RAM where the OS
//! allows (`mlock`), overwritten with zeros on eviction, expiry and drop.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use custos_raft::TenantId;
use zeroize::Zeroize;

use super::{EdgeStats, EdgeStorageProvider, Slot};
use crate::custody::crypto::{SecretKey, KEY_BYTES};

struct Entry {
    index: usize,
    expires_at: Instant,
}

struct Inner {
    tenants: HashMap<TenantId, HashMap<Slot, Entry>>,
    slab: Box<[[u8; KEY_BYTES]]>,
    free: Vec<usize>,
}

impl Inner {
    fn release(&mut self, entry: Entry) {
        self.slab[entry.index].zeroize();
        self.free.push(entry.index);
    }

    /// Frees the entry closest to expiry, to make room.
    fn evict_soonest(&mut self) {
        let soonest = self
            .tenants
            .iter()
            .flat_map(|(t, slots)| slots.iter().map(move |(s, e)| (e.expires_at, t, s)))
            .min_by_key(|(at, _, _)| *at)
            .map(|(_, t, s)| (t.clone(), s.clone()));
        if let Some((tenant, slot)) = soonest {
            self.remove(&tenant, &slot);
        }
    }

    fn remove(&mut self, tenant: &TenantId, slot: &Slot) {
        let Some(slots) = self.tenants.get_mut(tenant) else { return };
        let entry = slots.remove(slot);
        if slots.is_empty() {
            self.tenants.remove(tenant);
        }
        if let Some(entry) = entry {
            self.release(entry);
        }
    }
}

pub struct MemoryEdge {
    inner: Mutex<Inner>,
    ttl: Duration,
    capacity: usize,
    locked: bool,
}

impl MemoryEdge {
    /// A cache of at most `capacity` keys, each kept for `ttl` after it was cached.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        assert!(capacity > 0, "an edge cache needs room for one key");
        let slab = vec![[0u8; KEY_BYTES]; capacity].into_boxed_slice();
        let locked = lock_memory(&slab);
        if !locked {
            tracing::warn!(capacity, "could not lock the key cache in memory; keys may be swapped to disk");
        }
        let free = (0..capacity).rev().collect();
        MemoryEdge { inner: Mutex::new(Inner { tenants: HashMap::new(), slab, free }), ttl, capacity, locked }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the slab half-written in a way that
        // matters: entries are written whole before they are indexed.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn lock_memory(slab: &[[u8; KEY_BYTES]]) -> bool {
    let len = std::mem::size_of_val(slab);
    let Some(ptr) = std::ptr::NonNull::new(slab.as_ptr() as *mut std::ffi::c_void) else { return false };
    // SAFETY: the range is one live allocation owned by the cache, which outlives the lock;
    // the kernel unlocks it when the memory is freed or the process exits.
    unsafe { nix::sys::mman::mlock(ptr, len).is_ok() }
}

impl EdgeStorageProvider for MemoryEdge {
    fn get(&self, tenant: &TenantId, slot: &Slot) -> Option<SecretKey> {
        let mut inner = self.lock();
        let entry = inner.tenants.get(tenant)?.get(slot)?;
        if entry.expires_at <= Instant::now() {
            inner.remove(tenant, slot);
            return None;
        }
        let mut copy = inner.slab[entry.index];
        SecretKey::from_slice(&mut copy)
    }

    fn put(&self, tenant: &TenantId, slot: Slot, key: &SecretKey) {
        let mut inner = self.lock();
        inner.remove(tenant, &slot);
        if inner.free.is_empty() {
            inner.evict_soonest();
        }
        let index = inner.free.pop().expect("a slot was freed above");
        inner.slab[index].copy_from_slice(key.expose());
        let entry = Entry { index, expires_at: Instant::now() + self.ttl };
        inner.tenants.entry(tenant.clone()).or_default().insert(slot, entry);
    }

    fn evict_tenant(&self, tenant: &TenantId) {
        let mut inner = self.lock();
        if let Some(slots) = inner.tenants.remove(tenant) {
            for entry in slots.into_values() {
                inner.release(entry);
            }
        }
    }

    fn evict_expired(&self) -> usize {
        let mut inner = self.lock();
        let now = Instant::now();
        let expired: Vec<(TenantId, Slot)> = inner
            .tenants
            .iter()
            .flat_map(|(t, slots)| {
                slots.iter().filter(|(_, e)| e.expires_at <= now).map(move |(s, _)| (t.clone(), s.clone()))
            })
            .collect();
        for (tenant, slot) in &expired {
            inner.remove(tenant, slot);
        }
        expired.len()
    }

    fn stats(&self) -> EdgeStats {
        let inner = self.lock();
        EdgeStats {
            provider: "memory",
            entries: self.capacity - inner.free.len(),
            capacity: self.capacity,
            locked: self.locked,
        }
    }
}

impl Drop for MemoryEdge {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.slab.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use custos_raft::KeyId;

    use super::*;

    fn tenant(id: &str) -> TenantId {
        TenantId::new(id).unwrap()
    }

    #[test]
    fn tenants_are_separate_and_evicted_whole() {
        let edge = MemoryEdge::new(8, Duration::from_secs(60));
        let (a, b) = (SecretKey::generate(), SecretKey::generate());
        edge.put(&tenant("t1"), Slot::Kek, &a);
        edge.put(&tenant("t2"), Slot::Kek, &b);
        edge.put(&tenant("t1"), Slot::Version(KeyId::new("k").unwrap(), 1), &b);
        assert_eq!(edge.get(&tenant("t1"), &Slot::Kek).unwrap().expose(), a.expose());
        assert_eq!(edge.get(&tenant("t2"), &Slot::Kek).unwrap().expose(), b.expose());
        edge.evict_tenant(&tenant("t1"));
        assert!(edge.get(&tenant("t1"), &Slot::Kek).is_none());
        assert!(edge.get(&tenant("t2"), &Slot::Kek).is_some());
        assert_eq!(edge.stats().entries, 1);
    }

    #[test]
    fn entries_expire_and_expired_slots_are_zeroed() {
        let edge = MemoryEdge::new(2, Duration::from_millis(1));
        let key = SecretKey::generate();
        edge.put(&tenant("t"), Slot::Kek, &key);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(edge.evict_expired(), 1);
        assert!(edge.get(&tenant("t"), &Slot::Kek).is_none());
        let inner = edge.lock();
        assert!(inner.slab.iter().all(|slot| slot.iter().all(|b| *b == 0)), "no key bytes remain");
    }

    #[test]
    fn a_full_cache_drops_the_entry_closest_to_expiry() {
        let edge = MemoryEdge::new(2, Duration::from_secs(60));
        let k = |v| Slot::Version(KeyId::new("k").unwrap(), v);
        edge.put(&tenant("t"), k(1), &SecretKey::generate());
        edge.put(&tenant("t"), k(2), &SecretKey::generate());
        edge.put(&tenant("t"), k(3), &SecretKey::generate());
        assert!(edge.get(&tenant("t"), &k(1)).is_none());
        assert!(edge.get(&tenant("t"), &k(3)).is_some());
        assert_eq!(edge.stats().entries, 2);
    }
}

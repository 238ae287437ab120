//! Edge storage providers (ADR-103): where working keys are cached on a node — `memory`
//! (plaintext in locked memory, gone with the process) or `encrypted-fs` (wrapped files in
//! per-tenant directories, surviving a restart).

mod encrypted_fs;
mod memory;

use custos_raft::{KeyId, TenantId};
use serde::Serialize;

pub use encrypted_fs::{EdgeError, EncryptedFsEdge};
pub use memory::MemoryEdge;

use super::crypto::SecretKey;

/// What a cached key is, within its tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Slot {
    /// The tenant's L2 KEK.
    Kek,
    /// One version of an L3 key.
    Version(KeyId, u32),
}

#[derive(Debug, Clone, Serialize)]
pub struct EdgeStats {
    pub provider: &'static str,
    pub entries: usize,
    pub capacity: usize,
    /// Whether the cache memory is locked against swapping.
    pub locked: bool,
}

/// A per-tenant cache of unwrapped key material with a time-to-live and a size bound. Entries
/// of different tenants live in separate maps; a tenant's entries go at once on eviction.
pub trait EdgeStorageProvider: Send + Sync {
    fn get(&self, tenant: &TenantId, slot: &Slot) -> Option<SecretKey>;
    fn put(&self, tenant: &TenantId, slot: Slot, key: &SecretKey);
    fn evict_tenant(&self, tenant: &TenantId);
    /// Drops expired entries; returns how many.
    fn evict_expired(&self) -> usize;
    fn stats(&self) -> EdgeStats;
}

//! `encrypted-fs`: cached keys survive a restart on local disk, wrapped, in one directory per
//! tenant (`<dir>/<tenant>/<slot>`). Each file holds its expiry time and the key sealed under
//! the node's edge key, with the tenant and slot as associated data, so a file copied to
//! another tenant's directory or another name does not open. The edge key itself is random,
//! stored in `<dir>/edge.key` sealed by the cluster master key, and held only in memory.
//! The wrapped entries are mirrored in memory, so a lookup never touches the disk; the files
//! are written on `put` and read back only when the cache opens.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use custos_raft::TenantId;

use super::{EdgeStats, EdgeStorageProvider, Slot};
use crate::custody::crypto::{labelled_aad, unwrap_key, wrap_key, SecretKey};
use crate::custody::master::MasterKey;

const EDGE_KEY_FILE: &str = "edge.key";

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("edge cache directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} does not open under this node's master key")]
    WrongMasterKey(PathBuf),
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn slot_name(slot: &Slot) -> String {
    match slot {
        Slot::Kek => "kek".to_string(),
        Slot::Version(key, version) => format!("v-{key}-{version}"),
    }
}

fn parse_slot(name: &str) -> Option<Slot> {
    if name == "kek" {
        return Some(Slot::Kek);
    }
    let rest = name.strip_prefix("v-")?;
    let (key, version) = rest.rsplit_once('-')?;
    Some(Slot::Version(custos_raft::KeyId::new(key).ok()?, version.parse().ok()?))
}

fn entry_aad(tenant: &TenantId, slot: &str) -> Vec<u8> {
    labelled_aad("custos/edge-entry/v1", &[tenant.as_str().as_bytes(), slot.as_bytes()])
}

pub struct EncryptedFsEdge {
    dir: PathBuf,
    edge_key: SecretKey,
    ttl: Duration,
    capacity: usize,
    /// Every cached file as on disk: expiry (ms since the epoch) and the sealed key.
    index: Mutex<HashMap<(TenantId, Slot), Wrapped>>,
}

struct Wrapped {
    expires_ms: u64,
    sealed: Vec<u8>,
}

impl EncryptedFsEdge {
    /// Opens (or creates) the cache in `dir`, dropping entries that expired while the node was
    /// down.
    pub fn open(dir: &Path, master: &MasterKey, capacity: usize, ttl: Duration) -> Result<Self, EdgeError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| EdgeError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let key_path = dir.join(EDGE_KEY_FILE);
        let aad = labelled_aad("custos/edge-key/v1", &[]);
        let edge_key = match std::fs::read(&key_path) {
            Ok(sealed) => {
                unwrap_key(master.key(), &sealed, &aad).map_err(|_| EdgeError::WrongMasterKey(key_path.clone()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SecretKey::generate();
                write_atomically(&key_path, &wrap_key(master.key(), &key, &aad)).map_err(io(&key_path))?;
                key
            }
            Err(e) => return Err(EdgeError::Io { path: key_path, source: e }),
        };
        let mut index = HashMap::new();
        for tenant_dir in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
            let Some(tenant) = tenant_dir.file_name().to_str().and_then(|n| TenantId::new(n).ok()) else { continue };
            for file in std::fs::read_dir(tenant_dir.path()).map_err(io(&tenant_dir.path()))?.flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                match (parse_slot(&name), std::fs::read(file.path())) {
                    (Some(slot), Ok(mut bytes)) if bytes.len() >= 8 => {
                        let expires_ms = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
                        let sealed = bytes.split_off(8);
                        index.insert((tenant.clone(), slot), Wrapped { expires_ms, sealed });
                    }
                    // Leftovers of an interrupted write or foreign files: not cache entries.
                    _ => {
                        let _ = std::fs::remove_file(file.path());
                    }
                }
            }
        }
        let edge = EncryptedFsEdge { dir: dir.to_path_buf(), edge_key, ttl, capacity, index: Mutex::new(index) };
        edge.evict_expired();
        Ok(edge)
    }

    fn path(&self, tenant: &TenantId, slot: &str) -> PathBuf {
        self.dir.join(tenant.as_str()).join(slot)
    }

    fn remove(&self, index: &mut HashMap<(TenantId, Slot), Wrapped>, tenant: &TenantId, slot: &Slot) {
        index.remove(&(tenant.clone(), slot.clone()));
        let _ = std::fs::remove_file(self.path(tenant, &slot_name(slot)));
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(bytes)?;
    std::fs::rename(&tmp, path)
}

impl EdgeStorageProvider for EncryptedFsEdge {
    fn get(&self, tenant: &TenantId, slot: &Slot) -> Option<SecretKey> {
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let entry = index.get(&(tenant.clone(), slot.clone()))?;
        if entry.expires_ms <= now_ms() {
            self.remove(&mut index, tenant, slot);
            return None;
        }
        match unwrap_key(&self.edge_key, &entry.sealed, &entry_aad(tenant, &slot_name(slot))) {
            Ok(key) => Some(key),
            Err(_) => {
                // Damaged or moved: not usable, so not cached.
                self.remove(&mut index, tenant, slot);
                None
            }
        }
    }

    fn put(&self, tenant: &TenantId, slot: Slot, key: &SecretKey) {
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        index.remove(&(tenant.clone(), slot.clone()));
        if index.len() >= self.capacity {
            drop(index);
            self.evict_expired();
            index = self.index.lock().unwrap_or_else(|p| p.into_inner());
            if index.len() >= self.capacity {
                if let Some((t, s)) = index.iter().min_by_key(|(_, e)| e.expires_ms).map(|(k, _)| k.clone()) {
                    self.remove(&mut index, &t, &s);
                }
            }
        }
        let name = slot_name(&slot);
        let expires_ms = now_ms().saturating_add(self.ttl.as_millis() as u64);
        let sealed = wrap_key(&self.edge_key, key, &entry_aad(tenant, &name));
        let mut bytes = expires_ms.to_be_bytes().to_vec();
        bytes.extend_from_slice(&sealed);
        let dir = self.dir.join(tenant.as_str());
        let written = std::fs::create_dir_all(&dir).and_then(|()| write_atomically(&dir.join(&name), &bytes));
        match written {
            Ok(()) => {
                index.insert((tenant.clone(), slot), Wrapped { expires_ms, sealed });
            }
            // A cache that cannot write only misses more often.
            Err(e) => tracing::warn!(tenant_id = %tenant, error = %e, "writing to the edge cache failed"),
        }
    }

    fn evict_tenant(&self, tenant: &TenantId) {
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        index.retain(|(t, _), _| t != tenant);
        let _ = std::fs::remove_dir_all(self.dir.join(tenant.as_str()));
    }

    fn evict_expired(&self) -> usize {
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        let expired: Vec<(TenantId, Slot)> =
            index.iter().filter(|(_, e)| e.expires_ms <= now).map(|(k, _)| k.clone()).collect();
        for (tenant, slot) in &expired {
            self.remove(&mut index, tenant, slot);
        }
        expired.len()
    }

    fn stats(&self) -> EdgeStats {
        let entries = self.index.lock().unwrap_or_else(|p| p.into_inner()).len();
        EdgeStats { provider: "encrypted-fs", entries, capacity: self.capacity, locked: false }
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
    fn survives_a_restart_wrapped_and_bound_to_its_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let master_bytes = SecretKey::generate();
        let master = || MasterKey::new(master_bytes.clone());
        let key = SecretKey::generate();
        let slot = Slot::Version(KeyId::new("orders").unwrap(), 3);
        {
            let edge = EncryptedFsEdge::open(dir.path(), &master(), 8, Duration::from_secs(60)).unwrap();
            edge.put(&tenant("acme"), slot.clone(), &key);
            edge.put(&tenant("other"), Slot::Kek, &SecretKey::generate());
        }
        // Only wrapped material on disk.
        for file in [dir.path().join("acme/v-orders-3"), dir.path().join("edge.key")] {
            let bytes = std::fs::read(&file).unwrap();
            assert!(!bytes.windows(32).any(|w| w == key.expose()), "{}", file.display());
        }
        let edge = EncryptedFsEdge::open(dir.path(), &master(), 8, Duration::from_secs(60)).unwrap();
        assert_eq!(edge.get(&tenant("acme"), &slot).unwrap().expose(), key.expose());
        assert_eq!(edge.stats().entries, 2);

        // A file moved into another tenant's directory does not open there.
        std::fs::create_dir_all(dir.path().join("thief")).unwrap();
        std::fs::copy(dir.path().join("acme/v-orders-3"), dir.path().join("thief/v-orders-3")).unwrap();
        let edge = EncryptedFsEdge::open(dir.path(), &master(), 8, Duration::from_secs(60)).unwrap();
        assert!(edge.get(&tenant("thief"), &slot).is_none());

        // Evicting a tenant removes its directory.
        edge.evict_tenant(&tenant("acme"));
        assert!(!dir.path().join("acme").exists());
        assert!(edge.get(&tenant("acme"), &slot).is_none());

        // Another master key cannot open the cache.
        let stranger = MasterKey::new(SecretKey::generate());
        assert!(matches!(
            EncryptedFsEdge::open(dir.path(), &stranger, 8, Duration::from_secs(60)),
            Err(EdgeError::WrongMasterKey(_))
        ));
    }

    #[test]
    fn expired_entries_are_gone_and_capacity_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::new(SecretKey::generate());
        let edge = EncryptedFsEdge::open(dir.path(), &master, 2, Duration::from_millis(1)).unwrap();
        edge.put(&tenant("t"), Slot::Kek, &SecretKey::generate());
        std::thread::sleep(Duration::from_millis(5));
        assert!(edge.get(&tenant("t"), &Slot::Kek).is_none());
        assert!(!dir.path().join("t/kek").exists());

        let edge = EncryptedFsEdge::open(dir.path(), &master, 2, Duration::from_secs(60)).unwrap();
        for v in 1..=3 {
            edge.put(&tenant("t"), Slot::Version(KeyId::new("k").unwrap(), v), &SecretKey::generate());
        }
        assert_eq!(edge.stats().entries, 2);
    }
}

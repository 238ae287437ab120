//! Wires key custody into the node: the providers and edge cache from configuration, the
//! proposer the custody actors write through, and log compaction after crypto-shredding.

use std::sync::Arc;
use std::time::Duration;

use custos_actors::custody::edge::MemoryEdge;
use custos_actors::custody::master::{MasterKey, MasterKeySource};
use custos_actors::custody::provider::{CoreStorageProvider, SealedLocal};
use custos_actors::custody::Custody;
use custos_actors::Proposer;
use custos_config::{CoreProvider, CustodyConfig, EdgeProvider};
use custos_raft::{Cluster, CoreProviderKind, Proposal};

use crate::NodeError;

/// Builds the node's key custody from its configuration.
pub fn build(config: &CustodyConfig, cluster: &Cluster) -> Result<Arc<Custody>, NodeError> {
    let source = if let Some(file) = &config.master_key_file {
        MasterKeySource::File(file.clone())
    } else if let Some(var) = &config.master_key_env {
        MasterKeySource::Env(var.clone())
    } else if let Some(argv) = &config.master_key_command {
        MasterKeySource::Command(argv.clone())
    } else {
        return Err(NodeError::MasterKeyNotConfigured);
    };
    let master = MasterKey::load(&source).map_err(|e| NodeError::MasterKey(e.to_string()))?;
    let (providers, default): (Vec<Arc<dyn CoreStorageProvider>>, _) = match config.provider {
        CoreProvider::SealedLocal => (vec![Arc::new(SealedLocal::new(master))], CoreProviderKind::SealedLocal),
    };
    let edge = match config.edge {
        EdgeProvider::Memory => {
            Arc::new(MemoryEdge::new(config.key_cache_max_entries, Duration::from_millis(config.key_cache_ttl_ms)))
        }
    };
    Ok(Arc::new(Custody::new(cluster.reader().clone(), providers, default, edge)))
}

/// The custody actors' way to write: through this node's Raft cluster.
pub struct ClusterProposer(pub Cluster);

#[async_trait::async_trait]
impl Proposer for ClusterProposer {
    fn is_leader(&self) -> bool {
        let metrics = self.0.raft().metrics().borrow().clone();
        metrics.current_leader == Some(self.0.id())
    }

    async fn propose(&self, proposal: Proposal) -> Result<(), String> {
        let response = self.0.write(proposal).await.map_err(|e| e.to_string())?;
        response.outcome.map(|_| ()).map_err(|rejection| rejection.to_string())
    }
}

/// Most time spent waiting for the snapshot that covers a tenant deletion.
const COMPACTION_WAIT: Duration = Duration::from_secs(60);

/// After a tenant deletion at log index `index` was applied here: builds a snapshot that
/// covers it and purges the log up to it, so the tenant's wrapped roots no longer exist in
/// this node's log or snapshot, only in storage pages the engine has yet to reuse.
pub async fn compact_after_shred(cluster: Cluster, index: u64) {
    let raft = cluster.raft();
    if let Err(e) = raft.trigger().snapshot().await {
        tracing::warn!(error = %e, "snapshot after crypto-shredding could not start");
        return;
    }
    let covered = raft
        .wait(Some(COMPACTION_WAIT))
        .metrics(|m| m.snapshot.is_some_and(|s| s.index >= index), "snapshot covers the tenant deletion")
        .await;
    if let Err(e) = covered {
        tracing::warn!(error = %e, index, "no snapshot covered the tenant deletion in time; the log keeps it until the next one");
        return;
    }
    match raft.trigger().purge_log(index).await {
        Ok(()) => tracing::info!(index, "log purged after crypto-shredding"),
        Err(e) => tracing::warn!(error = %e, index, "purging the log after crypto-shredding failed"),
    }
}

/// Writes a new random master key (64 hex digits, owner-only permissions) to `path`, unless a
/// file is already there. Returns whether it wrote one.
pub fn write_master_key(path: &std::path::Path) -> std::io::Result<bool> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    };
    let key = MasterKey::generate_hex();
    file.write_all(key.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    Ok(true)
}

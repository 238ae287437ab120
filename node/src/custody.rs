//! Wires key custody into the node: the providers (sealed-local, Vault) and edge cache from
//! configuration, the proposer the custody actors write through, and log compaction after
//! crypto-shredding.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use custos_actors::audit::{Actor, Audit, AuditData, AuditRecord, AuditStream, EventType, Outcome};
use custos_actors::custody::edge::{EdgeStorageProvider, EncryptedFsEdge, MemoryEdge};
use custos_actors::custody::master::{MasterKey, MasterKeySource};
use custos_actors::custody::provider::vault::{AuthSettings, TokenSource};
use custos_actors::custody::provider::{CoreStorageProvider, SealedLocal, VaultProvider, VaultSettings, VaultShared};
use custos_actors::custody::Custody;
use custos_actors::{ProposeError, Proposer};
use custos_config::{CoreProvider, CustodyConfig, EdgeProvider, VaultAuthMethod, VaultConfig};
use custos_raft::{Cluster, Command, CoreProviderKind, Proposal, RequestId};

use crate::NodeError;

/// Key custody as configured: the operations, and the Vault state the adapter actor keeps
/// logged in (when Vault is configured).
pub struct Built {
    pub custody: Arc<Custody>,
    pub vault: Option<Arc<VaultShared>>,
}

fn vault_settings(v: &VaultConfig, address: &str) -> Result<VaultSettings, NodeError> {
    let missing = |what: &str| NodeError::Vault(format!("custody.vault.{what} is required for its auth method"));
    let auth = match v.auth {
        VaultAuthMethod::Token => AuthSettings::Token {
            source: match (&v.token_file, &v.token_env) {
                (Some(file), _) => TokenSource::File(file.clone()),
                (None, Some(var)) => TokenSource::Env(var.clone()),
                (None, None) => return Err(missing("token_file")),
            },
        },
        VaultAuthMethod::Approle => AuthSettings::AppRole {
            mount: v.approle_mount.clone(),
            role_id: v.approle_role_id.clone().ok_or_else(|| missing("approle_role_id"))?,
            secret_id_file: v.approle_secret_id_file.clone().ok_or_else(|| missing("approle_secret_id_file"))?,
        },
        VaultAuthMethod::Kubernetes => AuthSettings::Kubernetes {
            mount: v.kubernetes_mount.clone(),
            role: v.kubernetes_role.clone().ok_or_else(|| missing("kubernetes_role"))?,
            jwt_file: v.kubernetes_jwt_file.clone(),
        },
    };
    let server_cert_sha256 = v
        .server_cert_sha256
        .iter()
        .enumerate()
        .map(|(i, pin)| {
            custos_config::parse_sha256_fingerprint(pin).ok_or_else(|| {
                NodeError::Vault(format!("custody.vault.server_cert_sha256[{i}] is not a SHA-256 digest"))
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(VaultSettings {
        address: address.to_string(),
        ca_file: v.ca_file.clone(),
        server_cert_sha256,
        namespace_prefix: v.namespace_prefix.clone(),
        transit_mount: v.transit_mount.clone(),
        root_key_name: v.root_key_name.clone(),
        auth,
        timeout: Duration::from_millis(v.request_timeout_ms),
        breaker_failures: v.breaker_failures,
        breaker_cooldown: Duration::from_millis(v.breaker_cooldown_ms),
    })
}

/// Builds the node's key custody from its configuration: `sealed-local` whenever a master key
/// is configured, `vault` whenever `custody.vault.address` is; `custody.provider` picks the
/// default for new tenants and must be one of them.
pub fn build(config: &CustodyConfig, data_dir: &Path, cluster: &Cluster) -> Result<Built, NodeError> {
    let source = if let Some(file) = &config.master_key_file {
        Some(MasterKeySource::File(file.clone()))
    } else if let Some(var) = &config.master_key_env {
        Some(MasterKeySource::Env(var.clone()))
    } else {
        config.master_key_command.as_ref().map(|argv| MasterKeySource::Command(argv.clone()))
    };
    let mut providers: Vec<Arc<dyn CoreStorageProvider>> = Vec::new();
    let master = match source {
        Some(source) => Some(MasterKey::load(&source).map_err(|e| NodeError::MasterKey(e.to_string()))?),
        None => None,
    };
    let sealed_local = master.is_some();
    let mut vault = None;
    if let Some(address) = &config.vault.address {
        let shared =
            VaultShared::new(vault_settings(&config.vault, address)?).map_err(|e| NodeError::Vault(e.to_string()))?;
        providers.push(Arc::new(VaultProvider::new(shared.clone())));
        vault = Some(shared);
    }
    let default = match config.provider {
        CoreProvider::SealedLocal if sealed_local => CoreProviderKind::SealedLocal,
        CoreProvider::SealedLocal => return Err(NodeError::MasterKeyNotConfigured),
        CoreProvider::Vault if vault.is_some() => CoreProviderKind::Vault,
        CoreProvider::Vault => return Err(NodeError::Vault("custody.vault.address is not set".into())),
    };
    let ttl = Duration::from_millis(config.key_cache_ttl_ms);
    let edge: Arc<dyn EdgeStorageProvider> = match (config.edge, &master) {
        (EdgeProvider::Memory, _) => Arc::new(MemoryEdge::new(config.key_cache_max_entries, ttl)),
        (EdgeProvider::EncryptedFs, Some(master)) => Arc::new(
            EncryptedFsEdge::open(&data_dir.join("edge"), master, config.key_cache_max_entries, ttl)
                .map_err(|e| NodeError::EdgeCache(e.to_string()))?,
        ),
        (EdgeProvider::EncryptedFs, None) => return Err(NodeError::MasterKeyNotConfigured),
    };
    if let Some(master) = master {
        providers.insert(0, Arc::new(SealedLocal::new(master)));
    }
    Ok(Built { custody: Arc::new(Custody::new(cluster.reader().clone(), providers, default, edge)), vault })
}

pub(crate) fn is_leader(cluster: &Cluster) -> bool {
    cluster.raft().metrics().borrow().current_leader == Some(cluster.id())
}

/// The custody actors' way to write and to record what they did: through this node's Raft
/// cluster and audit outbox.
pub struct ClusterProposer {
    pub cluster: Cluster,
    pub audit: Arc<Audit>,
}

#[async_trait::async_trait]
impl Proposer for ClusterProposer {
    fn is_leader(&self) -> bool {
        is_leader(&self.cluster)
    }

    async fn propose(&self, proposal: Proposal) -> Result<(), ProposeError> {
        let response = self.cluster.write(proposal).await.map_err(|e| ProposeError::Unknown(e.to_string()))?;
        response.outcome.map(|_| ()).map_err(|rejection| ProposeError::Refused(rejection.to_string()))
    }

    async fn record(&self, record: AuditRecord) -> Result<(), String> {
        self.audit.record(record).await.map_err(|e| e.to_string())
    }
}

/// Pending shreds handled per round.
const SHREDS_PER_ROUND: usize = 64;

/// On the leader, every `interval`: destroys deleted tenants' roots at their providers (a
/// Vault namespace) and records each success, so a provider that was down when the tenant
/// was deleted is shredded once it is back. Each success is audited (`tenant.shred`, actor
/// `system`) before governance state records it, so a failure in between only shreds and
/// audits again.
pub async fn shred_pending(
    cluster: Cluster,
    custody: Arc<Custody>,
    audit: Arc<Audit>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        if !is_leader(&cluster) {
            continue;
        }
        let pending = match cluster.reader().pending_shreds(SHREDS_PER_ROUND) {
            Ok(pending) => pending,
            Err(e) => {
                tracing::warn!(error = %e, "reading pending shreds failed");
                continue;
            }
        };
        for shred in pending {
            let tenant = shred.tenant.clone();
            if let Err(e) = custody.destroy_root(&tenant, shred.provider, &shred.root).await {
                tracing::warn!(tenant_id = %tenant, error = %e, "destroying a deleted tenant's root failed; retrying");
                continue;
            }
            let Ok(request_id) = RequestId::new(format!("shred/{tenant}")) else { continue };
            let mut data = AuditData::new(Actor::system(), Outcome::Success);
            data.request_id = Some(request_id.as_str().to_string());
            data.details.insert("key_provider".into(), shred.provider.as_str().into());
            let event = AuditRecord {
                stream: AuditStream::Tenant(tenant.clone()),
                kind: EventType::TenantShred,
                subject: None,
                data,
            };
            if let Err(e) = audit.record(event).await {
                tracing::warn!(tenant_id = %tenant, error = %e, "auditing a destroyed root failed; retrying");
                continue;
            }
            let proposal = Proposal {
                request_id,
                proposed_at_ms: crate::api::now_ms(),
                command: Command::RootDestroyed { tenant: tenant.clone() },
            };
            match cluster.write(proposal).await {
                Ok(_) => tracing::info!(tenant_id = %tenant, "deleted tenant's root destroyed at its provider"),
                Err(e) => {
                    tracing::warn!(tenant_id = %tenant, error = %e, "recording a destroyed root failed; retrying")
                }
            }
        }
    }
}

/// Most time spent waiting for the snapshot that covers a tenant deletion, and again for the
/// purge.
const COMPACTION_WAIT: Duration = Duration::from_secs(60);

/// After a tenant deletion at log index `index` was applied here: builds a snapshot that
/// covers it (unless one does already) and purges the log up to it, so the tenant's wrapped
/// roots no longer exist in this node's log or snapshot, only in storage pages the engine has
/// yet to reuse. Returns once the log is purged, or after a failure or timeout (logged).
pub async fn compact_after_shred(cluster: Cluster, index: u64) {
    let raft = cluster.raft();
    let covered = raft.metrics().borrow().snapshot.is_some_and(|s| s.index >= index);
    if !covered {
        if let Err(e) = raft.trigger().snapshot().await {
            tracing::warn!(error = %e, "snapshot after crypto-shredding could not start");
            return;
        }
        let built = raft
            .wait(Some(COMPACTION_WAIT))
            .metrics(|m| m.snapshot.is_some_and(|s| s.index >= index), "snapshot covers the tenant deletion")
            .await;
        if let Err(e) = built {
            tracing::warn!(error = %e, index, "no snapshot covered the tenant deletion in time; trying again later");
            return;
        }
    }
    if let Err(e) = raft.trigger().purge_log(index).await {
        tracing::warn!(error = %e, index, "purging the log after crypto-shredding failed");
        return;
    }
    // A leader purges only once no replication still reads the entries: wait for it, so a
    // compaction counts as running until the log is purged.
    let purged = raft
        .wait(Some(COMPACTION_WAIT))
        .metrics(|m| m.purged.is_some_and(|p| p.index >= index), "log purged past the tenant deletion")
        .await;
    match purged {
        Ok(_) => tracing::info!(index, "log purged after crypto-shredding"),
        Err(e) => {
            tracing::warn!(error = %e, index, "the log was not purged past the tenant deletion in time; trying again later")
        }
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

//! [`Custody`]: the node's key-custody operations, run in the calling request's task.
//!
//! Key metadata is read from the node's applied governance state on every operation, so a
//! rotation, disable or destruction applied on this node is in force for the next request.
//! Unwrapped keys come from the edge cache; on a miss, an L3 version is unwrapped under the
//! tenant KEK, and the KEK under L1 by the tenant's core provider.

use std::collections::HashMap;
use std::sync::Arc;

use custos_raft::store::reader::ReadError;
use custos_raft::{CoreProviderKind, GovernanceReader, KeyId, KeyRecord, KeyState, TenantCustody, TenantId};
use tracing::Instrument;
use zeroize::Zeroizing;

use super::ciphertext::{check_context, data_aad, Ciphertext, EncryptionContext, MalformedCiphertext};
use super::crypto::{labelled_aad, open, seal, unwrap_key, wrap_key, SecretKey};
use super::edge::{EdgeStorageProvider, Slot};
use super::provider::{CoreStorageProvider, ProviderError, ProviderHealth};

#[derive(Debug, thiserror::Error)]
pub enum CustodyError {
    #[error("key {0} does not exist")]
    KeyNotFound(KeyId),
    #[error("key {key} is {state}, not enabled")]
    KeyNotEnabled { key: KeyId, state: &'static str },
    #[error("key {0} has been destroyed")]
    KeyDestroyed(KeyId),
    #[error(transparent)]
    Malformed(#[from] MalformedCiphertext),
    #[error("ciphertext uses key version {version}, below the key's minimum decryption version {min}")]
    VersionBelowMinimum { version: u32, min: u32 },
    #[error("ciphertext names key version {version}, but the key's latest version is {latest}")]
    UnknownVersion { version: u32, latest: u32 },
    /// Wrong tenant, key, version or context, or a modified ciphertext. Deliberately vague.
    #[error("the ciphertext does not decrypt under this tenant, key and encryption context")]
    DecryptFailed,
    #[error("tenant {0} has no key custody (deleted tenants' keys are destroyed)")]
    NoCustody(TenantId),
    #[error("{0}")]
    InvalidContext(String),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Stored material failed to unwrap under a key that did unwrap: damage, not a caller error.
    #[error("stored key material of {0} does not authenticate")]
    CorruptMaterial(String),
}

/// A ciphertext and the key version that sealed it (the API answers with it as is).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Sealed {
    pub ciphertext: String,
    pub key_version: u32,
}

/// A data key: plaintext for the caller's own use, and the same key wrapped under an L3 key.
pub struct DataKey {
    pub plaintext: SecretKey,
    pub sealed: Sealed,
}

/// Key custody of one node, shared by every request and by the tenants' custody actors.
pub struct Custody {
    reader: GovernanceReader,
    providers: HashMap<CoreProviderKind, Arc<dyn CoreStorageProvider>>,
    default_provider: CoreProviderKind,
    edge: Arc<dyn EdgeStorageProvider>,
}

fn platform_tenant() -> TenantId {
    TenantId::new(custos_raft::access::PLATFORM_TENANT).expect("the platform id is a valid tenant id")
}

pub(crate) fn l3_aad(tenant: &TenantId, key: &KeyId, version: u32) -> Vec<u8> {
    labelled_aad("custos/l3/v1", &[tenant.as_str().as_bytes(), key.as_str().as_bytes(), &version.to_be_bytes()])
}

impl Custody {
    pub fn new(
        reader: GovernanceReader,
        providers: Vec<Arc<dyn CoreStorageProvider>>,
        default_provider: CoreProviderKind,
        edge: Arc<dyn EdgeStorageProvider>,
    ) -> Self {
        let providers = providers.into_iter().map(|p| (p.kind(), p)).collect();
        Custody { reader, providers, default_provider, edge }
    }

    pub fn default_provider(&self) -> CoreProviderKind {
        self.default_provider
    }

    pub fn reader(&self) -> &GovernanceReader {
        &self.reader
    }

    pub fn edge(&self) -> &Arc<dyn EdgeStorageProvider> {
        &self.edge
    }

    pub fn provider_health(&self) -> Vec<ProviderHealth> {
        self.providers.values().map(|p| p.health()).collect()
    }

    fn provider(&self, kind: CoreProviderKind) -> Result<&Arc<dyn CoreStorageProvider>, ProviderError> {
        self.providers.get(&kind).ok_or(ProviderError::NotConfigured(kind.as_str()))
    }

    /// Creates a new tenant's L1 root with `kind` (the node default if None) and its KEK.
    pub async fn provision_tenant(
        &self,
        tenant: &TenantId,
        kind: Option<CoreProviderKind>,
    ) -> Result<TenantCustody, CustodyError> {
        let kind = kind.unwrap_or(self.default_provider);
        let provider = self.provider(kind)?;
        let span = tracing::info_span!("custody.provision", provider = kind.as_str());
        let (root, kek_wrapped) = async {
            let root = provider.provision(tenant).await?;
            let kek_wrapped = provider.wrap(tenant, &root, &SecretKey::generate()).await?;
            Ok::<_, ProviderError>((root, kek_wrapped))
        }
        .instrument(span)
        .await?;
        Ok(TenantCustody { provider: kind, root, kek_wrapped, keys_created: 0 })
    }

    /// Destroys a deleted tenant's root where its provider holds it outside governance state,
    /// and this node's cached keys of the tenant.
    pub async fn destroy_root(
        &self,
        tenant: &TenantId,
        provider: CoreProviderKind,
        root: &[u8],
    ) -> Result<(), CustodyError> {
        self.edge.evict_tenant(tenant);
        let span = tracing::info_span!("custody.destroy_root", provider = provider.as_str());
        Ok(self.provider(provider)?.destroy(tenant, root).instrument(span).await?)
    }

    /// Destroys a root provisioned for a tenant id but never stored (its create was refused or
    /// replayed). Nothing was cached from it, so the tenant's cache stays.
    pub async fn discard_root(
        &self,
        tenant: &TenantId,
        provider: CoreProviderKind,
        root: &[u8],
    ) -> Result<(), CustodyError> {
        let span = tracing::info_span!("custody.discard_root", provider = provider.as_str());
        Ok(self.provider(provider)?.destroy(tenant, root).instrument(span).await?)
    }

    /// The tenant KEK, from the cache or unwrapped by the provider.
    pub async fn kek(&self, tenant: &TenantId) -> Result<SecretKey, CustodyError> {
        if let Some(kek) = self.edge.get(tenant, &Slot::Kek) {
            return Ok(kek);
        }
        let custody = self.reader.custody(tenant)?.ok_or_else(|| CustodyError::NoCustody(tenant.clone()))?;
        let kek = self.unwrap_kek(tenant, &custody).await?;
        self.edge.put(tenant, Slot::Kek, &kek);
        Ok(kek)
    }

    /// Asks the tenant's provider to unwrap its KEK (a cache miss), in a `custody.unwrap_kek`
    /// span: with Vault, this is the transit round trip.
    async fn unwrap_kek(&self, tenant: &TenantId, custody: &TenantCustody) -> Result<SecretKey, CustodyError> {
        let span = tracing::info_span!("custody.unwrap_kek", provider = custody.provider.as_str());
        let provider = self.provider(custody.provider)?;
        Ok(provider.unwrap(tenant, &custody.root, &custody.kek_wrapped).instrument(span).await?)
    }

    /// The platform's own key roots (for token-signing keys), held by the default provider
    /// under the reserved tenant id [`custos_raft::access::PLATFORM_TENANT`].
    pub async fn provision_platform(&self) -> Result<TenantCustody, CustodyError> {
        self.provision_tenant(&platform_tenant(), None).await
    }

    /// The platform KEK, from the cache or unwrapped by its provider.
    pub async fn platform_kek(&self, custody: &TenantCustody) -> Result<SecretKey, CustodyError> {
        let tenant = platform_tenant();
        if let Some(kek) = self.edge.get(&tenant, &Slot::Kek) {
            return Ok(kek);
        }
        let kek = self.unwrap_kek(&tenant, custody).await?;
        self.edge.put(&tenant, Slot::Kek, &kek);
        Ok(kek)
    }

    /// Hex HMAC-SHA256 of `value` under the tenant's audit key, for audit events that must tell
    /// values apart without revealing them (an encryption context). `label` separates uses.
    /// The audit key derives from the tenant KEK, so crypto-shredding a tenant also leaves its
    /// old HMACs unconfirmable.
    pub async fn audit_hmac(&self, tenant: &TenantId, label: &str, value: &[u8]) -> Result<String, CustodyError> {
        use hmac::{Hmac, Mac};
        let kek = self.kek(tenant).await?;
        let mut derive = <Hmac<sha2::Sha256> as Mac>::new_from_slice(kek.expose()).expect("HMAC takes any key length");
        derive.update(b"custos/audit-hmac/v1");
        let audit_key: zeroize::Zeroizing<[u8; 32]> = zeroize::Zeroizing::new(derive.finalize().into_bytes().into());
        let mut mac =
            <Hmac<sha2::Sha256> as Mac>::new_from_slice(audit_key.as_ref()).expect("HMAC takes any key length");
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(value);
        Ok(hex::encode(mac.finalize().into_bytes()))
    }

    /// Fresh L3 material for `version` of `key`, wrapped under the tenant KEK.
    pub async fn new_key_material(
        &self,
        tenant: &TenantId,
        key: &KeyId,
        version: u32,
    ) -> Result<Vec<u8>, CustodyError> {
        let kek = self.kek(tenant).await?;
        Ok(wrap_key(&kek, &SecretKey::generate(), &l3_aad(tenant, key, version)))
    }

    fn record(&self, tenant: &TenantId, key: &KeyId) -> Result<KeyRecord, CustodyError> {
        let record = self.reader.key(tenant, key)?.ok_or_else(|| CustodyError::KeyNotFound(key.clone()))?;
        match record.state {
            KeyState::Enabled => Ok(record),
            KeyState::Destroyed => Err(CustodyError::KeyDestroyed(key.clone())),
            other => Err(CustodyError::KeyNotEnabled { key: key.clone(), state: other.as_str() }),
        }
    }

    async fn version_key(&self, tenant: &TenantId, key: &KeyId, version: u32) -> Result<SecretKey, CustodyError> {
        let slot = Slot::Version(key.clone(), version);
        if let Some(material) = self.edge.get(tenant, &slot) {
            return Ok(material);
        }
        let stored =
            self.reader.key_version(tenant, key, version)?.ok_or_else(|| CustodyError::KeyDestroyed(key.clone()))?;
        let kek = self.kek(tenant).await?;
        let material = unwrap_key(&kek, &stored.wrapped, &l3_aad(tenant, key, version))
            .map_err(|_| CustodyError::CorruptMaterial(format!("{key} version {version}")))?;
        self.edge.put(tenant, slot, &material);
        Ok(material)
    }

    fn seal_latest(record: &KeyRecord, material: &SecretKey, plaintext: &[u8], context: &EncryptionContext) -> Sealed {
        let key_version = record.latest_version;
        let aad = data_aad(&record.tenant, &record.id, key_version, context);
        let ciphertext = Ciphertext { key_version, sealed: seal(material, plaintext, &aad) }.encode();
        Sealed { ciphertext, key_version }
    }

    /// Encrypts under the key's latest version.
    pub async fn encrypt(
        &self,
        tenant: &TenantId,
        key: &KeyId,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Sealed, CustodyError> {
        check_context(context).map_err(CustodyError::InvalidContext)?;
        let record = self.record(tenant, key)?;
        let material = self.version_key(tenant, key, record.latest_version).await?;
        Ok(Self::seal_latest(&record, &material, plaintext, context))
    }

    /// Decrypts a ciphertext of this tenant's key under the same context.
    pub async fn decrypt(
        &self,
        tenant: &TenantId,
        key: &KeyId,
        ciphertext: &str,
        context: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, CustodyError> {
        check_context(context).map_err(CustodyError::InvalidContext)?;
        let parsed = Ciphertext::parse(ciphertext)?;
        let record = self.record(tenant, key)?;
        self.decrypt_parsed(&record, &parsed, context).await
    }

    async fn decrypt_parsed(
        &self,
        record: &KeyRecord,
        parsed: &Ciphertext,
        context: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, CustodyError> {
        let version = parsed.key_version;
        if version > record.latest_version {
            return Err(CustodyError::UnknownVersion { version, latest: record.latest_version });
        }
        if version < record.min_decryption_version {
            return Err(CustodyError::VersionBelowMinimum { version, min: record.min_decryption_version });
        }
        let material = self.version_key(&record.tenant, &record.id, version).await?;
        let aad = data_aad(&record.tenant, &record.id, version, context);
        open(&material, &parsed.sealed, &aad).map(Zeroizing::new).map_err(|_| CustodyError::DecryptFailed)
    }

    /// Decrypts and encrypts again under the latest version, without returning the plaintext.
    pub async fn rewrap(
        &self,
        tenant: &TenantId,
        key: &KeyId,
        ciphertext: &str,
        context: &EncryptionContext,
    ) -> Result<Sealed, CustodyError> {
        check_context(context).map_err(CustodyError::InvalidContext)?;
        let parsed = Ciphertext::parse(ciphertext)?;
        let record = self.record(tenant, key)?;
        let plaintext = self.decrypt_parsed(&record, &parsed, context).await?;
        let material = self.version_key(tenant, key, record.latest_version).await?;
        Ok(Self::seal_latest(&record, &material, &plaintext, context))
    }

    /// A fresh 256-bit data key (L4) and its ciphertext under the key's latest version.
    pub async fn generate_data_key(
        &self,
        tenant: &TenantId,
        key: &KeyId,
        context: &EncryptionContext,
    ) -> Result<DataKey, CustodyError> {
        let plaintext = SecretKey::generate();
        let sealed = self.encrypt(tenant, key, plaintext.expose(), context).await?;
        Ok(DataKey { plaintext, sealed })
    }
}

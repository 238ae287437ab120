//! Core storage providers: where a tenant's L1 root lives and how material is wrapped under it.

mod sealed_local;
pub mod vault;

use custos_raft::{CoreProviderKind, TenantId};
use serde::Serialize;

pub use sealed_local::SealedLocal;
pub use vault::{VaultProvider, VaultSettings, VaultShared};

use super::crypto::SecretKey;

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider cannot be reached or refused to work; operations needing L1 fail closed.
    #[error("{provider} is unavailable: {reason}")]
    Unavailable { provider: &'static str, reason: String },
    /// The provider answered, but the material does not open under this tenant's root: a
    /// different master key, or damaged or foreign material.
    #[error("{provider} could not unwrap the tenant's material: {reason}")]
    Unwrap { provider: &'static str, reason: String },
    /// The tenant uses a provider this node is not configured with.
    #[error("this node has no {0} provider configured")]
    NotConfigured(&'static str),
}

/// How a provider is doing, for cluster status.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderHealth {
    pub provider: &'static str,
    pub healthy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A core storage provider (ADR-103): it holds each tenant's L1 root and wraps the tenant KEK
/// under it. Material it returns is plaintext only in memory.
#[async_trait::async_trait]
pub trait CoreStorageProvider: Send + Sync {
    fn kind(&self) -> CoreProviderKind;

    /// Creates (or, if it already exists, reuses) the tenant's L1 root and returns the
    /// provider's reference to it, which is stored in governance state.
    async fn provision(&self, tenant: &TenantId) -> Result<Vec<u8>, ProviderError>;

    /// Wraps `key` under the tenant's L1 root.
    async fn wrap(&self, tenant: &TenantId, root: &[u8], key: &SecretKey) -> Result<Vec<u8>, ProviderError>;

    /// Unwraps what [`CoreStorageProvider::wrap`] produced.
    async fn unwrap(&self, tenant: &TenantId, root: &[u8], wrapped: &[u8]) -> Result<SecretKey, ProviderError>;

    /// Destroys the tenant's L1 root where the provider holds it outside governance state.
    async fn destroy(&self, tenant: &TenantId, root: &[u8]) -> Result<(), ProviderError>;

    fn health(&self) -> ProviderHealth;
}

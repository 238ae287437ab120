//! `sealed-local`: each tenant's L1 root is random material wrapped by the cluster master key
//! and kept in replicated governance state (sled). Deleting the tenant removes it there, which
//! is what destroys it.
//!
//! Root layout: `format (1) || master key check value (8) || nonce || wrapped root || tag`.

use custos_raft::{CoreProviderKind, TenantId};

use super::{CoreStorageProvider, ProviderError, ProviderHealth};
use crate::custody::crypto::{labelled_aad, unwrap_key, wrap_key, SecretKey};
use crate::custody::master::MasterKey;

const ROOT_FORMAT: u8 = 1;
const NAME: &str = "sealed-local";

pub struct SealedLocal {
    master: MasterKey,
}

impl SealedLocal {
    pub fn new(master: MasterKey) -> Self {
        SealedLocal { master }
    }

    fn unwrap_root(&self, tenant: &TenantId, root: &[u8]) -> Result<SecretKey, ProviderError> {
        let fail = |reason: &str| ProviderError::Unwrap { provider: NAME, reason: reason.into() };
        let (&format, rest) = root.split_first().ok_or_else(|| fail("empty root"))?;
        if format != ROOT_FORMAT || rest.len() < 8 {
            return Err(fail("unknown root format"));
        }
        let (check, wrapped) = rest.split_at(8);
        if check != self.master.check_value() {
            return Err(fail("the root was sealed with a different master key than this node's"));
        }
        unwrap_key(self.master.key(), wrapped, &root_aad(tenant)).map_err(|_| fail("the root does not authenticate"))
    }
}

fn root_aad(tenant: &TenantId) -> Vec<u8> {
    labelled_aad("custos/l1/sealed-local/v1", &[tenant.as_str().as_bytes()])
}

fn kek_aad(tenant: &TenantId) -> Vec<u8> {
    labelled_aad("custos/l2/v1", &[tenant.as_str().as_bytes()])
}

#[async_trait::async_trait]
impl CoreStorageProvider for SealedLocal {
    fn kind(&self) -> CoreProviderKind {
        CoreProviderKind::SealedLocal
    }

    async fn provision(&self, tenant: &TenantId) -> Result<Vec<u8>, ProviderError> {
        let root = SecretKey::generate();
        let mut out = vec![ROOT_FORMAT];
        out.extend_from_slice(&self.master.check_value());
        out.extend_from_slice(&wrap_key(self.master.key(), &root, &root_aad(tenant)));
        Ok(out)
    }

    async fn wrap(&self, tenant: &TenantId, root: &[u8], key: &SecretKey) -> Result<Vec<u8>, ProviderError> {
        let root = self.unwrap_root(tenant, root)?;
        Ok(wrap_key(&root, key, &kek_aad(tenant)))
    }

    async fn unwrap(&self, tenant: &TenantId, root: &[u8], wrapped: &[u8]) -> Result<SecretKey, ProviderError> {
        let root = self.unwrap_root(tenant, root)?;
        unwrap_key(&root, wrapped, &kek_aad(tenant))
            .map_err(|_| ProviderError::Unwrap { provider: NAME, reason: "the KEK does not authenticate".into() })
    }

    async fn destroy(&self, _tenant: &TenantId, _root: &[u8]) -> Result<(), ProviderError> {
        // The root exists only in governance state, which the tenant's deletion cleared.
        Ok(())
    }

    fn health(&self) -> ProviderHealth {
        ProviderHealth { provider: NAME, healthy: true, detail: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str) -> TenantId {
        TenantId::new(id).unwrap()
    }

    #[tokio::test]
    async fn wraps_per_tenant_and_refuses_other_roots_and_master_keys() {
        let provider = SealedLocal::new(MasterKey::new(SecretKey::generate()));
        let root = provider.provision(&tenant("a")).await.unwrap();
        let kek = SecretKey::generate();
        let wrapped = provider.wrap(&tenant("a"), &root, &kek).await.unwrap();
        assert_eq!(provider.unwrap(&tenant("a"), &root, &wrapped).await.unwrap().expose(), kek.expose());

        // The same bytes presented as another tenant's do not open.
        assert!(provider.unwrap(&tenant("b"), &root, &wrapped).await.is_err());
        let other_root = provider.provision(&tenant("a")).await.unwrap();
        assert!(provider.unwrap(&tenant("a"), &other_root, &wrapped).await.is_err());

        // A node with another master key says so.
        let stranger = SealedLocal::new(MasterKey::new(SecretKey::generate()));
        let err = stranger.unwrap(&tenant("a"), &root, &wrapped).await.unwrap_err();
        assert!(err.to_string().contains("different master key"), "{err}");
    }
}

//! [`PolicyCache`]: each tenant's compiled policy on this node, recompiled when the tenant's
//! replicated access state moves to a new revision.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use custos_raft::store::reader::ReadError;
use custos_raft::{GovernanceReader, TenantId};

use super::decision::{AccessRequest, Decision, DecisionId, DenyKind};
use super::engine::TenantPolicy;
use super::principal::Principal;

/// A compiled policy, or why the stored one does not compile (decisions then deny).
type Compiled = Arc<Result<TenantPolicy, String>>;

pub struct PolicyCache {
    reader: GovernanceReader,
    platform: Arc<TenantPolicy>,
    /// One entry per tenant that has had a decision here; tenants are bounded by governance.
    tenants: RwLock<HashMap<TenantId, (u64, Compiled)>>,
}

impl PolicyCache {
    pub fn new(reader: GovernanceReader) -> PolicyCache {
        PolicyCache { reader, platform: Arc::new(TenantPolicy::builtin()), tenants: RwLock::new(HashMap::new()) }
    }

    /// Decides a request against this node's applied state. Platform permissions are decided
    /// by the built-in platform policy; tenant permissions by the tenant's.
    pub fn decide(&self, principal: &Principal, request: &AccessRequest) -> Result<Decision, ReadError> {
        let tenant = match request.tenant {
            Some(tenant) if !request.permission.is_platform() => tenant,
            _ => return Ok(self.platform.decide(principal, request)),
        };
        let compiled = self.compiled(tenant)?;
        Ok(match compiled.as_ref() {
            Ok(policy) => policy.decide(principal, request),
            Err(reason) => Decision {
                id: DecisionId::next(),
                allowed: false,
                rule: "policy".into(),
                deny: Some(DenyKind::PolicyError),
                reasons: vec![format!("the tenant's stored policy cannot be evaluated: {reason}")],
            },
        })
    }

    /// The tenant's compiled policy at its current applied revision.
    pub fn compiled(&self, tenant: &TenantId) -> Result<Compiled, ReadError> {
        let revision = self.reader.access_revision(tenant)?;
        if let Some((cached, compiled)) = self.read_lock().get(tenant) {
            if *cached == revision {
                return Ok(compiled.clone());
            }
        }
        let compiled: Compiled = Arc::new(match self.reader.access(tenant)? {
            None => Ok(TenantPolicy::builtin()),
            Some(access) => TenantPolicy::compile(&access).map_err(|e| e.to_string()),
        });
        // Another request may have compiled a newer revision meanwhile; keep the newest.
        let mut tenants = self.tenants.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        match tenants.get(tenant) {
            Some((cached, _)) if *cached > revision => {}
            _ => {
                tenants.insert(tenant.clone(), (revision, compiled.clone()));
            }
        }
        Ok(compiled)
    }

    fn read_lock(&self) -> std::sync::RwLockReadGuard<'_, HashMap<TenantId, (u64, Compiled)>> {
        // The map is only ever replaced entry by entry; a panic elsewhere cannot leave it torn.
        self.tenants.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

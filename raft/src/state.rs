//! The governance data model as stored in the state machine.

use serde::{Deserialize, Serialize};

use crate::types::{KeyId, RegionLabel, TenantId};

/// A tenant record. Deleted tenants remain as tombstones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: TenantId,
    pub display_name: String,
    pub region: RegionLabel,
    pub status: TenantStatus,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Log index of the last change; clients may use it as a version.
    pub revision: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TenantStatus {
    Active,
    Suspended,
    Deleted,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
            TenantStatus::Deleted => "deleted",
        }
    }
}

/// Longest accepted tenant display name, in characters.
pub const DISPLAY_NAME_MAX_CHARS: usize = 200;

/// Checks a display name: 1 to 200 characters, no control characters.
pub fn check_display_name(name: &str) -> Result<(), &'static str> {
    let chars = name.chars().count();
    if chars == 0 || chars > DISPLAY_NAME_MAX_CHARS {
        return Err("must be 1 to 200 characters long");
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    if name.trim() != name {
        return Err("must not start or end with whitespace");
    }
    Ok(())
}

/// Which core storage provider holds a tenant's L1 root key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CoreProviderKind {
    /// Wrapped by the cluster master key and replicated in governance state.
    SealedLocal,
    /// A transit key in the tenant's Vault/OpenBao namespace.
    Vault,
}

impl CoreProviderKind {
    pub const ALL: [CoreProviderKind; 2] = [CoreProviderKind::SealedLocal, CoreProviderKind::Vault];

    pub fn as_str(self) -> &'static str {
        match self {
            CoreProviderKind::SealedLocal => "sealed-local",
            CoreProviderKind::Vault => "vault",
        }
    }

    /// The kind named `name` (as [`CoreProviderKind::as_str`] spells it).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// A tenant's key roots: where its L1 lives and its L2 key-encryption key, wrapped under L1.
/// Removed when the tenant is deleted, which crypto-shreds everything below it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantCustody {
    pub provider: CoreProviderKind,
    /// The provider's reference to the L1 root: for `SealedLocal` the root itself wrapped by
    /// the master key; for `Vault` the namespace and transit key name.
    pub root: Vec<u8>,
    /// The L2 tenant KEK wrapped under L1.
    pub kek_wrapped: Vec<u8>,
    /// Keys ever created for the tenant, destroyed ones included (bounds the tenant's keys).
    pub keys_created: u64,
}

impl std::fmt::Debug for TenantCustody {
    // Wrapped material is not secret, but it has no business in logs either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantCustody")
            .field("provider", &self.provider)
            .field("keys_created", &self.keys_created)
            .finish_non_exhaustive()
    }
}

/// A deleted tenant's root still held by a provider outside governance state (Vault): kept
/// until the leader has destroyed it there and recorded so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingShred {
    pub tenant: TenantId,
    pub provider: CoreProviderKind,
    /// The provider's reference to the root (for Vault: namespace and key name; no material).
    pub root: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyPurpose {
    EncryptDecrypt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    Aes256Gcm,
}

/// The lifecycle of an L3 key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    Enabled,
    /// Refuses every operation until enabled again.
    Disabled,
    /// Refuses every operation; destroyed at `at_ms` unless cancelled first.
    DestroyScheduled {
        at_ms: u64,
    },
    /// Material gone; the id is never reused.
    Destroyed,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Enabled => "enabled",
            KeyState::Disabled => "disabled",
            KeyState::DestroyScheduled { .. } => "destroy_scheduled",
            KeyState::Destroyed => "destroyed",
        }
    }
}

/// An L3 key's metadata. Its versions' wrapped material is stored beside it, one record per
/// version, so that reading the metadata on every operation stays cheap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub tenant: TenantId,
    pub id: KeyId,
    pub purpose: KeyPurpose,
    pub algorithm: KeyAlgorithm,
    pub state: KeyState,
    /// Versions run from 1 to `latest_version`; encryption uses the latest.
    pub latest_version: u32,
    /// Ciphertexts of older versions are refused.
    pub min_decryption_version: u32,
    /// Rotate automatically once the latest version is this old.
    pub rotation_period_ms: Option<u64>,
    pub created_at_ms: u64,
    /// When the latest version was created.
    pub rotated_at_ms: u64,
    pub updated_at_ms: u64,
    /// Log index of the last change.
    pub revision: u64,
}

impl KeyRecord {
    /// When the rotation policy asks for the next version, if it has one.
    pub fn rotation_due_at_ms(&self) -> Option<u64> {
        match self.state {
            KeyState::Enabled => self.rotation_period_ms.map(|p| self.rotated_at_ms.saturating_add(p)),
            _ => None,
        }
    }
}

/// One version of an L3 key: its material wrapped under the tenant KEK.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVersion {
    pub version: u32,
    pub created_at_ms: u64,
    pub wrapped: Vec<u8>,
}

impl std::fmt::Debug for KeyVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVersion").field("version", &self.version).finish_non_exhaustive()
    }
}

/// A change to an L3 key's settings or lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyChange {
    Enable,
    Disable,
    /// Settings, changed together or not at all; `None` leaves a setting as it is.
    Configure {
        min_decryption_version: Option<u32>,
        /// `Some(None)` turns automatic rotation off.
        rotation_period_ms: Option<Option<u64>>,
    },
    /// Destroy `delay_ms` after the change is proposed; the key refuses operations meanwhile.
    /// A delay rather than a time, so the proposal's own clock reading anchors it and a
    /// retried request is the same command.
    ScheduleDestroy {
        delay_ms: u64,
    },
    /// Back to enabled.
    CancelDestroy,
}

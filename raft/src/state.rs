//! The governance data model as stored in the state machine.

use serde::{Deserialize, Serialize};

use crate::types::{RegionLabel, TenantId};

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

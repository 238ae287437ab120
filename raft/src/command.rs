//! The write commands of the governance state machine and their outcomes.
//!
//! A [`Proposal`] is what goes into the Raft log. It carries the client's [`RequestId`] (for
//! exactly-once apply) and the leader-assigned time, so that applying it is deterministic on
//! every node: the state machine never reads a clock.

use serde::{Deserialize, Serialize};

use crate::state::{Tenant, TenantStatus};
use crate::types::{RegionLabel, RequestId, TenantId};

/// One entry of application data in the Raft log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub request_id: RequestId,
    /// Milliseconds since the Unix epoch, read by the node that accepted the request.
    pub proposed_at_ms: u64,
    pub command: Command,
}

/// The application data of one Raft log entry: proposals the leader batched together. They are
/// applied in order, atomically, each with its own outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposals(pub Vec<Proposal>);

impl Proposal {
    /// A cheap upper estimate of the encoded size, used to bound batches.
    pub fn approx_bytes(&self) -> usize {
        let strings = match &self.command {
            Command::SetAdminToken { .. } => 32,
            Command::CreateTenant { id, display_name, region } => {
                id.as_str().len() + display_name.len() + region.as_str().len()
            }
            Command::SetTenantStatus { id, .. } | Command::DeleteTenant { id } => id.as_str().len(),
        };
        64 + self.request_id.as_str().len() + strings
    }
}

/// Every change to governance state. Variants are verbs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Records the SHA-256 of the bootstrap admin token. Accepted once, at cluster init.
    SetAdminToken {
        token_sha256: [u8; 32],
    },
    CreateTenant {
        id: TenantId,
        display_name: String,
        region: RegionLabel,
    },
    SetTenantStatus {
        id: TenantId,
        status: TenantStatus,
    },
    /// Tombstones the tenant: it stays listed as deleted and its id is never reused.
    DeleteTenant {
        id: TenantId,
    },
}

impl Command {
    /// Name used in traces and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::SetAdminToken { .. } => "set_admin_token",
            Command::CreateTenant { .. } => "create_tenant",
            Command::SetTenantStatus { .. } => "set_tenant_status",
            Command::DeleteTenant { .. } => "delete_tenant",
        }
    }
}

/// What applying one log entry produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub outcome: Result<Output, Rejection>,
    /// True when this request id had already been applied and the stored outcome was returned.
    pub replayed: bool,
}

/// The successful result of a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Output {
    Done,
    Tenant(Tenant),
}

/// A command the state machine refused. Deterministic: every node refuses it the same way.
/// These are the caller's fault and map to 4xx at the API edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("tenant {0} already exists")]
    TenantExists(TenantId),
    #[error("tenant {0} does not exist")]
    TenantNotFound(TenantId),
    #[error("tenant {0} has been deleted")]
    TenantDeleted(TenantId),
    #[error("a deleted tenant cannot be given status {0:?}; deletion is final")]
    InvalidStatus(TenantStatus),
    #[error("the admin token has already been set")]
    AdminTokenAlreadySet,
    #[error("request id {0} was already used for a different command")]
    RequestIdReused(RequestId),
}

//! Audit events carried in the Raft log with their commands (`Command::Audited`).
//!
//! Applying an audited command keeps its event under `g/<origin be><index be><slot be>`
//! with the outcome, on every node and in snapshots, until the origin — the node that took the
//! request and records the event in its own audit outbox — reports it recorded
//! (`Command::AuditRecorded`). A governance change and its audit event so become durable with
//! the same log flush, and the event survives its origin's crash, disk loss or snapshot
//! install.

use std::ops::Bound;

use openraft::StorageError;

use super::state_machine::{prefix_end, Txn};
use crate::command::{CarriedAudit, CarriedEvent, CarriedPosition, Response, MAX_CARRIED_DROPPED_PER_APPLY};
use crate::types::NodeId;

pub(crate) const CARRIED_PREFIX: &[u8] = b"g/";

/// `g/<origin>`: every event an origin carried, in log order.
pub(crate) fn origin_prefix(origin: NodeId) -> Vec<u8> {
    [CARRIED_PREFIX, &origin.to_be_bytes()[..]].concat()
}

pub(crate) fn carried_key(origin: NodeId, position: CarriedPosition) -> Vec<u8> {
    [&origin_prefix(origin)[..], &position.index.to_be_bytes()[..], &position.slot.to_be_bytes()[..]].concat()
}

/// The exclusive end of an origin's events (its prefix is not '/'-terminated).
pub(crate) fn origin_end(origin: NodeId) -> Bound<Vec<u8>> {
    match origin.checked_add(1) {
        Some(next) => Bound::Excluded(origin_prefix(next)),
        None => prefix_end(CARRIED_PREFIX),
    }
}

/// Keeps the event of an audited command with how the command ended.
pub(super) fn keep(
    txn: &mut Txn,
    audit: &CarriedAudit,
    position: CarriedPosition,
    response: &Response,
) -> Result<(), StorageError<NodeId>> {
    let event = CarriedEvent {
        position,
        event: audit.event.clone(),
        rejection: response.outcome.as_ref().err().cloned(),
        replayed: response.replayed,
    };
    txn.put(carried_key(audit.origin, position), &event)
}

/// Drops `origin`'s events up to and including `through`, at most
/// [`MAX_CARRIED_DROPPED_PER_APPLY`] of them.
pub(super) fn drop_recorded(
    txn: &mut Txn,
    origin: NodeId,
    through: CarriedPosition,
) -> Result<(), StorageError<NodeId>> {
    let end = Bound::Included(carried_key(origin, through));
    for (key, _) in txn.range(&origin_prefix(origin), end, MAX_CARRIED_DROPPED_PER_APPLY)? {
        txn.delete(key);
    }
    Ok(())
}

//! The custody actor of one tenant: owns the tenant's cached working keys on this node and
//! runs the tenant's key schedule (rotation and destruction) when this node leads.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use custos_raft::{Command, KeyId, KeyRecord, KeyState, Proposal, RequestId, TenantId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::service::Custody;
use crate::Proposer;

/// Keys examined per schedule tick, so one tick never does unbounded work.
const KEYS_PER_TICK: usize = 256;

#[derive(Debug)]
pub enum CustodyMsg {
    /// Runs the key schedule; sent periodically.
    Tick,
    Health(RpcReplyPort<()>),
    /// Fails the actor: the test-only fault hook.
    #[cfg(test)]
    InjectFault,
}

pub struct CustodyArgs {
    pub tenant: TenantId,
    pub custody: Arc<Custody>,
    pub proposer: Option<Arc<dyn Proposer>>,
    pub interval: Duration,
}

pub struct CustodyState {
    args: CustodyArgs,
    /// Where the next schedule tick resumes in the tenant's keys.
    cursor: Option<KeyId>,
}

pub struct CustodyActor;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The scheduled command a key needs now, if any. Request ids name the key's state, so the
/// same due work proposed twice (by two ticks, or a new leader) is applied once.
async fn due_command(
    custody: &Custody,
    record: &KeyRecord,
    now: u64,
) -> Result<Option<(String, Command)>, super::CustodyError> {
    let (tenant, key) = (record.tenant.clone(), record.id.clone());
    if let KeyState::DestroyScheduled { at_ms } = record.state {
        if at_ms <= now {
            let id = format!("schedule/destroy/{tenant}/{key}/{at_ms}");
            return Ok(Some((id, Command::DestroyKey { tenant, key })));
        }
    }
    if record.rotation_due_at_ms().is_some_and(|due| due <= now) {
        let latest = record.latest_version;
        let material = custody.new_key_material(&tenant, &key, latest + 1).await?;
        let id = format!("schedule/rotate/{tenant}/{key}/{latest}");
        return Ok(Some((id, Command::RotateKey { tenant, key, expected_latest: latest, material })));
    }
    Ok(None)
}

impl CustodyState {
    async fn tick(&mut self) {
        let Some(proposer) = self.args.proposer.clone() else { return };
        if !proposer.is_leader() {
            return;
        }
        let tenant = &self.args.tenant;
        let page = match self.args.custody.reader().keys(tenant, self.cursor.as_ref(), KEYS_PER_TICK) {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(tenant_id = %tenant, error = %e, "reading keys for the key schedule failed");
                return;
            }
        };
        self.cursor = if page.len() == KEYS_PER_TICK { page.last().map(|k| k.id.clone()) } else { None };
        let now = now_ms();
        for record in page {
            let command = match due_command(&self.args.custody, &record, now).await {
                Ok(Some(command)) => command,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(tenant_id = %tenant, key_id = %record.id, error = %e, "scheduled key work failed");
                    continue;
                }
            };
            let (request_id, command) = command;
            let kind = command.kind();
            let Ok(request_id) = RequestId::new(request_id) else { continue };
            let proposal = Proposal { request_id, proposed_at_ms: now, command };
            match proposer.propose(proposal).await {
                Ok(()) => {
                    tracing::info!(tenant_id = %tenant, key_id = %record.id, command = kind, "scheduled key work done")
                }
                Err(e) => {
                    tracing::warn!(tenant_id = %tenant, key_id = %record.id, error = %e, "scheduled key work refused")
                }
            }
        }
    }
}

impl Actor for CustodyActor {
    type Msg = CustodyMsg;
    type State = CustodyState;
    type Arguments = CustodyArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CustodyMsg>,
        args: CustodyArgs,
    ) -> Result<CustodyState, ActorProcessingErr> {
        // A (re)started actor rebuilds from governance state: nothing cached survives it.
        args.custody.edge().evict_tenant(&args.tenant);
        myself.send_interval(args.interval, || CustodyMsg::Tick);
        tracing::debug!(tenant_id = %args.tenant, "custody actor started");
        Ok(CustodyState { args, cursor: None })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<CustodyMsg>,
        state: &mut CustodyState,
    ) -> Result<(), ActorProcessingErr> {
        state.args.custody.edge().evict_tenant(&state.args.tenant);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<CustodyMsg>,
        message: CustodyMsg,
        state: &mut CustodyState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CustodyMsg::Tick => state.tick().await,
            CustodyMsg::Health(reply) => {
                // The caller may have timed out; nothing to do then.
                let _ = reply.send(());
            }
            #[cfg(test)]
            CustodyMsg::InjectFault => return Err("fault injected".into()),
        }
        Ok(())
    }
}

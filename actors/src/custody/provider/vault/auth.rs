//! Logging in to Vault, keeping the token fresh, and giving it back.
//!
//! [`VaultAdapter`] is a node-level actor: every second it makes sure there is a token, renews
//! it once two thirds of its TTL have passed, and logs in again when renewal fails or Vault
//! refused the token. A token it obtained itself is revoked when the adapter stops.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use vaultrs::api::AuthInfo;
use zeroize::Zeroizing;

use super::{unavailable, TokenState, VaultShared};
use crate::custody::provider::ProviderError;

/// How often the adapter checks its token.
const TICK: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub enum TokenSource {
    File(PathBuf),
    /// The name of an environment variable.
    Env(String),
}

#[derive(Debug, Clone)]
pub enum AuthSettings {
    Token { source: TokenSource },
    AppRole { mount: String, role_id: String, secret_id_file: PathBuf },
    Kubernetes { mount: String, role: String, jwt_file: PathBuf },
}

fn read_secret(path: &PathBuf) -> Result<Zeroizing<String>, ProviderError> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| unavailable(format!("reading {}: {e}", path.display())))?,
    );
    Ok(Zeroizing::new(text.trim().to_string()))
}

impl VaultShared {
    /// Obtains a fresh token by the configured method and installs it.
    pub(super) async fn login(&self) -> Result<(), ProviderError> {
        let (token, ttl, renewable, ours) = match &self.settings.auth {
            AuthSettings::Token { source } => {
                let token = match source {
                    TokenSource::File(path) => read_secret(path)?,
                    TokenSource::Env(name) => Zeroizing::new(
                        std::env::var(name)
                            .map_err(|_| unavailable(format!("environment variable {name} is not set")))?,
                    ),
                };
                let client = self.build_client(None, &token)?;
                let info = self.call("token lookup", vaultrs::token::lookup_self(&client)).await?;
                let ttl = (info.ttl > 0).then(|| Duration::from_secs(info.ttl));
                (token, ttl, info.renewable.unwrap_or(false), false)
            }
            AuthSettings::AppRole { mount, role_id, secret_id_file } => {
                let secret_id = read_secret(secret_id_file)?;
                let client = self.build_client(None, "")?;
                let info = self
                    .call("AppRole login", vaultrs::auth::approle::login(&client, mount, role_id, &secret_id))
                    .await?;
                let (token, ttl, renewable) = from_auth(info);
                (token, ttl, renewable, true)
            }
            AuthSettings::Kubernetes { mount, role, jwt_file } => {
                let jwt = read_secret(jwt_file)?;
                let client = self.build_client(None, "")?;
                let info =
                    self.call("Kubernetes login", vaultrs::auth::kubernetes::login(&client, mount, role, &jwt)).await?;
                let (token, ttl, renewable) = from_auth(info);
                (token, ttl, renewable, true)
            }
        };
        let (generation, replaced) = {
            let mut state = self.token.write().unwrap_or_else(|p| p.into_inner());
            let generation = state.as_ref().map_or(1, |s| s.generation + 1);
            let new = TokenState { token, generation, obtained: Instant::now(), ttl, renewable, ours };
            let replaced = state.replace(new).filter(|old| old.ours).map(|old| old.token);
            (generation, replaced)
        };
        self.relogin.store(false, Ordering::Relaxed);
        tracing::info!(generation, ttl_secs = ttl.map(|t| t.as_secs()), "logged in to Vault");
        // The token this login replaces was ours: it is revoked on the next tick (calls still
        // holding it finish first) rather than left live to its TTL.
        if let Some(old) = replaced {
            self.retired.lock().unwrap_or_else(|p| p.into_inner()).push(old);
        }
        Ok(())
    }

    /// Revokes the tokens earlier logins replaced.
    async fn revoke_retired(&self) {
        let retired = std::mem::take(&mut *self.retired.lock().unwrap_or_else(|p| p.into_inner()));
        for old in retired {
            let Ok(client) = self.build_client(None, &old) else { continue };
            if let Err(e) = self.call("revoking a replaced token", vaultrs::token::revoke_self(&client)).await {
                tracing::warn!(error = %e, "revoking a replaced Vault token failed; it expires with its TTL");
            }
        }
    }

    /// Renews the token if two thirds of its TTL have passed; logs in again if there is no
    /// token, Vault refused it, or renewal failed.
    pub(super) async fn maintain(&self) -> Result<(), ProviderError> {
        self.revoke_retired().await;
        let due = {
            let state = self.token.read().unwrap_or_else(|p| p.into_inner());
            state.as_ref().map(|s| match s.ttl {
                // Two ticks of margin as well: with a short TTL, two thirds of it may fall on
                // the tick at which the token expires.
                Some(ttl) => {
                    let elapsed = s.obtained.elapsed();
                    (elapsed >= ttl * 2 / 3 || elapsed + 2 * TICK >= ttl, s.renewable, s.token.clone())
                }
                None => (false, false, s.token.clone()),
            })
        };
        let relogin = self.relogin.load(Ordering::Relaxed);
        match due {
            None => self.login().await,
            Some(_) if relogin => self.login().await,
            Some((true, true, token)) => {
                let client = self.build_client(None, &token)?;
                match self.call("token renewal", vaultrs::token::renew_self(&client, None)).await {
                    Ok(info) => {
                        let granted = (info.lease_duration > 0).then(|| Duration::from_secs(info.lease_duration));
                        let ours = {
                            let mut state = self.token.write().unwrap_or_else(|p| p.into_inner());
                            let Some(s) = state.as_mut() else { return Ok(()) };
                            s.obtained = Instant::now();
                            s.ttl = granted;
                            s.renewable = info.renewable;
                            s.ours
                        };
                        // Renewal stops extending a token near its maximum TTL; a token of our
                        // own login is replaced before it can expire between two ticks.
                        if ours && granted.is_some_and(|ttl| ttl <= 2 * TICK) {
                            return self.login().await;
                        }
                        Ok(())
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "renewing the Vault token failed; logging in again");
                        self.login().await
                    }
                }
            }
            // Not renewable and near its end: only a new login helps.
            Some((true, false, _)) => self.login().await,
            Some((false, _, _)) => Ok(()),
        }
    }

    /// Revokes a token obtained by our own login (and any it replaced).
    pub(super) async fn revoke(&self) {
        self.revoke_retired().await;
        let token = {
            let state = self.token.read().unwrap_or_else(|p| p.into_inner());
            match state.as_ref() {
                Some(s) if s.ours => s.token.clone(),
                _ => return,
            }
        };
        let Ok(client) = self.build_client(None, &token) else { return };
        match self.call("token revocation", vaultrs::token::revoke_self(&client)).await {
            Ok(()) => tracing::info!("revoked the Vault token"),
            Err(e) => tracing::warn!(error = %e, "revoking the Vault token failed; it expires with its TTL"),
        }
    }
}

fn from_auth(info: AuthInfo) -> (Zeroizing<String>, Option<Duration>, bool) {
    let ttl = (info.lease_duration > 0).then(|| Duration::from_secs(info.lease_duration));
    (Zeroizing::new(info.client_token), ttl, info.renewable)
}

#[derive(Debug)]
pub enum VaultAdapterMsg {
    Tick,
}

/// Keeps the Vault token fresh for every tenant's client.
pub struct VaultAdapter;

impl Actor for VaultAdapter {
    type Msg = VaultAdapterMsg;
    type State = Arc<VaultShared>;
    type Arguments = Arc<VaultShared>;

    async fn pre_start(
        &self,
        myself: ActorRef<VaultAdapterMsg>,
        shared: Arc<VaultShared>,
    ) -> Result<Arc<VaultShared>, ActorProcessingErr> {
        myself.send_interval(TICK, || VaultAdapterMsg::Tick);
        // Log in at once rather than a tick later.
        let _ = myself.cast(VaultAdapterMsg::Tick);
        Ok(shared)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<VaultAdapterMsg>,
        shared: &mut Arc<VaultShared>,
    ) -> Result<(), ActorProcessingErr> {
        shared.revoke().await;
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<VaultAdapterMsg>,
        message: VaultAdapterMsg,
        shared: &mut Arc<VaultShared>,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            VaultAdapterMsg::Tick => {
                if let Err(e) = shared.maintain().await {
                    tracing::warn!(error = %e, "Vault authentication failed; retrying");
                }
            }
        }
        Ok(())
    }
}

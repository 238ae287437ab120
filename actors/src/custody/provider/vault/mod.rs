//! `vault`: each tenant's L1 root is a transit key (aes256-gcm96) in the tenant's own
//! Vault/OpenBao namespace, `<namespace_prefix>/<tenant>`, which Custos provisions itself. The
//! KEK is wrapped and unwrapped by transit, with the tenant id bound as associated data, so
//! the root never leaves Vault; deleting the tenant deletes its namespace.
//!
//! - `mod.rs` — [`VaultProvider`] and the state it shares with the adapter actor: the token,
//!   one client per namespace, the circuit breaker.
//! - `auth.rs` — login (token, AppRole, Kubernetes), renewal, revocation, and the
//!   [`VaultAdapter`] actor that keeps the token fresh.
//! - `breaker.rs` — the circuit breaker.
//! - `tls.rs` — which server certificates are accepted: the pinned CA (or the system's roots),
//!   and pinned certificate digests when configured.

mod auth;
mod breaker;
mod tls;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use custos_raft::{CoreProviderKind, TenantId};
use serde::{Deserialize, Serialize};
use vaultrs::api::EndpointMiddleware;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

pub use auth::{AuthSettings, TokenSource, VaultAdapter, VaultAdapterMsg};
use breaker::Breaker;

use super::{CoreStorageProvider, ProviderError, ProviderHealth};
use crate::custody::crypto::{labelled_aad, SecretKey};

const NAME: &str = "vault";

/// Everything the provider needs to reach Vault.
#[derive(Debug, Clone)]
pub struct VaultSettings {
    pub address: String,
    /// The only CA trusted for the server's certificate; the system's roots if None.
    pub ca_file: Option<PathBuf>,
    /// When not empty, the server's certificate must also have one of these SHA-256 digests.
    pub server_cert_sha256: Vec<[u8; 32]>,
    pub namespace_prefix: String,
    pub transit_mount: String,
    pub root_key_name: String,
    pub auth: AuthSettings,
    pub timeout: Duration,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
}

/// What governance state keeps about a tenant's root: where it lives in Vault.
#[derive(Debug, Serialize, Deserialize)]
struct VaultRoot {
    namespace: String,
    mount: String,
    key: String,
}

struct TokenState {
    token: Zeroizing<String>,
    /// Bumped on every new token, so cached clients are rebuilt.
    generation: u64,
    obtained: Instant,
    ttl: Option<Duration>,
    renewable: bool,
    /// Obtained by our own login (so ours to revoke), rather than supplied.
    ours: bool,
}

/// State shared by the provider and the adapter actor.
pub struct VaultShared {
    settings: VaultSettings,
    token: RwLock<Option<TokenState>>,
    breaker: Mutex<Breaker>,
    /// Set when Vault refused the token; the adapter logs in again on its next tick.
    relogin: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// Tokens of our own logins that a newer login replaced, revoked on the next tick.
    retired: Mutex<Vec<Zeroizing<String>>>,
    clients: Mutex<HashMap<String, (u64, Arc<VaultClient>)>>,
    /// For the namespace API, which vaultrs does not cover.
    http: reqwest::Client,
    /// What vaultrs sends through (the reqwest release it is built on): the same TLS
    /// configuration as `http`, one connection pool for every namespace.
    vault_http: reqwest13::Client,
}

/// An error with its causes ("sending the request: … : invalid peer certificate …"): HTTP
/// clients keep the reason a connection failed in the source chain.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let next = e.to_string();
        if !text.contains(&next) {
            text = format!("{text}: {next}");
        }
        cause = e.source();
    }
    text
}

fn unavailable(reason: impl Into<String>) -> ProviderError {
    ProviderError::Unavailable { provider: NAME, reason: reason.into() }
}

impl VaultShared {
    pub fn new(settings: VaultSettings) -> Result<Arc<Self>, ProviderError> {
        let mut http = reqwest::Client::builder().timeout(settings.timeout).redirect(reqwest::redirect::Policy::none());
        // Redirects are followed (a standby may send a request to the active node), never to
        // plain http with the token.
        let mut vault_http = reqwest13::Client::builder().timeout(settings.timeout);
        if settings.address.starts_with("https://") {
            let tls =
                tls::client_config(settings.ca_file.as_deref(), &settings.server_cert_sha256).map_err(unavailable)?;
            http = http.use_preconfigured_tls(tls.clone()).https_only(true);
            vault_http = vault_http.use_preconfigured_tls(tls).https_only(true);
        } else {
            // Plain http needs no roots; without this, reqwest loads the system's anyway.
            vault_http = vault_http.tls_certs_only(Vec::new());
        }
        let http = http.build().map_err(|e| unavailable(format!("building the HTTP client: {e}")))?;
        let vault_http = vault_http.build().map_err(|e| unavailable(format!("building the Vault client: {e}")))?;
        let breaker = Breaker::new(settings.breaker_failures, settings.breaker_cooldown);
        Ok(Arc::new(VaultShared {
            settings,
            token: RwLock::new(None),
            breaker: Mutex::new(breaker),
            relogin: AtomicBool::new(false),
            last_error: Mutex::new(None),
            retired: Mutex::new(Vec::new()),
            clients: Mutex::new(HashMap::new()),
            http,
            vault_http,
        }))
    }

    /// A vaultrs client for `namespace` (the root namespace if None) with `token`.
    fn build_client(&self, namespace: Option<&str>, token: &str) -> Result<VaultClient, ProviderError> {
        let s = &self.settings;
        let mut builder = VaultClientSettingsBuilder::default();
        builder
            .address(&s.address)
            .token(token)
            .timeout(Some(s.timeout))
            // Not read from VAULT_CACERT or VAULT_SKIP_VERIFY: TLS is `vault_http`'s.
            .verify(true)
            .ca_certs(Vec::new())
            .namespace(namespace.map(str::to_string));
        let settings = builder.build().map_err(|e| unavailable(format!("client settings: {e}")))?;
        // Assembled as `VaultClient::new` does, but on our HTTP client: the one vaultrs builds
        // trusts the system's roots besides `ca_file`, and cannot pin a certificate.
        let middle = EndpointMiddleware {
            token: settings.token.clone(),
            version: format!("v{}", settings.version),
            wrap: None,
            namespace: settings.namespace.clone(),
        };
        let http = rustify::clients::reqwest::Client::new(settings.address.as_str(), self.vault_http.clone());
        Ok(VaultClient { http, middle, settings })
    }

    /// The cached client for `namespace`, rebuilt when the token changed.
    fn client(&self, namespace: &str) -> Result<Arc<VaultClient>, ProviderError> {
        let token = self.token.read().unwrap_or_else(|p| p.into_inner());
        let Some(state) = token.as_ref() else {
            return Err(unavailable("not logged in to Vault yet"));
        };
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((generation, client)) = clients.get(namespace) {
            if *generation == state.generation {
                return Ok(client.clone());
            }
        }
        let client = Arc::new(self.build_client(Some(namespace), &state.token)?);
        clients.insert(namespace.to_string(), (state.generation, client.clone()));
        Ok(client)
    }

    fn record(&self, error: Option<String>) {
        let now = Instant::now();
        let mut breaker = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        match &error {
            None => breaker.success(),
            Some(_) => breaker.failure(now),
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }

    /// Runs one Vault call through the breaker and the deadline, sorting its failure: Vault
    /// unreachable or failing (counts against the breaker), the token refused (asks the
    /// adapter to log in again), or Vault refusing the material itself.
    async fn call<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ProviderError> {
        if self.breaker.lock().unwrap_or_else(|p| p.into_inner()).is_open(Instant::now()) {
            return Err(unavailable("circuit breaker open after repeated failures; retrying after the cooldown"));
        }
        let outcome = tokio::time::timeout(self.settings.timeout, call).await;
        match outcome {
            Ok(Ok(value)) => {
                self.record(None);
                Ok(value)
            }
            Ok(Err(ClientError::APIError { code: 400, errors })) => {
                // Vault answered: the material does not open. Not an availability problem.
                self.record(None);
                Err(ProviderError::Unwrap { provider: NAME, reason: format!("{what}: {}", errors.join("; ")) })
            }
            Ok(Err(ClientError::APIError { code, errors })) if code == 401 || code == 403 => {
                self.relogin.store(true, Ordering::Relaxed);
                let reason = format!("{what}: Vault refused the token ({code}: {})", errors.join("; "));
                self.record(Some(reason.clone()));
                Err(unavailable(reason))
            }
            Ok(Err(e)) => {
                let reason = format!("{what}: {}", with_causes(&e));
                self.record(Some(reason.clone()));
                Err(unavailable(reason))
            }
            Err(_) => {
                let reason = format!("{what}: no answer within {:?}", self.settings.timeout);
                self.record(Some(reason.clone()));
                Err(unavailable(reason))
            }
        }
    }

    /// Creates (or keeps) the namespace `name` under `parent`.
    async fn ensure_namespace(&self, parent: Option<&str>, name: &str) -> Result<(), ProviderError> {
        self.namespace_request(reqwest::Method::POST, parent, name).await
    }

    async fn namespace_request(
        &self,
        method: reqwest::Method,
        parent: Option<&str>,
        name: &str,
    ) -> Result<(), ProviderError> {
        let token = {
            let guard = self.token.read().unwrap_or_else(|p| p.into_inner());
            match guard.as_ref() {
                Some(state) => state.token.clone(),
                None => return Err(unavailable("not logged in to Vault yet")),
            }
        };
        let url = format!("{}/v1/sys/namespaces/{name}", self.settings.address.trim_end_matches('/'));
        let mut request = self.http.request(method, url).header("X-Vault-Token", token.as_str());
        if let Some(parent) = parent {
            request = request.header("X-Vault-Namespace", parent);
        }
        let what = format!("namespace {}{name}", parent.map(|p| format!("{p}/")).unwrap_or_default());
        self.call(&what, async {
            let response =
                request.send().await.map_err(|e| ClientError::APIError { code: 503, errors: vec![with_causes(&e)] })?;
            let status = response.status().as_u16();
            if (200..300).contains(&status) {
                Ok(())
            } else {
                let body = response.text().await.unwrap_or_default();
                // A refused namespace request is Vault's configuration problem, not bad key
                // material: report it as a failing upstream (502) rather than as 400.
                let code = if status == 400 { 502 } else { status };
                Err(ClientError::APIError { code, errors: vec![body] })
            }
        })
        .await
    }

    fn root_of(&self, tenant: &TenantId) -> VaultRoot {
        let s = &self.settings;
        VaultRoot {
            namespace: format!("{}/{tenant}", s.namespace_prefix),
            mount: s.transit_mount.clone(),
            key: s.root_key_name.clone(),
        }
    }
}

fn parse_root(root: &[u8]) -> Result<VaultRoot, ProviderError> {
    serde_json::from_slice(root)
        .map_err(|e| ProviderError::Unwrap { provider: NAME, reason: format!("unreadable Vault root reference: {e}") })
}

fn kek_aad(tenant: &TenantId) -> String {
    STANDARD.encode(labelled_aad("custos/l2/v1", &[tenant.as_str().as_bytes()]))
}

/// Vault/OpenBao as a [`CoreStorageProvider`].
pub struct VaultProvider {
    shared: Arc<VaultShared>,
}

impl VaultProvider {
    pub fn new(shared: Arc<VaultShared>) -> Self {
        VaultProvider { shared }
    }
}

#[async_trait::async_trait]
impl CoreStorageProvider for VaultProvider {
    fn kind(&self) -> CoreProviderKind {
        CoreProviderKind::Vault
    }

    async fn provision(&self, tenant: &TenantId) -> Result<Vec<u8>, ProviderError> {
        let s = &self.shared;
        let prefix = s.settings.namespace_prefix.as_str();
        s.ensure_namespace(None, prefix).await?;
        s.ensure_namespace(Some(prefix), tenant.as_str()).await?;
        let root = s.root_of(tenant);
        let client = s.client(&root.namespace)?;
        let mounts = s.call("listing mounts", vaultrs::sys::mount::list(client.as_ref())).await?;
        if !mounts.contains_key(&format!("{}/", root.mount)) {
            s.call("enabling transit", vaultrs::sys::mount::enable(client.as_ref(), &root.mount, "transit", None))
                .await?;
        }
        let mut options = vaultrs::api::transit::requests::CreateKeyRequest::builder();
        options.key_type(vaultrs::api::transit::KeyType::Aes256Gcm96);
        s.call(
            "creating the root key",
            vaultrs::transit::key::create(client.as_ref(), &root.mount, &root.key, Some(&mut options)),
        )
        .await?;
        serde_json::to_vec(&root).map_err(|e| unavailable(format!("encoding the root reference: {e}")))
    }

    async fn wrap(&self, tenant: &TenantId, root: &[u8], key: &SecretKey) -> Result<Vec<u8>, ProviderError> {
        let root = parse_root(root)?;
        let client = self.shared.client(&root.namespace)?;
        let plaintext = Zeroizing::new(STANDARD.encode(key.expose()));
        let mut options = vaultrs::api::transit::requests::EncryptDataRequest::builder();
        options.associated_data(kek_aad(tenant));
        let sealed = self
            .shared
            .call(
                "transit encrypt",
                vaultrs::transit::data::encrypt(
                    client.as_ref(),
                    &root.mount,
                    &root.key,
                    &plaintext,
                    Some(&mut options),
                ),
            )
            .await?;
        Ok(sealed.ciphertext.into_bytes())
    }

    async fn unwrap(&self, tenant: &TenantId, root: &[u8], wrapped: &[u8]) -> Result<SecretKey, ProviderError> {
        let root = parse_root(root)?;
        let client = self.shared.client(&root.namespace)?;
        let ciphertext = std::str::from_utf8(wrapped).map_err(|_| ProviderError::Unwrap {
            provider: NAME,
            reason: "wrapped KEK is not a transit ciphertext".into(),
        })?;
        let mut options = vaultrs::api::transit::requests::DecryptDataRequest::builder();
        options.associated_data(kek_aad(tenant));
        let opened = self
            .shared
            .call(
                "transit decrypt",
                vaultrs::transit::data::decrypt(
                    client.as_ref(),
                    &root.mount,
                    &root.key,
                    ciphertext,
                    Some(&mut options),
                ),
            )
            .await?;
        let plaintext = Zeroizing::new(opened.plaintext);
        let mut bytes =
            Zeroizing::new(STANDARD.decode(plaintext.as_bytes()).map_err(|_| ProviderError::Unwrap {
                provider: NAME,
                reason: "transit returned invalid base64".into(),
            })?);
        SecretKey::from_slice(&mut bytes).ok_or_else(|| ProviderError::Unwrap {
            provider: NAME,
            reason: "the unwrapped KEK has the wrong length".into(),
        })
    }

    async fn destroy(&self, _tenant: &TenantId, root: &[u8]) -> Result<(), ProviderError> {
        let root = parse_root(root)?;
        let (parent, name) = root.namespace.rsplit_once('/').unwrap_or(("", root.namespace.as_str()));
        let parent = (!parent.is_empty()).then_some(parent);
        self.shared.namespace_request(reqwest::Method::DELETE, parent, name).await?;
        self.shared.clients.lock().unwrap_or_else(|p| p.into_inner()).remove(&root.namespace);
        Ok(())
    }

    fn health(&self) -> ProviderHealth {
        let s = &self.shared;
        let logged_in = s.token.read().unwrap_or_else(|p| p.into_inner()).is_some();
        let open = s.breaker.lock().unwrap_or_else(|p| p.into_inner()).is_open(Instant::now());
        let last_error = s.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let detail = if !logged_in {
            Some(last_error.unwrap_or_else(|| "not logged in yet".into()))
        } else if open {
            Some(format!("circuit breaker open: {}", last_error.unwrap_or_default()))
        } else {
            last_error
        };
        ProviderHealth { provider: NAME, healthy: logged_in && !open, detail }
    }
}

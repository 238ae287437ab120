//! The client API: HTTPS JSON under `/v1/`, plus `/healthz` and `/readyz`.
//!
//! The path of a request reads like this folder: `mod.rs` admits it (in-flight bound, body
//! limit, deadline), `audit.rs` records its audit event once it is answered (and serves the
//! audit streams) after `auth.rs` has authenticated its credential (and `ratelimit.rs` has
//! admitted an API key), a handler — asking `auth::Caller::authorize` for the permission it
//! needs — in `tenants.rs`, `keys.rs` (key management), `crypto.rs` (encrypt, decrypt, data
//! keys; per-tenant admission), `access.rs` (policy documents, grants, decisions),
//! `apikeys.rs`, `tokens.rs` (platform tokens, JWKS), `login.rs` (OIDC sign-in, sessions),
//! `native.rs` (password and TOTP sign-in), `idp.rs` (a tenant's identity provider),
//! `cluster.rs` or `health.rs` turns it into a [`custos_raft::Proposal`], a read or a key
//! operation, and `error.rs` turns every failure into a JSON error with a machine-readable
//! code. `scim/` serves SCIM 2.0 provisioning under `/scim/v2/{tenant}`, through the same
//! admission, authentication and audit.

mod access;
mod apikeys;
pub mod audit;
pub mod auth;
mod cluster;
mod crypto;
pub mod error;
mod faults;
mod health;
mod idp;
mod keys;
pub mod login;
pub mod metrics;
mod native;
mod ratelimit;
mod scim;
mod tenants;
mod tokens;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;
use custos_actors::audit::Audit;
use custos_actors::custody::Custody;
use custos_actors::identity::TokenService;
use custos_actors::policy::PolicyCache;
use custos_actors::{NodeMsg, TenantDirectory};
use custos_config::{IdentityConfig, LimitsConfig};
use custos_raft::{Cluster, Consistency, RequestId};
use ractor::ActorRef;
use serde::Deserialize;
use tokio::sync::Semaphore;

use self::error::ApiError;

/// Shared by every handler; one reference count to clone per request.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

pub struct AppInner {
    pub cluster: Cluster,
    pub audit: Arc<Audit>,
    /// Whether writes may carry their audit events (`crate::carried`).
    pub carrier: Arc<crate::carried::Carrier>,
    /// This node's per-tenant actor supervisor.
    pub supervisor: ActorRef<NodeMsg>,
    /// Which tenants serve on this node, with their admission bounds.
    pub directory: Arc<TenantDirectory>,
    pub custody: Arc<Custody>,
    pub limits: Arc<LimitsConfig>,
    /// Most items in one batch encrypt or decrypt.
    pub max_batch_items: usize,
    /// Whether `POST /v1/tenants/{tenant}/faults` is routed (`actors.fault_injection`).
    pub fault_injection: bool,
    /// Whether every authenticated read is an audit event (`audit.record_reads`).
    pub record_reads: bool,
    /// The admin token's hash once this node has applied it (it never changes after).
    pub admin_sha256: std::sync::OnceLock<[u8; 32]>,
    in_flight: Arc<Semaphore>,
    /// Live audit tails (`audit::MAX_TAILS`).
    tails: Arc<Semaphore>,
    pub metrics: metrics::Metrics,
    /// Compiled access policies of the tenants, from this node's applied state.
    pub policy: PolicyCache,
    pub rate_limiter: ratelimit::RateLimiter,
    pub identity: IdentityConfig,
    /// Platform tokens: issuing and verifying.
    pub tokens: Arc<TokenService>,
    /// Operator sign-in: the deployment's and the tenants' identity providers.
    pub sign_in: login::SignIn,
    /// Session-activity writes in flight (`auth::touch`).
    pub touches: Arc<Semaphore>,
    /// Password hashing and verification in progress (`native::MAX_HASHING`).
    pub password_work: Arc<Semaphore>,
    /// Failed native sign-ins per name.
    pub login_throttle: native::LoginThrottle,
}

/// What the API is built from.
pub struct AppParts {
    pub cluster: Cluster,
    pub audit: Arc<Audit>,
    pub carrier: Arc<crate::carried::Carrier>,
    pub supervisor: ActorRef<NodeMsg>,
    pub directory: Arc<TenantDirectory>,
    pub custody: Arc<Custody>,
    pub limits: LimitsConfig,
    pub max_batch_items: usize,
    pub fault_injection: bool,
    pub record_reads: bool,
    pub identity: IdentityConfig,
    pub tokens: Arc<TokenService>,
    pub sign_in: login::SignIn,
}

impl AppState {
    pub fn new(parts: AppParts) -> Self {
        let in_flight = Arc::new(Semaphore::new(parts.limits.max_in_flight));
        let metrics = metrics::Metrics::new(
            parts.cluster.clone(),
            parts.audit.clone(),
            parts.custody.clone(),
            parts.directory.clone(),
        );
        let policy = PolicyCache::new(parts.cluster.reader().clone());
        let rate_limiter = ratelimit::RateLimiter::new(&parts.identity);
        AppState(Arc::new(AppInner {
            cluster: parts.cluster,
            audit: parts.audit,
            carrier: parts.carrier,
            supervisor: parts.supervisor,
            directory: parts.directory,
            custody: parts.custody,
            limits: Arc::new(parts.limits),
            max_batch_items: parts.max_batch_items,
            fault_injection: parts.fault_injection,
            record_reads: parts.record_reads,
            admin_sha256: std::sync::OnceLock::new(),
            in_flight,
            tails: Arc::new(Semaphore::new(audit::MAX_TAILS)),
            metrics,
            policy,
            rate_limiter,
            identity: parts.identity,
            tokens: parts.tokens,
            sign_in: parts.sign_in,
            touches: Arc::new(Semaphore::new(MAX_TOUCHES)),
            password_work: Arc::new(Semaphore::new(native::MAX_HASHING)),
            login_throttle: native::LoginThrottle::default(),
        }))
    }
}

pub fn router(state: AppState) -> Router {
    let mut v1 = Router::new()
        .route("/tenants", post(tenants::create).get(tenants::list))
        .route("/tenants/{id}", get(tenants::get).patch(tenants::update).delete(tenants::delete))
        .route("/tenants/{id}/suspend", post(tenants::suspend))
        .route("/tenants/{id}/resume", post(tenants::resume))
        .route("/tenants/{id}/actors", get(tenants::actors))
        .route("/tenants/{tenant}/keys", post(keys::create).get(keys::list))
        .route("/tenants/{tenant}/keys/{key}", get(keys::get))
        .route("/tenants/{tenant}/keys/{key}/rotate", post(keys::rotate))
        .route("/tenants/{tenant}/keys/{key}/config", post(keys::configure))
        .route("/tenants/{tenant}/keys/{key}/enable", post(keys::enable))
        .route("/tenants/{tenant}/keys/{key}/disable", post(keys::disable))
        .route("/tenants/{tenant}/keys/{key}/destroy", post(keys::schedule_destroy).delete(keys::cancel_destroy))
        .route("/tenants/{tenant}/keys/{key}/encrypt", post(crypto::encrypt))
        .route("/tenants/{tenant}/keys/{key}/decrypt", post(crypto::decrypt))
        .route("/tenants/{tenant}/keys/{key}/rewrap", post(crypto::rewrap))
        .route("/tenants/{tenant}/keys/{key}/datakey", post(crypto::data_key))
        .route("/tenants/{tenant}/keys/{key}/encrypt/batch", post(crypto::encrypt_batch))
        .route("/tenants/{tenant}/keys/{key}/decrypt/batch", post(crypto::decrypt_batch))
        .route("/tenants/{tenant}/authorize", post(access::authorize))
        .route("/tenants/{tenant}/policy", get(access::get_policy).put(access::put_policy))
        .route("/tenants/{tenant}/grants", post(access::grant).get(access::list_grants))
        .route("/tenants/{tenant}/grants/{grant}", delete(access::revoke_grant))
        .route("/tenants/{tenant}/identity-provider", get(idp::get).put(idp::put).delete(idp::delete))
        .route("/tenants/{tenant}/users/{user}/totp", post(native::enroll_totp).delete(native::remove_totp))
        .route("/tenants/{tenant}/apikeys", post(apikeys::create).get(apikeys::list))
        .route("/tenants/{tenant}/apikeys/{apikey}", get(apikeys::get))
        .route("/tenants/{tenant}/apikeys/{apikey}/rotate", post(apikeys::rotate))
        .route("/tenants/{tenant}/apikeys/{apikey}/revoke", post(apikeys::revoke))
        .route("/tenants/{tenant}/audit", get(audit::tenant_stream))
        .route("/tenants/{tenant}/audit/tail", get(audit::tail))
        .route("/cluster/audit", get(audit::cluster_stream))
        .route("/auth/token", post(tokens::exchange))
        .route("/auth/login", get(login::login))
        .route("/auth/callback", get(login::callback))
        .route("/auth/logout", post(login::logout))
        .route("/auth/session", get(login::session))
        .route("/auth/native/login", post(native::login))
        .route("/cluster/init", post(cluster::init))
        .route("/cluster/self", get(cluster::node_self))
        .route("/cluster/status", get(cluster::status))
        .route("/cluster/members", post(cluster::add_member))
        .route("/cluster/members/{id}", delete(cluster::remove_member));
    if state.fault_injection {
        v1 = v1.route("/tenants/{tenant}/faults", post(faults::inject));
    }
    // A route layer runs after routing, so the audit middleware sees the matched route.
    let v1 = v1.route_layer(middleware::from_fn_with_state(state.clone(), audit::record));
    Router::new()
        .nest("/v1", v1)
        .nest("/scim/v2", scim::router(&state))
        .route("/.well-known/jwks.json", get(tokens::jwks))
        .route("/.well-known/openid-configuration", get(tokens::discovery))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::scrape))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), admit))
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not accept that method")
}

/// Admission control: a bounded number of requests in flight (excess gets 429 at once) and a
/// deadline per request (504; a write may still commit, so clients retry with the same
/// Idempotency-Key).
async fn admit(State(state): State<AppState>, request: Request, next: Next) -> Result<Response, ApiError> {
    let Ok(_permit) = state.in_flight.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            format!("more than {} requests in flight on this node", state.limits.max_in_flight),
        ));
    };
    let deadline = Duration::from_millis(state.limits.request_timeout_ms);
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => Ok(response),
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "the request did not complete in time; a write may still be applied, retry it with the same Idempotency-Key",
        )),
    }
}

/// `?consistency=` on reads.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReadConsistency {
    #[default]
    Linearizable,
    Stale,
}

impl From<ReadConsistency> for Consistency {
    fn from(c: ReadConsistency) -> Self {
        match c {
            ReadConsistency::Linearizable => Consistency::Linearizable,
            ReadConsistency::Stale => Consistency::Stale,
        }
    }
}

pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Most session-activity writes in flight on a node.
const MAX_TOUCHES: usize = 32;

/// Tenant `id` as this node has applied it. One missing here may have been created through
/// another node and not be applied here yet: it is looked up again after a linearizable read
/// barrier (if the barrier fails, the miss stands), so `None` means it exists nowhere.
pub async fn applied_tenant(
    state: &AppState,
    id: &custos_raft::TenantId,
) -> Result<Option<custos_raft::Tenant>, ApiError> {
    let tenant = state.cluster.reader().tenant(id)?;
    if tenant.is_some() || state.cluster.read_barrier(custos_raft::Consistency::Linearizable).await.is_err() {
        return Ok(tenant);
    }
    Ok(state.cluster.reader().tenant(id)?)
}

/// The page size of a list: `requested`, or 100 (at most `limits.max_batch`) when absent.
pub fn page_limit(state: &AppState, requested: Option<usize>) -> Result<usize, ApiError> {
    let max = state.limits.max_batch;
    let limit = requested.unwrap_or(max.min(100));
    if limit == 0 || limit > max {
        return Err(ApiError::bad_request("invalid_query", format!("limit must be between 1 and {max}")));
    }
    Ok(limit)
}

/// Replicates one command under the request's id and renders what it produced with `render`,
/// marking replays of an earlier attempt with `Idempotent-Replayed: true`.
pub async fn replicate<T: serde::Serialize>(
    state: &AppState,
    headers: &HeaderMap,
    command: custos_raft::Command,
    status: StatusCode,
    render: impl FnOnce(custos_raft::Output) -> Option<T>,
) -> Result<Response, ApiError> {
    let (command, carrying) = audit::carry(state, command, status);
    let proposal = custos_raft::Proposal { request_id: request_id(headers)?, proposed_at_ms: now_ms(), command };
    let response = state.cluster.write(proposal).await?;
    if carrying {
        audit::carried();
    }
    let body = render(response.outcome?)
        .ok_or_else(|| ApiError::internal("the state machine answered a command with the wrong kind of result"))?;
    let mut http = axum::response::IntoResponse::into_response((status, axum::Json(body)));
    if response.replayed {
        http.headers_mut().insert("idempotent-replayed", axum::http::HeaderValue::from_static("true"));
    }
    Ok(http)
}

/// Most attempts of a read-change-write that loses compare-and-set races.
const MAX_CAS_ATTEMPTS: u32 = 4;

/// The attempts of a read-change-write that loses compare-and-set races: each attempt reads the
/// current version, changes it and proposes the change only while that version is current; a
/// beaten attempt (`stale_version`) is tried again, up to [`MAX_CAS_ATTEMPTS`] times, unless
/// the client named the version itself. Attempt `n` writes under `<request id>/<n>`: each
/// attempt is a new write, yet a client's retry of the whole request replays the same ids.
pub struct CasAttempts {
    first: RequestId,
    retry: bool,
    made: u32,
}

impl CasAttempts {
    pub fn new(headers: &HeaderMap, retry: bool) -> Result<CasAttempts, ApiError> {
        Ok(CasAttempts { first: request_id(headers)?, retry, made: 0 })
    }

    /// The request id of the next attempt; an error once every attempt was beaten.
    pub fn next_id(&mut self) -> Result<RequestId, ApiError> {
        self.made += 1;
        match self.made {
            1 => Ok(self.first.clone()),
            n if n <= MAX_CAS_ATTEMPTS => Ok(RequestId::new(format!("{}/{}", self.first.as_str(), n - 1))?),
            _ => Err(ApiError::new(
                StatusCode::CONFLICT,
                "write_conflict",
                "the resource kept changing while it was written; retry",
            )),
        }
    }

    /// Whether the failure of an attempt calls for another.
    pub fn again(&self, error: &ApiError) -> bool {
        self.retry && error.code == "stale_version"
    }
}

/// The request id of a write: the client's Idempotency-Key, or a fresh one. Generated here, at
/// the first node, so forwarding and internal retries reuse it. A fresh id is a UUIDv7: ids
/// made later sort later, so the state machine's request records grow at one end of their key
/// range and expire from the other, instead of rewriting pages all over it.
pub fn request_id(headers: &HeaderMap) -> Result<RequestId, ApiError> {
    match headers.get(IDEMPOTENCY_HEADER) {
        Some(value) => {
            let text = value.to_str().map_err(|_| {
                ApiError::bad_request("invalid_idempotency_key", "Idempotency-Key must be printable ASCII")
            })?;
            RequestId::new(text).map_err(|e| ApiError::bad_request("invalid_idempotency_key", e.to_string()))
        }
        None => Ok(RequestId::new(uuid::Uuid::now_v7().to_string()).expect("a UUID is a valid request id")),
    }
}

pub fn now_ms() -> u64 {
    // A clock before 1970 is a broken host; 0 keeps the state machine deterministic regardless.
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

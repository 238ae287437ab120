//! Audit at the API edge, and the audit read endpoints.
//!
//! [`record`] wraps every `/v1` route (and feeds the request metrics): after the handler has
//! answered, it turns the request
//! into one audit event — type from the route, tenant from the path (or from the handler's
//! [`Note`] when the body names it), outcome from the status, error code from the
//! [`ErrorCode`] the error response carries — and records it. In fail-closed mode a request
//! whose event cannot be made durable is answered 503 instead: a ciphertext, a key or a
//! confirmation never leaves without its audit event.
//!
//! A governance write through `replicate` carries its event in its own Raft command instead
//! (`carry`, `crate::carried`): committed, the event is durable, so the middleware places it
//! in the outbox chain without waiting for that commit.
//!
//! The tenant's stream is served paged (`GET …/audit`) and live over Server-Sent Events
//! (`GET …/audit/tail`).
//!
//! What is recorded: every write and key operation, every read of an audit stream, every
//! refused authentication (`auth.authenticate`, outcome denied), whatever the route, and every
//! other authenticated read (`apikey.use` for an API key, `access.read` for anyone else; the
//! latter only while `audit.record_reads` is on; see [`UNRECORDED_READS`]). A successful
//! authentication is part of the event of the action it allowed (its `actor`).
//!
//! Events go to the tenant's stream when the path names a tenant this node knows, otherwise to
//! the cluster stream (`_cluster`), so unauthenticated requests naming made-up tenants cannot
//! create streams. Reads of a tenant's audit stream are recorded in the cluster stream (subject
//! `tenants/<tenant>/audit`), not in the stream read — a reader paging to its end would
//! otherwise chase its own events. Reads of the cluster stream are not recorded.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{MatchedPath, Path, Query, RawPathParams, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use custos_actors::audit::sink::kafka::read_tenant_page;
use custos_actors::audit::sink::local::ReadFilter;
use custos_actors::audit::{
    Actor, AuditData, AuditError, AuditEvent, AuditMode, AuditRecord, AuditStream, EventType, Outcome,
};
use custos_raft::{CarriedAudit, Command, TenantId};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tracing::Instrument;

use super::auth::{Authenticated, Caller, DecisionSlot};
use super::error::ApiError;
use super::{page_limit, AppState, IDEMPOTENCY_HEADER};
use custos_actors::policy::{Permission, Principal, PrincipalKind};

/// Most live tails one node serves at once; more get 429.
pub const MAX_TAILS: usize = 64;
/// How often an idle tail sends a keep-alive comment.
const TAIL_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);
/// How long one page read from Kafka may take.
const KAFKA_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Reads never recorded as `access.read`: the cluster stream (each read would land in the
/// stream being read, so a reader paging to its end would chase its own events), and the
/// node's own status, which monitoring polls like `/metrics` and `/healthz` (each poll would
/// be an event about watching the audit pipeline, keeping its outbox from ever draining).
const UNRECORDED_READS: [&str; 4] =
    ["/v1/cluster/audit", "/v1/cluster/status", "/v1/cluster/self", "/v1/tenants/{id}/actors"];

/// What a handler adds to its response for the audit event.
#[derive(Debug, Clone, Default)]
pub struct Note {
    /// The tenant, when the path does not name it (tenant creation).
    pub tenant: Option<TenantId>,
    pub key_version: Option<u32>,
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl Note {
    pub fn version(key_version: u32) -> Note {
        Note { key_version: Some(key_version), ..Note::default() }
    }

    pub fn detail(mut self, name: &str, value: impl Into<serde_json::Value>) -> Note {
        self.details.insert(name.to_string(), value.into());
        self
    }
}

/// The machine-readable code of an error response, put there by `ApiError`.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// Which event a route makes, and where its tenant comes from.
fn event_type(method: &Method, route: &str) -> Option<EventType> {
    if let Some(scim) = route.strip_prefix("/scim/v2/{tenant}") {
        return scim_event_type(method, scim);
    }
    let route = route.strip_prefix("/v1")?;
    let post = *method == Method::POST;
    Some(match route {
        "/tenants" if post => EventType::TenantCreate,
        "/tenants/{id}" if *method == Method::DELETE => EventType::TenantDelete,
        "/tenants/{id}" if *method == Method::PATCH => EventType::TenantUpdate,
        "/tenants/{id}/suspend" | "/tenants/{id}/resume" => EventType::TenantUpdate,
        "/tenants/{tenant}/faults" | "/cluster/init" | "/cluster/members" | "/cluster/members/{id}" => {
            EventType::AdminAction
        }
        "/tenants/{tenant}/keys" if post => EventType::KeyCreate,
        "/tenants/{tenant}/keys/{key}/rotate" => EventType::KeyRotate,
        "/tenants/{tenant}/keys/{key}/config" => EventType::KeyConfigure,
        "/tenants/{tenant}/keys/{key}/enable" => EventType::KeyEnable,
        "/tenants/{tenant}/keys/{key}/disable" => EventType::KeyDisable,
        "/tenants/{tenant}/keys/{key}/destroy" if post => EventType::KeyScheduleDestroy,
        "/tenants/{tenant}/keys/{key}/destroy" => EventType::KeyCancelDestroy,
        "/tenants/{tenant}/keys/{key}/encrypt" | "/tenants/{tenant}/keys/{key}/encrypt/batch" => EventType::KeyEncrypt,
        "/tenants/{tenant}/keys/{key}/decrypt" | "/tenants/{tenant}/keys/{key}/decrypt/batch" => EventType::KeyDecrypt,
        "/tenants/{tenant}/keys/{key}/rewrap" => EventType::KeyRewrap,
        "/tenants/{tenant}/keys/{key}/datakey" => EventType::KeyGenerateDataKey,
        // Reads of the cluster stream are not events: each would land in the stream being
        // read, so a reader could never reach its end.
        "/tenants/{tenant}/audit" | "/tenants/{tenant}/audit/tail" => EventType::AuditRead,
        "/tenants/{tenant}/authorize" => EventType::Authorization,
        "/auth/token" => EventType::TokenIssue,
        "/auth/callback" | "/auth/native/login" => EventType::SignIn,
        "/tenants/{tenant}/identity-provider" if *method != Method::GET => EventType::IdentityProviderUpdate,
        "/tenants/{tenant}/users/{user}/totp" => EventType::DirectoryUserUpdate,
        "/auth/logout" => EventType::SignOut,
        "/tenants/{tenant}/policy" if *method == Method::PUT => EventType::PolicyUpdate,
        "/tenants/{tenant}/grants" if post => EventType::GrantCreate,
        "/tenants/{tenant}/grants/{grant}" if *method == Method::DELETE => EventType::GrantRevoke,
        "/tenants/{tenant}/apikeys" if post => EventType::ApiKeyCreate,
        "/tenants/{tenant}/apikeys/{apikey}/rotate" => EventType::ApiKeyRotate,
        "/tenants/{tenant}/apikeys/{apikey}/revoke" => EventType::ApiKeyRevoke,
        _ => return None,
    })
}

/// SCIM writes: directory changes. Reads are `access.read` (or `apikey.use`) like any other.
fn scim_event_type(method: &Method, route: &str) -> Option<EventType> {
    Some(match (route, method.as_str()) {
        ("/Users", "POST") => EventType::DirectoryUserCreate,
        ("/Users/{id}", "PUT" | "PATCH") => EventType::DirectoryUserUpdate,
        ("/Users/{id}", "DELETE") => EventType::DirectoryUserDelete,
        ("/Groups", "POST") => EventType::DirectoryGroupCreate,
        ("/Groups/{id}", "PUT" | "PATCH") => EventType::DirectoryGroupUpdate,
        ("/Groups/{id}", "DELETE") => EventType::DirectoryGroupDelete,
        _ => return None,
    })
}

pub(crate) fn outcome(status: StatusCode) -> Outcome {
    match status {
        s if s.is_success() || s.is_redirection() => Outcome::Success,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS => Outcome::Denied,
        _ => Outcome::Failure,
    }
}

/// The middleware: see the module docs.
pub async fn record(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    request: Request,
    next: Next,
) -> Response {
    let route = matched.as_ref().map(|m| m.as_str().to_string()).unwrap_or_default();
    let method = request.method().clone();
    let request_id = request
        .headers()
        .get(IDEMPOTENCY_HEADER)
        .or_else(|| request.headers().get(REQUEST_ID_HEADER))
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut path_tenant = None;
    let mut key = None;
    if let Ok(params) = &params {
        for (name, value) in params.iter() {
            match name {
                "tenant" => path_tenant = Some(value.to_string()),
                "id" if route.starts_with("/v1/tenants/") => path_tenant = Some(value.to_string()),
                "key" => key = Some(value.to_string()),
                _ => {}
            }
        }
    }

    let started = std::time::Instant::now();
    // Every log line of the request carries these; the tenant only when it is a valid id.
    // With OTLP export on (and only then: the log formats every recorded field), it is also
    // a server span named after the route, continuing the caller's trace, with the status.
    let span = tracing::info_span!(
        "request",
        node = state.cluster.id(),
        request_id = %request_id,
        method = %method,
        route = %route,
        tenant = path_tenant.as_deref().filter(|t| TenantId::new(*t).is_ok()).unwrap_or("-"),
        status = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
    );
    let exporting = crate::telemetry::exporting();
    if exporting {
        span.record("otel.name", tracing::field::display(format_args!("{method} {route}")));
        span.record("otel.kind", "server");
        crate::telemetry::continue_trace(&span, request.headers());
    }
    let mut request = request;
    let slot = DecisionSlot::default();
    request.extensions_mut().insert(slot.clone());
    // Authentication first: a credential that does not authenticate is refused whatever the
    // route, and the principal is the actor of this request's event. The sign-in routes take
    // no credential: a browser's stale session cookie must not stop it signing in again.
    let path = request.uri().path();
    let signing_in =
        ["/auth/login", "/auth/callback", "/auth/native/login"].iter().any(|p| route.ends_with(p) || path.ends_with(p));
    let authenticated = match signing_in {
        true => Ok(None),
        false => {
            let authenticate = super::auth::authenticate(&state, &method, request.headers());
            match exporting {
                true => authenticate.instrument(tracing::info_span!(parent: &span, "auth.authenticate")).await,
                false => authenticate.await,
            }
        }
    };
    let mut carry = None;
    let (principal, mut response) = match authenticated {
        Ok(principal) => {
            let principal = principal.map(std::sync::Arc::new);
            if let Some(principal) = &principal {
                request.extensions_mut().insert(Authenticated(principal.clone()));
            }
            let handled = next.run(request).instrument(span.clone());
            // A write's event may ride with its Raft command (see `carry`).
            let kind = event_type(&method, &route).filter(|k| may_carry(*k) && state.audit.mode() != AuditMode::Off);
            let response = match (kind, &principal) {
                (Some(kind), Some(principal)) => {
                    let context = Arc::new(CarryContext {
                        kind,
                        actor: actor_of(principal),
                        request_id: request_id.clone(),
                        path_tenant: path_tenant.clone(),
                        key: key.clone(),
                        method: method.clone(),
                        decision: slot.clone(),
                        note: Mutex::new(None),
                        placement: Mutex::new(None),
                        carried: AtomicBool::new(false),
                        _writing: state.carrier.writing(),
                    });
                    carry = Some(context.clone());
                    CARRY.scope(context, handled).await
                }
                _ => handled.await,
            };
            (principal, response)
        }
        Err(error) => (None, error.into_response()),
    };
    // Where this request's write carried its event, if it did and committed.
    let carried = carry.and_then(|c| {
        let placement = c.placement.lock().unwrap_or_else(|p| p.into_inner()).take();
        placement.filter(|_| c.carried.load(Ordering::Relaxed))
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let status = response.status();
    if exporting {
        span.record("status", status.as_u16());
        if status.is_server_error() {
            span.record("otel.status_code", "error");
        }
    }
    let api_key = principal.as_ref().is_some_and(|p| p.kind == PrincipalKind::ApiKey);
    let recorded_read = state.record_reads
        && principal.is_some()
        && matches!(method, Method::GET | Method::HEAD)
        && !UNRECORDED_READS.contains(&route.as_str());
    let kind = match event_type(&method, &route) {
        _ if status == StatusCode::UNAUTHORIZED => Some(EventType::Authentication),
        // A refused read is a decision; every use of an API key is recorded, and every other
        // authenticated read while reads are recorded.
        None if status == StatusCode::FORBIDDEN => Some(EventType::Authorization),
        None if api_key => Some(EventType::ApiKeyUse),
        None if recorded_read => Some(EventType::Read),
        kind => kind,
    };
    let note = response.extensions_mut().remove::<Note>().unwrap_or_default();
    let code = response.extensions().get::<ErrorCode>().map(|c| c.0);

    // A tenant route that succeeded found its tenant; only a refused one may name a made-up
    // tenant, which must get neither a stream nor a metrics label.
    let known = |tenant: &str| -> Option<TenantId> {
        let tenant = TenantId::new(tenant).ok()?;
        if status.is_success() {
            return Some(tenant);
        }
        state.cluster.reader().tenant(&tenant).ok().flatten().map(|_| tenant)
    };
    let tenant = note.tenant.clone().or_else(|| path_tenant.as_deref().and_then(known));
    let response = match kind {
        Some(kind) if state.audit.mode() != AuditMode::Off => {
            let stream = match &tenant {
                Some(tenant) if kind != EventType::AuditRead => AuditStream::Tenant(tenant.clone()),
                _ => AuditStream::Cluster,
            };
            let actor = match &principal {
                Some(principal) if status != StatusCode::UNAUTHORIZED => actor_of(principal),
                _ => Actor::anonymous(),
            };
            let mut data = AuditData::new(actor, outcome(status));
            data.decision_id = slot.take();
            data.reason = code.map(str::to_string);
            data.request_id = Some(request_id);
            data.key_id = key.clone();
            data.key_version = note.key_version;
            data.details = note.details;
            data.details.insert("http_method".into(), method.as_str().into());
            data.details.insert("http_status".into(), status.as_u16().into());
            if matches!(kind, EventType::Read | EventType::ApiKeyUse) {
                // What was read: the route's template (ids only where the path has them).
                data.details.insert("route".into(), route.as_str().into());
            }
            let subject = match (&path_tenant, &key) {
                (_, Some(key)) => Some(format!("keys/{key}")),
                (Some(tenant), None) if kind == EventType::AuditRead => {
                    Some(format!("tenants/{tenant}/{}", if route.ends_with("/tail") { "audit/tail" } else { "audit" }))
                }
                (Some(tenant), None) if stream == AuditStream::Cluster => Some(format!("tenants/{tenant}")),
                _ => None,
            };
            let mode = exporting.then(|| state.audit.mode_of(&stream).as_str());
            let record = AuditRecord { stream, kind, subject, data };
            if let Some(placement) = carried {
                // Durable already, in the Raft entry of the write: placed in the chain now (its
                // place among this node's events), committed without holding the answer.
                let place = state.audit.outbox().record_unwaited(record);
                let placed = match mode {
                    Some(mode) => {
                        place.instrument(tracing::info_span!(parent: &span, "audit.record", mode, carried = true)).await
                    }
                    None => place.await,
                };
                match placed {
                    Ok(durable) => placement.placed(durable),
                    Err(error) => {
                        tracing::warn!(%error, "placing a carried audit event failed; it is recorded from the log")
                    }
                }
                return observe(&state, tenant.as_ref(), Some(kind), started, response);
            }
            let record = state.audit.record(record);
            let recorded = match mode {
                Some(mode) => {
                    record.instrument(tracing::info_span!(parent: &span, "audit.record", mode, carried = false)).await
                }
                None => record.await,
            };
            match recorded {
                Ok(()) => response,
                Err(error) => {
                    tracing::error!(%error, route, "audit event not durable; refusing the response (fail-closed)");
                    audit_refusal(error).into_response()
                }
            }
        }
        _ => response,
    };
    observe(&state, tenant.as_ref(), kind, started, response)
}

/// Counts the answered request in the metrics and passes its response on.
fn observe(
    state: &AppState,
    tenant: Option<&TenantId>,
    kind: Option<EventType>,
    started: std::time::Instant,
    response: Response,
) -> Response {
    let outcome_label = match outcome(response.status()) {
        Outcome::Success => "success",
        Outcome::Denied => "denied",
        Outcome::Failure => "failure",
    };
    // Reads count as `read` whether or not they are recorded.
    let operation = match kind {
        None | Some(EventType::Read) => "read",
        Some(kind) => kind.short(),
    };
    state.metrics.observe(
        tenant.map_or(super::metrics::NO_TENANT, |t| t.as_str()),
        operation,
        outcome_label,
        started.elapsed(),
    );
    response
}

/// Whether a request of this kind may change governance state, so its event may ride with the
/// write. Key operations and sign-ins never write through `replicate`: they skip the set-up.
fn may_carry(kind: EventType) -> bool {
    !matches!(
        kind,
        EventType::KeyEncrypt
            | EventType::KeyDecrypt
            | EventType::KeyRewrap
            | EventType::KeyGenerateDataKey
            | EventType::AuditRead
            | EventType::Authorization
            | EventType::Authentication
            | EventType::ApiKeyUse
            | EventType::Read
            | EventType::TokenIssue
            | EventType::SignIn
            | EventType::SignOut
    )
}

/// What the middleware knows of a write request before its handler runs, so the write can
/// carry its audit event (see [`carry`]).
struct CarryContext {
    kind: EventType,
    actor: Actor,
    request_id: String,
    path_tenant: Option<String>,
    key: Option<String>,
    method: Method,
    decision: DecisionSlot,
    /// What the handler adds, known before its write ([`annotate`]).
    note: Mutex<Option<Note>>,
    /// The event the request's write carries, once it is built (one per request).
    placement: Mutex<Option<crate::carried::Placement>>,
    /// The write carried the event and committed.
    carried: AtomicBool,
    /// Counts this request among the node's governance writes in flight.
    _writing: crate::carried::Writing,
}

tokio::task_local! {
    static CARRY: Arc<CarryContext>;
}

/// For a handler whose [`Note`] is known before its write: a carried event includes it.
pub fn annotate(note: &Note) {
    let _ = CARRY.try_with(|context| {
        *context.note.lock().unwrap_or_else(|p| p.into_inner()) = Some(note.clone());
    });
}

impl CarryContext {
    /// The event this request's write would carry, encoded; None when it should not carry:
    /// its stream is not fail-closed (a best-effort event never delays the answer anyway), the
    /// recorder is behind or failing, or the event is too large.
    fn event(&self, state: &AppState, command: &Command, success: StatusCode) -> Option<Vec<u8>> {
        let mut placement = self.placement.lock().unwrap_or_else(|p| p.into_inner());
        if placement.is_some() || !state.carrier.accepting() {
            return None;
        }
        let note = self.note.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
        let tenant = note.tenant.as_ref().map(|t| t.to_string()).or_else(|| self.path_tenant.clone());
        let stream = match tenant.as_deref().and_then(|t| TenantId::new(t).ok()) {
            Some(tenant) => AuditStream::Tenant(tenant),
            None => AuditStream::Cluster,
        };
        if state.audit.mode_of(&stream) != AuditMode::FailClosed || matches!(command, Command::Audited { .. }) {
            return None;
        }
        let mut data = AuditData::new(self.actor.clone(), Outcome::Success);
        data.decision_id = self.decision.peek();
        data.request_id = Some(self.request_id.clone());
        data.key_id = self.key.clone();
        data.key_version = note.key_version;
        data.details = note.details;
        data.details.insert("http_method".into(), self.method.as_str().into());
        let expected = state.carrier.expect();
        let record = crate::carried::CarriedRecord {
            kind: self.kind.short().to_string(),
            tenant,
            key: self.key.clone(),
            data,
            success_status: success.as_u16(),
            token: expected.token,
        };
        let event = serde_json::to_vec(&record).ok().filter(|e| e.len() <= custos_raft::MAX_CARRIED_AUDIT_BYTES)?;
        *placement = Some(expected);
        Some(event)
    }
}

/// Makes `command` carry this request's audit event when it should (see
/// `CarryContext::event`); call [`carried`] with the answer once the write returned.
pub(crate) fn carry(state: &AppState, command: Command, success: StatusCode) -> (Command, bool) {
    let event = CARRY.try_with(|context| context.event(state, &command, success)).ok().flatten();
    match event {
        Some(event) => {
            let audit = CarriedAudit { origin: state.cluster.id(), event };
            (Command::Audited { command: Box::new(command), audit }, true)
        }
        None => (command, false),
    }
}

/// The write that carried this request's event committed (whatever its outcome): the event is
/// durable, and the middleware places it without waiting.
pub(crate) fn carried() {
    let _ = CARRY.try_with(|context| context.carried.store(true, Ordering::Relaxed));
}

/// The audit actor of a principal: its kind, subject and where its identity came from.
fn actor_of(principal: &Principal) -> Actor {
    let kind = match principal.kind {
        PrincipalKind::Bootstrap => Actor::admin().kind,
        other => other.as_str().to_string(),
    };
    let id = match principal.kind {
        PrincipalKind::Bootstrap => Actor::admin().id,
        _ => principal.subject.clone(),
    };
    Actor { id, kind, idp: Some(principal.idp.clone()), idp_sub: Some(principal.idp_sub.clone()) }
}

fn audit_refusal(error: AuditError) -> ApiError {
    let code = match error {
        AuditError::Backlog { .. } => "audit_backlog",
        _ => "audit_unavailable",
    };
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        code,
        format!("{error}; the request was not answered because its audit event is not durable (audit.mode = fail-closed), but a write may have been applied: retry it with the same Idempotency-Key"),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Position to start at: `next` of the previous page.
    #[serde(default)]
    from: u64,
    limit: Option<usize>,
    /// Comma-separated event types, full (`dev.custos.key.encrypt`) or short (`key.encrypt`).
    #[serde(rename = "type")]
    types: Option<String>,
    /// Events at or after this time (milliseconds since the epoch).
    since_ms: Option<u64>,
    /// Events before this time.
    until_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct AuditPage {
    /// The sink the events were read from: `local` (this node's log) or `kafka`.
    source: &'static str,
    events: Vec<AuditEvent>,
    /// Where the next page starts; the same as `from` when nothing more is stored yet.
    next: u64,
    /// This node's chain of the stream, as durably committed here: what `custos audit verify`
    /// should find at the end of that chain (a cut-off tail shows as a lower `seq`).
    #[serde(skip_serializing_if = "Option::is_none")]
    chain_head: Option<ChainHead>,
}

#[derive(Debug, Serialize)]
pub struct ChainHead {
    chain: String,
    seq: u64,
    hash: String,
}

/// Reads a page and adds this node's chain head of the stream.
async fn read_stream(state: &AppState, stream: AuditStream, query: AuditQuery) -> Result<AuditPage, ApiError> {
    let mut page = read_page(state, stream.as_str(), query).await?;
    let head = state.audit.outbox().head(&stream).map_err(|e| ApiError::internal(e.to_string()))?;
    page.chain_head = head.map(|(seq, hash)| ChainHead { chain: state.audit.outbox().chain().to_string(), seq, hash });
    Ok(page)
}

fn parse_types(types: Option<&str>) -> Result<Vec<String>, ApiError> {
    let Some(types) = types else { return Ok(Vec::new()) };
    types
        .split(',')
        .filter(|t| !t.is_empty())
        .map(|t| {
            EventType::parse(t)
                .map(|k| k.full())
                .ok_or_else(|| ApiError::bad_request("invalid_query", format!("unknown event type {t:?}")))
        })
        .collect()
}

async fn read_page(state: &AppState, stream: &str, query: AuditQuery) -> Result<AuditPage, ApiError> {
    let limit = page_limit(state, query.limit)?;
    let types = parse_types(query.types.as_deref())?;
    let unavailable = |e: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable", e);
    if let Some(local) = state.audit.local() {
        let filter = ReadFilter { from: query.from, limit, since_ms: query.since_ms, until_ms: query.until_ms, types };
        let (local, stream) = (local.clone(), stream.to_string());
        let page = tokio::task::spawn_blocking(move || local.read(&stream, &filter))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| unavailable(e.to_string()))?;
        return Ok(AuditPage {
            source: "local",
            events: page.events.into_iter().map(|(_, e)| e).collect(),
            next: page.next,
            chain_head: None,
        });
    }
    let Some(kafka) = state.audit.kafka() else {
        return Err(ApiError::internal("the audit sink can not be read"));
    };
    let (config, stream) = (kafka.config().clone(), stream.to_string());
    let from = i64::try_from(query.from).map_err(|_| ApiError::bad_request("invalid_query", "from is too large"))?;
    let page = tokio::task::spawn_blocking(move || read_tenant_page(&config, &stream, from, limit, KAFKA_READ_TIMEOUT))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| unavailable(e.to_string()))?;
    let events = page
        .records
        .into_iter()
        .filter_map(|(_, bytes)| serde_json::from_slice::<AuditEvent>(&bytes).ok())
        .filter(|e| types.is_empty() || types.contains(&e.kind))
        .filter(|e| {
            let t = e.time_ms().unwrap_or(0);
            query.since_ms.is_none_or(|s| t >= s) && query.until_ms.is_none_or(|u| t < u)
        })
        .collect();
    Ok(AuditPage { source: "kafka", events, next: page.next.max(0) as u64, chain_head: None })
}

/// `GET /v1/tenants/{tenant}/audit`: one page of the tenant's audit stream.
pub async fn tenant_stream(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let Path(tenant) = path?;
    let tenant = TenantId::new(tenant)?;
    caller.authorize(&state, Some(&tenant), Permission::AuditRead)?;
    if super::applied_tenant(&state, &tenant).await?.is_none() {
        return Err(custos_raft::Rejection::TenantNotFound(tenant).into());
    }
    let Query(query) = query?;
    Ok(Json(read_stream(&state, AuditStream::Tenant(tenant), query).await?))
}

/// `GET /v1/cluster/audit`: one page of the cluster stream.
pub async fn cluster_stream(
    caller: Caller,
    State(state): State<AppState>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    caller.authorize(&state, None, Permission::ClusterRead)?;
    let Query(query) = query?;
    Ok(Json(read_stream(&state, AuditStream::Cluster, query).await?))
}

/// One item of a live tail: an event's JSON, or how many events a slow reader missed.
enum TailItem {
    Event(String, Vec<u8>),
    Lagged(u64),
    Failed(String),
}

fn sse(item: TailItem) -> Result<axum::response::sse::Event, std::convert::Infallible> {
    use axum::response::sse::Event;
    Ok(match item {
        TailItem::Event(id, json) => Event::default().event("audit").id(id).data(String::from_utf8_lossy(&json)),
        TailItem::Lagged(missed) => Event::default().event("lagged").data(format!("{{\"missed\":{missed}}}")),
        TailItem::Failed(reason) => {
            Event::default().event("error").data(serde_json::json!({ "message": reason }).to_string())
        }
    })
}

/// `GET /v1/tenants/{tenant}/audit/tail`: the tenant's events as they come, over Server-Sent
/// Events (`event: audit`, `id:` the event id, `data:` the event). From Kafka when that is the
/// sink (every node's events), otherwise as this node commits them. A reader too slow for the
/// node's buffer of the tenant's events gets `event: lagged` with the number of them missed
/// and continues; other tenants' events neither fill that buffer nor wake the reader.
pub async fn tail(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    use axum::response::sse::{KeepAlive, Sse};
    use futures::StreamExt;

    let Path(tenant) = path?;
    let tenant = TenantId::new(tenant)?;
    caller.authorize(&state, Some(&tenant), Permission::AuditRead)?;
    if super::applied_tenant(&state, &tenant).await?.is_none() {
        return Err(custos_raft::Rejection::TenantNotFound(tenant).into());
    }
    let permit = state.tails.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_tails",
            format!("this node serves at most {MAX_TAILS} audit tails"),
        )
    })?;
    let keep_alive = KeepAlive::new().interval(TAIL_KEEP_ALIVE);
    if let Some(kafka) = state.audit.kafka() {
        let (config, name) = (kafka.config().clone(), tenant.as_str().to_string());
        let reader = tokio::task::spawn_blocking(move || {
            custos_actors::audit::sink::kafka::KafkaTail::open(&config, &name, KAFKA_READ_TIMEOUT)
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable", e.to_string()))?;
        let events = futures::stream::unfold((reader, permit, false), |(reader, permit, done)| async move {
            if done {
                return None;
            }
            let item = match reader.next().await {
                Ok(json) => {
                    let id = serde_json::from_slice::<AuditEvent>(&json).map(|e| e.id).unwrap_or_default();
                    (TailItem::Event(id, json), false)
                }
                // One error ends the stream; the client reconnects.
                Err(e) => (TailItem::Failed(e.to_string()), true),
            };
            Some((item.0, (reader, permit, item.1)))
        });
        return Ok(Sse::new(events.map(sse)).keep_alive(keep_alive).into_response());
    }
    let committed = state.audit.outbox().subscribe(tenant.as_str());
    let events = futures::stream::unfold((committed, permit), |(mut committed, permit)| async move {
        let item = match committed.recv().await {
            Ok(c) => TailItem::Event(c.id, c.json.to_vec()),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => TailItem::Lagged(missed),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((item, (committed, permit)))
    });
    Ok(Sse::new(events.map(sse)).keep_alive(keep_alive).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_route_has_an_event_type_and_plain_reads_have_none() {
        let routes = [
            (Method::POST, "/v1/tenants", Some(EventType::TenantCreate)),
            (Method::DELETE, "/v1/tenants/{id}", Some(EventType::TenantDelete)),
            (Method::POST, "/v1/tenants/{tenant}/keys/{key}/destroy", Some(EventType::KeyScheduleDestroy)),
            (Method::DELETE, "/v1/tenants/{tenant}/keys/{key}/destroy", Some(EventType::KeyCancelDestroy)),
            (Method::POST, "/v1/tenants/{tenant}/keys/{key}/decrypt/batch", Some(EventType::KeyDecrypt)),
            (Method::GET, "/v1/tenants/{tenant}/audit", Some(EventType::AuditRead)),
            (Method::GET, "/v1/cluster/audit", None),
            (Method::GET, "/v1/tenants/{tenant}/audit/tail", Some(EventType::AuditRead)),
            (Method::GET, "/v1/tenants", None),
            (Method::GET, "/v1/tenants/{tenant}/keys/{key}", None),
            (Method::GET, "/v1/cluster/status", None),
        ];
        for (method, route, expected) in routes {
            assert_eq!(event_type(&method, route), expected, "{method} {route}");
        }
    }
}

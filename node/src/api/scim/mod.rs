//! SCIM 2.0 inbound provisioning (RFC 7643, RFC 7644), per tenant under
//! `/scim/v2/{tenant}/…`: an identity provider's provisioning client (Entra ID, Okta,
//! Keycloak's SCIM plugins …) creates, updates and deprovisions the tenant's directory users
//! and groups with an API key holding `users:provision`.
//!
//! Every write is one Raft command; replacing or patching a resource reads it, applies the
//! change and writes it only if no one changed it in between (retrying a few times, or
//! answering 412 when the client's `If-Match` names an older version). Deactivating or
//! deleting a user ends its sessions and revokes its API keys in the same command.
//!
//! # Layout
//! - `mod.rs` — routes, the handlers (generic over the resource kind), the SCIM error format
//!   and list responses.
//! - `kinds.rs` — `Users` and `Groups`: reading, rendering, building and writing each.
//! - `resource.rs` — rendering users and groups, reading request bodies.
//! - `filter.rs` — evaluating `filter=` expressions.
//! - `patch.rs` — PATCH operations.
//! - `discovery.rs` — `ServiceProviderConfig`, `ResourceTypes`, `Schemas`.

mod discovery;
mod filter;
mod kinds;
mod patch;
mod resource;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{middleware, Json, Router};
use custos_actors::policy::Permission;
use custos_raft::{Consistency, DirectoryId, Proposal, Rejection, TenantId, TenantStatus};
use serde::Deserialize;
use serde_json::{json, Value};

use self::filter::Filter;
use self::kinds::{Groups, Kind, Users};
use self::resource::{etag, lowercase_keys, parse_etag, select, CUSTOS_USER_SCHEMA, ERROR_SCHEMA, LIST_SCHEMA};
use super::auth::Caller;
use super::error::ApiError;
use super::{applied_tenant, now_ms, request_id, AppState, CasAttempts};

/// Most resources in one list page (`ServiceProviderConfig.filter.maxResults`).
pub const MAX_RESULTS: usize = 1000;
const SCIM_CONTENT_TYPE: &str = "application/scim+json";

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/{tenant}/ServiceProviderConfig", get(service_provider_config))
        .route("/{tenant}/ResourceTypes", get(resource_types))
        .route("/{tenant}/ResourceTypes/{name}", get(resource_type))
        .route("/{tenant}/Schemas", get(schemas))
        .route("/{tenant}/Schemas/{name}", get(schema))
        .route("/{tenant}/Users", get(list::<Users>).post(create::<Users>))
        .route(
            "/{tenant}/Users/{id}",
            get(get_one::<Users>).put(replace::<Users>).patch(patch::<Users>).delete(remove::<Users>),
        )
        .route("/{tenant}/Groups", get(list::<Groups>).post(create::<Groups>))
        .route(
            "/{tenant}/Groups/{id}",
            get(get_one::<Groups>).put(replace::<Groups>).patch(patch::<Groups>).delete(remove::<Groups>),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), super::audit::record))
}

/// An error in RFC 7644's format (`schemas`, `status`, `scimType`, `detail`), which also
/// carries Custos' own `error` object with its machine-readable code.
pub struct ScimError(ApiError);

impl<E: Into<ApiError>> From<E> for ScimError {
    fn from(e: E) -> Self {
        ScimError(e.into())
    }
}

impl IntoResponse for ScimError {
    fn into_response(self) -> Response {
        let e = self.0;
        let scim_type = match e.code {
            "directory_conflict" => Some("uniqueness"),
            "invalid_filter" => Some("invalidFilter"),
            "invalid_path" => Some("invalidPath"),
            "no_target" => Some("noTarget"),
            "too_many" => Some("tooMany"),
            "malformed_json" | "invalid_syntax" => Some("invalidSyntax"),
            "invalid_body" | "invalid_value" | "invalid_policy" | "invalid_password" => Some("invalidValue"),
            _ => None,
        };
        let mut body = json!({
            "schemas": [ERROR_SCHEMA],
            "status": e.status.as_u16().to_string(),
            "detail": e.message,
            "error": { "code": e.code, "message": e.message },
        });
        if let Some(scim_type) = scim_type {
            body["scimType"] = json!(scim_type);
        }
        let mut response = scim_json(e.status, &body);
        response.extensions_mut().insert(super::audit::ErrorCode(e.code));
        response
    }
}

type Scim = Result<Response, ScimError>;

fn scim_json(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(SCIM_CONTENT_TYPE));
    response
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, message)
}

fn not_found(what: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no {what} here"))
}

/// A single resource, with its ETag (and Location when created).
fn resource_response(status: StatusCode, body: Value, revision: u64) -> Response {
    let location = body["meta"]["location"].as_str().and_then(|l| HeaderValue::from_str(l).ok());
    let mut response = scim_json(status, &body);
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&etag(revision)) {
        headers.insert(header::ETAG, value);
    }
    if let (StatusCode::CREATED, Some(location)) = (status, location) {
        headers.insert(header::LOCATION, location);
    }
    response
}

pub(super) fn base_url(state: &AppState, tenant: &TenantId) -> String {
    format!("{}/scim/v2/{tenant}", state.sign_in.public_url())
}

/// Authorizes a SCIM request on the path's tenant and checks the tenant is there.
async fn admit(caller: &Caller, state: &AppState, tenant: String) -> Result<TenantId, ApiError> {
    let tenant = TenantId::new(tenant)?;
    caller.authorize(state, Some(&tenant), Permission::UsersProvision)?;
    match applied_tenant(state, &tenant).await? {
        Some(t) if t.status != TenantStatus::Deleted => Ok(tenant),
        Some(_) => Err(Rejection::TenantDeleted(tenant).into()),
        None => Err(Rejection::TenantNotFound(tenant).into()),
    }
}

/// The path's tenant (admitted) and resource id. Ids are ours; anything else names nothing.
async fn admit_resource(
    caller: &Caller,
    state: &AppState,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(TenantId, DirectoryId), ApiError> {
    let Path((tenant, id)) = path?;
    let tenant = admit(caller, state, tenant).await?;
    let id = DirectoryId::new(id.clone()).map_err(|_| not_found(&format!("resource {id:?}")))?;
    Ok((tenant, id))
}

fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match headers.get(header::IF_MATCH).map(|v| v.to_str()) {
        None | Some(Ok("*")) => Ok(None),
        Some(Ok(value)) => {
            parse_etag(value).map(Some).ok_or_else(|| bad("invalid_value", "If-Match names no version of ours"))
        }
        Some(Err(_)) => Err(bad("invalid_value", "If-Match must be printable ASCII")),
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    filter: Option<String>,
    #[serde(rename = "startIndex")]
    start_index: Option<i64>,
    count: Option<i64>,
    attributes: Option<String>,
    #[serde(rename = "excludedAttributes")]
    excluded_attributes: Option<String>,
}

#[derive(Deserialize)]
pub struct GetQuery {
    attributes: Option<String>,
    #[serde(rename = "excludedAttributes")]
    excluded_attributes: Option<String>,
}

async fn list<K: Kind>(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Scim {
    let Path(tenant) = path?;
    let tenant = admit(&caller, &state, tenant).await?;
    let Query(query) = query?;
    let filter = match query.filter.as_deref().filter(|f| !f.trim().is_empty()) {
        Some(text) => Some(Filter::parse(text).map_err(|e| bad("invalid_filter", e.0))?),
        None => None,
    };
    state.cluster.read_barrier(Consistency::Linearizable).await?;
    let base = base_url(&state, &tenant);
    let mut matches = Vec::new();
    for record in K::candidates(&state, &tenant, filter.as_ref())? {
        let keep = match &filter {
            Some(filter) => {
                filter.matches(&lowercase_keys(K::bare(&base, &record))).map_err(|e| bad("invalid_filter", e.0))?
            }
            None => true,
        };
        if keep {
            matches.push(record);
        }
    }
    let start = query.start_index.unwrap_or(1).max(1) as usize;
    let count = query.count.unwrap_or(100).clamp(0, MAX_RESULTS as i64) as usize;
    let render = K::renderer(&state, &tenant)?;
    let page: Vec<Value> = matches
        .iter()
        .skip(start - 1)
        .take(count)
        .map(|m| select(render(m), query.attributes.as_deref(), query.excluded_attributes.as_deref()))
        .collect();
    let body = json!({
        "schemas": [LIST_SCHEMA],
        "totalResults": matches.len(),
        "startIndex": start,
        "itemsPerPage": page.len(),
        "Resources": page,
    });
    Ok(scim_json(StatusCode::OK, &body))
}

async fn get_one<K: Kind>(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<GetQuery>, QueryRejection>,
) -> Scim {
    let (tenant, id) = admit_resource(&caller, &state, path).await?;
    let Query(query) = query?;
    state.cluster.read_barrier(Consistency::Linearizable).await?;
    let record = K::get(&state, &tenant, &id)?.ok_or(Rejection::DirectoryEntryNotFound(id))?;
    let view = K::renderer(&state, &tenant)?(&record);
    let view = select(view, query.attributes.as_deref(), query.excluded_attributes.as_deref());
    Ok(resource_response(StatusCode::OK, view, K::revision(&record)))
}

async fn write<K: Kind>(
    state: &AppState,
    request_id: custos_raft::RequestId,
    command: custos_raft::Command,
) -> Result<K::Record, ApiError> {
    let proposal = Proposal { request_id, proposed_at_ms: now_ms(), command };
    K::from_output(state.cluster.write(proposal).await?.outcome?)
        .ok_or_else(|| ApiError::internal("the state machine answered with the wrong kind of result"))
}

async fn create<K: Kind>(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> Scim {
    let Path(tenant) = path?;
    let tenant = admit(&caller, &state, tenant).await?;
    let Json(body) = body?;
    let id = DirectoryId::new(super::auth::random_id())?;
    let record = K::build(&state, &tenant, body, id, None).await?;
    let record = write::<K>(&state, request_id(&headers)?, K::put(tenant.clone(), record, None)).await?;
    let view = K::renderer(&state, &tenant)?(&record);
    Ok(resource_response(StatusCode::CREATED, view, K::revision(&record)))
}

/// Replaces a resource with what `body_of` makes of its current version (compare-and-set).
async fn change<K: Kind>(
    state: &AppState,
    headers: &HeaderMap,
    tenant: &TenantId,
    id: &DirectoryId,
    body_of: impl Fn(&K::Record) -> Result<Value, ApiError> + Send + Sync,
) -> Scim {
    let expected = if_match(headers)?;
    let mut attempts = CasAttempts::new(headers, expected.is_none())?;
    let record = loop {
        let request_id = attempts.next_id()?;
        state.cluster.read_barrier(Consistency::Linearizable).await?;
        let current = K::get(state, tenant, id)?.ok_or_else(|| Rejection::DirectoryEntryNotFound(id.clone()))?;
        let revision = expected.unwrap_or(K::revision(&current));
        let record = K::build(state, tenant, body_of(&current)?, id.clone(), Some(&current)).await?;
        match write::<K>(state, request_id, K::put(tenant.clone(), record, Some(revision))).await {
            Ok(record) => break record,
            Err(e) if attempts.again(&e) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let view = K::renderer(state, tenant)?(&record);
    Ok(resource_response(StatusCode::OK, view, K::revision(&record)))
}

async fn replace<K: Kind>(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> Scim {
    let (tenant, id) = admit_resource(&caller, &state, path).await?;
    let Json(body) = body?;
    change::<K>(&state, &headers, &tenant, &id, |_| Ok(body.clone())).await
}

async fn patch<K: Kind>(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> Scim {
    let (tenant, id) = admit_resource(&caller, &state, path).await?;
    let Json(body) = body?;
    let base = base_url(&state, &tenant);
    change::<K>(&state, &headers, &tenant, &id, |current| apply_patch(K::bare(&base, current), &body)).await
}

/// The resource as PATCH sees it — lowercased, without what is read-only — after the request's
/// operations.
fn apply_patch(view: Value, body: &Value) -> Result<Value, ApiError> {
    let request: patch::PatchRequest =
        serde_json::from_value(body.clone()).map_err(|e| bad("invalid_syntax", format!("not a PATCH request: {e}")))?;
    let Value::Object(mut doc) = lowercase_keys(view) else {
        return Err(ApiError::internal("a resource is an object"));
    };
    for read_only in ["id", "meta", "groups", "schemas"] {
        doc.remove(read_only);
    }
    if let Some(Value::Object(extension)) = doc.get_mut(&CUSTOS_USER_SCHEMA.to_lowercase()) {
        extension.remove("mfaenrolled");
    }
    patch::apply(&mut doc, request).map_err(|e| {
        let code = match e.scim_type {
            "invalidPath" => "invalid_path",
            "noTarget" => "no_target",
            "invalidFilter" => "invalid_filter",
            "tooMany" => "too_many",
            "invalidSyntax" => "invalid_syntax",
            _ => "invalid_value",
        };
        bad(code, e.message)
    })?;
    Ok(Value::Object(doc))
}

async fn remove<K: Kind>(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Scim {
    let (tenant, id) = admit_resource(&caller, &state, path).await?;
    if let Some(expected) = if_match(&headers)? {
        state.cluster.read_barrier(Consistency::Linearizable).await?;
        if let Some(current) = K::get(&state, &tenant, &id)? {
            if K::revision(&current) != expected {
                return Err(Rejection::StaleDirectoryRevision { id, expected, actual: K::revision(&current) }.into());
            }
        }
    }
    let proposal =
        Proposal { request_id: request_id(&headers)?, proposed_at_ms: now_ms(), command: K::delete(tenant, id) };
    state.cluster.write(proposal).await?.outcome?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn service_provider_config(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Scim {
    let Path(tenant) = path?;
    let tenant = admit(&caller, &state, tenant).await?;
    Ok(scim_json(StatusCode::OK, &discovery::service_provider_config(&base_url(&state, &tenant))))
}

fn listing(documents: Vec<Value>) -> Response {
    let body = json!({
        "schemas": [LIST_SCHEMA],
        "totalResults": documents.len(),
        "startIndex": 1,
        "itemsPerPage": documents.len(),
        "Resources": documents,
    });
    scim_json(StatusCode::OK, &body)
}

/// `ResourceTypes` and `Schemas`: the list, or (with a name) one of them.
async fn discover(
    caller: &Caller,
    state: &AppState,
    tenant: String,
    name: Option<&str>,
    documents: fn(&str) -> Vec<Value>,
) -> Scim {
    let tenant = admit(caller, state, tenant).await?;
    let documents = documents(&base_url(state, &tenant));
    let Some(name) = name else { return Ok(listing(documents)) };
    let found = documents.into_iter().find(|d| d["id"].as_str().is_some_and(|id| id.eq_ignore_ascii_case(name)));
    Ok(scim_json(StatusCode::OK, &found.ok_or_else(|| not_found(&format!("{name:?}")))?))
}

async fn resource_types(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Scim {
    let Path(tenant) = path?;
    discover(&caller, &state, tenant, None, discovery::resource_types).await
}

async fn resource_type(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Scim {
    let Path((tenant, name)) = path?;
    discover(&caller, &state, tenant, Some(&name), discovery::resource_types).await
}

async fn schemas(caller: Caller, State(state): State<AppState>, path: Result<Path<String>, PathRejection>) -> Scim {
    let Path(tenant) = path?;
    discover(&caller, &state, tenant, None, discovery::schemas).await
}

async fn schema(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Scim {
    let Path((tenant, name)) = path?;
    discover(&caller, &state, tenant, Some(&name), discovery::schemas).await
}

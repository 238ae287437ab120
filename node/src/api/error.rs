//! The one place where errors become HTTP responses:
//! `{"error":{"code":"...","message":"..."}}` with the matching status.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use custos_raft::{ClusterError, InvalidId, Rejection};
use serde::Serialize;

/// An error answered to a client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body { error: Inner { code: self.code, message: &self.message } };
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"custos\""));
        }
        if self.status == StatusCode::TOO_MANY_REQUESTS || self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a request body with Content-Type: application/json",
            ),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body exceeds limits.max_body_bytes",
            ),
            JsonRejection::JsonSyntaxError(e) => ApiError::bad_request("malformed_json", e.body_text()),
            JsonRejection::JsonDataError(e) => ApiError::bad_request("invalid_body", e.body_text()),
            other => ApiError::bad_request("invalid_body", other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request("invalid_query", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_request("invalid_path", rejection.body_text())
    }
}

impl From<InvalidId> for ApiError {
    fn from(e: InvalidId) -> Self {
        ApiError::bad_request("invalid_id", e.to_string())
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        let (status, code) = match &rejection {
            Rejection::TenantExists(_) => (StatusCode::CONFLICT, "tenant_exists"),
            Rejection::TenantNotFound(_) => (StatusCode::NOT_FOUND, "tenant_not_found"),
            Rejection::TenantDeleted(_) => (StatusCode::GONE, "tenant_deleted"),
            Rejection::InvalidStatus(_) => (StatusCode::CONFLICT, "invalid_status"),
            Rejection::AdminTokenAlreadySet => (StatusCode::CONFLICT, "already_initialized"),
            Rejection::RequestIdReused(_) => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
        };
        ApiError::new(status, code, rejection.to_string())
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        let (status, code) = match &e {
            ClusterError::NotInitialized => (StatusCode::SERVICE_UNAVAILABLE, "not_initialized"),
            ClusterError::AlreadyInitialized => (StatusCode::CONFLICT, "already_initialized"),
            ClusterError::NoLeader(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_leader"),
            ClusterError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ClusterError::Membership(_) => (StatusCode::CONFLICT, "membership_change_refused"),
            ClusterError::Fatal(_) => (StatusCode::SERVICE_UNAVAILABLE, "node_stopped"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<custos_raft::store::reader::ReadError> for ApiError {
    fn from(e: custos_raft::store::reader::ReadError) -> Self {
        tracing::error!(error = %e, "reading governance state failed");
        ApiError::internal("reading governance state failed; see the node's log")
    }
}

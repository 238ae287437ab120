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
    /// Machine-readable specifics (a denial's decision id, rule and reasons).
    pub details: Option<serde_json::Value>,
    /// When to retry a 429 or 503; one second if unset.
    pub retry_after: Option<std::time::Duration>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), details: None, retry_after: None }
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after);
        self
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
        let body = Body { error: Inner { code: self.code, message: &self.message, details: self.details.as_ref() } };
        let mut response = (self.status, axum::Json(body)).into_response();
        // For the audit event of this request (see `audit.rs`).
        response.extensions_mut().insert(super::audit::ErrorCode(self.code));
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"custos\""));
        }
        if self.status == StatusCode::TOO_MANY_REQUESTS || self.status == StatusCode::SERVICE_UNAVAILABLE {
            // Whole seconds, rounded up: a client that waits that long finds room.
            let seconds = self.retry_after.map_or(1, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
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
            Rejection::TenantNotActive(_) => (StatusCode::CONFLICT, "tenant_not_active"),
            Rejection::NoCustody(_) => (StatusCode::GONE, "tenant_keys_destroyed"),
            Rejection::KeyExists(_) => (StatusCode::CONFLICT, "key_exists"),
            Rejection::KeyNotFound(_) => (StatusCode::NOT_FOUND, "key_not_found"),
            Rejection::KeyDestroyed(_) => (StatusCode::GONE, "key_destroyed"),
            Rejection::KeyNotEnabled { .. } => (StatusCode::CONFLICT, "key_not_enabled"),
            Rejection::StaleKeyVersion { .. } => (StatusCode::CONFLICT, "stale_key_version"),
            Rejection::StaleRevision { .. } => (StatusCode::CONFLICT, "stale_revision"),
            Rejection::InvalidKeyChange(_) => (StatusCode::BAD_REQUEST, "invalid_key_change"),
            Rejection::TooManyKeys(_) => (StatusCode::CONFLICT, "too_many_keys"),
            Rejection::TooManyVersions(_) => (StatusCode::CONFLICT, "too_many_versions"),
            Rejection::DestroyNotDue { .. } => (StatusCode::CONFLICT, "destroy_not_due"),
            Rejection::InvalidAccess(_) => (StatusCode::BAD_REQUEST, "invalid_policy"),
            Rejection::StalePolicyRevision { .. } => (StatusCode::CONFLICT, "stale_revision"),
            Rejection::GrantNotFound(_) => (StatusCode::NOT_FOUND, "grant_not_found"),
            Rejection::TooManyGrants(_) => (StatusCode::CONFLICT, "too_many_grants"),
            Rejection::ApiKeyExists(_) => (StatusCode::CONFLICT, "api_key_exists"),
            Rejection::ApiKeyNotFound(_) => (StatusCode::NOT_FOUND, "api_key_not_found"),
            Rejection::ApiKeyRevoked(_) => (StatusCode::GONE, "api_key_revoked"),
            Rejection::TooManyApiKeys(_) => (StatusCode::CONFLICT, "too_many_api_keys"),
            Rejection::StaleSigningKeys { .. } => (StatusCode::CONFLICT, "stale_revision"),
            Rejection::LoginNotFound => (StatusCode::BAD_REQUEST, "login_not_found"),
            Rejection::SessionNotFound(_) => (StatusCode::NOT_FOUND, "session_not_found"),
            Rejection::NoIdentityProvider(_) => (StatusCode::NOT_FOUND, "no_identity_provider"),
            Rejection::DirectoryEntryNotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Rejection::DirectoryConflict(_) => (StatusCode::CONFLICT, "directory_conflict"),
            Rejection::StaleDirectoryRevision { .. } => (StatusCode::PRECONDITION_FAILED, "stale_version"),
            Rejection::TooManyDirectoryEntries(_) => (StatusCode::CONFLICT, "too_many_directory_entries"),
            Rejection::NotProvisioned(_) => (StatusCode::FORBIDDEN, "not_provisioned"),
            Rejection::TotpReplayed => (StatusCode::UNAUTHORIZED, "totp_replayed"),
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

impl From<custos_actors::custody::CustodyError> for ApiError {
    fn from(e: custos_actors::custody::CustodyError) -> Self {
        use custos_actors::custody::provider::ProviderError;
        use custos_actors::custody::CustodyError as E;
        let (status, code) = match &e {
            E::KeyNotFound(_) => (StatusCode::NOT_FOUND, "key_not_found"),
            E::KeyNotEnabled { .. } => (StatusCode::CONFLICT, "key_not_enabled"),
            E::KeyDestroyed(_) => (StatusCode::GONE, "key_destroyed"),
            E::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed_ciphertext"),
            E::VersionBelowMinimum { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "key_version_retired"),
            E::UnknownVersion { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_key_version"),
            E::DecryptFailed => (StatusCode::UNPROCESSABLE_ENTITY, "decryption_failed"),
            E::NoCustody(_) => (StatusCode::GONE, "tenant_keys_destroyed"),
            E::InvalidContext(_) => (StatusCode::BAD_REQUEST, "invalid_context"),
            E::Provider(ProviderError::Unavailable { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "key_provider_unavailable")
            }
            E::Provider(ProviderError::NotConfigured(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "key_provider_not_configured")
            }
            E::Provider(ProviderError::Unwrap { .. }) | E::CorruptMaterial(_) => {
                tracing::error!(error = %e, "stored key material does not unwrap");
                (StatusCode::INTERNAL_SERVER_ERROR, "key_material_unusable")
            }
            E::Read(read) => {
                tracing::error!(error = %read, "reading governance state failed");
                return ApiError::internal("reading governance state failed; see the node's log");
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<custos_actors::Refusal> for ApiError {
    fn from(refusal: custos_actors::Refusal) -> Self {
        use custos_actors::Refusal;
        let (status, code) = match &refusal {
            Refusal::NotRunning(_) => (StatusCode::SERVICE_UNAVAILABLE, "tenant_starting"),
            Refusal::Degraded(_) => (StatusCode::SERVICE_UNAVAILABLE, "tenant_degraded"),
            Refusal::Busy { .. } => (StatusCode::TOO_MANY_REQUESTS, "tenant_busy"),
        };
        ApiError::new(status, code, refusal.to_string())
    }
}

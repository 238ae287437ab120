//! Admin authentication: a bearer token whose SHA-256 is in governance state.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::error::ApiError;
use super::AppState;

/// Prefix of admin tokens, so a leaked token is recognisable by secret scanners.
pub const TOKEN_PREFIX: &str = "cst_";

/// A new random admin token. Returned once to the operator, never stored in the clear.
pub fn new_admin_token() -> Zeroizing<String> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    Zeroizing::new(format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref())))
}

pub fn token_sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Proof that the request carried the admin token. Handlers take it as an argument.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthenticated("missing Authorization: Bearer <admin token>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::unauthenticated("the Authorization header must be: Bearer <admin token>"))?;
        let expected = match state.admin_sha256.get() {
            Some(hash) => *hash,
            None => {
                let hash = state.cluster.reader().admin_token_sha256()?.ok_or_else(|| {
                    ApiError::new(
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "not_initialized",
                        "this node has no admin credential yet: initialise the cluster or wait until this node has joined",
                    )
                })?;
                // The state machine accepts the admin hash once and never changes it.
                *state.admin_sha256.get_or_init(|| hash)
            }
        };
        if bool::from(token_sha256(token.trim()).ct_eq(&expected)) {
            Ok(Admin)
        } else {
            Err(ApiError::unauthenticated("the admin token is not valid"))
        }
    }
}

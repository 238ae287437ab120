//! [`TokenService`]: issues platform tokens with the active signing key and verifies them
//! against the published keys, from the node's applied state.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use custos_raft::access::{PlatformKeys, SigningAlgorithm, SigningKey};
use custos_raft::store::reader::ReadError;
use custos_raft::GovernanceReader;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::signing::{open_private, SigningError};
use crate::custody::{Custody, CustodyError};

/// The claims of a platform token (ADR-006's JWT format plus `idp`, `idp_sub` and `jti`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlatformClaims {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    pub jti: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub lob: Vec<String>,
    #[serde(default)]
    pub mfa_verified: bool,
    /// Where the identity came from; recorded for audit, never used to decide.
    pub idp: String,
    pub idp_sub: String,
    /// The sign-in session a token was issued from: it stops working when that session ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// Issuer, audience and lifetimes; the same on every node.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub issuer: String,
    pub audience: String,
    pub ttl_s: u64,
    /// Tolerated clock difference when checking `exp` and `nbf`.
    pub skew_s: u64,
    pub algorithm: SigningAlgorithm,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No key signs yet (right after cluster init the leader is creating the first).
    #[error("no token-signing key is active yet; retry shortly")]
    NoSigningKey,
    /// The token is not one of ours or not valid now. Deliberately terse for callers.
    #[error("the token is not valid: {0}")]
    Invalid(String),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Custody(#[from] CustodyError),
    #[error(transparent)]
    Signing(#[from] SigningError),
}

fn jose(algorithm: SigningAlgorithm) -> Algorithm {
    match algorithm {
        SigningAlgorithm::Rs256 => Algorithm::RS256,
        SigningAlgorithm::EdDsa => Algorithm::EdDSA,
    }
}

/// The published keys at one revision, ready for verification, and their JWKS.
struct Published {
    revision: u64,
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    jwks: serde_json::Value,
}

/// The active key at one revision, unwrapped (never leaves this struct; no Debug).
struct Signer {
    revision: u64,
    /// Until when this key signs (the next key's activation), if a next one is published.
    until_ms: Option<u64>,
    /// The JOSE header (`typ`, `alg`, `kid`), base64url: the same for every token it signs.
    header: String,
    /// Parsed once. (jsonwebtoken's `encode` parses the DER key again for every token; for
    /// Ed25519 that parse costs about as much as the signature.)
    pair: KeyPair,
}

enum KeyPair {
    Rs256(ring::signature::RsaKeyPair),
    EdDsa(ring::signature::Ed25519KeyPair),
}

impl Signer {
    fn new(key: &SigningKey, der: &[u8], revision: u64, until_ms: Option<u64>) -> Result<Signer, SigningError> {
        let unusable = |e: &dyn std::fmt::Display| SigningError::Unusable(format!("{} ({e})", key.kid));
        let pair = match key.algorithm {
            SigningAlgorithm::Rs256 => {
                KeyPair::Rs256(ring::signature::RsaKeyPair::from_der(der).map_err(|e| unusable(&e))?)
            }
            SigningAlgorithm::EdDsa => {
                KeyPair::EdDsa(ring::signature::Ed25519KeyPair::from_pkcs8(der).map_err(|e| unusable(&e))?)
            }
        };
        let mut header = Header::new(jose(key.algorithm));
        header.kid = Some(key.kid.clone());
        let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).map_err(|e| unusable(&e))?);
        Ok(Signer { revision, until_ms, header, pair })
    }

    /// `header.claims.signature`, each part base64url (RFC 7515 compact serialization).
    fn sign(&self, claims: &PlatformClaims) -> Result<String, TokenError> {
        let failed = |e: &dyn std::fmt::Display| TokenError::Invalid(format!("signing failed: {e}"));
        let claims = serde_json::to_vec(claims).map_err(|e| failed(&e))?;
        let mut token = String::with_capacity(self.header.len() + claims.len() * 4 / 3 + 360);
        token.push_str(&self.header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&claims, &mut token);
        let signature = match &self.pair {
            KeyPair::Rs256(pair) => {
                let mut signature = vec![0u8; pair.public().modulus_len()];
                let rng = ring::rand::SystemRandom::new();
                pair.sign(&ring::signature::RSA_PKCS1_SHA256, &rng, token.as_bytes(), &mut signature)
                    .map_err(|e| failed(&e))?;
                signature
            }
            KeyPair::EdDsa(pair) => pair.sign(token.as_bytes()).as_ref().to_vec(),
        };
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut token);
        Ok(token)
    }
}

pub struct TokenService {
    reader: GovernanceReader,
    custody: Arc<Custody>,
    settings: TokenSettings,
    published: RwLock<Arc<Published>>,
    signer: tokio::sync::Mutex<Option<Arc<Signer>>>,
    /// RSA signatures (about half a millisecond each) run on the blocking pool, at most one per
    /// core at a time, so they neither stall the async threads nor crowd the cores.
    rsa_slots: Arc<tokio::sync::Semaphore>,
}

fn jwk(key: &SigningKey) -> Result<(serde_json::Value, DecodingKey), String> {
    match key.algorithm {
        SigningAlgorithm::Rs256 => {
            use rsa::pkcs1::DecodeRsaPublicKey;
            use rsa::traits::PublicKeyParts;
            let public = rsa::RsaPublicKey::from_pkcs1_der(&key.public_key).map_err(|e| e.to_string())?;
            let (n, e) =
                (URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()), URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()));
            let decoding = DecodingKey::from_rsa_components(&n, &e).map_err(|e| e.to_string())?;
            let jwk = serde_json::json!({ "kty": "RSA", "use": "sig", "alg": "RS256", "kid": key.kid, "n": n, "e": e });
            Ok((jwk, decoding))
        }
        SigningAlgorithm::EdDsa => {
            let x = URL_SAFE_NO_PAD.encode(&key.public_key);
            let decoding = DecodingKey::from_ed_components(&x).map_err(|e| e.to_string())?;
            let jwk = serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": key.kid, "x": x });
            Ok((jwk, decoding))
        }
    }
}

impl TokenService {
    pub fn new(reader: GovernanceReader, custody: Arc<Custody>, settings: TokenSettings) -> TokenService {
        let empty = Published { revision: 0, keys: HashMap::new(), jwks: serde_json::json!({ "keys": [] }) };
        TokenService {
            reader,
            custody,
            settings,
            published: RwLock::new(Arc::new(empty)),
            signer: tokio::sync::Mutex::new(None),
            rsa_slots: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            )),
        }
    }

    pub fn settings(&self) -> &TokenSettings {
        &self.settings
    }

    /// The published keys as of this node's applied state.
    fn published(&self) -> Result<Arc<Published>, TokenError> {
        let revision = self.reader.platform_keys_revision()?;
        // Replaced whole, never torn: a poisoned lock still holds a consistent value.
        let cached = self.published.read().unwrap_or_else(|p| p.into_inner()).clone();
        if cached.revision == revision {
            return Ok(cached);
        }
        let platform = self.reader.platform_keys()?;
        let mut keys = HashMap::new();
        let mut jwks = Vec::new();
        for key in platform.iter().flat_map(|p| p.signing.iter()) {
            match jwk(key) {
                Ok((jwk, decoding)) => {
                    keys.insert(key.kid.clone(), (jose(key.algorithm), decoding));
                    jwks.push(jwk);
                }
                Err(e) => {
                    tracing::error!(kid = %key.kid, error = %e, "a published signing key does not parse; skipping it")
                }
            }
        }
        let fresh = Arc::new(Published { revision, keys, jwks: serde_json::json!({ "keys": jwks }) });
        *self.published.write().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
        Ok(fresh)
    }

    /// The JWKS document of the published keys.
    pub fn jwks(&self) -> Result<serde_json::Value, TokenError> {
        Ok(self.published()?.jwks.clone())
    }

    /// Verifies signature, algorithm, issuer, audience, expiry and not-before (with the
    /// configured skew) against the published key the token names.
    pub fn verify(&self, token: &str) -> Result<PlatformClaims, TokenError> {
        let invalid = |reason: &str| TokenError::Invalid(reason.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed"))?;
        let kid = header.kid.ok_or_else(|| invalid("no kid"))?;
        let published = self.published()?;
        let (algorithm, key) = published.keys.get(&kid).ok_or_else(|| invalid("unknown kid"))?;
        // The key decides the algorithm, never the token's header.
        if header.alg != *algorithm {
            return Err(invalid("algorithm does not match the key"));
        }
        let mut validation = Validation::new(*algorithm);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.settings.skew_s;
        jsonwebtoken::decode::<PlatformClaims>(token, key, &validation).map(|data| data.claims).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            let reason = match e.kind() {
                ErrorKind::ExpiredSignature => "expired",
                ErrorKind::ImmatureSignature => "not valid yet",
                ErrorKind::InvalidIssuer => "wrong issuer",
                ErrorKind::InvalidAudience => "wrong audience",
                ErrorKind::InvalidSignature => "bad signature",
                ErrorKind::MissingRequiredClaim(_) => "missing a required claim",
                _ => "malformed",
            };
            invalid(reason)
        })
    }

    /// Signs claims built by `make(iat, exp)` with the active key. Returns the token and its
    /// expiry (seconds since the epoch).
    pub async fn issue(
        &self,
        now_ms: u64,
        make: impl FnOnce(u64, u64) -> PlatformClaims,
    ) -> Result<(String, u64), TokenError> {
        let signer = self.signer(now_ms).await?;
        let iat = now_ms / 1000;
        let claims = make(iat, iat + self.settings.ttl_s);
        let exp = claims.exp;
        let token = match signer.pair {
            KeyPair::EdDsa(_) => signer.sign(&claims)?,
            KeyPair::Rs256(_) => {
                let slot = self.rsa_slots.clone().acquire_owned().await;
                tokio::task::spawn_blocking(move || {
                    let _slot = slot;
                    signer.sign(&claims)
                })
                .await
                .map_err(|e| TokenError::Invalid(format!("signing failed: {e}")))??
            }
        };
        Ok((token, exp))
    }

    /// The unwrapped active key, reused while the applied keys do not change and it is still
    /// the one to sign with.
    async fn signer(&self, now_ms: u64) -> Result<Arc<Signer>, TokenError> {
        let revision = self.reader.platform_keys_revision()?;
        let mut slot = self.signer.lock().await;
        if let Some(signer) = slot.as_ref() {
            if signer.revision == revision && signer.until_ms.is_none_or(|until| now_ms < until) {
                return Ok(signer.clone());
            }
        }
        let platform: PlatformKeys = self.reader.platform_keys()?.ok_or(TokenError::NoSigningKey)?;
        let active = platform
            .signing
            .iter()
            .filter(|k| k.activates_at_ms <= now_ms)
            .max_by_key(|k| k.activates_at_ms)
            .ok_or(TokenError::NoSigningKey)?;
        let until_ms =
            platform.signing.iter().map(|k| k.activates_at_ms).filter(|at| *at > active.activates_at_ms).min();
        let kek = self.custody.platform_kek(&platform.custody).await?;
        let der = open_private(&kek, active)?;
        let signer = Arc::new(Signer::new(active, &der, revision, until_ms)?);
        *slot = Some(signer.clone());
        Ok(signer)
    }
}

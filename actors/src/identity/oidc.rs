//! An OIDC relying party (openidconnect): provider discovery, the authorization request
//! (code flow with PKCE S256, state and nonce), the code exchange, and verification of the ID
//! token — signature against the provider's JWKS (fetched again, at most once a minute, when a
//! token names a key it does not know), issuer, audience, nonce, `at_hash`, and expiry with a
//! bounded clock skew. The verified claims become an [`ExternalIdentity`], the only shape of an
//! external identity the rest of Custos sees.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AccessTokenHash, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, Scope, SignatureVerificationError, TokenResponse,
};
use serde::Deserialize;
use zeroize::Zeroizing;

/// Least time between two JWKS fetches caused by unknown key ids.
const JWKS_REFETCH_MIN: Duration = Duration::from_secs(60);

type Client =
    CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

/// One identity provider as configured for Custos.
#[derive(Clone)]
pub struct OidcSettings {
    /// Name recorded as `idp` (e.g. `keycloak`).
    pub name: String,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Zeroizing<String>,
    /// Where the provider sends the browser back (a Custos node's callback route).
    pub redirect_uri: String,
    /// Tolerated clock difference on `exp`.
    pub clock_skew: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the identity provider at {issuer} cannot be used: {reason}")]
    Discovery { issuer: String, reason: String },
    /// The ID token names a signing key the provider's JWKS (as last fetched) lacks.
    #[error("the ID token is signed with a key the provider does not publish")]
    UnknownKey,
    #[error("the code exchange failed: {0}")]
    Exchange(String),
    /// The ID token does not verify (signature, issuer, audience, nonce, expiry, at_hash).
    #[error("the ID token is not valid: {0}")]
    Invalid(String),
    #[error("{0}")]
    Config(String),
}

/// What a login needs to remember between the authorization request and the callback.
pub struct LoginRequest {
    /// Where to send the browser.
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: Zeroizing<String>,
}

/// A person as an identity provider vouched for them, normalised. `idp` and `subject` are
/// recorded for audit only; decisions use `tenant`, `roles`, `lob` and `mfa_verified`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalIdentity {
    pub idp: String,
    pub subject: String,
    pub username: Option<String>,
    pub tenant: Option<String>,
    pub roles: Vec<String>,
    pub lob: Vec<String>,
    /// A second factor took part: `amr` names one (`otp`, `mfa`, `hwk`, `swk`, `sms`, …) or
    /// the `acr` is above the password level.
    pub mfa_verified: bool,
}

/// The claims Custos reads beyond the standard ones.
#[derive(Deserialize)]
struct ExtraClaims {
    sub: String,
    #[serde(default)]
    preferred_username: Option<String>,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    lob: Vec<String>,
    #[serde(default)]
    amr: Vec<String>,
    #[serde(default)]
    acr: Option<String>,
}

const SECOND_FACTORS: [&str; 8] = ["otp", "mfa", "hwk", "swk", "sms", "fido", "face", "fpt"];

pub struct OidcProvider {
    settings: OidcSettings,
    http: reqwest::Client,
    client: Mutex<(Client, Instant)>,
    /// The provider's RP-initiated logout endpoint, when it has one.
    end_session_endpoint: Option<String>,
}

impl OidcProvider {
    /// Discovers the provider (`/.well-known/openid-configuration` and its JWKS). `http`
    /// must not follow redirects.
    pub async fn discover(settings: OidcSettings, http: reqwest::Client) -> Result<OidcProvider, OidcError> {
        let client = Self::client(&settings, &http).await?;
        // openidconnect's core metadata leaves `end_session_endpoint` out; read it directly.
        let discovery = format!("{}/.well-known/openid-configuration", settings.issuer.trim_end_matches('/'));
        let end_session_endpoint = match http.get(&discovery).send().await {
            Ok(response) => response
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|doc| doc["end_session_endpoint"].as_str().map(str::to_string)),
            Err(_) => None,
        };
        Ok(OidcProvider { settings, http, client: Mutex::new((client, Instant::now())), end_session_endpoint })
    }

    /// Where to send the browser to end its session at the provider too (RP-initiated
    /// logout), then back to `post_logout_redirect_uri`.
    pub fn logout_url(&self, post_logout_redirect_uri: &str) -> Option<String> {
        let endpoint = self.end_session_endpoint.as_ref()?;
        let mut url = reqwest::Url::parse(endpoint).ok()?;
        url.query_pairs_mut()
            .append_pair("client_id", &self.settings.client_id)
            .append_pair("post_logout_redirect_uri", post_logout_redirect_uri);
        Some(url.to_string())
    }

    async fn client(settings: &OidcSettings, http: &reqwest::Client) -> Result<Client, OidcError> {
        let fail = |reason: String| OidcError::Discovery { issuer: settings.issuer.clone(), reason };
        let issuer = IssuerUrl::new(settings.issuer.clone()).map_err(|e| fail(e.to_string()))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, http).await.map_err(|e| fail(e.to_string()))?;
        let redirect = RedirectUrl::new(settings.redirect_uri.clone()).map_err(|e| OidcError::Config(e.to_string()))?;
        Ok(CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(settings.client_id.clone()),
            Some(ClientSecret::new(settings.client_secret.to_string())),
        )
        .set_redirect_uri(redirect))
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    fn current(&self) -> Client {
        // Replaced whole, never torn.
        self.client.lock().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    /// A new authorization request: code flow, PKCE S256, fresh state and nonce.
    pub fn begin(&self) -> LoginRequest {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = self
            .current()
            .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
            .add_scope(Scope::new("profile".into()))
            .set_pkce_challenge(challenge)
            .url();
        LoginRequest {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: Zeroizing::new(verifier.secret().clone()),
        }
    }

    /// Exchanges the code and verifies the ID token it brings.
    pub async fn complete(&self, code: &str, pkce_verifier: &str, nonce: &str) -> Result<ExternalIdentity, OidcError> {
        let client = self.current();
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OidcError::Config(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()))
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::Exchange(e.to_string()))?;
        let id_token = response.id_token().ok_or_else(|| OidcError::Invalid("no ID token in the answer".into()))?;
        let nonce = Nonce::new(nonce.to_string());
        let verified = match self.verify(&client, id_token, response.access_token(), &nonce) {
            Err(OidcError::UnknownKey) if self.may_refetch() => {
                // A token signed with a key we do not know yet: the provider rotated. Fetch its
                // keys again (rate-limited) and try once more.
                let fresh = Self::client(&self.settings, &self.http).await?;
                *self.client.lock().unwrap_or_else(|p| p.into_inner()) = (fresh.clone(), Instant::now());
                self.verify(&fresh, id_token, response.access_token(), &nonce)
            }
            other => other,
        }?;
        Ok(verified)
    }

    fn may_refetch(&self) -> bool {
        self.client.lock().unwrap_or_else(|p| p.into_inner()).1.elapsed() >= JWKS_REFETCH_MIN
    }

    fn verify(
        &self,
        client: &Client,
        id_token: &openidconnect::core::CoreIdToken,
        access_token: &openidconnect::AccessToken,
        nonce: &Nonce,
    ) -> Result<ExternalIdentity, OidcError> {
        let invalid = |e: &dyn std::fmt::Display| OidcError::Invalid(e.to_string());
        let skew = chrono::Duration::from_std(self.settings.clock_skew).map_err(|e| invalid(&e))?;
        // Time seen `skew` earlier: a token up to `skew` past its expiry still passes.
        let verifier = client.id_token_verifier().set_time_fn(move || chrono::Utc::now() - skew);
        let claims = id_token.claims(&verifier, nonce).map_err(|e| match e {
            ClaimsVerificationError::SignatureVerification(SignatureVerificationError::NoMatchingKey) => {
                OidcError::UnknownKey
            }
            other => invalid(&other),
        })?;
        if let Some(expected) = claims.access_token_hash() {
            let algorithm = id_token.signing_alg().map_err(|e| invalid(&e))?;
            let key = id_token.signing_key(&verifier).map_err(|e| invalid(&e))?;
            let actual = AccessTokenHash::from_token(access_token, algorithm, key).map_err(|e| invalid(&e))?;
            if actual != *expected {
                return Err(OidcError::Invalid("at_hash does not match the access token".into()));
            }
        }
        // The token verified; read the claims Custos normalises from the same payload.
        let text = id_token.to_string();
        let payload = text.split('.').nth(1).ok_or_else(|| invalid(&"not a JWS"))?;
        let extra: ExtraClaims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).map_err(|e| invalid(&e))?)
            .map_err(|e| invalid(&e))?;
        let mfa_verified = extra.amr.iter().any(|m| SECOND_FACTORS.contains(&m.as_str()))
            || extra.acr.as_deref().and_then(|a| a.parse::<u32>().ok()).is_some_and(|level| level >= 2);
        Ok(ExternalIdentity {
            idp: self.settings.name.clone(),
            subject: extra.sub,
            username: extra.preferred_username,
            tenant: extra.tenant_id,
            roles: extra.roles,
            lob: extra.lob,
            mfa_verified,
        })
    }
}

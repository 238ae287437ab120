//! Operator sign-in through OIDC — with the deployment's identity provider, or with a tenant's
//! own (`?tenant=`; bound through `PUT …/identity-provider`): `GET /v1/auth/login` starts the
//! code flow (PKCE S256, state, nonce) and remembers it in governance state, so `GET /v1/auth/callback` completes it
//! on any node; the session it creates is a replicated record behind an HTTP-only, Secure,
//! SameSite=Lax cookie. `POST /v1/auth/logout` revokes it everywhere and names the provider's
//! logout URL; `GET /v1/auth/session` shows who the cookie is.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use custos_actors::custody::crypto::{labelled_aad, open, seal};
use custos_actors::identity::{ExternalIdentity, OidcError, OidcProvider, OidcSettings};
use custos_actors::policy::{BuiltinRole, PrincipalKind};
use custos_config::IdentityConfig;
use custos_raft::access::{IdentityBinding, LoginState, SessionRecord};
use custos_raft::{Command, Consistency, Output, Proposal, RequestId, SessionId, TenantId, TenantStatus};
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use super::audit::Note;
use super::auth::{token_sha256, Caller, SESSION_COOKIE};
use super::error::ApiError;
use super::{now_ms, AppState};

/// The identity providers people sign in with: the deployment's (`[identity.oidc]`) and each
/// tenant's own (a replicated binding). Each is discovered on first use (and again after a
/// failure or, for a tenant's, a change of its binding), so a node starts while they are down.
pub struct SignIn {
    default: Option<OidcSettings>,
    redirect_uri: String,
    http: reqwest::Client,
    provider: tokio::sync::Mutex<Option<Arc<OidcProvider>>>,
    /// A tenant's provider with the binding revision it was built from.
    tenants: tokio::sync::Mutex<HashMap<TenantId, (u64, Arc<OidcProvider>)>>,
}

/// How long an identity provider may take to answer.
const IDP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Clock difference tolerated on ID tokens' expiry.
const ID_TOKEN_SKEW: std::time::Duration = std::time::Duration::from_secs(60);

impl SignIn {
    pub fn new(config: &IdentityConfig, api_addr: &str) -> anyhow::Result<SignIn> {
        let public = config.public_url.clone().unwrap_or_else(|| format!("https://{api_addr}"));
        let redirect_uri = format!("{}/v1/auth/callback", public.trim_end_matches('/'));
        let default = match &config.oidc {
            Some(oidc) => {
                let secret = std::fs::read_to_string(&oidc.client_secret_file)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", oidc.client_secret_file.display()))?;
                Some(OidcSettings {
                    name: oidc.name.clone(),
                    issuer: oidc.issuer.clone(),
                    client_id: oidc.client_id.clone(),
                    client_secret: Zeroizing::new(secret.trim().to_string()),
                    redirect_uri: redirect_uri.clone(),
                    clock_skew: ID_TOKEN_SKEW,
                })
            }
            None => None,
        };
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &config.idp_ca_file {
            for cert in crate::tls::load_certs(ca)? {
                roots.add(cert)?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // The provider's answers are never followed elsewhere (no redirects: no SSRF).
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(IDP_TIMEOUT)
            .build()?;
        Ok(SignIn {
            default,
            redirect_uri,
            http,
            provider: tokio::sync::Mutex::new(None),
            tenants: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    async fn default_provider(&self) -> Result<Arc<OidcProvider>, ApiError> {
        let settings = self.default.clone().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "sign_in_not_configured",
                "no identity provider is configured (identity.oidc)",
            )
        })?;
        let mut slot = self.provider.lock().await;
        if let Some(provider) = slot.as_ref() {
            return Ok(provider.clone());
        }
        let provider = Arc::new(OidcProvider::discover(settings, self.http.clone()).await?);
        *slot = Some(provider.clone());
        Ok(provider)
    }

    /// The tenant's own provider, as its current binding describes it.
    async fn tenant_provider(
        &self,
        state: &AppState,
        tenant: &TenantId,
    ) -> Result<(Arc<OidcProvider>, IdentityBinding), ApiError> {
        let binding = state
            .cluster
            .reader()
            .identity_binding(tenant)?
            .ok_or_else(|| custos_raft::Rejection::NoIdentityProvider(tenant.clone()))?;
        let mut cache = self.tenants.lock().await;
        if let Some((revision, provider)) = cache.get(tenant) {
            if *revision == binding.revision {
                return Ok((provider.clone(), binding));
            }
        }
        let settings = self.tenant_settings(state, tenant, &binding).await?;
        let provider = Arc::new(OidcProvider::discover(settings, self.http.clone()).await?);
        cache.insert(tenant.clone(), (binding.revision, provider.clone()));
        Ok((provider, binding))
    }

    async fn tenant_settings(
        &self,
        state: &AppState,
        tenant: &TenantId,
        binding: &IdentityBinding,
    ) -> Result<OidcSettings, ApiError> {
        let kek = state.custody.kek(tenant).await?;
        let secret = open(&kek, &binding.client_secret_sealed, &idp_secret_aad(tenant))
            .map_err(|_| ApiError::internal("a tenant's identity-provider secret does not open under its KEK"))?;
        let secret = Zeroizing::new(
            String::from_utf8(secret).map_err(|_| ApiError::internal("an identity-provider secret is not text"))?,
        );
        Ok(OidcSettings {
            name: binding.name.clone(),
            issuer: binding.issuer.clone(),
            client_id: binding.client_id.clone(),
            client_secret: secret,
            redirect_uri: self.redirect_uri.clone(),
            clock_skew: ID_TOKEN_SKEW,
        })
    }

    /// Checks that a provider can be discovered before a tenant binds it.
    pub async fn probe(&self, settings: OidcSettings) -> Result<(), ApiError> {
        OidcProvider::discover(settings, self.http.clone())
            .await
            .map(|_| ())
            .map_err(|e| ApiError::bad_request("idp_unreachable", format!("the identity provider cannot be used: {e}")))
    }

    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// Where clients reach this deployment (`identity.public_url`, or this node).
    pub fn public_url(&self) -> &str {
        self.redirect_uri.trim_end_matches("/v1/auth/callback")
    }
}

/// The AAD of a tenant's sealed identity-provider secret.
pub fn idp_secret_aad(tenant: &TenantId) -> Vec<u8> {
    labelled_aad("custos/idp-secret/v1", &[tenant.as_str().as_bytes()])
}

impl From<OidcError> for ApiError {
    fn from(e: OidcError) -> Self {
        match e {
            OidcError::Discovery { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "idp_unavailable", e.to_string())
            }
            OidcError::Exchange(_) | OidcError::Invalid(_) | OidcError::UnknownKey => {
                ApiError::new(StatusCode::UNAUTHORIZED, "sign_in_failed", e.to_string())
            }
            OidcError::Config(_) => ApiError::internal(e.to_string()),
        }
    }
}

/// The PKCE verifier sealed under the platform KEK, bound to its login's state.
async fn platform_kek(state: &AppState) -> Result<custos_actors::custody::SecretKey, ApiError> {
    let platform = state.cluster.reader().platform_keys()?.ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "signing_key_unavailable",
            "the platform keys are not created yet; retry shortly",
        )
    })?;
    Ok(state.custody.platform_kek(&platform.custody).await?)
}

fn verifier_aad(login_state: &str) -> Vec<u8> {
    labelled_aad("custos/login/v1", &[login_state.as_bytes()])
}

fn redirect(status: StatusCode, location: &str) -> Result<Response, ApiError> {
    let mut response = status.into_response();
    let value = HeaderValue::from_str(location).map_err(|_| ApiError::internal("an unusable redirect location"))?;
    response.headers_mut().insert(header::LOCATION, value);
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn write(state: &AppState, id: String, command: Command) -> Result<Output, ApiError> {
    let request_id = RequestId::new(id).map_err(|e| ApiError::internal(e.to_string()))?;
    let proposal = Proposal { request_id, proposed_at_ms: now_ms(), command };
    Ok(state.cluster.write(proposal).await?.outcome?)
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LoginQuery {
    /// A path on Custos to land on once signed in.
    return_to: Option<String>,
    /// Sign in through this tenant's own identity provider.
    tenant: Option<String>,
}

/// `GET /v1/auth/login`: 302 to the provider's sign-in page.
pub async fn login(
    State(state): State<AppState>,
    query: Result<Query<LoginQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    if let Some(path) = &query.return_to {
        // A path here, never another site: no open redirect.
        let local = path.starts_with('/') && !path.starts_with("//") && path.len() <= 512 && !path.contains('\\');
        if !local {
            return Err(ApiError::bad_request("invalid_query", "return_to must be a path on this service"));
        }
    }
    let tenant = query.tenant.map(TenantId::new).transpose()?;
    let provider = match &tenant {
        Some(tenant) => state.sign_in.tenant_provider(&state, tenant).await?.0,
        None => state.sign_in.default_provider().await?,
    };
    let request = provider.begin();
    let kek = platform_kek(&state).await?;
    let now = now_ms();
    let login = LoginState {
        state: request.state.clone(),
        nonce: request.nonce.clone(),
        pkce_verifier_sealed: seal(&kek, request.pkce_verifier.as_bytes(), &verifier_aad(&request.state)),
        provider: provider.name().to_string(),
        tenant,
        return_to: query.return_to,
        created_at_ms: now,
        expires_at_ms: now + state.identity.login_timeout_s * 1000,
    };
    write(&state, format!("login/{}", request.state), Command::BeginLogin { login }).await?;
    redirect(StatusCode::FOUND, &request.url)
}

#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    // The provider may add parameters of its own (session_state, iss); they are not needed.
    #[serde(flatten)]
    _other: std::collections::HashMap<String, String>,
}

/// `GET /v1/auth/callback`: completes the sign-in started on any node, sets the session
/// cookie and sends the browser on (303).
pub async fn callback(
    State(state): State<AppState>,
    query: Result<Query<CallbackQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    if let Some(error) = query.error {
        let detail = query.error_description.unwrap_or_default();
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "sign_in_failed",
            format!("the identity provider said {error}: {detail}"),
        ));
    }
    let (Some(code), Some(login_state)) = (query.code, query.state) else {
        return Err(ApiError::bad_request("invalid_query", "the callback needs code and state"));
    };
    if login_state.is_empty() || login_state.len() > 128 {
        return Err(custos_raft::Rejection::LoginNotFound.into());
    }
    // Linearizable: a sign-in started on another node a moment ago is found, and one completed
    // on another node (its state consumed) is refused here too, before its code is spent.
    state.cluster.read_barrier(Consistency::Linearizable).await?;
    let login = state.cluster.reader().login(&login_state)?;
    let login = login.filter(|l| l.expires_at_ms > now_ms()).ok_or(custos_raft::Rejection::LoginNotFound)?;
    let kek = platform_kek(&state).await?;
    let verifier = Zeroizing::new(
        open(&kek, &login.pkce_verifier_sealed, &verifier_aad(&login.state))
            .map_err(|_| ApiError::internal("a stored sign-in does not open under the platform KEK"))?,
    );
    let verifier =
        std::str::from_utf8(&verifier).map_err(|_| ApiError::internal("a stored PKCE verifier is not text"))?;
    let (provider, binding) = match &login.tenant {
        Some(tenant) => {
            let (provider, binding) = state.sign_in.tenant_provider(&state, tenant).await?;
            (provider, Some(binding))
        }
        None => (state.sign_in.default_provider().await?, None),
    };
    let mut identity = provider.complete(&code, verifier, &login.nonce).await?;
    if let (Some(tenant), Some(binding)) = (&login.tenant, binding) {
        // Everyone a tenant's own provider vouches for belongs to that tenant, whatever its
        // claims say; people it gives none of Custos' roles get the binding's default roles.
        identity.tenant = Some(tenant.to_string());
        if identity.roles.is_empty() {
            identity.roles = binding.default_roles;
        }
    }
    if let Some(tenant) = identity.tenant.as_deref().and_then(|t| TenantId::new(t).ok()) {
        // A person the tenant's directory holds also has the roles and lines of business it
        // gives (directly and through groups named like roles).
        let name = identity.username.as_deref().unwrap_or(&identity.subject);
        if let Some(entry) = state.cluster.reader().directory_user_by_name(&tenant, name)? {
            let (roles, lob) = super::native::directory_access(&state, &tenant, &entry)?;
            for (have, more) in [(&mut identity.roles, roles), (&mut identity.lob, lob)] {
                for value in more {
                    if !have.contains(&value) {
                        have.push(value);
                    }
                }
            }
        }
    }
    let (session, cookie) = new_session(&state, &identity)?;
    let tenant = session.tenant.clone();
    let subject = session.subject.clone();
    let command = Command::CompleteLogin {
        state: login.state.clone(),
        session,
        max_sessions_per_user: state.identity.max_sessions_per_user,
    };
    write(&state, format!("login-complete/{}", login.state), command).await?;
    let mut response = redirect(StatusCode::SEE_OTHER, login.return_to.as_deref().unwrap_or("/v1/auth/session"))?;
    set_session_cookie(&state, &mut response, &cookie)?;
    let note = Note { tenant, ..Note::default() }
        .detail("subject", subject)
        .detail("idp", identity.idp.clone())
        .detail("idp_sub", identity.subject.clone())
        .detail("mfa_verified", identity.mfa_verified);
    response.extensions_mut().insert(note);
    Ok(response)
}

/// Sets the session cookie on `response`: HTTP-only, Secure, SameSite=Lax.
pub(super) fn set_session_cookie(state: &AppState, response: &mut Response, cookie: &str) -> Result<(), ApiError> {
    let max_age = state.identity.session_absolute_timeout_s;
    let set = format!("{SESSION_COOKIE}={cookie}; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age={max_age}");
    response
        .headers_mut()
        .insert(header::SET_COOKIE, HeaderValue::from_str(&set).map_err(|_| ApiError::internal("cookie"))?);
    Ok(())
}

/// The session record (times are set by the state machine) and the cookie value for a person
/// the provider vouched for. Their tenant must be active; a person without a tenant signs in
/// only as a super admin.
pub(super) fn new_session(
    state: &AppState,
    identity: &ExternalIdentity,
) -> Result<(SessionRecord, Zeroizing<String>), ApiError> {
    let refuse = |code, message: String| ApiError::new(StatusCode::FORBIDDEN, code, message);
    let tenant = match &identity.tenant {
        Some(raw) => {
            let tenant = TenantId::new(raw.clone())
                .map_err(|_| refuse("no_tenant", format!("the identity provider names an invalid tenant {raw:?}")))?;
            match state.cluster.reader().tenant(&tenant)? {
                Some(t) if t.status == TenantStatus::Active => Some(tenant),
                _ => {
                    return Err(refuse("tenant_not_active", format!("tenant {tenant} does not exist or is not active")))
                }
            }
        }
        None if identity.roles.iter().any(|r| r == BuiltinRole::SuperAdmin.as_str()) => None,
        None => return Err(refuse("no_tenant", "the identity provider names no tenant for this person".into())),
    };
    let name = identity.username.clone().unwrap_or_else(|| identity.subject.clone());
    let id = SessionId::new(super::auth::random_id()).map_err(|e| ApiError::internal(e.to_string()))?;
    let secret = super::auth::random_secret();
    let cookie = Zeroizing::new(format!("{id}.{}", secret.as_str()));
    let now = now_ms();
    let session = SessionRecord {
        id,
        secret_sha256: token_sha256(&secret),
        subject: format!("user:{name}"),
        tenant,
        roles: identity.roles.clone(),
        lob: identity.lob.clone(),
        mfa_verified: identity.mfa_verified,
        idp: identity.idp.clone(),
        idp_sub: identity.subject.clone(),
        created_at_ms: now,
        last_seen_ms: now,
        idle_timeout_ms: state.identity.session_idle_timeout_s * 1000,
        expires_at_ms: now + state.identity.session_absolute_timeout_s * 1000,
        revoked_at_ms: None,
    };
    Ok((session, cookie))
}

/// `GET /v1/auth/session`: who the request is.
pub async fn session(caller: Caller) -> Json<serde_json::Value> {
    let p = &caller.principal;
    Json(json!({
        "subject": p.subject,
        "kind": p.kind.as_str(),
        "tenant_id": p.tenant.as_ref().map(|t| t.as_str()),
        "roles": p.roles,
        "lob": p.lob,
        "mfa_verified": p.mfa_verified,
        "idp": p.idp,
        "idp_sub": p.idp_sub,
    }))
}

/// `POST /v1/auth/logout`: revokes the cookie's session on every node, clears the cookie, and
/// names the provider's logout URL (RP-initiated logout) to end the sign-in there too.
pub async fn logout(caller: Caller, State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if caller.principal.kind != PrincipalKind::User {
        return Err(ApiError::bad_request("unsupported_credential", "only a signed-in session logs out"));
    }
    let id = super::auth::session_cookie(&headers)
        .and_then(|(id, _)| SessionId::new(id).ok())
        .ok_or_else(|| ApiError::bad_request("unsupported_credential", "log out with the session cookie"))?;
    write(&state, format!("logout/{id}"), Command::RevokeSession { id }).await?;
    let back = format!("{}/v1/auth/login", state.sign_in.redirect_uri().trim_end_matches("/v1/auth/callback"));
    let provider = match &caller.principal.tenant {
        // A person of a tenant with its own provider signed in there.
        Some(tenant)
            if state.cluster.reader().identity_binding(tenant)?.is_some_and(|b| b.name == caller.principal.idp) =>
        {
            state.sign_in.tenant_provider(&state, tenant).await.ok().map(|(p, _)| p)
        }
        _ => state.sign_in.default_provider().await.ok(),
    };
    let provider_logout = provider.and_then(|p| p.logout_url(&back));
    let mut response = Json(json!({ "logged_out": true, "provider_logout_url": provider_logout })).into_response();
    let clear = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=0");
    response
        .headers_mut()
        .insert(header::SET_COOKIE, HeaderValue::from_str(&clear).map_err(|_| ApiError::internal("cookie"))?);
    Ok(response)
}

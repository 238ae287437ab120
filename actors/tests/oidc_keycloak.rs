//! The OIDC relying party against a real Keycloak 26 (`deploy/scripts/keycloak.sh`, realm
//! `deploy/keycloak/realm-custos.json`), driving its real login form: the code flow with PKCE,
//! ID-token verification, and claims normalised into the platform identity, MFA included.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use custos_actors::identity::{ExternalIdentity, OidcError, OidcProvider, OidcSettings};
use custos_chaos_tests::{keycloak_log_in, query_param, KeycloakServer, RealmUser};

fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn tls() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// An HTTP client that follows no redirects.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Logs `user` in through Keycloak's pages; returns the callback's `code` and `state`.
async fn log_in(url: &str, user: RealmUser) -> (String, String) {
    let callback = keycloak_log_in(url, user).await.expect("login");
    (query_param(&callback, "code").unwrap_or_default(), query_param(&callback, "state").unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_logins_verify_and_normalise() {
    let keycloak = KeycloakServer::start(&KeycloakServer::script_in(repo_root()), None).expect("Keycloak");
    let settings = OidcSettings {
        name: "keycloak".into(),
        issuer: format!("{}/realms/custos", keycloak.url().unwrap()),
        client_id: "custos".into(),
        client_secret: "custos-test-secret".to_string().into(),
        redirect_uri: "https://127.0.0.1:8443/v1/auth/callback".into(),
        clock_skew: Duration::from_secs(30),
    };
    let provider = OidcProvider::discover(settings.clone(), http()).await.expect("discovery");

    // alice: password only. The authorization request carries PKCE S256, state and nonce.
    let login = provider.begin();
    assert!(login.url.contains("code_challenge_method=S256"), "{}", login.url);
    // The realm brokers a SAML provider too (docs/identity.md): its sign-in page offers it.
    let page = http().get(&login.url).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("/broker/corp-saml/login"), "no SAML broker on the login page");
    assert!(login.url.contains(&format!("state={}", login.state)));
    let (code, state) = log_in(&login.url, RealmUser::ALICE).await;
    assert_eq!(state, login.state, "the provider returns our state");
    let alice = provider.complete(&code, &login.pkce_verifier, &login.nonce).await.expect("alice verifies");
    assert_eq!(
        alice,
        ExternalIdentity {
            idp: "keycloak".into(),
            subject: alice.subject.clone(),
            username: Some("alice".into()),
            tenant: Some("acme".into()),
            roles: vec!["admin".into()],
            lob: vec!["engineering".into(), "security".into()],
            mfa_verified: false,
        }
    );
    // A code works once.
    assert!(matches!(provider.complete(&code, &login.pkce_verifier, &login.nonce).await, Err(OidcError::Exchange(_))));

    // dave: password and TOTP, so MFA-verified.
    let login = provider.begin();
    let (code, _) = log_in(&login.url, RealmUser::DAVE).await;
    let dave = provider.complete(&code, &login.pkce_verifier, &login.nonce).await.expect("dave verifies");
    assert!(dave.mfa_verified, "{dave:?}");
    assert_eq!((dave.tenant.as_deref(), dave.roles.as_slice()), (Some("acme"), ["admin".to_string()].as_slice()));

    // Another login's nonce does not verify this one's ID token.
    let login = provider.begin();
    let (code, _) = log_in(&login.url, RealmUser::CAROL).await;
    let other = provider.begin();
    let wrong = provider.complete(&code, &login.pkce_verifier, &other.nonce).await;
    assert!(matches!(wrong, Err(OidcError::Invalid(_))), "{wrong:?}");

    // A wrong PKCE verifier does not get the code exchanged.
    let login = provider.begin();
    let (code, _) = log_in(&login.url, RealmUser::BOB).await;
    let wrong = provider.complete(&code, &other.pkce_verifier, &login.nonce).await;
    assert!(matches!(wrong, Err(OidcError::Exchange(_))), "{wrong:?}");

    // A provider that answers for another issuer is refused at discovery.
    let elsewhere = OidcSettings { issuer: format!("{}/realms/master-typo", keycloak.url().unwrap()), ..settings };
    assert!(matches!(OidcProvider::discover(elsewhere, http()).await, Err(OidcError::Discovery { .. })));
}

//! The OIDC relying party against a real Keycloak 26 (`deploy/scripts/keycloak.sh`, realm
//! `deploy/keycloak/realm-custos.json`), driving its real login form: the code flow with PKCE,
//! ID-token verification, and claims normalised into the platform identity, MFA included.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use custos_actors::identity::{ExternalIdentity, OidcError, OidcProvider, OidcSettings};
use custos_chaos_tests::KeycloakServer;
use hmac::{Hmac, Mac};

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

/// An HTTP client that follows no redirects, with or without a cookie jar (a browser).
fn http(cookies: bool) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls())
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(cookies)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The test realm's TOTP for dave: HMAC-SHA1 over the 30 s counter, 6 digits (RFC 6238).
fn totp() -> String {
    let counter = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 30;
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(b"custos-dave-totp-k01").unwrap();
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let code = u32::from_be_bytes([digest[offset] & 0x7f, digest[offset + 1], digest[offset + 2], digest[offset + 3]]);
    format!("{:06}", code % 1_000_000)
}

/// The `action` of the form with `id` in a page, unescaped.
fn form_action(page: &str, id: &str) -> Option<String> {
    let form = &page[page.find(&format!("id=\"{id}\""))?..];
    let start = form.find("action=\"")? + "action=\"".len();
    let end = start + form[start..].find('"')?;
    Some(form[start..end].replace("&amp;", "&"))
}

/// Logs `user` in through Keycloak's pages like a browser; returns the callback's `code` and
/// `state`.
async fn log_in(url: &str, user: &str, password: &str, otp: bool) -> (String, String) {
    let browser = http(true);
    let page = browser.get(url).send().await.unwrap().text().await.unwrap();
    let action = form_action(&page, "kc-form-login").unwrap_or_else(|| panic!("no login form: {page}"));
    let mut reply = browser
        .post(&action)
        .form(&[("username", user), ("password", password), ("credentialId", "")])
        .send()
        .await
        .unwrap();
    if otp {
        let page = reply.text().await.unwrap();
        let action = form_action(&page, "kc-otp-login-form").unwrap_or_else(|| panic!("no OTP form: {page}"));
        reply = browser.post(&action).form(&[("otp", totp().as_str())]).send().await.unwrap();
    }
    assert_eq!(reply.status(), 302, "login of {user} did not redirect back");
    let location = reply.headers()["location"].to_str().unwrap().to_string();
    let query = location.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let param = |name: &str| {
        query.split('&').find_map(|kv| kv.strip_prefix(&format!("{name}="))).map(str::to_string).unwrap_or_default()
    };
    (param("code"), param("state"))
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
    let provider = OidcProvider::discover(settings.clone(), http(false)).await.expect("discovery");

    // alice: password only. The authorization request carries PKCE S256, state and nonce.
    let login = provider.begin();
    assert!(login.url.contains("code_challenge_method=S256"), "{}", login.url);
    assert!(login.url.contains(&format!("state={}", login.state)));
    let (code, state) = log_in(&login.url, "alice", "alice-password", false).await;
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
    let (code, _) = log_in(&login.url, "dave", "dave-password", true).await;
    let dave = provider.complete(&code, &login.pkce_verifier, &login.nonce).await.expect("dave verifies");
    assert!(dave.mfa_verified, "{dave:?}");
    assert_eq!((dave.tenant.as_deref(), dave.roles.as_slice()), (Some("acme"), ["admin".to_string()].as_slice()));

    // Another login's nonce does not verify this one's ID token.
    let login = provider.begin();
    let (code, _) = log_in(&login.url, "carol", "carol-password", false).await;
    let other = provider.begin();
    let wrong = provider.complete(&code, &login.pkce_verifier, &other.nonce).await;
    assert!(matches!(wrong, Err(OidcError::Invalid(_))), "{wrong:?}");

    // A wrong PKCE verifier does not get the code exchanged.
    let login = provider.begin();
    let (code, _) = log_in(&login.url, "bob", "bob-password", false).await;
    let wrong = provider.complete(&code, &other.pkce_verifier, &login.nonce).await;
    assert!(matches!(wrong, Err(OidcError::Exchange(_))), "{wrong:?}");

    // A provider that answers for another issuer is refused at discovery.
    let elsewhere = OidcSettings { issuer: format!("{}/realms/master-typo", keycloak.url().unwrap()), ..settings };
    assert!(matches!(OidcProvider::discover(elsewhere, http(false)).await, Err(OidcError::Discovery { .. })));
}

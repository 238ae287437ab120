//! The client API over HTTPS, as the CLI uses it. Writes carry an Idempotency-Key and are
//! retried with it on transport errors, 503 and 504, so a retry never applies twice.

use std::path::Path;
use std::time::Duration;

use custos_raft::network::error_chain;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Attempts for one CLI request before giving up.
const MAX_ATTEMPTS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Setup(String),
    #[error("cannot reach {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("{code} (HTTP {status}): {message}")]
    Api { status: u16, code: String, message: String },
}

pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl ApiClient {
    /// `base` is `https://host:port`; `ca` pins the cluster CA (otherwise no root is trusted).
    pub fn new(base: &str, ca: Option<&Path>, token: Option<String>) -> Result<Self, ClientError> {
        crate::tls::install_crypto_provider();
        let roots = match ca {
            Some(path) => crate::tls::root_store(path).map_err(|e| ClientError::Setup(e.to_string()))?,
            None => {
                return Err(ClientError::Setup(
                    "no CA certificate given: pass --ca-cert or set CUSTOS_CA_CERT to the cluster CA".into(),
                ))
            }
        };
        let tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(ApiClient { http, base: base.trim_end_matches('/').to_string(), token })
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.request(Method::GET, path, None).await
    }

    /// Sends a request, retrying with one Idempotency-Key while the outcome is unknown.
    pub async fn request(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        let url = format!("{}{}", self.base, path);
        // Time-ordered, like the ids the node makes itself (see `api::request_id`).
        let key = uuid::Uuid::now_v7().to_string();
        let mut last = None;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            let mut request = self.http.request(method.clone(), &url).header("idempotency-key", &key);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = &body {
                request = request.json(body);
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) => {
                    last = Some(ClientError::Transport { url: url.clone(), reason: error_chain(&e) });
                    continue;
                }
            };
            let status = response.status();
            let value: Value = response.json().await.unwrap_or(Value::Null);
            if status.is_success() {
                return Ok(value);
            }
            let error = ClientError::Api {
                status: status.as_u16(),
                code: value["error"]["code"].as_str().unwrap_or("unknown").to_string(),
                message: value["error"]["message"].as_str().unwrap_or("no message").to_string(),
            };
            if status != StatusCode::SERVICE_UNAVAILABLE && status != StatusCode::GATEWAY_TIMEOUT {
                return Err(error);
            }
            last = Some(error);
        }
        // MAX_ATTEMPTS > 0, so the loop ran and recorded an error.
        Err(last.expect("at least one attempt was made"))
    }

    /// Follows a Server-Sent Events stream, calling `on_event(event, data)` for each event,
    /// until the server ends it or `on_event` returns false. No overall deadline: a tail runs
    /// as long as its reader wants.
    pub async fn events(&self, path: &str, mut on_event: impl FnMut(&str, &str) -> bool) -> Result<(), ClientError> {
        /// A line longer than this is not an event this API sends.
        const MAX_LINE: usize = 16 * 1024 * 1024;
        let url = format!("{}{}", self.base, path);
        let transport = |e: reqwest::Error| ClientError::Transport { url: url.clone(), reason: error_chain(&e) };
        let mut request =
            self.http.get(&url).header("accept", "text/event-stream").timeout(Duration::from_secs(365 * 24 * 3600));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            let value: Value = response.json().await.unwrap_or(Value::Null);
            return Err(ClientError::Api {
                status: status.as_u16(),
                code: value["error"]["code"].as_str().unwrap_or("unknown").to_string(),
                message: value["error"]["message"].as_str().unwrap_or("no message").to_string(),
            });
        }
        let (mut buffer, mut event, mut data) = (Vec::new(), String::new(), String::new());
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\r', '\n']);
                if line.is_empty() {
                    if !data.is_empty() && !on_event(if event.is_empty() { "message" } else { &event }, &data) {
                        return Ok(());
                    }
                    event.clear();
                    data.clear();
                } else if let Some(value) = line.strip_prefix("event:") {
                    event = value.trim_start().to_string();
                } else if let Some(value) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value.strip_prefix(' ').unwrap_or(value));
                }
            }
            if buffer.len() > MAX_LINE {
                return Err(ClientError::Setup(format!("an event line longer than {MAX_LINE} bytes")));
            }
        }
        Ok(())
    }
}

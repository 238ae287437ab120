//! The encryption workload: clients on random nodes encrypt fresh plaintexts with one key and
//! decrypt ciphertexts acknowledged earlier. Its promise: every ciphertext a client was given
//! decrypts to its plaintext, during the faults (when the node answers at all) and after them.
//! A decryption refused for a reason about the ciphertext or its key (any 4xx but 429) breaks
//! it; an unavailable node (503, a timeout) does not.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};

use crate::ProcessCluster;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Decryptions in flight while checking.
const CHECKS_IN_FLIGHT: usize = 16;

#[derive(Debug, Clone)]
pub struct CryptoWorkload {
    pub tenant: String,
    pub key: String,
    pub clients: usize,
    pub duration: Duration,
    pub seed: u64,
}

/// What the encryption clients saw.
#[derive(Debug, Default)]
pub struct CryptoRecord {
    /// Acknowledged ciphertexts with the plaintext (base64) each must decrypt to.
    pub sealed: Vec<(String, String)>,
    pub ok: usize,
    /// Refused or unanswered (a node down, no leader, a timeout): no promise was made.
    pub failed: usize,
    /// Why, counted: `503 audit_backlog`, `timeout`, `connect` …
    pub failures: BTreeMap<String, usize>,
    /// Promises broken: an acknowledged ciphertext that decrypted to something else or was
    /// refused as undecryptable.
    pub anomalies: Vec<String>,
}

impl CryptoRecord {
    fn fail(&mut self, why: String) {
        self.failed += 1;
        *self.failures.entry(why).or_default() += 1;
    }
}

/// Runs the workload until `duration` has passed.
pub async fn run(cluster: Arc<ProcessCluster>, workload: CryptoWorkload) -> CryptoRecord {
    let started = Instant::now();
    let record = Arc::new(Mutex::new(CryptoRecord::default()));
    let nodes = cluster.ids();
    let mut tasks = Vec::new();
    for client in 0..workload.clients {
        let (cluster, record, nodes, workload) = (cluster.clone(), record.clone(), nodes.clone(), workload.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(workload.seed.wrapping_mul(7_919).wrapping_add(client as u64));
            let mut n = 0u64;
            while started.elapsed() < workload.duration {
                let node = nodes[rng.gen_range(0..nodes.len())];
                let earlier = {
                    let record = record.lock().unwrap_or_else(|p| p.into_inner());
                    (!record.sealed.is_empty() && rng.gen_bool(0.3))
                        .then(|| record.sealed[rng.gen_range(0..record.sealed.len())].clone())
                };
                match earlier {
                    Some((ciphertext, plaintext)) => {
                        let outcome = decrypt(&cluster, node, &workload, &ciphertext).await;
                        let mut record = record.lock().unwrap_or_else(|p| p.into_inner());
                        match outcome {
                            Opened::Plaintext(got) if got == plaintext => record.ok += 1,
                            Opened::Plaintext(got) => {
                                record.anomalies.push(format!("{ciphertext} decrypted to {got}, not {plaintext}"))
                            }
                            Opened::Refused(why) => {
                                record.anomalies.push(format!("{ciphertext} refused by node {node}: {why}"))
                            }
                            Opened::Unavailable(why) => record.fail(why),
                        }
                    }
                    None => {
                        n += 1;
                        let plaintext = STANDARD.encode(format!("chaos {} client {client} #{n}", workload.seed));
                        let sealed = encrypt(&cluster, node, &workload, &plaintext).await;
                        let mut record = record.lock().unwrap_or_else(|p| p.into_inner());
                        match sealed {
                            Ok(ciphertext) => {
                                record.ok += 1;
                                record.sealed.push((ciphertext, plaintext));
                            }
                            Err(why) => record.fail(why),
                        }
                    }
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let taken = std::mem::take(&mut *record.lock().unwrap_or_else(|p| p.into_inner()));
    taken
}

enum Opened {
    Plaintext(String),
    /// An answer saying the ciphertext cannot be decrypted (a broken promise).
    Refused(String),
    /// No answer, or one that says nothing about the ciphertext (503, timeout): why.
    Unavailable(String),
}

async fn call(
    cluster: &ProcessCluster,
    node: u64,
    workload: &CryptoWorkload,
    op: &str,
    body: Value,
) -> Result<(u16, Value), String> {
    let path = format!("/v1/tenants/{}/keys/{}/{op}", workload.tenant, workload.key);
    let url = cluster.url(node, &path).map_err(|e| e.to_string())?;
    let mut request = cluster.http().request(Method::POST, url).json(&body);
    if let Some(token) = cluster.token() {
        request = request.bearer_auth(token);
    }
    let response = request.timeout(REQUEST_TIMEOUT).send().await.map_err(|e| {
        if e.is_timeout() {
            "timeout".to_string()
        } else if e.is_connect() {
            "connect".to_string()
        } else {
            "request".to_string()
        }
    })?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

/// `503 audit_backlog`: what a failed answer said.
fn reason(status: u16, body: &Value) -> String {
    format!("{status} {}", body["error"]["code"].as_str().unwrap_or("-"))
}

async fn encrypt(
    cluster: &ProcessCluster,
    node: u64,
    workload: &CryptoWorkload,
    plaintext: &str,
) -> Result<String, String> {
    match call(cluster, node, workload, "encrypt", json!({ "plaintext": plaintext })).await? {
        (200, body) => body["ciphertext"].as_str().map(str::to_string).ok_or_else(|| "200 without ciphertext".into()),
        (status, body) => Err(reason(status, &body)),
    }
}

async fn decrypt(cluster: &ProcessCluster, node: u64, workload: &CryptoWorkload, ciphertext: &str) -> Opened {
    match call(cluster, node, workload, "decrypt", json!({ "ciphertext": ciphertext })).await {
        Ok((200, body)) => Opened::Plaintext(body["plaintext"].as_str().unwrap_or_default().to_string()),
        // Whatever is about the ciphertext or its key is a broken promise; being busy,
        // starting or cut off is not.
        Ok((status, body)) if (400..500).contains(&status) && status != 429 => Opened::Refused(reason(status, &body)),
        Ok((status, body)) => Opened::Unavailable(reason(status, &body)),
        Err(why) => Opened::Unavailable(why),
    }
}

/// After the faults: every acknowledged ciphertext decrypts to its plaintext, each asked of
/// the nodes in turn (so every node decrypts its share). Returns the broken promises.
pub async fn check_decryptable(
    cluster: &ProcessCluster,
    workload: &CryptoWorkload,
    sealed: &[(String, String)],
) -> Vec<String> {
    let nodes = cluster.ids();
    let checks = sealed.iter().enumerate().map(|(i, (ciphertext, plaintext))| {
        let node = nodes[i % nodes.len()];
        async move {
            // A node just back may still be catching up: a few tries before it counts.
            let mut outcome = Opened::Unavailable("not asked".into());
            for _ in 0..50 {
                outcome = decrypt(cluster, node, workload, ciphertext).await;
                if !matches!(outcome, Opened::Unavailable(_)) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            match outcome {
                Opened::Plaintext(got) if got == *plaintext => None,
                Opened::Plaintext(got) => Some(format!("node {node}: {ciphertext} decrypted to {got}")),
                Opened::Refused(why) => Some(format!("node {node}: {ciphertext} refused: {why}")),
                Opened::Unavailable(why) => Some(format!("node {node}: {ciphertext} never answered ({why})")),
            }
        }
    });
    futures::stream::iter(checks).buffer_unordered(CHECKS_IN_FLIGHT).filter_map(std::future::ready).collect().await
}

//! The register workload: concurrent clients, each talking to a random node, reading,
//! writing and compare-and-setting tenants' display names, recording a [`history`] as they go.
//!
//! Each tenant is one register (its display name). Every write writes a value never written
//! before, so a tenant's revision identifies its value, and the API's compare-and-set on the
//! revision (`PATCH /v1/tenants/{id}` with `expected_revision`) is a compare-and-set on the
//! value the client read. A write whose outcome is unknown (timeout, connection lost, a 503 or
//! 504 after which it may still apply) is `info`, and its client continues as a new process.
//!
//! [`history`]: crate::history

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};

use crate::history::{Event, Op, Phase, Ret};
use crate::ProcessCluster;

/// One request's deadline: longer than an election, shorter than a scenario.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Workload {
    /// Tenants used as registers; they must exist.
    pub keys: Vec<String>,
    pub clients: usize,
    pub duration: Duration,
    pub seed: u64,
}

/// What a run recorded.
#[derive(Debug, Default)]
pub struct Recorded {
    pub events: Vec<Event>,
}

impl Recorded {
    pub fn count(&self, phase: Phase) -> usize {
        self.events.iter().filter(|e| e.phase == phase).count()
    }

    /// The history as JSON lines.
    pub fn to_jsonl(&self) -> String {
        self.events.iter().filter_map(|e| serde_json::to_string(e).ok()).map(|l| l + "\n").collect()
    }
}

enum Outcome {
    Ok(Ret),
    Fail,
    Info,
}

/// Runs the workload against `cluster` until `duration` has passed.
pub async fn run(cluster: Arc<ProcessCluster>, workload: Workload) -> Recorded {
    let started = Instant::now();
    let events = Arc::new(Mutex::new(Vec::new()));
    let unique = Arc::new(AtomicU64::new(0));
    let nodes = cluster.ids();
    let mut tasks = Vec::new();
    for client in 0..workload.clients {
        let (cluster, events, unique, nodes) = (cluster.clone(), events.clone(), unique.clone(), nodes.clone());
        let workload = workload.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(workload.seed.wrapping_mul(1_000_003).wrapping_add(client as u64));
            let mut process = client as u64;
            // The last value and revision this client read of each key, for compare-and-set.
            let mut seen: std::collections::HashMap<String, (String, u64)> = Default::default();
            while started.elapsed() < workload.duration {
                let node = nodes[rng.gen_range(0..nodes.len())];
                let key = workload.keys[rng.gen_range(0..workload.keys.len())].clone();
                let roll = rng.gen_range(0..10);
                let op = if roll < 5 {
                    Op::Read
                } else if roll < 8 || !seen.contains_key(&key) {
                    Op::Write { value: format!("v{}", unique.fetch_add(1, Ordering::Relaxed)) }
                } else {
                    let (expected, _) = seen[&key].clone();
                    Op::Cas { expected, new: format!("v{}", unique.fetch_add(1, Ordering::Relaxed)) }
                };
                let record = |phase, ret| Event {
                    process,
                    phase,
                    key: key.clone(),
                    op: op.clone(),
                    ret,
                    time_ns: started.elapsed().as_nanos() as u64,
                };
                events.lock().unwrap_or_else(|p| p.into_inner()).push(record(Phase::Invoke, None));
                let outcome = perform(&cluster, node, &key, &op, &mut seen).await;
                let event = match outcome {
                    Outcome::Ok(ret) => record(Phase::Ok, Some(ret)),
                    Outcome::Fail => record(Phase::Fail, None),
                    Outcome::Info => record(Phase::Info, None),
                };
                let indeterminate = event.phase == Phase::Info;
                events.lock().unwrap_or_else(|p| p.into_inner()).push(event);
                if indeterminate {
                    // This process may still have an operation taking effect: a new one goes on.
                    process += workload.clients as u64;
                    seen.remove(&key);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let events = std::mem::take(&mut *events.lock().unwrap_or_else(|p| p.into_inner()));
    Recorded { events }
}

async fn perform(
    cluster: &ProcessCluster,
    node: u64,
    key: &str,
    op: &Op,
    seen: &mut std::collections::HashMap<String, (String, u64)>,
) -> Outcome {
    let Ok(url) = cluster.url(node, &format!("/v1/tenants/{key}")) else { return Outcome::Fail };
    let mut request = match op {
        Op::Read => cluster.http().request(Method::GET, &url),
        Op::Write { value } => cluster.http().request(Method::PATCH, &url).json(&json!({ "display_name": value })),
        Op::Cas { new, .. } => {
            let revision = seen.get(key).map(|(_, r)| *r).unwrap_or(0);
            cluster
                .http()
                .request(Method::PATCH, &url)
                .json(&json!({ "display_name": new, "expected_revision": revision }))
        }
    };
    if let Some(token) = cluster.token() {
        request = request.bearer_auth(token);
    }
    // One key per attempt: the node's own retries stay exactly-once.
    request = request.header("idempotency-key", attempt_id(op, key)).timeout(REQUEST_TIMEOUT);
    let response = match request.send().await {
        Ok(response) => response,
        // Never connected: nothing was sent. Otherwise a read had no effect and a write may
        // have.
        Err(e) if e.is_connect() => return Outcome::Fail,
        Err(_) => return if matches!(op, Op::Read) { Outcome::Fail } else { Outcome::Info },
    };
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    match (op, status) {
        (Op::Read, 200) => {
            let value = body["display_name"].as_str().map(str::to_string);
            if let (Some(v), Some(r)) = (&value, body["revision"].as_u64()) {
                seen.insert(key.to_string(), (v.clone(), r));
            }
            Outcome::Ok(Ret::Read { value })
        }
        (Op::Write { .. }, 200) => Outcome::Ok(Ret::Written),
        (Op::Cas { .. }, 200) => Outcome::Ok(Ret::Cas { applied: true }),
        (Op::Cas { .. }, 409) if body["error"]["code"] == "stale_revision" => Outcome::Ok(Ret::Cas { applied: false }),
        (Op::Read, _) => Outcome::Fail,
        // The write may have been committed before the answer was lost.
        (_, 503 | 504) => Outcome::Info,
        _ => Outcome::Fail,
    }
}

/// A request id unique to this attempt.
fn attempt_id(op: &Op, key: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let kind = match op {
        Op::Read => "r",
        Op::Write { .. } => "w",
        Op::Cas { .. } => "c",
    };
    format!("chaos-{}-{kind}-{key}-{n}", std::process::id())
}

//! The benchmark peer: a 3-member etcd cluster on loopback with TLS for clients and mutual
//! TLS between members, using the same CA and node certificates as the Custos nodes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde_json::json;

pub struct EtcdCluster {
    children: Vec<Child>,
    pub client_urls: Vec<String>,
    metrics_urls: Vec<String>,
    _data: tempfile::TempDir,
}

impl EtcdCluster {
    pub async fn start(binary: &Path, tls_dir: &Path, members: usize) -> Result<Self> {
        let data = tempfile::Builder::new().prefix("custos-bench-etcd-").tempdir()?;
        let ports = custos_chaos_tests::free_ports(3 * members)?;
        let peer = |i: usize| format!("https://{}", ports[3 * i + 1]);
        let initial: Vec<String> = (0..members).map(|i| format!("e{}={}", i + 1, peer(i))).collect();
        let initial = initial.join(",");
        let mut cluster =
            EtcdCluster { children: Vec::new(), client_urls: Vec::new(), metrics_urls: Vec::new(), _data: data };
        for i in 0..members {
            let client = format!("https://{}", ports[3 * i]);
            let metrics = format!("http://{}", ports[3 * i + 2]);
            let node = i + 1;
            let file = |name: String| -> PathBuf { tls_dir.join(name) };
            let log = std::fs::File::create(cluster._data.path().join(format!("e{node}.log")))?;
            let child = Command::new(binary)
                .arg(format!("--name=e{node}"))
                .arg(format!("--data-dir={}", cluster._data.path().join(format!("e{node}")).display()))
                .arg(format!("--listen-client-urls={client}"))
                .arg(format!("--advertise-client-urls={client}"))
                .arg(format!("--listen-peer-urls={}", peer(i)))
                .arg(format!("--initial-advertise-peer-urls={}", peer(i)))
                .arg(format!("--listen-metrics-urls={metrics}"))
                .arg(format!("--initial-cluster={initial}"))
                .arg("--initial-cluster-state=new")
                .arg("--initial-cluster-token=custos-bench")
                .arg(format!("--cert-file={}", file(format!("node-{node}.pem")).display()))
                .arg(format!("--key-file={}", file(format!("node-{node}-key.pem")).display()))
                .arg(format!("--peer-cert-file={}", file(format!("node-{node}.pem")).display()))
                .arg(format!("--peer-key-file={}", file(format!("node-{node}-key.pem")).display()))
                .arg(format!("--peer-trusted-ca-file={}", file("ca.pem".into()).display()))
                .arg("--peer-client-cert-auth")
                .arg("--logger=zap")
                .arg("--log-level=error")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {} (install Debian's etcd-server)", binary.display()))?;
            cluster.children.push(child);
            cluster.client_urls.push(client);
            cluster.metrics_urls.push(metrics);
        }
        Ok(cluster)
    }

    /// The members' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    pub async fn wait_healthy(&self, http: &reqwest::Client) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        'members: for url in &self.client_urls {
            while Instant::now() < deadline {
                if let Ok(r) = http.get(format!("{url}/health")).send().await {
                    if r.text().await.unwrap_or_default().contains("\"true\"") {
                        continue 'members;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            bail!("etcd member {url} not healthy in time; see {}", self._data.path().display());
        }
        Ok(())
    }

    /// fsyncs so far on each member, from its Prometheus metrics: WAL fsyncs plus backend
    /// (bbolt) commits, each of which syncs the database file.
    pub async fn fsyncs(&self, http: &reqwest::Client) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for url in &self.metrics_urls {
            let text = http.get(format!("{url}/metrics")).send().await?.text().await?;
            let mut total = 0;
            for metric in
                ["etcd_disk_wal_fsync_duration_seconds_count", "etcd_disk_backend_commit_duration_seconds_count"]
            {
                let count = text
                    .lines()
                    .find_map(|l| l.strip_prefix(metric).and_then(|rest| rest.strip_prefix(' ')))
                    .with_context(|| format!("etcd metrics without {metric}"))?;
                total += count.trim().parse::<f64>()? as u64;
            }
            out.push(total);
        }
        Ok(out)
    }
}

/// One etcd put through the v3 JSON gateway.
pub async fn put(http: &reqwest::Client, url: &str, key: &str, value: &[u8]) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = json!({ "key": b64.encode(key), "value": b64.encode(value) });
    matches!(http.post(format!("{url}/v3/kv/put")).json(&body).send().await, Ok(r) if r.status().is_success())
}

/// One etcd create-if-absent through the v3 JSON gateway: a transaction that puts `key` only
/// if it has never been created (`create_revision == 0`), as a store built on etcd creates a
/// record. True if the transaction committed and its comparison held.
pub async fn create(http: &reqwest::Client, url: &str, key: &str, value: &[u8]) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.encode(key);
    let body = json!({
        "compare": [{ "key": key, "result": "EQUAL", "target": "CREATE", "create_revision": "0" }],
        "success": [{ "request_put": { "key": key, "value": b64.encode(value) } }],
    });
    let Ok(reply) = http.post(format!("{url}/v3/kv/txn")).json(&body).send().await else { return false };
    if !reply.status().is_success() {
        return false;
    }
    matches!(reply.json::<serde_json::Value>().await, Ok(v) if v["succeeded"] == true)
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            // Teardown is best effort: a member may have exited already.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

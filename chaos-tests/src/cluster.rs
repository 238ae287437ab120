use std::collections::BTreeMap;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use reqwest::Method;
use serde_json::Value;

use crate::proxy::{Fault, LinkProxy};

/// One node process and its files.
struct NodeProcess {
    api_addr: SocketAddr,
    raft_addr: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    /// Behind a lock so a nemesis can kill and restart nodes while clients use the cluster.
    child: std::sync::Mutex<Option<Child>>,
}

/// An HTTP answer from a node.
#[derive(Debug, Clone)]
pub struct ApiReply {
    pub status: u16,
    /// The JSON body, or the text of a body that is not JSON.
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl ApiReply {
    /// The machine-readable error code, if this is an error answer.
    pub fn code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
    }
}

/// A cluster of `custos` processes on loopback. Dropping it kills every process.
pub struct ProcessCluster {
    binary: PathBuf,
    root: tempfile::TempDir,
    nodes: BTreeMap<u64, NodeProcess>,
    env: Vec<(String, String)>,
    http: reqwest::Client,
    token: Option<String>,
    /// Fault proxies per directed link (from, to), when made with [`ProcessCluster::with_links`].
    links: BTreeMap<(u64, u64), LinkProxy>,
}

/// Ports handed out by [`free_ports`]: below Linux's ephemeral range (32768 and up), so the
/// outgoing connections of other tests and processes never take one between its check and
/// the node's bind.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;
/// Random probes before giving up on finding free ports.
const PORT_ATTEMPTS: usize = 1_000;

/// Reserves `count` distinct free loopback ports, picked at random outside the ephemeral
/// range. The listeners are held together and then released, so the ports are distinct.
pub fn free_ports(count: usize) -> Result<Vec<SocketAddr>> {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..PORT_ATTEMPTS {
        if listeners.len() == count {
            break;
        }
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", rng.gen_range(PORT_RANGE))) {
            listeners.push(listener);
        }
    }
    if listeners.len() < count {
        bail!("found only {} free ports in {PORT_RANGE:?}", listeners.len());
    }
    Ok(listeners.iter().map(|l| l.local_addr()).collect::<std::io::Result<Vec<_>>>()?)
}

impl ProcessCluster {
    /// Prepares `nodes` nodes (ids 1..=nodes) without starting them. `env` is passed to every
    /// node process, e.g. `CUSTOS_RAFT__SNAPSHOT_AFTER_ENTRIES`.
    pub fn new(binary: &Path, nodes: u64, env: &[(&str, &str)]) -> Result<Self> {
        let root = tempfile::Builder::new().prefix("custos-cluster-").tempdir()?;
        let tls = root.path().join("tls");
        let status = Command::new(binary)
            .args(["tls", "generate", "--nodes", &nodes.to_string(), "--dir"])
            .arg(&tls)
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("running {}", binary.display()))?;
        if !status.success() {
            bail!("custos tls generate failed: {status}");
        }
        let master_key = root.path().join("master.key");
        let status = Command::new(binary)
            .args(["custody", "master-key", "--out"])
            .arg(&master_key)
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("running {}", binary.display()))?;
        if !status.success() {
            bail!("custos custody master-key failed: {status}");
        }
        let ports = free_ports(2 * nodes as usize)?;
        let mut processes = BTreeMap::new();
        for id in 1..=nodes {
            let dir = root.path().join(format!("node-{id}"));
            fs::create_dir_all(&dir)?;
            let (api_addr, raft_addr) = (ports[2 * (id as usize - 1)], ports[2 * (id as usize - 1) + 1]);
            let config = dir.join("custos.toml");
            fs::write(
                &config,
                format!(
                    "[node]\nid = {id}\ndata_dir = \"{data}\"\n[api]\nlisten_addr = \"{api_addr}\"\n[raft]\nlisten_addr = \"{raft_addr}\"\n\
                     [tls]\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\
                     [custody]\nmaster_key_file = \"{master}\"\n",
                    data = dir.join("data").display(),
                    ca = tls.join("ca.pem").display(),
                    cert = tls.join(format!("node-{id}.pem")).display(),
                    key = tls.join(format!("node-{id}-key.pem")).display(),
                    master = master_key.display(),
                ),
            )?;
            processes.insert(
                id,
                NodeProcess {
                    api_addr,
                    raft_addr,
                    config,
                    log: dir.join("node.log"),
                    child: std::sync::Mutex::new(None),
                },
            );
        }
        let pem = fs::read(tls.join("ca.pem"))?;
        // Err only means a provider is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        for cert in pem_certs(&pem)? {
            roots.add(cert)?;
        }
        let tls_config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let http =
            reqwest::Client::builder().use_preconfigured_tls(tls_config).timeout(Duration::from_secs(30)).build()?;
        Ok(ProcessCluster {
            binary: binary.to_path_buf(),
            root,
            nodes: processes,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            http,
            token: None,
            links: BTreeMap::new(),
        })
    }

    /// Like [`ProcessCluster::new`], with a [`LinkProxy`] on every directed link between
    /// nodes: node `a` dials node `b`'s Raft address through the proxy of `(a, b)`. Needs a
    /// tokio runtime, which runs the proxies.
    pub async fn with_links(binary: &Path, nodes: u64, env: &[(&str, &str)]) -> Result<Self> {
        let mut cluster = ProcessCluster::new(binary, nodes, env)?;
        let ids = cluster.ids();
        for &from in &ids {
            let mut overrides = String::from("\n[raft.dial_overrides]\n");
            for &to in &ids {
                if from == to {
                    continue;
                }
                let target = cluster.node(to)?.raft_addr;
                let proxy = LinkProxy::start(target).await?;
                overrides.push_str(&format!("\"{target}\" = \"{}\"\n", proxy.addr()));
                cluster.links.insert((from, to), proxy);
            }
            let config = cluster.node(from)?.config.clone();
            let mut text = fs::read_to_string(&config)?;
            text.push_str(&overrides);
            fs::write(&config, text)?;
        }
        Ok(cluster)
    }

    /// The fault proxy of the link `from` → `to`.
    pub fn link(&self, from: u64, to: u64) -> Result<&LinkProxy> {
        self.links.get(&(from, to)).ok_or_else(|| anyhow!("no proxy on link {from}->{to} (use with_links)"))
    }

    /// Cuts every link between nodes of different groups, both directions; links inside a
    /// group pass. Nodes in no group keep their links as they are.
    pub fn partition(&self, groups: &[&[u64]]) -> Result<()> {
        if self.links.is_empty() {
            bail!("this cluster has no link proxies (use with_links)");
        }
        let group_of = |id: u64| groups.iter().position(|g| g.contains(&id));
        for (&(from, to), proxy) in &self.links {
            match (group_of(from), group_of(to)) {
                (Some(a), Some(b)) if a != b => proxy.set(Fault::Cut),
                (Some(_), Some(_)) => proxy.set(Fault::Pass),
                _ => {}
            }
        }
        Ok(())
    }

    /// Every link passes again.
    pub fn heal(&self) {
        for proxy in self.links.values() {
            proxy.set(Fault::Pass);
        }
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// The process ids of the running nodes.
    pub fn pids(&self) -> Vec<u32> {
        let pid = |n: &NodeProcess| n.child.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(Child::id);
        self.nodes.values().filter_map(pid).collect()
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    fn node(&self, id: u64) -> Result<&NodeProcess> {
        self.nodes.get(&id).ok_or_else(|| anyhow!("no node {id}"))
    }

    /// Starts node `id` (again, after a stop or kill) from its data directory.
    pub fn start(&self, id: u64) -> Result<()> {
        let node = self.node(id)?;
        let mut slot = node.child.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            bail!("node {id} is already running");
        }
        let log = fs::OpenOptions::new().create(true).append(true).open(&node.log)?;
        let child = Command::new(&self.binary)
            .args(["run", "--config"])
            .arg(&node.config)
            .env("CUSTOS_LOG", "info,openraft=warn")
            .envs(self.env.iter().cloned())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        *slot = Some(child);
        Ok(())
    }

    /// SIGKILL: the node loses whatever a real crash loses.
    pub fn kill(&self, id: u64) -> Result<()> {
        self.signal_and_wait(id, Signal::SIGKILL)
    }

    /// SIGTERM: graceful shutdown.
    pub fn stop(&self, id: u64) -> Result<()> {
        self.signal_and_wait(id, Signal::SIGTERM)
    }

    /// SIGSTOP: the node freezes (a long GC pause, a stalled VM) with its connections open.
    pub fn pause(&self, id: u64) -> Result<()> {
        self.signal(id, Signal::SIGSTOP)
    }

    /// SIGCONT: a paused node goes on where it stopped.
    pub fn resume(&self, id: u64) -> Result<()> {
        self.signal(id, Signal::SIGCONT)
    }

    /// Whether node `id`'s process is running (started and not stopped or killed).
    pub fn running(&self, id: u64) -> bool {
        self.node(id).is_ok_and(|n| n.child.lock().unwrap_or_else(|p| p.into_inner()).is_some())
    }

    /// The node's configuration file.
    pub fn config_file(&self, id: u64) -> Result<PathBuf> {
        Ok(self.node(id)?.config.clone())
    }

    /// The node's data directory.
    pub fn data_dir(&self, id: u64) -> Result<PathBuf> {
        Ok(self.node(id)?.config.with_file_name("data"))
    }

    /// The `custos` binary the nodes run.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    fn signal(&self, id: u64, signal: Signal) -> Result<()> {
        let node = self.node(id)?;
        let slot = node.child.lock().unwrap_or_else(|p| p.into_inner());
        let child = slot.as_ref().ok_or_else(|| anyhow!("node {id} is not running"))?;
        kill(Pid::from_raw(child.id() as i32), signal)?;
        Ok(())
    }

    fn signal_and_wait(&self, id: u64, signal: Signal) -> Result<()> {
        let node = self.node(id)?;
        let taken = node.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut child = taken.ok_or_else(|| anyhow!("node {id} is not running"))?;
        kill(Pid::from_raw(child.id() as i32), signal)?;
        child.wait()?;
        Ok(())
    }

    /// The node's log so far, for failure messages.
    pub fn log(&self, id: u64) -> String {
        self.node(id).ok().and_then(|n| fs::read_to_string(&n.log).ok()).unwrap_or_default()
    }

    pub fn url(&self, id: u64, path: &str) -> Result<String> {
        Ok(format!("https://{}{}", self.node(id)?.api_addr, path))
    }

    /// The HTTPS client trusting the cluster CA, for callers that build their own requests.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The admin token from [`ProcessCluster::init`].
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Sends exactly the given bytes and headers (no admin token unless a header carries it).
    pub async fn call_raw(
        &self,
        id: u64,
        method: Method,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Result<ApiReply> {
        let mut request = self.http.request(method, self.url(id, path)?).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        reply(request.send().await?).await
    }

    /// Sends a request to node `id` with the admin token (if known) and extra headers.
    pub async fn call(
        &self,
        id: u64,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<ApiReply> {
        let mut request = self.http.request(method, self.url(id, path)?);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        reply(request.send().await?).await
    }

    /// Sends a request to node `id` with `token` as its bearer credential instead of the admin
    /// token.
    pub async fn call_as(
        &self,
        id: u64,
        token: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<ApiReply> {
        let mut request = self.http.request(method, self.url(id, path)?).bearer_auth(token);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        reply(request.send().await?).await
    }

    pub async fn get(&self, id: u64, path: &str) -> Result<ApiReply> {
        self.call(id, Method::GET, path, None, &[]).await
    }

    /// Waits until node `id` answers `/healthz`.
    pub async fn wait_healthy(&self, id: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(reply) = self.get(id, "/healthz").await {
                if reply.status == 200 {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("node {id} not healthy after {timeout:?}; log:\n{}", self.log(id))
    }

    /// Initialises node `id` as a one-member cluster and keeps the admin token.
    pub async fn init(&mut self, id: u64) -> Result<String> {
        let reply = self.call(id, Method::POST, "/v1/cluster/init", None, &[]).await?;
        if reply.status != 201 {
            bail!("init on node {id} failed: {} {}", reply.status, reply.body);
        }
        let token = reply.body["admin_token"].as_str().ok_or_else(|| anyhow!("init returned no token"))?.to_string();
        self.token = Some(token.clone());
        Ok(token)
    }

    /// Adds node `id` to the cluster through member `via`.
    pub async fn join(&self, id: u64, via: u64) -> Result<()> {
        let node = self.node(id)?;
        let body = serde_json::json!({
            "node_id": id,
            "raft_addr": node.raft_addr.to_string(),
            "api_addr": node.api_addr.to_string(),
        });
        // An operator retries a join that met a leadership change (503/504) or a lost
        // connection; one Idempotency-Key keeps the retries one request.
        let key = format!("join-{id}-{}", std::process::id());
        let mut last = String::new();
        for attempt in 0..5u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            match self.call(via, Method::POST, "/v1/cluster/members", Some(&body), &[("idempotency-key", &key)]).await {
                Ok(reply) if reply.status == 200 => return Ok(()),
                Ok(reply) if reply.status == 503 || reply.status == 504 => {
                    last = format!("{} {}", reply.status, reply.body);
                }
                Ok(reply) => bail!("join of node {id} via {via} failed: {} {}", reply.status, reply.body),
                Err(e) => last = e.to_string(),
            }
        }
        bail!("join of node {id} via {via} failed after retries: {last}")
    }

    /// Starts every node, initialises the first and joins the rest through it.
    pub async fn form(&mut self) -> Result<()> {
        for id in self.ids() {
            self.start(id)?;
        }
        for id in self.ids() {
            self.wait_healthy(id, Duration::from_secs(30)).await?;
        }
        let first = self.ids()[0];
        self.init(first).await?;
        for id in self.ids().into_iter().skip(1) {
            self.join(id, first).await?;
        }
        // A join returns once the leader has the node in its membership; the node itself learns
        // that (and serves, rather than answering 503 `not_initialized`) a moment later.
        let deadline = Instant::now() + Duration::from_secs(30);
        for id in self.ids() {
            while self.node_status(id).await.map_or(true, |s| s["leader_id"].is_null()) {
                if Instant::now() > deadline {
                    bail!("node {id} knows no leader 30 s after the cluster formed");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// This node's own status (`node` of `/v1/cluster/status`), without asking the leader.
    pub async fn node_status(&self, id: u64) -> Result<Value> {
        Ok(self.status(id).await?["node"].clone())
    }

    /// Node `id`'s whole status answered from the node alone (`?scope=node`): its Raft
    /// figures, tenant actors, custody and audit.
    pub async fn status(&self, id: u64) -> Result<Value> {
        let reply = self.get(id, "/v1/cluster/status?scope=node").await?;
        if reply.status != 200 {
            bail!("status of node {id}: {} {}", reply.status, reply.body);
        }
        Ok(reply.body)
    }

    /// Polls until some running node in `among` reports a leader that is also in `among`.
    pub async fn wait_leader(&self, among: &[u64], timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            for id in among {
                if let Ok(status) = self.node_status(*id).await {
                    if let Some(leader) = status["leader_id"].as_u64() {
                        if among.contains(&leader) && status["state"] != "candidate" {
                            return Ok(leader);
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("no leader among {among:?} after {timeout:?}")
    }
}

async fn reply(response: reqwest::Response) -> Result<ApiReply> {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await?;
    // A body that is not JSON (metrics text) is kept as a string.
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Ok(ApiReply { status, body, headers })
}

fn pem_certs(pem: &[u8]) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    Ok(rustls::pki_types::CertificateDer::pem_slice_iter(pem).collect::<std::result::Result<Vec<_>, _>>()?)
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
                // Best effort during teardown: the process may already have exited.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Polls `check` every 100 ms until it holds or `timeout` passes; whether it held.
pub async fn eventually(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

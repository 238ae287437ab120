//! Chaos scenarios: a cluster of `custos` processes, the register and encryption workloads
//! running against it, and a nemesis breaking it; then the checks — linearizable register
//! histories, every acknowledged write on every node, every acknowledged ciphertext
//! decryptable everywhere, every audit chain complete — and a [`Summary`].
//!
//! A scenario is a [`Plan`]: which [`Nemesis`], how many nodes and clients, how long, and the
//! seed that fixes the clients' and the nemesis' choices (`CUSTOS_CHAOS_SEED` in the tests).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};

use crate::crypto::{self, CryptoWorkload};
use crate::history::{check, Phase};
use crate::workload::{self, Workload};
use crate::{KafkaBroker, OpenBaoServer, ProcessCluster};

/// How the cluster is broken, again and again while the workloads run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nemesis {
    /// SIGKILL the leader; restart it a little later.
    LeaderKill,
    /// SIGKILL a random member; restart it a little later.
    RandomKill,
    /// Cut the leader off from every other node; heal. It must step down and stop serving
    /// linearizable reads.
    LeaderPartition,
    /// Cut a random minority off from the majority; heal.
    MinorityPartition,
    /// Cut every node off from every other (no majority anywhere); heal.
    NoQuorum,
    /// SIGSTOP the leader for longer than an election timeout; SIGCONT.
    Pause,
    /// Restart every node in turn (SIGTERM, start), waiting for it to serve.
    RollingRestart,
    /// SIGKILL every node at once; start them all again.
    FullRestart,
    /// SIGKILL the Kafka broker the audit trail goes to; restart it 5 s later.
    KafkaOutage,
    /// Stop the OpenBao holding the encryption tenant's keys; restart it 5 s later.
    VaultOutage,
}

impl Nemesis {
    pub const ALL: [Nemesis; 10] = [
        Nemesis::LeaderKill,
        Nemesis::RandomKill,
        Nemesis::LeaderPartition,
        Nemesis::MinorityPartition,
        Nemesis::NoQuorum,
        Nemesis::Pause,
        Nemesis::RollingRestart,
        Nemesis::FullRestart,
        Nemesis::KafkaOutage,
        Nemesis::VaultOutage,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Nemesis::LeaderKill => "leader-kill",
            Nemesis::RandomKill => "random-kill",
            Nemesis::LeaderPartition => "leader-partition",
            Nemesis::MinorityPartition => "minority-partition",
            Nemesis::NoQuorum => "no-quorum",
            Nemesis::Pause => "pause",
            Nemesis::RollingRestart => "rolling-restart",
            Nemesis::FullRestart => "full-restart",
            Nemesis::KafkaOutage => "kafka-outage",
            Nemesis::VaultOutage => "vault-outage",
        }
    }

    pub fn parse(name: &str) -> Option<Nemesis> {
        Nemesis::ALL.into_iter().find(|n| n.name() == name)
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub nemesis: Nemesis,
    pub nodes: u64,
    /// Register clients; half as many (at least one) encrypt and decrypt.
    pub clients: usize,
    pub duration: Duration,
    pub seed: u64,
    /// The repository, whose `deploy/scripts` start Kafka and OpenBao for the outage
    /// scenarios.
    pub repo: PathBuf,
}

/// What a scenario found.
#[derive(Debug, Clone)]
pub struct Summary {
    pub plan: Plan,
    pub ok: usize,
    pub failed: usize,
    pub indeterminate: usize,
    /// Registers whose history is not linearizable.
    pub anomalies: Vec<String>,
    /// Nodes that did not come to hold the cluster's value of a register.
    pub diverged: Vec<String>,
    pub crypto_ok: usize,
    pub crypto_failed: usize,
    /// Why crypto operations failed, counted.
    pub crypto_failures: std::collections::BTreeMap<String, usize>,
    /// Acknowledged ciphertexts that did not decrypt to their plaintext.
    pub crypto_broken: Vec<String>,
    /// Audit chains with gaps, reorderings, conflicts or modified events.
    pub audit_findings: Vec<String>,
    /// How long each fault took to heal from (a new leader, writes through the node again).
    pub recovery: Vec<Duration>,
    /// The register history, kept when the scenario is not clean.
    pub history: Option<PathBuf>,
}

impl Summary {
    pub fn clean(&self) -> bool {
        self.anomalies.is_empty()
            && self.diverged.is_empty()
            && self.crypto_broken.is_empty()
            && self.audit_findings.is_empty()
    }

    /// Most time a fault took to heal from.
    pub fn worst_recovery(&self) -> Duration {
        self.recovery.iter().copied().max().unwrap_or_default()
    }

    /// The one-line summary every scenario prints, and why crypto operations failed.
    pub fn line(&self) -> String {
        let mut line = format!(
            "chaos {} nodes={} seed={} duration={}s: ops ok={} failed={} indeterminate={} anomalies={} lost={} \
             crypto ok={} failed={} undecryptable={} audit_findings={} recovery max={:.1}s ({} faults)",
            self.plan.nemesis.name(),
            self.plan.nodes,
            self.plan.seed,
            self.plan.duration.as_secs(),
            self.ok,
            self.failed,
            self.indeterminate,
            self.anomalies.len(),
            self.diverged.len(),
            self.crypto_ok,
            self.crypto_failed,
            self.crypto_broken.len(),
            self.audit_findings.len(),
            self.worst_recovery().as_secs_f64(),
            self.recovery.len(),
        );
        if !self.crypto_failures.is_empty() {
            let why: Vec<String> = self.crypto_failures.iter().map(|(why, n)| format!("{why}: {n}")).collect();
            line.push_str(&format!("; crypto failures: {}", why.join(", ")));
        }
        line
    }

    /// Everything found, for a failure message.
    pub fn findings(&self) -> String {
        let mut all = Vec::new();
        all.extend(self.anomalies.iter().map(|a| format!("not linearizable: {a}")));
        all.extend(self.diverged.iter().cloned());
        all.extend(self.crypto_broken.iter().cloned());
        all.extend(self.audit_findings.iter().cloned());
        if let Some(history) = &self.history {
            all.push(format!("history kept in {}", history.display()));
        }
        all.join("\n")
    }
}

/// The external services a scenario's cluster uses, started by the repository's scripts.
enum Services {
    None,
    Kafka(KafkaBroker),
    Vault(OpenBaoServer),
}

impl Services {
    fn start(plan: &Plan) -> Result<Services> {
        Ok(match plan.nemesis {
            Nemesis::KafkaOutage => Services::Kafka(KafkaBroker::start(&KafkaBroker::script_in(&plan.repo))?),
            Nemesis::VaultOutage => {
                let script = plan.repo.join("deploy/scripts/openbao.sh");
                Services::Vault(OpenBaoServer::start(&script, "start-raft", &[])?)
            }
            _ => Services::None,
        })
    }

    /// The nodes' configuration for these services.
    fn env(&self) -> Result<Vec<(String, String)>> {
        let pairs = |list: &[(&str, String)]| list.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        Ok(match self {
            Services::None => Vec::new(),
            Services::Kafka(kafka) => pairs(&[
                ("CUSTOS_AUDIT__SINK", "kafka".into()),
                ("CUSTOS_AUDIT__KAFKA__BROKERS", kafka.bootstrap()?),
                ("CUSTOS_AUDIT__KAFKA__PARTITIONS", "3".into()),
                ("CUSTOS_AUDIT__KAFKA__REPLICATION_FACTOR", "1".into()),
                ("CUSTOS_AUDIT__KAFKA__REQUEST_TIMEOUT_MS", "2000".into()),
                ("CUSTOS_AUDIT__SHIP_BACKOFF_MAX_MS", "500".into()),
            ]),
            Services::Vault(bao) => pairs(&[
                ("CUSTOS_CUSTODY__VAULT__ADDRESS", bao.addr()?),
                ("CUSTOS_CUSTODY__VAULT__TOKEN_FILE", bao.root_token_file().display().to_string()),
            ]),
        })
    }
}

/// Registers the clients spread over: enough that a minute's history of one register (a few
/// thousand operations, some indeterminate after faults) stays within what the
/// linearizability search decides in its time bound, few enough that clients still contend.
const REGISTERS: usize = 8;
const CRYPTO_TENANT: &str = "chaos-crypto";
const CRYPTO_KEY: &str = "orders";
/// The quiet time at the end of a run in which no new fault starts.
const TAIL: Duration = Duration::from_secs(4);

/// Runs one scenario on a fresh cluster of `binary` processes.
pub async fn run(binary: &Path, plan: &Plan) -> Result<Summary> {
    let services = Services::start(plan)?;
    let env = services.env()?;
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut cluster = ProcessCluster::with_links(binary, plan.nodes, &env).await?;
    cluster.form().await?;
    let keys: Vec<String> = (1..=REGISTERS).map(|i| format!("reg-{i}")).collect();
    let mut initial = HashMap::new();
    for key in &keys {
        let body = json!({ "id": key, "display_name": "init", "region": "eu" });
        let reply = cluster.call(1, Method::POST, "/v1/tenants", Some(&body), &[]).await?;
        if reply.status != 201 {
            bail!("creating register {key}: {} {}", reply.status, reply.body);
        }
        initial.insert(key.clone(), Some("init".to_string()));
    }
    let provider = if matches!(services, Services::Vault(_)) { "vault" } else { "sealed-local" };
    let body = json!({ "id": CRYPTO_TENANT, "display_name": "chaos", "region": "eu", "key_provider": provider });
    let reply = cluster.call(1, Method::POST, "/v1/tenants", Some(&body), &[]).await?;
    if reply.status != 201 {
        bail!("creating {CRYPTO_TENANT}: {} {}", reply.status, reply.body);
    }
    // The first request starts the tenant's actors on node 1 and waits for them; retried in
    // case the young cluster changes leader meanwhile.
    let path = format!("/v1/tenants/{CRYPTO_TENANT}/keys");
    let created = crate::eventually(Duration::from_secs(15), async || {
        let body = json!({ "id": CRYPTO_KEY });
        cluster.call(1, Method::POST, &path, Some(&body), &[]).await.is_ok_and(|r| r.status == 201)
    });
    if !created.await {
        bail!("the key of {CRYPTO_TENANT} could not be created");
    }

    let cluster = Arc::new(cluster);
    let registers = tokio::spawn(workload::run(
        cluster.clone(),
        Workload { keys: keys.clone(), clients: plan.clients, duration: plan.duration, seed: plan.seed },
    ));
    let crypto_workload = CryptoWorkload {
        tenant: CRYPTO_TENANT.into(),
        key: CRYPTO_KEY.into(),
        clients: (plan.clients / 2).max(1),
        duration: plan.duration,
        seed: plan.seed,
    };
    let sealing = tokio::spawn(crypto::run(cluster.clone(), crypto_workload.clone()));

    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(plan.seed ^ 0x006e_656d_6573_6973);
    let mut recovery = Vec::new();
    while started.elapsed() + TAIL < plan.duration {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(2_000..4_000))).await;
        if started.elapsed() + TAIL >= plan.duration {
            break;
        }
        recovery.extend(strike(&cluster, &services, plan.nemesis, &mut rng).await?);
    }
    let recorded = registers.await?;
    let sealed = sealing.await?;

    // Everything is back: every node runs, every link passes.
    cluster.heal();
    for id in cluster.ids() {
        if !cluster.running(id) {
            cluster.start(id)?;
        }
        cluster.wait_healthy(id, Duration::from_secs(30)).await?;
    }
    let diverged = converged(&cluster, &initial).await?;
    let verdicts = check(&recorded.events, &initial).context("the linearizability checker (Go is required)")?;
    let anomalies: Vec<String> = verdicts.iter().filter(|v| !v.linearizable()).map(|v| format!("{v:?}")).collect();
    let mut crypto_broken = sealed.anomalies.clone();
    crypto_broken.extend(crypto::check_decryptable(&cluster, &crypto_workload, &sealed.sealed).await);
    let mut tenants: Vec<&str> = keys.iter().map(String::as_str).collect();
    tenants.extend([CRYPTO_TENANT, "_cluster"]);
    let audit_findings = audit_chains(&cluster, &tenants, &env).await?;

    let mut summary = Summary {
        plan: plan.clone(),
        ok: recorded.count(Phase::Ok),
        failed: recorded.count(Phase::Fail),
        indeterminate: recorded.count(Phase::Info),
        anomalies,
        diverged,
        crypto_ok: sealed.ok,
        crypto_failed: sealed.failed,
        crypto_failures: sealed.failures.clone(),
        crypto_broken,
        audit_findings,
        recovery,
        history: None,
    };
    if !summary.clean() {
        let kept = std::env::temp_dir().join(format!("custos-chaos-{}-{}.jsonl", plan.nemesis.name(), plan.seed));
        std::fs::write(&kept, recorded.to_jsonl())?;
        summary.history = Some(kept);
    }
    Ok(summary)
}

/// One fault, and the recovery times it measured.
async fn strike(
    cluster: &ProcessCluster,
    services: &Services,
    nemesis: Nemesis,
    rng: &mut StdRng,
) -> Result<Vec<Duration>> {
    let all = cluster.ids();
    let others = |id: u64| all.iter().copied().filter(|n| *n != id).collect::<Vec<_>>();
    let leader = cluster.wait_leader(&all, Duration::from_secs(20)).await?;
    Ok(match nemesis {
        Nemesis::LeaderKill | Nemesis::RandomKill => {
            let victim = if nemesis == Nemesis::LeaderKill { leader } else { *all.choose(rng).unwrap_or(&leader) };
            cluster.kill(victim)?;
            let since = Instant::now();
            cluster.wait_leader(&others(victim), Duration::from_secs(20)).await?;
            let elected = since.elapsed();
            tokio::time::sleep(Duration::from_secs(2)).await;
            cluster.start(victim)?;
            cluster.wait_healthy(victim, Duration::from_secs(30)).await?;
            writes_commit_through(cluster, victim, Duration::from_secs(30)).await?;
            vec![elected]
        }
        Nemesis::LeaderPartition => {
            cluster.partition(&[&[leader], &others(leader)])?;
            let since = Instant::now();
            cluster.wait_leader(&others(leader), Duration::from_secs(20)).await?;
            let elected = since.elapsed();
            tokio::time::sleep(Duration::from_secs(3)).await;
            cluster.heal();
            writes_commit_through(cluster, leader, Duration::from_secs(30)).await?;
            vec![elected]
        }
        Nemesis::MinorityPartition => {
            let mut shuffled = all.clone();
            shuffled.shuffle(rng);
            let (minority, majority) = shuffled.split_at((all.len() - 1) / 2);
            cluster.partition(&[minority, majority])?;
            let since = Instant::now();
            cluster.wait_leader(majority, Duration::from_secs(20)).await?;
            let elected = since.elapsed();
            tokio::time::sleep(Duration::from_secs(4)).await;
            cluster.heal();
            for id in minority {
                writes_commit_through(cluster, *id, Duration::from_secs(30)).await?;
            }
            vec![elected]
        }
        Nemesis::NoQuorum => {
            let alone: Vec<[u64; 1]> = all.iter().map(|id| [*id]).collect();
            let groups: Vec<&[u64]> = alone.iter().map(|g| &g[..]).collect();
            cluster.partition(&groups)?;
            tokio::time::sleep(Duration::from_secs(4)).await;
            cluster.heal();
            vec![writes_commit_through(cluster, leader, Duration::from_secs(30)).await?]
        }
        Nemesis::Pause => {
            cluster.pause(leader)?;
            let since = Instant::now();
            let elected = cluster.wait_leader(&others(leader), Duration::from_secs(20)).await;
            let elected_after = since.elapsed();
            // Paused past several election timeouts, whatever the election took.
            tokio::time::sleep(Duration::from_secs(3)).await;
            cluster.resume(leader)?;
            elected?;
            writes_commit_through(cluster, leader, Duration::from_secs(30)).await?;
            vec![elected_after]
        }
        Nemesis::RollingRestart => {
            let mut took = Vec::new();
            for id in all.clone() {
                cluster.stop(id)?;
                let since = Instant::now();
                cluster.start(id)?;
                cluster.wait_healthy(id, Duration::from_secs(30)).await?;
                writes_commit_through(cluster, id, Duration::from_secs(30)).await?;
                took.push(since.elapsed());
            }
            took
        }
        Nemesis::FullRestart => {
            for id in &all {
                cluster.kill(*id)?;
            }
            let since = Instant::now();
            for id in &all {
                cluster.start(*id)?;
            }
            cluster.wait_leader(&all, Duration::from_secs(30)).await?;
            writes_commit_through(cluster, leader, Duration::from_secs(30)).await?;
            vec![since.elapsed()]
        }
        Nemesis::KafkaOutage => {
            let Services::Kafka(kafka) = services else { bail!("kafka-outage runs with Kafka") };
            kafka.run("kill")?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            kafka.run("restart")?;
            let since = Instant::now();
            // Back when every node has shipped what it had committed by the time the broker
            // was back (the load goes on, so its outbox is rarely empty at any one moment).
            let mut held = Vec::new();
            for id in &all {
                held.push((*id, audit_counter(cluster, *id, "committed").await?));
            }
            for (id, committed) in held {
                shipped_up_to(cluster, id, committed, Duration::from_secs(60)).await?;
            }
            vec![since.elapsed()]
        }
        Nemesis::VaultOutage => {
            let Services::Vault(bao) = services else { bail!("vault-outage runs with OpenBao") };
            bao.run("stop")?;
            // Keys cached at the edge keep encrypting; what needs OpenBao itself — a new
            // tenant's root — fails closed, with a clear answer.
            let tenant = format!("outage-{}", rng.gen_range(0..u32::MAX));
            let body = json!({ "id": tenant, "display_name": "outage", "region": "eu", "key_provider": "vault" });
            let node = *all.choose(rng).unwrap_or(&leader);
            let during = cluster.call(node, Method::POST, "/v1/tenants", Some(&body), &[]).await?;
            if (during.status, during.code()) != (503, Some("key_provider_unavailable")) {
                bail!("creating a tenant while OpenBao is down answered {} {}", during.status, during.body);
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            bao.run("restart-raft")?;
            // Back when that tenant can be created.
            let since = Instant::now();
            let created = crate::eventually(Duration::from_secs(60), async || {
                let reply = cluster.call(node, Method::POST, "/v1/tenants", Some(&body), &[]).await;
                reply.is_ok_and(|r| r.status == 201 || r.code() == Some("tenant_exists"))
            });
            if !created.await {
                bail!("no tenant could be created on OpenBao a minute after it came back");
            }
            vec![since.elapsed()]
        }
    })
}

/// Waits until node `id`'s outbox is empty (once the load has stopped): it shipped all of it.
async fn outbox_drained(cluster: &ProcessCluster, id: u64, within: Duration) -> Result<()> {
    let drained = crate::eventually(within, async || {
        cluster
            .get(id, "/v1/cluster/status?scope=node")
            .await
            .is_ok_and(|r| r.body["audit"]["outbox_depth"] == json!(0))
    });
    if !drained.await {
        bail!("node {id} did not ship its audit outbox within {within:?}");
    }
    Ok(())
}

/// One of a node's audit counters (`committed`, `shipped`) from its own status.
async fn audit_counter(cluster: &ProcessCluster, id: u64, name: &str) -> Result<u64> {
    let reply = cluster.get(id, "/v1/cluster/status?scope=node").await?;
    reply.body["audit"][name].as_u64().with_context(|| format!("node {id}'s status has no audit.{name}"))
}

/// Waits until node `id` has shipped at least `count` events since it started.
async fn shipped_up_to(cluster: &ProcessCluster, id: u64, count: u64, within: Duration) -> Result<()> {
    let shipped = crate::eventually(within, async || {
        audit_counter(cluster, id, "shipped").await.is_ok_and(|shipped| shipped >= count)
    });
    if !shipped.await {
        bail!("node {id} did not ship the {count} audit events it had committed within {within:?}");
    }
    Ok(())
}

/// How long until a write through `node` reaches the state machine again.
pub async fn writes_commit_through(cluster: &ProcessCluster, node: u64, within: Duration) -> Result<Duration> {
    let since = Instant::now();
    loop {
        let body = json!({ "display_name": "probe" });
        let reply = cluster.call(node, Method::PATCH, "/v1/tenants/probe-missing", Some(&body), &[]).await;
        // Any answer from the state machine (404 here) shows writes commit again.
        if reply.is_ok_and(|r| r.status == 404) {
            return Ok(since.elapsed());
        }
        if since.elapsed() > within {
            bail!("no write committed through node {node} within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The nodes that do not come to hold, in their own state, what a linearizable read returns.
async fn converged(cluster: &ProcessCluster, initial: &HashMap<String, Option<String>>) -> Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut diverged = Vec::new();
    for key in initial.keys() {
        let path = format!("/v1/tenants/{key}");
        let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(20)).await?;
        let truth = cluster.get(leader, &path).await?;
        if truth.status != 200 {
            bail!("reading {key}: {} {}", truth.status, truth.body);
        }
        for node in cluster.ids() {
            loop {
                let local = cluster.get(node, &format!("{path}?consistency=stale")).await?;
                if local.body["display_name"] == truth.body["display_name"] {
                    break;
                }
                if Instant::now() > deadline {
                    diverged.push(format!(
                        "node {node} holds {} for {key}, the cluster {}",
                        local.body["display_name"], truth.body["display_name"]
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(diverged)
}

/// Waits until every node shipped its audit outbox, stops the nodes, and verifies the audit
/// chains of `tenants` with `custos audit verify`: in Kafka when the nodes ship there, else in
/// each node's local log.
async fn audit_chains(cluster: &ProcessCluster, tenants: &[&str], env: &[(&str, &str)]) -> Result<Vec<String>> {
    for id in cluster.ids() {
        outbox_drained(cluster, id, Duration::from_secs(30)).await?;
    }
    for id in cluster.ids() {
        cluster.stop(id)?;
    }
    let kafka = env.iter().any(|(k, v)| *k == "CUSTOS_AUDIT__SINK" && *v == "kafka");
    let sources: Vec<(String, Vec<String>)> = if kafka {
        let config = cluster.config_file(1)?.display().to_string();
        vec![("Kafka".into(), vec!["--config".into(), config])]
    } else {
        let mut sources = Vec::new();
        for id in cluster.ids() {
            let log = cluster.data_dir(id)?.join("audit").join("log").display().to_string();
            sources.push((format!("node {id}"), vec!["--log-dir".into(), log]));
        }
        sources
    };
    let mut findings = Vec::new();
    for (source, args) in &sources {
        for tenant in tenants {
            let output = std::process::Command::new(cluster.binary())
                .args(["--output", "json", "audit", "verify", "--tenant", tenant])
                .args(args)
                .envs(env.iter().copied())
                .output()
                .context("running custos audit verify")?;
            let report: Value = serde_json::from_slice(&output.stdout).with_context(|| {
                format!("custos audit verify answered: {}", String::from_utf8_lossy(&output.stderr))
            })?;
            for finding in report["findings"].as_array().into_iter().flatten() {
                findings.push(format!("{source}, tenant {tenant}: {finding}"));
            }
        }
    }
    Ok(findings)
}

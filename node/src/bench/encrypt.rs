//! `custos bench encrypt`: encrypt and decrypt of 128-byte payloads over HTTPS at several
//! client counts, on one Custos node and on one OpenBao server (raft storage, transit
//! aes256-gcm96, a non-root token limited to transit) on the same machine in the same run,
//! with the same TLS CA and the same minimal HTTP/1.1 keep-alive client (`wire.rs`), one
//! connection per load client. Prints ops/s, p50/p99, the server's CPU time per operation
//! (user + system, from `/proc`: what the server spends, apart from the load client sharing
//! the machine) and the ratios, then the in-process cost of one encrypt.
//!
//! Custos runs as it ships: every encrypt and decrypt is audited, fail-closed (its event is
//! fsynced to the outbox before the answer). OpenBao runs twice: as provisioned (no audit
//! device) and then with a `file` audit device, which logs every request but does not fsync
//! it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use custos_chaos_tests::ProcessCluster;
use reqwest::Method;
use serde_json::{json, Value};

use super::load::{cpu_seconds, drive, RunStats};
use super::openbao::{self, OpenBao};
use super::wire;

#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    pub clients: Vec<usize>,
    pub payload_bytes: usize,
    /// `deploy/scripts/openbao.sh`, which installs and runs the peer.
    pub openbao_script: PathBuf,
    /// The binary the node runs (this one when none).
    pub node_exe: Option<PathBuf>,
}

struct Row {
    system: &'static str,
    op: &'static str,
    clients: usize,
    stats: RunStats,
    /// Server CPU time per successful operation, in microseconds.
    cpu_us: f64,
}

fn print_row(row: &Row) {
    println!(
        "{:<8} {:<8} {:>7} {:>10.0} {:>9.2} {:>9.2} {:>8} {:>8.0}",
        row.system,
        row.op,
        row.clients,
        row.stats.ops_per_sec(),
        row.stats.latency_ms(0.50),
        row.stats.latency_ms(0.99),
        row.stats.errors,
        row.cpu_us
    );
}

/// One system's endpoint for one operation: where to connect and the prepared request.
pub(super) struct Target {
    pub(super) system: &'static str,
    pub(super) op: &'static str,
    server: wire::Target,
    request: Vec<u8>,
    /// The response field that shows success, quoted as it appears in the JSON.
    field: &'static [u8],
}

impl Target {
    pub(super) fn new(
        system: &'static str,
        op: &'static str,
        url: &str,
        token: &(&'static str, String),
        body: &Value,
        tls: &rustls::ClientConfig,
    ) -> Result<Self> {
        let field: &[u8] = match op {
            "encrypt" => b"\"ciphertext\"",
            "decrypt" => b"\"plaintext\"",
            _ => b"\"decision_id\"",
        };
        let (base, path) = url.split_at(url[8..].find('/').map_or(url.len(), |i| i + 8));
        let server = wire::Target::new(base, tls.clone())?;
        let addr = base.trim_start_matches("https://").parse().context("a loopback address")?;
        let request = wire::post(addr, path, (token.0, &token.1), body.to_string().as_bytes());
        Ok(Target { system, op, server, request, field })
    }
}

impl Target {
    /// A target sending `request` (built with `wire`) to `base` (`https://127.0.0.1:PORT`); a
    /// request succeeds on 200 with `field` in the body.
    pub(super) fn raw(
        system: &'static str,
        op: &'static str,
        base: &str,
        request: Vec<u8>,
        field: &'static [u8],
        tls: &rustls::ClientConfig,
    ) -> Result<Self> {
        Ok(Target { system, op, server: wire::Target::new(base, tls.clone())?, request, field })
    }
}

/// Runs one target with `clients` connections, each reused for all its requests; a request
/// succeeds on 200 with the expected field.
pub(super) async fn run_target(target: Target, clients: usize, duration: Duration) -> RunStats {
    let target = Arc::new(target);
    let conns: Arc<Vec<tokio::sync::Mutex<Option<wire::Conn>>>> =
        Arc::new((0..clients).map(|_| tokio::sync::Mutex::new(None)).collect());
    drive(clients, duration, move |client, _| {
        let (target, conns) = (target.clone(), conns.clone());
        async move {
            let mut slot = conns[client].lock().await;
            if slot.is_none() {
                *slot = target.server.connect().await.ok();
            }
            let Some(conn) = slot.as_mut() else { return false };
            match conn.roundtrip(&target.request).await {
                Ok((200, body)) => body.windows(target.field.len()).any(|w| w == target.field),
                Ok(_) => false,
                Err(_) => {
                    // A broken connection is replaced on the next request.
                    *slot = None;
                    false
                }
            }
        }
    })
    .await
}

/// [`run_target`], also counting the CPU time the processes `server` use meanwhile: returns
/// the run and the server's CPU microseconds per successful operation.
pub(super) async fn run_measured(
    target: Target,
    clients: usize,
    duration: Duration,
    server: &[u32],
) -> (RunStats, f64) {
    let before = cpu_seconds(server);
    let stats = run_target(target, clients, duration).await;
    let cpu_us = (cpu_seconds(server) - before) * 1e6 / stats.ok.max(1) as f64;
    (stats, cpu_us)
}

/// The node's audit counters: events committed to the outbox, and group commits.
async fn audit_commits(cluster: &ProcessCluster) -> Result<(u64, u64)> {
    let status = cluster.get(1, "/v1/cluster/status").await?.body;
    let count = |field: &str| status["audit"][field].as_u64().with_context(|| format!("status without audit.{field}"));
    Ok((count("committed")?, count("group_commits")?))
}

/// OpenBao's transit URL, its token header, and a decrypt body holding a ciphertext it made.
async fn bao_endpoint(
    bao: &OpenBao,
    http: &reqwest::Client,
    encrypt_body: &Value,
) -> Result<(String, (&'static str, String), Value)> {
    let base = format!("{}/v1/transit", bao.addr);
    let token: (&'static str, String) = ("x-vault-token", bao.token.clone());
    let url = format!("{base}/encrypt/{}", openbao::KEY);
    let ciphertext = first_ciphertext(http, &url, (token.0, &token.1), encrypt_body).await?;
    Ok((base, token, json!({ "ciphertext": ciphertext })))
}

async fn first_ciphertext(http: &reqwest::Client, url: &str, token: (&str, &str), body: &Value) -> Result<String> {
    let reply: Value =
        http.post(url).header(token.0, token.1).json(body).send().await?.error_for_status()?.json().await?;
    let ct = reply.get("ciphertext").or_else(|| reply["data"].get("ciphertext"));
    Ok(ct.and_then(Value::as_str).context("encrypt answered without a ciphertext")?.to_string())
}

/// One node (with extra environment overrides) holding tenant `bench` with key `k`, ready for
/// encrypt load.
pub(super) async fn bench_node(exe: &std::path::Path, extra_env: &[(&str, &str)]) -> Result<ProcessCluster> {
    let mut env = vec![("CUSTOS_LOG", "warn"), ("CUSTOS_LIMITS__TENANT_MAX_IN_FLIGHT", "1024")];
    env.extend_from_slice(extra_env);
    let mut cluster = ProcessCluster::new(exe, 1, &env)?;
    cluster.form().await?;
    let body = json!({ "id": "bench", "display_name": "bench", "region": "bench" });
    let reply = cluster.call(1, Method::POST, "/v1/tenants", Some(&body), &[]).await?;
    if reply.status != 201 {
        bail!("creating the benchmark tenant: {} {}", reply.status, reply.body);
    }
    // The first request starts the tenant's actors on node 1 and waits for them; retried in
    // case the young cluster changes leader meanwhile.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = cluster.call(1, Method::POST, "/v1/tenants/bench/keys", Some(&json!({ "id": "k" })), &[]).await?;
        if reply.status == 201 {
            return Ok(cluster);
        }
        if Instant::now() > deadline {
            bail!("creating the benchmark key: {} {}", reply.status, reply.body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn run(options: Options) -> Result<()> {
    if options.payload_bytes == 0 || options.payload_bytes > 64 * 1024 {
        bail!("--payload-bytes must be between 1 and 65536");
    }
    let exe = match &options.node_exe {
        Some(exe) => exe.clone(),
        None => std::env::current_exe().context("locating the custos binary")?,
    };
    eprintln!("starting 1 custos node and 1 OpenBao server (raft storage) on 127.0.0.1 …");
    let cluster = bench_node(&exe, &[]).await?;
    let tls_dir = cluster.root().join("tls");
    let mut roots = rustls::RootCertStore::empty();
    for cert in crate::tls::load_certs(&tls_dir.join("ca.pem"))? {
        roots.add(cert)?;
    }
    let tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let http =
        reqwest::Client::builder().use_preconfigured_tls(tls.clone()).timeout(Duration::from_secs(30)).build()?;
    let bao = OpenBao::start(&options.openbao_script, &tls_dir, &http, None).await?;

    let payload = STANDARD.encode(vec![0x5a; options.payload_bytes]);
    let auth = format!("Bearer {}", cluster.token().context("no admin token")?);
    let custos_token: (&'static str, String) = ("authorization", auth);
    let custos_base = cluster.url(1, "/v1/tenants/bench/keys/k")?;
    let encrypt_body = json!({ "plaintext": payload });
    let custos_ct =
        first_ciphertext(&http, &format!("{custos_base}/encrypt"), (custos_token.0, &custos_token.1), &encrypt_body)
            .await?;
    let (bao_base, bao_token, bao_decrypt) = bao_endpoint(&bao, &http, &encrypt_body).await?;

    println!(
        "encryption: {}-byte payloads over HTTPS/1.1 keep-alive (same CA, same client, a connection per client), {} s per run; custos = 1 node, audit fail-closed (fsynced before the answer); openbao = raft storage, transit aes256-gcm96, transit-only token, no audit device; bao+aud = the same server with a file audit device (not fsynced)",
        options.payload_bytes,
        options.duration.as_secs()
    );
    println!(
        "{:<8} {:<8} {:>7} {:>10} {:>9} {:>9} {:>8} {:>8}",
        "system", "op", "clients", "ops/s", "p50 ms", "p99 ms", "errors", "cpu µs"
    );
    let custos_decrypt = json!({ "ciphertext": custos_ct });
    let mut rows = Vec::new();
    let mut audited = Vec::new();
    let mut group_sizes = Vec::new();
    for &clients in &options.clients {
        let runs = [
            Target::new("custos", "encrypt", &format!("{custos_base}/encrypt"), &custos_token, &encrypt_body, &tls)?,
            Target::new(
                "openbao",
                "encrypt",
                &format!("{bao_base}/encrypt/{}", openbao::KEY),
                &bao_token,
                &encrypt_body,
                &tls,
            )?,
            Target::new("custos", "decrypt", &format!("{custos_base}/decrypt"), &custos_token, &custos_decrypt, &tls)?,
            Target::new(
                "openbao",
                "decrypt",
                &format!("{bao_base}/decrypt/{}", openbao::KEY),
                &bao_token,
                &bao_decrypt,
                &tls,
            )?,
        ];
        for target in runs {
            let (system, op) = (target.system, target.op);
            let custos = system == "custos";
            let server = if custos { cluster.pids() } else { vec![bao.pid] };
            let before = if custos { Some(audit_commits(&cluster).await?) } else { None };
            let (stats, cpu_us) = run_measured(target, clients, options.duration, &server).await;
            if let Some(before) = before {
                let after = audit_commits(&cluster).await?;
                group_sizes.push((op, clients, (after.0 - before.0) as f64 / (after.1 - before.1).max(1) as f64));
            }
            let row = Row { system, op, clients, stats, cpu_us };
            print_row(&row);
            rows.push(row);
        }
    }

    // The same server again, with a file audit device: only its configuration can add one.
    drop(bao);
    eprintln!("starting OpenBao again with a file audit device …");
    let audit_log = cluster.root().join("openbao-audit.log");
    let bao = OpenBao::start(&options.openbao_script, &tls_dir, &http, Some(&audit_log)).await?;
    let (bao_base, bao_token, bao_decrypt) = bao_endpoint(&bao, &http, &encrypt_body).await?;
    for &clients in &options.clients {
        for (op, body) in [("encrypt", &encrypt_body), ("decrypt", &bao_decrypt)] {
            let url = format!("{bao_base}/{op}/{}", openbao::KEY);
            let target = Target::new("bao+aud", op, &url, &bao_token, body, &tls)?;
            let (stats, cpu_us) = run_measured(target, clients, options.duration, &[bao.pid]).await;
            let row = Row { system: "bao+aud", op, clients, stats, cpu_us };
            print_row(&row);
            audited.push(row);
        }
    }

    println!();
    println!(
        "{:<8} {:>7} {:>12} {:>12} {:>12} {:>14} {:>14} {:>14}",
        "op", "clients", "ops/s ÷ bao", "p99 ÷ bao", "cpu ÷ bao", "ops/s ÷ b+aud", "p99 ÷ b+aud", "cpu ÷ b+aud"
    );
    for (group, a) in rows.chunks(2).zip(audited.iter()) {
        let (c, b) = (&group[0], &group[1]);
        println!(
            "{:<8} {:>7} {:>12.2} {:>12.2} {:>12.2} {:>14.2} {:>14.2} {:>14.2}",
            c.op,
            c.clients,
            c.stats.ops_per_sec() / b.stats.ops_per_sec(),
            c.stats.latency_ms(0.99) / b.stats.latency_ms(0.99),
            c.cpu_us / b.cpu_us,
            c.stats.ops_per_sec() / a.stats.ops_per_sec(),
            c.stats.latency_ms(0.99) / a.stats.latency_ms(0.99),
            c.cpu_us / a.cpu_us
        );
    }
    println!("(cpu µs: the server's user + system CPU time per successful operation)");
    let sizes: Vec<String> =
        group_sizes.iter().map(|(op, clients, size)| format!("{op} × {clients}: {size:.1}")).collect();
    println!("custos audit events per outbox group commit (one fdatasync each): {}", sizes.join(", "));
    println!();
    let (encrypt_us, decrypt_us) = in_process_cost(options.payload_bytes).await?;
    println!(
        "in-process (Custody::encrypt / decrypt, cached key, {} bytes): {encrypt_us:.2} µs / {decrypt_us:.2} µs per call",
        options.payload_bytes
    );
    Ok(())
}

/// A log entry of one proposal at `index`, as the benchmarks' in-process state machines
/// apply it.
pub(super) fn entry(index: u64, command: custos_raft::Command) -> openraft::Entry<custos_raft::TypeConfig> {
    use openraft::{CommittedLeaderId, EntryPayload, LogId};
    let request_id = custos_raft::RequestId::new(format!("r{index}")).expect("r and digits are a valid id");
    let proposal = custos_raft::Proposal { request_id, proposed_at_ms: 0, command };
    openraft::Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(custos_raft::Proposals(vec![proposal])),
    }
}

/// Mean cost of one `Custody::encrypt` and `decrypt` with the key cached, on a store prepared
/// the way Raft would apply it.
async fn in_process_cost(payload_bytes: usize) -> Result<(f64, f64)> {
    use custos_actors::custody::edge::MemoryEdge;
    use custos_actors::custody::master::MasterKey;
    use custos_actors::custody::provider::SealedLocal;
    use custos_actors::custody::{Custody, EncryptionContext, SecretKey};
    use custos_raft::{Command, CoreProviderKind, KeyAlgorithm, KeyId, KeyPurpose, RegionLabel, TenantId};
    use openraft::storage::RaftStateMachine;

    const CALLS: u32 = 20_000;
    let dir = tempfile::tempdir()?;
    let (_log, mut sm, reader) = custos_raft::store::open(dir.path(), custos_raft::store::StoreOptions::default())?;
    let provider = Arc::new(SealedLocal::new(MasterKey::new(SecretKey::generate())));
    let edge = Arc::new(MemoryEdge::new(64, Duration::from_secs(3600)));
    let custody = Custody::new(reader, vec![provider], CoreProviderKind::SealedLocal, edge);
    let (tenant, key) = (TenantId::new("bench")?, KeyId::new("k")?);
    let roots = custody.provision_tenant(&tenant, None).await?;
    let region = RegionLabel::new("bench")?;
    let create_tenant =
        Command::CreateTenant { id: tenant.clone(), display_name: "bench".into(), region, custody: roots };
    sm.apply([entry(1, create_tenant)]).await?;
    let material = custody.new_key_material(&tenant, &key, 1).await?;
    let create_key = Command::CreateKey {
        tenant: tenant.clone(),
        key: key.clone(),
        purpose: KeyPurpose::EncryptDecrypt,
        algorithm: KeyAlgorithm::Aes256Gcm,
        rotation_period_ms: None,
        material,
    };
    sm.apply([entry(2, create_key)]).await?;

    let payload = vec![0x5au8; payload_bytes];
    let context = EncryptionContext::new();
    let ct = custody.encrypt(&tenant, &key, &payload, &context).await?.ciphertext;
    let start = Instant::now();
    for _ in 0..CALLS {
        std::hint::black_box(custody.encrypt(&tenant, &key, &payload, &context).await?);
    }
    let encrypt = start.elapsed().as_secs_f64() * 1e6 / f64::from(CALLS);
    let start = Instant::now();
    for _ in 0..CALLS {
        std::hint::black_box(custody.decrypt(&tenant, &key, &ct, &context).await?);
    }
    let decrypt = start.elapsed().as_secs_f64() * 1e6 / f64::from(CALLS);
    Ok((encrypt, decrypt))
}

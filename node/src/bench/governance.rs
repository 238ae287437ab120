//! `custos bench governance`: durable governance writes on a 3-node loopback cluster at several
//! client counts, side by side with a 3-member etcd cluster given the same payloads, TLS and
//! client counts. Prints ops/s, p50/p99 latency, fsyncs and server CPU per committed write,
//! the servers' resident memory after each run, and the ratios.
//!
//! Two Custos writes per client count:
//! - `create`: `POST /v1/tenants` — the governance record plus what a new tenant brings: its
//!   custody root (replicated) and its audit log (on the node that took the request); its
//!   actor trees start with its first use on a node, which the bench does not make;
//! - `update`: `PATCH /v1/tenants/{id}` — the governance record alone (each client rewrites
//!   the display name of a tenant of its own, created before the run).
//!
//! Two etcd writes, each of the same JSON value under a new key:
//! - `put`: a plain put, compared with updates (and, as the cheapest etcd write, with creates);
//! - `create`: a transaction that puts the key only if it was never created, as a store built
//!   on etcd creates a record (Kubernetes' API server does this); compared with creates, which
//!   likewise refuse an existing tenant.
//!
//! Each run starts once every server (both systems share the machine) is idle, or after 30 s,
//! and its fsyncs and CPU are counted until they are idle again: the work a run of creates
//! leaves behind (audit events still shipping, applies on followers) is charged to the
//! creates, not to the next run.
//!
//! With `--rounds N` each client count runs the four N times in turn, every run is printed,
//! and each ratio is the median over the rounds of the ratio within a round (whose runs are
//! close in time, so a slow spell of the shared machine hits both systems alike).
//!
//! fsyncs per write count every fsync of the busiest node or member: for Custos its Raft
//! storage flushes, audit outbox commits and local audit log syncs; for etcd its WAL fsyncs
//! and backend (bbolt) commits. CPU per write is the CPU time (user and system) of all three
//! nodes or members from the run's start until they are idle again, divided by the writes:
//! less noisy than ops/s on a shared machine, it is what the servers spend on a write (the
//! load generator is not counted).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use custos_chaos_tests::ProcessCluster;
use reqwest::Method;
use serde_json::json;

use super::etcd::{self, EtcdCluster};
use super::load::{cpu_seconds, drive, resident_bytes, settle, RunStats};

/// Each Custos write and the etcd operation it is compared with: a create with etcd's
/// create-if-absent (both refuse an existing record), an update with a put; creates against
/// puts too, the cheapest etcd write.
const PAIRS: [(&str, &str); 3] = [("create", "create"), ("create", "put"), ("update", "put")];

/// The longest wait for the servers to go idle before a run.
const SETTLE_AT_MOST: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    pub clients: Vec<usize>,
    /// Runs of each system and operation per client count, taken in turn.
    pub rounds: usize,
    /// Length of the tenant display name, the bulk of each written value (at most 200).
    pub value_bytes: usize,
    pub etcd_binary: PathBuf,
}

struct Row {
    system: &'static str,
    op: &'static str,
    clients: usize,
    round: usize,
    stats: RunStats,
    /// Largest per-node number of fsyncs divided by committed writes.
    fsyncs_per_write: f64,
    /// CPU time of all nodes divided by committed writes, in microseconds.
    cpu_us_per_write: f64,
    /// Resident memory of all nodes after the run, in MiB.
    resident_mib: f64,
}

fn fsyncs_per_write(before: &[u64], after: &[u64], writes: u64) -> f64 {
    let most = before.iter().zip(after).map(|(b, a)| a.saturating_sub(*b)).max().unwrap_or(0);
    most as f64 / writes.max(1) as f64
}

/// Every fsync of each node so far: Raft storage flushes, audit outbox group commits and the
/// local audit log's file and directory syncs.
async fn custos_fsyncs(cluster: &ProcessCluster) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for id in cluster.ids() {
        let status = cluster.status(id).await?;
        let raft = status["node"]["fsyncs"].as_u64().context("status without node.fsyncs")?;
        let outbox = status["audit"]["group_commits"].as_u64().context("status without audit.group_commits")?;
        let local_log = status["audit"]["local_log_fsyncs"].as_u64().unwrap_or(0);
        out.push(raft + outbox + local_log);
    }
    Ok(out)
}

fn print_row(row: &Row) {
    println!(
        "{:<8} {:<7} {:>7} {:>5} {:>10.0} {:>9.2} {:>9.2} {:>8} {:>13.2} {:>13.0} {:>10.0}",
        row.system,
        row.op,
        row.clients,
        row.round + 1,
        row.stats.ops_per_sec(),
        row.stats.latency_ms(0.50),
        row.stats.latency_ms(0.99),
        row.stats.errors,
        row.fsyncs_per_write,
        row.cpu_us_per_write,
        row.resident_mib
    );
}

/// Counters of the servers at the start or end of a run.
struct Counters {
    /// fsyncs of each node or member.
    fsyncs: Vec<u64>,
    /// CPU seconds of all of them.
    cpu: f64,
    /// Resident memory of all of them, in bytes.
    resident: u64,
}

/// Prints one run's row, fsyncs and CPU counted from the counters around it, and keeps it.
fn push_row(
    rows: &mut Vec<Row>,
    (system, op): (&'static str, &'static str),
    (clients, round): (usize, usize),
    stats: RunStats,
    (before, after): (&Counters, &Counters),
) {
    let fsyncs_per_write = fsyncs_per_write(&before.fsyncs, &after.fsyncs, stats.ok);
    let cpu_us_per_write = (after.cpu - before.cpu) * 1e6 / stats.ok.max(1) as f64;
    let resident_mib = after.resident as f64 / (1024.0 * 1024.0);
    let row = Row { system, op, clients, round, fsyncs_per_write, cpu_us_per_write, resident_mib, stats };
    print_row(&row);
    rows.push(row);
}

pub async fn run(options: Options) -> Result<()> {
    if options.value_bytes == 0 || options.value_bytes > 200 {
        bail!("--value-bytes must be between 1 and 200 (the display-name limit)");
    }
    if options.rounds == 0 || options.clients.contains(&0) {
        bail!("--rounds and --clients must be positive");
    }
    let exe = std::env::current_exe().context("locating the custos binary")?;
    eprintln!("starting 3 custos nodes and 3 etcd members on 127.0.0.1 …");
    let mut cluster = ProcessCluster::new(&exe, 3, &[("CUSTOS_LOG", "warn")])?;
    cluster.form().await?;
    cluster.wait_leader(&[1, 2, 3], Duration::from_secs(10)).await?;
    let cluster = Arc::new(cluster);

    let mut roots = rustls::RootCertStore::empty();
    for cert in crate::tls::load_certs(&cluster.root().join("tls/ca.pem"))? {
        roots.add(cert)?;
    }
    let tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let http = reqwest::Client::builder().use_preconfigured_tls(tls).timeout(Duration::from_secs(30)).build()?;
    let etcd = Arc::new(EtcdCluster::start(&options.etcd_binary, &cluster.root().join("tls"), 3).await?);
    etcd.wait_healthy(&http).await?;

    println!(
        "governance writes: 3 nodes on loopback, TLS, {} s per run, {} round(s), {}-byte display name, clients spread over all nodes",
        options.duration.as_secs(),
        options.rounds,
        options.value_bytes
    );
    println!(
        "{:<8} {:<7} {:>7} {:>5} {:>10} {:>9} {:>9} {:>8} {:>13} {:>13} {:>10}",
        "system",
        "op",
        "clients",
        "round",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "fsyncs/write",
        "cpu µs/write",
        "rss MiB"
    );
    let custos_counters = || async {
        let pids = cluster.pids();
        let fsyncs = custos_fsyncs(&cluster).await?;
        Ok::<_, anyhow::Error>(Counters { fsyncs, cpu: cpu_seconds(&pids), resident: resident_bytes(&pids) })
    };
    let etcd_counters = || async {
        let pids = etcd.pids();
        let fsyncs = etcd.fsyncs(&http).await?;
        Ok::<_, anyhow::Error>(Counters { fsyncs, cpu: cpu_seconds(&pids), resident: resident_bytes(&pids) })
    };
    // Both systems share the machine: each run waits for all of them to go idle.
    let servers = || [cluster.pids(), etcd.pids()].concat();
    let name = "n".repeat(options.value_bytes);
    let mut rows = Vec::new();
    let runs = options.clients.iter().enumerate().flat_map(|(i, &c)| (0..options.rounds).map(move |r| (i, c, r)));
    for (at, clients, round) in runs {
        // Unique per client count and round: ids, keys and the tenants to update.
        let run = format!("{at}-{round}");
        settle(&servers(), SETTLE_AT_MOST).await;
        let before = custos_counters().await?;
        let (c, n, r) = (cluster.clone(), name.clone(), run.clone());
        let stats = drive(clients, options.duration, move |client, seq| {
            let c = c.clone();
            let run = &r;
            let body = json!({ "id": format!("r{run}-{client}-{seq}"), "display_name": n, "region": "bench" });
            async move {
                let node = (client % 3) as u64 + 1;
                matches!(c.call(node, Method::POST, "/v1/tenants", Some(&body), &[]).await, Ok(r) if r.status == 201)
            }
        })
        .await;
        settle(&servers(), SETTLE_AT_MOST).await;
        let after = custos_counters().await?;
        push_row(&mut rows, ("custos", "create"), (clients, round), stats, (&before, &after));

        for client in 0..clients {
            let body = json!({ "id": format!("u{run}-{client}"), "display_name": name, "region": "bench" });
            let reply = cluster.call(1, Method::POST, "/v1/tenants", Some(&body), &[]).await?;
            if reply.status != 201 {
                bail!("creating the tenants to update: {} {}", reply.status, reply.body);
            }
        }
        settle(&servers(), SETTLE_AT_MOST).await;
        let before = custos_counters().await?;
        let (c, n, r) = (cluster.clone(), name.clone(), run.clone());
        let stats = drive(clients, options.duration, move |client, seq| {
            let c = c.clone();
            let run = &r;
            // The same length as the other runs' values: the name with a varying tail.
            let mut display_name = n.clone();
            let tail = format!("{seq}");
            display_name.truncate(display_name.len().saturating_sub(tail.len()));
            display_name.push_str(&tail);
            let body = json!({ "display_name": display_name });
            let path = format!("/v1/tenants/u{run}-{client}");
            async move {
                let node = (client % 3) as u64 + 1;
                matches!(c.call(node, Method::PATCH, &path, Some(&body), &[]).await, Ok(r) if r.status == 200)
            }
        })
        .await;
        settle(&servers(), SETTLE_AT_MOST).await;
        let after = custos_counters().await?;
        push_row(&mut rows, ("custos", "update"), (clients, round), stats, (&before, &after));

        // Each starts idle: the update run's end, then the put run's, was settled.
        for (op, prefix, if_absent) in [("put", "r", false), ("create", "c", true)] {
            let before = etcd_counters().await?;
            let (e, h, n, r) = (etcd.clone(), http.clone(), name.clone(), run.clone());
            let stats = drive(clients, options.duration, move |client, seq| {
                let (e, h) = (e.clone(), h.clone());
                let id = format!("{prefix}{}-{client}-{seq}", &r);
                let value = json!({ "id": id, "display_name": n, "region": "bench" }).to_string();
                let key = format!("/tenants/{id}");
                async move {
                    let url = &e.client_urls[client % e.client_urls.len()];
                    if if_absent {
                        etcd::create(&h, url, &key, value.as_bytes()).await
                    } else {
                        etcd::put(&h, url, &key, value.as_bytes()).await
                    }
                }
            })
            .await;
            settle(&servers(), SETTLE_AT_MOST).await;
            let after = etcd_counters().await?;
            push_row(&mut rows, ("etcd", op), (clients, round), stats, (&before, &after));
        }
    }

    println!();
    println!(
        "{:<7} {:<7} {:>7} {:>18} {:>16} {:>16} {:>16}",
        "custos", "etcd", "clients", "ops/s custos/etcd", "p50 custos/etcd", "p99 custos/etcd", "cpu custos/etcd"
    );
    for &clients in &options.clients {
        for (op, etcd_op) in PAIRS {
            let ratios = Ratios::of(&rows, (op, etcd_op), clients);
            println!(
                "{:<7} {:<7} {:>7} {:>18.2} {:>16.2} {:>16.2} {:>16.2}",
                op, etcd_op, clients, ratios.ops_per_sec, ratios.p50, ratios.p99, ratios.cpu
            );
        }
    }
    if options.rounds > 1 {
        println!("(each the median over {} rounds of the round's custos/etcd ratio)", options.rounds);
    }
    Ok(())
}

/// Custos against etcd for one operation at one client count: each ratio is taken within a
/// round (runs close in time, so a slow spell of the machine hits both), then the median over
/// the rounds.
struct Ratios {
    ops_per_sec: f64,
    p50: f64,
    p99: f64,
    cpu: f64,
}

impl Ratios {
    fn of(rows: &[Row], (op, etcd_op): (&str, &str), clients: usize) -> Ratios {
        let pairs: Vec<(&Row, &Row)> = rows
            .iter()
            .filter(|c| c.system == "custos" && c.op == op && c.clients == clients)
            .filter_map(|c| {
                let etcd = rows
                    .iter()
                    .find(|e| e.system == "etcd" && e.op == etcd_op && e.clients == clients && e.round == c.round)?;
                Some((c, etcd))
            })
            .collect();
        let ratio = |figure: &dyn Fn(&Row) -> f64| median(pairs.iter().map(|(c, e)| figure(c) / figure(e)).collect());
        Ratios {
            ops_per_sec: ratio(&|r| r.stats.ops_per_sec()),
            p50: ratio(&|r| r.stats.latency_ms(0.50)),
            p99: ratio(&|r| r.stats.latency_ms(0.99)),
            cpu: ratio(&|r| r.cpu_us_per_write),
        }
    }
}

/// The median (the mean of the middle two for an even count); NaN for none.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_is_the_middle_figure_or_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![7.0]), 7.0);
        assert!(median(Vec::new()).is_nan());
    }
}

//! `custos chaos`: runs chaos scenarios (the full set by default) against clusters of this
//! binary's processes, prints each scenario's summary line, and writes the results as a
//! Markdown table with the date and commit (docs/chaos-results.md).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use custos_chaos_tests::scenario::{self, Nemesis, Plan, Summary};

pub struct Options {
    /// Nemesis names; empty for all of them.
    pub nemeses: Vec<String>,
    /// Cluster sizes, each run with every nemesis.
    pub nodes: Vec<u64>,
    pub duration: Duration,
    pub clients: usize,
    pub seed: u64,
    /// Where to write the results table.
    pub out: Option<PathBuf>,
}

/// Runs the scenarios; Ok(true) when every one was clean.
pub async fn run(options: Options) -> anyhow::Result<bool> {
    let nemeses = if options.nemeses.is_empty() {
        Nemesis::ALL.to_vec()
    } else {
        let mut chosen = Vec::new();
        for name in &options.nemeses {
            match Nemesis::parse(name) {
                Some(nemesis) => chosen.push(nemesis),
                None => {
                    let known: Vec<&str> = Nemesis::ALL.iter().map(|n| n.name()).collect();
                    bail!("unknown scenario {name:?}; known: {}", known.join(", "))
                }
            }
        }
        chosen
    };
    if let Some(bad) = options.nodes.iter().find(|n| **n < 3 || **n > 7) {
        bail!("a chaos cluster has 3 to 7 nodes, not {bad}");
    }
    let binary = std::env::current_exe().context("locating the custos binary")?;
    // The outage scenarios start Kafka and OpenBao with the repository's scripts.
    let repo = std::env::current_dir().context("reading the working directory")?;
    let outages = nemeses.iter().any(|n| matches!(n, Nemesis::KafkaOutage | Nemesis::VaultOutage));
    if outages && !repo.join("deploy/scripts").is_dir() {
        bail!("the outage scenarios need deploy/scripts: run custos chaos from the repository root");
    }
    let mut summaries = Vec::new();
    for &nodes in &options.nodes {
        for &nemesis in &nemeses {
            let plan = Plan {
                nemesis,
                nodes,
                clients: options.clients,
                duration: options.duration,
                seed: options.seed,
                repo: repo.clone(),
            };
            let summary = scenario::run(&binary, &plan)
                .await
                .with_context(|| format!("scenario {} on {nodes} nodes", nemesis.name()))?;
            println!("{}", summary.line());
            if !summary.clean() {
                println!("{}", summary.findings());
            }
            summaries.push(summary);
        }
    }
    if let Some(out) = &options.out {
        std::fs::write(out, table(&options, &summaries)).with_context(|| format!("writing {}", out.display()))?;
        println!("results written to {}", out.display());
    }
    Ok(summaries.iter().all(Summary::clean))
}

fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn table(options: &Options, summaries: &[Summary]) -> String {
    let date = jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = format!(
        "# Chaos results\n\n\
         Written by `custos chaos --out docs/chaos-results.md` on {date}, commit `{}`: seed {}, {} s and {} \
         register clients (half as many encrypting) per scenario, on a {cores}-core machine. What each scenario \
         does and checks: docs/chaos.md.\n\n\
         | scenario | nodes | ops ok | failed | indeterminate | anomalies | lost writes | crypto ops ok | \
         undecryptable | audit findings | faults | worst recovery |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        commit(),
        options.seed,
        options.duration.as_secs(),
        options.clients,
    );
    for s in summaries {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} s |\n",
            s.plan.nemesis.name(),
            s.plan.nodes,
            s.ok,
            s.failed,
            s.indeterminate,
            s.anomalies.len(),
            s.diverged.len(),
            s.crypto_ok,
            s.crypto_broken.len(),
            s.audit_findings.len(),
            s.recovery.len(),
            s.worst_recovery().as_secs_f64(),
        ));
    }
    let clean = summaries.iter().filter(|s| s.clean()).count();
    out.push_str(&format!("\n{clean} of {} scenarios clean.\n", summaries.len()));
    out
}

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use custos_actors::audit::chain::Anchor;
use custos_node::audit::StreamSource;

use super::output::{print, text};
use super::{client, Global, Output};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// One page of a tenant's audit stream, through the API of any node.
    List {
        #[arg(long, env = "CUSTOS_TENANT")]
        tenant: String,
        /// Start at this position (`next` of the previous page).
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long)]
        limit: Option<usize>,
        /// Event types, comma-separated (e.g. key.encrypt,key.decrypt).
        #[arg(long = "type")]
        types: Option<String>,
    },
    /// Follow a tenant's audit stream live (Server-Sent Events) until interrupted.
    Tail {
        #[arg(long, env = "CUSTOS_TENANT")]
        tenant: String,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Check a stream's hash chains: reports modified, missing, reordered and conflicting
    /// events. Exits 0 when clean, 1 with findings. Reads the sink directly (Kafka, or the
    /// local log of a node), not through the API. Once retention has removed a stream's
    /// oldest events, chains are checked from what is retained; keep each run's printed
    /// anchors and pass them to the next run to check that nothing before them was cut off
    /// or rewritten meanwhile.
    Verify {
        /// The tenant; `_cluster` for the cluster's own stream.
        #[arg(long, env = "CUSTOS_TENANT")]
        tenant: String,
        /// The node configuration naming the sink (its data dir or Kafka settings).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Verify this local audit log directory instead (`<data_dir>/audit/log`, or a copy).
        #[arg(long, conflicts_with = "config")]
        log_dir: Option<PathBuf>,
        /// A chain head an earlier run printed, CHAIN:SEQ:HASH: the stream must still hold it
        /// (or continue right after it, once retention removed it). Repeat for each chain.
        #[arg(long = "anchor", value_parser = parse_anchor)]
        anchors: Vec<Anchor>,
    },
}

fn parse_anchor(text: &str) -> Result<Anchor, String> {
    Anchor::parse(text)
}

fn event_line(e: &serde_json::Value) -> String {
    let data = &e["data"];
    format!(
        "{} {:<26} {:<8} {:<10} {:<24} {}",
        text(&e["time"]),
        text(&e["type"]).trim_start_matches("dev.custos."),
        text(&data["outcome"]),
        text(&data["actor"]["id"]),
        text(&e["subject"]),
        data["reason"].as_str().unwrap_or(""),
    )
}

pub async fn run(global: &Global, command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::List { tenant, from, limit, types } => {
            let api = client(global, true)?;
            let mut path = format!("/v1/tenants/{tenant}/audit?from={from}");
            if let Some(limit) = limit {
                path.push_str(&format!("&limit={limit}"));
            }
            if let Some(types) = types {
                path.push_str(&format!("&type={types}"));
            }
            let page = api.get(&path).await?;
            print(global.output, &page, |p| {
                let mut lines: Vec<String> = p["events"].as_array().into_iter().flatten().map(event_line).collect();
                if lines.is_empty() {
                    lines.push("no events".into());
                }
                lines.push(format!("(next page: --from {})", text(&p["next"])));
                lines.join("\n")
            });
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Tail { tenant, count } => {
            let api = client(global, true)?;
            let mut seen = 0u64;
            let output = global.output;
            api.events(&format!("/v1/tenants/{tenant}/audit/tail"), |event, data| {
                match event {
                    "audit" => {
                        let value: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
                        match output {
                            Output::Json => println!("{data}"),
                            Output::Human => println!("{}", event_line(&value)),
                        }
                        seen += 1;
                    }
                    "lagged" => eprintln!("(too slow: events missed {data})"),
                    other => eprintln!("({other}: {data})"),
                }
                count.is_none_or(|c| seen < c)
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify { tenant, config, log_dir, anchors } => {
            let source = match log_dir {
                Some(dir) => StreamSource::LocalLog(dir),
                None => {
                    let config = custos_config::load(config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
                    StreamSource::of(&config)?
                }
            };
            let described = source.describe();
            let report = tokio::task::spawn_blocking(move || custos_node::audit::verify(&source, &tenant, anchors))
                .await?
                .with_context(|| format!("reading {described}"))?;
            match global.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Human => {
                    println!(
                        "{}: {} events ({} redelivered) in {} chain(s) from {described}",
                        report.tenant,
                        report.events,
                        report.duplicates,
                        report.chains.len()
                    );
                    if report.after_retention {
                        println!("  the stream starts after retention: chains are checked from what it retains");
                    }
                    for chain in &report.chains {
                        let head =
                            Anchor { chain: chain.chain.clone(), seq: chain.last_seq, hash: chain.last_hash.clone() };
                        println!(
                            "  chain {}: seq {}..{} ({} events), anchor for the next run: --anchor {}",
                            chain.chain,
                            chain.first_seq,
                            chain.last_seq,
                            chain.events,
                            head.render()
                        );
                    }
                    for finding in &report.findings {
                        println!("  FINDING {}", serde_json::to_string(finding)?);
                    }
                    if report.more_findings > 0 {
                        println!("  … and {} more findings, not listed", report.more_findings);
                    }
                    println!("{}", if report.is_clean() { "clean" } else { "NOT CLEAN" });
                }
            }
            Ok(if report.is_clean() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

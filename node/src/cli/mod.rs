//! Command-line parsing and dispatch. Client commands talk to any node over the HTTPS API.

mod audit;
mod cluster;
mod key;
mod output;
mod tenant;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use custos_node::client::ApiClient;
use custos_node::telemetry::Otlp;

#[derive(Debug, Parser)]
#[command(name = "custos", version, about = "Custos: a clustered, multi-tenant trust plane")]
pub struct Args {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct Global {
    /// API address of any node.
    #[arg(long, global = true, env = "CUSTOS_ADDR", default_value = "https://127.0.0.1:7443")]
    pub addr: String,
    /// PEM file of the cluster CA to trust.
    #[arg(long, global = true, env = "CUSTOS_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Admin token (shown once by `custos cluster init`).
    #[arg(long, global = true, env = "CUSTOS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Human)]
    pub output: Output,
    /// Log filter for the node (tracing EnvFilter syntax).
    #[arg(long, global = true, env = "CUSTOS_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node from a configuration file (plus CUSTOS_<SECTION>__<KEY> overrides).
    Run {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run a local cluster with generated certificates: no configuration needed.
    Dev {
        /// Number of nodes (1 to 7).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=7))]
        nodes: u64,
        /// Where the nodes keep their data, certificates and the admin token.
        #[arg(long, default_value = "custos-dev")]
        data_dir: PathBuf,
        /// API port of node 1; node i uses base + 2(i-1) for its API and the next port for Raft.
        #[arg(long, default_value_t = 7443)]
        base_port: u16,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Certificate tools.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Cluster membership and status.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Benchmarks that print figures next to a peer system.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Chaos scenarios against local clusters of this binary (docs/chaos.md); exits 1 when
    /// any finds an anomaly.
    Chaos {
        /// Scenarios to run (comma-separated); all of them when absent.
        #[arg(long, value_delimiter = ',')]
        scenarios: Vec<String>,
        /// Cluster sizes, comma-separated; every scenario runs on each.
        #[arg(long, value_delimiter = ',', default_value = "3,5")]
        nodes: Vec<u64>,
        /// Seconds per scenario.
        #[arg(long, default_value_t = 60)]
        duration_secs: u64,
        /// Register clients (half as many encrypt).
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// The seed of the clients' and nemeses' choices; random when absent.
        #[arg(long)]
        seed: Option<u64>,
        /// Write the results table (Markdown) here, e.g. docs/chaos-results.md.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Tenants.
    Tenant {
        #[command(subcommand)]
        command: tenant::TenantCommand,
    },
    /// A tenant's keys: management, encryption and data keys.
    Key {
        /// The tenant whose keys these are.
        #[arg(long, env = "CUSTOS_TENANT")]
        tenant: String,
        #[command(subcommand)]
        command: key::KeyCommand,
    },
    /// Audit streams: list events, verify hash chains.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Key custody tools.
    Custody {
        #[command(subcommand)]
        command: CustodyCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum CustodyCommand {
    /// Write a new random cluster master key (64 hex digits, mode 0600); never overwrites.
    MasterKey {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file; exits non-zero listing every error with its key path.
    Check { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Durable governance writes on a 3-node loopback cluster vs a 3-member etcd cluster.
    Governance {
        /// Seconds per run (one run per client count and system).
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// Concurrent clients, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        clients: Vec<usize>,
        /// Runs of each system per client count, taken in turn; each ratio is the median of the
        /// rounds' ratios.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Bytes of payload (tenant display name) per write.
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        /// The etcd server binary (Debian package etcd-server).
        #[arg(long, default_value = "etcd")]
        etcd_bin: PathBuf,
    },
    /// Encrypt/decrypt over HTTPS on one node vs OpenBao transit (raft storage) on this machine.
    Encrypt {
        /// Seconds per run (one run per client count, operation and system).
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// Concurrent clients, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,10,64")]
        clients: Vec<usize>,
        #[arg(long, default_value_t = 128)]
        payload_bytes: usize,
        /// The script that installs and runs OpenBao (run from the repository root).
        #[arg(long, default_value = "deploy/scripts/openbao.sh")]
        openbao_script: PathBuf,
        /// Run the Custos node from this binary instead of this one: compares another build
        /// under the same load client and peer.
        #[arg(long)]
        node_exe: Option<PathBuf>,
    },
    /// Audited operations with delivery to a real Kafka vs audit off, and the audit pipeline
    /// vs a plain rdkafka producer.
    Audit {
        /// Seconds per run.
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// Concurrent HTTP clients for the end-to-end runs, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "16,64")]
        clients: Vec<usize>,
        /// Concurrent recorders in the pipeline run.
        #[arg(long, default_value_t = 512)]
        recorders: usize,
        /// The script that installs and runs Kafka (run from the repository root).
        #[arg(long, default_value = "deploy/scripts/kafka.sh")]
        kafka_script: PathBuf,
    },
    /// Authorization decisions (in-process p50/p99, HTTPS) and platform-token issuance next to
    /// Keycloak's client-credentials grant.
    Auth {
        /// Seconds per HTTPS run.
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// Concurrent HTTPS clients, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "16,64")]
        clients: Vec<usize>,
        /// Decisions timed in-process per variant.
        #[arg(long, default_value_t = 200_000)]
        decisions: u32,
        /// The script that installs and runs Keycloak (run from the repository root).
        #[arg(long, default_value = "deploy/scripts/keycloak.sh")]
        keycloak_script: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Create a cluster CA and node certificates (existing files are kept).
    Generate {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Extra DNS names or IP addresses for every node certificate.
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
}

/// Logs to stderr through the `--log` filter; with `otlp` (a node's `telemetry.otlp` and its
/// id), also exports request spans, and returns the export to shut down at exit.
fn init_tracing(global: &Global, otlp: Option<(&custos_config::OtlpConfig, u64)>) -> anyhow::Result<Option<Otlp>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_new(&global.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let (export, layer) = match otlp.and_then(|(config, id)| config.endpoint.as_deref().map(|e| (config, e, id))) {
        Some((config, endpoint, id)) => {
            let (export, layer) = Otlp::start(config, endpoint, id)?;
            (Some(export), Some(layer))
        }
        None => (None, None),
    };
    registry.with(layer).with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)).init();
    Ok(export)
}

pub fn client(global: &Global, with_token: bool) -> anyhow::Result<ApiClient> {
    let token = if with_token {
        Some(global.token.clone().context("no admin token: pass --token or set CUSTOS_TOKEN")?)
    } else {
        None
    };
    Ok(ApiClient::new(&global.addr, global.ca_cert.as_deref(), token)?)
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the node");
            // If Ctrl-C cannot be awaited either, stopping at once is the only safe choice.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub async fn dispatch(args: Args) -> anyhow::Result<ExitCode> {
    let global = args.global;
    if !matches!(args.command, Command::Run { .. }) {
        init_tracing(&global, None)?;
    }
    match args.command {
        Command::Run { config } => {
            let config = match custos_config::load(config.as_deref()) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return Ok(ExitCode::from(2));
                }
            };
            let otlp = init_tracing(&global, Some((&config.telemetry.otlp, config.node.id)))?;
            let result = custos_node::run(config, shutdown_signal()).await;
            if let Some(otlp) = otlp {
                otlp.shutdown().await;
            }
            result?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev { nodes, data_dir, base_port } => {
            let options = custos_node::dev::DevOptions { root: data_dir, nodes, base_port };
            custos_node::dev::run(options, shutdown_signal(), output::dev_banner).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { command: ConfigCommand::Check { file } } => match custos_config::load(Some(&file)) {
            Ok(_) => {
                println!("{}: ok", file.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                eprintln!("{}: {errors}", file.display());
                Ok(ExitCode::from(2))
            }
        },
        Command::Tls { command: TlsCommand::Generate { dir, nodes, hosts } } => {
            custos_node::tls::generate_cluster_pki(&dir, nodes, &hosts)?;
            println!("cluster CA and {nodes} node certificate(s) in {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command: BenchCommand::Governance { duration_secs, clients, rounds, value_bytes, etcd_bin },
        } => {
            let options = custos_node::bench::governance::Options {
                duration: std::time::Duration::from_secs(duration_secs),
                clients,
                rounds,
                value_bytes,
                etcd_binary: etcd_bin,
            };
            custos_node::bench::governance::run(options).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            command: BenchCommand::Encrypt { duration_secs, clients, payload_bytes, openbao_script, node_exe },
        } => {
            let options = custos_node::bench::encrypt::Options {
                duration: std::time::Duration::from_secs(duration_secs),
                clients,
                payload_bytes,
                openbao_script,
                node_exe,
            };
            custos_node::bench::encrypt::run(options).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { command: BenchCommand::Audit { duration_secs, clients, recorders, kafka_script } } => {
            let options = custos_node::bench::audit::Options {
                duration: std::time::Duration::from_secs(duration_secs),
                clients,
                recorders,
                kafka_script,
            };
            custos_node::bench::audit::run(options).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { command: BenchCommand::Auth { duration_secs, clients, decisions, keycloak_script } } => {
            let options = custos_node::bench::auth::Options {
                duration: std::time::Duration::from_secs(duration_secs),
                clients,
                decisions,
                keycloak_script,
            };
            custos_node::bench::auth::run(options).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Chaos { scenarios, nodes, duration_secs, clients, seed, out } => {
            let options = custos_node::chaos::Options {
                nemeses: scenarios,
                nodes,
                duration: std::time::Duration::from_secs(duration_secs),
                clients,
                seed: seed.unwrap_or_else(rand::random),
                out,
            };
            let clean = custos_node::chaos::run(options).await?;
            Ok(if clean { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Cluster { command } => cluster::run(&global, command).await,
        Command::Tenant { command } => tenant::run(&global, command).await,
        Command::Key { tenant, command } => key::run(&global, &tenant, command).await,
        Command::Audit { command } => audit::run(&global, command).await,
        Command::Custody { command: CustodyCommand::MasterKey { out } } => {
            if custos_node::custody::write_master_key(&out).with_context(|| format!("writing {}", out.display()))? {
                println!("master key written to {}; give every node of the cluster the same file", out.display());
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("{} exists; a master key is never overwritten", out.display());
                Ok(ExitCode::from(1))
            }
        }
    }
}

//! Chaos smoke set: the register and encryption workloads against three `custos` processes
//! while a nemesis partitions, kills or pauses the leader. Every register history must be
//! linearizable, every node must hold every acknowledged write, every acknowledged ciphertext
//! must decrypt everywhere and every audit chain must be complete. `CUSTOS_CHAOS_SEED`
//! replays a run; `custos chaos` runs the full set (docs/chaos.md).

use std::path::Path;
use std::time::Duration;

use custos_chaos_tests::scenario::{run, Nemesis, Plan};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_custos"))
}

fn seed() -> u64 {
    std::env::var("CUSTOS_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261123)
}

async fn smoke(nemesis: Nemesis) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the repository").to_path_buf();
    let plan = Plan { nemesis, nodes: 3, clients: 4, duration: Duration::from_secs(24), seed: seed(), repo };
    let summary = run(binary(), &plan).await.expect("the scenario runs");
    println!("{}", summary.line());
    assert!(summary.clean(), "{}\n{}", summary.line(), summary.findings());
    assert!(summary.ok >= 100, "too little progress to mean anything: {}", summary.line());
    assert!(summary.crypto_ok >= 20, "too few encryptions to mean anything: {}", summary.line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_partitions() {
    smoke(Nemesis::LeaderPartition).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kills() {
    smoke(Nemesis::LeaderKill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_pauses_longer_than_an_election() {
    smoke(Nemesis::Pause).await;
}

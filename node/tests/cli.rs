//! The `custos` command line: configuration checks and tenant commands against a node.

use std::path::Path;
use std::process::Command;

use custos_chaos_tests::ProcessCluster;
use serde_json::Value;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_custos"))
}

#[test]
fn config_check_lists_every_error_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[raft]\nheartbeat_interval_ms = \"fast\"\nbogus = 1\n[limits]\nmax_in_flight = 0\n").unwrap();
    let out = Command::new(binary()).args(["config", "check"]).arg(&bad).output().unwrap();
    // A bad file exits non-zero and names each offending key.
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for path in ["raft.heartbeat_interval_ms", "raft.bogus"] {
        assert!(stderr.contains(path), "{stderr}");
    }

    // Semantic errors are listed together once the types are right.
    std::fs::write(&bad, "[node]\nid = 0\n[limits]\nmax_in_flight = 0\n").unwrap();
    let out = Command::new(binary()).args(["config", "check"]).arg(&bad).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("node.id") && stderr.contains("limits.max_in_flight"), "{stderr}");

    // A good file passes.
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[node]\nid = 3\n").unwrap();
    let out = Command::new(binary()).args(["config", "check"]).arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn cli(cluster: &ProcessCluster, node: u64, args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .args(args)
        .env("CUSTOS_ADDR", cluster.url(node, "").unwrap())
        .env("CUSTOS_CA_CERT", cluster.root().join("tls/ca.pem"))
        .env("CUSTOS_TOKEN", cluster.token().unwrap())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_commands_work_against_any_node() {
    let mut cluster = ProcessCluster::new(binary(), 2, &[]).unwrap();
    cluster.form().await.unwrap();

    // Create through node 2 (a follower), read through node 1, in both output formats.
    let created = cli(&cluster, 2, &["tenant", "create", "acme", "--name", "Acme Corp", "--region", "eu-west"]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    assert!(String::from_utf8_lossy(&created.stdout).contains("created acme"));
    let got = cli(&cluster, 1, &["-o", "json", "tenant", "get", "acme"]);
    let tenant: Value = serde_json::from_slice(&got.stdout).expect("JSON output");
    assert_eq!(tenant["display_name"], "Acme Corp");

    let suspended = cli(&cluster, 1, &["tenant", "suspend", "acme"]);
    assert!(String::from_utf8_lossy(&suspended.stdout).contains("suspended"));
    let listed = cli(&cluster, 2, &["-o", "json", "tenant", "list"]);
    let list: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(list["tenants"][0]["status"], "suspended");

    // Errors exit non-zero with the API's code.
    let dup = cli(&cluster, 1, &["tenant", "create", "acme", "--name", "Again", "--region", "eu-west"]);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("tenant_exists"));

    // Cluster status lists both members with their lag.
    let status = cli(&cluster, 2, &["-o", "json", "cluster", "status"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["cluster"]["members"].as_array().unwrap().len(), 2);

    // Node 2 leaves; the cluster goes on with node 1 alone.
    let left = cli(&cluster, 1, &["cluster", "leave", "--node-id", "2"]);
    assert!(left.status.success(), "{}", String::from_utf8_lossy(&left.stderr));
    let status = cli(&cluster, 1, &["-o", "json", "cluster", "status"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["cluster"]["members"].as_array().unwrap().len(), 1, "{status}");
    let deleted = cli(&cluster, 1, &["tenant", "delete", "acme"]);
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
}

#[test]
fn example_configuration_is_valid() {
    // The shipped example must stay in step with the configuration model.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/custos.example.toml");
    let out = Command::new(binary()).args(["config", "check"]).arg(&example).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

//! The `custos` command line: configuration checks and tenant commands against a node.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_commands_cover_a_keys_life_through_any_node() {
    let mut cluster = ProcessCluster::new(binary(), 2, &[]).unwrap();
    cluster.form().await.unwrap();
    let stdout = |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).trim().to_string();
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    ok(cli(&cluster, 1, &["tenant", "create", "acme", "--name", "Acme", "--region", "eu"]));
    let key = |node: u64, args: &[&str]| {
        let mut all = vec!["key", "--tenant", "acme"];
        all.extend_from_slice(args);
        cli(&cluster, node, &all)
    };
    assert!(ok(key(2, &["create", "orders"])).contains("created orders"));

    // Encrypt through one node, decrypt through the other, with the context bound.
    let sealed = ok(key(2, &["encrypt", "orders", "4111 1111", "--context", "order=42"]));
    assert_eq!(ok(key(1, &["decrypt", "orders", &sealed, "--context", "order=42"])), "4111 1111");
    let wrong = key(1, &["decrypt", "orders", &sealed, "--context", "order=43"]);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("decryption_failed"), "{wrong:?}");

    // Several texts go in one batch; a failed item is its own line and makes the exit code 1.
    let lines = ok(key(1, &["encrypt", "orders", "a", "b", "--context", "order=42"]));
    let batch: Vec<&str> = lines.lines().collect();
    assert_eq!(batch.len(), 2, "{lines}");
    assert_eq!(ok(key(2, &["decrypt", "orders", batch[0], batch[1], "--context", "order=42"])), "a\nb");
    let mixed = key(2, &["decrypt", "orders", batch[0], "not-a-ciphertext", "--context", "order=42"]);
    assert_eq!(mixed.status.code(), Some(1));
    let mixed = stdout(&mixed);
    assert!(mixed.starts_with("a\nerror malformed_ciphertext:"), "{mixed}");
    let json = key(1, &["-o", "json", "encrypt", "orders", "x", "y"]);
    let json: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["results"].as_array().unwrap().len(), 2);

    // A change made through one node shows on the other once it applied it there: checks
    // on the other node wait for that (up to 10 s).
    let until = |node: u64, args: &[&str], done: &dyn Fn(&std::process::Output) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = key(node, args);
            if done(&out) || Instant::now() > deadline {
                assert!(done(&out), "{args:?} on node {node}: {out:?}");
                return out;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let fails_with =
        |code: &'static str| move |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).contains(code);
    let json = |out: &std::process::Output| serde_json::from_slice::<Value>(&out.stdout).unwrap_or_default();

    // Rotation, rewrap, retiring the old version, data keys.
    assert!(ok(key(2, &["rotate", "orders"])).contains("v2"));
    let args = ["-o", "json", "rewrap", "orders", &sealed, "--context", "order=42"];
    let rewrapped = until(1, &args, &|out| json(out)["key_version"] == 2);
    let rewrapped = json(&rewrapped)["ciphertext"].as_str().unwrap().to_string();
    ok(key(1, &["config", "orders", "--min-decryption-version", "2"]));
    until(2, &["decrypt", "orders", &sealed, "--context", "order=42"], &fails_with("key_version_retired"));
    assert_eq!(ok(key(2, &["decrypt", "orders", &rewrapped, "--context", "order=42"])), "4111 1111");
    let wrapped = ok(key(1, &["datakey", "orders", "--wrapped-only"]));
    assert!(!wrapped.contains("plaintext") && wrapped.starts_with("custos:"), "{wrapped}");

    // Disable and enable; scheduling destruction refuses use until it is cancelled.
    ok(key(1, &["disable", "orders"]));
    until(2, &["encrypt", "orders", "z"], &fails_with("key_not_enabled"));
    ok(key(1, &["enable", "orders"]));
    until(2, &["encrypt", "orders", "z"], &|out| out.status.success());
    assert!(ok(key(1, &["destroy", "orders", "--after-secs", "3600"])).contains("destroy at"));
    until(2, &["encrypt", "orders", "z"], &|out| !out.status.success());
    ok(key(1, &["destroy", "orders", "--cancel"]));
    until(2, &["encrypt", "orders", "z"], &|out| out.status.success());
    let listed = until(2, &["-o", "json", "list"], &|out| json(out)["keys"][0]["latest_version"] == 2);
    assert_eq!(json(&listed)["keys"][0]["state"], "enabled");
}

#[test]
fn example_configuration_is_valid() {
    // The shipped example must stay in step with the configuration model.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/custos.example.toml");
    let out = Command::new(binary()).args(["config", "check"]).arg(&example).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

//! `custos dev` — the README's first command — forms a working cluster, stops cleanly on
//! Ctrl-C, and a second run reuses the data and admin token.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A base port with the six ports a 3-node dev cluster uses all free right now.
fn free_base() -> u16 {
    for _ in 0..50 {
        let base = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if base > 65000 {
            continue;
        }
        let all: Vec<_> = (base..base + 6).map(|p| TcpListener::bind(("127.0.0.1", p))).collect();
        if all.iter().all(|l| l.is_ok()) {
            return base;
        }
    }
    panic!("no run of six free ports found");
}

/// Starts `custos dev` and returns it once the banner lists the admin token.
fn start_dev(root: &Path, base: u16) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_custos"))
        .args(["dev", "--nodes", "3", "--base-port", &base.to_string(), "--data-dir"])
        .arg(root)
        .env("CUSTOS_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut token = None;
    while Instant::now() < deadline {
        let line = lines.next().expect("dev exited before printing its banner").unwrap();
        if let Some(t) = line.trim().strip_prefix("cst_") {
            token = Some(format!("cst_{t}"));
        }
        if line.starts_with("Try it:") {
            break;
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, token.expect("banner shows the admin token"))
}

fn cli(base: u16, node: u16, root: &Path, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_custos"))
        .args(args)
        .env("CUSTOS_ADDR", format!("https://127.0.0.1:{}", base + 2 * (node - 1)))
        .env("CUSTOS_CA_CERT", root.join("tls/ca.pem"))
        .env("CUSTOS_TOKEN", token)
        .output()
        .unwrap()
}

fn interrupt(mut child: Child) {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "custos dev exited with {status}");
            return;
        }
        assert!(Instant::now() < deadline, "custos dev did not stop after Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn dev_cluster_serves_stops_and_restarts_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("custos-dev");
    let base = free_base();

    // First run: a tenant created through node 2 is readable through node 3.
    let (dev, token) = start_dev(&root, base);
    let created = cli(base, 2, &root, &token, &["tenant", "create", "acme", "--name", "Acme", "--region", "eu-west"]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let got = cli(base, 3, &root, &token, &["-o", "json", "tenant", "get", "acme"]);
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    interrupt(dev);

    // Second run: same token, same data.
    let (dev, again) = start_dev(&root, base);
    assert_eq!(again, token);
    let listed = cli(base, 1, &root, &token, &["tenant", "list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("acme"), "{}", String::from_utf8_lossy(&listed.stderr));
    interrupt(dev);
}

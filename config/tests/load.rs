//! Loading configuration files: every error is reported with its key path.

use custos_config::{load, load_from_str};

#[test]
fn empty_file_gives_defaults() {
    // An empty file is the same as the built-in defaults.
    let config = load_from_str("").expect("empty config is valid");
    assert_eq!(config, custos_config::Config::default());
}

#[test]
fn values_from_file_override_defaults() {
    let config = load_from_str(
        "[node]\nid = 7\ndata_dir = \"/var/lib/custos\"\n[raft]\nheartbeat_interval_ms = 50\nelection_timeout_ms_min = 300\n",
    )
    .expect("valid config");
    assert_eq!(config.node.id, 7);
    assert_eq!(config.raft.heartbeat_interval_ms, 50);
    assert_eq!(config.raft.election_timeout_ms_min, 300);
}

#[test]
fn type_and_unknown_key_errors_name_their_path() {
    // Every error is listed, not just the first, and each names its dotted key path.
    let errors = load_from_str("[raft]\nheartbeat_interval_ms = \"fast\"\nbogus = 1\n[limits]\nmax_batch = -3\n")
        .expect_err("invalid config")
        .0;
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert!(paths.contains(&"raft.heartbeat_interval_ms"), "{errors:?}");
    assert!(paths.contains(&"raft.bogus"), "{errors:?}");
    assert!(paths.contains(&"limits.max_batch"), "{errors:?}");
}

#[test]
fn semantic_errors_are_all_reported() {
    // Cross-field rules report each violation with the key that must change.
    let errors = load_from_str(
        "[node]\nid = 0\n[raft]\nelection_timeout_ms_min = 900\nelection_timeout_ms_max = 800\nengine_cache_bytes = 1024\n[tls]\nca_file = \"/nonexistent/ca.pem\"\n[limits]\nmax_in_flight = 0\n",
    )
    .expect_err("invalid config")
    .0;
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    for expected in [
        "node.id",
        "raft.election_timeout_ms_max",
        "raft.engine_cache_bytes",
        "tls",
        "tls.ca_file",
        "limits.max_in_flight",
    ] {
        assert!(paths.contains(&expected), "missing {expected} in {errors:?}");
    }
}

#[test]
fn missing_file_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let errors = load(Some(&dir.path().join("absent.toml"))).expect_err("missing file").0;
    assert_eq!(errors.len(), 1);
    assert!(errors[0].reason.contains("does not exist"), "{errors:?}");
}

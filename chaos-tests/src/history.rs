//! Operation histories and their linearizability check.
//!
//! A workload records, per operation, an `invoke` and then one completion: `ok` (it took
//! effect, with its result), `fail` (it certainly did not take effect) or `info` (unknown: a
//! timeout, a dropped connection). Histories are written as JSON lines.
//!
//! The check is Porcupine's (Go; Lowe's just-in-time linearization with memoisation, one
//! register per key), run as `chaos-tests/checker`, built with `go build` into the cache on
//! first use. Failed operations are left out; an indeterminate one may take effect at any point
//! after its invocation, or never (its return time is infinite), and its process does nothing
//! afterwards (the workload gives the client a new process id, as Jepsen does).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// An operation on one register.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Op {
    Read,
    Write { value: String },
    Cas { expected: String, new: String },
}

/// What a completed operation returned.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
pub enum Ret {
    Read {
        value: Option<String>,
    },
    Written,
    /// Whether the compare-and-set applied.
    Cas {
        applied: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// One line of a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub process: u64,
    pub phase: Phase,
    pub key: String,
    pub op: Op,
    /// Set on `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<Ret>,
    /// Nanoseconds since the run started.
    pub time_ns: u64,
}

/// The verdict for one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyVerdict {
    pub key: String,
    /// `ok`, `illegal` (not linearizable) or `unknown` (the search timed out).
    pub result: String,
    /// Operations checked: completed, and indeterminate.
    pub ok: usize,
    pub indeterminate: usize,
}

impl KeyVerdict {
    pub fn linearizable(&self) -> bool {
        self.result == "ok"
    }
}

/// How long the search may take per key before answering `unknown`.
const SEARCH_TIMEOUT: Duration = Duration::from_secs(120);

fn op_json(op: &Op) -> Value {
    match op {
        Op::Read => json!({ "f": "read" }),
        Op::Write { value } => json!({ "f": "write", "value": value }),
        Op::Cas { expected, new } => json!({ "f": "cas", "expected": expected, "new": new }),
    }
}

fn ret_json(ret: &Ret) -> Value {
    match ret {
        Ret::Read { value } => json!({ "value": value }),
        Ret::Written => json!({}),
        Ret::Cas { applied } => json!({ "applied": applied }),
    }
}

/// Pairs invocations with completions into the checker's operations, per key.
fn operations(events: &[Event]) -> BTreeMap<String, (Vec<Value>, usize, usize)> {
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| e.time_ns);
    let mut open: HashMap<u64, &Event> = HashMap::new();
    let mut keys: BTreeMap<String, (Vec<Value>, usize, usize)> = BTreeMap::new();
    let infinite = i64::MAX;
    let push = |keys: &mut BTreeMap<String, (Vec<Value>, usize, usize)>, invoke: &Event, ret: i64, out: Value| {
        keys.entry(invoke.key.clone()).or_default().0.push(json!({
            "client": invoke.process,
            "call": invoke.time_ns as i64,
            "return": ret,
            "input": op_json(&invoke.op),
            "output": out,
        }));
    };
    for event in sorted {
        match event.phase {
            Phase::Invoke => {
                if let Some(unfinished) = open.insert(event.process, event) {
                    push(&mut keys, unfinished, infinite, Value::Null);
                    keys.entry(unfinished.key.clone()).or_default().2 += 1;
                }
            }
            Phase::Ok => {
                if let (Some(invoke), Some(ret)) = (open.remove(&event.process), &event.ret) {
                    push(&mut keys, invoke, event.time_ns as i64, ret_json(ret));
                    keys.entry(invoke.key.clone()).or_default().1 += 1;
                }
            }
            Phase::Fail => {
                open.remove(&event.process);
            }
            Phase::Info => {
                if let Some(invoke) = open.remove(&event.process) {
                    push(&mut keys, invoke, infinite, Value::Null);
                    keys.entry(invoke.key.clone()).or_default().2 += 1;
                }
            }
        }
    }
    for invoke in open.into_values() {
        push(&mut keys, invoke, infinite, Value::Null);
        keys.entry(invoke.key.clone()).or_default().2 += 1;
    }
    keys
}

/// Checks every key's history; `initial` gives a key's value before the run. Fails when the
/// checker cannot be built or run (Go is required).
pub fn check(events: &[Event], initial: &HashMap<String, Option<String>>) -> Result<Vec<KeyVerdict>> {
    let operations = operations(events);
    let mut keys = serde_json::Map::new();
    for (key, (ops, _, _)) in &operations {
        keys.insert(key.clone(), json!({ "initial": initial.get(key).cloned().flatten(), "ops": ops }));
    }
    let request = json!({ "timeout_ms": SEARCH_TIMEOUT.as_millis() as u64, "keys": keys });
    let binary = checker_binary()?;
    let mut child = Command::new(&binary)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", binary.display()))?;
    let mut stdin = child.stdin.take().context("checker stdin")?;
    let body = serde_json::to_vec(&request)?;
    let writer = std::thread::spawn(move || stdin.write_all(&body));
    let output = child.wait_with_output()?;
    writer.join().map_err(|_| anyhow::anyhow!("writing the history panicked"))??;
    if !output.status.success() {
        bail!("the checker failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let mut verdicts = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let answer: Value = serde_json::from_str(line)?;
        let key = answer["key"].as_str().context("a key")?.to_string();
        let (_, ok, indeterminate) = operations.get(&key).cloned().unwrap_or_default();
        let result = answer["result"].as_str().context("a result")?.to_string();
        verdicts.push(KeyVerdict { key, result, ok, indeterminate });
    }
    Ok(verdicts)
}

/// The checker, built from `chaos-tests/checker` into the cache (keyed by its sources) the
/// first time it is needed. One build at a time per process: threads of one process share its
/// id, so they would share the staging file.
fn checker_binary() -> Result<PathBuf> {
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("checker");
    let mut digest = 0u64;
    for file in ["go.mod", "go.sum", "main.go"] {
        let text = std::fs::read(source.join(file)).with_context(|| format!("reading checker/{file}"))?;
        digest = text.iter().fold(digest.rotate_left(5), |h, b| h.wrapping_mul(0x100000001b3) ^ u64::from(*b));
    }
    let cache = std::env::var_os("CUSTOS_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/custos")))
        .context("no HOME or CUSTOS_CACHE for the checker's build")?;
    let binary = cache.join(format!("chaos-checker-{digest:016x}"));
    if binary.is_file() {
        return Ok(binary);
    }
    std::fs::create_dir_all(&cache)?;
    let staging = cache.join(format!("chaos-checker-{digest:016x}.{}", std::process::id()));
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&staging)
        .arg(".")
        .current_dir(&source)
        .status()
        .context("running `go build` for the linearizability checker (Go 1.21+ is required)")?;
    if !status.success() {
        bail!("building the linearizability checker failed: {status}");
    }
    // A rename is atomic, so parallel tests never run a half-written binary.
    std::fs::rename(&staging, &binary)?;
    Ok(binary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny history language: (process, phase, op, ret, time).
    fn ev(process: u64, phase: Phase, op: Op, ret: Option<Ret>, time_ns: u64) -> Event {
        Event { process, phase, key: "k".into(), op, ret, time_ns }
    }

    fn w(v: &str) -> Op {
        Op::Write { value: v.into() }
    }

    fn read(v: Option<&str>) -> Option<Ret> {
        Some(Ret::Read { value: v.map(str::to_string) })
    }

    fn verdict(events: &[Event]) -> KeyVerdict {
        check(events, &HashMap::from([("k".to_string(), Some("0".to_string()))])).expect("the checker runs").remove(0)
    }

    #[test]
    fn a_read_after_a_completed_write_must_see_it() {
        let stale = [
            ev(1, Phase::Invoke, w("1"), None, 1),
            ev(1, Phase::Ok, w("1"), Some(Ret::Written), 2),
            ev(2, Phase::Invoke, Op::Read, None, 3),
            ev(2, Phase::Ok, Op::Read, read(Some("0")), 4),
        ];
        assert!(!verdict(&stale).linearizable(), "a stale read passed");
        let fresh =
            [stale[0].clone(), stale[1].clone(), stale[2].clone(), ev(2, Phase::Ok, Op::Read, read(Some("1")), 4)];
        assert!(verdict(&fresh).linearizable());
    }

    #[test]
    fn concurrent_operations_may_take_either_order_but_reads_must_agree() {
        // Write 1 overlaps both reads; the reads may see 0 then 1, never 1 then 0.
        let ok = [
            ev(1, Phase::Invoke, w("1"), None, 1),
            ev(2, Phase::Invoke, Op::Read, None, 2),
            ev(2, Phase::Ok, Op::Read, read(Some("0")), 3),
            ev(3, Phase::Invoke, Op::Read, None, 4),
            ev(3, Phase::Ok, Op::Read, read(Some("1")), 5),
            ev(1, Phase::Ok, w("1"), Some(Ret::Written), 6),
        ];
        assert!(verdict(&ok).linearizable());
        let flipped = [
            ok[0].clone(),
            ev(2, Phase::Invoke, Op::Read, None, 2),
            ev(2, Phase::Ok, Op::Read, read(Some("1")), 3),
            ev(3, Phase::Invoke, Op::Read, None, 4),
            ev(3, Phase::Ok, Op::Read, read(Some("0")), 5),
            ok[5].clone(),
        ];
        assert!(!verdict(&flipped).linearizable(), "a value went back in time");
    }

    #[test]
    fn two_compare_and_sets_from_one_value_cannot_both_apply() {
        let cas = |new: &str| Op::Cas { expected: "0".into(), new: new.into() };
        let both = [
            ev(1, Phase::Invoke, cas("a"), None, 1),
            ev(2, Phase::Invoke, cas("b"), None, 2),
            ev(1, Phase::Ok, cas("a"), Some(Ret::Cas { applied: true }), 3),
            ev(2, Phase::Ok, cas("b"), Some(Ret::Cas { applied: true }), 4),
        ];
        assert!(!verdict(&both).linearizable(), "a lost update passed");
        let one = [
            both[0].clone(),
            both[1].clone(),
            both[2].clone(),
            ev(2, Phase::Ok, cas("b"), Some(Ret::Cas { applied: false }), 4),
        ];
        assert!(verdict(&one).linearizable());
    }

    #[test]
    fn an_indeterminate_write_may_apply_later_and_a_failed_one_never_does() {
        let info = [
            ev(1, Phase::Invoke, w("1"), None, 1),
            ev(1, Phase::Info, w("1"), None, 2),
            ev(2, Phase::Invoke, Op::Read, None, 3),
            ev(2, Phase::Ok, Op::Read, read(Some("0")), 4),
            ev(3, Phase::Invoke, Op::Read, None, 5),
            ev(3, Phase::Ok, Op::Read, read(Some("1")), 6),
        ];
        assert!(verdict(&info).linearizable());
        let mut failed = info.clone();
        failed[1].phase = Phase::Fail;
        let v = verdict(&failed);
        assert!(!v.linearizable(), "a failed write was observed");
        assert_eq!((v.ok, v.indeterminate), (2, 0));
    }

    #[test]
    fn histories_round_trip_as_json_lines() {
        let event =
            ev(7, Phase::Ok, Op::Cas { expected: "a".into(), new: "b".into() }, Some(Ret::Cas { applied: true }), 9);
        let line = serde_json::to_string(&event).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), event);
    }
}

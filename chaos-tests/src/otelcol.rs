//! [`Collector`]: a real OpenTelemetry Collector (OTLP/HTTP receiver, file exporter) run by
//! `deploy/scripts/otelcol.sh`, which builds it with Go when missing, in a temporary
//! directory, stopped on drop. Starting fails loudly when it cannot run: tests that need it
//! never pass by skipping.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub struct Collector {
    script: PathBuf,
    dir: tempfile::TempDir,
}

/// One exported span, flattened from the collector's OTLP/JSON output.
#[derive(Debug, Clone)]
pub struct ExportedSpan {
    pub name: String,
    /// OTLP's span kind number: 2 is a server span.
    pub kind: u64,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    /// The span's attributes, values as strings.
    pub attributes: Vec<(String, String)>,
    /// The attributes of the resource that sent it.
    pub resource: Vec<(String, String)>,
}

impl ExportedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn resource_attribute(&self, key: &str) -> Option<&str> {
        self.resource.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// OTLP/JSON `KeyValue`s as (key, value) strings; numbers arrive as JSON strings or numbers.
fn attributes(list: Option<&Value>) -> Vec<(String, String)> {
    let Some(list) = list.and_then(Value::as_array) else { return Vec::new() };
    list.iter()
        .filter_map(|kv| {
            let key = kv["key"].as_str()?.to_string();
            let value = kv["value"].as_object()?.values().next()?;
            let value = value.as_str().map(str::to_string).unwrap_or_else(|| value.to_string());
            Some((key, value))
        })
        .collect()
}

impl Collector {
    /// The script in a checkout whose root is `repo_root`.
    pub fn script_in(repo_root: &Path) -> PathBuf {
        repo_root.join("deploy/scripts/otelcol.sh")
    }

    pub fn start(script: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("custos-otelcol-").tempdir()?;
        let collector = Collector { script: script.to_path_buf(), dir };
        let status = Command::new("bash")
            .arg(&collector.script)
            .arg("start")
            .arg(collector.dir.path())
            .status()
            .with_context(|| format!("running {}", collector.script.display()))?;
        if !status.success() {
            bail!("otelcol.sh start failed ({status}): the OpenTelemetry Collector is required here");
        }
        Ok(collector)
    }

    /// The receiver's traces URL, for `telemetry.otlp.endpoint`.
    pub fn traces_url(&self) -> Result<String> {
        Ok(format!("{}/v1/traces", std::fs::read_to_string(self.dir.path().join("addr"))?.trim()))
    }

    /// Every span the collector has written so far.
    pub fn spans(&self) -> Result<Vec<ExportedSpan>> {
        let text = match std::fs::read_to_string(self.dir.path().join("spans.jsonl")) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut spans = Vec::new();
        // The exporter may be mid-line: only complete lines count.
        for line in text.lines().filter(|l| l.ends_with('}')) {
            let Ok(batch) = serde_json::from_str::<Value>(line) else { continue };
            for resource_spans in batch["resourceSpans"].as_array().into_iter().flatten() {
                let resource = attributes(resource_spans["resource"].get("attributes"));
                for scope in resource_spans["scopeSpans"].as_array().into_iter().flatten() {
                    for span in scope["spans"].as_array().into_iter().flatten() {
                        spans.push(ExportedSpan {
                            name: span["name"].as_str().unwrap_or_default().to_string(),
                            kind: span["kind"].as_u64().unwrap_or_default(),
                            trace_id: span["traceId"].as_str().unwrap_or_default().to_string(),
                            span_id: span["spanId"].as_str().unwrap_or_default().to_string(),
                            parent_span_id: span["parentSpanId"].as_str().unwrap_or_default().to_string(),
                            attributes: attributes(span.get("attributes")),
                            resource: resource.clone(),
                        });
                    }
                }
            }
        }
        Ok(spans)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let stopped = Command::new("bash").arg(&self.script).arg("stop").arg(self.dir.path()).status();
        if !matches!(stopped, Ok(s) if s.success()) {
            eprintln!("stopping the collector in {} failed; stop it by its pid file", self.dir.path().display());
        }
    }
}

//! OTLP export of request spans, and of the phases under them, from a real `custos` process to a real OpenTelemetry
//! Collector started by `deploy/scripts/otelcol.sh` (never skipped).

use std::path::{Path, PathBuf};
use std::time::Duration;

use custos_chaos_tests::{eventually, Collector, ExportedSpan, ProcessCluster};
use reqwest::Method;
use serde_json::json;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_custos"))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

fn find<'a>(spans: &'a [ExportedSpan], name: &str, request_id: &str) -> Option<&'a ExportedSpan> {
    spans.iter().find(|s| s.name == name && s.attribute("request_id") == Some(request_id))
}

#[tokio::test]
async fn request_spans_reach_a_real_collector_continuing_the_callers_trace() {
    let collector =
        Collector::start(&Collector::script_in(&repo_root())).expect("the OpenTelemetry Collector is required here");
    let endpoint = collector.traces_url().expect("collector address");
    // A long export interval: what arrives below was sent by the batch size or by shutdown.
    let env = [
        ("CUSTOS_TELEMETRY__OTLP__ENDPOINT", endpoint.as_str()),
        ("CUSTOS_TELEMETRY__OTLP__EXPORT_INTERVAL_MS", "60000"),
    ];
    let mut cluster = ProcessCluster::new(binary(), 1, &env).expect("prepare");
    cluster.form().await.expect("form the cluster");

    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01");
    let body = json!({"id": "otlp-acme", "display_name": "Acme", "region": "eu"});
    let created = cluster
        .call(1, Method::POST, "/v1/tenants", Some(&body), &[("traceparent", &traceparent), ("x-request-id", "otlp-1")])
        .await
        .expect("create");
    assert_eq!(created.status, 201, "{}", created.body);
    let read =
        cluster.call(1, Method::GET, "/v1/tenants/otlp-acme", None, &[("x-request-id", "otlp-2")]).await.expect("get");
    assert_eq!(read.status, 200, "{}", read.body);
    let missing = cluster
        .call(1, Method::GET, "/v1/tenants/otlp-nobody", None, &[("x-request-id", "otlp-3")])
        .await
        .expect("get a tenant that does not exist");
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert!(collector.spans().expect("read spans").iter().all(|s| s.attribute("request_id") != Some("otlp-1")));

    // Graceful shutdown exports what is queued.
    cluster.stop(1).expect("stop the node");
    let arrived = eventually(Duration::from_secs(20), async || {
        let spans = collector.spans().unwrap_or_default();
        ["otlp-1", "otlp-2", "otlp-3"].iter().all(|id| spans.iter().any(|s| s.attribute("request_id") == Some(*id)))
    })
    .await;
    let spans = collector.spans().expect("read spans");
    assert!(arrived, "the request spans did not reach the collector: {spans:#?}");

    let create = find(&spans, "POST /v1/tenants", "otlp-1").expect("the create span");
    assert_eq!(create.kind, 2, "a server span");
    assert_eq!(create.trace_id, TRACE_ID, "the caller's trace continues");
    assert_eq!(create.parent_span_id, PARENT_SPAN_ID);
    assert_eq!(create.attribute("status"), Some("201"));
    assert_eq!(create.attribute("node"), Some("1"));
    assert_eq!(create.resource_attribute("service.name"), Some("custos"));
    assert_eq!(create.resource_attribute("service.instance.id"), Some("node-1"));

    let get = find(&spans, "GET /v1/tenants/{id}", "otlp-2").expect("the read span");
    assert_eq!(get.attribute("tenant"), Some("otlp-acme"));
    assert_eq!(get.attribute("status"), Some("200"));
    assert_ne!(get.trace_id, TRACE_ID, "a request without traceparent starts its own trace");
    assert!(get.parent_span_id.is_empty());
    let refused = find(&spans, "GET /v1/tenants/{id}", "otlp-3").expect("the refused read's span");
    assert_eq!(refused.attribute("status"), Some("404"));

    // The create's phases are its children: authentication, the tenant's custody root, the
    // Raft write and the audit event.
    let children = |parent: &ExportedSpan| -> Vec<&ExportedSpan> {
        spans.iter().filter(|s| s.parent_span_id == parent.span_id && s.trace_id == parent.trace_id).collect()
    };
    let phases = children(create);
    let phase = |name: &str| {
        phases.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no {name} span under the create: {phases:#?}"))
    };
    assert_eq!(phase("raft.write").attribute("command"), Some("create_tenant"));
    assert_eq!(phase("raft.write").attribute("outcome"), Some("applied"));
    assert_eq!(phase("audit.record").attribute("mode"), Some("fail-closed"));
    // A lone governance write carries its event in its Raft entry.
    assert_eq!(phase("audit.record").attribute("carried"), Some("true"));
    assert_eq!(phase("custody.provision").attribute("provider"), Some("sealed-local"));
    phase("auth.authenticate");
    // The linearizable read waited on a read barrier.
    let barrier = children(get).into_iter().find(|s| s.name == "raft.read_barrier").expect("the read's barrier span");
    assert!(barrier.attribute("read_index").is_some_and(|i| i.parse::<u64>().is_ok()), "{barrier:#?}");

    // Only Custos's own spans: none of the HTTP, TLS or Raft libraries'.
    let ours = ["raft.write", "raft.read_barrier", "audit.record", "auth.authenticate", "custody.provision"];
    let others: Vec<&str> = spans
        .iter()
        .filter(|s| s.attribute("route").is_none() && !ours.contains(&s.name.as_str()))
        .map(|s| s.name.as_str())
        .collect();
    assert!(others.is_empty(), "spans of other code were exported: {others:?}");
}

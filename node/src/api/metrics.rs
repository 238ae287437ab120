//! `GET /metrics`: Prometheus text exposition (OpenMetrics), admin token required.
//!
//! Request counts and latency histograms are recorded by the audit middleware per tenant (only
//! tenants this node knows get a label value of their own; anything else is `_none`, so made-up
//! paths cannot grow the label set). Raft, audit and key-provider figures are read from the
//! node at scrape time by [`NodeCollector`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use custos_actors::audit::Audit;
use custos_actors::custody::Custody;
use custos_actors::{TenantActorState, TenantDirectory};
use custos_raft::Cluster;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use custos_actors::policy::Permission;

/// The label value of requests whose tenant this node does not know.
pub const NO_TENANT: &str = "_none";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    tenant: String,
    operation: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    tenant: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<TenantLabel, Histogram>,
}

impl Metrics {
    pub fn new(cluster: Cluster, audit: Arc<Audit>, custody: Arc<Custody>, directory: Arc<TenantDirectory>) -> Metrics {
        let mut registry = Registry::with_prefix("custos");
        let requests = Family::<RequestLabels, Counter>::default();
        // 100 µs to about 6.5 s.
        let latency = Family::<TenantLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 17))
        });
        registry.register("requests", "Audited API requests by tenant, operation and outcome", requests.clone());
        registry.register("request_duration_seconds", "API request latency by tenant", latency.clone());
        registry.register_collector(Box::new(NodeCollector { cluster, audit, custody, directory }));
        Metrics { registry, requests, latency }
    }

    /// Counts one request and its latency. `tenant` must be a tenant this node knows or
    /// [`NO_TENANT`].
    pub fn observe(&self, tenant: &str, operation: &str, outcome: &str, elapsed: Duration) {
        let labels = RequestLabels {
            tenant: tenant.to_string(),
            operation: operation.to_string(),
            outcome: outcome.to_string(),
        };
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&TenantLabel { tenant: tenant.to_string() }).observe(elapsed.as_secs_f64());
    }

    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Figures read from the node at each scrape.
struct NodeCollector {
    cluster: Cluster,
    audit: Arc<Audit>,
    custody: Arc<Custody>,
    directory: Arc<TenantDirectory>,
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCollector").finish_non_exhaustive()
    }
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// One gauge family with one label: a value per label value.
fn labelled_gauges<'v>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'v str, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
    for (value, gauge) in values {
        ConstGauge::new(gauge).encode(family.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let node = self.cluster.node_status();
        let applied = node.applied_index.unwrap_or(0);
        gauge(&mut encoder, "raft_term", "Current Raft term", as_i64(node.term))?;
        gauge(&mut encoder, "raft_is_leader", "1 when this node leads", i64::from(node.leader_id == Some(node.id)))?;
        gauge(&mut encoder, "raft_committed_index", "Highest log index known committed", as_i64(node.committed_index))?;
        gauge(&mut encoder, "raft_applied_index", "Highest log index applied here", as_i64(applied))?;
        gauge(
            &mut encoder,
            "raft_apply_lag",
            "Committed entries not applied here yet",
            as_i64(node.committed_index.saturating_sub(applied)),
        )?;
        counter(&mut encoder, "raft_fsyncs", "Storage flushes since start", node.fsyncs)?;
        gauge(
            &mut encoder,
            "raft_snapshot_index",
            "Log index of the latest snapshot",
            as_i64(node.snapshot_index.unwrap_or(0)),
        )?;
        gauge(
            &mut encoder,
            "raft_purged_index",
            "Log index up to which the log is purged",
            as_i64(node.purged_index.unwrap_or(0)),
        )?;
        counter(
            &mut encoder,
            "raft_snapshot_copies",
            "Copies of the whole state encoded for followers behind the purged log",
            node.snapshot_copies,
        )?;

        let audit = self.audit.status();
        gauge(&mut encoder, "audit_outbox_depth", "Audit events not yet shipped", as_i64(audit.outbox_depth))?;
        counter(&mut encoder, "audit_committed", "Audit events made durable", audit.committed)?;
        counter(&mut encoder, "audit_group_commits", "Outbox group commits", audit.group_commits)?;
        counter(&mut encoder, "audit_dropped", "Audit events dropped (best-effort mode)", audit.dropped)?;
        counter(&mut encoder, "audit_failed", "Audit events that could not be made durable", audit.failed)?;
        counter(&mut encoder, "audit_shipped", "Audit events delivered to the sink", audit.shipped)?;
        counter(&mut encoder, "audit_delivery_failures", "Failed delivery attempts", audit.delivery_failures)?;
        if let Some(lag) = audit.kafka_lag_ms {
            gauge(
                &mut encoder,
                "audit_kafka_lag_milliseconds",
                "Commit to Kafka acknowledgement of the last batch's oldest event, or how long the oldest event still waiting has waited",
                as_i64(lag),
            )?;
        }

        labelled_gauges(
            &mut encoder,
            "tenant_actor_trees",
            "Tenants with an actor tree on this node, by state (idle tenants have none)",
            "state",
            [TenantActorState::Running, TenantActorState::Restarting, TenantActorState::Degraded]
                .map(|state| (state.as_str(), as_i64(self.directory.count(state) as u64))),
        )?;
        labelled_gauges(
            &mut encoder,
            "key_provider_up",
            "1 when a core key provider is healthy",
            "provider",
            self.custody.provider_health().into_iter().map(|h| (h.provider, i64::from(h.healthy))),
        )?;
        Ok(())
    }
}

/// `GET /metrics`.
pub async fn scrape(caller: Caller, State(state): State<AppState>) -> Result<Response, ApiError> {
    caller.authorize(&state, None, Permission::ClusterRead)?;
    let text = state.metrics.render().map_err(|_| ApiError::internal("encoding metrics failed"))?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response())
}

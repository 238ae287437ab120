//! Optional OTLP export of the node's request spans (`telemetry.otlp`).
//!
//! The API's `request` span (node, request id, method, route, tenant, status) becomes one
//! OpenTelemetry server span per request, with its phases as child spans (`auth.authenticate`,
//! `raft.write`, `raft.read_barrier`, `custody.*`, `audit.record`). They are sent to a
//! collector over OTLP/HTTP with protobuf bodies by the SDK's batch processor: a bounded queue
//! (`max_queue_spans`; a full queue drops spans, it never blocks a request) drained by a thread
//! of its own. A request arriving with a W3C `traceparent` continues that trace. Only spans of
//! Custos's own code are exported, not those of the libraries under it.
//!
//! The exporter's HTTP client is the node's reqwest client (rustls, the configured CA), handed
//! to the exporter through `opentelemetry-http`'s trait; its requests run on the node's tokio
//! runtime even though the batch processor awaits them from its own thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http;
use custos_config::OtlpConfig;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{FilterFn, Filtered};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Set once the export is installed; the process has one tracing subscriber.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether request spans are exported, so the API fills in what only the export reads.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Why the export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.otlp.ca_file: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("telemetry.otlp: {0}")]
    Client(String),
}

/// The running export; [`Otlp::shutdown`] sends what is queued before the process exits.
pub struct Otlp {
    provider: SdkTracerProvider,
}

/// The tracing layer that turns Custos's spans into exported OpenTelemetry spans.
pub type OtlpLayer<S> =
    Filtered<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>, FilterFn, S>;

/// Sends the exporter's requests with the node's reqwest client, on the node's runtime.
#[derive(Debug)]
struct ExportClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: http::Request<Bytes>) -> Result<http::Response<Bytes>, HttpError> {
        let http = self.http.clone();
        // The batch processor awaits this from its own thread, outside the runtime that
        // reqwest needs: the request itself runs as a task on that runtime.
        let sent = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let response = http.execute(request).await?;
            let mut answer = http::Response::builder().status(response.status());
            if let Some(headers) = answer.headers_mut() {
                *headers = response.headers().clone();
            }
            let body = response.bytes().await?;
            Ok::<_, HttpError>(answer.body(body)?)
        });
        sent.await?
    }
}

impl Otlp {
    /// Builds the exporter and its layer; `node_id` names this node in every span's resource.
    /// Must be called inside the node's tokio runtime.
    pub fn start<S>(config: &OtlpConfig, endpoint: &str, node_id: u64) -> Result<(Otlp, OtlpLayer<S>), TelemetryError>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        let timeout = Duration::from_millis(config.timeout_ms);
        // An http:// endpoint has no ca_file (validation sees to it) and needs no roots.
        let roots = match &config.ca_file {
            Some(ca) => crate::tls::root_store(ca)?,
            None => rustls::RootCertStore::empty(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TelemetryError::Client(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| TelemetryError::Client(e.to_string()))?;
        let client = ExportClient { http, runtime: tokio::runtime::Handle::current() };
        let headers: HashMap<String, String> = config.headers.clone().into_iter().collect();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(endpoint)
            .with_timeout(timeout)
            .with_headers(headers)
            .build()
            .map_err(|e| TelemetryError::Client(e.to_string()))?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(config.max_queue_spans)
            .with_max_export_batch_size(config.max_export_batch)
            .with_scheduled_delay(Duration::from_millis(config.export_interval_ms))
            .build();
        let resource = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "custos"),
                KeyValue::new("service.instance.id", format!("node-{node_id}")),
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            ])
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batch).build())
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("custos");
        let own_code: FilterFn = FilterFn::new(|meta| meta.target().starts_with("custos"));
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_threads(false)
            .with_location(false)
            .with_tracked_inactivity(false)
            .with_filter(own_code);
        EXPORTING.store(true, Ordering::Relaxed);
        Ok((Otlp { provider }, layer))
    }

    /// Exports what is queued (bounded by the export timeout), then stops the export thread.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "the OTLP export did not finish cleanly"),
            Err(error) => tracing::warn!(%error, "the OTLP export's shutdown failed"),
        }
    }
}

/// Makes `span` continue the W3C trace context of `headers` (`traceparent`, `tracestate`),
/// when they carry one.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let context = TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
    // Fails only when the span is disabled or already started: nothing to continue then.
    let _ = span.set_parent(context);
}

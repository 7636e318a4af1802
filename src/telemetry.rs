//! OpenTelemetry tracing: taskd's spans exported over OTLP/gRPC (`[tracing]`), off by default.
//!
//! ```text
//! [tracing] endpoint = ""            off: no exporter, no thread, no connection
//!           endpoint = "http://127.0.0.1:4317"
//!             ──▶ SdkTracerProvider(batch processor thread ──▶ OTLP TraceService/Export over
//!                 tonic, connected lazily), sampler ParentBased(TraceIdRatioBased(sampling_ratio)),
//!                 resource service.name = service_name
//!             ──▶ tracing-opentelemetry layer beside the log layer, with its own filter:
//!                 taskd's spans at INFO and above, whatever the log level
//! gRPC (server/grpc.rs)  W3C `traceparent`/`tracestate` of the request ──▶ parent of the
//!                        `rpc` span (kind server, named `<service>/<method>`)
//! CRI (cri/instrument.rs) `cri` span named after the operation ("RunPodSandbox")
//!   children: `cni` (one plugin exec, "cni.ADD"), `image.pull`, `shim` ("shim.Create")
//! ```
//!
//! Span names and kinds for OpenTelemetry are the `otel.name` / `otel.kind` fields of
//! tracing-opentelemetry; the log formats leave `otel.*` fields out ([`is_otel_field`]).
//! Only plain-text (`http://`) collectors are supported: taskd's OTLP client has no TLS (a
//! node-local collector or agent is the expected target).

use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Status, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use serde::Deserialize;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::errdefs::{ErrorKind, Kind};

/// How long one export may take before it is abandoned (the batch is dropped).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the last batch.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("[tracing] endpoint {endpoint:?}: {reason}")]
    Exporter { endpoint: String, reason: String },
}

impl ErrorKind for TelemetryError {
    fn kind(&self) -> Kind {
        match self {
            TelemetryError::Exporter { .. } => Kind::InvalidArgument,
        }
    }
}

/// The `[tracing]` section of the daemon's config: where and how spans are exported.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tracing {
    /// Empty: no export.
    pub endpoint: String,
    pub sampling_ratio: f64,
    pub service_name: String,
}

/// Checks `[tracing] endpoint` (non-empty): an `http://host:port` URL.
pub fn check_tracing_endpoint(endpoint: &str) -> Result<(), String> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("{endpoint:?} is not a URL ({e}); e.g. \"http://127.0.0.1:4317\""))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{endpoint:?}: taskd's OTLP export has no TLS; use an http:// collector (e.g. a node-local agent)"
            ));
        }
        _ => {
            return Err(format!(
                "{endpoint:?} must start with http:// (e.g. \"http://127.0.0.1:4317\")"
            ));
        }
    }
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        return Err(format!("{endpoint:?} names no host"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!(
            "{endpoint:?}: OTLP/gRPC takes no path (the service path is fixed)"
        ));
    }
    Ok(())
}

impl Default for Tracing {
    fn default() -> Self {
        Tracing {
            endpoint: String::new(),
            sampling_ratio: 1.0,
            service_name: "taskd".into(),
        }
    }
}

/// The running export: the provider whose batch thread sends the spans.
pub struct Export {
    provider: SdkTracerProvider,
    endpoint: String,
}

impl Export {
    /// Starts the export `cfg` asks for; `None` when `endpoint` is empty. Must run inside
    /// the tokio runtime (the OTLP channel lives there) and the runtime must outlive it.
    pub fn start(cfg: &Tracing) -> Result<Option<(Export, SdkTracer)>, TelemetryError> {
        if cfg.endpoint.is_empty() {
            return Ok(None);
        }
        let failed = |reason: String| TelemetryError::Exporter {
            endpoint: cfg.endpoint.clone(),
            reason,
        };
        check_tracing_endpoint(&cfg.endpoint).map_err(failed)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(cfg.endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| failed(e.to_string()))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(cfg.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sampling_ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("taskd");
        Ok(Some((
            Export {
                provider,
                endpoint: cfg.endpoint.clone(),
            },
            tracer,
        )))
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends what is queued and stops the batch thread (blocks: call outside async code,
    /// while the runtime is still up).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %e, endpoint = %self.endpoint, "tracing export: last spans not sent");
        }
    }
}

/// Which spans go to OpenTelemetry: taskd's own, INFO and above (the log level does not
/// change it).
pub fn filter() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new().with_target("taskd", tracing::Level::INFO)
}

/// Fields that only name or type a span for OpenTelemetry; the logs leave them out.
pub fn is_otel_field(name: &str) -> bool {
    name.starts_with("otel.")
}

/// An HTTP/2 request's headers as a propagation carrier.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Makes the caller's W3C trace context (`traceparent`, `tracestate`), when the request
/// carries one, the parent of `span`. A malformed header is ignored (a new trace starts).
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&Headers(headers));
    // Fails only when export is off (no layer) or the span is disabled: nothing to do.
    let _ = span.set_parent(cx);
}

/// Marks `span` failed with `message` (no-op when export is off).
pub fn set_error(span: &tracing::Span, message: impl Into<String>) {
    span.set_status(Status::error(message.into()));
}

/// A subscriber that records the spans it ends, for unit tests of span names and statuses.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt;

    /// The spans ended so far, as the SDK hands them to an exporter.
    #[derive(Debug, Clone, Default)]
    pub struct Recorded(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Recorded {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(batch);
            Ok(())
        }
    }

    impl Recorded {
        pub fn named(&self, name: &str) -> Vec<SpanData> {
            let spans = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            spans.iter().filter(|s| s.name == name).cloned().collect()
        }
    }

    /// taskd's OpenTelemetry layer (with its filter) exporting every span as it ends.
    pub fn subscriber() -> (
        impl tracing::Subscriber + Send + Sync,
        Recorded,
        SdkTracerProvider,
    ) {
        let recorded = Recorded::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(recorded.clone())
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_filter(super::filter());
        (tracing_subscriber::registry().with(layer), recorded, provider)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        assert!(check_tracing_endpoint("http://127.0.0.1:4317").is_ok());
        assert!(check_tracing_endpoint("http://collector.local:4317/").is_ok());
        for (bad, says) in [
            ("https://c:4317", "no TLS"),
            ("127.0.0.1:4317", "http://"),
            ("http://c:4317/v1/traces", "no path"),
            ("not a url", "not a URL"),
        ] {
            let e = check_tracing_endpoint(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn no_endpoint_no_export() {
        let cfg = Tracing::default();
        assert!(Export::start(&cfg).unwrap().is_none());
    }

    #[test]
    fn traceparent_becomes_the_parent_of_the_span() {
        let (subscriber, recorded, _provider) = testing::subscriber();
        tracing::subscriber::with_default(subscriber, || {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                "traceparent",
                http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            );
            let span = tracing::info_span!("rpc", otel.name = "traced");
            continue_trace(&span, &headers);
            drop(span);
            // No header: a new root.
            let root = tracing::info_span!("rpc", otel.name = "root");
            continue_trace(&root, &http::HeaderMap::new());
            drop(root);
        });
        let traced = &recorded.named("traced")[0];
        assert_eq!(
            traced.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(traced.parent_span_id.to_string(), "00f067aa0ba902b7");
        assert!(traced.parent_span_is_remote);
        let root = &recorded.named("root")[0];
        assert_eq!(root.parent_span_id, opentelemetry::trace::SpanId::INVALID);
        assert_ne!(root.span_context.trace_id(), traced.span_context.trace_id());
    }
}

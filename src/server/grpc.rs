//! The gRPC server on the unix socket.
//!
//! Every plugin of type `io.containerd.grpc.v1` provides a [`GrpcService`]; [`serve`] adds
//! them all to one router behind [`RpcLayer`], which for every RPC:
//! - validates the `containerd-namespace` header when present (invalid → InvalidArgument
//!   before the service runs; services then call [`namespace::required`](super::namespace::required)),
//! - opens a tracing span `rpc{service, method, namespace}` around the handler; for
//!   OpenTelemetry (`crate::telemetry`) it is the server span `<service>/<method>`, child of
//!   the caller's W3C `traceparent` when the request has one, failed on a server-side error code,
//!   and it ends with the response body,
//! - counts `taskd_grpc_requests_total{service,method,code}` and observes
//!   `taskd_grpc_request_duration_seconds{service,method}` when the response ends (its
//!   trailers carry the code; a response dropped before its trailers counts as Cancelled),
//! - answers a message over the `[grpc]` size limits ([`GrpcLimits`], applied by every
//!   service) with ResourceExhausted, as grpc-go does (tonic says OutOfRange).
//!
//! Shutdown: [`GrpcServer::shutdown`] stops accepting and lets in-flight RPCs finish within
//! the grace period. Then it fires the layer's abort signal: every handler still running is
//! dropped (cancelled) and answers Unavailable, and every response stream still open (e.g. an
//! event subscription) ends with an Unavailable status, so connections close and the server
//! task ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::net::UnixListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::body::Body;
use tonic::service::{Routes, RoutesBuilder};
use tracing::Instrument;

use super::namespace::HEADER;
use super::{GrpcLimits, GrpcService};
use crate::identifiers;
use crate::plugin::PluginId;

/// The per-RPC metrics, registered once in the daemon's registry.
#[derive(Clone)]
pub struct RpcMetrics {
    requests: prometheus::IntCounterVec,
    duration: prometheus::HistogramVec,
}

impl RpcMetrics {
    pub fn register(registry: &prometheus::Registry) -> Result<RpcMetrics, prometheus::Error> {
        let requests = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "taskd_grpc_requests_total",
                "gRPC requests handled, by final code",
            ),
            &["service", "method", "code"],
        )?;
        let duration = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "taskd_grpc_request_duration_seconds",
                "gRPC request duration until the response ends",
            ),
            &["service", "method"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(RpcMetrics { requests, duration })
    }
}

/// A running gRPC server.
pub struct GrpcServer {
    stop: Option<oneshot::Sender<()>>,
    abort: watch::Sender<bool>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    /// Set when the task ended on its own (see [`GrpcServer::ended`]).
    ended: bool,
}

/// Serves every [`GrpcService`] on `listener`.
pub fn serve(
    listener: UnixListener,
    services: Vec<(PluginId, Arc<dyn GrpcService>)>,
    limits: GrpcLimits,
    metrics: RpcMetrics,
) -> GrpcServer {
    let mut routes = RoutesBuilder::default();
    for (id, service) in &services {
        tracing::debug!(plugin = %id, "adding gRPC service");
        service.register(&mut routes, limits);
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let (abort, aborted) = watch::channel(false);
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let router = tonic::transport::Server::builder()
        .layer(RpcLayer { metrics, aborted })
        .add_routes(routes.routes());
    let task = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await
    });
    GrpcServer {
        stop: Some(stop),
        abort,
        task,
        ended: false,
    }
}

/// How long connections get to close once the remaining RPCs were aborted.
const ABORT_WAIT: Duration = Duration::from_secs(2);

impl GrpcServer {
    /// Stops accepting, drains in-flight RPCs for at most `grace`, then aborts the rest.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if self.ended {
            return;
        }
        match tokio::time::timeout(grace, &mut self.task).await {
            Ok(Ok(Ok(()))) => tracing::debug!("gRPC server drained"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
            Err(_) => {
                tracing::warn!(
                    ?grace,
                    "gRPC RPCs still in flight after the grace period; aborting them"
                );
                let _ = self.abort.send(true);
                if tokio::time::timeout(ABORT_WAIT, &mut self.task).await.is_err() {
                    self.task.abort();
                    let _ = self.task.await;
                }
            }
        }
    }

    /// Resolves if the server stops on its own (it should not: an accept error), with what
    /// it said. Cancel-safe, for a `select!` next to the signal handlers; never resolves
    /// again once it did.
    pub async fn ended(&mut self) -> String {
        if self.ended {
            return std::future::pending().await;
        }
        let result = (&mut self.task).await;
        self.ended = true;
        match result {
            Ok(Ok(())) => "the gRPC server stopped".to_owned(),
            Ok(Err(e)) => format!("the gRPC server failed: {e}"),
            Err(e) => format!("the gRPC server task failed: {e}"),
        }
    }
}

/// Splits `/pkg.Service/Method`; anything else (or absurdly long) becomes `unknown` so a
/// client cannot blow up label cardinality.
fn split_path(path: &str) -> (String, String) {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
    };
    if let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/'))
        && ok(service)
        && ok(method)
    {
        return (service.to_owned(), method.to_owned());
    }
    ("unknown".to_owned(), "unknown".to_owned())
}

/// The code's name as gRPC's Go implementation spells it (`OK`, `Canceled`, `NotFound`, ...),
/// so dashboards written for go-grpc-prometheus' `grpc_code` work unchanged.
fn code_label(code: tonic::Code) -> String {
    match code {
        tonic::Code::Ok => "OK".to_owned(),
        tonic::Code::Cancelled => "Canceled".to_owned(),
        other => format!("{other:?}"),
    }
}

/// The tower layer described in the module docs.
#[derive(Clone)]
pub struct RpcLayer {
    metrics: RpcMetrics,
    aborted: watch::Receiver<bool>,
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService {
            inner,
            metrics: self.metrics.clone(),
            aborted: self.aborted.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: RpcMetrics,
    aborted: watch::Receiver<bool>,
}

/// Resolves once the server aborts what is left after the grace period.
fn abort_signal(mut rx: watch::Receiver<bool>) -> BoxFuture<()> {
    Box::pin(async move {
        // An error means the server is gone: abort as well.
        let _ = rx.wait_for(|aborted| *aborted).await;
    })
}

fn aborted_status() -> tonic::Status {
    tonic::Status::unavailable("taskd is shutting down: the RPC outlived the shutdown grace period")
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<Body>> for RpcService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<MeteredBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let started = Instant::now();
        let (service, method) = split_path(req.uri().path());
        let namespace = req.headers().get(HEADER).map(|v| v.to_str().map(str::to_owned));
        let span = tracing::info_span!(
            "rpc",
            service = %service,
            method = %method,
            namespace = tracing::field::Empty,
            otel.name = %format_args!("{service}/{method}"),
            otel.kind = "server",
        );
        crate::telemetry::continue_trace(&span, req.headers());
        let record = Record {
            metrics: self.metrics.clone(),
            service,
            method,
            started,
            span: span.clone(),
            done: false,
        };
        let rejected = match &namespace {
            None => None,
            Some(Err(_)) => Some(tonic::Status::invalid_argument(format!(
                "{HEADER} header is not valid ASCII"
            ))),
            Some(Ok(ns)) => {
                span.record("namespace", ns.as_str());
                identifiers::validate("namespace", ns)
                    .err()
                    .map(|e| super::status::to_status(&e))
            }
        };
        if let Some(status) = rejected {
            let _g = span.enter();
            tracing::debug!(code = ?status.code(), message = status.message(), "rpc rejected");
            let response = status.into_http::<Body>();
            let abort = abort_signal(self.aborted.clone());
            return Box::pin(async move { Ok(MeteredBody::wrap(response, record, abort)) });
        }
        let aborted = self.aborted.clone();
        // Take the service that was driven to readiness, leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            async move {
                let response = tokio::select! {
                    response = inner.call(req) => response?,
                    () = abort_signal(aborted.clone()) => aborted_status().into_http::<Body>(),
                };
                Ok(MeteredBody::wrap(response, record, abort_signal(aborted)))
            }
            .instrument(span),
        )
    }
}

/// tonic answers a message over `max_decoding_message_size` / `max_encoding_message_size`
/// with OutOfRange; gRPC (grpc-go, which containerd and its clients use) says
/// ResourceExhausted. Rewrites exactly those statuses (by tonic's message) in `headers`.
fn size_limit_is_resource_exhausted(headers: &mut http::HeaderMap) {
    const TOO_LARGE: [&str; 2] = [
        "Error, decoded message length too large",
        "Error, encoded message length too large",
    ];
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return;
    };
    if status.code() != tonic::Code::OutOfRange || !TOO_LARGE.iter().any(|p| status.message().starts_with(p))
    {
        return;
    }
    headers.insert(
        "grpc-status",
        http::HeaderValue::from(tonic::Code::ResourceExhausted as i32),
    );
}

/// Records the RPC's code and duration once (trailers seen, or dropped).
struct Record {
    metrics: RpcMetrics,
    service: String,
    method: String,
    started: Instant,
    span: tracing::Span,
    done: bool,
}

impl Record {
    fn finish(&mut self, code: tonic::Code) {
        if self.done {
            return;
        }
        self.done = true;
        let elapsed = self.started.elapsed();
        let code_name = code_label(code);
        self.metrics
            .requests
            .with_label_values(&[self.service.as_str(), self.method.as_str(), code_name.as_str()])
            .inc();
        self.metrics
            .duration
            .with_label_values(&[self.service.as_str(), self.method.as_str()])
            .observe(elapsed.as_secs_f64());
        // The server-side error codes of OpenTelemetry's gRPC conventions; a NotFound or an
        // InvalidArgument is the caller's business, not a failed span.
        if matches!(
            code,
            tonic::Code::Unknown
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unimplemented
                | tonic::Code::Internal
                | tonic::Code::Unavailable
                | tonic::Code::DataLoss
        ) {
            crate::telemetry::set_error(&self.span, code_name.clone());
        }
        let _g = self.span.enter();
        tracing::debug!(code = %code_name, elapsed_us = elapsed.as_micros() as u64, "rpc done");
    }

    fn finish_from(&mut self, headers: &http::HeaderMap) -> bool {
        match headers.get("grpc-status") {
            Some(v) => {
                let code = v
                    .to_str()
                    .ok()
                    .and_then(|s| s.parse::<i32>().ok())
                    .map(tonic::Code::from_i32)
                    .unwrap_or(tonic::Code::Unknown);
                self.finish(code);
                true
            }
            None => false,
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}

/// A response body that reports the RPC's final code when its trailers pass by.
pub struct MeteredBody {
    inner: Body,
    record: Record,
    /// The server's abort signal; `None` for trailers-only responses and once fired.
    abort: Option<BoxFuture<()>>,
    /// Set once this body emitted the abort trailers: it is over.
    aborted: bool,
}

impl MeteredBody {
    fn wrap(
        mut response: http::Response<Body>,
        mut record: Record,
        abort: BoxFuture<()>,
    ) -> http::Response<MeteredBody> {
        // Trailers-only responses (errors) carry grpc-status in the headers.
        size_limit_is_resource_exhausted(response.headers_mut());
        let trailers_only = record.finish_from(response.headers());
        response.map(|inner| MeteredBody {
            inner,
            record,
            abort: (!trailers_only).then_some(abort),
            aborted: false,
        })
    }
}

impl HttpBody for MeteredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        if this.aborted {
            return Poll::Ready(None);
        }
        if let Some(abort) = this.abort.as_mut()
            && abort.as_mut().poll(cx).is_ready()
        {
            // End an open stream with a status instead of leaving it to hang.
            this.abort = None;
            this.aborted = true;
            let status = aborted_status();
            this.record.finish(status.code());
            let mut trailers = http::HeaderMap::new();
            return match status.add_header(&mut trailers) {
                Ok(()) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                Err(status) => Poll::Ready(Some(Err(status))),
            };
        }
        let mut polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &mut polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_mut() {
                    size_limit_is_resource_exhausted(trailers);
                    this.record.finish_from(trailers);
                }
            }
            Poll::Ready(Some(Err(status))) => this.record.finish(status.code()),
            Poll::Ready(None) => this.record.finish(tonic::Code::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.aborted || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// `Routes` is the service the layer wraps; keep the bound visible.
const _: fn() = || {
    fn assert_service<S: tower::Service<http::Request<Body>, Response = http::Response<Body>>>() {}
    assert_service::<Routes>();
};

#[cfg(test)]
mod tests {
    use super::*;
    use taskd_proto::containerd::services::version::v1::VersionResponse;
    use taskd_proto::containerd::services::version::v1::version_client::VersionClient;
    use taskd_proto::containerd::services::version::v1::version_server::{Version, VersionServer};

    /// A Version service that takes `delay` and echoes the namespace it saw.
    struct Slow {
        delay: Duration,
    }

    #[tonic::async_trait]
    impl Version for Slow {
        async fn version(
            &self,
            req: tonic::Request<()>,
        ) -> Result<tonic::Response<VersionResponse>, tonic::Status> {
            let ns = super::super::namespace::required(&req)?;
            tokio::time::sleep(self.delay).await;
            Ok(tonic::Response::new(VersionResponse {
                version: ns,
                revision: String::new(),
            }))
        }
    }

    struct SlowService(Duration);

    impl GrpcService for SlowService {
        fn register(&self, routes: &mut RoutesBuilder, _limits: GrpcLimits) {
            routes.add_service(VersionServer::new(Slow { delay: self.0 }));
        }
    }

    async fn start(
        delay: Duration,
    ) -> (
        tempfile::TempDir,
        GrpcServer,
        VersionClient<tonic::transport::Channel>,
        prometheus::Registry,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let (listener, _bound) = super::super::socket::bind(&path).unwrap();
        let registry = prometheus::Registry::new();
        let metrics = RpcMetrics::register(&registry).unwrap();
        let id = PluginId {
            r#type: crate::plugin::PluginType::Grpc,
            id: "slow",
        };
        let server = serve(
            listener,
            vec![(id, Arc::new(SlowService(delay)) as Arc<dyn GrpcService>)],
            GrpcLimits::default(),
            metrics,
        );
        let channel = tonic::transport::Endpoint::from_static("http://[::]:1")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        (dir, server, VersionClient::new(channel), registry)
    }

    fn with_ns(ns: &str) -> tonic::Request<()> {
        let mut req = tonic::Request::new(());
        req.metadata_mut().insert(HEADER, ns.parse().unwrap());
        req
    }

    #[tokio::test]
    async fn namespace_header_is_validated_before_the_service_and_metrics_count_codes() {
        let (_dir, server, mut client, registry) = start(Duration::ZERO).await;
        let ok = client.version(with_ns("k8s.io")).await.unwrap();
        assert_eq!(ok.get_ref().version, "k8s.io");
        let bad = client.version(with_ns("-bad")).await.unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        let missing = client.version(tonic::Request::new(())).await.unwrap_err();
        assert_eq!(missing.code(), tonic::Code::InvalidArgument);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        let line = |code: &str| {
            format!(
                "taskd_grpc_requests_total{{code=\"{code}\",method=\"Version\",service=\"containerd.services.version.v1.Version\"}}"
            )
        };
        assert!(text.contains(&format!("{} 1", line("OK"))), "{text}");
        assert!(text.contains(&format!("{} 2", line("InvalidArgument"))), "{text}");
        server.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn the_rpc_span_continues_the_callers_traceparent_and_is_the_server_span() {
        use opentelemetry::trace::{SpanKind, Status};
        let (subscriber, recorded, _provider) = crate::telemetry::testing::subscriber();
        let _g = tracing::subscriber::set_default(subscriber);
        let (_dir, server, mut client, _) = start(Duration::ZERO).await;
        let mut req = with_ns("k8s.io");
        req.metadata_mut().insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        client.version(req).await.unwrap();
        // A bad namespace is the caller's error: answered, not a failed span.
        client.version(with_ns("-bad")).await.unwrap_err();
        server.shutdown(Duration::from_secs(5)).await;
        let spans = recorded.named("containerd.services.version.v1.Version/Version");
        assert_eq!(spans.len(), 2, "{spans:?}");
        let traced = spans
            .iter()
            .find(|s| s.parent_span_is_remote)
            .expect("the traced call's span");
        assert_eq!(
            traced.span_context.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(traced.parent_span_id.to_string(), "b7ad6b7169203331");
        assert_eq!(traced.span_kind, SpanKind::Server);
        assert!(spans.iter().all(|s| s.status == Status::Unset), "{spans:?}");
    }

    #[tokio::test]
    async fn shutdown_lets_an_in_flight_rpc_finish_within_the_grace_period() {
        let (_dir, server, mut client, _) = start(Duration::from_millis(300)).await;
        let call = tokio::spawn(async move { client.version(with_ns("default")).await });
        // Wait until the RPC is in the handler, then stop.
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.shutdown(Duration::from_secs(30)).await;
        let answer = call.await.unwrap().expect("the in-flight RPC completes");
        assert_eq!(answer.get_ref().version, "default");
    }

    #[tokio::test]
    async fn shutdown_drops_rpcs_still_running_after_the_grace_period() {
        let (_dir, server, mut client, _) = start(Duration::from_secs(3600)).await;
        let call = tokio::spawn(async move { client.version(with_ns("default")).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.shutdown(Duration::from_millis(200)).await;
        let status = call.await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }

    struct Health<S>(tonic_health::pb::health_server::HealthServer<S>);

    impl<S: tonic_health::pb::health_server::Health> GrpcService for Health<S> {
        fn register(&self, routes: &mut RoutesBuilder, _limits: GrpcLimits) {
            routes.add_service(self.0.clone());
        }
    }

    #[tokio::test]
    async fn open_streams_end_with_unavailable_after_the_grace_period() {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sock");
        let (listener, _bound) = super::super::socket::bind(&path).unwrap();
        let registry = prometheus::Registry::new();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let id = PluginId {
            r#type: crate::plugin::PluginType::Grpc,
            id: "health",
        };
        let server = serve(
            listener,
            vec![(id, Arc::new(Health(health)) as Arc<dyn GrpcService>)],
            GrpcLimits::default(),
            RpcMetrics::register(&registry).unwrap(),
        );
        let channel = tonic::transport::Endpoint::from_static("http://[::]:1")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        let mut stream = HealthClient::new(channel)
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(stream.message().await.unwrap().is_some(), "first status");
        server.shutdown(Duration::from_millis(100)).await;
        let status = loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("stream ended without a status"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(text.contains("code=\"Unavailable\",method=\"Watch\""), "{text}");
    }

    #[test]
    fn code_labels_follow_grpc_go() {
        assert_eq!(code_label(tonic::Code::Ok), "OK");
        assert_eq!(code_label(tonic::Code::Cancelled), "Canceled");
        assert_eq!(code_label(tonic::Code::FailedPrecondition), "FailedPrecondition");
    }

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/containerd.services.version.v1.Version/Version"),
            ("containerd.services.version.v1.Version".into(), "Version".into())
        );
        assert_eq!(split_path("/x"), ("unknown".into(), "unknown".into()));
        assert_eq!(split_path("/a b/c"), ("unknown".into(), "unknown".into()));
    }
}

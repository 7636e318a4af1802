//! The gRPC server on the unix socket.
//!
//! Every plugin of type `io.containerd.grpc.v1` provides a [`GrpcService`]; [`serve`] adds
//! them all to one router behind [`RpcLayer`], which for every RPC:
//! - validates the `containerd-namespace` header when present (invalid → InvalidArgument
//!   before the service runs; services then call [`namespace::required`](super::namespace::required)),
//! - opens a tracing span `rpc{service, method, namespace}` around the handler,
//! - counts `taskd_grpc_requests_total{service,method,code}` and observes
//!   `taskd_grpc_request_duration_seconds{service,method}` when the response ends (its
//!   trailers carry the code; a response dropped before its trailers counts as Cancelled).
//!
//! Shutdown: [`GrpcServer::shutdown`] stops accepting, lets in-flight RPCs finish within the
//! grace period, then drops what is left (e.g. long-lived event streams).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::net::UnixListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::body::Body;
use tonic::service::{Routes, RoutesBuilder};
use tracing::Instrument;

use super::GrpcService;
use super::namespace::HEADER;
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
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Serves every [`GrpcService`] on `listener`.
pub fn serve(
    listener: UnixListener,
    services: Vec<(PluginId, Arc<dyn GrpcService>)>,
    metrics: RpcMetrics,
) -> GrpcServer {
    let mut routes = RoutesBuilder::default();
    for (id, service) in &services {
        tracing::debug!(plugin = %id, "adding gRPC service");
        service.register(&mut routes);
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let router = tonic::transport::Server::builder()
        .layer(RpcLayer { metrics })
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
        task,
    }
}

impl GrpcServer {
    /// Stops accepting, drains in-flight RPCs for at most `grace`, then drops the rest.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(grace, &mut self.task).await {
            Ok(Ok(Ok(()))) => tracing::debug!("gRPC server drained"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
            Err(_) => {
                tracing::warn!(
                    ?grace,
                    "gRPC RPCs still in flight after the grace period; dropping them"
                );
                self.task.abort();
                let _ = self.task.await;
            }
        }
    }

    /// Whether the server task ended on its own (an accept error).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
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

/// The tower layer described in the module docs.
#[derive(Clone)]
pub struct RpcLayer {
    metrics: RpcMetrics,
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: RpcMetrics,
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
            namespace = tracing::field::Empty
        );
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
            return Box::pin(async move { Ok(MeteredBody::wrap(response, record)) });
        }
        // Take the service that was driven to readiness, leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            async move {
                let response = inner.call(req).await?;
                Ok(MeteredBody::wrap(response, record))
            }
            .instrument(span),
        )
    }
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
        let code_name = format!("{code:?}");
        self.metrics
            .requests
            .with_label_values(&[self.service.as_str(), self.method.as_str(), code_name.as_str()])
            .inc();
        self.metrics
            .duration
            .with_label_values(&[self.service.as_str(), self.method.as_str()])
            .observe(elapsed.as_secs_f64());
        let _g = self.span.enter();
        tracing::debug!(code = %code_name, elapsed_ms = elapsed.as_millis() as u64, "rpc done");
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
}

impl MeteredBody {
    fn wrap(response: http::Response<Body>, mut record: Record) -> http::Response<MeteredBody> {
        // Trailers-only responses (errors) carry grpc-status in the headers.
        record.finish_from(response.headers());
        response.map(|inner| MeteredBody { inner, record })
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
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
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
        self.inner.is_end_stream()
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

//! The HTTP endpoint (`[metrics] address`, default `127.0.0.1:1338`):
//!
//! | path                    | answers                                                         |
//! |-------------------------|-----------------------------------------------------------------|
//! | `/metrics`, `/v1/metrics` | Prometheus text format of the daemon's registry (bearer token when configured) |
//! | `/healthz`              | 200 while the process runs                                        |
//! | `/readyz`               | 200 once plugins are initialized and the gRPC server serves, else 503 |
//!
//! Scrapes are bounded (server/scrape.rs): concurrent ones share a collection, too many
//! waiting or too slow get 503.
//!
//! With `bearer_token_file` set, the metrics paths need `Authorization: Bearer <token>`; the
//! health paths never do (kubelet-style probes).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::errdefs::{ErrorKind, Kind};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid metrics address {address:?}: {source}")]
    Address {
        address: String,
        source: std::net::AddrParseError,
    },
    #[error("bind metrics address {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("read bearer token file {path}: {source}")]
    Token { path: PathBuf, source: std::io::Error },
    #[error("bearer token file {path} is empty")]
    EmptyToken { path: PathBuf },
}

impl ErrorKind for HttpError {
    fn kind(&self) -> Kind {
        match self {
            HttpError::Address { .. } | HttpError::EmptyToken { .. } => Kind::InvalidArgument,
            HttpError::Bind { .. } | HttpError::Token { .. } => Kind::Unavailable,
        }
    }
}

/// Readiness flag shared by the daemon (set once plugins are up and gRPC serves).
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The metrics bearer token in force; replaced by a SIGHUP reload ([`Token::set`]).
#[derive(Clone, Default)]
pub struct Token(Arc<std::sync::RwLock<Option<Arc<str>>>>);

impl Token {
    pub fn new(token: Option<String>) -> Token {
        Token(Arc::new(std::sync::RwLock::new(token.map(Arc::from))))
    }

    pub fn set(&self, token: Option<String>) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = token.map(Arc::from);
    }

    pub fn get(&self) -> Option<Arc<str>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[derive(Clone)]
struct AppState {
    scrapes: Arc<super::scrape::Scrapes>,
    ready: Readiness,
    token: Token,
}

/// Reads a bearer token file (trimmed); an empty token is refused.
pub fn read_token(path: &Path) -> Result<String, HttpError> {
    let text = std::fs::read_to_string(path).map_err(|source| HttpError::Token {
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        return Err(HttpError::EmptyToken {
            path: path.to_owned(),
        });
    }
    Ok(token)
}

/// Binds the HTTP endpoint (done before plugins init so a busy port fails fast).
pub async fn bind(address: &str) -> Result<TcpListener, HttpError> {
    let addr: SocketAddr = address.parse().map_err(|source| HttpError::Address {
        address: address.to_owned(),
        source,
    })?;
    TcpListener::bind(addr).await.map_err(|source| HttpError::Bind {
        address: addr,
        source,
    })
}

/// A running HTTP endpoint.
pub struct HttpServer {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

/// Serves the endpoint on `listener`.
pub fn serve(
    listener: TcpListener,
    registry: prometheus::Registry,
    ready: Readiness,
    token: Token,
) -> HttpServer {
    if let Ok(addr) = listener.local_addr()
        && !addr.ip().is_loopback()
        && token.get().is_none()
    {
        tracing::warn!(%addr, "metrics endpoint listens on a non-loopback address without authentication; set [metrics] bearer_token_file");
    }
    let state = AppState {
        scrapes: Arc::new(super::scrape::Scrapes::new(registry)),
        ready,
        token,
    };
    let app = router(state);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    HttpServer {
        stop: Some(stop),
        task,
    }
}

impl HttpServer {
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            self.task.abort();
            let _ = self.task.await;
        }
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready.get() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

fn authorized(expected: &str, headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(given) = value.strip_prefix("Bearer ") else {
        return false;
    };
    // Constant-time comparison.
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = state.token.get()
        && !authorized(&token, &headers)
    {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "unauthorized\n",
        )
            .into_response();
    }
    // Collectors read cgroupfs and /proc synchronously: bounded collections on the blocking
    // pool, shared by concurrent scrapes (server/scrape.rs).
    match state.scrapes.text().await {
        Ok(text) => (
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            text.to_string(),
        )
            .into_response(),
        Err(e) => {
            use super::scrape::Refused;
            let (status, body) = match e {
                Refused::Busy => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many scrapes waiting\n".to_owned(),
                ),
                Refused::Timeout => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "metrics collection timed out\n".to_owned(),
                ),
                Refused::Failed(reason) => {
                    tracing::warn!(%reason, "metrics collection failed");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("metrics collection failed: {reason}\n"),
                    )
                }
            };
            (status, body).into_response()
        }
    }
}

/// Registers `taskd_build_info{version,revision}` and the process collector.
pub fn register_process_metrics(registry: &prometheus::Registry) -> Result<(), prometheus::Error> {
    let info = prometheus::IntGaugeVec::new(
        prometheus::Opts::new("taskd_build_info", "taskd build information; always 1"),
        &["version", "revision"],
    )?;
    info.with_label_values(&[crate::VERSION, crate::REVISION]).set(1);
    registry.register(Box::new(info))?;
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_must_match_exactly() {
        let mut h = HeaderMap::new();
        assert!(!authorized("s3cret", &h));
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(authorized("s3cret", &h));
        assert!(!authorized("s3cre", &h));
        h.insert(header::AUTHORIZATION, "Basic s3cret".parse().unwrap());
        assert!(!authorized("s3cret", &h));
    }

    #[test]
    fn build_info_and_process_metrics_register() {
        let r = prometheus::Registry::new();
        register_process_metrics(&r).unwrap();
        let names: Vec<_> = r.gather().iter().map(|f| f.name().to_owned()).collect();
        assert!(names.contains(&"taskd_build_info".to_owned()), "{names:?}");
        assert!(
            names.contains(&"process_resident_memory_bytes".to_owned()),
            "{names:?}"
        );
    }
}

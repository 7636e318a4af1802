//! The CRI streaming server: Exec, Attach and PortForward answer a URL of this server
//! (as containerd's CRI plugin does); kubelet, kubectl or crictl then connect to it and
//! speak kubelet's streaming protocols.
//!
//! ```text
//! RPC (server/container/exec.rs, attach.rs, server/sandbox/port_forward.rs)
//!   validate ─▶ Front::url: the request cached under a random single-use token (1 min)
//!   ─▶ http(s)://ADDR:PORT/{exec,attach,portforward}/<token>
//! client ─TCP(+TLS)─▶ accept loop (one task per connection, in a JoinSet)
//!   hyper HTTP/1.1: path + Upgrade header + protocol list checked, a session slot taken
//!   (stream_max_sessions; none left: 429), the token taken (unknown/used/expired: 404)
//!   ─▶ 101 ─▶ the upgraded connection runs the session in the same task
//!      SPDY/3.1   spdy.rs (frames) · spdy_conn.rs (streams) · spdy_session.rs
//!      WebSocket  ws.rs (tokio-tungstenite)
//!   bodies: exec.rs (exec process), attach.rs (main process), portforward.rs (pod netns)
//! every session ends when its client goes, after stream_idle_timeout without traffic,
//! or at shutdown (the plugin's hook: stop accepting, sessions clean up, ≤ 3 s, abort)
//! ```

pub mod attach;
pub mod conn;
pub mod dictionary;
pub mod exec;
pub mod portforward;
pub mod protocol;
pub mod spdy;
pub mod spdy_conn;
pub mod spdy_session;
pub mod tls;
pub mod token;
pub mod ws;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use self::exec::gone;
use self::protocol::{client_protocols, negotiate};
use self::token::{Pending, TokenStore};
use super::CriService;
use super::config::CriConfig;
use crate::errdefs::{ErrorKind, Kind};

/// How long a client may take to send its request headers (and, with TLS, its handshake).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long sessions get to clean up at shutdown before they are aborted.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Connections not yet upgraded, beyond the session cap.
const EXTRA_CONNECTIONS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error("stream_server_address {address:?} / stream_server_port {port:?}: {reason}")]
    Address {
        address: String,
        port: String,
        reason: String,
    },
    #[error("bind the streaming server on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("streaming TLS: {what}: {reason}")]
    Tls { what: String, reason: String },
    #[error("{0} streaming requests are waiting for their client; retry later")]
    TooManyPending(usize),
    #[error("the streaming server is not running on this daemon")]
    NotRunning,
}

impl ErrorKind for StreamingError {
    fn kind(&self) -> Kind {
        match self {
            StreamingError::Address { .. } => Kind::InvalidArgument,
            StreamingError::Bind { .. } | StreamingError::Tls { .. } => Kind::Internal,
            StreamingError::TooManyPending(_) => Kind::ResourceExhausted,
            StreamingError::NotRunning => Kind::Unavailable,
        }
    }
}

/// What the RPCs need: the token cache and the server's base URL.
pub struct Front {
    pub tokens: TokenStore,
    pub base_url: String,
}

impl Front {
    /// Caches `req` and returns the URL a client connects to.
    pub fn url(&self, req: Pending) -> Result<String, StreamingError> {
        let kind = req.kind();
        let token = self
            .tokens
            .insert(req)
            .ok_or(StreamingError::TooManyPending(token::MAX_PENDING))?;
        Ok(format!("{}/{kind}/{token}", self.base_url))
    }
}

/// What every session gets.
#[derive(Clone)]
pub struct Ctx {
    pub svc: Arc<CriService>,
    pub idle: Duration,
    /// Turns true at shutdown.
    pub shutdown: watch::Receiver<bool>,
}

/// The bound, not yet serving, server.
pub struct StreamServer {
    listener: TcpListener,
    tls: Option<tokio_native_tls::TlsAcceptor>,
    front: Arc<Front>,
    idle: Duration,
    max_sessions: usize,
}

/// The address from the config (`stream_server_port` "0" = a free port).
pub fn address(cfg: &CriConfig) -> Result<SocketAddr, StreamingError> {
    let bad = |reason: &str| StreamingError::Address {
        address: cfg.stream_server_address.clone(),
        port: cfg.stream_server_port.clone(),
        reason: reason.to_owned(),
    };
    let ip: IpAddr = cfg
        .stream_server_address
        .parse()
        .map_err(|_| bad("the address must be an IP address"))?;
    let port: u16 = cfg
        .stream_server_port
        .parse()
        .map_err(|_| bad("the port must be a number from 0 to 65535"))?;
    Ok(SocketAddr::new(ip, port))
}

impl StreamServer {
    /// Binds the listener (and loads or makes the TLS pair) from the plugin's config.
    pub fn bind(cfg: &CriConfig) -> Result<StreamServer, StreamingError> {
        let addr = address(cfg)?;
        let std_listener =
            std::net::TcpListener::bind(addr).map_err(|source| StreamingError::Bind { addr, source })?;
        let local = std_listener
            .local_addr()
            .map_err(|source| StreamingError::Bind { addr, source })?;
        std_listener
            .set_nonblocking(true)
            .map_err(|source| StreamingError::Bind { addr, source })?;
        let listener =
            TcpListener::from_std(std_listener).map_err(|source| StreamingError::Bind { addr, source })?;
        let tls = if cfg.enable_tls_streaming {
            Some(tls::acceptor(
                &cfg.x509_key_pair_streaming.tls_cert_file,
                &cfg.x509_key_pair_streaming.tls_key_file,
                local.ip(),
            )?)
        } else {
            None
        };
        // An unspecified address listens everywhere; the URL then names loopback.
        let url_ip = match local.ip() {
            IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        Ok(StreamServer {
            listener,
            tls,
            front: Arc::new(Front {
                tokens: TokenStore::default(),
                base_url: format!("{scheme}://{}", SocketAddr::new(url_ip, local.port())),
            }),
            idle: cfg.stream_idle_timeout.0,
            max_sessions: cfg.stream_max_sessions,
        })
    }

    pub fn front(&self) -> Arc<Front> {
        self.front.clone()
    }

    /// Serves until [`Running::stop`].
    pub fn start(self, svc: Arc<CriService>) -> Running {
        let (stop, shutdown) = watch::channel(false);
        tracing::info!(url = %self.front.base_url, tls = self.tls.is_some(), "CRI streaming server listening");
        let shared = Arc::new(Shared {
            front: self.front,
            ctx: Ctx {
                svc,
                idle: self.idle,
                shutdown,
            },
            sessions: Arc::new(Semaphore::new(self.max_sessions)),
            max_sessions: self.max_sessions,
        });
        let task = tokio::spawn(accept_loop(self.listener, self.tls, shared));
        Running { stop, task }
    }
}

/// The serving server; [`Running::stop`] is the plugin's shutdown hook.
pub struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets sessions end (their exec processes killed and removed) for
    /// up to [`SHUTDOWN_GRACE`], then aborts what is left.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

struct Shared {
    front: Arc<Front>,
    ctx: Ctx,
    sessions: Arc<Semaphore>,
    max_sessions: usize,
}

async fn accept_loop(listener: TcpListener, tls: Option<tokio_native_tls::TlsAcceptor>, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    let mut stop = shared.ctx.shutdown.clone();
    let max_conns = shared.max_sessions + EXTRA_CONNECTIONS;
    loop {
        tokio::select! {
            a = listener.accept() => match a {
                Ok((tcp, peer)) => {
                    if conns.len() >= max_conns {
                        tracing::warn!(%peer, limit = max_conns, "streaming connection refused: too many connections");
                        continue;
                    }
                    let _ = tcp.set_nodelay(true);
                    let tls = tls.clone();
                    let shared = shared.clone();
                    conns.spawn(async move {
                        match tls {
                            None => serve_http(tcp, shared).await,
                            Some(acceptor) => match tokio::time::timeout(REQUEST_TIMEOUT, acceptor.accept(tcp)).await {
                                Ok(Ok(s)) => serve_http(s, shared).await,
                                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "streaming TLS handshake failed"),
                                Err(_) => tracing::debug!(%peer, "streaming TLS handshake timed out"),
                            },
                        }
                    });
                }
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "streaming server accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = gone(&mut stop) => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

type Slot = Arc<Mutex<Option<BoxFuture<'static, ()>>>>;

/// One HTTP/1.1 connection: at most one request, which either fails or upgrades; the
/// session then runs here, in the connection's own task.
async fn serve_http<I>(io: I, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slot: Slot = Arc::default();
    let service = {
        let (shared, slot) = (shared.clone(), slot.clone());
        hyper::service::service_fn(move |req| {
            let resp = handle(req, &shared, &slot);
            async move { Ok::<_, Infallible>(resp) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut stop = shared.ctx.shutdown.clone();
    tokio::select! {
        r = conn => if let Err(e) = r {
            tracing::debug!(error = %e, "streaming HTTP connection");
        },
        _ = gone(&mut stop) => return,
    }
    let session = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(session) = session {
        session.await;
    }
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(msg.into() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn header_values<'a>(h: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    h.get_all(name).iter().filter_map(|v| v.to_str().ok())
}

/// Which upgrade a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Spdy,
    WebSocket,
}

fn transport(h: &HeaderMap) -> Option<Transport> {
    let upgrade = header_values(h, "upgrade").next()?.trim();
    let connection_upgrade = header_values(h, "connection")
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_upgrade {
        return None;
    }
    if upgrade.eq_ignore_ascii_case("websocket") {
        Some(Transport::WebSocket)
    } else if upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        Some(Transport::Spdy)
    } else {
        None
    }
}

/// Ports of a WebSocket port-forward: `port=P` query parameters (else the RPC's list).
fn query_ports(query: Option<&str>, fallback: &[u16]) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (k, v) in query.unwrap_or("").split('&').filter_map(|kv| kv.split_once('=')) {
        if k == "port" {
            match v.parse::<u16>() {
                Ok(p) if p > 0 => ports.push(p),
                _ => return Err(format!("invalid port {v:?}")),
            }
        }
    }
    if ports.is_empty() {
        ports = fallback.to_vec();
    }
    if ports.is_empty() {
        return Err("no port to forward (query parameter port=P)".into());
    }
    if ports.len() > ws::MAX_PORTS {
        return Err(format!("{} ports (limit {})", ports.len(), ws::MAX_PORTS));
    }
    Ok(ports)
}

fn handle(mut req: Request<Incoming>, shared: &Arc<Shared>, slot: &Slot) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let Some((kind, token)) = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .filter(|(k, t)| {
            matches!(*k, "exec" | "attach" | "portforward") && !t.is_empty() && !t.contains('/')
        })
    else {
        return text(StatusCode::NOT_FOUND, format!("no such path {path:?}"));
    };
    if !matches!(*req.method(), http::Method::GET | http::Method::POST) {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST with an upgrade");
    }
    let h = req.headers();
    let Some(transport) = transport(h) else {
        return text(
            StatusCode::BAD_REQUEST,
            "this endpoint needs an upgrade: Connection: Upgrade with Upgrade: SPDY/3.1 or websocket",
        );
    };
    let port_forward = kind == "portforward";
    let (header_name, offered) = match (transport, port_forward) {
        (Transport::Spdy, false) => ("x-stream-protocol-version", protocol::SPDY_REMOTECOMMAND),
        (Transport::Spdy, true) => ("x-stream-protocol-version", protocol::SPDY_PORT_FORWARD),
        (Transport::WebSocket, false) => ("sec-websocket-protocol", protocol::WS_REMOTECOMMAND),
        (Transport::WebSocket, true) => ("sec-websocket-protocol", protocol::WS_PORT_FORWARD),
    };
    let client = client_protocols(header_values(h, header_name));
    let chosen = match negotiate(&client, offered) {
        Some(p) => p,
        // A SPDY client that names no protocol speaks the oldest one (as kubelet assumes).
        None if client.is_empty() && transport == Transport::Spdy => offered[offered.len() - 1],
        None => {
            return text(
                StatusCode::FORBIDDEN,
                format!(
                    "unable to upgrade: unable to negotiate protocol: client supports {client:?}, server accepts {offered:?}"
                ),
            );
        }
    };
    let ws_key = if transport == Transport::WebSocket {
        let version_ok = header_values(h, "sec-websocket-version").any(|v| v.trim() == "13");
        match header_values(h, "sec-websocket-key").next() {
            Some(k) if version_ok => Some(k.trim().to_owned()),
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "a WebSocket upgrade needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13",
                );
            }
        }
    } else {
        None
    };
    let Ok(permit) = shared.sessions.clone().try_acquire_owned() else {
        return text(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many streaming sessions (stream_max_sessions = {}); retry later",
                shared.max_sessions
            ),
        );
    };
    let Some(pending) = shared.front.tokens.take(kind, token) else {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "unknown, already used or expired {kind} token {token:?} (tokens are single-use and expire after 1 minute)"
            ),
        );
    };
    let ws_ports = match (&pending, transport) {
        (Pending::PortForward { ports, .. }, Transport::WebSocket) => {
            match query_ports(req.uri().query(), ports) {
                Ok(p) => p,
                Err(e) => return text(StatusCode::BAD_REQUEST, e),
            }
        }
        _ => Vec::new(),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let ctx = shared.ctx.clone();
    let session: BoxFuture<'static, ()> = Box::pin(async move {
        let _permit = permit;
        let upgraded = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::debug!(error = %e, "streaming upgrade failed");
                return;
            }
        };
        match (pending, transport) {
            (Pending::Exec(r), Transport::Spdy) => {
                spdy_session::remotecommand(upgraded, ctx, r, false, chosen).await
            }
            (Pending::Attach(r), Transport::Spdy) => {
                spdy_session::remotecommand(upgraded, ctx, r, true, chosen).await
            }
            (Pending::PortForward { sandbox_id, .. }, Transport::Spdy) => {
                spdy_session::port_forward(upgraded, ctx, sandbox_id).await
            }
            (Pending::Exec(r), Transport::WebSocket) => {
                ws::remotecommand(upgraded, ctx, r, false, chosen).await
            }
            (Pending::Attach(r), Transport::WebSocket) => {
                ws::remotecommand(upgraded, ctx, r, true, chosen).await
            }
            (Pending::PortForward { sandbox_id, .. }, Transport::WebSocket) => {
                ws::port_forward(upgraded, ctx, sandbox_id, ws_ports).await
            }
        }
    });
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(session);
    let mut r = text(StatusCode::SWITCHING_PROTOCOLS, "");
    *r.body_mut() = Full::new(Bytes::new());
    let hm = r.headers_mut();
    hm.remove(header::CONTENT_TYPE);
    hm.insert(header::CONNECTION, header::HeaderValue::from_static("Upgrade"));
    match ws_key {
        Some(key) => {
            hm.insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            if let Ok(v) = header::HeaderValue::from_str(&accept) {
                hm.insert(header::SEC_WEBSOCKET_ACCEPT, v);
            }
            hm.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                header::HeaderValue::from_static(chosen),
            );
        }
        None => {
            hm.insert(header::UPGRADE, header::HeaderValue::from_static("SPDY/3.1"));
            hm.insert(
                "x-stream-protocol-version",
                header::HeaderValue::from_static(chosen),
            );
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                header::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_upgrade_kind_is_read_from_the_headers() {
        assert_eq!(
            transport(&headers(&[("connection", "Upgrade"), ("upgrade", "SPDY/3.1")])),
            Some(Transport::Spdy)
        );
        assert_eq!(
            transport(&headers(&[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "websocket")
            ])),
            Some(Transport::WebSocket)
        );
        assert_eq!(
            transport(&headers(&[("upgrade", "websocket")])),
            None,
            "no Connection: upgrade"
        );
        assert_eq!(
            transport(&headers(&[("connection", "upgrade"), ("upgrade", "h2c")])),
            None
        );
    }

    #[test]
    fn websocket_ports_come_from_the_query() {
        assert_eq!(query_ports(Some("port=80&port=8080"), &[1]), Ok(vec![80, 8080]));
        assert_eq!(query_ports(None, &[7]), Ok(vec![7]));
        assert!(query_ports(Some("port=0"), &[]).is_err());
        assert!(query_ports(Some("port=x"), &[]).is_err());
        assert!(query_ports(None, &[]).is_err());
        let many: String = (1..=65).map(|p| format!("port={p}&")).collect();
        assert!(query_ports(Some(&many), &[]).is_err());
    }

    #[test]
    fn the_config_address_is_checked() {
        let mut c = CriConfig::default();
        assert_eq!(address(&c).unwrap(), "127.0.0.1:0".parse().unwrap());
        c.stream_server_port = "http".into();
        assert!(
            address(&c)
                .unwrap_err()
                .to_string()
                .contains("stream_server_port")
        );
        c.stream_server_port = "10010".into();
        c.stream_server_address = "localhost".into();
        assert!(address(&c).is_err());
    }
}

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
use super::config::CriConfig;
use crate::cri::service::CriService;
use crate::cri::stream_front::{Front, StreamingError};
use crate::cri::stream_tokens::{Pending, TokenStore};

/// How long a client may take to send its request headers (and, with TLS, its handshake).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long sessions get to clean up at shutdown before they are aborted.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Connections not yet upgraded, beyond the session cap.
const EXTRA_CONNECTIONS: usize = 64;

/// What every session gets.
#[derive(Clone)]
pub struct Ctx {
    pub svc: Arc<CriService>,
    pub idle: Duration,
    /// Turns true at shutdown.
    pub shutdown: watch::Receiver<bool>,
}

/// Runs `client` (the transport reading what the client sends) until it ends, the session
/// had no traffic for the idle timeout, or the server stops; then tells the session body
/// why through `tx`. Never returns (the body decides when the session is over).
pub async fn watch_session(
    client: impl std::future::Future<Output = ()>,
    activity: &conn::Activity,
    ctx: &Ctx,
    tx: watch::Sender<Option<&'static str>>,
) {
    let mut shutdown = ctx.shutdown.clone();
    let why = tokio::select! {
        () = client => exec::CLIENT_GONE,
        () = activity.idle(ctx.idle) => {
            tracing::info!(idle = ?ctx.idle, "streaming session idle: closing it");
            exec::IDLE
        }
        () = gone(&mut shutdown) => exec::SHUTDOWN,
    };
    let _ = tx.send(Some(why));
    futures::future::pending::<()>().await;
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
    cfg.stream_address().map_err(|reason| StreamingError::Address {
        address: cfg.stream_server_address.clone(),
        port: cfg.stream_server_port.clone(),
        reason: reason.to_owned(),
    })
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
            () = gone(&mut stop) => break,
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
        () = gone(&mut stop) => return,
    }
    let session = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
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
                spdy_session::remotecommand(upgraded, ctx, r, false, chosen).await;
            }
            (Pending::Attach(r), Transport::Spdy) => {
                spdy_session::remotecommand(upgraded, ctx, r, true, chosen).await;
            }
            (Pending::PortForward { sandbox_id, .. }, Transport::Spdy) => {
                spdy_session::port_forward(upgraded, ctx, sandbox_id).await;
            }
            (Pending::Exec(r), Transport::WebSocket) => {
                ws::remotecommand(upgraded, ctx, r, false, chosen).await;
            }
            (Pending::Attach(r), Transport::WebSocket) => {
                ws::remotecommand(upgraded, ctx, r, true, chosen).await;
            }
            (Pending::PortForward { sandbox_id, .. }, Transport::WebSocket) => {
                ws::port_forward(upgraded, ctx, sandbox_id, ws_ports).await;
            }
        }
    });
    *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(session);
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

    /// A raw HTTP/1.1 request; returns the status, the head and the connection.
    async fn request(
        addr: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String, tokio::net::TcpStream) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut req = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\n");
        for (k, v) in headers {
            req += &format!("{k}: {v}\r\n");
        }
        req += "\r\n";
        c.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(
                c.read(&mut b).await.unwrap(),
                1,
                "head cut: {:?}",
                String::from_utf8_lossy(&head)
            );
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let status = head[9..12].parse().unwrap();
        if status != 101 {
            let mut body = String::new();
            c.read_to_string(&mut body).await.unwrap();
            return (status, head + &body, c);
        }
        (status, head, c)
    }

    /// As [`request`], retried while the session slot of a previous test step is still
    /// taken (429).
    async fn request_slot(
        addr: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String, tokio::net::TcpStream) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = request(addr, path, headers).await;
            if r.0 != 429 || std::time::Instant::now() > deadline {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    const SPDY_V4: [(&str, &str); 3] = [
        ("Connection", "Upgrade"),
        ("Upgrade", "SPDY/3.1"),
        ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
    ];

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_server_checks_path_upgrade_protocol_token_and_the_session_cap() {
        use bytes::BytesMut;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        use super::spdy::{Decoder, Encoder, Frame};
        use crate::cri::stream_tokens::ExecRequest;

        let dir = tempfile::tempdir().unwrap();
        let svc = Arc::new(crate::cri::service::testing::service(dir.path()));
        let cfg = CriConfig {
            stream_max_sessions: 1,
            ..CriConfig::default()
        };
        let server = StreamServer::bind(&cfg).unwrap();
        let front = server.front();
        let running = server.start(svc);
        let addr = front.base_url.trim_start_matches("http://").to_owned();
        let exec = || {
            Pending::Exec(ExecRequest {
                container_id: "c1".into(),
                cmd: vec!["true".into()],
                stdout: true,
                ..Default::default()
            })
        };
        let path = |url: String| url.trim_start_matches(&front.base_url).to_owned();

        assert_eq!(request(&addr, "/nope/x", &SPDY_V4).await.0, 404);
        let (status, text, _) = request(&addr, "/exec/0123", &SPDY_V4).await;
        assert_eq!(status, 404);
        assert!(text.contains("unknown, already used or expired"), "{text}");
        let p = path(front.url(exec()).unwrap());
        assert_eq!(request(&addr, &p, &[]).await.0, 400, "no upgrade");
        let (status, text, _) = request(&addr, &p, &SPDY_V4[..2]).await;
        assert_eq!(status, 101, "no protocol list: the oldest; {text}");
        assert!(text.contains("channel.k8s.io"), "{text}");
        assert_eq!(request_slot(&addr, &p, &SPDY_V4).await.0, 404, "used");
        let p = path(front.url(exec()).unwrap());
        let mut v9 = SPDY_V4;
        v9[2].1 = "v9.channel.k8s.io";
        assert_eq!(request_slot(&addr, &p, &v9).await.0, 403);

        // The token survived the 403: a v4 session whose exec fails (no runtime here) reports
        // a Failure Status on the error stream, then FIN and GOAWAY.
        let (status, head, mut c) = request_slot(&addr, &p, &SPDY_V4).await;
        assert_eq!(status, 101, "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("x-stream-protocol-version: v4.channel.k8s.io"),
            "{head}"
        );
        let mut enc = Encoder::default();
        let mut out = BytesMut::new();
        for (id, kind) in [(1, "error"), (3, "stdout")] {
            enc.encode(
                &Frame::SynStream {
                    stream_id: id,
                    associated: 0,
                    priority: 0,
                    flags: 0,
                    headers: vec![("streamtype".into(), kind.into())],
                },
                &mut out,
            )
            .unwrap();
        }
        c.write_all(&out).await.unwrap();
        let mut dec = Decoder::default();
        let mut buf = BytesMut::new();
        let (mut error, mut fins, mut goaway) = (Vec::new(), Vec::new(), false);
        while !goaway {
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                match f {
                    Frame::Data {
                        stream_id: 1,
                        data,
                        fin,
                    } => {
                        error.extend_from_slice(&data);
                        if fin {
                            fins.push(1);
                        }
                    }
                    Frame::Data {
                        stream_id, fin: true, ..
                    } => fins.push(stream_id),
                    Frame::GoAway { .. } => goaway = true,
                    _ => {}
                }
            }
            if !goaway {
                assert!(
                    c.read_buf(&mut buf).await.unwrap() > 0,
                    "connection closed before GOAWAY"
                );
            }
        }
        let status: serde_json::Value = serde_json::from_slice(&error).unwrap();
        assert_eq!(status["status"], "Failure", "{status}");
        assert!(status["message"].as_str().unwrap().contains("Exec"), "{status}");
        fins.sort();
        assert_eq!(fins, [1, 3]);

        // One session at most: a port-forward session stays open, the next client gets 429
        // and keeps its token; once the first is gone, the token works.
        let pf = || Pending::PortForward {
            sandbox_id: "p1".into(),
            ports: vec![80],
        };
        let mut pf_hdrs = SPDY_V4;
        pf_hdrs[2].1 = "portforward.k8s.io";
        let first = path(front.url(pf()).unwrap());
        let (status, _, open) = request_slot(&addr, &first, &pf_hdrs).await;
        assert_eq!(status, 101);
        let second = path(front.url(pf()).unwrap());
        let (status, text, _) = request(&addr, &second, &pf_hdrs).await;
        assert_eq!(status, 429, "{text}");
        drop(open);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (status, _, c) = request(&addr, &second, &pf_hdrs).await;
            if status == 101 {
                // Stop with a session open: it ends, the server stops in time.
                let t = std::time::Instant::now();
                running.stop().await;
                assert!(t.elapsed() < SHUTDOWN_GRACE + Duration::from_secs(2));
                drop(c);
                break;
            }
            assert_eq!(status, 429);
            assert!(
                std::time::Instant::now() < deadline,
                "the first session's slot never came back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            tokio::net::TcpStream::connect(&addr).await.is_err(),
            "still listening after stop"
        );
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

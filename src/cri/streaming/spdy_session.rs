//! Sessions over SPDY/3.1: remotecommand (exec, attach) and port-forward.
//!
//! ```text
//! remotecommand: wait ≤ STREAM_WAIT for the streams the cached options need
//!   (error always; stdin/stdout if asked; stderr if asked without tty; resize with tty
//!   from v3 on), keyed by the `streamtype` header; an unknown type is reset; a type opened
//!   twice fails the session ─▶ body (exec or attach) while the connection keeps being read
//!   (later streams are refused) ─▶ the outcome on the error stream (v4: Status JSON;
//!   older: the error text) ─▶ FIN on every stream ─▶ GOAWAY, close
//! portforward: streams come in pairs (`streamtype` error + data, same `requestid`, a
//!   `port` header); each complete pair is forwarded while others come and go
//! the session ends when the client goes away, at the idle timeout or at shutdown
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};

use super::Ctx;
use super::conn::{Activity, OUT_QUEUE, Out};
use super::exec::{SessionIo, gone};
use super::portforward;
use super::protocol::{self, Outcome};
use super::spdy::{RST_PROTOCOL_ERROR, RST_REFUSED_STREAM, RST_STREAM_IN_USE};
use super::spdy_conn::{SpdyConn, Stream, write_loop};
use crate::cri::stream_tokens::ExecRequest;

/// How long the client may take to open the streams a session needs (kubelet's default
/// stream creation timeout).
pub const STREAM_WAIT: Duration = Duration::from_secs(30);
/// Port-forward pairs waiting for their other half, and forwards running, per connection.
const MAX_PENDING_PAIRS: usize = 256;
const MAX_FORWARDS: usize = 256;

/// Runs one upgraded SPDY connection: the writer and the session side by side.
async fn run<IO, F, Fut>(io: IO, session: F)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
    F: FnOnce(SpdyConn<tokio::io::ReadHalf<IO>>, Activity) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (r, w) = tokio::io::split(io);
    let (tx, rx) = mpsc::channel(OUT_QUEUE);
    let activity = Activity::default();
    let last = Arc::new(AtomicU32::new(0));
    let writer = write_loop(w, rx, activity.clone(), last.clone());
    let conn = SpdyConn::new(r, tx, activity.clone(), last);
    let (written, ()) = tokio::join!(writer, session(conn, activity));
    if let Err(e) = written {
        tracing::debug!(error = %e, "streaming connection write ended");
    }
}

fn stream_type(s: &Stream) -> Option<&'static str> {
    match s.header("streamtype")? {
        "error" => Some("error"),
        "stdin" => Some("stdin"),
        "stdout" => Some("stdout"),
        "stderr" => Some("stderr"),
        "resize" => Some("resize"),
        "data" => Some("data"),
        _ => None,
    }
}

/// Reads the connection (refusing new streams) until the client goes, the session is idle
/// or the server stops; then tells the body through `gone_tx`. Never returns.
async fn pump<R: AsyncRead + Unpin>(
    conn: &mut SpdyConn<R>,
    activity: &Activity,
    ctx: &Ctx,
    gone_tx: watch::Sender<Option<&'static str>>,
) {
    let client = async {
        while let Ok(Some(s)) = conn.next_stream().await {
            let _ = conn.out().send(Out::Reset(s.id, RST_REFUSED_STREAM)).await;
        }
    };
    super::watch_session(client, activity, ctx, gone_tx).await;
}

/// Exec or attach over SPDY with a negotiated remotecommand `protocol`.
pub async fn remotecommand<IO>(io: IO, ctx: Ctx, req: ExecRequest, attach: bool, protocol: &'static str)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let version = protocol::version(protocol);
    run(io, move |mut conn, activity| async move {
        let needed = |t: &str| match t {
            "error" => true,
            "stdin" => req.stdin,
            "stdout" => req.stdout,
            "stderr" => req.stderr && !req.tty,
            "resize" => req.tty && version >= 3,
            _ => false,
        };
        let all = ["error", "stdin", "stdout", "stderr", "resize"];
        let mut got: HashMap<&'static str, Stream> = HashMap::new();
        let deadline = tokio::time::Instant::now() + STREAM_WAIT;
        let mut shutdown = ctx.shutdown.clone();
        let mut failure = None;
        while all.iter().any(|t| needed(t) && !got.contains_key(t)) {
            let s = tokio::select! {
                r = conn.next_stream() => match r {
                    Ok(Some(s)) => s,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::info!(error = %e, "streaming connection ended");
                        return;
                    }
                },
                () = tokio::time::sleep_until(deadline) => {
                    let missing: Vec<&str> = all.iter().copied().filter(|t| needed(t) && !got.contains_key(t)).collect();
                    failure = Some(format!("timed out after {STREAM_WAIT:?} waiting for the client's streams: {}", missing.join(", ")));
                    break;
                }
                () = gone(&mut shutdown) => return,
            };
            match stream_type(&s) {
                Some(t) if t != "data" && got.contains_key(t) => {
                    let _ = conn.out().send(Out::Reset(s.id, RST_STREAM_IN_USE)).await;
                    failure = Some(format!("stream {t} opened twice"));
                    break;
                }
                Some(t) if t != "data" => {
                    got.insert(t, s);
                }
                _ => {
                    let _ = conn.out().send(Out::Reset(s.id, RST_PROTOCOL_ERROR)).await;
                }
            }
        }
        let error = got.remove("error");
        let stdout = got.get("stdout").map(|s| s.sink.clone());
        let stderr = got.get("stderr").map(|s| s.sink.clone());
        let outcome = match failure {
            Some(f) => Outcome::Failed(f),
            None => {
                let io = SessionIo {
                    stdin: got.remove("stdin").map(|s| s.rx),
                    stdout: stdout.clone(),
                    stderr: stderr.clone(),
                    resize: got.remove("resize").map(|s| s.rx),
                };
                let (gone_tx, gone_rx) = watch::channel(None);
                let body = async {
                    if attach {
                        super::attach::attach(&ctx.svc, &req, io, gone_rx).await
                    } else {
                        super::exec::exec(&ctx.svc, &req, io, gone_rx).await
                    }
                };
                tokio::select! {
                    o = body => o,
                    () = pump(&mut conn, &activity, &ctx, gone_tx) => unreachable!("pump never returns"),
                }
            }
        };
        if let Some(e) = &error {
            if let Some(bytes) = outcome.error_stream(version) {
                e.sink.send(&bytes).await;
            }
            e.sink.close().await;
        }
        for s in stdout.iter().chain(stderr.iter()) {
            s.close().await;
        }
        drop(got);
        drop(conn);
    })
    .await;
}

/// One port-forward pair as it arrives.
#[derive(Default)]
struct Pair {
    error: Option<Stream>,
    data: Option<Stream>,
}

/// Port-forward over SPDY to the pod `sandbox_id`.
pub async fn port_forward<IO>(io: IO, ctx: Ctx, sandbox_id: String)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    run(io, move |mut conn, activity| async move {
        let mut pairs: HashMap<String, Pair> = HashMap::new();
        let mut forwards = FuturesUnordered::new();
        let mut shutdown = ctx.shutdown.clone();
        loop {
            tokio::select! {
                r = conn.next_stream() => {
                    let s = match r {
                        Ok(Some(s)) => s,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::info!(error = %e, "port-forward connection ended");
                            break;
                        }
                    };
                    let id = s.header("requestid").unwrap_or("").to_owned();
                    let kind = stream_type(&s);
                    if !matches!(kind, Some("error" | "data")) || (!pairs.contains_key(&id) && pairs.len() >= MAX_PENDING_PAIRS) {
                        let _ = conn.out().send(Out::Reset(s.id, RST_PROTOCOL_ERROR)).await;
                        continue;
                    }
                    let pair = pairs.entry(id.clone()).or_default();
                    let slot = if kind == Some("error") { &mut pair.error } else { &mut pair.data };
                    if slot.is_some() {
                        let _ = conn.out().send(Out::Reset(s.id, RST_STREAM_IN_USE)).await;
                        continue;
                    }
                    *slot = Some(s);
                    let complete = pairs.get(&id).is_some_and(|p| p.error.is_some() && p.data.is_some());
                    if let Some(Pair { error: Some(e), data: Some(d) }) = complete.then(|| pairs.remove(&id)).flatten() {
                        if forwards.len() >= MAX_FORWARDS {
                            e.sink.send(format!("too many forwards on this connection (limit {MAX_FORWARDS})").as_bytes()).await;
                            e.sink.close().await;
                            d.sink.close().await;
                            continue;
                        }
                        forwards.push(forward_pair(&ctx, sandbox_id.clone(), e, d));
                    }
                }
                Some(()) = forwards.next(), if !forwards.is_empty() => {}
                () = activity.idle(ctx.idle) => {
                    tracing::info!(idle = ?ctx.idle, "port-forward session idle: closing it");
                    break;
                }
                () = gone(&mut shutdown) => break,
            }
        }
        drop(forwards);
        drop(pairs);
        drop(conn);
    })
    .await;
}

async fn forward_pair(ctx: &Ctx, sandbox_id: String, error: Stream, data: Stream) {
    let port = data
        .header("port")
        .or_else(|| error.header("port"))
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p > 0);
    let result = match port {
        None => Err(format!(
            "invalid or missing port header {:?}",
            data.header("port").unwrap_or("")
        )),
        Some(port) => match portforward::target(&ctx.svc, &sandbox_id) {
            Err(e) => Err(e),
            Ok(t) => match portforward::connect(&t, port).await {
                Err(e) => Err(e),
                Ok(tcp) => match portforward::pipe(tcp, data.rx, &data.sink).await {
                    Some(e) => Err(e),
                    None => Ok(()),
                },
            },
        },
    };
    if let Err(e) = result {
        tracing::debug!(sandbox = %sandbox_id, error = %e, "port-forward");
        error.sink.send(e.as_bytes()).await;
    }
    data.sink.close().await;
    error.sink.close().await;
}

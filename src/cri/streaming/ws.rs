//! Sessions over WebSocket (tokio-tungstenite): binary messages whose first byte is the
//! channel.
//!
//! ```text
//! remotecommand (v5.channel.k8s.io, v4.channel.k8s.io)
//!   0 stdin ─▶   1 stdout ◀─   2 stderr ◀─   3 error ◀─ (Status JSON)   4 resize ─▶ (JSON)
//!   v5: [255, 0] = the client closed stdin (the process reads EOF)
//!   end: the Status on channel 3, then a normal close
//! portforward (portforward.k8s.io, v4.channel.k8s.io), ports from the query (`port=P`…)
//!   port i: channel 2i data, 2i+1 error; the server's first message on each is the port
//!   (u16 little-endian); one connection to the pod per port; the session ends when every
//!   port's forward ended, or with the client
//! ```

use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use super::Ctx;
use super::conn::{Activity, IN_QUEUE, OUT_QUEUE, Out, Sink};
use super::exec::{SessionIo, gone};
use super::portforward;
use super::protocol::{self, Outcome};
use crate::cri::stream_tokens::ExecRequest;

/// Largest message accepted from a client.
const MAX_MESSAGE: usize = 1 << 20;
/// Ports one port-forward session may name (two channels each, channel numbers are bytes).
pub const MAX_PORTS: usize = 64;

const STDIN: u8 = 0;
const STDOUT: u32 = 1;
const STDERR: u32 = 2;
const ERROR: u32 = 3;
const RESIZE: u8 = 4;
const CLOSE_SIGNAL: u8 = 255;

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// Runs one upgraded WebSocket connection: a writer turning [`Out::Data`] into binary
/// messages (channel byte first) and the session, side by side. The session gets the
/// incoming messages.
async fn run<IO, F, Fut>(io: IO, session: F)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnOnce(futures::stream::SplitStream<WebSocketStream<IO>>, mpsc::Sender<Out>, Activity) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config())).await;
    let (mut wtx, wrx) = ws.split();
    let (tx, mut rx) = mpsc::channel(OUT_QUEUE);
    let activity = Activity::default();
    let writer = {
        let activity = activity.clone();
        async move {
            while let Some(m) = rx.recv().await {
                let Out::Data(ch, b) = m else { continue };
                let mut v = Vec::with_capacity(b.len() + 1);
                v.push(ch as u8);
                v.extend_from_slice(&b);
                if wtx.send(Message::Binary(v.into())).await.is_err() {
                    return;
                }
                activity.touch();
            }
            let _ = wtx
                .send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                })))
                .await;
            let _ = tokio::time::timeout(Duration::from_secs(5), wtx.close()).await;
        }
    };
    tokio::join!(writer, session(wrx, tx, activity));
}

/// Exec or attach over WebSocket with a negotiated `protocol` (v5 or v4).
pub async fn remotecommand<IO>(io: IO, ctx: Ctx, req: ExecRequest, attach: bool, protocol: &'static str)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let version = protocol::version(protocol);
    run(io, move |mut wrx, tx, activity| async move {
        let (stdin_tx, stdin_rx) = if req.stdin {
            let (t, r) = mpsc::channel(IN_QUEUE);
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        let (resize_tx, resize_rx) = if req.tty {
            let (t, r) = mpsc::channel(IN_QUEUE);
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        let io = SessionIo {
            stdin: stdin_rx,
            stdout: req.stdout.then(|| Sink::new(STDOUT, tx.clone())),
            stderr: (req.stderr && !req.tty).then(|| Sink::new(STDERR, tx.clone())),
            resize: resize_rx,
        };
        let error = Sink::new(ERROR, tx.clone());
        drop(tx);
        let (gone_tx, gone_rx) = watch::channel(None);
        let pump = async {
            let mut stdin_tx = stdin_tx;
            let mut resize_tx = resize_tx;
            let client = async {
                while let Some(Ok(msg)) = wrx.next().await {
                    activity.touch();
                    let b = match msg {
                        Message::Binary(b) if !b.is_empty() => b,
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    match b[0] {
                        STDIN => {
                            if let Some(t) = &stdin_tx
                                && b.len() > 1
                                && t.send(b.slice(1..)).await.is_err()
                            {
                                stdin_tx = None;
                            }
                        }
                        RESIZE => {
                            if let Some(t) = &resize_tx
                                && t.send(b.slice(1..)).await.is_err()
                            {
                                resize_tx = None;
                            }
                        }
                        CLOSE_SIGNAL if version >= 5 && b.get(1) == Some(&STDIN) => stdin_tx = None,
                        _ => {}
                    }
                }
            };
            super::watch_session(client, &activity, &ctx, gone_tx).await;
        };
        let body = async {
            if attach {
                super::attach::attach(&ctx.svc, &req, io, gone_rx).await
            } else {
                super::exec::exec(&ctx.svc, &req, io, gone_rx).await
            }
        };
        let outcome: Outcome = tokio::select! {
            o = body => o,
            () = pump => unreachable!("pump never returns"),
        };
        if let Some(bytes) = outcome.error_stream(version) {
            error.send(&bytes).await;
        }
    })
    .await;
}

/// Port-forward over WebSocket to `ports` of the pod `sandbox_id`.
pub async fn port_forward<IO>(io: IO, ctx: Ctx, sandbox_id: String, ports: Vec<u16>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    run(io, move |mut wrx, tx, activity| async move {
        let mut routes = Vec::new();
        let forwards = FuturesUnordered::new();
        for (i, port) in ports.iter().copied().enumerate() {
            let data = Sink::new(2 * i as u32, tx.clone());
            let error = Sink::new(2 * i as u32 + 1, tx.clone());
            let (in_tx, in_rx) = mpsc::channel::<Bytes>(IN_QUEUE);
            routes.push(Some(in_tx));
            let ctx = &ctx;
            let sandbox_id = sandbox_id.clone();
            forwards.push(async move {
                let tag = port.to_le_bytes();
                if !data.send(&tag).await || !error.send(&tag).await {
                    return;
                }
                let result = match portforward::target(&ctx.svc, &sandbox_id) {
                    Err(e) => Some(e),
                    Ok(t) => match portforward::connect(&t, port).await {
                        Err(e) => Some(e),
                        Ok(tcp) => portforward::pipe(tcp, in_rx, &data).await,
                    },
                };
                if let Some(e) = result {
                    tracing::debug!(sandbox = %sandbox_id, port, error = %e, "port-forward");
                    error.send(e.as_bytes()).await;
                }
            });
        }
        drop(tx);
        let mut forwards = forwards;
        let mut shutdown = ctx.shutdown.clone();
        // The client's data is routed while the forwards run (both polled side by side).
        let reader = async {
            while let Some(Ok(msg)) = wrx.next().await {
                activity.touch();
                let b = match msg {
                    Message::Binary(b) if b.len() > 1 => b,
                    Message::Close(_) => break,
                    _ => continue,
                };
                let ch = usize::from(b[0]);
                if ch % 2 == 0
                    && let Some(slot) = routes.get_mut(ch / 2)
                    && let Some(t) = slot
                    && t.send(b.slice(1..)).await.is_err()
                {
                    *slot = None;
                }
            }
        };
        tokio::select! {
            () = reader => {}
            () = async { while forwards.next().await.is_some() {} } => {}
            () = activity.idle(ctx.idle) => tracing::info!(idle = ?ctx.idle, "port-forward session idle: closing it"),
            () = gone(&mut shutdown) => {}
        }
    })
    .await;
}

//! The body of an attach session: the client joins the container's main process.
//!
//! ```text
//! output: a subscription to the log copiers' taps (stdout; stderr unless tty): what the
//!         process writes from now on, while the CRI log keeps getting everything; a client
//!         that falls TAP_QUEUE chunks behind is dropped
//! stdin:  client stream ─▶ a dup of taskd's write end of the container's stdin fifo
//!         (containers created with `stdin: true`; otherwise what the client sends is
//!         dropped); at its EOF with `stdin_once`: taskd's end closed + CloseIO, so the
//!         process reads EOF; without it the process keeps its stdin for the next attach
//! resize: ResizePty of the init process
//! ends:   the process exits (outputs drained), or the client goes (nothing is killed)
//! ```

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::conn::Sink;
use super::exec::{Ended, SessionIo, ended, pump_resize, pump_stdin, session_target};
use super::protocol::Outcome;
use crate::cri::io::Stream;
use crate::cri::service::CriService;
use crate::cri::stream_tokens::ExecRequest;

/// Copies a tap subscription to the client until the stream (or the client) ends.
async fn relay(mut rx: mpsc::Receiver<Bytes>, sink: Sink) {
    while let Some(b) = rx.recv().await {
        if !sink.send(&b).await {
            return;
        }
    }
}

/// Attaches the client's streams to the container's main process.
pub async fn attach(svc: &CriService, req: &ExecRequest, io: SessionIo, mut gone_rx: Ended) -> Outcome {
    let (runner, c) = match session_target(svc, "Attach", &req.container_id) {
        Ok(t) => t,
        Err(o) => return o,
    };
    let (out, err, stdin_w) = {
        let ios = svc.ios.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(cio) = ios.get(&c.id) else {
            return Outcome::Failed(format!(
                "container {} has no stdio taskd can attach to (it was created without a log path)",
                c.id
            ));
        };
        let out = io
            .stdout
            .clone()
            .map(|s| (cio.tap(Stream::Stdout).subscribe(), s));
        let err = if req.tty {
            None
        } else {
            io.stderr
                .clone()
                .map(|s| (cio.tap(Stream::Stderr).subscribe(), s))
        };
        let stdin_w = if req.stdin && c.config.stdin {
            cio.stdin_writer()
        } else {
            None
        };
        (out, err, stdin_w)
    };
    let stdin_w = match stdin_w.transpose() {
        Ok(w) => w,
        Err(e) => return Outcome::Failed(format!("open the stdin of container {}: {e}", c.id)),
    };
    let stdin_once = c.config.stdin_once;
    let close = async {
        if stdin_once {
            tracing::info!(container = %c.id, "stdin_once: the attached client closed stdin; closing the container's stdin");
            if let Some(cio) = svc
                .ios
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&c.id)
            {
                cio.close_stdin();
            }
            if let Err(e) = runner.close_stdin(&c.id, "").await {
                tracing::debug!(container = %c.id, error = %e, "close stdin");
            }
        }
    };
    let outputs = async {
        let relays = out.into_iter().chain(err).map(|(rx, sink)| relay(rx, sink));
        futures::future::join_all(relays).await;
    };
    tokio::pin!(outputs);
    let exited = tokio::select! {
        _ = runner.wait(&c.id) => true,
        () = &mut outputs, if req.stdout || req.stderr => false,
        why = ended(&mut gone_rx) => return Outcome::Failed(why.into()),
        () = pump_stdin(io.stdin, stdin_w, close) => unreachable!("never returns"),
        () = pump_resize(io.resize, runner.as_ref(), &c.id, "") => unreachable!("never returns"),
    };
    if exited {
        // The process is gone: what it wrote last still reaches the client.
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut outputs).await;
    }
    Outcome::Exited {
        code: 0,
        cmd: Vec::new(),
    }
}

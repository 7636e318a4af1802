//! The body of an exec session, whatever the transport: an exec process with the
//! session's streams as its stdio.
//!
//! ```text
//! container RUNNING? (else the session fails with the reason)
//! fifos <state>/containers/<id>/exec/<exec id>/{stdin,stdout,stderr} (stdin when asked;
//!   tty: stdout only, the shim copies the terminal there; an output the client did not
//!   ask for is drained)
//! readers: fifo ─▶ client stream (a client that stopped reading: the rest is drained)
//! runtime.exec(args, fifos, terminal) ─▶ then, at the same time:
//!   stdin:  client stream ─▶ fifo; at its EOF: close our end + CloseIO (the process reads EOF)
//!   resize: JSON sizes ─▶ ResizePty
//!   wait:   exit ─▶ outputs drained to EOF ─▶ Outcome::Exited(code)
//!   gone:   client went away / idle / shutdown ─▶ SIGKILL, reaped ─▶ Outcome::Failed
//! always: exec process deleted, fifo dir removed
//! ```

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::conn::Sink;
use super::protocol::{Outcome, ResizeDecoder};
use crate::cri::backend::contract::ContainerRuntime;
use crate::cri::error::CriError;
use crate::cri::io::{ExecOutput, ExecReader};
use crate::cri::service::CriService;
use crate::cri::store::container::ContainerState;
use crate::cri::stream_tokens::ExecRequest;

/// How long a killed exec may take to be reaped.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// The client's side of a session, as the transport collected it.
#[derive(Default)]
pub struct SessionIo {
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<Sink>,
    pub stderr: Option<Sink>,
    pub resize: Option<mpsc::Receiver<Bytes>>,
}

/// Resolves once the flag turns true (the server stops).
pub async fn gone(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|g| *g).await;
}

/// Why a session's body must stop: set once by the transport.
pub type Ended = watch::Receiver<Option<&'static str>>;
pub const CLIENT_GONE: &str = "the client went away";
pub const IDLE: &str = "no traffic for stream_idle_timeout: the session was closed";
pub const SHUTDOWN: &str = "taskd is shutting down";

/// Resolves with the reason once the transport says the session ended.
pub async fn ended(rx: &mut Ended) -> &'static str {
    match rx.wait_for(Option::is_some).await {
        Ok(r) => r.unwrap_or(CLIENT_GONE),
        Err(_) => CLIENT_GONE,
    }
}

/// Copies a fifo to the client; once the client stops taking data, the rest is drained.
pub fn forward(sink: Sink) -> ExecReader {
    Box::new(move |mut rx: tokio::net::unix::pipe::Receiver| {
        Box::pin(async move {
            let mut buf = vec![0u8; 32 * 1024];
            let mut open = true;
            loop {
                match rx.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if open && !sink.send(&buf[..n]).await {
                            open = false;
                        }
                    }
                }
            }
            Vec::new()
        })
    })
}

/// Copies the client's stdin into `w` until its EOF, then closes the process's stdin
/// (our end, then `close`: CloseIO so the shim drops its own); never returns after that.
/// Without a `w`, what the client sends is read and dropped.
pub async fn pump_stdin(
    rx: Option<mpsc::Receiver<Bytes>>,
    w: Option<tokio::net::unix::pipe::Sender>,
    close: impl std::future::Future<Output = ()>,
) {
    match (rx, w) {
        (Some(mut rx), Some(mut w)) => {
            while let Some(b) = rx.recv().await {
                if w.write_all(&b).await.is_err() {
                    break;
                }
            }
            drop(w);
            close.await;
        }
        (Some(mut rx), None) => while rx.recv().await.is_some() {},
        _ => {}
    }
    futures::future::pending::<()>().await;
}

/// Applies the client's terminal sizes; never returns (a bad resize stream is ignored
/// from then on).
pub async fn pump_resize(
    rx: Option<mpsc::Receiver<Bytes>>,
    runner: &dyn ContainerRuntime,
    id: &str,
    exec_id: &str,
) {
    if let Some(mut rx) = rx {
        let mut dec = ResizeDecoder::default();
        while let Some(b) = rx.recv().await {
            match dec.push(&b) {
                Ok(sizes) => {
                    for s in sizes {
                        if let Err(e) = runner
                            .resize_pty(id, exec_id, u32::from(s.width), u32::from(s.height))
                            .await
                        {
                            tracing::debug!(container = %id, exec = %exec_id, error = %e, "resize");
                        }
                    }
                }
                Err(e) => {
                    tracing::info!(container = %id, exec = %exec_id, error = %e, "resize stream ignored");
                    break;
                }
            }
        }
    }
    futures::future::pending::<()>().await;
}

/// The container of a session, which must be running.
pub fn running_container(
    svc: &CriService,
    id: &str,
) -> Result<crate::cri::store::container::Container, CriError> {
    let c = svc.containers.get(id)?;
    if c.state != ContainerState::Running {
        return Err(CriError::FailedPrecondition {
            what: format!("container {}", c.id),
            reason: format!("is {}, not running", c.state.as_str()),
        });
    }
    Ok(c)
}

/// The runtime and the running container a session works on, or the failure it reports.
pub fn session_target(
    svc: &CriService,
    rpc: &'static str,
    id: &str,
) -> Result<
    (
        std::sync::Arc<dyn ContainerRuntime>,
        crate::cri::store::container::Container,
    ),
    Outcome,
> {
    let runner = svc
        .container_runtime(rpc)
        .map_err(|e| Outcome::Failed(e.to_string()))?;
    let c = running_container(svc, id).map_err(|e| Outcome::Failed(e.to_string()))?;
    Ok((runner, c))
}

/// Runs the exec of `req` with the client's streams until it exits or the client goes.
pub async fn exec(svc: &CriService, req: &ExecRequest, io: SessionIo, mut gone_rx: Ended) -> Outcome {
    let (runner, c) = match session_target(svc, "Exec", &req.container_id) {
        Ok(t) => t,
        Err(o) => return o,
    };
    let exec_id = format!("exec-{}", uuid::Uuid::new_v4().simple());
    let dir = svc.container_dir(&c.id).join("exec").join(&exec_id);
    // The shim wants both outputs (a terminal: stdout alone); one the client did not ask
    // for is drained.
    let reader = |sink: &Option<Sink>| match sink {
        Some(s) => forward(s.clone()),
        None => crate::cri::io::discard(),
    };
    let stdout = Some(reader(&io.stdout));
    let stderr = (!req.tty).then(|| reader(&io.stderr));
    let want_stdin = req.stdin && io.stdin.is_some();
    let mut fifos = match ExecOutput::with_readers(&dir, want_stdin, stdout, stderr) {
        Ok(f) => f,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Outcome::Failed(e.to_string());
        }
    };
    let stdin_w = match fifos.open_stdin().transpose() {
        Ok(w) => w,
        Err(e) => {
            fifos.release().await;
            drop(fifos);
            let _ = std::fs::remove_dir_all(&dir);
            return Outcome::Failed(e.to_string());
        }
    };
    tracing::debug!(container = %c.id, exec = %exec_id, cmd = ?req.cmd, tty = req.tty, "exec session");
    if let Err(e) = runner
        .exec(&c.id, &exec_id, req.cmd.clone(), fifos.io(req.tty))
        .await
    {
        drop(stdin_w);
        fifos.release().await;
        drop(fifos);
        let _ = std::fs::remove_dir_all(&dir);
        return Outcome::Failed(e.to_string());
    }
    fifos.started();
    let close = async {
        if let Err(e) = runner.close_stdin(&c.id, &exec_id).await {
            tracing::debug!(exec = %exec_id, error = %e, "close exec stdin");
        }
    };
    let exited = tokio::select! {
        r = runner.exec_wait(&c.id, &exec_id) => Ok(r),
        why = ended(&mut gone_rx) => Err(why),
        () = pump_stdin(io.stdin, stdin_w, close) => unreachable!("never returns"),
        () = pump_resize(io.resize, runner.as_ref(), &c.id, &exec_id) => unreachable!("never returns"),
    };
    let outcome = match exited {
        Ok(Ok(exit)) => {
            // Everything the process wrote reaches the client (unless it goes away).
            tokio::select! {
                () = fifos.finish(Duration::from_secs(365 * 24 * 3600)) => {}
                _ = ended(&mut gone_rx) => {}
            }
            Outcome::Exited {
                code: exit.code as i32,
                cmd: req.cmd.clone(),
            }
        }
        Ok(Err(e)) => Outcome::Failed(e.to_string()),
        Err(why) => {
            tracing::info!(container = %c.id, exec = %exec_id, why, "exec session ended: killing the process");
            let _ = runner.exec_kill(&c.id, &exec_id, libc::SIGKILL as u32).await;
            let _ = tokio::time::timeout(KILL_GRACE, runner.exec_wait(&c.id, &exec_id)).await;
            Outcome::Failed(why.into())
        }
    };
    fifos.finish(Duration::from_millis(100)).await;
    drop(fifos);
    if let Err(e) = runner.exec_delete(&c.id, &exec_id).await {
        tracing::warn!(error = %e, exec = %exec_id, "delete exec process");
    }
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

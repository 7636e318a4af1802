//! `ExecSync`: runs a command in a running container and returns its output and exit code.
//!
//! ```text
//! container must be RUNNING (else FailedPrecondition; unknown → NotFound)
//! fifos <state>/containers/<id>/exec/<exec id>/{stdout,stderr}, readers capped at
//!   max_exec_output_bytes per stream (the rest drained and dropped)
//! runtime.exec (the container's process settings, new args) ─▶ pid
//! wait ≤ timeout (0 = none) ── expired ─▶ SIGKILL, wait, DeadlineExceeded at once
//! collect output until EOF, or drain_exec_sync_io_timeout after the exit (a background
//! child holding the fifos cannot hang the call); delete the exec process, remove the fifos
//! the caller going away (kubelet's deadline, a closed connection) kills the exec process; its
//! clean-up (delete the process, remove the fifos) always runs to the end, in a task of its own
//! fit both streams into one response kubelet can receive (its CRI client takes messages of
//! at most 16 MiB): over that, each stream keeps at least half, the larger gives way
//! ```

use std::time::Duration;

use taskd_proto::cri::v1::{ExecSyncRequest, ExecSyncResponse};
use tracing::Instrument as _;

use crate::cri::error::CriError;
use crate::cri::io::ExecOutput;
use crate::cri::service::CriService;
use crate::cri::streaming::exec::running_container;

/// How long a killed exec may take to be reaped before ExecSync stops waiting for it.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Output bytes one ExecSync response may carry: kubelet's CRI client (and taskd's default
/// `[grpc] max_send_message_size`) take 16 MiB per message, less room for the framing.
pub const MAX_RESPONSE_OUTPUT: usize = (16 << 20) - 4096;

/// Truncates the streams so that together they hold at most `budget` bytes; a stream under
/// half the budget is kept whole, the other is cut.
pub fn fit_output(stdout: &mut Vec<u8>, stderr: &mut Vec<u8>, budget: usize) {
    if stdout.len() + stderr.len() <= budget {
        return;
    }
    let half = budget / 2;
    let keep_err = stderr.len().min(half.max(budget.saturating_sub(stdout.len())));
    stderr.truncate(keep_err);
    stdout.truncate(budget - keep_err);
}

impl CriService {
    /// ExecSync in a task of its own: when the RPC's future is dropped (the caller went
    /// away), the task sees it, kills the exec process and still removes its state. The task
    /// is bounded once the caller is gone (a kill, [`KILL_GRACE`], the delete).
    pub async fn exec_sync_detached(
        self: std::sync::Arc<Self>,
        req: ExecSyncRequest,
    ) -> Result<ExecSyncResponse, CriError> {
        let (caller, gone) = tokio::sync::oneshot::channel::<()>();
        // In the call's span: the exec's shim spans are the call's children.
        let task = tokio::spawn(async move { self.exec_sync(req, gone).await }.in_current_span());
        let result = task.await;
        drop(caller);
        result.unwrap_or_else(|e| {
            Err(CriError::FailedPrecondition {
                what: "ExecSync".into(),
                reason: format!("its task ended: {e}"),
            })
        })
    }

    /// ExecSync; `gone` resolves when the caller went away.
    pub async fn exec_sync(
        &self,
        req: ExecSyncRequest,
        mut gone: tokio::sync::oneshot::Receiver<()>,
    ) -> Result<ExecSyncResponse, CriError> {
        let runner = self.container_runtime("ExecSync")?;
        let c = running_container(self, &req.container_id)?;
        if req.cmd.is_empty() {
            return Err(CriError::InvalidArgument {
                field: "cmd",
                reason: "must not be empty".into(),
            });
        }
        if req.timeout < 0 {
            return Err(CriError::InvalidArgument {
                field: "timeout",
                reason: format!("{} is negative", req.timeout),
            });
        }
        let exec_id = format!("exec-{}", uuid::Uuid::new_v4().simple());
        let dir = self.container_dir(&c.id).join("exec").join(&exec_id);
        let mut out = ExecOutput::create(&dir, self.config.max_exec_output_bytes)?;
        let started = runner.exec(&c.id, &exec_id, req.cmd.clone(), out.io(false)).await;
        if let Err(e) = started {
            out.release().await;
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        out.started();
        let limit = (req.timeout > 0).then(|| Duration::from_secs(req.timeout as u64));
        let waited = tokio::select! {
            w = async {
                match limit {
                    Some(t) => tokio::time::timeout(t, runner.exec_wait(&c.id, &exec_id)).await.map_err(|_| false),
                    None => Ok(runner.exec_wait(&c.id, &exec_id).await),
                }
            } => w,
            _ = &mut gone => Err(true),
        };
        let result = match waited {
            Ok(Ok(exit)) => {
                let drain = self.config.drain_exec_sync_io_timeout.0;
                let (mut stdout, mut stderr) = out.collect_within(drain).await;
                fit_output(&mut stdout, &mut stderr, MAX_RESPONSE_OUTPUT);
                Ok(ExecSyncResponse {
                    stdout,
                    stderr,
                    exit_code: exit.code as i32,
                })
            }
            Ok(Err(e)) => {
                out.release().await;
                Err(e)
            }
            Err(caller_gone) => {
                if caller_gone {
                    tracing::info!(container = %c.id, exec = %exec_id, "ExecSync caller went away: killing");
                } else {
                    tracing::info!(container = %c.id, exec = %exec_id, timeout = req.timeout, "ExecSync timed out: killing");
                }
                let _ = runner.exec_kill(&c.id, &exec_id, libc::SIGKILL as u32).await;
                let _ = tokio::time::timeout(KILL_GRACE, runner.exec_wait(&c.id, &exec_id)).await;
                drop(out);
                Err(CriError::Timeout {
                    what: format!("ExecSync {:?} in container {}", req.cmd, c.id),
                    after: Duration::from_secs(req.timeout as u64),
                })
            }
        };
        if let Err(e) = runner.exec_delete(&c.id, &exec_id).await {
            tracing::warn!(error = %e, exec = %exec_id, "delete exec process");
        }
        let _ = std::fs::remove_dir_all(&dir);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::fit_output;

    #[test]
    fn output_is_fitted_into_one_response() {
        let fit = |o: usize, e: usize| {
            let (mut out, mut err) = (vec![1u8; o], vec![2u8; e]);
            fit_output(&mut out, &mut err, 100);
            (out.len(), err.len())
        };
        assert_eq!(fit(30, 40), (30, 40), "under the budget: untouched");
        assert_eq!(fit(200, 0), (100, 0));
        assert_eq!(fit(0, 200), (0, 100));
        assert_eq!(fit(200, 10), (90, 10), "the small stream stays whole");
        assert_eq!(fit(10, 200), (10, 90));
        assert_eq!(fit(200, 200), (50, 50));
    }
}

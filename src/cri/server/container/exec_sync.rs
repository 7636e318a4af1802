//! `ExecSync`: runs a command in a running container and returns its output and exit code.
//!
//! ```text
//! container must be RUNNING (else FailedPrecondition; unknown → NotFound)
//! fifos <state>/containers/<id>/exec/<exec id>/{stdout,stderr}, readers capped at
//!   max_exec_output_bytes per stream (the rest drained and dropped)
//! runtime.exec (the container's process settings, new args) ─▶ pid
//! wait ≤ timeout (0 = none) ── expired ─▶ SIGKILL, wait, DeadlineExceeded at once
//! collect output, delete the exec process, remove the fifos
//! ```

use std::time::Duration;

use taskd_proto::cri::v1::{ExecSyncRequest, ExecSyncResponse};

use crate::cri::io::ExecOutput;
use crate::cri::store::container::ContainerState;
use crate::cri::{CriError, CriService};

/// How long a killed exec may take to be reaped before ExecSync stops waiting for it.
const KILL_GRACE: Duration = Duration::from_secs(5);

impl CriService {
    pub async fn exec_sync(&self, req: ExecSyncRequest) -> Result<ExecSyncResponse, CriError> {
        let runner = self.container_runtime("ExecSync")?;
        let c = self.containers.get(&req.container_id)?;
        if c.state != ContainerState::Running {
            return Err(CriError::FailedPrecondition {
                what: format!("container {}", c.id),
                reason: format!("is {}, not running", c.state.as_str()),
            });
        }
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
        let out = ExecOutput::create(&dir, self.config.max_exec_output_bytes)?;
        let started = runner
            .exec(
                &c.id,
                &exec_id,
                req.cmd.clone(),
                &out.stdout.display().to_string(),
                &out.stderr.display().to_string(),
            )
            .await;
        if let Err(e) = started {
            out.release().await;
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        let waited = if req.timeout > 0 {
            tokio::time::timeout(
                Duration::from_secs(req.timeout as u64),
                runner.exec_wait(&c.id, &exec_id),
            )
            .await
        } else {
            Ok(runner.exec_wait(&c.id, &exec_id).await)
        };
        let result = match waited {
            Ok(Ok(exit)) => {
                let (stdout, stderr) = out.collect().await;
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
            Err(_expired) => {
                tracing::info!(container = %c.id, exec = %exec_id, timeout = req.timeout, "ExecSync timed out: killing");
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

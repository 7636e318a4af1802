//! `Exec`: validates the request and answers the streaming server's URL for it.
//!
//! ```text
//! container known (NotFound) and RUNNING (FailedPrecondition); cmd not empty; one of
//! stdin/stdout/stderr; not tty with stderr (InvalidArgument, as kubelet checks)
//! ─▶ request cached under a single-use token ─▶ http(s)://ADDR:PORT/exec/<token>
//! ```
//! The exec process itself starts when the client connects (`cri/streaming/exec.rs`).

use taskd_proto::cri::v1::{ExecRequest, ExecResponse};

use crate::cri::error::CriError;
use crate::cri::service::CriService;
use crate::cri::stream_tokens::{self, Pending};
use crate::cri::streaming::exec::running_container;

/// The stream flags of an Exec or Attach, checked as kubelet checks them.
pub fn check_streams(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<(), CriError> {
    if !(stdin || stdout || stderr) {
        return Err(CriError::InvalidArgument {
            field: "stdin/stdout/stderr",
            reason: "one of stdin, stdout, or stderr must be set".into(),
        });
    }
    if tty && stderr {
        return Err(CriError::InvalidArgument {
            field: "tty",
            reason: "tty and stderr cannot both be true (a terminal has one output stream)".into(),
        });
    }
    Ok(())
}

impl CriService {
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecResponse, CriError> {
        let front = self.streaming()?;
        self.container_runtime("Exec")?;
        let c = running_container(self, &req.container_id)?;
        if req.cmd.is_empty() {
            return Err(CriError::InvalidArgument {
                field: "cmd",
                reason: "must not be empty".into(),
            });
        }
        check_streams(req.stdin, req.stdout, req.stderr, req.tty)?;
        let url = front.url(Pending::Exec(stream_tokens::ExecRequest {
            container_id: c.id,
            cmd: req.cmd,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        }))?;
        Ok(ExecResponse { url })
    }
}

//! `Attach`: validates the request and answers the streaming server's URL for it.
//!
//! ```text
//! container known (NotFound) and RUNNING (FailedPrecondition); one of stdin/stdout/stderr;
//! not tty with stderr (InvalidArgument) ─▶ http(s)://ADDR:PORT/attach/<token>
//! ```
//! The session (`cri/streaming/attach.rs`) joins the container's main process: its stdin
//! fifo (containers created with `stdin: true`) and a tap on the log copiers' output.

use taskd_proto::cri::v1::{AttachRequest, AttachResponse};

use super::exec::check_streams;
use crate::cri::error::CriError;
use crate::cri::service::CriService;
use crate::cri::stream_tokens::{self, Pending};
use crate::cri::streaming::exec::running_container;

impl CriService {
    pub async fn attach(&self, req: AttachRequest) -> Result<AttachResponse, CriError> {
        let front = self.streaming()?;
        self.container_runtime("Attach")?;
        let c = running_container(self, &req.container_id)?;
        check_streams(req.stdin, req.stdout, req.stderr, req.tty)?;
        let url = front.url(Pending::Attach(stream_tokens::ExecRequest {
            container_id: c.id,
            cmd: Vec::new(),
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        }))?;
        Ok(AttachResponse { url })
    }
}

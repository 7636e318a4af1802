//! `PortForward`: validates the request and answers the streaming server's URL for it.
//!
//! ```text
//! pod known (NotFound) and READY (FailedPrecondition); each port 1..=65535
//! (InvalidArgument) ─▶ http(s)://ADDR:PORT/portforward/<token>
//! ```
//! SPDY clients name the port of each stream in its headers; WebSocket clients in the
//! query (`?port=P`), else the ports of this request are used.

use taskd_proto::cri::v1::{PortForwardRequest, PortForwardResponse};

use crate::cri::error::CriError;
use crate::cri::server::ensure_ready;
use crate::cri::service::CriService;
use crate::cri::stream_tokens::Pending;

impl CriService {
    pub async fn port_forward(&self, req: PortForwardRequest) -> Result<PortForwardResponse, CriError> {
        let front = self.streaming()?;
        let s = self.sandboxes.get(&req.pod_sandbox_id)?;
        ensure_ready(&s)?;
        let mut ports = Vec::with_capacity(req.port.len());
        for p in &req.port {
            match u16::try_from(*p) {
                Ok(p) if p > 0 => ports.push(p),
                _ => {
                    return Err(CriError::InvalidArgument {
                        field: "port",
                        reason: format!("{p} is not a port (1 to 65535)"),
                    });
                }
            }
        }
        let url = front.url(Pending::PortForward {
            sandbox_id: s.id,
            ports,
        })?;
        Ok(PortForwardResponse { url })
    }
}

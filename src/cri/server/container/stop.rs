//! `StopContainer`: the stop signal (CRI config, else the image's, else SIGTERM), wait up to
//! the timeout, then SIGKILL and wait. Not running, or an unknown id, is success (idempotent,
//! as the CRI API requires; containerd 1.7 and later).
//!
//! The exit is recorded here from Wait, or by the event loop from `/tasks/exit`, whichever
//! comes first; the other finds the container EXITED and leaves it.

use std::time::Duration;

use taskd_proto::cri::v1::{ContainerEventType, StopContainerRequest, StopContainerResponse};

use crate::cri::backend::contract::ExitInfo;
use crate::cri::error::CriError;
use crate::cri::service::CriService;
use crate::cri::store::container::{ContainerState, exit_reason};

/// A signal name or number as images and CRI give it (`SIGTERM`, `TERM`, `15`, `SIGRTMIN+3`
/// is not accepted); `None` for an unknown name or a number that is no signal of this kernel.
pub fn parse_signal(s: &str) -> Option<u32> {
    if let Ok(n) = s.parse::<u32>() {
        return (1..=libc::SIGRTMAX() as u32).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|sig| sig as u32)
}

impl CriService {
    pub async fn stop_container(&self, req: StopContainerRequest) -> Result<StopContainerResponse, CriError> {
        let runner = self.container_runtime("StopContainer")?;
        // An unknown id is success, as for a container already stopped (the CRI API).
        let Some(c) = self.containers.find(&req.container_id)? else {
            return Ok(StopContainerResponse {});
        };
        if !matches!(c.state, ContainerState::Running | ContainerState::Unknown) {
            return Ok(StopContainerResponse {});
        }
        let stop_signal = match taskd_proto::cri::v1::Signal::try_from(c.config.stop_signal) {
            Ok(s) if c.config.stop_signal != 0 => parse_signal(s.as_str_name()),
            _ => None,
        };
        // An image's StopSignal is the image author's text: one taskd cannot send falls back
        // to SIGTERM, with a warning (the stop still ends in SIGKILL after the timeout).
        let image_signal = self.images.get(&c.image_ref).and_then(|i| {
            let text = &i.config.stop_signal;
            let parsed = parse_signal(text);
            if parsed.is_none() && !text.is_empty() {
                tracing::warn!(container = %c.id, image = %c.image_ref, stop_signal = %text, "the image's StopSignal is not a signal: using SIGTERM");
            }
            parsed
        });
        let signal = stop_signal.or(image_signal).unwrap_or(libc::SIGTERM as u32);
        let exit = if req.timeout > 0 {
            runner.kill(&c.id, signal).await?;
            match tokio::time::timeout(Duration::from_secs(req.timeout as u64), runner.wait(&c.id)).await {
                Ok(r) => r?,
                Err(_) => {
                    tracing::info!(container = %c.id, timeout = req.timeout, "stop timeout expired: SIGKILL");
                    runner.kill(&c.id, libc::SIGKILL as u32).await?;
                    runner.wait(&c.id).await?
                }
            }
        } else {
            runner.kill(&c.id, libc::SIGKILL as u32).await?;
            runner.wait(&c.id).await?
        };
        self.record_exit(&c.id, exit);
        Ok(StopContainerResponse {})
    }

    /// Moves a container to EXITED with `exit` unless something already did.
    pub fn record_exit(&self, id: &str, exit: ExitInfo) {
        let changed = self.containers.update(id, |r| {
            if r.state == ContainerState::Exited {
                return Ok(None);
            }
            r.transition(ContainerState::Exited)?;
            r.exit.code = exit.code as i32;
            r.exit.finished_at = Some(exit.at);
            r.exit.reason = exit_reason(exit.code as i32, r.exit.oom_killed).to_owned();
            r.pid = 0;
            Ok(Some(r.sandbox_id.clone()))
        });
        if let Ok(Some(sandbox)) = changed {
            self.emit_container_event(id, &sandbox, ContainerEventType::ContainerStoppedEvent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGTERM"), Some(15));
        assert_eq!(parse_signal("quit"), Some(3));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGNOPE"), None);
        assert_eq!(parse_signal("0"), None);
        assert_eq!(parse_signal("65"), None, "above SIGRTMAX");
        assert_eq!(parse_signal("4294967295"), None);
        assert_eq!(parse_signal("34"), Some(34), "a realtime signal");
    }
}

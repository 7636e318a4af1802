//! `StartContainer`: CREATED → RUNNING. A start that fails moves the container to EXITED
//! with reason `StartError` (containerd does the same), so kubelet sees why.

use std::time::SystemTime;

use taskd_proto::cri::v1::{ContainerEventType, StartContainerRequest, StartContainerResponse};

use crate::cri::error::CriError;
use crate::cri::server::{container_state_error, ensure_ready};
use crate::cri::service::CriService;
use crate::cri::store::container::ContainerState;

impl CriService {
    pub async fn start_container(
        &self,
        req: StartContainerRequest,
    ) -> Result<StartContainerResponse, CriError> {
        let runner = self.container_runtime("StartContainer")?;
        let c = self.containers.get(&req.container_id)?;
        if c.state != ContainerState::Created {
            return Err(container_state_error(&c, ", not CONTAINER_CREATED"));
        }
        let sandbox = self.sandboxes.get(&c.sandbox_id)?;
        ensure_ready(&sandbox)?;
        match runner.start(&c.id).await {
            Ok(pid) => {
                // A process that ends at once may have its exit recorded (by the event
                // loop) before this update: it stays EXITED, with its pid and start time.
                self.containers.update(&c.id, |r| {
                    let now = SystemTime::now();
                    if r.state == ContainerState::Exited {
                        r.started_at = Some(r.exit.finished_at.map_or(now, |f| f.min(now)));
                    } else {
                        r.transition(ContainerState::Running)?;
                        r.started_at = Some(now);
                    }
                    r.pid = pid;
                    Ok(())
                })?;
                self.emit_container_event(&c.id, &c.sandbox_id, ContainerEventType::ContainerStartedEvent);
                tracing::info!(container = %c.id, pid, "container started");
                // The pod's first running container: the pod has started.
                let first = !self
                    .containers
                    .list()
                    .iter()
                    .any(|o| o.sandbox_id == c.sandbox_id && o.id != c.id && o.started_at.is_some());
                if first && let Ok(took) = SystemTime::now().duration_since(sandbox.created_at) {
                    self.metrics
                        .pod_start
                        .with_label_values(&[sandbox.runtime_handler.as_str()])
                        .observe(took.as_secs_f64());
                }
                Ok(StartContainerResponse {})
            }
            Err(e) => {
                let msg = e.to_string();
                let _ = self.containers.update(&c.id, |r| {
                    r.transition(ContainerState::Exited)?;
                    r.exit.code = 128;
                    r.exit.reason = "StartError".into();
                    r.exit.message = msg;
                    r.exit.finished_at = Some(SystemTime::now());
                    Ok(())
                });
                // The stdio copiers end when RemoveContainer deletes the task (the shim
                // closes its write ends then).
                self.emit_container_event(&c.id, &c.sandbox_id, ContainerEventType::ContainerStoppedEvent);
                Err(e)
            }
        }
    }
}

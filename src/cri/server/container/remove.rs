//! `RemoveContainer`: a running container is killed first (as containerd does); then the
//! task, record and rootfs go (runtime.delete), the stdio copiers drain into the log, the
//! fifos are removed and the record is dropped. An unknown id is success (idempotent).

use taskd_proto::cri::v1::{
    ContainerEventType, RemoveContainerRequest, RemoveContainerResponse, StopContainerRequest,
};

use crate::cri::error::CriError;
use crate::cri::service::CriService;
use crate::cri::store::container::ContainerState;

impl CriService {
    pub async fn remove_container(
        &self,
        req: RemoveContainerRequest,
    ) -> Result<RemoveContainerResponse, CriError> {
        let runner = self.container_runtime("RemoveContainer")?;
        let Some(c) = self.containers.find(&req.container_id)? else {
            return Ok(RemoveContainerResponse {});
        };
        if !c.state.removable() || c.state == ContainerState::Unknown {
            self.stop_container(StopContainerRequest {
                container_id: c.id.clone(),
                timeout: 0,
            })
            .await?;
        }
        runner.delete(&c.id).await?;
        let io = self
            .ios
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&c.id);
        if let Some(mut io) = io {
            // The task is gone, so are the shim's write ends: the copiers reach EOF.
            io.release().await;
        }
        let _ = std::fs::remove_dir_all(self.container_dir(&c.id));
        self.cpu_samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&c.id);
        let last = self.containers.remove(&c.id);
        if last.is_some() {
            self.emit_container_event(&c.id, &c.sandbox_id, ContainerEventType::ContainerDeletedEvent);
        }
        tracing::info!(container = %c.id, "container removed");
        Ok(RemoveContainerResponse {})
    }
}

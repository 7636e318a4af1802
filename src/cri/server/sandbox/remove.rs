//! `RemovePodSandbox`: stops the pod if needed, removes its containers and pause
//! container (if it has one), the image copies of a pod in a user namespace, its files and
//! its record. Idempotent: an unknown id is success.

use taskd_proto::cri::v1::{
    RemoveContainerRequest, RemovePodSandboxRequest, RemovePodSandboxResponse, StopPodSandboxRequest,
};

use crate::cri::error::CriError;
use crate::cri::service::CriService;
use crate::cri::store::sandbox::SandboxState;

impl CriService {
    pub async fn remove_pod_sandbox(
        &self,
        req: RemovePodSandboxRequest,
    ) -> Result<RemovePodSandboxResponse, CriError> {
        let Some(s) = self.sandboxes.find(&req.pod_sandbox_id)? else {
            return Ok(RemovePodSandboxResponse {});
        };
        if s.state != SandboxState::NotReady || !s.netns_path.is_empty() || !s.infra {
            self.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: s.id.clone(),
            })
            .await?;
        }
        let ids: Vec<String> = self
            .containers
            .list()
            .into_iter()
            .filter(|c| c.sandbox_id == s.id)
            .map(|c| c.id)
            .collect();
        for id in ids {
            self.remove_container(RemoveContainerRequest { container_id: id })
                .await?;
        }
        if s.infra {
            self.controller("RemovePodSandbox")?.delete(&s.id).await?;
        }
        if let Some(c) = &self.controller
            && crate::cri::userns::of_pod(&s.config).is_ok_and(|u| u.is_some())
        {
            // The image copies its containers' root file systems were made on.
            c.remove_pod_rootfs(&s.id).await?;
        }
        let dir = self.sandbox_dir(&s.id);
        if let Err(e) = crate::cri::podfiles::remove(&dir) {
            tracing::warn!(error = %e, dir = %dir.display(), "remove pod files");
        }
        self.cpu_samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&super::stats::sample_key(&s.id));
        self.sandboxes.remove(&s.id);
        tracing::info!(sandbox = %s.id, "pod sandbox removed");
        Ok(RemovePodSandboxResponse {})
    }
}

//! `UpdatePodSandboxResources`: kubelet tells the pod's new resources (in-place resize).
//! They are stored in the pod's config (visible in verbose PodSandboxStatus). Pod-level
//! cgroup changes are kubelet's own (it owns the pod cgroup); containers are updated
//! through UpdateContainerResources.

use taskd_proto::cri::v1::{UpdatePodSandboxResourcesRequest, UpdatePodSandboxResourcesResponse};

use crate::cri::error::CriError;
use crate::cri::service::CriService;

impl CriService {
    pub async fn update_pod_sandbox_resources(
        &self,
        req: UpdatePodSandboxResourcesRequest,
    ) -> Result<UpdatePodSandboxResourcesResponse, CriError> {
        let id = self.sandboxes.resolve(&req.pod_sandbox_id)?;
        self.sandboxes.update(&id, |s| {
            let linux = s.config.linux.get_or_insert_with(Default::default);
            if req.resources.is_some() {
                linux.resources = req.resources.clone();
            }
            if req.overhead.is_some() {
                linux.overhead = req.overhead.clone();
            }
            Ok(())
        })?;
        Ok(UpdatePodSandboxResourcesResponse {})
    }
}

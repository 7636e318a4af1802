//! `UpdateContainerResources`: new cpu/memory/hugepage/unified limits for a created or
//! running container, applied through the runtime (task update) and kept in the
//! container's config (ContainerStatus shows them). oom_score_adj cannot change after start.

use taskd_proto::cri::v1::{UpdateContainerResourcesRequest, UpdateContainerResourcesResponse};

use crate::cri::error::CriError;
use crate::cri::server::container_state_error;
use crate::cri::service::CriService;
use crate::cri::spec::resources::update_resources;
use crate::cri::store::container::ContainerState;

impl CriService {
    pub async fn update_container_resources(
        &self,
        req: UpdateContainerResourcesRequest,
    ) -> Result<UpdateContainerResourcesResponse, CriError> {
        let runner = self.container_runtime("UpdateContainerResources")?;
        let c = self.containers.get(&req.container_id)?;
        if !matches!(c.state, ContainerState::Created | ContainerState::Running) {
            return Err(container_state_error(
                &c,
                ": only created or running containers can be updated",
            ));
        }
        let Some(res) = req.linux else {
            return Ok(UpdateContainerResourcesResponse {});
        };
        runner.update(&c.id, update_resources(&res)).await?;
        self.containers.update(&c.id, |r| {
            let linux = r.config.linux.get_or_insert_with(Default::default);
            let keep_oom = linux
                .resources
                .as_ref()
                .map(|x| x.oom_score_adj)
                .unwrap_or_default();
            let mut new = res.clone();
            new.oom_score_adj = keep_oom;
            linux.resources = Some(new);
            Ok(())
        })?;
        Ok(UpdateContainerResourcesResponse {})
    }
}

//! `ReopenContainerLog`: kubelet rotated the log file (renamed it); open the path again.
//! Only a running container has a writer to reopen.

use taskd_proto::cri::v1::{ReopenContainerLogRequest, ReopenContainerLogResponse};

use crate::cri::error::CriError;
use crate::cri::server::container_state_error;
use crate::cri::service::CriService;
use crate::cri::store::container::ContainerState;

impl CriService {
    pub async fn reopen_container_log(
        &self,
        req: ReopenContainerLogRequest,
    ) -> Result<ReopenContainerLogResponse, CriError> {
        let c = self.containers.get(&req.container_id)?;
        if c.state != ContainerState::Running {
            return Err(container_state_error(
                &c,
                ", not running: there is no log writer to reopen",
            ));
        }
        let log = c.log.ok_or_else(|| CriError::FailedPrecondition {
            what: format!("container {}", c.id),
            reason: "was created without a log path".to_owned(),
        })?;
        tokio::task::spawn_blocking(move || log.reopen())
            .await
            .map_err(|e| CriError::FailedPrecondition {
                what: "reopen log".to_owned(),
                reason: e.to_string(),
            })??;
        Ok(ReopenContainerLogResponse {})
    }
}

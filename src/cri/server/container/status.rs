//! `ContainerStatus`: state, times, exit code and reason, image, mounts, log path,
//! resources; verbose adds `info` (pid, sandbox, state as the store has it).

use std::collections::HashMap;

use taskd_proto::cri::v1::{ContainerStatusRequest, ContainerStatusResponse};

use crate::cri::convert;
use crate::cri::error::CriError;
use crate::cri::service::CriService;

impl CriService {
    pub async fn container_status(
        &self,
        req: ContainerStatusRequest,
    ) -> Result<ContainerStatusResponse, CriError> {
        let c = self.containers.get(&req.container_id)?;
        let mut info = HashMap::new();
        if req.verbose {
            let v = serde_json::json!({
                "pid": c.pid,
                "sandboxID": c.sandbox_id,
                "state": c.state.as_str(),
                "logPath": c.log_path,
            });
            info.insert("info".to_owned(), v.to_string());
        }
        Ok(ContainerStatusResponse {
            status: Some(convert::container_status(&c)),
            info,
        })
    }
}

//! `PodSandboxStatus`: state, IP, namespaces, created time, labels, annotations; verbose
//! adds `info` (pid, netns, runtime handler, the config as JSON-ish debug text).

use std::collections::HashMap;

use taskd_proto::cri::v1::{PodSandboxStatusRequest, PodSandboxStatusResponse};

use crate::cri::convert;
use crate::cri::error::CriError;
use crate::cri::service::CriService;

impl CriService {
    pub async fn pod_sandbox_status(
        &self,
        req: PodSandboxStatusRequest,
    ) -> Result<PodSandboxStatusResponse, CriError> {
        let s = self.sandboxes.get(&req.pod_sandbox_id)?;
        let mut info = HashMap::new();
        if req.verbose {
            let v = serde_json::json!({
                "pid": s.pid,
                "netNamespacePath": s.netns_path,
                "infraContainer": s.infra,
                "ipcNamespacePath": s.ipc_ns_path,
                "utsNamespacePath": s.uts_ns_path,
                "runtimeHandler": s.runtime_handler,
                "state": s.state.as_str(),
                "cgroupParent": s.cgroup_parent,
                "config": format!("{:?}", s.config),
            });
            info.insert("info".to_owned(), v.to_string());
        }
        let containers_statuses = self
            .containers
            .list()
            .iter()
            .filter(|c| c.sandbox_id == s.id)
            .map(convert::container_status)
            .collect();
        Ok(PodSandboxStatusResponse {
            status: Some(convert::pod_sandbox_status(&s)),
            info,
            containers_statuses,
            timestamp: convert::nanos(Some(std::time::SystemTime::now())),
        })
    }
}

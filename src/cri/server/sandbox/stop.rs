//! `StopPodSandbox`: stops every container of the pod, the pause container, unpins the
//! namespaces taskd pinned (IPC/UTS of a pod without a pause container, a user namespace), tears the network down (CNI DEL, netns
//! removed) and leaves the record NotReady. Idempotent: a second call finds nothing left to
//! stop and succeeds, and so does a call for an unknown id.

use taskd_proto::cri::v1::{StopContainerRequest, StopPodSandboxRequest, StopPodSandboxResponse};

use super::run::{pod_ref, port_mappings};
use crate::cri::error::CriError;
use crate::cri::error::blocking;
use crate::cri::network::netns;
use crate::cri::service::CriService;
use crate::cri::store::container::ContainerState;
use crate::cri::store::sandbox::SandboxState;
use crate::cri::{podfiles, podns};

impl CriService {
    pub async fn stop_pod_sandbox(
        &self,
        req: StopPodSandboxRequest,
    ) -> Result<StopPodSandboxResponse, CriError> {
        // An unknown id is success (the CRI API; containerd 1.7 and later).
        let Some(s) = self.sandboxes.find(&req.pod_sandbox_id)? else {
            return Ok(StopPodSandboxResponse {});
        };
        let running: Vec<String> = self
            .containers
            .list()
            .into_iter()
            .filter(|c| {
                c.sandbox_id == s.id && matches!(c.state, ContainerState::Running | ContainerState::Unknown)
            })
            .map(|c| c.id)
            .collect();
        for id in running {
            // As containerd: the pod's containers get no grace period here (kubelet stops
            // them with their own grace periods before StopPodSandbox).
            self.stop_container(StopContainerRequest {
                container_id: id,
                timeout: 0,
            })
            .await?;
        }
        if s.infra {
            self.controller("StopPodSandbox")?.stop(&s.id).await?;
        }
        // Always (idempotent): a RunPodSandbox cut short by a crash may have pinned
        // namespaces it never recorded; a pod with a pause container may have a pinned user
        // namespace.
        let dir = self.podns_dir(&s.id);
        blocking("unpin pod namespaces", move || podns::unpin(&dir)).await?;
        if !s.infra {
            self.sandboxes.update(&s.id, |r| {
                r.ipc_ns_path.clear();
                r.uts_ns_path.clear();
                Ok(())
            })?;
        }
        // The pod's /dev/shm goes with its containers (as containerd's sandbox files).
        let dir = self.sandbox_dir(&s.id);
        blocking("unmount the pod's /dev/shm", move || podfiles::unmount_shm(&dir)).await?;
        self.sandboxes.update(&s.id, |r| {
            if r.state != SandboxState::NotReady {
                r.transition(SandboxState::NotReady)?;
            }
            Ok(())
        })?;
        if !s.netns_path.is_empty() {
            let ns = std::path::PathBuf::from(&s.netns_path);
            // A RunPodSandbox cut short may not have created it: DEL still releases IPAM.
            let present = netns::is_pinned(&ns);
            self.cni()
                .teardown(
                    &pod_ref(&s),
                    present.then_some(ns.as_path()),
                    &port_mappings(&s.config),
                )
                .await?;
            blocking("remove netns", move || netns::remove(&ns)).await?;
            self.sandboxes.update(&s.id, |r| {
                r.netns_path.clear();
                Ok(())
            })?;
        }
        tracing::info!(sandbox = %s.id, "pod sandbox stopped");
        Ok(StopPodSandboxResponse {})
    }
}

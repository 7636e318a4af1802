//! The state-changing CRI calls, each in a task of its own ([`Detached`]): a caller that
//! goes away does not cut them short.

use std::future::Future;
use std::sync::Arc;

use taskd_proto::cri::v1 as cri;

use crate::cri::detach::Answer;
use crate::cri::error::CriError;
use crate::cri::service::CriService;
use crate::cri::store::container::ContainerState;
use crate::cri::store::sandbox::{SandboxState, sandbox_name};

/// The state-changing CRI calls, each in a task of its own (the server layer calls these).
impl CriService {
    pub async fn run_pod_sandbox_detached(
        self: Arc<Self>,
        req: cri::RunPodSandboxRequest,
    ) -> Result<cri::RunPodSandboxResponse, CriError> {
        let key = req.config.as_ref().and_then(|c| c.metadata.as_ref()).map(|m| {
            format!(
                "sandbox/{}",
                sandbox_name(&m.name, &m.namespace, &m.uid, m.attempt)
            )
        });
        let svc = self.clone();
        let ready = |id: &Answer| {
            self.sandboxes
                .get(id)
                .is_ok_and(|s| s.state == SandboxState::Ready)
        };
        let op = async move { svc.run_pod_sandbox(req).await.map(|r| r.pod_sandbox_id) };
        self.detached
            .run("RunPodSandbox", key, ready, op)
            .await
            .map(|pod_sandbox_id| cri::RunPodSandboxResponse { pod_sandbox_id })
    }

    pub async fn create_container_detached(
        self: Arc<Self>,
        req: cri::CreateContainerRequest,
    ) -> Result<cri::CreateContainerResponse, CriError> {
        let key = req
            .config
            .as_ref()
            .and_then(|c| c.metadata.as_ref())
            .map(|m| format!("container/{}/{}/{}", req.pod_sandbox_id, m.name, m.attempt));
        let svc = self.clone();
        let there = |id: &Answer| self.containers.get(id).is_ok();
        let op = async move { svc.create_container(req).await.map(|r| r.container_id) };
        self.detached
            .run("CreateContainer", key, there, op)
            .await
            .map(|container_id| cri::CreateContainerResponse { container_id })
    }

    pub async fn start_container_detached(
        self: Arc<Self>,
        req: cri::StartContainerRequest,
    ) -> Result<cri::StartContainerResponse, CriError> {
        let key = Some(format!("start/{}", req.container_id));
        let svc = self.clone();
        let running = |id: &Answer| {
            self.containers
                .get(id)
                .is_ok_and(|c| c.state == ContainerState::Running)
        };
        let id = req.container_id.clone();
        let op = async move { svc.start_container(req).await.map(|_| id) };
        self.detached
            .run("StartContainer", key, running, op)
            .await
            .map(|_| cri::StartContainerResponse {})
    }

    /// `call` on this service in a tracked task of its own: a caller that goes away leaves
    /// it running to its end (StopPodSandbox, RemovePodSandbox, StopContainer,
    /// RemoveContainer, PullImage: calls whose retry is idempotent).
    pub async fn detached<T, Fut>(
        self: Arc<Self>,
        what: &'static str,
        call: impl FnOnce(Arc<Self>) -> Fut,
    ) -> Result<T, CriError>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, CriError>> + Send + 'static,
    {
        let op = call(self.clone());
        self.detached.spawn_and_wait(what, op).await
    }
}

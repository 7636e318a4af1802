//! Calls of the k8s-cri client (kubelet's generated API) that several CRI tests make.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

/// CreateContainer + StartContainer, both expected to succeed; the container id.
pub async fn create_and_start(
    rt: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    pod_cfg: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> String {
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_cfg.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("StartContainer");
    id
}

/// `sh -c script` in a container through ExecSync (30 s), expected to answer: the response
/// (stdout, stderr, exit code).
pub async fn sh(rt: &mut RuntimeServiceClient<Channel>, id: &str, script: &str) -> cri::ExecSyncResponse {
    rt.exec_sync(cri::ExecSyncRequest {
        container_id: id.into(),
        cmd: vec!["sh".into(), "-c".into(), script.into()],
        timeout: 30,
    })
    .await
    .unwrap_or_else(|e| panic!("ExecSync {script:?}: {e:?}"))
    .into_inner()
}

pub async fn status(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> cri::ContainerStatus {
    rt.container_status(cri::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .expect("ContainerStatus")
    .into_inner()
    .status
    .unwrap()
}

/// PodSandboxStatus (not verbose) of pod `id`.
pub async fn pod_status(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> cri::PodSandboxStatus {
    rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap_or_else(|e| panic!("PodSandboxStatus {id}: {e:?}"))
    .into_inner()
    .status
    .unwrap()
}

/// Waits until the container has exited; returns its status.
pub async fn exited(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> cri::ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(rt, id).await;
        if s.state == cri::ContainerState::ContainerExited as i32 {
            return s;
        }
        assert!(Instant::now() < deadline, "container {id} did not exit: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// ContainerStats of one container, expected to answer with stats.
pub async fn container_stats(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> cri::ContainerStats {
    rt.container_stats(cri::ContainerStatsRequest {
        container_id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("ContainerStats {id}: {e:?}"))
    .into_inner()
    .stats
    .expect("ContainerStats answered without stats")
}

/// StopPodSandbox + RemovePodSandbox, both expected to succeed.
pub async fn stop_and_remove(rt: &mut RuntimeServiceClient<Channel>, pod: &str) {
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .expect("StopPodSandbox");
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .expect("RemovePodSandbox");
}

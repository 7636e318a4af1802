//! Store records → CRI messages, shared by the status and list RPCs.

use std::time::{SystemTime, UNIX_EPOCH};

use taskd_proto::cri::v1 as cri;

use crate::cri::store::container::{Container, ContainerState};
use crate::cri::store::sandbox::Sandbox;

/// Nanoseconds since the epoch (CRI timestamps); 0 for none.
pub fn nanos(t: Option<SystemTime>) -> i64 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
        .unwrap_or(0)
}

pub fn sandbox_state(s: &Sandbox) -> cri::PodSandboxState {
    if s.state.is_ready() {
        cri::PodSandboxState::SandboxReady
    } else {
        cri::PodSandboxState::SandboxNotready
    }
}

pub fn container_state(s: ContainerState) -> cri::ContainerState {
    match s {
        ContainerState::Created => cri::ContainerState::ContainerCreated,
        ContainerState::Running => cri::ContainerState::ContainerRunning,
        ContainerState::Exited => cri::ContainerState::ContainerExited,
        ContainerState::Unknown => cri::ContainerState::ContainerUnknown,
    }
}

pub fn pod_sandbox(s: &Sandbox) -> cri::PodSandbox {
    cri::PodSandbox {
        id: s.id.clone(),
        metadata: s.config.metadata.clone(),
        state: sandbox_state(s) as i32,
        created_at: nanos(Some(s.created_at)),
        labels: s.labels.clone(),
        annotations: s.annotations.clone(),
        runtime_handler: s.runtime_handler.clone(),
    }
}

pub fn pod_sandbox_status(s: &Sandbox) -> cri::PodSandboxStatus {
    let ns = s
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|c| c.namespace_options.clone());
    cri::PodSandboxStatus {
        id: s.id.clone(),
        metadata: s.config.metadata.clone(),
        state: sandbox_state(s) as i32,
        created_at: nanos(Some(s.created_at)),
        network: Some(cri::PodSandboxNetworkStatus {
            ip: s.ip.clone(),
            additional_ips: s
                .additional_ips
                .iter()
                .map(|ip| cri::PodIp { ip: ip.clone() })
                .collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace { options: ns }),
        }),
        labels: s.labels.clone(),
        annotations: s.annotations.clone(),
        runtime_handler: s.runtime_handler.clone(),
    }
}

fn image_spec(c: &Container) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: c.image.clone(),
        user_specified_image: c
            .config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default(),
        ..Default::default()
    })
}

pub fn container(c: &Container) -> cri::Container {
    cri::Container {
        id: c.id.clone(),
        pod_sandbox_id: c.sandbox_id.clone(),
        metadata: c.config.metadata.clone(),
        image: image_spec(c),
        image_ref: c.image_ref.clone(),
        state: container_state(c.state) as i32,
        created_at: nanos(Some(c.created_at)),
        labels: c.labels.clone(),
        annotations: c.annotations.clone(),
        image_id: c.image_ref.clone(),
    }
}

pub fn container_status(c: &Container) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: c.id.clone(),
        metadata: c.config.metadata.clone(),
        state: container_state(c.state) as i32,
        created_at: nanos(Some(c.created_at)),
        started_at: nanos(c.started_at),
        finished_at: nanos(c.exit.finished_at),
        exit_code: c.exit.code,
        image: image_spec(c),
        image_ref: c.image_ref.clone(),
        reason: c.exit.reason.clone(),
        message: c.exit.message.clone(),
        labels: c.labels.clone(),
        annotations: c.annotations.clone(),
        mounts: c.config.mounts.clone(),
        log_path: c.log_path.clone(),
        resources: c
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .map(|r| cri::ContainerResources {
                linux: Some(r),
                windows: None,
            }),
        image_id: c.image_ref.clone(),
        user: c.user.as_ref().map(|u| cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: i64::from(u.uid),
                gid: i64::from(u.gid),
                supplemental_groups: u.additional_gids.iter().map(|g| i64::from(*g)).collect(),
            }),
        }),
        stop_signal: c.config.stop_signal,
    }
}

/// Whether every `label_selector` pair is among `labels`.
pub fn labels_match(
    labels: &std::collections::HashMap<String, String>,
    selector: &std::collections::HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

//! `CriService`: the state every CRI handler works on (config, stores, CNI, runtime
//! state). Handlers live in `server/<noun>/<rpc>.rs` as `impl CriService` blocks.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use super::config::CriConfig;
use super::container_events::ContainerEvents;
use super::network::Cni;
use super::store::Store;
use super::store::container::Container;
use super::store::image::ImageStore;
use super::store::sandbox::Sandbox;

/// What UpdateRuntimeConfig set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeState {
    /// The node's pod CIDR, as kubelet last sent it ("" until then).
    pub pod_cidr: String,
}

/// The CRI plugin's state.
pub struct CriService {
    pub config: CriConfig,
    pub sandboxes: Store<Sandbox>,
    pub containers: Store<Container>,
    pub images: ImageStore,
    pub cni: Cni,
    /// `<state>/netns`: pinned pod network namespaces.
    pub netns_dir: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub runtime: RwLock<RuntimeState>,
    /// The GetContainerEvents feed.
    pub events: ContainerEvents,
    /// Runs pause containers; None when the services it needs are not on this build.
    pub controller: Option<std::sync::Arc<dyn super::controller::SandboxController>>,
    /// Runs app containers; None when the services it needs are not on this build.
    pub runner: Option<std::sync::Arc<dyn super::controller::ContainerRuntime>>,
    /// Pulls and lists images; None when the services it needs are not on this build.
    pub image_backend: Option<std::sync::Arc<dyn super::controller::ImageBackend>>,
    /// Each container's stdio fifos and log copiers, by container id.
    pub ios: std::sync::Mutex<std::collections::HashMap<String, super::io::ContainerIo>>,
    /// taskd's own oom_score_adj: nothing taskd starts gets a lower one.
    pub min_oom_score_adj: i32,
    /// Pod start and image pull metrics.
    pub metrics: super::metrics::CriMetrics,
    /// When this instance was made: an exit from before it is one found at recovery.
    pub started_at: std::time::SystemTime,
    /// Each runtime handler's features, probed at start (empty: none supported).
    pub handler_features: std::collections::HashMap<String, super::features::HandlerFeatures>,
    /// The streaming server's token cache and URL (Exec/Attach/PortForward); None until
    /// the plugin bound it.
    pub streaming: Option<std::sync::Arc<super::streaming::Front>>,
    /// The last CPU sample per container (time, cumulative ns), for `usage_nano_cores`.
    pub cpu_samples: std::sync::Mutex<std::collections::HashMap<String, (std::time::SystemTime, u64)>>,
    /// The state-changing calls' own tasks, and the answers their retries may claim.
    pub detached: super::detach::Detached,
}

impl CriService {
    /// `root`/`state`: the plugin's own directories.
    pub fn new(config: CriConfig, root: &Path, state: &Path, events: ContainerEvents) -> CriService {
        let cni = Cni::new(&config.cni, state.join("cni-cache"));
        CriService {
            events,
            controller: None,
            runner: None,
            image_backend: None,
            ios: std::sync::Mutex::new(std::collections::HashMap::new()),
            min_oom_score_adj: own_oom_score_adj(),
            metrics: super::metrics::CriMetrics::new().expect("static metric definitions are valid"),
            started_at: std::time::SystemTime::now(),
            cpu_samples: std::sync::Mutex::new(std::collections::HashMap::new()),
            handler_features: std::collections::HashMap::new(),
            streaming: None,
            detached: super::detach::Detached::default(),
            sandboxes: Store::default(),
            containers: Store::default(),
            images: ImageStore::default(),
            cni,
            netns_dir: state.join("netns"),
            root: root.to_owned(),
            state: state.to_owned(),
            runtime: RwLock::new(RuntimeState::default()),
            config,
        }
    }

    /// Replaces the memory-only pod and container stores with persistent ones under the
    /// plugin's root (`sandboxes/`, `containers/`), loaded with what a previous run left.
    /// Returns the record files that could not be loaded (the caller logs them).
    pub fn open_stores(&mut self) -> Result<Vec<super::store::Skipped>, super::store::StoreError> {
        let (sandboxes, mut skipped) = Store::open(&self.root.join("sandboxes"))?;
        let (containers, more) = Store::open(&self.root.join("containers"))?;
        skipped.extend(more);
        self.sandboxes = sandboxes;
        self.containers = containers;
        Ok(skipped)
    }

    /// The sandbox controller, or Unimplemented naming what is missing.
    pub fn controller(
        &self,
        rpc: &'static str,
    ) -> Result<std::sync::Arc<dyn super::controller::SandboxController>, super::CriError> {
        self.controller.clone().ok_or(super::CriError::Unimplemented {
            rpc,
            missing: super::server::unimplemented::LIFECYCLE,
        })
    }

    /// The container runtime, or Unimplemented naming what is missing.
    pub fn container_runtime(
        &self,
        rpc: &'static str,
    ) -> Result<std::sync::Arc<dyn super::controller::ContainerRuntime>, super::CriError> {
        self.runner.clone().ok_or(super::CriError::Unimplemented {
            rpc,
            missing: super::server::unimplemented::LIFECYCLE,
        })
    }

    /// The image backend, or Unimplemented naming what is missing.
    pub fn image_backend(
        &self,
        rpc: &'static str,
    ) -> Result<std::sync::Arc<dyn super::controller::ImageBackend>, super::CriError> {
        self.image_backend.clone().ok_or(super::CriError::Unimplemented {
            rpc,
            missing: super::server::unimplemented::IMAGES,
        })
    }

    /// The streaming server's front (token cache + URL), or an error saying it is absent.
    pub fn streaming(&self) -> Result<&super::streaming::Front, super::CriError> {
        self.streaming.as_deref().ok_or(super::CriError::Streaming(
            super::streaming::StreamingError::NotRunning,
        ))
    }

    /// `<state>/containers/<id>`: a container's stdio fifos.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.state.join("containers").join(id)
    }

    /// `<state>/podns/<id>`: the pinned IPC/UTS namespaces of a pod without a pause
    /// container.
    pub fn podns_dir(&self, id: &str) -> PathBuf {
        self.state.join("podns").join(id)
    }

    /// `<state>/sandboxes/<id>`: the pod's files (resolv.conf, hostname, hosts).
    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.state.join("sandboxes").join(id)
    }

    pub fn runtime_state(&self) -> RuntimeState {
        self.runtime.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Emits a container event carrying the pod's status and its containers' statuses
    /// (as kubelet's evented PLEG expects). `status` is the container's last state when it
    /// is already gone from the store (DELETED).
    pub fn emit_container_event(
        &self,
        container_id: &str,
        sandbox_id: &str,
        kind: taskd_proto::cri::v1::ContainerEventType,
    ) {
        self.events
            .emit(self.container_event(container_id, sandbox_id, kind));
    }

    /// A container event carrying the pod's status and its containers' statuses (as
    /// kubelet's evented PLEG expects).
    pub fn container_event(
        &self,
        container_id: &str,
        sandbox_id: &str,
        kind: taskd_proto::cri::v1::ContainerEventType,
    ) -> taskd_proto::cri::v1::ContainerEventResponse {
        use super::server::convert;
        let pod_sandbox_status = self
            .sandboxes
            .get(sandbox_id)
            .ok()
            .map(|s| convert::pod_sandbox_status(&s));
        let containers_statuses = self
            .containers
            .list()
            .iter()
            .filter(|c| c.sandbox_id == sandbox_id)
            .map(convert::container_status)
            .collect();
        taskd_proto::cri::v1::ContainerEventResponse {
            container_id: container_id.to_owned(),
            container_event_type: kind as i32,
            created_at: convert::nanos(Some(std::time::SystemTime::now())),
            pod_sandbox_status,
            containers_statuses,
        }
    }
}

/// `/proc/self/oom_score_adj` (0 when unreadable).
fn own_oom_score_adj() -> i32 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Records and a service for handler unit tests.
    use std::collections::HashMap;
    use std::time::{Duration, SystemTime};

    use taskd_proto::cri::v1 as cri;

    use super::*;
    use crate::cri::store::container::{ContainerState, Exit};
    use crate::cri::store::sandbox::{HostNamespaces, SandboxState};

    pub fn service(dir: &Path) -> CriService {
        CriService::new(
            CriConfig::default(),
            &dir.join("root"),
            &dir.join("state"),
            ContainerEvents::new().unwrap(),
        )
    }

    pub fn sandbox(id: &str, name: &str, state: SandboxState, labels: &[(&str, &str)], age: u64) -> Sandbox {
        Sandbox {
            id: id.into(),
            name: format!("{name}_default_uid-{id}_0"),
            pod_name: name.into(),
            pod_namespace: "default".into(),
            pod_uid: format!("uid-{id}"),
            attempt: 0,
            runtime_handler: String::new(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: HashMap::new(),
            created_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 - age),
            state,
            netns_path: String::new(),
            ip: "10.88.0.2".into(),
            additional_ips: vec![],
            host: HostNamespaces::default(),
            infra: true,
            ipc_ns_path: String::new(),
            uts_ns_path: String::new(),
            pid: 0,
            cgroup_parent: String::new(),
            config: cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: name.into(),
                    uid: format!("uid-{id}"),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                ..Default::default()
            },
        }
    }

    pub fn container(id: &str, sandbox: &str, state: ContainerState, labels: &[(&str, &str)]) -> Container {
        Container {
            id: id.into(),
            name: format!("{id}_pod"),
            sandbox_id: sandbox.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: HashMap::new(),
            image: "docker.io/library/busybox:latest".into(),
            image_ref: "sha256:abc".into(),
            log_path: String::new(),
            created_at: SystemTime::now(),
            started_at: None,
            state,
            pid: 0,
            exit: Exit::default(),
            log: None,
            user: None,
            config: cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: id.into(),
                    attempt: 0,
                }),
                ..Default::default()
            },
        }
    }
}

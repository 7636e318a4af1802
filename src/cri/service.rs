//! `CriService`: the state every CRI handler works on (config, stores, CNI, runtime
//! state). Handlers live in `server/<noun>/<rpc>.rs` as `impl CriService` blocks.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use std::collections::BTreeMap;

use super::config::{CniConfig, CriConfig, RuntimeHandler};
use super::container_events::ContainerEvents;
use super::network::Cni;
use super::store::Store;
use super::store::container::Container;
use super::store::image::ImageStore;
use super::store::sandbox::Sandbox;

/// The part of the config a reload replaces.
struct Live {
    runtimes: BTreeMap<String, RuntimeHandler>,
    cni_config: CniConfig,
    cni: Cni,
}

/// What a reload did, for the daemon's log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Changes made: `runtimes.kata added`, `cni replaced`, ...
    pub applied: Vec<String>,
    /// Handlers kept although the new config drops them: pods use them.
    pub kept: Vec<String>,
    /// Keys whose new value needs a restart (the running value stays).
    pub not_live: Vec<String>,
}

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
    /// The runtime handlers and the CNI manager: replaced by [`CriService::reload`] (SIGHUP).
    live: RwLock<Live>,
    /// `<state>/netns`: pinned pod network namespaces.
    pub netns_dir: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub runtime: RwLock<RuntimeState>,
    /// The GetContainerEvents feed.
    pub events: ContainerEvents,
    /// Runs pause containers; None when the services it needs are not on this build.
    pub controller: Option<std::sync::Arc<dyn crate::cri::backend::contract::SandboxController>>,
    /// Runs app containers; None when the services it needs are not on this build.
    pub runner: Option<std::sync::Arc<dyn crate::cri::backend::contract::ContainerRuntime>>,
    /// Pulls and lists images; None when the services it needs are not on this build.
    pub image_backend: Option<std::sync::Arc<dyn crate::cri::backend::contract::ImageBackend>>,
    /// Each container's stdio fifos and log copiers, by container id.
    pub ios: std::sync::Mutex<std::collections::HashMap<String, super::io::ContainerIo>>,
    /// taskd's own oom_score_adj: nothing taskd starts gets a lower one.
    pub min_oom_score_adj: i32,
    /// Pod start and image pull metrics.
    pub metrics: super::metrics::CriMetrics,
    /// When this instance was made: an exit from before it is one found at recovery.
    pub started_at: std::time::SystemTime,
    /// Each runtime handler's features, probed at start while recovery runs (unset or a
    /// handler missing: none supported); see [`CriService::handler_features`].
    pub handler_features:
        std::sync::OnceLock<std::collections::HashMap<String, super::features::HandlerFeatures>>,
    /// The streaming server's token cache and URL (Exec/Attach/PortForward); None until
    /// the plugin bound it.
    pub streaming: Option<std::sync::Arc<crate::cri::stream_front::Front>>,
    /// The last CPU sample per container (time, cumulative ns), for `usage_nano_cores`.
    pub cpu_samples: std::sync::Mutex<std::collections::HashMap<String, (std::time::SystemTime, u64)>>,
    /// The state-changing calls' own tasks, and the answers their retries may claim.
    pub detached: super::detach::Detached,
}

impl CriService {
    /// `root`/`state`: the plugin's own directories.
    #[expect(
        clippy::expect_used,
        reason = "static metric definitions: valid or a bug caught by every test"
    )]
    pub fn new(config: CriConfig, root: &Path, state: &Path, events: ContainerEvents) -> CriService {
        let metrics = super::metrics::CriMetrics::new().expect("static metric definitions are valid");
        let cni = Cni::new(&config.cni, state.join("cni-cache")).with_metrics(metrics.cni.clone());
        CriService {
            events,
            controller: None,
            runner: None,
            image_backend: None,
            ios: std::sync::Mutex::new(std::collections::HashMap::new()),
            min_oom_score_adj: own_oom_score_adj(),
            metrics,
            started_at: std::time::SystemTime::now(),
            cpu_samples: std::sync::Mutex::new(std::collections::HashMap::new()),
            handler_features: std::sync::OnceLock::new(),
            streaming: None,
            detached: super::detach::Detached::default(),
            sandboxes: Store::default(),
            containers: Store::default(),
            images: ImageStore::default(),
            live: RwLock::new(Live {
                runtimes: config.runtimes.clone(),
                cni_config: config.cni.clone(),
                cni,
            }),
            netns_dir: state.join("netns"),
            root: root.to_owned(),
            state: state.to_owned(),
            runtime: RwLock::new(RuntimeState::default()),
            config,
        }
    }

    fn live(&self) -> std::sync::RwLockReadGuard<'_, Live> {
        self.live
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The handler a pod names ("" = `default_runtime`), with its name.
    pub fn handler(&self, name: &str) -> Option<(String, RuntimeHandler)> {
        let key = if name.is_empty() {
            self.config.default_runtime.as_str()
        } else {
            name
        };
        self.live().runtimes.get(key).map(|h| (key.to_owned(), h.clone()))
    }

    /// The configured runtime handler names.
    pub fn handler_names(&self) -> Vec<String> {
        self.live().runtimes.keys().cloned().collect()
    }

    /// The CNI manager in force (a clone: no lock is held while plugins run).
    pub fn cni(&self) -> Cni {
        self.live().cni.clone()
    }

    /// Applies a new CRI config table (already checked by `taskd config check`'s rules):
    /// runtime handlers are added, changed or removed (a handler a pod uses is kept), the
    /// CNI settings replaced; every other key that differs is named in `not_live`.
    pub fn reload(&self, new: CriConfig) -> ReloadReport {
        let new = new.with_default_runtimes();
        let mut report = ReloadReport::default();
        let in_use: std::collections::BTreeSet<String> = self
            .sandboxes
            .list()
            .into_iter()
            .map(|s| {
                if s.runtime_handler.is_empty() {
                    self.config.default_runtime.clone()
                } else {
                    s.runtime_handler
                }
            })
            .collect();
        {
            let mut live = self
                .live
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let old = live.runtimes.clone();
            for (name, h) in &new.runtimes {
                match old.get(name) {
                    None => report.applied.push(format!("runtimes.{name} added")),
                    Some(o) if o != h => report.applied.push(format!("runtimes.{name} changed")),
                    Some(_) => {}
                }
                live.runtimes.insert(name.clone(), h.clone());
            }
            for name in old.keys().filter(|n| !new.runtimes.contains_key(*n)) {
                if in_use.contains(name) || *name == self.config.default_runtime {
                    report.kept.push(name.clone());
                } else {
                    live.runtimes.remove(name);
                    report.applied.push(format!("runtimes.{name} removed"));
                }
            }
            if new.cni != live.cni_config {
                let metrics = self.metrics.cni.clone();
                live.cni = Cni::new(&new.cni, self.state.join("cni-cache")).with_metrics(metrics);
                live.cni_config = new.cni.clone();
                report.applied.push("cni replaced".to_owned());
            }
        }
        // Everything else: compared as TOML tables, key by key.
        let mut rest = new.clone();
        rest.runtimes = self.config.runtimes.clone();
        rest.cni = self.config.cni.clone();
        if let (Ok(a), Ok(b)) = (toml::Table::try_from(&self.config), toml::Table::try_from(&rest)) {
            for (k, v) in &b {
                if a.get(k) != Some(v) {
                    report.not_live.push(k.clone());
                }
            }
        }
        report
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
    ) -> Result<
        std::sync::Arc<dyn crate::cri::backend::contract::SandboxController>,
        crate::cri::error::CriError,
    > {
        self.controller
            .clone()
            .ok_or(crate::cri::error::CriError::Unimplemented {
                rpc,
                missing: crate::cri::unimplemented::LIFECYCLE,
            })
    }

    /// The container runtime, or Unimplemented naming what is missing.
    pub fn container_runtime(
        &self,
        rpc: &'static str,
    ) -> Result<
        std::sync::Arc<dyn crate::cri::backend::contract::ContainerRuntime>,
        crate::cri::error::CriError,
    > {
        self.runner
            .clone()
            .ok_or(crate::cri::error::CriError::Unimplemented {
                rpc,
                missing: crate::cri::unimplemented::LIFECYCLE,
            })
    }

    /// The image backend, or Unimplemented naming what is missing.
    pub fn image_backend(
        &self,
        rpc: &'static str,
    ) -> Result<std::sync::Arc<dyn crate::cri::backend::contract::ImageBackend>, crate::cri::error::CriError>
    {
        self.image_backend
            .clone()
            .ok_or(crate::cri::error::CriError::Unimplemented {
                rpc,
                missing: crate::cri::unimplemented::IMAGES,
            })
    }

    /// The streaming server's front (token cache + URL), or an error saying it is absent.
    pub fn streaming(&self) -> Result<&crate::cri::stream_front::Front, crate::cri::error::CriError> {
        self.streaming
            .as_deref()
            .ok_or(crate::cri::error::CriError::Streaming(
                crate::cri::stream_front::StreamingError::NotRunning,
            ))
    }

    /// What runtime handler `name` supports (nothing when it was not probed).
    pub fn handler_features(&self, name: &str) -> super::features::HandlerFeatures {
        self.handler_features
            .get()
            .and_then(|all| all.get(name))
            .copied()
            .unwrap_or_default()
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
        self.runtime
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
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
        use crate::cri::convert;
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

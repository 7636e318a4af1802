//! `RunPodSandbox`.
//!
//! ```text
//! validate config + runtime handler (unknown handler → InvalidArgument)
//! reserve id + name            (store: Initializing; a name in use → AlreadyExists)
//! netns::create_at             <state>/netns/cni-<id>, recorded with the record (unless
//!                              hostNetwork; lo is brought up there); userns POD:
//!                              userns::pin makes it inside the pod's user namespace
//!                              (<state>/podns/<id>/user, + IPC/UTS without a pause container)
//! with a pause container (the pod shares one PID namespace, or drop_infra_container = false),
//! at the same time, both run to the end:
//!   Cni::setup                 (networks; IPs recorded)
//!   pod files                  (resolv.conf from dns_config, hostname, hosts; the /dev/shm
//!                               tmpfs unless host IPC)
//!   controller.ensure_image(sandbox_image) → spec::sandbox → controller.start → pid
//! without one (podns):
//!   Cni::setup, then podns::pin (IPC + UTS namespaces, hostname, sysctls) and pod files
//! store: Ready
//! ```
//!
//! Any failure rolls back what was done, in reverse (pause container or pinned namespaces,
//! CNI, netns, files, the record): a failed CNI ADD leaves no netns, no shim and no pause
//! container. When the rollback fails too, both errors are reported.

use std::path::PathBuf;
use std::time::SystemTime;

use taskd_proto::cri::v1::{NamespaceMode, PodSandboxConfig, RunPodSandboxRequest, RunPodSandboxResponse};

use crate::cri::backend::contract::StartSandbox;
use crate::cri::error::CriError;
use crate::cri::error::blocking;
use crate::cri::network::{PodRef, PortMapping, netns};
use crate::cri::service::CriService;
use crate::cri::spec::UsernsSpec;
use crate::cri::spec::sandbox::{SandboxInput, pod_namespace_modes, sandbox_spec};
use crate::cri::store::sandbox::{HostNamespaces, Sandbox, SandboxState, sandbox_name};
use crate::cri::{podfiles, podns, userns};
use crate::rollback::Rollback;

/// A new 64-hex-digit id (containerd's `GenerateID`).
pub fn new_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

pub(crate) fn pod_ref(s: &Sandbox) -> PodRef {
    PodRef {
        sandbox_id: s.id.clone(),
        name: s.pod_name.clone(),
        namespace: s.pod_namespace.clone(),
        uid: s.pod_uid.clone(),
    }
}

pub(crate) fn port_mappings(cfg: &PodSandboxConfig) -> Vec<PortMapping> {
    cfg.port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| PortMapping {
            host_port: p.host_port,
            container_port: p.container_port,
            protocol: match taskd_proto::cri::v1::Protocol::try_from(p.protocol) {
                Ok(taskd_proto::cri::v1::Protocol::Udp) => "udp",
                Ok(taskd_proto::cri::v1::Protocol::Sctp) => "sctp",
                _ => "tcp",
            }
            .to_owned(),
            host_ip: p.host_ip.clone(),
        })
        .collect()
}

fn required(field: &'static str, v: &str) -> Result<(), CriError> {
    if v.is_empty() {
        return Err(CriError::InvalidArgument {
            field,
            reason: "must not be empty".into(),
        });
    }
    Ok(())
}

impl CriService {
    pub async fn run_pod_sandbox(
        &self,
        req: RunPodSandboxRequest,
    ) -> Result<RunPodSandboxResponse, CriError> {
        let cfg = req.config.ok_or(CriError::InvalidArgument {
            field: "config",
            reason: "must be set".into(),
        })?;
        let md = cfg.metadata.clone().ok_or(CriError::InvalidArgument {
            field: "config.metadata",
            reason: "must be set".into(),
        })?;
        required("config.metadata.name", &md.name)?;
        required("config.metadata.namespace", &md.namespace)?;
        required("config.metadata.uid", &md.uid)?;
        let (handler_name, handler) =
            self.handler(&req.runtime_handler)
                .ok_or_else(|| CriError::UnknownHandler {
                    handler: req.runtime_handler.clone(),
                    known: self.handler_names().join(", "),
                })?;
        // Bad input is refused before anything else, even on a build without a controller.
        let controller = self.controller("RunPodSandbox")?;
        let (net, pid, ipc) = pod_namespace_modes(&cfg);
        let host = HostNamespaces {
            network: net == NamespaceMode::Node,
            pid: pid == NamespaceMode::Node,
            ipc: ipc == NamespaceMode::Node,
        };
        // A pod whose containers share one PID namespace needs a process to hold it.
        let infra = !self.config.drop_infra_container || pid == NamespaceMode::Pod;
        let userns = self.pod_userns(&cfg, &handler_name, host)?;
        if !infra {
            // taskd sets the sysctls itself: refuse a bad one before anything is set up.
            for key in cfg.linux.iter().flat_map(|l| l.sysctls.keys()) {
                podns::sysctl_path(key, host.network, host.ipc)?;
            }
        }
        let id = new_id();
        // Named by the sandbox and recorded from the first write of the record: a
        // RunPodSandbox cut short by a crash leaves a record whose Stop/Remove finds it.
        let netns_target = (!host.network).then(|| self.netns_dir.join(format!("cni-{id}")));
        let record = Sandbox {
            id: id.clone(),
            name: sandbox_name(&md.name, &md.namespace, &md.uid, md.attempt),
            pod_name: md.name.clone(),
            pod_namespace: md.namespace.clone(),
            pod_uid: md.uid.clone(),
            attempt: md.attempt,
            runtime_handler: req.runtime_handler.clone(),
            labels: cfg.labels.clone(),
            annotations: cfg.annotations.clone(),
            created_at: SystemTime::now(),
            state: SandboxState::Initializing,
            netns_path: netns_target
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            ip: String::new(),
            additional_ips: Vec::new(),
            host,
            infra,
            ipc_ns_path: String::new(),
            uts_ns_path: String::new(),
            pid: 0,
            cgroup_parent: cfg
                .linux
                .as_ref()
                .map(|l| l.cgroup_parent.clone())
                .unwrap_or_default(),
            config: cfg.clone(),
        };
        self.sandboxes.add(record.clone())?;

        // Undone in reverse: the pause container or pinned namespaces, CNI, the netns, the
        // pod files, the record. Each place is filled just before its step begins (a step
        // cut short is undone too); the order is fixed here.
        let mut rollback = Rollback::new(format!("run pod sandbox {id}"));
        rollback.defer("forget the sandbox record", || async {
            self.sandboxes.remove(&id);
            Ok(())
        });
        let files_slot = rollback.reserve("remove the pod files");
        let netns_slot = rollback.reserve("remove the netns");
        let cni_slot = rollback.reserve("tear the pod network down");
        let podns_slot = rollback.reserve("unpin the pod namespaces");
        let pause_slot = rollback.reserve("stop and delete the pause container");
        let remove_files = || async { podfiles::remove(&self.sandbox_dir(&id)).map_err(CriError::from) };
        let unpin = || {
            let dir = self.podns_dir(&id);
            async move {
                tokio::task::spawn_blocking(move || podns::unpin(&dir))
                    .await
                    .unwrap_or(Err(podns::PodNsError::Thread))
                    .map_err(CriError::from)
            }
        };
        let teardown = |ns: PathBuf| {
            let record = &record;
            move || async move {
                self.cni()
                    .teardown(&pod_ref(record), Some(&ns), &port_mappings(&record.config))
                    .await
                    .map_err(CriError::from)
            }
        };
        let began = std::time::Instant::now();
        let result = async {
            let netns_path = match netns_target {
                None => None,
                Some(p) => {
                    let target = p.clone();
                    match userns {
                        None => blocking("create netns", move || netns::create_at(&target)).await?,
                        Some(map) => {
                            // The netns (and the IPC/UTS namespaces taskd pins) are made
                            // inside the pod's user namespace, which owns them.
                            let dir = self.podns_dir(&id);
                            let pins = userns::Pins {
                                user: userns::pin_path(&dir),
                                net: Some(target),
                                ipc: (!infra && !host.ipc).then(|| dir.join("ipc")),
                                uts: (!infra && !host.network).then(|| dir.join("uts")),
                            };
                            rollback.fill(&podns_slot, unpin);
                            blocking("create the pod's user namespace", move || {
                                userns::pin(&pins, &map)
                            })
                            .await?;
                        }
                    }
                    let ns = p.clone();
                    rollback.fill(&netns_slot, || async move {
                        // A panicked removal is not reported (it never was).
                        match tokio::task::spawn_blocking(move || netns::remove(&ns)).await {
                            Ok(Err(e)) => Err(e.into()),
                            _ => Ok(()),
                        }
                    });
                    Some(p)
                }
            };
            if !infra {
                let t_cni = std::time::Instant::now();
                let ips = match &netns_path {
                    Some(ns) => {
                        rollback.fill(&cni_slot, teardown(ns.clone()));
                        self.cni()
                            .setup(&pod_ref(&record), ns, &port_mappings(&cfg))
                            .await?
                            .ips
                    }
                    None => Vec::new(),
                };
                // After CNI: a sysctl may name the pod's interface.
                rollback.fill(&podns_slot, unpin);
                rollback.fill(&files_slot, remove_files);
                let t_pin = std::time::Instant::now();
                let pinned = self
                    .pin_pod_namespaces(&id, &cfg, host, netns_path.clone(), userns.is_some())
                    .await?;
                tracing::debug!(
                    sandbox = %id,
                    netns_us = (t_cni - began).as_micros() as u64,
                    cni_us = (t_pin - t_cni).as_micros() as u64,
                    pin_us = t_pin.elapsed().as_micros() as u64,
                    "pod set up without a pause container"
                );
                return Ok::<_, CriError>((0, netns_path.map(|p| p.display().to_string()), ips, pinned));
            }
            // The network (CNI ADD: plugin processes, netlink) and the pause container
            // (pod files, image, shim, runc) are independent once the netns exists: they
            // run at the same time, and both finish before the outcome is decided, so the
            // rollback always sees a settled state.
            if let Some(ns) = &netns_path {
                rollback.fill(&cni_slot, teardown(ns.clone()));
            }
            rollback.fill(&files_slot, remove_files);
            rollback.fill(&pause_slot, || async {
                // The pause container may be running (it starts while CNI sets up).
                controller.stop(&id).await?;
                controller.delete(&id).await
            });
            let network = async {
                match &netns_path {
                    Some(ns) => Ok(self
                        .cni()
                        .setup(&pod_ref(&record), ns, &port_mappings(&cfg))
                        .await?
                        .ips),
                    None => Ok::<_, CriError>(Vec::new()),
                }
            };
            let netns_str = netns_path.as_ref().map(|p| p.display().to_string());
            let pause = async {
                let hostname = if host.network {
                    String::new()
                } else {
                    cfg.hostname.clone()
                };
                let dir = self.sandbox_dir(&id);
                let dns = cfg.dns_config.clone();
                let shared_ipc = !host.ipc;
                blocking("write pod files", move || {
                    podfiles::write(&dir, dns.as_ref(), &hostname)?;
                    if shared_ipc {
                        podfiles::mount_shm(&dir)?;
                    }
                    Ok::<_, podfiles::PodFilesError>(())
                })
                .await?;
                let image = controller.ensure_image(&self.config.sandbox_image).await?;
                let user_pin = userns::pin_path(&self.podns_dir(&id)).display().to_string();
                let spec = sandbox_spec(&SandboxInput {
                    id: &id,
                    config: &cfg,
                    image: &image.config,
                    netns_path: netns_str.as_deref(),
                    driver: self.config.cgroup_driver,
                    min_oom_score_adj: self.min_oom_score_adj,
                    pod_annotations: &handler.pod_annotations,
                    userns: userns.map(|map| UsernsSpec { path: &user_pin, map }),
                })?;
                controller
                    .start(StartSandbox {
                        id: id.clone(),
                        image,
                        spec,
                        handler: handler.clone(),
                    })
                    .await
            };
            let (ips, pid) = tokio::join!(network, pause);
            let (ips, pid) = (ips?, pid?);
            Ok::<_, CriError>((pid, netns_str, ips, podns::Pinned::default()))
        }
        .await;

        match result {
            Ok((pid, netns_str, ips, pinned)) => {
                rollback.disarm();
                let path = |p: Option<PathBuf>| p.map(|p| p.display().to_string()).unwrap_or_default();
                self.sandboxes.update(&id, |s| {
                    s.pid = pid;
                    s.ipc_ns_path = path(pinned.ipc.clone());
                    s.uts_ns_path = path(pinned.uts.clone());
                    s.netns_path = netns_str.unwrap_or_default();
                    s.ip = ips.first().cloned().unwrap_or_default();
                    s.additional_ips = ips.iter().skip(1).cloned().collect();
                    s.transition(SandboxState::Ready)
                })?;
                tracing::info!(sandbox = %id, pod = %record.name, pid, infra, "pod sandbox running");
                Ok(RunPodSandboxResponse { pod_sandbox_id: id })
            }
            Err(error) => match rollback.run().await {
                Ok(()) => Err(error),
                Err(cleanup) => Err(CriError::Rollback {
                    error: Box::new(error),
                    cleanup: Box::new(cleanup),
                }),
            },
        }
    }

    /// The pod files and the pinned IPC/UTS namespaces (with hostname and sysctls) of a pod
    /// without a pause container.
    async fn pin_pod_namespaces(
        &self,
        id: &str,
        cfg: &PodSandboxConfig,
        host: HostNamespaces,
        netns: Option<PathBuf>,
        joined: bool,
    ) -> Result<podns::Pinned, CriError> {
        let hostname = if host.network {
            String::new()
        } else {
            cfg.hostname.clone()
        };
        let (files_dir, ns_dir) = (self.sandbox_dir(id), self.podns_dir(id));
        let dns = cfg.dns_config.clone();
        let sysctls = cfg.linux.as_ref().map(|l| l.sysctls.clone()).unwrap_or_default();
        blocking("pin pod namespaces", move || {
            podfiles::write(&files_dir, dns.as_ref(), &hostname)?;
            if !host.ipc {
                podfiles::mount_shm(&files_dir)?;
            }
            podns::pin(
                &ns_dir,
                &podns::PinRequest {
                    netns: netns.as_deref(),
                    ipc: !host.ipc,
                    uts: !host.network,
                    hostname: &hostname,
                    sysctls: &sysctls,
                    joined,
                },
            )
            .map_err(CriError::from)
        })
        .await
    }

    /// The user namespace the pod asks for, refused (InvalidArgument, before anything is set
    /// up) when the handler was not probed to support it or the pod also asks for a host
    /// namespace (those are owned by the host's user namespace, which the pod's processes
    /// could not join, and sysfs needs a netns its user namespace owns).
    fn pod_userns(
        &self,
        cfg: &PodSandboxConfig,
        handler_name: &str,
        host: HostNamespaces,
    ) -> Result<Option<userns::PodUserns>, CriError> {
        let Some(map) = userns::of_pod(cfg)? else {
            return Ok(None);
        };
        let refuse = |reason: String| {
            Err(CriError::InvalidArgument {
                field: "config.linux.security_context.namespace_options.userns_options",
                reason,
            })
        };
        if !self.handler_features(handler_name).user_namespaces {
            return refuse(format!(
                "runtime handler {handler_name:?} does not support user namespaces (see Status features)"
            ));
        }
        if host.network || host.pid || host.ipc {
            return refuse(
                "a pod in its own user namespace cannot use the host's network, PID or IPC namespace".into(),
            );
        }
        Ok(Some(map))
    }
}

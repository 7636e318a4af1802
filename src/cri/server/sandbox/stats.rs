//! `PodSandboxStats` / `ListPodSandboxStats` / `StreamPodSandboxStats`.
//!
//! ```text
//! pod cpu, memory, process count = Σ (pause task + running containers' tasks) cgroup samples
//! pod cpu.usage_nano_cores       = Δ of that sum since the pod's previous sample
//! pod network                    = /proc/<pause pid>/net/dev (the pod's netns; not for
//!                                  hostNetwork pods, whose interfaces are the node's)
//! containers                     = each container's ContainerStats
//! ```
//!
//! One task-metrics call covers every pod asked for. A pod that is not ready reports its
//! attributes and its containers only.

use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

use taskd_proto::cri::v1 as cri;

use super::super::container::stats::{memory_usage, u};
use crate::cri::convert::{labels_match, nanos};
use crate::cri::error::CriError;
use crate::cri::service::CriService;
use crate::cri::stats::{NetDev, Sample, decode_all, net_dev_of};
use crate::cri::store::container::{Container, ContainerState};
use crate::cri::store::sandbox::{Sandbox, SandboxState};

/// The key of a pod's previous CPU sample in `CriService::cpu_samples`.
pub(crate) fn sample_key(pod_id: &str) -> String {
    format!("pod/{pod_id}")
}

/// The interface kubelet treats as the pod's default one.
const DEFAULT_INTERFACE: &str = "eth0";

fn interface(d: &NetDev) -> cri::NetworkInterfaceUsage {
    cri::NetworkInterfaceUsage {
        name: d.name.clone(),
        rx_bytes: u(d.rx_bytes),
        rx_errors: u(d.rx_errors),
        tx_bytes: u(d.tx_bytes),
        tx_errors: u(d.tx_errors),
    }
}

/// The pod's network usage, from the interfaces of its network namespace.
pub(crate) fn network_usage(devs: &[NetDev], ts: i64) -> Option<cri::NetworkUsage> {
    let default = devs
        .iter()
        .find(|d| d.name == DEFAULT_INTERFACE)
        .or_else(|| devs.first())?;
    Some(cri::NetworkUsage {
        timestamp: ts,
        default_interface: Some(interface(default)),
        interfaces: devs.iter().map(interface).collect(),
    })
}

/// The pod's network interfaces, seen through a process in its network namespace: the pause
/// process, or (a pod without one) a running container's. None for hostNetwork pods and
/// pods with no such process.
pub(crate) fn pod_interfaces(s: &Sandbox, containers: &[&Container]) -> Vec<NetDev> {
    if s.host.network || s.state != SandboxState::Ready {
        return Vec::new();
    }
    let pid = if s.infra {
        s.pid
    } else {
        containers
            .iter()
            .find(|c| c.sandbox_id == s.id && c.state == ContainerState::Running && c.pid > 0)
            .map_or(0, |c| c.pid)
    };
    if pid == 0 {
        return Vec::new();
    }
    net_dev_of(Path::new("/proc"), pid)
}

impl CriService {
    pub(crate) fn sandbox_attributes(s: &Sandbox) -> cri::PodSandboxAttributes {
        cri::PodSandboxAttributes {
            id: s.id.clone(),
            metadata: s.config.metadata.clone(),
            labels: s.labels.clone(),
            annotations: s.annotations.clone(),
        }
    }

    /// Cgroup samples (decoded, with their time) of the pods' pause tasks and their
    /// containers' tasks, by task id.
    async fn pod_samples(
        &self,
        rpc: &'static str,
        pods: &[Sandbox],
        containers: &[Container],
    ) -> Result<HashMap<String, (SystemTime, Sample)>, CriError> {
        let runner = self.container_runtime(rpc)?;
        let mut ids: Vec<String> = pods
            .iter()
            .filter(|p| p.infra && p.state == SandboxState::Ready)
            .map(|p| p.id.clone())
            .collect();
        ids.extend(containers.iter().map(|c| c.id.clone()));
        Ok(decode_all(&runner.stats(&ids).await?))
    }

    async fn pod_stats(
        &self,
        rpc: &'static str,
        pods: Vec<Sandbox>,
    ) -> Result<Vec<cri::PodSandboxStats>, CriError> {
        let containers: Vec<Container> = self
            .containers
            .list()
            .into_iter()
            .filter(|c| pods.iter().any(|p| p.id == c.sandbox_id))
            .collect();
        let samples = self.pod_samples(rpc, &pods, &containers).await?;
        let now = SystemTime::now();
        let ts = nanos(Some(now));
        Ok(pods
            .iter()
            .map(|pod| {
                let mine: Vec<&Container> = containers.iter().filter(|c| c.sandbox_id == pod.id).collect();
                let container_stats = mine
                    .iter()
                    .map(|c| self.to_stats(c, samples.get(&c.id)))
                    .collect();
                let mut linux = cri::LinuxPodSandboxStats {
                    containers: container_stats,
                    ..Default::default()
                };
                if pod.state == SandboxState::Ready {
                    let parts: Vec<&Sample> = std::iter::once(pod.id.as_str())
                        .chain(
                            mine.iter()
                                .filter(|c| c.state == ContainerState::Running)
                                .map(|c| c.id.as_str()),
                        )
                        .filter_map(|id| samples.get(id).map(|(_, s)| s))
                        .collect();
                    if !parts.is_empty() {
                        let total = Sample::sum(parts);
                        linux.cpu = self.cpu_usage(&sample_key(&pod.id), &total, now);
                        linux.memory = memory_usage(&total, ts);
                        linux.process = total.processes.map(|n| cri::ProcessUsage {
                            timestamp: ts,
                            process_count: u(n),
                        });
                    }
                    linux.network = network_usage(&pod_interfaces(pod, &mine), ts);
                    // PSI of the pod's cgroup (cgroup v2): the parent of a running task's
                    // own cgroup (the pause's, else a container's), whichever cgroup driver
                    // named it.
                    let pid = std::iter::once(pod.pid)
                        .chain(
                            mine.iter()
                                .filter(|c| c.state == ContainerState::Running)
                                .map(|c| c.pid),
                        )
                        .find(|p| *p > 0)
                        .unwrap_or(0);
                    let pod_cgroup = crate::cri::stats::cgroup_v2_dir(
                        std::path::Path::new("/proc"),
                        std::path::Path::new("/sys/fs/cgroup"),
                        pid,
                    );
                    if let Some(dir) = pod_cgroup.as_deref().and_then(std::path::Path::parent) {
                        let psi = |r: &str| crate::cri::stats::psi_in(dir, r);
                        if let Some(cpu) = linux.cpu.as_mut() {
                            cpu.psi = psi("cpu");
                        }
                        if let Some(memory) = linux.memory.as_mut() {
                            memory.psi = psi("memory");
                        }
                        linux.io = psi("io").map(|p| cri::IoUsage {
                            timestamp: ts,
                            psi: Some(p),
                        });
                    }
                }
                cri::PodSandboxStats {
                    attributes: Some(Self::sandbox_attributes(pod)),
                    linux: Some(linux),
                    windows: None,
                }
            })
            .collect())
    }

    pub async fn pod_sandbox_stats(
        &self,
        req: cri::PodSandboxStatsRequest,
    ) -> Result<cri::PodSandboxStatsResponse, CriError> {
        let pod = self.sandboxes.get(&req.pod_sandbox_id)?;
        let mut stats = self.pod_stats("PodSandboxStats", vec![pod]).await?;
        Ok(cri::PodSandboxStatsResponse { stats: stats.pop() })
    }

    pub async fn list_pod_sandbox_stats(
        &self,
        req: cri::ListPodSandboxStatsRequest,
    ) -> Result<cri::ListPodSandboxStatsResponse, CriError> {
        let f = req.filter.unwrap_or_default();
        let id = self.sandboxes.id_filter(&f.id);
        let pods: Vec<Sandbox> = self
            .sandboxes
            .list()
            .into_iter()
            .filter(|s| id.admits(&s.id))
            .filter(|s| labels_match(&s.labels, &f.label_selector))
            .collect();
        Ok(cri::ListPodSandboxStatsResponse {
            stats: self.pod_stats("ListPodSandboxStats", pods).await?,
        })
    }

    pub async fn stream_pod_sandbox_stats(
        &self,
        req: cri::StreamPodSandboxStatsRequest,
    ) -> Result<crate::cri::server::BoxStream<cri::StreamPodSandboxStatsResponse>, CriError> {
        let stats = self
            .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: req.filter })
            .await?
            .stats;
        Ok(crate::cri::server::chunked(stats, |pod_sandbox_stats| {
            cri::StreamPodSandboxStatsResponse { pod_sandbox_stats }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_interface_is_eth0_when_present() {
        let devs = vec![
            NetDev {
                name: "net1".into(),
                rx_bytes: 1,
                ..Default::default()
            },
            NetDev {
                name: "eth0".into(),
                rx_bytes: 2,
                ..Default::default()
            },
        ];
        let n = network_usage(&devs, 5).unwrap();
        assert_eq!(n.default_interface.unwrap().name, "eth0");
        assert_eq!(n.interfaces.len(), 2);
        assert_eq!(n.timestamp, 5);
        assert!(network_usage(&[], 5).is_none());
    }
}

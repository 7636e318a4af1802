//! `ContainerStats` / `ListContainerStats`: CPU and memory from the task's cgroup stats
//! (cgroup v1 `io.containerd.cgroups.v1.Metrics`, as the shim reports them on this host).
//!
//! ```text
//! cpu.usage_core_nano_seconds = cpu.usage.total
//! cpu.usage_nano_cores        = Δtotal / Δt since the previous sample of that container
//! memory.usage_bytes          = memory.usage.usage
//! memory.working_set_bytes    = usage − total_inactive_file (cAdvisor's definition)
//! memory.rss_bytes            = total_rss;  page_faults / major_page_faults
//! ```
//!
//! A container that is not running (created, exited) reports attributes only. The writable
//! layer's usage needs the snapshotter and is left out until it is on the build.

use prost::Message;
use taskd_proto::cgroups::v1::Metrics as V1;
use taskd_proto::cri::v1 as cri;

use crate::cri::server::convert::{labels_match, nanos};
use crate::cri::store::container::Container;
use crate::cri::{CriError, CriService};

fn u(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

impl CriService {
    fn attributes(c: &Container) -> cri::ContainerAttributes {
        cri::ContainerAttributes {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            labels: c.labels.clone(),
            annotations: c.annotations.clone(),
        }
    }

    fn to_stats(
        &self,
        c: &Container,
        sample: Option<&crate::cri::controller::TaskStats>,
    ) -> cri::ContainerStats {
        let mut out = cri::ContainerStats {
            attributes: Some(Self::attributes(c)),
            ..Default::default()
        };
        // A stopped task may still answer with its last cgroup numbers: only running
        // containers are sampled.
        let Some(s) = sample.filter(|_| c.state == crate::cri::store::container::ContainerState::Running)
        else {
            return out;
        };
        let Some(any) = &s.data else {
            return out;
        };
        if !any.type_url.ends_with("io.containerd.cgroups.v1.Metrics") {
            tracing::debug!(type_url = %any.type_url, "container stats in a format CRI stats do not decode yet");
            return out;
        }
        let Ok(m) = V1::decode(any.value.as_slice()) else {
            return out;
        };
        let ts = nanos(Some(s.timestamp));
        if let Some(total) = m.cpu.as_ref().and_then(|c| c.usage.as_ref()).map(|u| u.total) {
            let mut samples = self.cpu_samples.lock().unwrap_or_else(|p| p.into_inner());
            let rate = samples.get(&c.id).and_then(|(t0, v0)| {
                let dt = s.timestamp.duration_since(*t0).ok()?.as_nanos() as u64;
                (dt > 0 && total >= *v0).then(|| ((total - v0) as u128 * 1_000_000_000 / dt as u128) as u64)
            });
            samples.insert(c.id.clone(), (s.timestamp, total));
            out.cpu = Some(cri::CpuUsage {
                timestamp: ts,
                usage_core_nano_seconds: u(total),
                usage_nano_cores: rate.and_then(u),
                psi: None,
            });
        }
        if let Some(mem) = &m.memory {
            let usage = mem.usage.as_ref().map(|e| e.usage).unwrap_or(0);
            out.memory = Some(cri::MemoryUsage {
                timestamp: ts,
                working_set_bytes: u(usage.saturating_sub(mem.total_inactive_file)),
                available_bytes: None,
                usage_bytes: u(usage),
                rss_bytes: u(mem.total_rss),
                page_faults: u(mem.total_pg_fault),
                major_page_faults: u(mem.total_pg_maj_fault),
                psi: None,
            });
        }
        out
    }

    pub async fn container_stats(
        &self,
        req: cri::ContainerStatsRequest,
    ) -> Result<cri::ContainerStatsResponse, CriError> {
        let runner = self.container_runtime("ContainerStats")?;
        let c = self.containers.get(&req.container_id)?;
        let samples = runner.stats(std::slice::from_ref(&c.id)).await?;
        Ok(cri::ContainerStatsResponse {
            stats: Some(self.to_stats(&c, samples.iter().find(|s| s.id == c.id))),
        })
    }

    pub async fn list_container_stats(
        &self,
        req: cri::ListContainerStatsRequest,
    ) -> Result<cri::ListContainerStatsResponse, CriError> {
        let runner = self.container_runtime("ListContainerStats")?;
        let f = req.filter.unwrap_or_default();
        let id = if f.id.is_empty() {
            None
        } else {
            Some(self.containers.resolve(&f.id).ok())
        };
        let pod = if f.pod_sandbox_id.is_empty() {
            None
        } else {
            Some(self.sandboxes.resolve(&f.pod_sandbox_id).ok())
        };
        let containers: Vec<Container> = self
            .containers
            .list()
            .into_iter()
            .filter(|c| id.as_ref().is_none_or(|r| r.as_deref() == Some(c.id.as_str())))
            .filter(|c| {
                pod.as_ref()
                    .is_none_or(|r| r.as_deref() == Some(c.sandbox_id.as_str()))
            })
            .filter(|c| labels_match(&c.labels, &f.label_selector))
            .collect();
        let ids: Vec<String> = containers.iter().map(|c| c.id.clone()).collect();
        let samples = runner.stats(&ids).await?;
        Ok(cri::ListContainerStatsResponse {
            stats: containers
                .iter()
                .map(|c| self.to_stats(c, samples.iter().find(|s| s.id == c.id)))
                .collect(),
        })
    }
}

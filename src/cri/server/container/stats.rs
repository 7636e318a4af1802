//! `ContainerStats` / `ListContainerStats` / `StreamContainerStats`: CPU and memory from the
//! task's cgroup stats as the shim reports them (v1 or v2, decoded by [`crate::cri::stats`]).
//!
//! ```text
//! cpu.usage_core_nano_seconds = cpu total (ns)
//! cpu.usage_nano_cores        = Δtotal / Δt since the previous sample of that container
//! memory.usage_bytes          = usage
//! memory.working_set_bytes    = usage − inactive_file (cAdvisor's definition)
//! memory.available_bytes      = limit − working set (none without a limit, as cAdvisor)
//! memory.rss_bytes            = rss (v2: anon);  page_faults / major_page_faults
//! swap.swap_usage_bytes       = swap usage (v2: memory.swap.current)
//! swap.swap_available_bytes   = swap limit − usage (none without a limit)
//! cpu/memory/io .psi          = cpu.pressure, memory.pressure, io.pressure of the cgroup
//!                               the container's init is in (cgroup v2 only)
//! ```
//!
//! A container that is not running (created, exited) reports attributes and its writable
//! layer only. The writable layer is the container's active snapshot (bytes and inodes the
//! snapshotter counts), when an image backend is on the build.

use taskd_proto::cri::v1 as cri;

use crate::cri::convert::{labels_match, nanos};
use crate::cri::error::CriError;
use crate::cri::service::CriService;
use crate::cri::stats::{Sample, decode_all};
use crate::cri::store::container::Container;

pub(crate) fn u(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

/// CRI memory usage from a sample (None when the sample has no memory numbers).
pub(crate) fn memory_usage(s: &Sample, ts: i64) -> Option<cri::MemoryUsage> {
    s.mem_usage.map(|usage| {
        let working_set = s.mem_working_set.unwrap_or(usage);
        cri::MemoryUsage {
            timestamp: ts,
            working_set_bytes: u(working_set),
            available_bytes: s.mem_limit.and_then(|l| u(l.saturating_sub(working_set))),
            usage_bytes: u(usage),
            rss_bytes: s.mem_rss.and_then(u),
            page_faults: s.page_faults.and_then(u),
            major_page_faults: s.major_page_faults.and_then(u),
            psi: None,
        }
    })
}

/// CRI swap usage from a sample (None when the sample has no swap number).
pub(crate) fn swap_usage(s: &Sample, ts: i64) -> Option<cri::SwapUsage> {
    s.mem_swap.map(|used| cri::SwapUsage {
        timestamp: ts,
        swap_available_bytes: s.mem_swap_limit.and_then(|l| u(l.saturating_sub(used))),
        swap_usage_bytes: u(used),
    })
}

impl CriService {
    /// The container's writable layer usage (None without an image backend or snapshot;
    /// a failure is logged, the rest of the stats still answered).
    pub(crate) async fn writable_layer(&self, id: &str) -> Option<cri::FilesystemUsage> {
        let backend = self.image_backend.as_ref()?;
        match backend.writable_layer(id).await {
            Ok(Some(layer)) => Some(cri::FilesystemUsage {
                timestamp: nanos(Some(std::time::SystemTime::now())),
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: layer.mountpoint,
                }),
                used_bytes: u(layer.used_bytes),
                inodes_used: u(layer.inodes_used),
            }),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(container = %id, error = %e, "writable layer usage");
                None
            }
        }
    }

    /// CRI CPU usage from a sample; `usage_nano_cores` from the previous sample under `key`.
    pub(crate) fn cpu_usage(
        &self,
        key: &str,
        s: &Sample,
        at: std::time::SystemTime,
    ) -> Option<cri::CpuUsage> {
        let total = s.cpu_total_ns?;
        let mut samples = self
            .cpu_samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rate = samples.get(key).and_then(|(t0, v0)| {
            let dt = at.duration_since(*t0).ok()?.as_nanos() as u64;
            (dt > 0 && total >= *v0).then(|| ((total - v0) as u128 * 1_000_000_000 / dt as u128) as u64)
        });
        samples.insert(key.to_owned(), (at, total));
        Some(cri::CpuUsage {
            timestamp: nanos(Some(at)),
            usage_core_nano_seconds: u(total),
            usage_nano_cores: rate.and_then(u),
            psi: None,
        })
    }

    pub(crate) fn attributes(c: &Container) -> cri::ContainerAttributes {
        cri::ContainerAttributes {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            labels: c.labels.clone(),
            annotations: c.annotations.clone(),
        }
    }

    /// `sample`: the container's task sample and its time (from `stats::decode_all`).
    pub(crate) fn to_stats(
        &self,
        c: &Container,
        sample: Option<&(std::time::SystemTime, Sample)>,
    ) -> cri::ContainerStats {
        let mut out = cri::ContainerStats {
            attributes: Some(Self::attributes(c)),
            ..Default::default()
        };
        // A stopped task may still answer with its last cgroup numbers: only running
        // containers are sampled.
        let Some((at, sample)) =
            sample.filter(|_| c.state == crate::cri::store::container::ContainerState::Running)
        else {
            return out;
        };
        out.cpu = self.cpu_usage(&c.id, sample, *at);
        out.memory = memory_usage(sample, nanos(Some(*at)));
        out.swap = swap_usage(sample, nanos(Some(*at)));
        let psi = |resource: &str| {
            crate::cri::stats::psi_of(
                std::path::Path::new("/proc"),
                std::path::Path::new("/sys/fs/cgroup"),
                c.pid,
                resource,
            )
        };
        if let Some(cpu) = out.cpu.as_mut() {
            cpu.psi = psi("cpu");
        }
        if let Some(memory) = out.memory.as_mut() {
            memory.psi = psi("memory");
        }
        out.io = psi("io").map(|p| cri::IoUsage {
            timestamp: nanos(Some(*at)),
            psi: Some(p),
        });
        out
    }

    pub async fn container_stats(
        &self,
        req: cri::ContainerStatsRequest,
    ) -> Result<cri::ContainerStatsResponse, CriError> {
        let runner = self.container_runtime("ContainerStats")?;
        let c = self.containers.get(&req.container_id)?;
        let samples = decode_all(&runner.stats(std::slice::from_ref(&c.id)).await?);
        let mut stats = self.to_stats(&c, samples.get(&c.id));
        stats.writable_layer = self.writable_layer(&c.id).await;
        Ok(cri::ContainerStatsResponse { stats: Some(stats) })
    }

    pub async fn list_container_stats(
        &self,
        req: cri::ListContainerStatsRequest,
    ) -> Result<cri::ListContainerStatsResponse, CriError> {
        let runner = self.container_runtime("ListContainerStats")?;
        let f = req.filter.unwrap_or_default();
        let id = self.containers.id_filter(&f.id);
        let pod = self.sandboxes.id_filter(&f.pod_sandbox_id);
        let containers: Vec<Container> = self
            .containers
            .list()
            .into_iter()
            .filter(|c| id.admits(&c.id) && pod.admits(&c.sandbox_id))
            .filter(|c| labels_match(&c.labels, &f.label_selector))
            .collect();
        let ids: Vec<String> = containers.iter().map(|c| c.id.clone()).collect();
        let samples = decode_all(&runner.stats(&ids).await?);
        // The writable layers are measured at once (each a walk in the blocking pool).
        let layers = futures::future::join_all(containers.iter().map(|c| self.writable_layer(&c.id))).await;
        let stats = containers
            .iter()
            .zip(layers)
            .map(|(c, layer)| cri::ContainerStats {
                writable_layer: layer,
                ..self.to_stats(c, samples.get(&c.id))
            })
            .collect();
        Ok(cri::ListContainerStatsResponse { stats })
    }

    pub async fn stream_container_stats(
        &self,
        req: cri::StreamContainerStatsRequest,
    ) -> Result<crate::cri::server::BoxStream<cri::StreamContainerStatsResponse>, CriError> {
        let stats = self
            .list_container_stats(cri::ListContainerStatsRequest { filter: req.filter })
            .await?
            .stats;
        Ok(crate::cri::server::chunked(stats, |container_stats| {
            cri::StreamContainerStatsResponse { container_stats }
        }))
    }
}

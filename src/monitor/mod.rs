//! Task monitors: the domain trait and the no-op monitor used when none is configured.
//! The cgroups monitor plugin (Prometheus `container_*` series) is in [`cgroups`].

pub mod cgroups;

use std::collections::BTreeMap;

/// What a monitor needs to know about a task to collect its stats from cgroupfs.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitoredTask {
    pub namespace: String,
    pub id: String,
    /// The init process pid (its `/proc/<pid>/cgroup` locates the cgroup).
    pub pid: u32,
    /// `linux.cgroupsPath` from the spec, when set.
    pub cgroups_path: Option<String>,
    /// Extra labels, at least `runtime`.
    pub labels: BTreeMap<String, String>,
}

/// containerd's `runtime.TaskMonitor`: `Monitor(task, labels)` and `Stop(task)`.
pub trait TaskMonitor: Send + Sync {
    fn monitor(&self, task: MonitoredTask);
    fn stop(&self, namespace: &str, id: &str);
}

/// Used when no monitor plugin is up (the seed's `NewNoopMonitor`).
#[derive(Debug, Default)]
pub struct NoopMonitor;

impl TaskMonitor for NoopMonitor {
    fn monitor(&self, _task: MonitoredTask) {}
    fn stop(&self, _namespace: &str, _id: &str) {}
}

//! A container's `linux.resources` (cpu shares/quota/period, cpuset, memory, hugepages when
//! the host has the hugetlb controller, unified) and the host's cgroup probes they need.

use oci_spec::runtime::{LinuxCpu, LinuxDeviceCgroup, LinuxHugepageLimit, LinuxMemory, LinuxResources};
use taskd_proto::cri::v1::LinuxContainerResources;

/// Whether the host has the hugetlb cgroup controller (v2: listed in the root's
/// `cgroup.controllers`; v1: a `hugetlb` hierarchy), probed once.
pub fn hugetlb_controller_present() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRESENT.get_or_init(|| hugetlb_controller_in(std::path::Path::new("/sys/fs/cgroup")))
}

pub(super) fn hugetlb_controller_in(root: &std::path::Path) -> bool {
    match std::fs::read_to_string(root.join("cgroup.controllers")) {
        Ok(c) => c.split_whitespace().any(|c| c == "hugetlb"),
        Err(_) => root.join("hugetlb").is_dir(),
    }
}

/// Whether the host's cgroups are v2 (unified: `cgroup.controllers` at the root), probed once.
pub fn cgroup_v2_host() -> bool {
    static V2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V2.get_or_init(|| cgroup_v2_in(std::path::Path::new("/sys/fs/cgroup")))
}

pub(super) fn cgroup_v2_in(root: &std::path::Path) -> bool {
    root.join("cgroup.controllers").is_file()
}

/// A new container's `linux.resources`, with its device cgroup rules.
pub fn container_resources(
    res: &LinuxContainerResources,
    hugetlb_controller: bool,
    dev_rules: Vec<LinuxDeviceCgroup>,
) -> LinuxResources {
    let (cpu, memory, hugepages) = resource_parts(res, hugetlb_controller);
    let mut resources = LinuxResources::default();
    resources
        .set_cpu(Some(cpu))
        .set_memory(Some(memory))
        .set_hugepage_limits((!hugepages.is_empty()).then_some(hugepages))
        .set_unified((!res.unified.is_empty()).then(|| res.unified.clone()))
        .set_devices(Some(dev_rules));
    resources
}

/// CPU, memory and hugepage limits of a CRI resources message; no hugepage limits without
/// the hugetlb controller (runc could not set them: the container would not start).
pub(super) fn resource_parts(
    res: &LinuxContainerResources,
    hugetlb_controller: bool,
) -> (LinuxCpu, LinuxMemory, Vec<LinuxHugepageLimit>) {
    let mut cpu = LinuxCpu::default();
    if res.cpu_shares > 0 {
        cpu.set_shares(Some(res.cpu_shares as u64));
    }
    if res.cpu_quota != 0 {
        cpu.set_quota(Some(res.cpu_quota));
    }
    if res.cpu_period > 0 {
        cpu.set_period(Some(res.cpu_period as u64));
    }
    if !res.cpuset_cpus.is_empty() {
        cpu.set_cpus(Some(res.cpuset_cpus.clone()));
    }
    if !res.cpuset_mems.is_empty() {
        cpu.set_mems(Some(res.cpuset_mems.clone()));
    }
    let mut memory = LinuxMemory::default();
    if res.memory_limit_in_bytes > 0 {
        memory.set_limit(Some(res.memory_limit_in_bytes));
    }
    if res.memory_swap_limit_in_bytes > 0 {
        memory.set_swap(Some(res.memory_swap_limit_in_bytes));
    }
    if !hugetlb_controller && !res.hugepage_limits.is_empty() {
        tracing::warn!("the hugetlb cgroup controller is absent: hugepage limits skipped");
    }
    let hugepages: Vec<LinuxHugepageLimit> = res
        .hugepage_limits
        .iter()
        .filter(|_| hugetlb_controller)
        .map(|h| {
            let mut l = LinuxHugepageLimit::default();
            l.set_page_size(h.page_size.clone()).set_limit(h.limit as i64);
            l
        })
        .collect();
    (cpu, memory, hugepages)
}

/// The `linux.resources` UpdateContainerResources hands to the task (no device rules:
/// those stay as created).
pub fn update_resources(res: &LinuxContainerResources) -> LinuxResources {
    let (cpu, memory, hugepages) = resource_parts(res, hugetlb_controller_present());
    let mut r = LinuxResources::default();
    r.set_cpu(Some(cpu))
        .set_memory(Some(memory))
        .set_hugepage_limits((!hugepages.is_empty()).then_some(hugepages))
        .set_unified((!res.unified.is_empty()).then(|| res.unified.clone()));
    r
}

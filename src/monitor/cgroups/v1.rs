//! The cgroup v1 metric table: containerd's `core/metrics/cgroups/v1/{pids,cpu,memory,oom,
//! hugetlb,blkio}.go`, same names, help texts, units, types and labels, with the file each
//! value is read from. Every series also carries `container_id`, `namespace` and `runtime`.
//!
//! Differences from containerd, all deliberate:
//! - values come straight from cgroupfs, not from the shim's `Stats` call;
//! - a series whose file does not exist (no swap accounting, no hugetlb controller, no CFQ
//!   blkio files) is left out instead of being exported as 0;
//! - `container_memory_oom_total` is the kernel's `oom_kill` counter from
//!   `memory.oom_control` (kernel >= 4.13) instead of an eventfd count kept in memory, so it
//!   is exact across daemon restarts;
//! - blkio falls back per series (CFQ `*_recursive` file, else `blkio.throttle.*`), where
//!   containerd falls back for all series at once.

use super::table::Max;
use super::table::Source::{Blkio, Hugetlb, Key, PerCpu, Single, Ticks};
use super::table::ValueType::{Counter, Gauge};
use super::table::{BYTES, CURRENT, LIMIT, MetricDef, TOTAL, row, row_l};

const NANOSECONDS: &str = "nanoseconds";

/// Every v1 row, in containerd's order (pids, cpu, memory, oom, hugetlb, blkio).
#[rustfmt::skip]
pub static METRICS: &[MetricDef] = &[
    row(Gauge, "pids", LIMIT, "The limit to the number of pids allowed", Single("pids.max", Max::Zero)),
    row(Gauge, "pids", CURRENT, "The current number of pids", Single("pids.current", Max::Zero)),
    row(Gauge, "cpu_total", NANOSECONDS, "The total cpu time", Single("cpuacct.usage", Max::Zero)),
    row(Gauge, "cpu_kernel", NANOSECONDS, "The total kernel cpu time", Ticks("cpuacct.stat", "system")),
    row(Gauge, "cpu_user", NANOSECONDS, "The total user cpu time", Ticks("cpuacct.stat", "user")),
    row_l(Gauge, "per_cpu", NANOSECONDS, "The total cpu time per cpu", &["cpu"], PerCpu("cpuacct.usage_percpu")),
    row(Gauge, "cpu_throttle_periods", TOTAL, "The total cpu throttle periods", Key("cpu.stat", "nr_periods")),
    row(Gauge, "cpu_throttled_periods", TOTAL, "The total cpu throttled periods", Key("cpu.stat", "nr_throttled")),
    row(Gauge, "cpu_throttled_time", NANOSECONDS, "The total cpu throttled time", Key("cpu.stat", "throttled_time")),
    row(Gauge, "memory_cache", BYTES, "The cache amount used", Key("memory.stat", "cache")),
    row(Gauge, "memory_rss", BYTES, "The rss amount used", Key("memory.stat", "rss")),
    row(Gauge, "memory_rss_huge", BYTES, "The rss_huge amount used", Key("memory.stat", "rss_huge")),
    row(Gauge, "memory_mapped_file", BYTES, "The mapped_file amount used", Key("memory.stat", "mapped_file")),
    row(Gauge, "memory_dirty", BYTES, "The dirty amount", Key("memory.stat", "dirty")),
    row(Gauge, "memory_writeback", BYTES, "The writeback amount", Key("memory.stat", "writeback")),
    row(Gauge, "memory_pgpgin", BYTES, "The pgpgin amount", Key("memory.stat", "pgpgin")),
    row(Gauge, "memory_pgpgout", BYTES, "The pgpgout amount", Key("memory.stat", "pgpgout")),
    row(Gauge, "memory_pgfault", BYTES, "The pgfault amount", Key("memory.stat", "pgfault")),
    row(Gauge, "memory_pgmajfault", BYTES, "The pgmajfault amount", Key("memory.stat", "pgmajfault")),
    row(Gauge, "memory_inactive_anon", BYTES, "The inactive_anon amount", Key("memory.stat", "inactive_anon")),
    row(Gauge, "memory_active_anon", BYTES, "The active_anon amount", Key("memory.stat", "active_anon")),
    row(Gauge, "memory_inactive_file", BYTES, "The inactive_file amount", Key("memory.stat", "inactive_file")),
    row(Gauge, "memory_active_file", BYTES, "The active_file amount", Key("memory.stat", "active_file")),
    row(Gauge, "memory_unevictable", BYTES, "The unevictable amount", Key("memory.stat", "unevictable")),
    row(Gauge, "memory_hierarchical_memory_limit", BYTES, "The hierarchical_memory_limit amount", Key("memory.stat", "hierarchical_memory_limit")),
    row(Gauge, "memory_hierarchical_memsw_limit", BYTES, "The hierarchical_memsw_limit amount", Key("memory.stat", "hierarchical_memsw_limit")),
    row(Gauge, "memory_total_cache", BYTES, "The total_cache amount used", Key("memory.stat", "total_cache")),
    row(Gauge, "memory_total_rss", BYTES, "The total_rss amount used", Key("memory.stat", "total_rss")),
    row(Gauge, "memory_total_rss_huge", BYTES, "The total_rss_huge amount used", Key("memory.stat", "total_rss_huge")),
    row(Gauge, "memory_total_mapped_file", BYTES, "The total_mapped_file amount used", Key("memory.stat", "total_mapped_file")),
    row(Gauge, "memory_total_dirty", BYTES, "The total_dirty amount", Key("memory.stat", "total_dirty")),
    row(Gauge, "memory_total_writeback", BYTES, "The total_writeback amount", Key("memory.stat", "total_writeback")),
    row(Gauge, "memory_total_pgpgin", BYTES, "The total_pgpgin amount", Key("memory.stat", "total_pgpgin")),
    row(Gauge, "memory_total_pgpgout", BYTES, "The total_pgpgout amount", Key("memory.stat", "total_pgpgout")),
    row(Gauge, "memory_total_pgfault", BYTES, "The total_pgfault amount", Key("memory.stat", "total_pgfault")),
    row(Gauge, "memory_total_pgmajfault", BYTES, "The total_pgmajfault amount", Key("memory.stat", "total_pgmajfault")),
    row(Gauge, "memory_total_inactive_anon", BYTES, "The total_inactive_anon amount", Key("memory.stat", "total_inactive_anon")),
    row(Gauge, "memory_total_active_anon", BYTES, "The total_active_anon amount", Key("memory.stat", "total_active_anon")),
    row(Gauge, "memory_total_inactive_file", BYTES, "The total_inactive_file amount", Key("memory.stat", "total_inactive_file")),
    row(Gauge, "memory_total_active_file", BYTES, "The total_active_file amount", Key("memory.stat", "total_active_file")),
    row(Gauge, "memory_total_unevictable", BYTES, "The total_unevictable amount", Key("memory.stat", "total_unevictable")),
    row(Gauge, "memory_usage_failcnt", TOTAL, "The usage failcnt", Single("memory.failcnt", Max::Inf)),
    row(Gauge, "memory_usage_limit", BYTES, "The memory limit", Single("memory.limit_in_bytes", Max::Inf)),
    row(Gauge, "memory_usage_max", BYTES, "The memory maximum usage", Single("memory.max_usage_in_bytes", Max::Inf)),
    row(Gauge, "memory_usage_usage", BYTES, "The memory usage", Single("memory.usage_in_bytes", Max::Inf)),
    row(Gauge, "memory_swap_failcnt", TOTAL, "The swap failcnt", Single("memory.memsw.failcnt", Max::Inf)),
    row(Gauge, "memory_swap_limit", BYTES, "The swap limit", Single("memory.memsw.limit_in_bytes", Max::Inf)),
    row(Gauge, "memory_swap_max", BYTES, "The swap maximum usage", Single("memory.memsw.max_usage_in_bytes", Max::Inf)),
    row(Gauge, "memory_swap_usage", BYTES, "The swap usage", Single("memory.memsw.usage_in_bytes", Max::Inf)),
    row(Gauge, "memory_kernel_failcnt", TOTAL, "The kernel failcnt", Single("memory.kmem.failcnt", Max::Inf)),
    row(Gauge, "memory_kernel_limit", BYTES, "The kernel limit", Single("memory.kmem.limit_in_bytes", Max::Inf)),
    row(Gauge, "memory_kernel_max", BYTES, "The kernel maximum usage", Single("memory.kmem.max_usage_in_bytes", Max::Inf)),
    row(Gauge, "memory_kernel_usage", BYTES, "The kernel usage", Single("memory.kmem.usage_in_bytes", Max::Inf)),
    row(Gauge, "memory_kerneltcp_failcnt", TOTAL, "The kerneltcp failcnt", Single("memory.kmem.tcp.failcnt", Max::Inf)),
    row(Gauge, "memory_kerneltcp_limit", BYTES, "The kerneltcp limit", Single("memory.kmem.tcp.limit_in_bytes", Max::Inf)),
    row(Gauge, "memory_kerneltcp_max", BYTES, "The kerneltcp maximum usage", Single("memory.kmem.tcp.max_usage_in_bytes", Max::Inf)),
    row(Gauge, "memory_kerneltcp_usage", BYTES, "The kerneltcp usage", Single("memory.kmem.tcp.usage_in_bytes", Max::Inf)),
    row(Counter, "memory_oom", TOTAL, "The number of times a container has received an oom event", Key("memory.oom_control", "oom_kill")),
    row_l(Gauge, "hugetlb_usage", BYTES, "The hugetlb usage", &["page"], Hugetlb("usage_in_bytes")),
    row_l(Gauge, "hugetlb_failcnt", TOTAL, "The hugetlb failcnt", &["page"], Hugetlb("failcnt")),
    row_l(Gauge, "hugetlb_max", BYTES, "The hugetlb maximum usage", &["page"], Hugetlb("max_usage_in_bytes")),
    row_l(Gauge, "blkio_io_merged_recursive", TOTAL, "The blkio io merged recursive", &["op", "device", "major", "minor"], Blkio(&["blkio.io_merged_recursive"])),
    row_l(Gauge, "blkio_io_queued_recursive", TOTAL, "The blkio io queued recursive", &["op", "device", "major", "minor"], Blkio(&["blkio.io_queued_recursive"])),
    row_l(Gauge, "blkio_io_service_bytes_recursive", BYTES, "The blkio io service bytes recursive", &["op", "device", "major", "minor"], Blkio(&["blkio.io_service_bytes_recursive", "blkio.throttle.io_service_bytes"])),
    row_l(Gauge, "blkio_io_service_time_recursive", TOTAL, "The blkio io service time recursive", &["op", "device", "major", "minor"], Blkio(&["blkio.io_service_time_recursive"])),
    row_l(Gauge, "blkio_io_serviced_recursive", TOTAL, "The blkio io serviced recursive", &["op", "device", "major", "minor"], Blkio(&["blkio.io_serviced_recursive", "blkio.throttle.io_serviced"])),
    row_l(Gauge, "blkio_io_time_recursive", TOTAL, "The blkio io time recursive", &["op", "device", "major", "minor"], Blkio(&["blkio.time_recursive"])),
    row_l(Gauge, "blkio_sectors_recursive", TOTAL, "The blkio sectors recursive", &["op", "device", "major", "minor"], Blkio(&["blkio.sectors_recursive"])),
];

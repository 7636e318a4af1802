//! The cgroup v2 metric table: containerd's `core/metrics/cgroups/v2/{pids,cpu,memory,io}.go`,
//! same names, help texts, units, types and labels, with the file each value is read from.
//! Every series also carries `container_id`, `namespace` and `runtime`.
//!
//! Differences from containerd, all deliberate:
//! - values come straight from cgroupfs, not from the shim's `Stats` call;
//! - a series whose file or `memory.stat` key does not exist (no swap, a kernel that split
//!   `workingset_refault` into `_anon`/`_file`) is left out instead of being exported as 0;
//! - `max` in `memory.max`, `memory.swap.max` and `pids.max` is exported as 2^64-1, as
//!   containerd's cgroups v2 library reads it.
//!
//! `container_memory_oom_total` is `oom` of `memory.events` (times the cgroup hit its limit
//! and the OOM killer ran), the key containerd exports; `oom_kill` (processes killed) is not
//! exported by containerd either.

use super::table::Max;
use super::table::Source::{Key, Nested, Single};
use super::table::ValueType::Gauge;
use super::table::{BYTES, CURRENT, LIMIT, MetricDef, TOTAL, row, row_l};

const MICROSECONDS: &str = "microseconds";

/// Every v2 row, in containerd's order (pids, cpu, memory, io).
#[rustfmt::skip]
pub static METRICS: &[MetricDef] = &[
    row(Gauge, "pids", LIMIT, "The limit to the number of pids allowed (cgroup v2)", Single("pids.max", Max::Inf)),
    row(Gauge, "pids", CURRENT, "The current number of pids (cgroup v2)", Single("pids.current", Max::Inf)),
    row(Gauge, "cpu_usage_usec", MICROSECONDS, "Total cpu usage (cgroup v2)", Key("cpu.stat", "usage_usec")),
    row(Gauge, "cpu_user_usec", MICROSECONDS, "Current cpu usage in user space (cgroup v2)", Key("cpu.stat", "user_usec")),
    row(Gauge, "cpu_system_usec", MICROSECONDS, "Current cpu usage in kernel space (cgroup v2)", Key("cpu.stat", "system_usec")),
    row(Gauge, "cpu_nr_periods", TOTAL, "Current cpu number of periods (only if controller is enabled)", Key("cpu.stat", "nr_periods")),
    row(Gauge, "cpu_nr_throttled", TOTAL, "Total number of times tasks have been throttled (only if controller is enabled)", Key("cpu.stat", "nr_throttled")),
    row(Gauge, "cpu_throttled_usec", MICROSECONDS, "Total time duration for which tasks have been throttled. (only if controller is enabled)", Key("cpu.stat", "throttled_usec")),
    row(Gauge, "memory_usage", BYTES, "Current memory usage (cgroup v2)", Single("memory.current", Max::Inf)),
    row(Gauge, "memory_usage_limit", BYTES, "Current memory usage limit (cgroup v2)", Single("memory.max", Max::Inf)),
    row(Gauge, "memory_swap_usage", BYTES, "Current swap usage (cgroup v2)", Single("memory.swap.current", Max::Inf)),
    row(Gauge, "memory_swap_limit", BYTES, "Current swap usage limit (cgroup v2)", Single("memory.swap.max", Max::Inf)),
    row(Gauge, "memory_file_mapped", BYTES, "The file_mapped amount", Key("memory.stat", "file_mapped")),
    row(Gauge, "memory_file_dirty", BYTES, "The file_dirty amount", Key("memory.stat", "file_dirty")),
    row(Gauge, "memory_file_writeback", BYTES, "The file_writeback amount", Key("memory.stat", "file_writeback")),
    row(Gauge, "memory_pgactivate", BYTES, "The pgactivate amount", Key("memory.stat", "pgactivate")),
    row(Gauge, "memory_pgdeactivate", BYTES, "The pgdeactivate amount", Key("memory.stat", "pgdeactivate")),
    row(Gauge, "memory_pgfault", BYTES, "The pgfault amount", Key("memory.stat", "pgfault")),
    row(Gauge, "memory_pgmajfault", BYTES, "The pgmajfault amount", Key("memory.stat", "pgmajfault")),
    row(Gauge, "memory_pglazyfree", BYTES, "The pglazyfree amount", Key("memory.stat", "pglazyfree")),
    row(Gauge, "memory_pgrefill", BYTES, "The pgrefill amount", Key("memory.stat", "pgrefill")),
    row(Gauge, "memory_pglazyfreed", BYTES, "The pglazyfreed amount", Key("memory.stat", "pglazyfreed")),
    row(Gauge, "memory_pgscan", BYTES, "The pgscan amount", Key("memory.stat", "pgscan")),
    row(Gauge, "memory_pgsteal", BYTES, "The pgsteal amount", Key("memory.stat", "pgsteal")),
    row(Gauge, "memory_inactive_anon", BYTES, "The inactive_anon amount", Key("memory.stat", "inactive_anon")),
    row(Gauge, "memory_active_anon", BYTES, "The active_anon amount", Key("memory.stat", "active_anon")),
    row(Gauge, "memory_inactive_file", BYTES, "The inactive_file amount", Key("memory.stat", "inactive_file")),
    row(Gauge, "memory_active_file", BYTES, "The active_file amount", Key("memory.stat", "active_file")),
    row(Gauge, "memory_unevictable", BYTES, "The unevictable amount", Key("memory.stat", "unevictable")),
    row(Gauge, "memory_anon", BYTES, "The anon amount", Key("memory.stat", "anon")),
    row(Gauge, "memory_file", BYTES, "The file amount", Key("memory.stat", "file")),
    row(Gauge, "memory_kernel_stack", BYTES, "The kernel_stack amount", Key("memory.stat", "kernel_stack")),
    row(Gauge, "memory_slab", BYTES, "The slab amount", Key("memory.stat", "slab")),
    row(Gauge, "memory_sock", BYTES, "The sock amount", Key("memory.stat", "sock")),
    row(Gauge, "memory_shmem", BYTES, "The shmem amount", Key("memory.stat", "shmem")),
    row(Gauge, "memory_anon_thp", BYTES, "The anon_thp amount", Key("memory.stat", "anon_thp")),
    row(Gauge, "memory_slab_reclaimable", BYTES, "The slab_reclaimable amount", Key("memory.stat", "slab_reclaimable")),
    row(Gauge, "memory_slab_unreclaimable", BYTES, "The slab_unreclaimable amount", Key("memory.stat", "slab_unreclaimable")),
    row(Gauge, "memory_workingset_refault", BYTES, "The workingset_refault amount", Key("memory.stat", "workingset_refault")),
    row(Gauge, "memory_workingset_activate", BYTES, "The workingset_activate amount", Key("memory.stat", "workingset_activate")),
    row(Gauge, "memory_workingset_nodereclaim", BYTES, "The workingset_nodereclaim amount", Key("memory.stat", "workingset_nodereclaim")),
    row(Gauge, "memory_thp_fault_alloc", BYTES, "The thp_fault_alloc amount", Key("memory.stat", "thp_fault_alloc")),
    row(Gauge, "memory_thp_collapse_alloc", BYTES, "The thp_collapse_alloc amount", Key("memory.stat", "thp_collapse_alloc")),
    row(Gauge, "memory_oom", TOTAL, "The number of times a container has received an oom event", Key("memory.events", "oom")),
    row_l(Gauge, "io_rbytes", BYTES, "IO bytes read", &["major", "minor"], Nested("io.stat", "rbytes")),
    row_l(Gauge, "io_wbytes", BYTES, "IO bytes written", &["major", "minor"], Nested("io.stat", "wbytes")),
    row_l(Gauge, "io_rios", TOTAL, "Number of read IOs", &["major", "minor"], Nested("io.stat", "rios")),
    row_l(Gauge, "io_wios", TOTAL, "Number of write IOs", &["major", "minor"], Nested("io.stat", "wios")),
];

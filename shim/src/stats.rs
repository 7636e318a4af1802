//! Stats: the task's cgroup metrics (`io.containerd.cgroups.v1.Metrics` or `.v2.Metrics`).
//! The containerd-shim crate's collectors are the base; on cgroup v1 the CPU accounting and
//! the memory.stat counters they leave out (which the CRI's stats need: CPU usage, RSS,
//! page faults, working set) are filled in from cgroups-rs here.

use std::sync::Arc;

use containerd_shim::cgroup::{collect_metrics, collect_metrics_v2, get_cgroup};
use containerd_shim_protos::cgroups::metrics::{CPUUsage, MemoryEntry, Metrics};
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::protobuf::well_known_types::any::Any;

use crate::error::ServiceError;

type Cgroup = cgroups_rs::fs::Cgroup;

fn v1(cg: &Cgroup) -> containerd_shim::Result<Metrics> {
    use cgroups_rs::fs::Subsystem;
    let mut m = collect_metrics(cg)?;
    for sub in cg.subsystems() {
        match sub {
            Subsystem::CpuAcct(c) => {
                let acct = c.cpuacct();
                let cpu = m.cpu.mut_or_insert_default();
                let usage: &mut CPUUsage = cpu.usage.mut_or_insert_default();
                usage.total = acct.usage;
                usage.per_cpu = acct
                    .usage_percpu
                    .split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect();
                // cpuacct.stat is in USER_HZ ticks (100 per second).
                for line in acct.stat.lines() {
                    let mut f = line.split_whitespace();
                    let (Some(k), Some(v)) = (f.next(), f.next().and_then(|v| v.parse::<u64>().ok())) else {
                        continue;
                    };
                    match k {
                        "user" => usage.user = v * 10_000_000,
                        "system" => usage.kernel = v * 10_000_000,
                        _ => {}
                    }
                }
            }
            Subsystem::Mem(c) => {
                let mem = c.memory_stat();
                let s = &mem.stat;
                let ms = m.memory.mut_or_insert_default();
                ms.usage = Some(MemoryEntry {
                    usage: mem.usage_in_bytes,
                    max: mem.max_usage_in_bytes,
                    failcnt: mem.fail_cnt,
                    limit: u64::try_from(mem.limit_in_bytes).unwrap_or(u64::MAX),
                    ..Default::default()
                })
                .into();
                ms.cache = s.cache;
                ms.rss = s.rss;
                ms.rss_huge = s.rss_huge;
                ms.mapped_file = s.mapped_file;
                ms.dirty = s.dirty;
                ms.writeback = s.writeback;
                ms.pg_pg_in = s.pgpgin;
                ms.pg_pg_out = s.pgpgout;
                ms.pg_fault = s.pgfault;
                ms.pg_maj_fault = s.pgmajfault;
                ms.inactive_anon = s.inactive_anon;
                ms.active_anon = s.active_anon;
                ms.inactive_file = s.inactive_file;
                ms.active_file = s.active_file;
                ms.unevictable = s.unevictable;
                ms.hierarchical_memory_limit = u64::try_from(s.hierarchical_memory_limit).unwrap_or(u64::MAX);
                ms.hierarchical_swap_limit = u64::try_from(s.hierarchical_memsw_limit).unwrap_or(u64::MAX);
                ms.total_cache = s.total_cache;
                ms.total_rss = s.total_rss;
                ms.total_rss_huge = s.total_rss_huge;
                ms.total_mapped_file = s.total_mapped_file;
                ms.total_dirty = s.total_dirty;
                ms.total_writeback = s.total_writeback;
                ms.total_pg_pg_in = s.total_pgpgin;
                ms.total_pg_pg_out = s.total_pgpgout;
                ms.total_pg_fault = s.total_pgfault;
                ms.total_pg_maj_fault = s.total_pgmajfault;
                ms.total_inactive_anon = s.total_inactive_anon;
                ms.total_active_anon = s.total_active_anon;
                ms.total_inactive_file = s.total_inactive_file;
                ms.total_active_file = s.total_active_file;
                ms.total_unevictable = s.total_unevictable;
            }
            _ => {}
        }
    }
    Ok(m)
}

/// A task's cgroup, loaded once per init pid. Loading it reads and parses
/// `/proc/self/mountinfo` (twice on cgroup v1), which grows with every pod's mounts: on a full
/// node that was most of a Stats call (about 10 ms each), so a node's worth of stats took
/// over a second.
#[derive(Default)]
pub struct CgroupCache(Option<(u32, Arc<Cgroup>)>);

impl CgroupCache {
    /// The cgroup loaded for `pid`, if it was.
    pub fn get(&self, pid: u32) -> Option<Arc<Cgroup>> {
        self.0
            .as_ref()
            .filter(|(p, _)| *p == pid)
            .map(|(_, cg)| cg.clone())
    }

    pub fn set(&mut self, pid: u32, cg: Arc<Cgroup>) {
        self.0 = Some((pid, cg));
    }
}

/// The task's cgroup metrics; with the cgroup it loaded when `cached` had none (for the
/// caller to keep).
pub async fn collect(
    id: &str,
    pid: u32,
    cached: Option<Arc<Cgroup>>,
) -> Result<(Any, Option<Arc<Cgroup>>), ServiceError> {
    let id2 = id.to_owned();
    let err = move |e: &dyn std::fmt::Display| ServiceError::Invalid {
        id: id2.clone(),
        reason: format!("stats: {e}"),
    };
    let e2 = err.clone();
    tokio::task::spawn_blocking(move || {
        let (cg, loaded) = match cached {
            Some(cg) => (cg, false),
            None => (Arc::new(get_cgroup(pid).map_err(|e| err(&e))?), true),
        };
        let any = if cg.v2() {
            let m = collect_metrics_v2(&cg).map_err(|e| err(&e))?;
            let v = m.write_to_bytes().map_err(|e| err(&e))?;
            crate::events::any("io.containerd.cgroups.v2.Metrics", v)
        } else {
            let m = v1(&cg).map_err(|e| err(&e))?;
            let v = m.write_to_bytes().map_err(|e| err(&e))?;
            crate::events::any("io.containerd.cgroups.v1.Metrics", v)
        };
        Ok((any, loaded.then_some(cg)))
    })
    .await
    .map_err(|e| e2(&e))?
}

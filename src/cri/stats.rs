//! Task cgroup stats as the CRI stats and metrics RPCs use them: one [`Sample`] decoded from
//! whatever the shim reports (`io.containerd.cgroups.v1.Metrics` on cgroup v1 hosts,
//! `io.containerd.cgroups.v2.Metrics` on v2), pod totals as sums of samples, and a pod's
//! network counters from `/proc/<pid>/net/dev` of a process in its network namespace.
//!
//! ```text
//!                      v1 (ns)                       v2 (usec ×1000)
//! cpu_total            cpu.usage.total               cpu.usage_usec
//! cpu_user / _system   cpu.usage.user / .kernel      cpu.user_usec / system_usec
//! mem_usage            memory.usage.usage            memory.usage
//! mem_working_set      usage − total_inactive_file   usage − inactive_file   (cAdvisor)
//! mem_rss              total_rss                     anon
//! mem_cache            total_cache                   file
//! mem_limit            memory.usage.limit            memory.usage_limit      (None: unlimited, > 2^62)
//! mem_swap             memsw usage − usage           memory.swap.current
//! mem_swap_limit       −                             memory.swap.max         (None: unlimited)
//! page faults          total_pg_fault / _maj_fault   pgfault / pgmajfault
//! processes            pids.current                  pids.current
//! ```

use std::collections::HashMap;
use std::path::Path;

use prost::Message;
use taskd_proto::cgroups::{v1, v2};

/// A memory limit as the shim reports it, None when it means "unlimited": above 2^62 (v1's
/// page-rounded i64::MAX, v2's `max` as u64::MAX), as containerd and cAdvisor judge it; 0 is
/// "no number" (an old shim).
fn limit(v: u64) -> Option<u64> {
    (v > 0 && v <= 1 << 62).then_some(v)
}

/// One task's (or one pod's summed) cgroup numbers. Absent fields stay `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    pub cpu_total_ns: Option<u64>,
    pub cpu_user_ns: Option<u64>,
    pub cpu_system_ns: Option<u64>,
    pub cfs_periods: Option<u64>,
    pub cfs_throttled_periods: Option<u64>,
    pub cfs_throttled_ns: Option<u64>,
    pub mem_usage: Option<u64>,
    pub mem_max_usage: Option<u64>,
    pub mem_working_set: Option<u64>,
    pub mem_rss: Option<u64>,
    pub mem_cache: Option<u64>,
    pub mem_mapped_file: Option<u64>,
    pub mem_active_file: Option<u64>,
    pub mem_inactive_file: Option<u64>,
    /// The cgroup's memory limit; None when unlimited (and in pod sums: limits do not add up).
    pub mem_limit: Option<u64>,
    /// The swap limit (v2 `memory.swap.max`); None when unlimited, on v1 and in pod sums.
    pub mem_swap_limit: Option<u64>,
    pub mem_swap: Option<u64>,
    pub mem_failcnt: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    pub processes: Option<u64>,
    pub oom_kills: Option<u64>,
}

const V1_URL: &str = "io.containerd.cgroups.v1.Metrics";
const V2_URL: &str = "io.containerd.cgroups.v2.Metrics";

impl Sample {
    /// Decodes a shim's metrics `Any`; None for an unknown type or bad bytes.
    pub fn decode(any: &prost_types::Any) -> Option<Sample> {
        if any.type_url.ends_with(V1_URL) {
            v1::Metrics::decode(any.value.as_slice())
                .ok()
                .map(|m| Sample::from_v1(&m))
        } else if any.type_url.ends_with(V2_URL) {
            v2::Metrics::decode(any.value.as_slice())
                .ok()
                .map(|m| Sample::from_v2(&m))
        } else {
            None
        }
    }

    pub fn from_v1(m: &v1::Metrics) -> Sample {
        let mut s = Sample::default();
        if let Some(u) = m.cpu.as_ref().and_then(|c| c.usage.as_ref()) {
            s.cpu_total_ns = Some(u.total);
            s.cpu_user_ns = Some(u.user);
            s.cpu_system_ns = Some(u.kernel);
        }
        if let Some(t) = m.cpu.as_ref().and_then(|c| c.throttling.as_ref()) {
            s.cfs_periods = Some(t.periods);
            s.cfs_throttled_periods = Some(t.throttled_periods);
            s.cfs_throttled_ns = Some(t.throttled_time);
        }
        if let Some(mem) = &m.memory {
            if let Some(u) = &mem.usage {
                s.mem_usage = Some(u.usage);
                s.mem_max_usage = Some(u.max);
                s.mem_failcnt = Some(u.failcnt);
                s.mem_working_set = Some(u.usage.saturating_sub(mem.total_inactive_file));
                s.mem_limit = limit(u.limit);
            }
            if let Some(sw) = &mem.swap {
                s.mem_swap = Some(sw.usage.saturating_sub(mem.usage.as_ref().map_or(0, |u| u.usage)));
            }
            s.mem_rss = Some(mem.total_rss);
            s.mem_cache = Some(mem.total_cache);
            s.mem_mapped_file = Some(mem.total_mapped_file);
            s.mem_active_file = Some(mem.total_active_file);
            s.mem_inactive_file = Some(mem.total_inactive_file);
            s.page_faults = Some(mem.total_pg_fault);
            s.major_page_faults = Some(mem.total_pg_maj_fault);
        }
        if let Some(p) = &m.pids {
            s.processes = Some(p.current);
        }
        if let Some(o) = &m.memory_oom_control {
            s.oom_kills = Some(o.oom_kill);
        }
        s
    }

    pub fn from_v2(m: &v2::Metrics) -> Sample {
        let mut s = Sample::default();
        if let Some(c) = &m.cpu {
            s.cpu_total_ns = Some(c.usage_usec.saturating_mul(1000));
            s.cpu_user_ns = Some(c.user_usec.saturating_mul(1000));
            s.cpu_system_ns = Some(c.system_usec.saturating_mul(1000));
            s.cfs_periods = Some(c.nr_periods);
            s.cfs_throttled_periods = Some(c.nr_throttled);
            s.cfs_throttled_ns = Some(c.throttled_usec.saturating_mul(1000));
        }
        if let Some(mem) = &m.memory {
            s.mem_usage = Some(mem.usage);
            s.mem_max_usage = Some(mem.max_usage);
            s.mem_working_set = Some(mem.usage.saturating_sub(mem.inactive_file));
            s.mem_limit = limit(mem.usage_limit);
            s.mem_rss = Some(mem.anon);
            s.mem_cache = Some(mem.file);
            s.mem_mapped_file = Some(mem.file_mapped);
            s.mem_active_file = Some(mem.active_file);
            s.mem_inactive_file = Some(mem.inactive_file);
            s.mem_swap = Some(mem.swap_usage);
            s.mem_swap_limit = limit(mem.swap_limit);
            s.page_faults = Some(mem.pgfault);
            s.major_page_faults = Some(mem.pgmajfault);
        }
        if let Some(ev) = &m.memory_events {
            s.mem_failcnt = Some(ev.max);
            s.oom_kills = Some(ev.oom_kill);
        }
        if let Some(p) = &m.pids {
            s.processes = Some(p.current);
        }
        s
    }

    /// Field-wise sum (a field is present when it is present in any part).
    pub fn sum<'a>(parts: impl IntoIterator<Item = &'a Sample>) -> Sample {
        fn add(a: &mut Option<u64>, b: Option<u64>) {
            if let Some(b) = b {
                *a = Some(a.unwrap_or(0).saturating_add(b));
            }
        }
        let mut t = Sample::default();
        for p in parts {
            add(&mut t.cpu_total_ns, p.cpu_total_ns);
            add(&mut t.cpu_user_ns, p.cpu_user_ns);
            add(&mut t.cpu_system_ns, p.cpu_system_ns);
            add(&mut t.cfs_periods, p.cfs_periods);
            add(&mut t.cfs_throttled_periods, p.cfs_throttled_periods);
            add(&mut t.cfs_throttled_ns, p.cfs_throttled_ns);
            add(&mut t.mem_usage, p.mem_usage);
            add(&mut t.mem_max_usage, p.mem_max_usage);
            add(&mut t.mem_working_set, p.mem_working_set);
            add(&mut t.mem_rss, p.mem_rss);
            add(&mut t.mem_cache, p.mem_cache);
            add(&mut t.mem_mapped_file, p.mem_mapped_file);
            add(&mut t.mem_active_file, p.mem_active_file);
            add(&mut t.mem_inactive_file, p.mem_inactive_file);
            add(&mut t.mem_swap, p.mem_swap);
            add(&mut t.mem_failcnt, p.mem_failcnt);
            add(&mut t.page_faults, p.page_faults);
            add(&mut t.major_page_faults, p.major_page_faults);
            add(&mut t.processes, p.processes);
            add(&mut t.oom_kills, p.oom_kills);
        }
        t
    }
}

/// The decodable samples among `stats`, with their sampling time, by task id (each payload
/// decoded once, however many answers use it).
pub fn decode_all(
    stats: &[crate::cri::backend::contract::TaskStats],
) -> HashMap<String, (std::time::SystemTime, Sample)> {
    stats
        .iter()
        .filter_map(|t| {
            let sample = t.data.as_ref().and_then(Sample::decode);
            if sample.is_none() {
                tracing::debug!(task = %t.id, "task stats in a format CRI stats do not decode");
            }
            Some((t.id.clone(), (t.timestamp, sample?)))
        })
        .collect()
}

/// One network interface's counters (`/proc/<pid>/net/dev`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetDev {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// Parses `/proc/net/dev` text (procfs' parser); leaves out `lo`; by name. Text that
/// does not parse gives no interfaces.
pub fn parse_net_dev(text: &str) -> Vec<NetDev> {
    use procfs::FromRead;
    let Ok(procfs::net::InterfaceDeviceStatus(devs)) =
        procfs::net::InterfaceDeviceStatus::from_read(text.as_bytes())
    else {
        return Vec::new();
    };
    let mut out: Vec<NetDev> = devs
        .into_values()
        .filter(|d| d.name != "lo")
        .map(|d| NetDev {
            name: d.name,
            rx_bytes: d.recv_bytes,
            rx_packets: d.recv_packets,
            rx_errors: d.recv_errs,
            rx_dropped: d.recv_drop,
            tx_bytes: d.sent_bytes,
            tx_packets: d.sent_packets,
            tx_errors: d.sent_errs,
            tx_dropped: d.sent_drop,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The interfaces of the network namespace `pid` lives in (empty when it is gone).
pub fn net_dev_of(proc_root: &Path, pid: u32) -> Vec<NetDev> {
    if pid == 0 {
        return Vec::new();
    }
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("net/dev"))
        .map(|t| parse_net_dev(&t))
        .unwrap_or_default()
}

/// Pressure stall information of one cgroup v2 resource (`cpu`, `memory`, `io`).
pub type Psi = taskd_proto::cri::v1::PsiStats;

/// The PSI of `<resource>.pressure` in the cgroup v2 directory of process `pid` (its `0::`
/// line of `/proc/<pid>/cgroup` under `cgroup_root`); None on cgroup v1, for a process that
/// is gone, or a kernel without PSI.
pub fn psi_of(proc_root: &Path, cgroup_root: &Path, pid: u32, resource: &str) -> Option<Psi> {
    psi_in(&cgroup_v2_dir(proc_root, cgroup_root, pid)?, resource)
}

/// The cgroup v2 directory of process `pid` (its `0::` line of `/proc/<pid>/cgroup` under
/// `cgroup_root`); None on cgroup v1 or for a process that is gone.
pub fn cgroup_v2_dir(proc_root: &Path, cgroup_root: &Path, pid: u32) -> Option<std::path::PathBuf> {
    if pid == 0 {
        return None;
    }
    let own = procfs::process::Process::new_with_root(proc_root.join(pid.to_string()))
        .and_then(|p| p.cgroups())
        .ok()?;
    let unified = own
        .into_iter()
        .find(|c| c.hierarchy == 0 && c.controllers.is_empty())?;
    Some(cgroup_root.join(unified.pathname.trim_start_matches('/')))
}

/// The PSI of `<resource>.pressure` in cgroup v2 directory `dir`.
pub fn psi_in(dir: &Path, resource: &str) -> Option<Psi> {
    parse_psi(&std::fs::read_to_string(dir.join(format!("{resource}.pressure"))).ok()?)
}

/// A `*.pressure` file: `some avg10=0.00 avg60=0.00 avg300=0.00 total=0` and (cpu since
/// 5.13, memory, io) a `full` line; None when there is no `some` line.
pub fn parse_psi(text: &str) -> Option<Psi> {
    use taskd_proto::cri::v1::PsiData;
    let line = |kind: &str| -> Option<PsiData> {
        let rest = text
            .lines()
            .find_map(|l| l.strip_prefix(kind)?.strip_prefix(' '))?;
        let mut d = PsiData::default();
        for field in rest.split_whitespace() {
            let (k, v) = field.split_once('=')?;
            match k {
                "avg10" => d.avg10 = v.parse().ok()?,
                "avg60" => d.avg60 = v.parse().ok()?,
                "avg300" => d.avg300 = v.parse().ok()?,
                "total" => d.total = v.parse().ok()?,
                _ => {}
            }
        }
        Some(d)
    };
    let some = line("some")?;
    Some(Psi {
        full: line("full"),
        some: Some(some),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_from_the_process_cgroup_v2_dir() {
        let dir = tempfile::tempdir().unwrap();
        let (proc_root, cg) = (dir.path().join("proc"), dir.path().join("cg"));
        std::fs::create_dir_all(proc_root.join("42")).unwrap();
        std::fs::create_dir_all(cg.join("kubepods/pod1/c1")).unwrap();
        std::fs::write(proc_root.join("42/cgroup"), "0::/kubepods/pod1/c1\n").unwrap();
        std::fs::write(
            cg.join("kubepods/pod1/c1/cpu.pressure"),
            "some avg10=1.50 avg60=0.25 avg300=0.00 total=12345\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
        )
        .unwrap();
        let psi = psi_of(&proc_root, &cg, 42, "cpu").unwrap();
        let some = psi.some.unwrap();
        assert_eq!((some.avg10, some.avg60, some.total), (1.5, 0.25, 12345));
        assert_eq!(psi.full.unwrap().total, 7);
        assert!(psi_of(&proc_root, &cg, 42, "io").is_none(), "no io.pressure");
        assert!(psi_of(&proc_root, &cg, 0, "cpu").is_none());
        // cgroup v1: no `0::` line.
        std::fs::write(proc_root.join("42/cgroup"), "4:memory:/kubepods/pod1/c1\n").unwrap();
        assert!(psi_of(&proc_root, &cg, 42, "cpu").is_none());
        assert!(parse_psi("full avg10=0.00 avg60=0.00 avg300=0.00 total=7\n").is_none());
        assert!(parse_psi("some avg10=x avg60=0 avg300=0 total=1\n").is_none());
    }

    #[test]
    fn v1_and_v2_decode_to_the_same_fields() {
        let m1 = v1::Metrics {
            cpu: Some(v1::CpuStat {
                usage: Some(v1::CpuUsage {
                    total: 3_000,
                    kernel: 1_000,
                    user: 2_000,
                    per_cpu: vec![],
                }),
                throttling: None,
            }),
            memory: Some(v1::MemoryStat {
                total_inactive_file: 100,
                total_rss: 400,
                total_pg_fault: 7,
                usage: Some(v1::MemoryEntry {
                    usage: 1_000,
                    max: 2_000,
                    limit: 4_096,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            pids: Some(v1::PidsStat { current: 3, limit: 0 }),
            ..Default::default()
        };
        let any = prost_types::Any {
            type_url: format!("types.containerd.io/{V1_URL}"),
            value: m1.encode_to_vec(),
        };
        let s = Sample::decode(&any).unwrap();
        assert_eq!(s.cpu_total_ns, Some(3_000));
        assert_eq!(s.cpu_system_ns, Some(1_000));
        assert_eq!(s.mem_working_set, Some(900));
        assert_eq!(s.mem_rss, Some(400));
        assert_eq!(s.processes, Some(3));

        let m2 = v2::Metrics {
            cpu: Some(v2::CpuStat {
                usage_usec: 3,
                user_usec: 2,
                system_usec: 1,
                ..Default::default()
            }),
            memory: Some(v2::MemoryStat {
                usage: 1_000,
                usage_limit: 4_096,
                swap_usage: 10,
                swap_limit: u64::MAX,
                inactive_file: 100,
                anon: 400,
                pgfault: 7,
                ..Default::default()
            }),
            pids: Some(v2::PidsStat { current: 3, limit: 0 }),
            ..Default::default()
        };
        let any = prost_types::Any {
            type_url: format!("types.containerd.io/{V2_URL}"),
            value: m2.encode_to_vec(),
        };
        let s2 = Sample::decode(&any).unwrap();
        assert_eq!(s2.cpu_total_ns, Some(3_000));
        assert_eq!(s2.mem_working_set, s.mem_working_set);
        assert_eq!(s2.mem_rss, s.mem_rss);
        assert_eq!(s2.page_faults, s.page_faults);
        assert_eq!(s2.processes, s.processes);
        assert_eq!((s.mem_limit, s2.mem_limit), (Some(4_096), Some(4_096)));
        assert_eq!((s2.mem_swap, s2.mem_swap_limit), (Some(10), None), "swap max");
        assert_eq!(limit(0x7FFF_FFFF_FFFF_F000), None, "v1 unlimited");
        assert_eq!(limit(u64::MAX), None, "v2 max");

        assert!(
            Sample::decode(&prost_types::Any {
                type_url: "x/other".into(),
                value: vec![]
            })
            .is_none()
        );
    }

    #[test]
    fn sums_keep_absent_fields_absent() {
        let a = Sample {
            cpu_total_ns: Some(5),
            processes: Some(1),
            ..Default::default()
        };
        let b = Sample {
            cpu_total_ns: Some(7),
            ..Default::default()
        };
        let t = Sample::sum([&a, &b]);
        assert_eq!(t.cpu_total_ns, Some(12));
        assert_eq!(t.processes, Some(1));
        assert_eq!(t.mem_usage, None);
    }

    #[test]
    fn net_dev_skips_headers_and_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
 lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  \
eth0:    1500      10    1    2    0     0          0         0     2500      20    3    4    0     0       0          0\n";
        let devs = parse_net_dev(text);
        assert_eq!(
            devs,
            vec![NetDev {
                name: "eth0".into(),
                rx_bytes: 1500,
                rx_packets: 10,
                rx_errors: 1,
                rx_dropped: 2,
                tx_bytes: 2500,
                tx_packets: 20,
                tx_errors: 3,
                tx_dropped: 4,
            }]
        );
    }
}

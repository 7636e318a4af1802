//! Cost of one metrics collection by the cgroups task monitor with 1, 50 and 200 monitored
//! tasks. Not a test: prints a table (copied into docs/BENCHMARKS.md, "Metrics scrape").
//!
//! Each "task" is a real cgroup created on this host (`taskd-bench-<pid>-<i>` under every
//! v1 controller, or under the v2 root) holding one sleeping process, monitored by its pid
//! exactly as the tasks service does for a container. Running 200 containers would only add
//! shims, which the monitor never talks to while collecting.
//!
//! Run as root: `cargo bench --bench scrape` (add `-- --iterations 50` to change the
//! sample count). Cleans up its processes (by pid) and cgroups (by path) on exit.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use prometheus::Encoder;
use taskd::monitor::cgroups::{CgroupsMonitor, CollectOptions, Hierarchy, Mode, hierarchy::V1_CONTROLLERS};
use taskd::monitor::{MonitoredTask, TaskMonitor};

/// Cgroups and processes of one run; removed on drop.
struct Fixture {
    dirs: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Fixture {
    fn create(h: &Hierarchy, n: usize) -> Result<(Fixture, Vec<MonitoredTask>)> {
        let mut fx = Fixture {
            dirs: Vec::new(),
            children: Vec::new(),
        };
        let mut tasks = Vec::new();
        for i in 0..n {
            let name = format!("taskd-bench-{}-{i}", std::process::id());
            let dirs: Vec<PathBuf> = match h.mode {
                Mode::V1 => V1_CONTROLLERS
                    .iter()
                    .filter(|c| h.root.join(c).is_dir())
                    .map(|c| h.root.join(c).join(&name))
                    .collect(),
                Mode::V2 => vec![h.root.join(&name)],
            };
            for d in &dirs {
                std::fs::create_dir(d).with_context(|| format!("mkdir {}", d.display()))?;
                fx.dirs.push(d.clone());
            }
            let child = Command::new("sleep")
                .arg("3600")
                .stdin(Stdio::null())
                .spawn()
                .context("spawn sleep")?;
            let pid = child.id();
            fx.children.push(child);
            for d in &dirs {
                std::fs::write(d.join("cgroup.procs"), pid.to_string())
                    .with_context(|| format!("move {pid} into {}", d.display()))?;
            }
            tasks.push(MonitoredTask {
                namespace: "bench".into(),
                id: name,
                pid,
                cgroups_path: None,
                labels: BTreeMap::from([("runtime".into(), "io.containerd.runc.v2".into())]),
            });
        }
        Ok((fx, tasks))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for d in self.dirs.iter().rev() {
            for _ in 0..50 {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

struct Row {
    tasks: usize,
    parallelism: usize,
    series: usize,
    bytes: usize,
    median: Duration,
    p90: Duration,
    /// Mean CPU time per collection of the whole process (all threads): user, system.
    user: Duration,
    sys: Duration,
}

/// (user, system) CPU time of this process so far.
fn cpu_times() -> (Duration, Duration) {
    match nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let d = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
            (d(u.user_time()), d(u.system_time()))
        }
        Err(_) => (Duration::ZERO, Duration::ZERO),
    }
}

fn measure(h: &Hierarchy, tasks: &[MonitoredTask], parallelism: usize, iterations: usize) -> Row {
    let m = CgroupsMonitor::new(
        h.clone(),
        CollectOptions {
            task_timeout: Duration::from_secs(2),
            parallelism,
        },
    )
    .expect("monitor");
    for t in tasks {
        m.monitor(t.clone());
    }
    let mut times = Vec::with_capacity(iterations);
    let mut bytes = 0;
    let mut series = 0;
    let _ = m.collect_families(); // warm-up (page cache, dentries)
    let (u0, s0) = cpu_times();
    for _ in 0..iterations {
        let start = Instant::now();
        let mfs = m.collect_families();
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&mfs, &mut buf)
            .expect("encode");
        times.push(start.elapsed());
        bytes = buf.len();
        series = mfs.iter().map(|f| f.get_metric().len()).sum();
    }
    let (u1, s1) = cpu_times();
    times.sort();
    Row {
        user: (u1 - u0) / iterations as u32,
        sys: (s1 - s0) / iterations as u32,
        tasks: tasks.len(),
        parallelism,
        series,
        bytes,
        median: times[times.len() / 2],
        p90: times[(times.len() * 9 / 10).min(times.len() - 1)],
    }
}

fn main() -> Result<()> {
    let mut iterations = 30;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--iterations" {
            iterations = args.next().context("--iterations N")?.parse()?;
        }
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("the scrape benchmark creates cgroups: run it as root");
    }
    let h = Hierarchy::detect(Path::new("/sys/fs/cgroup"), Path::new("/proc"))?;
    println!(
        "cgroups task monitor: one collection + text encoding, cgroup {}, {} iterations, {} cpus",
        h.mode.as_str(),
        iterations,
        std::thread::available_parallelism()
            .map(std::num::NonZero::get)
            .unwrap_or(1)
    );
    println!(
        "| tasks | parallelism | series | bytes | bytes/task | median | p90 | median/task | cpu user | cpu sys |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in [1usize, 50, 200] {
        let (fx, tasks) = Fixture::create(&h, n)?;
        for parallelism in [1usize, CollectOptions::default().parallelism] {
            let r = measure(&h, &tasks, parallelism, iterations);
            println!(
                "| {} | {} | {} | {} | {} | {:.2} ms | {:.2} ms | {:.1} µs | {:.2} ms | {:.2} ms |",
                r.tasks,
                r.parallelism,
                r.series,
                r.bytes,
                r.bytes / r.tasks,
                r.median.as_secs_f64() * 1e3,
                r.p90.as_secs_f64() * 1e3,
                r.median.as_secs_f64() * 1e6 / r.tasks as f64,
                r.user.as_secs_f64() * 1e3,
                r.sys.as_secs_f64() * 1e3,
            );
        }
        drop(fx);
    }
    Ok(())
}

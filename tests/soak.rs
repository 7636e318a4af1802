//! Soak with leak accounting (issue 17, item 2): pod after pod through the CRI, with the
//! daemon killed (`kill -9`) at a random point of one cycle in ten and started again, and
//! everything a pod leaves on the node counted every 100 cycles against a baseline.
//!
//! One cycle: RunPodSandbox, CreateContainer, StartContainer, ExecSync, StopPodSandbox,
//! RemovePodSandbox. Even cycles run a pod that shares one PID namespace (a pause container),
//! odd ones the usual kubelet pod (PID namespace per container: no pause container). In a
//! killed cycle the calls run on a task while the test sends SIGKILL after a random delay
//! within an average cycle; after the restart the test does what kubelet does with pods it
//! does not know or that failed half-way: lists every pod and stops and removes it.
//!
//! Counted (see [`Counts`]): mounts under the daemon's dirs, pinned network namespaces (taskd
//! pins them under `<state>/<plugin>/netns`, not `/run/netns`), pinned IPC/UTS dirs,
//! host-local IP leases, cgroups under the pods' parent (every controller), the daemon's fds
//! and threads, shim processes of this daemon, bundles, container exec dirs and FIFOs, every
//! entry under the state dir, the CRI record files, `meta.redb`'s size, and the daemon's RSS.
//! A checkpoint waits (bounded) for the counts to settle (a dead container's cgroup and an
//! idle blocking thread go a little after the last call), then requires every count at its
//! baseline, `meta.redb` no larger than at the first checkpoint, and RSS within 10 %.
//!
//! `cargo test --test soak -- --include-ignored --nocapture` runs 200 cycles;
//! `scripts/soak.sh CYCLES` runs this same test with `TASKD_SOAK_CYCLES=CYCLES`.
//! `TASKD_SOAK_SEED` replays a run (the seed is printed).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "support/cri_world.rs"]
mod cri_world;
mod support;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cri_world::CriWorld;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

/// Cycles of the suite's run; `TASKD_SOAK_CYCLES` overrides.
const CYCLES: usize = 200;
/// Cycles between checkpoints.
const EVERY: usize = 100;
/// One cycle in this many is killed.
const KILL_ONE_IN: usize = 10;
/// How long a checkpoint waits for the counts to come back.
const SETTLE: Duration = Duration::from_secs(20);
/// How much the daemon's RSS may grow over the baseline, in percent.
const RSS_GROWTH_PCT: u64 = 10;

/// What the node holds for this daemon at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    mounts: usize,
    netns: usize,
    podns: usize,
    leases: usize,
    cgroups: usize,
    fds: usize,
    threads: usize,
    shims: usize,
    bundles: usize,
    exec_dirs: usize,
    fifos: usize,
    state_entries: usize,
    records: usize,
    meta_bytes: u64,
    rss_kib: u64,
}

impl Counts {
    /// The counts that must be back at the baseline: (name, now, baseline).
    fn exact(&self, base: &Counts) -> Vec<(&'static str, usize, usize)> {
        vec![
            ("mounts", self.mounts, base.mounts),
            ("netns", self.netns, base.netns),
            ("podns", self.podns, base.podns),
            ("leases", self.leases, base.leases),
            ("cgroups", self.cgroups, base.cgroups),
            ("fds", self.fds, base.fds),
            ("threads", self.threads, base.threads),
            ("shims", self.shims, base.shims),
            ("bundles", self.bundles, base.bundles),
            ("exec_dirs", self.exec_dirs, base.exec_dirs),
            ("fifos", self.fifos, base.fifos),
            ("state_entries", self.state_entries, base.state_entries),
            ("records", self.records, base.records),
        ]
    }

    /// The larger of each count.
    fn max(&self, o: &Counts) -> Counts {
        Counts {
            mounts: self.mounts.max(o.mounts),
            netns: self.netns.max(o.netns),
            podns: self.podns.max(o.podns),
            leases: self.leases.max(o.leases),
            cgroups: self.cgroups.max(o.cgroups),
            fds: self.fds.max(o.fds),
            threads: self.threads.max(o.threads),
            shims: self.shims.max(o.shims),
            bundles: self.bundles.max(o.bundles),
            exec_dirs: self.exec_dirs.max(o.exec_dirs),
            fifos: self.fifos.max(o.fifos),
            state_entries: self.state_entries.max(o.state_entries),
            records: self.records.max(o.records),
            meta_bytes: self.meta_bytes.max(o.meta_bytes),
            rss_kib: self.rss_kib.max(o.rss_kib),
        }
    }

    /// What is above the baseline (RSS aside).
    fn above(&self, base: &Counts) -> Vec<String> {
        self.exact(base)
            .into_iter()
            .filter(|(_, now, was)| now > was)
            .map(|(n, now, was)| format!("{n} {was} -> {now}"))
            .collect()
    }

    fn header() -> String {
        "| cycles | kills | mounts | netns | podns | leases | cgroups | fds | threads | shims | bundles | exec dirs | fifos | state entries | CRI records | meta.redb KiB | RSS KiB | s |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            .to_owned()
    }

    fn row(&self, cycles: usize, kills: usize, secs: f64) -> String {
        format!(
            "| {cycles} | {kills} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {secs:.0} |",
            self.mounts,
            self.netns,
            self.podns,
            self.leases,
            self.cgroups,
            self.fds,
            self.threads,
            self.shims,
            self.bundles,
            self.exec_dirs,
            self.fifos,
            self.state_entries,
            self.records,
            self.meta_bytes / 1024,
            self.rss_kib,
        )
    }
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Entries of `<dir>/<plugin>/<sub>` for every plugin dir under `dir`.
fn plugin_entries(dir: &Path, sub: &str) -> usize {
    entries(dir).iter().map(|p| entries(&p.join(sub)).len()).sum()
}

/// Walks `dir` without crossing mounts: (entries, FIFOs, dirs named `exec`'s children).
fn walk(dir: &Path, dev: u64, acc: &mut (usize, usize, usize)) {
    for p in entries(dir) {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        acc.0 += 1;
        if m.file_type().is_fifo() {
            acc.1 += 1;
        }
        if m.is_dir() && m.dev() == dev {
            if p.file_name().is_some_and(|n| n == "exec") {
                acc.2 += entries(&p).len();
            }
            walk(&p, dev, acc);
        }
    }
}

/// Directories under `root`, `root` included when it exists.
fn dirs_under(root: &Path) -> usize {
    if !root.is_dir() {
        return 0;
    }
    1 + entries(root)
        .iter()
        .filter(|p| p.is_dir())
        .map(|p| dirs_under(p))
        .sum::<usize>()
}

fn proc_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn count(w: &CriWorld) -> Counts {
    let d = w.taskd();
    let pid = d.pid();
    let mounts = support::procs::mounts_under(&d.dir);
    let ipam = w.dir.path().join("ipam");
    let leases = entries(&ipam)
        .iter()
        .flat_map(|net| entries(net))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().parse::<std::net::IpAddr>().is_ok())
        })
        .count();
    let parent = w.cgroup_parent();
    let cgroups = entries(Path::new("/sys/fs/cgroup"))
        .iter()
        .map(|c| dirs_under(&c.join(parent.trim_start_matches('/'))))
        .sum();
    let socket = d.socket.display().to_string();
    let shims = support::procs::command_lines()
        .into_iter()
        .filter(|(p, args)| *p != pid && args.contains(&socket))
        .count();
    let tasks = d.state.join("io.containerd.runtime.v2.task");
    let bundles = entries(&tasks)
        .iter()
        .filter(|ns| ns.file_name().is_some_and(|n| n != ".pool"))
        .map(|ns| entries(ns).len())
        .sum();
    let mut walked = (0, 0, 0);
    if let Ok(m) = std::fs::metadata(&d.state) {
        walk(&d.state, m.dev(), &mut walked);
    }
    let records = ["sandboxes", "containers"]
        .iter()
        .map(|s| plugin_entries(&d.root, s))
        .sum();
    let meta_bytes = entries(&d.root)
        .iter()
        .filter_map(|p| std::fs::metadata(p.join("meta.redb")).ok())
        .map(|m| m.len())
        .sum();
    Counts {
        mounts,
        netns: plugin_entries(&d.state, "netns"),
        podns: plugin_entries(&d.state, "podns"),
        leases,
        cgroups,
        fds: support::procs::fd_count(pid),
        threads: entries(Path::new(&format!("/proc/{pid}/task"))).len(),
        shims,
        bundles,
        exec_dirs: walked.2,
        fifos: walked.1,
        state_entries: walked.0,
        records,
        meta_bytes,
        rss_kib: proc_kib(pid, "VmRSS:"),
    }
}

/// Counts once nothing is above `base` any more, or after [`SETTLE`] as they are.
fn settled(w: &CriWorld, base: &Counts) -> Counts {
    let deadline = Instant::now() + SETTLE;
    loop {
        let c = count(w);
        if c.above(base).is_empty() || Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// xorshift64*: the kill points (reproducible from the printed seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// One pod's configs: the usual kubelet pod (no pause container) or, with `share_pid`, one
/// PID namespace for the pod (a pause container).
fn pod(w: &CriWorld, name: &str, share_pid: bool) -> (cri::PodSandboxConfig, cri::ContainerConfig) {
    let mode = if share_pid {
        cri::NamespaceMode::Pod
    } else {
        cri::NamespaceMode::Container
    };
    let ns = cri::NamespaceOption {
        pid: mode as i32,
        ..Default::default()
    };
    let mut cfg = w.pod_config(name);
    cfg.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options = Some(ns.clone());
    let mut c = cri_world::container("app", "exec sleep 3600");
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(ns),
            ..Default::default()
        }),
        ..Default::default()
    });
    (cfg, c)
}

/// The six calls of one cycle; the first failure as text.
async fn cycle(
    mut rt: RuntimeServiceClient<Channel>,
    cfg: cri::PodSandboxConfig,
    c: cri::ContainerConfig,
) -> Result<(), String> {
    let e = |what: &'static str| move |s: tonic::Status| format!("{what}: {s:?}");
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .map_err(e("RunPodSandbox"))?
        .into_inner()
        .pod_sandbox_id;
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(c),
            sandbox_config: Some(cfg),
        })
        .await
        .map_err(e("CreateContainer"))?
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .map_err(e("StartContainer"))?;
    let r = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id,
            cmd: vec!["/bin/echo".into(), "soak".into()],
            timeout: 10,
        })
        .await
        .map_err(e("ExecSync"))?
        .into_inner();
    if (r.stdout.as_slice(), r.exit_code) != (&b"soak\n"[..], 0) {
        return Err(format!("ExecSync answered {r:?}"));
    }
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .map_err(e("StopPodSandbox"))?;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod })
        .await
        .map_err(e("RemovePodSandbox"))?;
    Ok(())
}

/// What kubelet does after a restart for pods it lost track of: stop and remove every pod.
/// The number of pods found.
async fn remove_all(rt: &mut RuntimeServiceClient<Channel>) -> usize {
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .expect("ListPodSandbox after the restart")
        .into_inner()
        .items;
    for p in &pods {
        support::cri_client::stop_and_remove(rt, &p.id).await;
    }
    let left = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert!(
        left.is_empty(),
        "containers left after removing every pod: {left:?}"
    );
    pods.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry; ~3 min"]
async fn soak_pods_with_kill9_leaves_nothing_behind() {
    let cycles: usize = std::env::var("TASKD_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CYCLES);
    let seed: u64 = std::env::var("TASKD_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
        | 1;
    println!("soak: {cycles} cycles, seed {seed} (TASKD_SOAK_SEED replays it)");
    let mut rng = Rng(seed);
    let mut w = CriWorld::start(120, "");

    // Warm-up: the image pulled, both kinds of pod, a kill -9 and both kinds again, so the
    // baseline is a daemon that recovered and has its warm shim pool filled (one idle shim
    // with its pool dir, log FIFO and connection).
    {
        let mut rt = w.runtime().await;
        let (cfg, _) = pod(&w, "warm", false);
        let p = w.run_pod(&mut rt, &cfg).await;
        support::cri_client::stop_and_remove(&mut rt, &p).await;
    }
    for round in 0..2 {
        let rt = w.runtime().await;
        for share in [false, true] {
            let (cfg, c) = pod(&w, &format!("warm-{round}-{share}"), share);
            cycle(rt.clone(), cfg, c).await.expect("warm-up cycle");
        }
        if round == 0 {
            w.server.kill9();
            w.server.restart();
        }
    }
    // The baseline: the most of each count over 12 s of an idle daemon (the pool's refill
    // waits a second for a taken shim to come back; periodic work keeps a blocking-pool
    // thread alive, but only once it first ran, some seconds after the start).
    let mut base = Counts::default();
    for _ in 0..24 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        base = base.max(&count(&w));
    }
    println!("{}", Counts::header());
    println!("{}", base.row(0, 0, 0.0));

    let t0 = Instant::now();
    let mut kills = 0;
    let mut recovered_pods = 0;
    let mut avg_cycle = Duration::from_millis(500);
    let mut first_meta = None;
    let mut rt = w.runtime().await;
    for i in 1..=cycles {
        let (cfg, c) = pod(&w, &format!("soak-{i}"), i % 2 == 0);
        if i % KILL_ONE_IN == KILL_ONE_IN / 2 {
            // kill -9 at a random point of this cycle, then what kubelet does.
            let at = Duration::from_micros(rng.next() % (avg_cycle.as_micros() as u64).max(1));
            let calls = tokio::spawn(cycle(rt.clone(), cfg, c));
            tokio::time::sleep(at).await;
            w.server.kill9();
            kills += 1;
            let _ = calls.await.expect("the cycle's task");
            w.server.restart();
            rt = w.runtime().await;
            recovered_pods += remove_all(&mut rt).await;
        } else {
            let start = Instant::now();
            if let Err(e) = cycle(rt.clone(), cfg, c).await {
                panic!(
                    "cycle {i}: {e}\n--- daemon log (tail) ---\n{}",
                    tail(&w.server_log())
                );
            }
            avg_cycle = (avg_cycle * 7 + start.elapsed()) / 8;
        }
        let _ = std::fs::remove_dir_all(w.dir.path().join("logs").join(format!("soak-{i}")));
        if i % EVERY == 0 || i == cycles {
            // No client connection of the test's own counted.
            drop(rt);
            let now = settled(&w, &base);
            println!("{}", now.row(i, kills, t0.elapsed().as_secs_f64()));
            let above = now.above(&base);
            assert!(
                above.is_empty(),
                "after {i} cycles ({kills} kill -9), above the baseline: {above:?}\nbaseline {base:?}\nnow {now:?}\n{}",
                leak_report(&w)
            );
            let meta = *first_meta.get_or_insert(now.meta_bytes);
            assert!(
                now.meta_bytes <= meta,
                "meta.redb grew from {meta} to {} bytes after {i} cycles",
                now.meta_bytes
            );
            assert!(
                now.rss_kib * 100 <= base.rss_kib * (100 + RSS_GROWTH_PCT),
                "daemon RSS grew more than {RSS_GROWTH_PCT} %: {} -> {} KiB after {i} cycles",
                base.rss_kib,
                now.rss_kib
            );
            rt = w.runtime().await;
        }
    }
    println!(
        "soak: {cycles} cycles, {kills} kill -9 (pods found and removed after them: {recovered_pods}), {:.0} s",
        t0.elapsed().as_secs_f64()
    );
}

/// The task bundles left, with what the daemon logged about each (or the log's tail).
fn leak_report(w: &CriWorld) -> String {
    let log = w.server_log();
    let tasks = w.taskd().state.join("io.containerd.runtime.v2.task");
    let mut out = String::new();
    for b in entries(&tasks)
        .iter()
        .filter(|ns| ns.file_name().is_some_and(|n| n != ".pool"))
        .flat_map(|ns| entries(ns))
    {
        let id = b
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push_str(&format!(
            "--- bundle {} left: {:?}; its log lines ---\n",
            b.display(),
            entries(&b)
        ));
        for l in log.lines().filter(|l| l.contains(&id)) {
            out.push_str(l);
            out.push('\n');
        }
    }
    // Pool shims: every pool dir left, and what the log says of the pool.
    for d in entries(&tasks.join(".pool")).iter().flat_map(|ns| entries(ns)) {
        out.push_str(&format!("--- pool dir {} left: {:?}\n", d.display(), entries(&d)));
    }
    for l in log.lines().filter(|l| l.contains("pool shim")) {
        out.push_str(l);
        out.push('\n');
    }
    if out.is_empty() {
        out = format!("--- daemon log (tail) ---\n{}", tail(&log));
    }
    out
}

/// The last 60 lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

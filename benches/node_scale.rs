//! A full node (issue 17, item 1): 110 pods against taskd and against Debian's containerd
//! with its CRI plugin, in one run, through the same client (k8s-cri), images and CNI chain
//! (bridge + host-local on a private subnet each; see benches/common/cri.rs). Not a test:
//! prints tables (copied into docs/BENCHMARKS.md, "A full node").
//!
//! For each daemon in turn (the other one idle):
//! 1. `--pods` pods started one after another, each with one busybox container (`echo
//!    started; exec sleep 3600`, the kubelet namespaces: network and IPC per pod, PID per
//!    container): time to all running, p50 and p99 per pod.
//! 2. Steady state: daemon RSS and PSS, PSS of daemon + shims + pause processes per pod,
//!    daemon (and shims') CPU over `--idle-secs` idle seconds, the latency of ListPodSandbox,
//!    ListContainers, ListContainerStats, ListPodSandboxStats (median of 5) and of one
//!    `/v1/metrics` scrape.
//! 3. `kill -9`, then the daemon exec'd again: time to the first answered CRI call
//!    (Version) and to every pod READY and every container RUNNING as ListPodSandbox and
//!    ListContainers show them; then ExecSync in every container writes a mark to its
//!    container's stdout (`/proc/1/fd/1`), which must show in every container's log.
//! 4. SIGTERM, the same.
//! 5. Tear-down (StopPodSandbox + RemovePodSandbox, one pod after another): time, and what is
//!    left: network namespaces (taskd's pins, containerd's /run/netns entries of its pods),
//!    host-local leases, shims, mounts under the daemon's dir.
//! 6. `--pods` pods started `--parallel` at a time: time to all running, p50, p99; torn
//!    down `--parallel` at a time.
//!
//! Run as root: `cargo bench --bench node_scale` (`-- --pods 110 --parallel 10 --idle-secs
//! 60 --only taskd|containerd`). Build taskd and its shim in release first (`cargo build
//! --release`, then the shim as `scripts/run.sh` builds it: the `shim` profile, linked
//! statically, copied next to taskd); `TASKD_BIN` overrides the taskd binary. The logs stay under the printed temp dir on failure.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "common/cri.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::*;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

struct Args {
    pods: usize,
    parallel: usize,
    idle_secs: u64,
    only: Option<String>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        pods: 110,
        parallel: 10,
        idle_secs: 60,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().context("missing value");
        match flag.as_str() {
            "--pods" => a.pods = val()?.parse()?,
            "--parallel" => a.parallel = val()?.parse::<usize>()?.max(1),
            "--idle-secs" => a.idle_secs = val()?.parse()?,
            "--only" => a.only = Some(val()?),
            "--bench" => {}
            other => bail!("unknown argument {other:?} (--pods N --parallel N --idle-secs N --only NAME)"),
        }
    }
    Ok(a)
}

/// A start of many pods: the time to all running and each pod's.
#[derive(Default)]
struct Starts {
    total: Duration,
    each: Vec<Duration>,
}

/// A restart: exec to the first answered CRI call, and to all READY / RUNNING.
#[derive(Default)]
struct Restart {
    first_answer: Duration,
    all_ready: Duration,
    /// Containers whose ExecSync worked and whose log shows the mark afterwards.
    exec_ok: usize,
    log_ok: usize,
}

/// What one daemon did.
#[derive(Default)]
struct Result1 {
    sequential: Starts,
    parallel: Starts,
    rss: u64,
    footprint: Footprint,
    /// Daemon and shims CPU over the idle window, in % of one CPU.
    idle_cpu: f64,
    idle_cpu_shims: f64,
    /// None: the call failed (containerd 1.6 cannot answer ListPodSandboxStats for pods
    /// without a cgroup parent).
    lists: [Option<Duration>; 4],
    scrape: Duration,
    scrape_bytes: usize,
    kill9: Restart,
    sigterm: Restart,
    teardown: Duration,
    teardown_parallel: Duration,
    leftovers: String,
    load: String,
}

const APP: &str = "echo started; exec sleep 3600";

/// Starts `n` pods, `parallel` at a time; the timings and the pod ids.
async fn start_pods(
    ch: &Channel,
    w: &Path,
    tag: &str,
    n: usize,
    parallel: usize,
) -> Result<(Starts, Vec<String>)> {
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut set = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let (ch, w, name) = (ch.clone(), w.to_owned(), format!("{tag}-{i}"));
        let cmd = vec!["/bin/sh".into(), "-c".into(), APP.into()];
        set.spawn(async move {
            let r = start_pod_running(ch, w, name, cmd).await;
            drop(permit);
            r
        });
    }
    let (started, first_err) = join_starts(set).await?;
    let mut s = Starts::default();
    let mut pods = Vec::new();
    for (t, pod) in started {
        s.each.push(t.total);
        pods.push(pod);
    }
    s.total = t0.elapsed();
    if let Some(e) = first_err {
        remove_parallel(ch, &pods, parallel).await?;
        return Err(e);
    }
    Ok((s, pods))
}

async fn remove_parallel(ch: &Channel, pods: &[String], parallel: usize) -> Result<()> {
    let mut set = tokio::task::JoinSet::new();
    for chunk in pods.chunks(pods.len().div_ceil(parallel).max(1)) {
        let (ch, chunk) = (ch.clone(), chunk.to_vec());
        set.spawn(async move { remove_pods(&ch, &chunk).await });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

/// (pods READY, containers RUNNING, pods, containers) as the CRI lists them.
async fn states(rt: &mut RuntimeServiceClient<Channel>) -> Result<(usize, usize, usize, usize)> {
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items;
    let cs = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers;
    Ok((
        pods.iter()
            .filter(|p| p.state == cri::PodSandboxState::SandboxReady as i32)
            .count(),
        cs.iter()
            .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
            .count(),
        pods.len(),
        cs.len(),
    ))
}

/// Restarts `d` (after `stop` ran on it) and measures it, with `n` pods expected.
async fn restart(
    d: &mut common::Daemon,
    w: &Path,
    n: usize,
    mark: &str,
    stop: fn(&mut common::Daemon),
) -> Result<Restart> {
    stop(d);
    let t0 = Instant::now();
    d.respawn()?;
    let mut r = Restart::default();
    // First answered CRI call: Version on a fresh connection, retried every 2 ms.
    let ch = loop {
        if let Ok(ch) = try_channel(&d.socket).await
            && RuntimeServiceClient::new(ch.clone())
                .version(cri::VersionRequest::default())
                .await
                .is_ok()
        {
            r.first_answer = t0.elapsed();
            break ch;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("{}: no CRI answer within 60 s of the restart", d.name);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let mut rt = RuntimeServiceClient::new(ch.clone());
    loop {
        if let Ok((ready, running, pods, cs)) = states(&mut rt).await
            && ready == n
            && running == n
            && pods == n
            && cs == n
        {
            r.all_ready = t0.elapsed();
            break;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!(
                "{}: not all {n} pods READY / RUNNING within 120 s: {:?}",
                d.name,
                states(&mut rt).await?
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // ExecSync in every container, writing the mark to its log through its init's stdout.
    let cs = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await?
        .into_inner()
        .containers;
    let names: std::collections::HashMap<String, String> = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items
        .into_iter()
        .map(|p| (p.id, p.metadata.map(|m| m.name).unwrap_or_default()))
        .collect();
    let mut logs = Vec::new();
    for c in &cs {
        let out = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: c.id.clone(),
                cmd: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    format!("echo {mark} > /proc/1/fd/1; echo ok"),
                ],
                timeout: 10,
            })
            .await;
        if let Ok(o) = out
            && o.get_ref().exit_code == 0
            && o.get_ref().stdout == b"ok\n"
        {
            r.exec_ok += 1;
        }
        let pod = names.get(&c.pod_sandbox_id).cloned().unwrap_or_default();
        logs.push(w.join("logs").join(pod).join("app/0.log"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        r.log_ok = logs
            .iter()
            .filter(|l| {
                let text = std::fs::read_to_string(l).unwrap_or_default();
                text.contains("started") && text.contains(mark)
            })
            .count();
        if r.log_ok == logs.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(r)
}

async fn try_channel(socket: &Path) -> Result<Channel> {
    let path = socket.to_owned();
    Ok(tonic::transport::Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await?)
}

/// Median of 5 of `f`.
async fn median5<F, Fut>(mut f: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut v = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        f().await?;
        v.push(t0.elapsed());
    }
    Ok(percentile(&v, 50.0))
}

async fn lists(ch: &Channel) -> [Option<Duration>; 4] {
    let rt = RuntimeServiceClient::new(ch.clone());
    let pods = median5(|| {
        let mut rt = rt.clone();
        async move {
            rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                .await?;
            Ok(())
        }
    })
    .await
    .ok();
    let cs = median5(|| {
        let mut rt = rt.clone();
        async move {
            rt.list_containers(cri::ListContainersRequest { filter: None })
                .await?;
            Ok(())
        }
    })
    .await
    .ok();
    let cstats = median5(|| {
        let mut rt = rt.clone();
        async move {
            rt.list_container_stats(cri::ListContainerStatsRequest { filter: None })
                .await?;
            Ok(())
        }
    })
    .await
    .ok();
    let pstats = median5(|| {
        let mut rt = rt.clone();
        async move {
            rt.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
                .await?;
            Ok(())
        }
    })
    .await
    .ok();
    [pods, cs, cstats, pstats]
}

/// Entries of /run/netns (where containerd pins its pods' network namespaces; taskd pins
/// them under its state dir).
fn run_netns() -> usize {
    std::fs::read_dir("/run/netns")
        .map(std::iter::Iterator::count)
        .unwrap_or(0)
}

/// What the node still holds for `d` after its pods are gone (`run_netns_before`: the
/// /run/netns entries before its pods).
fn leftovers(d: &common::Daemon, run_netns_before: usize) -> String {
    let count = |p: &Path| std::fs::read_dir(p).map(std::iter::Iterator::count).unwrap_or(0);
    let pins: usize = std::fs::read_dir(d.dir.join("state"))
        .map(|e| e.flatten().map(|p| count(&p.path().join("netns"))).sum())
        .unwrap_or(0);
    let leases = std::fs::read_dir(&d.ipam)
        .map(|e| {
            e.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .parse::<std::net::IpAddr>()
                        .is_ok()
                })
                .count()
        })
        .unwrap_or(0);
    let mounts = support::procs::mounts_under(&d.dir);
    let (shims, pause) = shims_and_pause(d);
    format!(
        "netns pins {pins}, /run/netns {:+}, leases {leases}, mounts {mounts}, shims {}, pause {}",
        run_netns() as i64 - run_netns_before as i64,
        shims.len(),
        pause.len()
    )
}

async fn run_daemon(d: &mut common::Daemon, w: &Path, a: &Args) -> Result<Result1> {
    let mut out = Result1::default();
    let ch = channel(&d.socket).await?;
    let netns_before = run_netns();
    let (seq, pods) = start_pods(&ch, w, &format!("{}-seq", d.name), a.pods, 1).await?;
    out.sequential = seq;
    // Steady state.
    tokio::time::sleep(Duration::from_secs(3)).await;
    out.rss = rss_kib(d.child.id());
    out.footprint = footprint(d);
    out.lists = lists(&ch).await;
    let t0 = Instant::now();
    let (code, body) = support::http_get(&d.metrics, "/v1/metrics", None)?;
    out.scrape = t0.elapsed();
    out.scrape_bytes = body.len();
    if code != 200 {
        bail!("{}: /v1/metrics answered {code}", d.name);
    }
    let (shims, _) = shims_and_pause(d);
    let shims_cpu = || shims.iter().map(|p| cpu_time(*p)).sum::<Duration>();
    let (c0, s0, t0) = (cpu_time(d.child.id()), shims_cpu(), Instant::now());
    out.load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(a.idle_secs)).await;
    let wall = t0.elapsed().as_secs_f64();
    out.idle_cpu = (cpu_time(d.child.id()) - c0).as_secs_f64() / wall * 100.0;
    out.idle_cpu_shims = (shims_cpu() - s0).as_secs_f64() / wall * 100.0;
    drop(ch);
    // Restarts.
    out.kill9 = restart(d, w, a.pods, "mark-kill9", common::Daemon::kill9).await?;
    out.sigterm = restart(d, w, a.pods, "mark-sigterm", common::Daemon::sigterm).await?;
    // Tear-down, one pod after another.
    let ch = channel(&d.socket).await?;
    let t0 = Instant::now();
    remove_pods(&ch, &pods).await?;
    out.teardown = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    out.leftovers = leftovers(d, netns_before);
    // 10 at a time.
    let (par, pods) = start_pods(&ch, w, &format!("{}-par", d.name), a.pods, a.parallel).await?;
    out.parallel = par;
    let t0 = Instant::now();
    remove_parallel(&ch, &pods, a.parallel).await?;
    out.teardown_parallel = t0.elapsed();
    Ok(out)
}

fn opt_ms(d: Option<Duration>) -> String {
    d.map(ms).unwrap_or_else(|| "error".into())
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn main() -> Result<()> {
    let a = args()?;
    let (w, reg, rt) = setup("node_scale", "taskd-bench-node-")?;
    let result = rt.block_on(async {
        let mut daemons = vec![
            start_containerd(w.path(), &reg.addr)?,
            start_taskd(w.path(), &reg.addr)?,
        ];
        daemons.retain(|d| a.only.as_deref().is_none_or(|o| o == d.name));
        for d in &daemons {
            prepare(d, w.path())
                .await
                .with_context(|| format!("{} warm-up", d.name))?;
        }
        let mut out = Vec::new();
        for d in &mut daemons {
            eprintln!("node_scale: {} ...", d.name);
            let r = run_daemon(d, w.path(), &a)
                .await
                .with_context(|| format!("{} run", d.name))?;
            out.push((d.name, r));
        }
        Ok::<_, anyhow::Error>((out, daemons))
    });
    let ((results, daemons), w) = keep_logs_on_error(result, w)?;
    drop(daemons);
    rt.shutdown_timeout(Duration::from_secs(5));
    keep_logs_if_asked(w);

    let n = a.pods;
    println!(
        "| daemon | {n} pods one by one: total s | p50 ms | p99 ms | {} at a time: total s | p50 ms | p99 ms |",
        a.parallel
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, r) in &results {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} |",
            secs(r.sequential.total),
            ms(percentile(&r.sequential.each, 50.0)),
            ms(percentile(&r.sequential.each, 99.0)),
            secs(r.parallel.total),
            ms(percentile(&r.parallel.each, 50.0)),
            ms(percentile(&r.parallel.each, 99.0)),
        );
    }
    println!(
        "\n| daemon ({n} pods) | RSS KiB | PSS KiB | shims PSS KiB | pause PSS KiB | node PSS per pod KiB | idle CPU daemon % | shims % | ListPodSandbox ms | ListContainers ms | ListContainerStats ms | ListPodSandboxStats ms | /v1/metrics ms (KiB) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, r) in &results {
        let f = &r.footprint;
        println!(
            "| {name} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {} | {} | {} | {} | {} ({}) |",
            r.rss,
            f.daemon,
            f.shims,
            f.pause,
            (f.daemon + f.shims + f.pause) / n.max(1) as u64,
            r.idle_cpu,
            r.idle_cpu_shims,
            opt_ms(r.lists[0]),
            opt_ms(r.lists[1]),
            opt_ms(r.lists[2]),
            opt_ms(r.lists[3]),
            ms(r.scrape),
            r.scrape_bytes / 1024,
        );
    }
    println!(
        "\n| daemon ({n} pods) | kill -9: first CRI answer s | all READY/RUNNING s | ExecSync ok | log continues | SIGTERM: first answer s | all READY/RUNNING s | ExecSync ok | log continues | tear-down one by one s | {} at a time s | left after tear-down |",
        a.parallel
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for (name, r) in &results {
        println!(
            "| {name} | {} | {} | {}/{n} | {}/{n} | {} | {} | {}/{n} | {}/{n} | {} | {} | {} |",
            secs(r.kill9.first_answer),
            secs(r.kill9.all_ready),
            r.kill9.exec_ok,
            r.kill9.log_ok,
            secs(r.sigterm.first_answer),
            secs(r.sigterm.all_ready),
            r.sigterm.exec_ok,
            r.sigterm.log_ok,
            secs(r.teardown),
            secs(r.teardown_parallel),
            r.leftovers,
        );
    }
    if let [(_, cd), (_, td)] = results.as_slice() {
        // Both zero: 1; containerd zero alone: no ratio (shown as inf).
        let ratio = |t: f64, c: f64| if t == c { 1.0 } else { t / c };
        let pp = |f: &Footprint| (f.daemon + f.shims + f.pause) as f64;
        println!("\n| ratio taskd / containerd | value | goal |");
        println!("|---|---:|---|");
        for (what, v, goal) in [
            (
                "kill -9 restart, all READY/RUNNING",
                ratio(td.kill9.all_ready.as_secs_f64(), cd.kill9.all_ready.as_secs_f64()),
                "≤ 0.35 (and ≤ 0.3 s)",
            ),
            (
                "sequential starts, total",
                ratio(
                    td.sequential.total.as_secs_f64(),
                    cd.sequential.total.as_secs_f64(),
                ),
                "≤ 0.6",
            ),
            (
                "parallel starts, total",
                ratio(td.parallel.total.as_secs_f64(), cd.parallel.total.as_secs_f64()),
                "",
            ),
            (
                "node PSS per pod",
                ratio(pp(&td.footprint), pp(&cd.footprint)),
                "≤ 0.5",
            ),
            ("idle daemon CPU", ratio(td.idle_cpu, cd.idle_cpu), "≤ 0.5"),
            ("daemon RSS", ratio(td.rss as f64, cd.rss as f64), ""),
            (
                "tear-down one by one",
                ratio(td.teardown.as_secs_f64(), cd.teardown.as_secs_f64()),
                "",
            ),
        ] {
            println!("| {what} | {v:.2} | {goal} |");
        }
    }
    for (name, r) in &results {
        println!("\n{name}: load average at the idle window: {}", r.load.trim());
    }
    println!(
        "{} CPUs; containerd {}",
        std::thread::available_parallelism()
            .map(std::num::NonZero::get)
            .unwrap_or(0),
        String::from_utf8_lossy(
            &std::process::Command::new("containerd")
                .arg("--version")
                .output()?
                .stdout
        )
        .trim()
    );
    Ok(())
}

//! Pod start latency through CRI: taskd against Debian's containerd with its CRI plugin, in
//! one run, through the same client (the `k8s-cri` crate). Not a test: prints a table
//! (copied into docs/BENCHMARKS.md, "CRI pod start").
//!
//! Also the node's memory per pod: PSS of the daemon, its shims and the pause processes with
//! the first round's sequential pods running.
//!
//! One pod start = RunPodSandbox + CreateContainer + StartContainer, until ContainerStatus
//! says RUNNING, with the namespace options kubelet sends for a pod without
//! `shareProcessNamespace` (network and IPC per pod, PID per container; `--share-pid`: one
//! PID namespace per pod, which needs a pause container). Measured for `--sequential` pods one after another and for `--concurrent`
//! pods at once, each daemon in turn, for `--rounds` rounds (alternating which daemon goes
//! first). Both daemons pull the same pause and busybox images (pulled before timing) from a
//! local `docker-registry` through a registry mirror config, and use the same CNI chain
//! (bridge + host-local on a private subnet each, no route out of the machine).
//!
//! Run as root: `cargo bench --bench cri_pods` (`-- --sequential 30 --concurrent 10
//! --rounds 2`). `TASKD_BIN` overrides the taskd binary (default: the one cargo built);
//! `TASKD_BENCH_LOG` is taskd's `RUST_LOG` (default `warn`), and keeps the logs.
//! Everything it starts is stopped by pid, pods are removed through CRI, bridges deleted,
//! and its temp dir removed (never across a mount).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "../tests/support/clients.rs"]
mod clients;
#[path = "common/cri.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::*;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

struct Args {
    sequential: usize,
    concurrent: usize,
    rounds: usize,
    /// ExecSync calls timed per daemon (0: skip the ExecSync part).
    execs: usize,
    /// Seconds of paced probing per daemon for the CPU cost.
    probe_secs: u64,
    /// Probes per second while paced (the cost is reported per 100 probes/s).
    probe_rate: u64,
    /// Streaming exec round trips timed per daemon (0: skip the streaming part).
    stream_execs: usize,
    /// Streaming sessions held open at once for the memory per session.
    stream_sessions: usize,
}

fn args() -> Result<Args> {
    let mut a = Args {
        sequential: 30,
        concurrent: 10,
        rounds: 2,
        execs: 200,
        probe_secs: 10,
        probe_rate: 20,
        stream_execs: 100,
        stream_sessions: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = || -> Result<usize> {
            it.next()
                .context("missing value")?
                .parse()
                .context("not a number")
        };
        match flag.as_str() {
            "--sequential" => a.sequential = num()?,
            "--concurrent" => a.concurrent = num()?,
            "--rounds" => a.rounds = num()?,
            "--execs" => a.execs = num()?,
            "--probe-secs" => a.probe_secs = num()? as u64,
            "--probe-rate" => a.probe_rate = (num()? as u64).max(1),
            "--stream-execs" => a.stream_execs = num()?,
            "--stream-sessions" => a.stream_sessions = num()?.max(1),
            "--share-pid" => SHARE_PID.store(true, std::sync::atomic::Ordering::Relaxed),
            "--bench" => {}
            other => bail!(
                "unknown argument {other:?} (--sequential N --concurrent N --rounds N --execs N --probe-secs N --probe-rate N --stream-execs N --stream-sessions N --share-pid)"
            ),
        }
    }
    Ok(a)
}

#[derive(Default)]
struct Samples {
    sequential: Vec<Duration>,
    concurrent: Vec<Duration>,
    /// The sequential starts' phases.
    phases: Vec<PodStart>,
    /// What the node spends besides the pods' own processes, with the first round's
    /// sequential pods running, and how many pods that was.
    footprint: Option<(Footprint, usize)>,
}

async fn round(d: &Daemon, w: &Path, a: &Args, r: usize, s: &mut Samples) -> Result<()> {
    let ch = channel(&d.socket).await?;
    let mut pods = Vec::new();
    for i in 0..a.sequential {
        let (t, pod) = start_pod(ch.clone(), w.to_owned(), format!("seq-{r}-{i}")).await?;
        s.sequential.push(t.total);
        s.phases.push(t);
        pods.push(pod);
    }
    if r == 0 {
        s.footprint = Some((footprint(d), pods.len()));
    }
    remove_pods(&ch, &pods).await?;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..a.concurrent {
        set.spawn(start_pod(ch.clone(), w.to_owned(), format!("par-{r}-{i}")));
    }
    let (started, first_err) = join_starts(set).await?;
    let mut pods = Vec::new();
    for (t, pod) in started {
        s.concurrent.push(t.total);
        pods.push(pod);
    }
    remove_pods(&ch, &pods).await?;
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(())
}

/// ExecSync `true` latencies, and the CPU cost of probing at 100/s.
struct ExecResult {
    latencies: Vec<Duration>,
    daemon_cpu: Duration,
    machine_cpu: Duration,
    probes: usize,
    wall: Duration,
}

/// A pod with one running container on `d`: (channel, pod id, container id).
async fn pod_with_container(d: &Daemon, w: &Path, name: String) -> Result<(Channel, String, String)> {
    let ch = channel(&d.socket).await?;
    let (_, pod) = start_pod(ch.clone(), w.to_owned(), name).await?;
    let c = RuntimeServiceClient::new(ch.clone())
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers
        .pop()
        .context("the pod's container")?
        .id;
    Ok((ch, pod, c))
}

async fn exec_round(d: &Daemon, w: &Path, a: &Args) -> Result<ExecResult> {
    let (ch, pod, c) = pod_with_container(d, w, format!("exec-{}", d.name)).await?;
    let mut rt = RuntimeServiceClient::new(ch.clone());
    let probe = cri::ExecSyncRequest {
        container_id: c,
        cmd: vec!["/bin/true".into()],
        timeout: 10,
    };
    for _ in 0..5 {
        rt.exec_sync(probe.clone()).await.context("ExecSync warm-up")?;
    }
    let mut latencies = Vec::with_capacity(a.execs);
    for _ in 0..a.execs {
        let t0 = Instant::now();
        let r = rt
            .exec_sync(probe.clone())
            .await
            .context("ExecSync")?
            .into_inner();
        latencies.push(t0.elapsed());
        if r.exit_code != 0 {
            bail!("{}: ExecSync true exited {}", d.name, r.exit_code);
        }
    }
    // probe_rate probes per second, each on its own task (as kubelet's probe workers are),
    // for probe_secs seconds; CPU of the daemon process and of the whole machine meanwhile.
    let pid = d.child.id();
    let (cpu0, busy0, t0) = (cpu_time(pid), machine_busy(), Instant::now());
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / a.probe_rate));
    let mut set = tokio::task::JoinSet::new();
    let probes = (a.probe_secs * a.probe_rate) as usize;
    for _ in 0..probes {
        tick.tick().await;
        let mut rt = rt.clone();
        let p = probe.clone();
        set.spawn(async move { rt.exec_sync(p).await.map(|_| ()) });
    }
    while let Some(r) = set.join_next().await {
        r?.context("paced ExecSync")?;
    }
    let (daemon_cpu, machine_cpu, wall) = (cpu_time(pid) - cpu0, machine_busy() - busy0, t0.elapsed());
    remove_pods(&ch, &[pod]).await?;
    Ok(ExecResult {
        latencies,
        daemon_cpu,
        machine_cpu,
        probes,
        wall,
    })
}

struct StreamResult {
    latencies: Vec<Duration>,
    /// Daemon RSS growth per open session.
    session_kib: f64,
}

/// Streaming exec through the independent SPDY client (tests/clients/spdy, moby/spdystream,
/// as kubectl and kubelet): `stream_execs` round trips (Exec RPC, upgrade, `echo`, exit
/// status), then `stream_sessions` `cat` sessions held open at once for the memory each costs
/// the daemon.
async fn stream_round(d: &Daemon, w: &Path, a: &Args) -> Result<StreamResult> {
    let (ch, pod, c) = pod_with_container(d, w, format!("stream-{}", d.name)).await?;
    let mut rt = RuntimeServiceClient::new(ch.clone());
    let exec = |cmd: &[&str], stdin: bool| cri::ExecRequest {
        container_id: c.clone(),
        cmd: cmd.iter().map(std::string::ToString::to_string).collect(),
        tty: false,
        stdin,
        stdout: true,
        stderr: !stdin,
    };
    let mut latencies = Vec::with_capacity(a.stream_execs);
    for i in 0..a.stream_execs + 3 {
        let t0 = Instant::now();
        let url = rt
            .exec(exec(&["echo", "hi"], false))
            .await
            .context("Exec")?
            .into_inner()
            .url;
        let r = clients::spdy_async("exec", &[], &url).await;
        if !r.success || r.json["stdout"] != "hi\n" || r.json["exit_code"] != 0 {
            bail!("{}: streaming exec answered {}", d.name, r.json);
        }
        if i >= 3 {
            latencies.push(t0.elapsed());
        }
    }
    let pid = d.child.id();
    let before = rss_kib(pid);
    let mut held = Vec::new();
    for _ in 0..a.stream_sessions {
        let url = rt
            .exec(exec(&["cat"], true))
            .await
            .context("Exec cat")?
            .into_inner()
            .url;
        held.push(
            tokio::process::Command::new(clients::spdy_bin())
                .args([
                    "exec",
                    "-stdin-data",
                    "x",
                    "-no-stdin-close",
                    "-timeout",
                    "120s",
                    &url,
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()?,
        );
    }
    // The sessions settle (upgrade, streams, the exec started); every client must still
    // be holding its session then.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut ended = Vec::new();
    for c in &mut held {
        if let Some(status) = c.try_wait()? {
            ended.push(status);
        }
    }
    if !ended.is_empty() {
        bail!(
            "{}: {} of {} streaming sessions ended early: {ended:?}",
            d.name,
            ended.len(),
            held.len()
        );
    }
    let during = rss_kib(pid);
    drop(held);
    remove_pods(&ch, &[pod]).await?;
    Ok(StreamResult {
        latencies,
        session_kib: during.saturating_sub(before) as f64 / a.stream_sessions as f64,
    })
}

fn main() -> Result<()> {
    let a = args()?;
    let (w, reg, rt) = setup("cri_pods", "taskd-bench-cri-")?;
    let result = rt.block_on(async {
        let daemons = [
            start_containerd(w.path(), &reg.addr)?,
            start_taskd(w.path(), &reg.addr)?,
        ];
        for d in &daemons {
            prepare(d, w.path())
                .await
                .with_context(|| format!("{} warm-up", d.name))?;
        }
        let mut samples = [Samples::default(), Samples::default()];
        for r in 0..a.rounds {
            let order: [usize; 2] = if r % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                round(&daemons[i], w.path(), &a, r, &mut samples[i])
                    .await
                    .with_context(|| format!("{} round {r}", daemons[i].name))?;
            }
        }
        let rss = [rss_kib(daemons[0].child.id()), rss_kib(daemons[1].child.id())];
        let mut execs = Vec::new();
        if a.execs > 0 {
            for d in &daemons {
                execs.push(
                    exec_round(d, w.path(), &a)
                        .await
                        .with_context(|| format!("{} ExecSync", d.name))?,
                );
            }
        }
        let mut streams = Vec::new();
        if a.stream_execs > 0 {
            for d in &daemons {
                streams.push(
                    stream_round(d, w.path(), &a)
                        .await
                        .with_context(|| format!("{} streaming exec", d.name))?,
                );
            }
        }
        Ok::<_, anyhow::Error>((samples, rss, daemons, execs, streams))
    });
    let ((samples, rss, daemons, execs, streams), w) = keep_logs_on_error(result, w)?;
    drop(daemons);
    rt.shutdown_timeout(Duration::from_secs(5));
    keep_logs_if_asked(w);

    let [cd, td] = &samples;
    println!(
        "| daemon | sequential p50 ms | sequential p99 ms | concurrent ({}) p50 ms | concurrent p99 ms | daemon RSS KiB |",
        a.concurrent
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, s, r) in [("containerd", cd, rss[0]), ("taskd", td, rss[1])] {
        println!(
            "| {name} | {} | {} | {} | {} | {r} |",
            ms(percentile(&s.sequential, 50.0)),
            ms(percentile(&s.sequential, 99.0)),
            ms(percentile(&s.concurrent, 50.0)),
            ms(percentile(&s.concurrent, 99.0)),
        );
    }
    let ratio = |f: &dyn Fn(&Samples) -> Duration| f(td).as_secs_f64() / f(cd).as_secs_f64().max(1e-9);
    println!(
        "| **ratio taskd / containerd** | **{:.2}** | {:.2} | **{:.2}** | {:.2} | {:.2} |",
        ratio(&|s| percentile(&s.sequential, 50.0)),
        ratio(&|s| percentile(&s.sequential, 99.0)),
        ratio(&|s| percentile(&s.concurrent, 50.0)),
        ratio(&|s| percentile(&s.concurrent, 99.0)),
        rss[1] as f64 / rss[0].max(1) as f64,
    );
    println!(
        "\n| daemon (sequential p50 per call) | RunPodSandbox ms | CreateContainer ms | StartContainer → RUNNING ms |"
    );
    println!("|---|---:|---:|---:|");
    for (name, s) in [("containerd", cd), ("taskd", td)] {
        let p =
            |f: fn(&PodStart) -> Duration| ms(percentile(&s.phases.iter().map(f).collect::<Vec<_>>(), 50.0));
        println!(
            "| {name} | {} | {} | {} |",
            p(|x| x.run),
            p(|x| x.create),
            p(|x| x.start)
        );
    }
    if let (Some((fc, n)), Some((ft, _))) = (cd.footprint, td.footprint) {
        println!(
            "\n| daemon ({n} pods running) | daemon PSS KiB | shims PSS KiB | pause PSS KiB | processes | per pod KiB |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        let total = |f: &Footprint| f.daemon + f.shims + f.pause;
        for (name, f) in [("containerd", &fc), ("taskd", &ft)] {
            println!(
                "| {name} | {} | {} | {} | {} | {} |",
                f.daemon,
                f.shims,
                f.pause,
                f.processes,
                total(f) / n.max(1) as u64
            );
        }
        println!(
            "| **ratio taskd / containerd** | {:.2} | {:.2} | | | **{:.2}** |",
            ft.daemon as f64 / fc.daemon.max(1) as f64,
            ft.shims as f64 / fc.shims.max(1) as f64,
            total(&ft) as f64 / total(&fc).max(1) as f64
        );
    }
    println!(
        "\nsamples per daemon: {} sequential, {} concurrent ({} rounds); {} CPUs; containerd {}",
        td.sequential.len(),
        td.concurrent.len(),
        a.rounds,
        std::thread::available_parallelism()
            .map(std::num::NonZero::get)
            .unwrap_or(0),
        String::from_utf8_lossy(&Command::new("containerd").arg("--version").output()?.stdout).trim()
    );
    if let [cd, td] = execs.as_slice() {
        println!(
            "\n| daemon | ExecSync `true` p50 ms | p99 ms | daemon CPU per 100 probes/s | machine CPU per 100 probes/s |"
        );
        println!("|---|---:|---:|---:|---:|");
        for (name, e) in [("containerd", cd), ("taskd", td)] {
            let per_sec = |d: Duration| d.as_secs_f64() / e.wall.as_secs_f64();
            println!(
                "| {name} | {} | {} | {:.1}% of a CPU | {:.1}% of a CPU |",
                ms(percentile(&e.latencies, 50.0)),
                ms(percentile(&e.latencies, 99.0)),
                per_sec(e.daemon_cpu) * 100.0 * (100.0 * e.wall.as_secs_f64() / e.probes as f64),
                per_sec(e.machine_cpu) * 100.0 * (100.0 * e.wall.as_secs_f64() / e.probes as f64),
            );
        }
        println!(
            "| **ratio taskd / containerd** | **{:.2}** | {:.2} | {:.2} | {:.2} |",
            percentile(&td.latencies, 50.0).as_secs_f64()
                / percentile(&cd.latencies, 50.0).as_secs_f64().max(1e-9),
            percentile(&td.latencies, 99.0).as_secs_f64()
                / percentile(&cd.latencies, 99.0).as_secs_f64().max(1e-9),
            td.daemon_cpu.as_secs_f64() / cd.daemon_cpu.as_secs_f64().max(1e-9),
            td.machine_cpu.as_secs_f64() / cd.machine_cpu.as_secs_f64().max(1e-9),
        );
        println!(
            "\nExecSync: {} timed calls each, then {} probes paced at {}/s ({:.1} s / {:.1} s wall); CPU scaled to 100 probes/s",
            td.latencies.len(),
            td.probes,
            a.probe_rate,
            cd.wall.as_secs_f64(),
            td.wall.as_secs_f64()
        );
    }
    if let [cd, td] = streams.as_slice() {
        println!(
            "\n| daemon | streaming exec round trip p50 ms | p99 ms | daemon RSS per open session KiB |"
        );
        println!("|---|---:|---:|---:|");
        for (name, s) in [("containerd", cd), ("taskd", td)] {
            println!(
                "| {name} | {} | {} | {:.0} |",
                ms(percentile(&s.latencies, 50.0)),
                ms(percentile(&s.latencies, 99.0)),
                s.session_kib
            );
        }
        println!(
            "| **ratio taskd / containerd** | **{:.2}** | {:.2} | {:.2} |",
            percentile(&td.latencies, 50.0).as_secs_f64()
                / percentile(&cd.latencies, 50.0).as_secs_f64().max(1e-9),
            percentile(&td.latencies, 99.0).as_secs_f64()
                / percentile(&cd.latencies, 99.0).as_secs_f64().max(1e-9),
            td.session_kib / cd.session_kib.max(1.0),
        );
        println!(
            "\nStreaming exec: {} round trips each (Exec RPC + SPDY/3.1 v4 session of `echo hi` through the Go spdystream client, process start included), {} `cat` sessions held open for the memory",
            td.latencies.len(),
            a.stream_sessions
        );
    }
    Ok(())
}

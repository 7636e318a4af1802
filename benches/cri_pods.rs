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

#[path = "../tests/support/clients.rs"]
mod clients;
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use support::registry::{ImageBuilder, OciLayout, Registry};
use tonic::transport::Channel;

const SANDBOX_IMAGE: &str = "registry.k8s.io/pause:3.10";
const APP_IMAGE: &str = "docker.io/library/busybox:latest";

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

/// One daemon under test.
struct Daemon {
    name: &'static str,
    child: Child,
    socket: PathBuf,
    bridge: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

/// A CNI conf dir with a bridge + host-local chain on `10.251.<octet>.0/24`.
fn cni_conf(dir: &Path, bridge: &str, octet: u8) -> Result<PathBuf> {
    let conf = dir.join(format!("net.d-{bridge}"));
    std::fs::create_dir_all(&conf)?;
    std::fs::write(
        conf.join("10-bench.conflist"),
        format!(
            r#"{{"cniVersion":"1.0.0","name":"{bridge}","plugins":[{{"type":"bridge","bridge":"{bridge}","isGateway":false,"ipMasq":false,
               "ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"10.251.{octet}.0/24"}}]]}}}}]}}"#,
            dir.join(format!("ipam-{bridge}")).display()
        ),
    )?;
    Ok(conf)
}

fn spawn(mut cmd: Command, log: &Path) -> Result<Child> {
    let log = std::fs::File::create(log)?;
    Ok(cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?)
}

fn start_containerd(w: &Path, registry: &str) -> Result<Daemon> {
    let bridge = "cdbench0".to_owned();
    let conf_dir = cni_conf(w, &bridge, 1)?;
    let d = w.join("containerd");
    std::fs::create_dir_all(&d)?;
    // The template is shared with tests/config_migrate.rs (migrated by `taskd config migrate`).
    let config = include_str!("containerd-config.toml")
        .replace("{root}", &d.join("root").display().to_string())
        .replace("{state}", &d.join("state").display().to_string())
        .replace("{sock}", &d.join("cd.sock").display().to_string())
        .replace("{debug}", &d.join("debug.sock").display().to_string())
        .replace("{conf}", &conf_dir.display().to_string())
        .replace("{registry}", registry)
        .replace("{sandbox_image}", SANDBOX_IMAGE);
    std::fs::write(d.join("config.toml"), config)?;
    let mut cmd = Command::new("containerd");
    cmd.arg("--config").arg(d.join("config.toml"));
    let child = spawn(cmd, &d.join("containerd.log"))?;
    Ok(Daemon {
        name: "containerd",
        child,
        socket: d.join("cd.sock"),
        bridge,
    })
}

fn start_taskd(w: &Path, registry: &str) -> Result<Daemon> {
    let bridge = "tdbench0".to_owned();
    let conf_dir = cni_conf(w, &bridge, 2)?;
    let d = w.join("taskd");
    std::fs::create_dir_all(&d)?;
    let config = format!(
        r#"version = 1
[metrics]
address = ""
[debug]
level = "warn"
[plugins."io.containerd.cri.v1.cri"]
sandbox_image = "{SANDBOX_IMAGE}"
[plugins."io.containerd.cri.v1.cri".cni]
conf_dir = "{conf}"
bin_dirs = ["/usr/lib/cni"]
[plugins."io.containerd.service.v1.images-service".registries."registry.k8s.io"]
mirrors = ["http://{registry}"]
[plugins."io.containerd.service.v1.images-service".registries."docker.io"]
mirrors = ["http://{registry}"]
"#,
        conf = conf_dir.display(),
    );
    std::fs::write(d.join("taskd.toml"), config)?;
    let bin = std::env::var_os("TASKD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_taskd")));
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(d.join("taskd.toml"))
        .arg("--root")
        .arg(d.join("root"))
        .arg("--state")
        .arg(d.join("state"))
        .arg("--address")
        .arg(d.join("td.sock"))
        .env(
            "RUST_LOG",
            std::env::var("TASKD_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env_remove("TASKD_CONFIG");
    let child = spawn(cmd, &d.join("taskd.log"))?;
    Ok(Daemon {
        name: "taskd",
        child,
        socket: d.join("td.sock"),
        bridge,
    })
}

async fn channel(socket: &Path) -> Result<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let path = socket.to_owned();
        let r = tonic::transport::Endpoint::from_static("http://[::]:50051")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await;
        match r {
            Ok(c) => {
                // Ready once the CRI answers Version.
                if RuntimeServiceClient::new(c.clone())
                    .version(cri::VersionRequest::default())
                    .await
                    .is_ok()
                {
                    return Ok(c);
                }
            }
            Err(e) if Instant::now() > deadline => bail!("connect to {}: {e}", socket.display()),
            Err(_) => {}
        }
        if Instant::now() > deadline {
            bail!("{} did not answer CRI Version within 30s", socket.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pod_config(w: &Path, name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: w.join("logs").join(name).display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `--share-pid`: pods as kubelet sends them with `shareProcessNamespace: true`.
static SHARE_PID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What kubelet sends for a pod (and for its containers): network and IPC shared by the
/// pod, a PID namespace per container (or, with `--share-pid`, one for the pod).
fn kubelet_namespaces() -> cri::NamespaceOption {
    let pid = if SHARE_PID.load(std::sync::atomic::Ordering::Relaxed) {
        cri::NamespaceMode::Pod
    } else {
        cri::NamespaceMode::Container
    };
    cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: pid as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// How long one pod start took, in all and per call.
#[derive(Clone, Copy, Default)]
struct PodStart {
    total: Duration,
    run: Duration,
    create: Duration,
    /// StartContainer until ContainerStatus says RUNNING.
    start: Duration,
}

/// Starts one pod with one container; returns its latency and the pod id.
async fn start_pod(ch: Channel, w: PathBuf, name: String) -> Result<(PodStart, String)> {
    let mut rt = RuntimeServiceClient::new(ch);
    let config = pod_config(&w, &name);
    let t0 = Instant::now();
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .with_context(|| format!("RunPodSandbox {name}"))?
        .into_inner()
        .pod_sandbox_id;
    let t_run = t0.elapsed();
    let c = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "app".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: APP_IMAGE.into(),
                    ..Default::default()
                }),
                command: vec!["/bin/sleep".into(), "3600".into()],
                log_path: "app/0.log".into(),
                linux: Some(cri::LinuxContainerConfig {
                    security_context: Some(cri::LinuxContainerSecurityContext {
                        namespace_options: Some(kubelet_namespaces()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            sandbox_config: Some(config),
        })
        .await
        .with_context(|| format!("CreateContainer in {name}"))?
        .into_inner()
        .container_id;
    let t_create = t0.elapsed();
    rt.start_container(cri::StartContainerRequest {
        container_id: c.clone(),
    })
    .await
    .with_context(|| format!("StartContainer in {name}"))?;
    loop {
        let s = rt
            .container_status(cri::ContainerStatusRequest {
                container_id: c.clone(),
                verbose: false,
            })
            .await?
            .into_inner();
        if s.status.map(|s| s.state) == Some(cri::ContainerState::ContainerRunning as i32) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let total = t0.elapsed();
    Ok((
        PodStart {
            total,
            run: t_run,
            create: t_create - t_run,
            start: total - t_create,
        },
        pod,
    ))
}

async fn remove_pods(ch: &Channel, pods: &[String]) -> Result<()> {
    let mut rt = RuntimeServiceClient::new(ch.clone());
    for p in pods {
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: p.clone(),
        })
        .await
        .with_context(|| format!("StopPodSandbox {p}"))?;
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: p.clone(),
        })
        .await
        .with_context(|| format!("RemovePodSandbox {p}"))?;
    }
    Ok(())
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

/// Proportional set size (KiB) of a daemon, its shims, and the pause processes under them.
#[derive(Clone, Copy, Default)]
struct Footprint {
    daemon: u64,
    shims: u64,
    pause: u64,
    processes: usize,
}

/// A `<key>: <n> kB` value of a /proc file of `pid` (0 when unreadable).
fn proc_kib(pid: u32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn pss_kib(pid: u32) -> u64 {
    proc_kib(pid, "smaps_rollup", "Pss:")
}

/// The daemon's footprint: its own PSS, its shims' (processes whose command line names the
/// daemon's socket as `-address`) and the pause containers' (the shims' children running
/// the pause image's `sleep 2147483647`). The app containers are the same for both daemons
/// and not counted.
fn footprint(d: &Daemon) -> Footprint {
    let sock = d.socket.display().to_string();
    let mut procs: Vec<(u32, u32, String)> = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().nth(1).and_then(|p| p.parse().ok()))
            })
            .unwrap_or(0);
        procs.push((pid, ppid, cmd));
    }
    let shims: Vec<u32> = procs
        .iter()
        .filter(|(_, _, c)| c.contains("containerd-shim-runc-v2") && c.contains(&sock))
        .map(|p| p.0)
        .collect();
    let pause: Vec<u32> = procs
        .iter()
        .filter(|(_, pp, c)| shims.contains(pp) && c.trim_end() == "/bin/sleep 2147483647")
        .map(|p| p.0)
        .collect();
    Footprint {
        daemon: pss_kib(d.child.id()),
        shims: shims.iter().map(|p| pss_kib(*p)).sum(),
        pause: pause.iter().map(|p| pss_kib(*p)).sum(),
        processes: 1 + shims.len() + pause.len(),
    }
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
    let mut pods = Vec::new();
    let mut first_err = None;
    while let Some(res) = set.join_next().await {
        match res? {
            Ok((t, pod)) => {
                s.concurrent.push(t.total);
                pods.push(pod);
            }
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    remove_pods(&ch, &pods).await?;
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(())
}

async fn prepare(d: &Daemon, w: &Path) -> Result<()> {
    let ch = channel(&d.socket).await?;
    let mut img = ImageServiceClient::new(ch.clone());
    for image in [SANDBOX_IMAGE, APP_IMAGE] {
        img.pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .with_context(|| format!("{}: PullImage {image}", d.name))?;
    }
    // Warm-up: two pods, not measured.
    let mut pods = Vec::new();
    for i in 0..2 {
        pods.push(start_pod(ch.clone(), w.to_owned(), format!("warm-{i}")).await?.1);
    }
    remove_pods(&ch, &pods).await
}

/// CPU time (user + system) of `pid` so far, from /proc/<pid>/stat.
fn cpu_time(pid: u32) -> Duration {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" of the comm: state is field 3; utime, stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Duration::from_secs_f64((get(14) + get(15)) / ticks)
}

/// Busy CPU time of the whole machine so far (all CPUs, /proc/stat).
fn machine_busy() -> Duration {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy = all − idle − iowait.
    let total: f64 = cpu.iter().take(8).sum();
    let idle = cpu.get(3).copied().unwrap_or(0.0) + cpu.get(4).copied().unwrap_or(0.0);
    Duration::from_secs_f64((total - idle) / ticks)
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
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
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
    for c in held.iter_mut() {
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

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[idx.min(v.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn rss_kib(pid: u32) -> u64 {
    proc_kib(pid, "status", "VmRSS:")
}

fn main() -> Result<()> {
    let a = args()?;
    if !nix::unistd::Uid::effective().is_root() {
        bail!("cri_pods bench needs root");
    }
    for (bin, pkg) in [
        ("containerd", "containerd"),
        ("runc", "runc"),
        ("docker-registry", "docker-registry"),
        ("skopeo", "skopeo"),
    ] {
        support::require_bin(bin, pkg);
    }
    let w = tempfile::Builder::new().prefix("taskd-bench-cri-").tempdir()?;
    let reg = Registry::start();
    // busybox as docker.io/library/busybox:latest, and a pause image (busybox sleeping).
    let mut layout = OciLayout::new();
    layout.add_image("latest", &ImageBuilder::busybox().build());
    reg.push(&layout, "latest", "library/busybox", "latest");
    let mut pause = ImageBuilder::busybox();
    pause.entrypoint = vec!["/bin/sleep".into(), "2147483647".into()];
    pause.cmd = vec![];
    let mut layout = OciLayout::new();
    layout.add_image("3.10", &pause.build());
    reg.push(&layout, "3.10", "pause", "3.10");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
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
    let (samples, rss, daemons, execs, streams) = match result {
        Ok(v) => v,
        Err(e) => {
            eprintln!("bench failed: {e:#}; daemon logs under {}", w.path().display());
            let _ = w.keep();
            return Err(e);
        }
    };
    drop(daemons);
    rt.shutdown_timeout(Duration::from_secs(5));
    if std::env::var_os("TASKD_BENCH_LOG").is_some() {
        let d = w.keep();
        eprintln!("daemon logs kept under {}", d.display());
    }

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
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
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

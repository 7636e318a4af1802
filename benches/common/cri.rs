//! What the CRI benches share (`#[path]`-included by benches/cri_pods.rs and
//! benches/node_scale.rs): the two daemons under test (Debian's containerd with its CRI
//! plugin, and taskd) on their own dirs, each with a bridge + host-local CNI chain on a
//! private subnet, the same images from a local registry, the same k8s-cri client calls,
//! and the /proc readings (PSS, CPU time).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::support::registry::{ImageBuilder, OciLayout, Registry};

pub const SANDBOX_IMAGE: &str = "registry.k8s.io/pause:3.10";
pub const APP_IMAGE: &str = "docker.io/library/busybox:latest";

/// A local registry with busybox as docker.io/library/busybox:latest and a pause image
/// (busybox sleeping) as registry.k8s.io/pause:3.10.
pub fn registry() -> Registry {
    let reg = Registry::start();
    let mut layout = OciLayout::new();
    layout.add_image("latest", &ImageBuilder::busybox().build());
    reg.push(&layout, "latest", "library/busybox", "latest");
    let mut pause = ImageBuilder::busybox();
    pause.entrypoint = vec!["/bin/sleep".into(), "2147483647".into()];
    pause.cmd = vec![];
    let mut layout = OciLayout::new();
    layout.add_image("3.10", &pause.build());
    reg.push(&layout, "3.10", "pause", "3.10");
    reg
}

/// What a CRI bench needs before it starts the daemons: root, the binaries, a temp dir
/// (named `prefix…`), the registry (see [`registry`]) and a two-worker tokio runtime.
pub fn setup(bench: &str, prefix: &str) -> Result<(tempfile::TempDir, Registry, tokio::runtime::Runtime)> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("{bench} bench needs root");
    }
    {
        use crate::support::{Need, require};
        require(&[
            Need::Bin("containerd", "containerd"),
            Need::Bin("runc", "runc"),
            Need::Bin("docker-registry", "docker-registry"),
            Need::Bin("skopeo", "skopeo"),
        ]);
    }
    let w = tempfile::Builder::new().prefix(prefix).tempdir()?;
    let reg = registry();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    Ok((w, reg, rt))
}

/// The bench's result with its temp dir; on an error the temp dir (the daemons' logs) is kept
/// and named.
pub fn keep_logs_on_error<T>(result: Result<T>, w: tempfile::TempDir) -> Result<(T, tempfile::TempDir)> {
    match result {
        Ok(v) => Ok((v, w)),
        Err(e) => {
            eprintln!("bench failed: {e:#}; daemon logs under {}", w.path().display());
            let _ = w.keep();
            Err(e)
        }
    }
}

/// With `TASKD_BENCH_LOG` set, keeps the bench's temp dir (the daemons' logs) and names it.
pub fn keep_logs_if_asked(w: tempfile::TempDir) {
    if std::env::var_os("TASKD_BENCH_LOG").is_some() {
        let d = w.keep();
        eprintln!("daemon logs kept under {}", d.display());
    }
}

/// One daemon under test, restartable on the same dirs and config.
pub struct Daemon {
    pub name: &'static str,
    pub child: Child,
    pub socket: PathBuf,
    pub bridge: String,
    /// Its dir (root, state, config, log).
    pub dir: PathBuf,
    /// host-local's lease dir of its CNI network.
    pub ipam: PathBuf,
    /// `127.0.0.1:PORT` of its `/v1/metrics`.
    pub metrics: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
}

impl Daemon {
    fn launch(
        name: &'static str,
        program: PathBuf,
        args: Vec<String>,
        envs: Vec<(String, String)>,
        dir: PathBuf,
        (bridge, ipam, socket, metrics): (String, PathBuf, PathBuf, String),
        log: PathBuf,
    ) -> Result<Daemon> {
        let child = spawn(&program, &args, &envs, &log)?;
        Ok(Daemon {
            name,
            child,
            socket,
            bridge,
            dir,
            ipam,
            metrics,
            program,
            args,
            envs,
            log,
        })
    }

    /// `kill -9` and reap (shims and containers stay).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for the exit (SIGKILL after 60 s).
    pub fn sigterm(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill9();
    }

    /// Starts it again (after [`Daemon::kill9`] or [`Daemon::sigterm`]), its log appended to.
    pub fn respawn(&mut self) -> Result<()> {
        self.child = spawn(&self.program, &self.args, &self.envs, &self.log)?;
        Ok(())
    }

    /// The daemon's log.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.sigterm();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

/// A CNI conf dir with a bridge + host-local chain on `10.251.<octet>.0/24`; (conf dir,
/// host-local's lease dir).
fn cni_conf(dir: &Path, bridge: &str, octet: u8) -> Result<(PathBuf, PathBuf)> {
    let conf = dir.join(format!("net.d-{bridge}"));
    std::fs::create_dir_all(&conf)?;
    let ipam = dir.join(format!("ipam-{bridge}"));
    std::fs::write(
        conf.join("10-bench.conflist"),
        format!(
            r#"{{"cniVersion":"1.0.0","name":"{bridge}","plugins":[{{"type":"bridge","bridge":"{bridge}","isGateway":false,"ipMasq":false,
               "ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"10.251.{octet}.0/24"}}]]}}}}]}}"#,
            ipam.display()
        ),
    )?;
    Ok((conf, ipam.join(bridge)))
}

fn spawn(program: &Path, args: &[String], envs: &[(String, String)], log: &Path) -> Result<Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    Ok(Command::new(program)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .env_remove("TASKD_CONFIG")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?)
}

pub fn start_containerd(w: &Path, registry: &str) -> Result<Daemon> {
    let bridge = "cdbench0".to_owned();
    let (conf_dir, ipam) = cni_conf(w, &bridge, 1)?;
    let d = w.join("containerd");
    std::fs::create_dir_all(&d)?;
    let metrics = format!("127.0.0.1:{}", crate::support::free_port());
    // The template is shared with tests/config_migrate.rs (migrated by `taskd config migrate`).
    let mut config = include_str!("../containerd-config.toml")
        .replace("{root}", &d.join("root").display().to_string())
        .replace("{state}", &d.join("state").display().to_string())
        .replace("{sock}", &d.join("cd.sock").display().to_string())
        .replace("{debug}", &d.join("debug.sock").display().to_string())
        .replace("{conf}", &conf_dir.display().to_string())
        .replace("{registry}", registry)
        .replace("{sandbox_image}", SANDBOX_IMAGE);
    config.push_str(&format!("[metrics]\n  address = \"{metrics}\"\n"));
    std::fs::write(d.join("config.toml"), config)?;
    let args = vec!["--config".into(), d.join("config.toml").display().to_string()];
    Daemon::launch(
        "containerd",
        "containerd".into(),
        args,
        Vec::new(),
        d.clone(),
        (bridge, ipam, d.join("cd.sock"), metrics),
        d.join("containerd.log"),
    )
}

pub fn start_taskd(w: &Path, registry: &str) -> Result<Daemon> {
    let bridge = "tdbench0".to_owned();
    let (conf_dir, ipam) = cni_conf(w, &bridge, 2)?;
    let d = w.join("taskd");
    std::fs::create_dir_all(&d)?;
    let metrics = format!("127.0.0.1:{}", crate::support::free_port());
    let config = format!(
        r#"version = 1
[metrics]
address = "{metrics}"
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
    let p = |s: &str| d.join(s).display().to_string();
    let args = vec![
        "--config".into(),
        p("taskd.toml"),
        "--root".into(),
        p("root"),
        "--state".into(),
        p("state"),
        "--address".into(),
        p("td.sock"),
    ];
    let envs = vec![(
        "RUST_LOG".to_owned(),
        std::env::var("TASKD_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
    )];
    Daemon::launch(
        "taskd",
        bin,
        args,
        envs,
        d.clone(),
        (bridge, ipam, d.join("td.sock"), metrics),
        d.join("taskd.log"),
    )
}

pub async fn channel(socket: &Path) -> Result<Channel> {
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

pub fn pod_config(w: &Path, name: &str) -> cri::PodSandboxConfig {
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
pub static SHARE_PID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What kubelet sends for a pod (and for its containers): network and IPC shared by the
/// pod, a PID namespace per container (or, with `--share-pid`, one for the pod).
pub fn kubelet_namespaces() -> cri::NamespaceOption {
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
pub struct PodStart {
    pub total: Duration,
    pub run: Duration,
    pub create: Duration,
    /// StartContainer until ContainerStatus says RUNNING.
    pub start: Duration,
}

/// Starts one pod with one container running `sleep 3600`; returns its latency and the pod id.
pub async fn start_pod(ch: Channel, w: PathBuf, name: String) -> Result<(PodStart, String)> {
    start_pod_running(ch, w, name, vec!["/bin/sleep".into(), "3600".into()]).await
}

/// Starts one pod with one container running `command`; returns its latency and the pod id.
pub async fn start_pod_running(
    ch: Channel,
    w: PathBuf,
    name: String,
    command: Vec<String>,
) -> Result<(PodStart, String)> {
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
                command,
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

/// Joins pod starts: those that worked (timing, pod id), and the first error.
pub async fn join_starts(
    mut set: tokio::task::JoinSet<Result<(PodStart, String)>>,
) -> Result<(Vec<(PodStart, String)>, Option<anyhow::Error>)> {
    let mut ok = Vec::new();
    let mut first_err = None;
    while let Some(r) = set.join_next().await {
        match r? {
            Ok(v) => ok.push(v),
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    Ok((ok, first_err))
}

pub async fn remove_pods(ch: &Channel, pods: &[String]) -> Result<()> {
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

/// Proportional set size (KiB) of a daemon, its shims, and the pause processes under them.
#[derive(Clone, Copy, Default)]
pub struct Footprint {
    pub daemon: u64,
    pub shims: u64,
    pub pause: u64,
    pub processes: usize,
}

/// A `<key>: <n> kB` value of a /proc file of `pid` (0 when unreadable).
pub fn proc_kib(pid: u32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

pub fn pss_kib(pid: u32) -> u64 {
    proc_kib(pid, "smaps_rollup", "Pss:")
}

/// The daemon's shims (processes whose command line names a `containerd-shim-*` binary and
/// the daemon's socket as `-address`) and the pause containers (the shims' children running
/// the pause image's `sleep 2147483647`): (shim pids, pause pids).
pub fn shims_and_pause(d: &Daemon) -> (Vec<u32>, Vec<u32>) {
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
        .filter(|(_, _, c)| c.contains("containerd-shim-") && c.contains(&sock))
        .map(|p| p.0)
        .collect();
    let pause: Vec<u32> = procs
        .iter()
        .filter(|(_, pp, c)| shims.contains(pp) && c.trim_end() == "/bin/sleep 2147483647")
        .map(|p| p.0)
        .collect();
    (shims, pause)
}

/// The daemon's footprint: its own PSS, its shims' and the pause containers' (see
/// [`shims_and_pause`]). The app containers are the same for both daemons and not counted.
pub fn footprint(d: &Daemon) -> Footprint {
    let (shims, pause) = shims_and_pause(d);
    Footprint {
        daemon: pss_kib(d.child.id()),
        shims: shims.iter().map(|p| pss_kib(*p)).sum(),
        pause: pause.iter().map(|p| pss_kib(*p)).sum(),
        processes: 1 + shims.len() + pause.len(),
    }
}

pub async fn prepare(d: &Daemon, w: &Path) -> Result<()> {
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
pub fn cpu_time(pid: u32) -> Duration {
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
pub fn machine_busy() -> Duration {
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

pub fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[idx.min(v.len() - 1)]
}

pub fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

pub fn rss_kib(pid: u32) -> u64 {
    proc_kib(pid, "status", "VmRSS:")
}

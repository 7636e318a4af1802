//! The VM tier: the CRI on a cgroup v2 host with systemd as PID 1, with both cgroup drivers.
//! `scripts/vm-test.sh` boots a Debian guest and runs this suite there with
//! `--include-ignored`; every test is `#[ignore = "vm: ..."]` and fails loudly on a host that
//! is not cgroup v2 (and, for the systemd driver, not booted with systemd).
//!
//! Each scenario runs twice, against a real taskd whose CRI uses
//! - `cgroup_driver = "cgroupfs"`: pod cgroups `/kubepods/<qos>/pod<uid>`, containers
//!   `<pod cgroup>/<id>`;
//! - `cgroup_driver = "systemd"` + runc `SystemdCgroup = true`: pods
//!   `kubepods-<qos>-pod<uid>.slice` as kubelet names them, containers `taskd-<id>.scope`.
//!
//! Images (busybox and the sandbox image) are OCI archives built by the harness and imported
//! with `ctr -n k8s.io images import`; pods join a CNI bridge on a private subnet (the guest
//! has no network device).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use support::Daemon;
use support::cri_client::{container_stats, create_and_start, exited, status};
use support::observe::{EventWatcher, promtool_check, sample};
use support::registry::{ImageBuilder, OciLayout};
use tonic::transport::Channel;

const CRI: &str = "plugins.\"io.containerd.cri.v1.cri\"";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Driver {
    Cgroupfs,
    Systemd,
}

/// Panics unless this host is what the suite is about: cgroup v2 unified (and systemd as
/// PID 1 for the systemd driver).
fn require_vm_host(driver: Driver) {
    support::require(&[support::Need::Root]);
    assert!(
        Path::new(CGROUP_ROOT).join("cgroup.controllers").is_file(),
        "this suite needs a cgroup v2 (unified) host; run it with scripts/vm-test.sh"
    );
    if driver == Driver::Systemd {
        assert!(
            Path::new("/run/systemd/system").is_dir(),
            "the systemd cgroup driver needs systemd as PID 1; run it with scripts/vm-test.sh"
        );
    }
    support::require(&[
        support::Need::Bin("runc", "runc"),
        support::Need::Bin("containerd-shim-runc-v2", "containerd"),
        support::Need::Bin("ctr", "containerd"),
    ]);
}

struct World {
    d: Daemon,
    driver: Driver,
    dir: tempfile::TempDir,
    bridge: String,
}

impl Drop for World {
    fn drop(&mut self) {
        self.d.kill9();
        support::cleanup::after_daemon(&self.d.state);
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
    }
}

impl World {
    /// A daemon with the CRI on `driver`, a CNI bridge on 10.89.<octet>.0/24, and the busybox
    /// and pause images imported.
    fn new(driver: Driver, octet: u8) -> World {
        require_vm_host(driver);
        let dir = tempfile::Builder::new().prefix("taskd-v2-").tempdir().unwrap();
        let bridge = format!("tkv2-{octet}");
        let conf_dir = dir.path().join("net.d");
        std::fs::create_dir(&conf_dir).unwrap();
        std::fs::write(
            conf_dir.join("10-taskd.conflist"),
            format!(
                r#"{{"cniVersion":"1.0.0","name":"taskd-v2","plugins":[
                  {{"type":"bridge","bridge":"{bridge}","isGateway":false,"ipMasq":false,
                    "ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"10.89.{octet}.0/24"}}]]}}}}]}}"#,
                dir.path().join("ipam").display()
            ),
        )
        .unwrap();
        let driver_toml = match driver {
            Driver::Cgroupfs => "cgroup_driver = \"cgroupfs\"\n".to_owned(),
            Driver::Systemd => {
                format!("cgroup_driver = \"systemd\"\n[{CRI}.runtimes.runc.options]\nSystemdCgroup = true\n")
            }
        };
        let d = Daemon::start_with(&format!(
            "[{CRI}.cni]\nconf_dir = {:?}\nbin_dirs = [\"/usr/lib/cni\"]\n\
             [{CRI}]\nsandbox_image = \"registry.k8s.io/pause:3.10\"\n{driver_toml}",
            conf_dir.display().to_string()
        ));
        let w = World {
            d,
            driver,
            dir,
            bridge,
        };
        let mut busybox = ImageBuilder::busybox();
        busybox.entrypoint = vec!["/bin/sh".into(), "-c".into()];
        busybox.cmd = vec!["exec sleep 3600".into()];
        let mut pause = ImageBuilder::busybox();
        pause.entrypoint = vec!["/bin/sleep".into(), "2147483647".into()];
        pause.cmd = Vec::new();
        w.import(&busybox, "docker.io/library/busybox", "latest");
        w.import(&pause, "registry.k8s.io/pause", "3.10");
        w
    }

    /// `ctr -n k8s.io images import` of `image` as `<name>:<tag>`.
    fn import(&self, image: &ImageBuilder, name: &str, tag: &str) {
        let mut layout = OciLayout::new();
        layout.add_image(tag, &image.build());
        let archive = self.dir.path().join(format!("{tag}.tar"));
        std::fs::write(&archive, layout.tar()).unwrap();
        self.d.ctr_ok(&[
            "-n",
            "k8s.io",
            "images",
            "import",
            "--base-name",
            name,
            archive.to_str().unwrap(),
        ]);
    }

    async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.d.channel().await)
    }

    /// The pod uid, unique per test process and name, without dashes (kubelet escapes them
    /// in slice names).
    fn uid(name: &str) -> String {
        format!("u{}{name}", std::process::id())
    }

    /// The cgroup parent kubelet sends for a burstable pod.
    fn cgroup_parent(&self, name: &str) -> String {
        match self.driver {
            Driver::Cgroupfs => format!("/kubepods/burstable/pod{}", Self::uid(name)),
            Driver::Systemd => format!("kubepods-burstable-pod{}.slice", Self::uid(name)),
        }
    }

    /// Where a container of pod `name` has its cgroup on this host.
    fn container_cgroup(&self, pod: &str, id: &str) -> PathBuf {
        let uid = Self::uid(pod);
        Path::new(CGROUP_ROOT).join(match self.driver {
            Driver::Cgroupfs => format!("kubepods/burstable/pod{uid}/{id}"),
            Driver::Systemd => format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/taskd-{id}.scope"
            ),
        })
    }

    /// A kubelet-shaped pod config (own PID namespaces: no pause container).
    fn pod_config(&self, name: &str, privileged: bool) -> cri::PodSandboxConfig {
        let logs = self.dir.path().join("logs").join(name);
        std::fs::create_dir_all(&logs).unwrap();
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: Self::uid(name),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: logs.display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent(name),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    privileged,
                    namespace_options: Some(cri::NamespaceOption {
                        pid: cri::NamespaceMode::Container as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The CRI log of container `name` of pod `pod`.
    fn log(&self, pod: &str, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("logs").join(pod).join(format!("{name}.log")))
            .unwrap_or_default()
    }

    /// Waits until the container's log has a line `marker`; returns the log's message lines.
    fn wait_log(&self, pod: &str, name: &str, marker: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // CRI log lines: `<time> <stream> <P|F> <message>`.
            let lines: Vec<String> = self
                .log(pod, name)
                .lines()
                .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_owned))
                .collect();
            if lines.iter().any(|l| l == marker) {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "container {name} never logged {marker:?}: {lines:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A container of the busybox image running `script` with `resources`.
fn container(
    name: &str,
    script: &str,
    resources: cri::LinuxContainerResources,
    privileged: bool,
) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: "busybox".into(),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(resources),
            security_context: Some(cri::LinuxContainerSecurityContext {
                privileged,
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

const MIB: i64 = 1024 * 1024;

fn limits(memory: i64, quota: i64, shares: i64) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        memory_limit_in_bytes: memory,
        cpu_quota: quota,
        cpu_period: 100_000,
        cpu_shares: shares,
        ..Default::default()
    }
}

async fn run_pod(rt: &mut RuntimeServiceClient<Channel>, cfg: &cri::PodSandboxConfig) -> String {
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(cfg.clone()),
        runtime_handler: String::new(),
    })
    .await
    .expect("RunPodSandbox")
    .into_inner()
    .pod_sandbox_id
}

/// Stops and removes the container, then the pod.
async fn tear_down(rt: &mut RuntimeServiceClient<Channel>, pod: &str, containers: &[&str]) {
    for id in containers {
        rt.stop_container(cri::StopContainerRequest {
            container_id: (*id).into(),
            timeout: 0,
        })
        .await
        .expect("StopContainer");
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: (*id).into(),
        })
        .await
        .expect("RemoveContainer");
    }
    support::cri_client::stop_and_remove(rt, pod).await;
}

/// One cgroup file, trimmed.
fn cg_file(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.join(file).display()))
        .trim()
        .to_owned()
}

/// runc's cpu.shares → cpu.weight (cgroup v2) conversion.
fn cpu_weight(shares: u64) -> u64 {
    1 + ((shares - 2) * 9999) / 262_142
}

/// The value of an optional CRI counter (0 when absent).
fn val(v: Option<&cri::UInt64Value>) -> u64 {
    v.map(|v| v.value).unwrap_or_default()
}

/// The (name → value) of a metric list.
fn metric_values(metrics: &[cri::Metric]) -> HashMap<String, u64> {
    metrics
        .iter()
        .map(|m| (m.name.clone(), val(m.value.as_ref())))
        .collect()
}

// The lifecycle scenarios: each runs one `app` container (its own pod name, so its own pod
// cgroup) and checks one behaviour: the cgroup and its limits, the stats (PSI too) and
// metrics from the v2 files, UpdateContainerResources reaching them (memory.high and the
// swap limit too), a kill -9 of taskd that the running container survives, and the cgroup's
// removal with the container.

/// A running `app` container in pod `pod_name` (64 MiB, 0.2 CPU, 256 shares, a 4 MiB 2MB
/// hugepage limit) that keeps the CPU a little busy, on a fresh world; it has logged `ready`.
struct App {
    w: World,
    rt: RuntimeServiceClient<Channel>,
    pod: String,
    app: String,
    /// The container's cgroup dir.
    cg: PathBuf,
}

impl App {
    async fn start(driver: Driver, octet: u8, pod_name: &str) -> App {
        let w = World::new(driver, octet);
        let mut rt = w.runtime().await;
        let pod_cfg = w.pod_config(pod_name, false);
        let pod = run_pod(&mut rt, &pod_cfg).await;
        let app = create_and_start(
            &mut rt,
            &pod,
            &pod_cfg,
            container(
                "app",
                "echo ready; while :; do i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done; sleep 1; done",
                cri::LinuxContainerResources {
                    hugepage_limits: vec![cri::HugepageLimit {
                        page_size: "2MB".into(),
                        limit: 4 * MIB as u64,
                    }],
                    ..limits(64 * MIB, 20_000, 256)
                },
                false,
            ),
        )
        .await;
        w.wait_log(pod_name, "app", "ready");
        let cg = w.container_cgroup(pod_name, &app);
        App { w, rt, pod, app, cg }
    }

    /// UpdateContainerResources to 128 MiB (+64 MiB swap), 0.5 CPU, 512 shares, pids.max 77
    /// and memory.high 100 MiB (unified map).
    async fn update(&mut self) {
        let mut new = limits(128 * MIB, 50_000, 512);
        new.memory_swap_limit_in_bytes = 192 * MIB;
        new.unified.insert("pids.max".into(), "77".into());
        new.unified.insert("memory.high".into(), (100 * MIB).to_string());
        self.rt
            .update_container_resources(cri::UpdateContainerResourcesRequest {
                container_id: self.app.clone(),
                linux: Some(new),
                ..Default::default()
            })
            .await
            .expect("UpdateContainerResources");
    }

    async fn tear_down(mut self) {
        tear_down(&mut self.rt, &self.pod, &[&self.app]).await;
    }
}

/// The container's cgroup is where the driver names it, with the limits of the spec.
async fn cgroup_has_the_spec_limits(driver: Driver, octet: u8) {
    let a = App::start(driver, octet, "limits").await;
    let cg = &a.cg;
    assert!(
        !cg_file(cg, "cgroup.procs").is_empty(),
        "no process in {}",
        cg.display()
    );
    assert_eq!(cg_file(cg, "memory.max"), (64 * MIB).to_string());
    assert_eq!(cg_file(cg, "cpu.max"), "20000 100000");
    assert_eq!(cg_file(cg, "cpu.weight"), cpu_weight(256).to_string());
    // Hugepage limits: the guest kernel has the hugetlb controller.
    assert!(
        cg_file(Path::new(CGROUP_ROOT), "cgroup.controllers").contains("hugetlb"),
        "no hugetlb controller in the guest"
    );
    assert_eq!(cg_file(cg, "hugetlb.2MB.max"), (4 * MIB).to_string());
    a.tear_down().await;
}

/// ContainerStats from cpu.stat and memory.current/memory.stat.
async fn container_stats_come_from_the_v2_files(driver: Driver, octet: u8) {
    let mut a = App::start(driver, octet, "stats").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let stats = loop {
        let s = container_stats(&mut a.rt, &a.app).await;
        let cpu = val(s.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds.as_ref()));
        if cpu > 0 {
            break s;
        }
        assert!(Instant::now() < deadline, "no CPU usage in ContainerStats: {s:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mem = stats.memory.as_ref().expect("memory stats");
    let ws = val(mem.working_set_bytes.as_ref());
    assert!(ws > 0 && ws <= 64 * MIB as u64, "working set {ws}: {stats:?}");
    assert_eq!(
        mem.available_bytes.as_ref().map(|v| v.value),
        Some(64 * MIB as u64 - ws),
        "available = limit - working set: {stats:?}"
    );
    a.tear_down().await;
}

/// PSI from the container's cpu/memory/io.pressure (the k8s-cri client predates the psi
/// fields: taskd's own generated client reads them). The totals only grow: read back from
/// the container's files afterwards they are at least what ContainerStats said. The pod's
/// stats carry the pod cgroup's (the parent of the container's).
async fn container_and_pod_stats_carry_psi(driver: Driver, octet: u8) {
    let a = App::start(driver, octet, "psi").await;
    let mut raw =
        taskd_proto::cri::v1::runtime_service_client::RuntimeServiceClient::new(a.w.d.channel().await);
    let with_psi = raw
        .container_stats(taskd_proto::cri::v1::ContainerStatsRequest {
            container_id: a.app.clone(),
        })
        .await
        .expect("ContainerStats (taskd_proto client)")
        .into_inner()
        .stats
        .expect("stats");
    for (resource, psi) in [
        ("cpu", with_psi.cpu.as_ref().and_then(|c| c.psi)),
        ("memory", with_psi.memory.as_ref().and_then(|m| m.psi)),
        ("io", with_psi.io.as_ref().and_then(|i| i.psi)),
    ] {
        let some = psi
            .and_then(|p| p.some)
            .unwrap_or_else(|| panic!("no {resource} PSI: {with_psi:?}"));
        let file = cg_file(&a.cg, &format!("{resource}.pressure"));
        let now: u64 = file
            .lines()
            .find_map(|l| l.strip_prefix("some "))
            .and_then(|l| l.rsplit_once("total="))
            .and_then(|(_, t)| t.parse().ok())
            .unwrap_or_else(|| panic!("{resource}.pressure: {file}"));
        assert!(
            some.total <= now,
            "{resource} PSI total {} > the file's {now}",
            some.total
        );
    }

    let pod_psi = raw
        .pod_sandbox_stats(taskd_proto::cri::v1::PodSandboxStatsRequest {
            pod_sandbox_id: a.pod.clone(),
        })
        .await
        .expect("PodSandboxStats (taskd_proto client)")
        .into_inner()
        .stats
        .and_then(|s| s.linux)
        .expect("linux pod stats");
    for (resource, psi) in [
        ("cpu", pod_psi.cpu.as_ref().and_then(|c| c.psi)),
        ("memory", pod_psi.memory.as_ref().and_then(|m| m.psi)),
        ("io", pod_psi.io.as_ref().and_then(|i| i.psi)),
    ] {
        assert!(
            psi.and_then(|p| p.some).is_some(),
            "no pod {resource} PSI: {pod_psi:?}"
        );
    }
    a.tear_down().await;
}

/// PodSandboxStats: the pod's own cgroup totals and the container's.
async fn pod_stats_total_the_pod_and_list_its_container(driver: Driver, octet: u8) {
    let mut a = App::start(driver, octet, "podstats").await;
    let ps =
        a.rt.pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: a.pod.clone(),
        })
        .await
        .expect("PodSandboxStats")
        .into_inner()
        .stats
        .expect("pod stats");
    let linux = ps.linux.as_ref().expect("linux pod stats");
    assert!(
        val(linux
            .cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref()))
            > 0,
        "pod CPU: {ps:?}"
    );
    assert!(
        val(linux.memory.as_ref().and_then(|m| m.working_set_bytes.as_ref())) > 0,
        "pod memory: {ps:?}"
    );
    assert!(
        linux
            .containers
            .iter()
            .any(|c| c.attributes.as_ref().is_some_and(|attr| attr.id == a.app)),
        "pod stats list the container: {ps:?}"
    );
    a.tear_down().await;
}

/// ListPodSandboxMetrics: cAdvisor's series for the container.
async fn pod_sandbox_metrics_have_the_container_s_cadvisor_series(driver: Driver, octet: u8) {
    let mut a = App::start(driver, octet, "metrics").await;
    let all =
        a.rt.list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
            .await
            .expect("ListPodSandboxMetrics")
            .into_inner()
            .pod_metrics;
    let (pod, app) = (&a.pod, &a.app);
    let pm = all
        .iter()
        .find(|p| p.pod_sandbox_id == *pod)
        .unwrap_or_else(|| panic!("no metrics for pod {pod}: {all:?}"));
    let cm = pm
        .container_metrics
        .iter()
        .find(|c| c.container_id == *app)
        .unwrap_or_else(|| panic!("no metrics for container {app}: {pm:?}"));
    let values = metric_values(&cm.metrics);
    assert!(
        values
            .get("container_memory_working_set_bytes")
            .is_some_and(|v| *v > 0),
        "{values:?}"
    );
    assert!(
        values.contains_key("container_cpu_usage_seconds_total"),
        "{values:?}"
    );
    a.tear_down().await;
}

/// UpdateContainerResources reaches memory.max, cpu.max, cpu.weight, pids.max and
/// memory.high (unified map), memory.swap.max (memory + swap limit − memory limit); and
/// ContainerStats.swap comes from memory.swap.current and memory.swap.max.
async fn update_container_resources_reaches_the_v2_files(driver: Driver, octet: u8) {
    let mut a = App::start(driver, octet, "update").await;
    a.update().await;
    let cg = &a.cg;
    assert_eq!(cg_file(cg, "memory.max"), (128 * MIB).to_string());
    assert_eq!(cg_file(cg, "cpu.max"), "50000 100000");
    assert_eq!(cg_file(cg, "cpu.weight"), cpu_weight(512).to_string());
    assert_eq!(cg_file(cg, "pids.max"), "77");
    assert_eq!(cg_file(cg, "memory.high"), (100 * MIB).to_string());
    assert_eq!(cg_file(cg, "memory.swap.max"), (64 * MIB).to_string());
    // The guest has no swap device: nothing used, all of the limit available.
    let stats = container_stats(&mut a.rt, &a.app).await;
    let swap = stats.swap.expect("swap stats");
    assert_eq!(
        (
            val(swap.swap_usage_bytes.as_ref()),
            val(swap.swap_available_bytes.as_ref())
        ),
        (0, 64 * MIB as u64),
        "{swap:?}"
    );
    a.tear_down().await;
}

/// The task monitor's v2 series (containerd's names) follow an update, promtool-clean.
async fn task_monitor_series_follow_an_update_and_pass_promtool(driver: Driver, octet: u8) {
    let mut a = App::start(driver, octet, "series").await;
    a.update().await;
    let labels = [("container_id", a.app.as_str()), ("namespace", "k8s.io")];
    let body = support::observe::eventually(
        "container_memory_usage_limit_bytes of the container",
        Duration::from_secs(30),
        || {
            let (code, body) = a.w.d.http("/v1/metrics", None);
            (code == 200 && sample(&body, "container_memory_usage_limit_bytes", &labels).is_some())
                .then_some(body)
        },
    );
    assert_eq!(
        sample(&body, "container_memory_usage_limit_bytes", &labels),
        Some((128 * MIB) as f64)
    );
    assert_eq!(sample(&body, "container_pids_limit", &labels), Some(77.0));
    assert!(sample(&body, "container_pids_current", &labels).is_some_and(|v| v >= 1.0));
    assert!(sample(&body, "container_cpu_usage_usec_microseconds", &labels).is_some_and(|v| v > 0.0));
    assert!(sample(&body, "container_memory_usage_bytes", &labels).is_some_and(|v| v > 0.0));
    promtool_check(&body);
    a.tear_down().await;
}

/// kill -9 of taskd: the container keeps running in its cgroup, the restarted daemon
/// recovers it, and its stats still come from the same files.
async fn a_running_container_survives_a_kill_9_of_taskd(driver: Driver, octet: u8) {
    let mut a = App::start(driver, octet, "restart").await;
    let procs = cg_file(&a.cg, "cgroup.procs");
    a.w.d.kill9();
    a.w.d.restart();
    a.rt = a.w.runtime().await;
    let s = status(&mut a.rt, &a.app).await;
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32, "{s:?}");
    assert_eq!(
        cg_file(&a.cg, "cgroup.procs").lines().next(),
        procs.lines().next()
    );
    let after = container_stats(&mut a.rt, &a.app).await;
    assert!(
        val(after.memory.as_ref().and_then(|m| m.working_set_bytes.as_ref())) > 0,
        "{after:?}"
    );
    a.tear_down().await;
}

/// Stop and RemoveContainer (then the pod's) remove the container's cgroup.
async fn remove_container_removes_its_cgroup(driver: Driver, octet: u8) {
    let a = App::start(driver, octet, "remove").await;
    let cg = a.cg.clone();
    a.tear_down().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while cg.exists() {
        assert!(
            Instant::now() < deadline,
            "{} left after RemoveContainer",
            cg.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A process over its container's memory limit: the kernel kills it (`oom_kill` in the
/// container's memory.events), the shim publishes /tasks/oom, and the container, once
/// stopped, is OOMKilled. The killed process is a child and the shell lives on: with the
/// systemd driver an OOM-killed init empties the scope, systemd removes its cgroup at once,
/// and Debian's runc shim may then fail to read memory.events in time (no /tasks/oom; seen
/// once in three VM runs).
async fn oom_kill(driver: Driver, octet: u8) {
    let w = World::new(driver, octet);
    let mut events = EventWatcher::start(&w.d);
    let mut rt = w.runtime().await;
    let pod_cfg = w.pod_config("oom", false);
    let pod = run_pod(&mut rt, &pod_cfg).await;
    // The shim watches memory.events only once `runc start` returned: allocate a second later.
    let hog = create_and_start(
        &mut rt,
        &pod,
        &pod_cfg,
        container(
            "hog",
            "sleep 1; dd if=/dev/zero of=/dev/null bs=256M count=1; echo survived; exec sleep 3600",
            limits(32 * MIB, 0, 0),
            false,
        ),
    )
    .await;
    w.wait_log("oom", "hog", "survived");
    events.wait_for(&["/tasks/oom", &hog], Duration::from_secs(60));
    let oom_kills = cg_file(&w.container_cgroup("oom", &hog), "memory.events")
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_default();
    assert!(oom_kills >= 1, "memory.events oom_kill {oom_kills}");
    rt.stop_container(cri::StopContainerRequest {
        container_id: hog.clone(),
        timeout: 0,
    })
    .await
    .expect("StopContainer");
    let s = exited(&mut rt, &hog).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (137, "OOMKilled"), "{s:?}");
    tear_down(&mut rt, &pod, &[&hog]).await;
}

/// Every container has its own cgroup namespace on v2: `/proc/self/cgroup` is `0::/` and
/// `/sys/fs/cgroup` is its own cgroup (its limits, not the node's tree); a privileged one
/// too, with the cgroup mount writable.
async fn private_cgroup_namespace(driver: Driver, octet: u8) {
    let w = World::new(driver, octet);
    let mut rt = w.runtime().await;
    let probe = "cat /proc/self/cgroup; echo max=$(cat /sys/fs/cgroup/memory.max); \
                 echo pids=$(cat /sys/fs/cgroup/pids.max); \
                 [ -e /sys/fs/cgroup/init.scope ] && echo node-tree-visible; \
                 grep ' /sys/fs/cgroup ' /proc/self/mounts | cut -d' ' -f3,4 | cut -d, -f1; \
                 mkdir /sys/fs/cgroup/sub 2>/dev/null && echo mkdir-ok; \
                 echo done; exec sleep 3600";
    let mut res = limits(48 * MIB, 0, 0);
    res.unified.insert("pids.max".into(), "50".into());

    let pod_cfg = w.pod_config("ns", false);
    let pod = run_pod(&mut rt, &pod_cfg).await;
    let plain = create_and_start(
        &mut rt,
        &pod,
        &pod_cfg,
        container("plain", probe, res.clone(), false),
    )
    .await;
    let lines = w.wait_log("ns", "plain", "done");
    assert_eq!(lines[0], "0::/", "{lines:?}");
    assert!(lines.contains(&format!("max={}", 48 * MIB)), "{lines:?}");
    assert!(lines.contains(&"pids=50".to_owned()), "{lines:?}");
    assert!(!lines.contains(&"node-tree-visible".to_owned()), "{lines:?}");
    assert!(lines.contains(&"cgroup2 ro".to_owned()), "{lines:?}");
    assert!(!lines.contains(&"mkdir-ok".to_owned()), "{lines:?}");

    let priv_cfg = w.pod_config("nspriv", true);
    let priv_pod = run_pod(&mut rt, &priv_cfg).await;
    let privileged = create_and_start(
        &mut rt,
        &priv_pod,
        &priv_cfg,
        container("privileged", probe, res, true),
    )
    .await;
    let lines = w.wait_log("nspriv", "privileged", "done");
    assert_eq!(lines[0], "0::/", "{lines:?}");
    assert!(lines.contains(&format!("max={}", 48 * MIB)), "{lines:?}");
    assert!(!lines.contains(&"node-tree-visible".to_owned()), "{lines:?}");
    assert!(lines.contains(&"cgroup2 rw".to_owned()), "{lines:?}");
    assert!(lines.contains(&"mkdir-ok".to_owned()), "{lines:?}");
    // The sub-cgroup the container made is in its own cgroup on the host.
    assert!(w.container_cgroup("nspriv", &privileged).join("sub").is_dir());
    let _ = std::fs::remove_dir(w.container_cgroup("nspriv", &privileged).join("sub"));

    tear_down(&mut rt, &pod, &[&plain]).await;
    tear_down(&mut rt, &priv_pod, &[&privileged]).await;
}

/// `<driver>_<scenario>` tests for both drivers; pod subnets 10.89.<octet>.0/24 and
/// <octet>+1 keep them apart.
macro_rules! both_drivers {
    ($($scenario:ident, $cgroupfs:ident, $systemd:ident, $octet:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "vm: needs cgroup v2 + systemd; run by scripts/vm-test.sh"]
        async fn $cgroupfs() {
            $scenario(Driver::Cgroupfs, $octet).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "vm: needs cgroup v2 + systemd; run by scripts/vm-test.sh"]
        async fn $systemd() {
            $scenario(Driver::Systemd, $octet + 1).await;
        }
    )*};
}

/// The tests, named `vm::<driver>_<scenario>`: the host suite (`scripts/test.sh --e2e`)
/// skips `vm::` when it includes ignored tests.
mod vm {
    use super::*;

    both_drivers! {
        cgroup_has_the_spec_limits, cgroupfs_cgroup_has_the_spec_limits, systemd_cgroup_has_the_spec_limits, 1;
        container_stats_come_from_the_v2_files, cgroupfs_container_stats_come_from_the_v2_files, systemd_container_stats_come_from_the_v2_files, 7;
        container_and_pod_stats_carry_psi, cgroupfs_container_and_pod_stats_carry_psi, systemd_container_and_pod_stats_carry_psi, 9;
        pod_stats_total_the_pod_and_list_its_container, cgroupfs_pod_stats_total_the_pod_and_list_its_container, systemd_pod_stats_total_the_pod_and_list_its_container, 11;
        pod_sandbox_metrics_have_the_container_s_cadvisor_series, cgroupfs_pod_sandbox_metrics_have_the_container_s_cadvisor_series, systemd_pod_sandbox_metrics_have_the_container_s_cadvisor_series, 13;
        update_container_resources_reaches_the_v2_files, cgroupfs_update_container_resources_reaches_the_v2_files, systemd_update_container_resources_reaches_the_v2_files, 15;
        task_monitor_series_follow_an_update_and_pass_promtool, cgroupfs_task_monitor_series_follow_an_update_and_pass_promtool, systemd_task_monitor_series_follow_an_update_and_pass_promtool, 17;
        a_running_container_survives_a_kill_9_of_taskd, cgroupfs_a_running_container_survives_a_kill_9_of_taskd, systemd_a_running_container_survives_a_kill_9_of_taskd, 19;
        remove_container_removes_its_cgroup, cgroupfs_remove_container_removes_its_cgroup, systemd_remove_container_removes_its_cgroup, 21;
        oom_kill, cgroupfs_oom_kill, systemd_oom_kill, 3;
        private_cgroup_namespace, cgroupfs_private_cgroup_namespace, systemd_private_cgroup_namespace, 5;
    }
}

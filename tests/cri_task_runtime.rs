//! A pod with containers end to end through the CRI handlers, the CRI `TaskRuntime`, the
//! real tasks service (runtime v2 shim manager), the real `containerd-shim-runc-v2`, real
//! runc, real CNI (bridge + host-local on a private subnet inside netns this test creates)
//! and a real redb metadata store. Only the image side is local: root file systems are
//! busybox directories built from the host's busybox-static (`tests/support/rootfs.rs`) and
//! bind-mounted as the task rootfs, so the handlers are tested without a registry. The same
//! flows through the real daemon, with pulled images and snapshots, are in
//! `tests/cri_sandbox.rs`, `tests/cri_containers.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "support/rootfs.rs"]
mod rootfs;
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use taskd::cri::backend::contract::ImageInfo;
use taskd::cri::backend::contract::RootfsProvider;
use taskd::cri::backend::tasks::TaskRuntime;
use taskd::cri::config::CriConfig;
use taskd::cri::container_events::ContainerEvents;
use taskd::cri::error::CriError;
use taskd::cri::service::CriService;
use taskd::cri::store::container::ContainerState;
use taskd::cri::store::image::ImageConfig;
use taskd::events::Exchange;
use taskd::metadata::Db;
use taskd::monitor::NoopMonitor;
use taskd::runtime::Mount;
use taskd::runtime::v2::binary::DaemonAddresses;
use taskd::runtime::v2::{Config, TaskManager};
use taskd::server::TtrpcService;
use taskd::services::events::ttrpc::TtrpcEvents;
use taskd::services::tasks::Tasks;
use taskd_proto::cri::v1 as cri;

/// Busybox root file systems, one directory per container, bind-mounted.
struct BusyboxRootfs {
    dir: PathBuf,
}

#[async_trait]
impl RootfsProvider for BusyboxRootfs {
    fn snapshotter(&self) -> &str {
        ""
    }
    async fn image(&self, reference: &str) -> Result<ImageInfo, CriError> {
        let pause = reference.contains("pause");
        Ok(ImageInfo {
            id: "sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
            reference: taskd::images::reference::normalize(reference)?.to_string(),
            config: ImageConfig {
                entrypoint: if pause {
                    vec!["/bin/sleep".into(), "3600".into()]
                } else {
                    vec![]
                },
                cmd: if pause { vec![] } else { vec!["/bin/sh".into()] },
                env: vec!["PATH=/bin:/sbin:/usr/bin".into()],
                ..Default::default()
            },
            passwd: Some("root:x:0:0:root:/root:/bin/sh\n".into()),
            group: Some("root:x:0:\n".into()),
        })
    }
    async fn prepare(&self, id: &str, _image: &ImageInfo) -> Result<Vec<Mount>, CriError> {
        let root = self.dir.join(id);
        std::fs::create_dir_all(&root).unwrap();
        rootfs::build(&root).unwrap();
        Ok(vec![Mount {
            r#type: "bind".into(),
            source: root.display().to_string(),
            target: String::new(),
            options: vec!["rbind".into(), "rw".into()],
        }])
    }
    async fn remove(&self, id: &str) -> Result<(), CriError> {
        let _ = std::fs::remove_dir_all(self.dir.join(id));
        Ok(())
    }
}

struct World {
    dir: tempfile::TempDir,
    bridge: String,
    svc: Arc<CriService>,
    tasks: Arc<dyn Tasks>,
    rt: Arc<TaskRuntime>,
    cfg: CriConfig,
    exchange: Arc<Exchange>,
    _server: ttrpc::r#async::Server,
    events: tokio::task::JoinHandle<()>,
}

/// A CRI service on the world's dirs, its stores loaded from disk; returns it with the
/// number of record files it skipped.
fn cri_service(dir: &Path, cfg: &CriConfig, rt: &Arc<TaskRuntime>) -> (CriService, usize) {
    let mut svc = CriService::new(
        cfg.clone(),
        &dir.join("root/cri"),
        &dir.join("state/cri"),
        ContainerEvents::new().unwrap(),
    );
    svc.controller = Some(rt.clone());
    svc.runner = Some(rt.clone());
    let skipped = svc.open_stores().unwrap().len();
    (svc, skipped)
}

impl World {
    /// What a taskd crash does to the CRI plugin: its event loop and log copiers stop
    /// mid-flight (nothing is stopped or flushed); the tasks service and shims live on.
    fn crash_cri(&mut self) {
        self.events.abort();
        for (_, mut io) in self.svc.ios.lock().unwrap().drain() {
            io.abort();
        }
    }

    /// A new CRI plugin instance on the same dirs: load, subscribe, recover.
    async fn restart_cri(&mut self) -> (taskd::cri::recover::Report, usize) {
        let (svc, skipped) = cri_service(self.dir.path(), &self.cfg, &self.rt);
        let svc = Arc::new(svc);
        self.events = taskd::cri::events::spawn(svc.clone(), self.exchange.as_ref()).unwrap();
        let report = taskd::cri::recover::recover(&svc).await;
        self.svc = svc;
        (report, skipped)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        // Shims killed; what is mounted under state/ (pod netns and pins, /dev/shm, rootfs)
        // unmounted.
        support::cleanup::after_daemon(&self.dir.path().join("state"));
        // The pods' parent cgroup (cgroup_parent of pod_config).
        support::cleanup::remove_cgroup_parent(&cgroup_parent(self.dir.path()));
    }
}

impl World {
    /// RunPodSandbox with the default handler; the pod id.
    async fn run_pod(&self, cfg: &cri::PodSandboxConfig) -> String {
        self.svc
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await
            .expect("RunPodSandbox")
            .pod_sandbox_id
    }

    /// CreateContainer + StartContainer in `pod`; the container id.
    async fn create_and_start(
        &self,
        pod: &str,
        pod_cfg: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> String {
        let id = self
            .svc
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.to_owned(),
                config: Some(config),
                sandbox_config: Some(pod_cfg.clone()),
            })
            .await
            .expect("CreateContainer")
            .container_id;
        self.svc
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .expect("StartContainer");
        id
    }
}

async fn world() -> World {
    support::require(&[
        support::Need::Root,
        support::Need::Bin("runc", "runc"),
        support::Need::Bin("containerd-shim-runc-v2", "containerd"),
    ]);
    if !Path::new("/usr/lib/cni/bridge").is_file() {
        panic!("install the CNI plugins (apt-get install containernetworking-plugins)");
    }
    let dir = tempfile::Builder::new()
        .prefix("taskd-cri-pod")
        .tempdir()
        .unwrap();
    let exchange = Arc::new(Exchange::with_queue_size(1024).unwrap());
    let ttrpc_sock = dir.path().join("ttrpc.sock");
    let mut server = ttrpc::r#async::Server::new()
        .bind(&format!("unix://{}", ttrpc_sock.display()))
        .unwrap();
    for (_, s) in TtrpcEvents::new(exchange.clone()).services() {
        server = server.register_service(std::collections::HashMap::from([(
            "containerd.services.events.ttrpc.v1.Events".to_owned(),
            s,
        )]));
    }
    server.start().await.unwrap();
    let manager = TaskManager::new(
        // The runtime plugin's own dirs, so support::cleanup finds the bundles.
        dir.path().join("state/io.containerd.runtime.v2.task"),
        dir.path().join("root/io.containerd.runtime.v2.task"),
        DaemonAddresses {
            grpc: dir.path().join("grpc.sock"),
            ttrpc: ttrpc_sock,
            exe: PathBuf::from(env!("CARGO_BIN_EXE_taskd")),
            sealed_runc: None,
        },
        Config {
            // The CRI's default handler runs taskd's own shim, built next to taskd
            // (`cargo build -p containerd-shim-taskd-v2`), not next to this test binary.
            shims: [(
                "io.containerd.taskd.v2".to_owned(),
                PathBuf::from(env!("CARGO_BIN_EXE_taskd")).with_file_name("containerd-shim-taskd-v2"),
            )]
            .into(),
            ..Config::default()
        },
        exchange.clone(),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("root")).unwrap();
    let db = Arc::new(Db::open(&dir.path().join("root/meta.redb")).unwrap());
    let tasks: Arc<dyn Tasks> = Arc::new(taskd::services::tasks::Local::new(
        Arc::new(manager),
        db.clone(),
        Arc::new(NoopMonitor),
    ));
    let containers = Arc::new(taskd::services::containers::Local::new(db, exchange.clone()));
    let rt = Arc::new(TaskRuntime::new(
        tasks.clone(),
        containers,
        Arc::new(BusyboxRootfs {
            dir: dir.path().join("rootfs"),
        }),
    ));

    // Tests in this binary run in parallel: each world has its own bridge and subnet.
    static WORLDS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = WORLDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let octet = 220 + ((std::process::id() + n * 7) % 30) as u8;
    let bridge = format!("tkp{}-{n}", std::process::id() % 100_000);
    let conf_dir = dir.path().join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::write(
        conf_dir.join("10-pod.conflist"),
        format!(
            r#"{{"cniVersion":"1.0.0","name":"podt","plugins":[{{"type":"bridge","bridge":"{bridge}","isGateway":false,"ipMasq":false,
               "ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"10.88.{octet}.0/24"}}]]}}}}]}}"#,
            dir.path().join("ipam").display()
        ),
    )
    .unwrap();
    let mut cfg = CriConfig::default();
    cfg.cni.conf_dir = conf_dir;
    cfg.cni.bin_dirs = vec![PathBuf::from("/usr/lib/cni")];
    let (svc, skipped) = cri_service(dir.path(), &cfg, &rt);
    assert_eq!(skipped, 0);
    let svc = Arc::new(svc);
    let events = taskd::cri::events::spawn(svc.clone(), exchange.as_ref()).unwrap();
    World {
        dir,
        bridge,
        svc,
        tasks,
        rt,
        cfg,
        exchange,
        _server: server,
        events,
    }
}

/// A pod cgroup parent unique to one test (removed by `World`'s drop).
fn cgroup_parent(dir: &Path) -> String {
    let tail = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("/taskd-cri-test-{}-{tail}", std::process::id())
}

fn pod_config(logs: &Path, cgroup_parent: String) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "web".into(),
            uid: "uid-web".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "web-pod".into(),
        log_directory: logs.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container(name: &str, script: &str) -> cri::ContainerConfig {
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
        log_path: format!("{name}/0.log"),
        ..Default::default()
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The script of the pod's long-running container: its output, hostname and eth0, then sleep.
const APP: &str = "echo hello from app; hostname; ip -4 -o addr show eth0; sleep 3600";
/// The script of a container that lists the pod's processes and exits 3 on its own.
const SIDE: &str = "ps; exit 3";

/// The config of pod "web" whose containers `names` log to `<dir>/logs/<name>/0.log`.
fn web_pod_config(w: &World, names: &[&str]) -> cri::PodSandboxConfig {
    let logs = w.dir.path().join("logs");
    for name in names {
        std::fs::create_dir_all(logs.join(name)).unwrap();
    }
    pod_config(&logs, cgroup_parent(w.dir.path()))
}

/// Pod "web" with no container yet, ready for container `name`'s log; (pod config, pod id).
async fn pod_for(w: &World, name: &str) -> (cri::PodSandboxConfig, String) {
    let pod_cfg = web_pod_config(w, &[name]);
    let pod = w.run_pod(&pod_cfg).await;
    (pod_cfg, pod)
}

/// A pod "web" running `containers` (name, script), each logging to `<dir>/logs/<name>/0.log`;
/// (pod config, pod id, container ids in order).
async fn pod_with(w: &World, containers: &[(&str, &str)]) -> (cri::PodSandboxConfig, String, Vec<String>) {
    let names: Vec<&str> = containers.iter().map(|(name, _)| *name).collect();
    let pod_cfg = web_pod_config(w, &names);
    let pod = w.run_pod(&pod_cfg).await;
    let mut ids = Vec::new();
    for (name, script) in containers {
        ids.push(w.create_and_start(&pod, &pod_cfg, container(name, script)).await);
    }
    (pod_cfg, pod, ids)
}

/// The CRI log of container `name`.
fn log_of(w: &World, name: &str) -> PathBuf {
    w.dir.path().join("logs").join(name).join("0.log")
}

fn wait_exited(w: &World, id: &str) {
    wait_for(&format!("{id} exits"), || {
        w.svc.containers.get(id).unwrap().state == ContainerState::Exited
    });
}

/// Pod "web" with app running (its output logged) and side exited on its own; (pod, app, side).
async fn app_and_side(w: &World) -> (String, String, String) {
    let (_, pod, ids) = pod_with(w, &[("app", APP), ("side", SIDE)]).await;
    let app_log = log_of(w, "app");
    wait_for("app output", || {
        std::fs::read_to_string(&app_log)
            .unwrap_or_default()
            .contains("eth0")
    });
    wait_exited(w, &ids[1]);
    (pod, ids[0].clone(), ids[1].clone())
}

/// Pod "web" with only side, waited for until it exited on its own; side's id.
async fn exited_side(w: &World) -> String {
    let (_, _, ids) = pod_with(w, &[("side", SIDE)]).await;
    wait_exited(w, &ids[0]);
    ids[0].clone()
}

/// RemovePodSandbox `pod`: no sandbox, container or task is left.
async fn remove_pod(w: &World, pod: &str) {
    w.svc
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.to_owned(),
        })
        .await
        .expect("RemovePodSandbox");
    assert!(w.svc.sandboxes.is_empty() && w.svc.containers.is_empty());
    assert!(
        w.tasks.list("k8s.io", "").await.unwrap().is_empty(),
        "no task left"
    );
}

/// StopPodSandbox then RemovePodSandbox `pod` through the restarted CRI plugin: nothing is left.
async fn stop_and_remove_after_restart(w: &World, pod: &str) {
    w.svc
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.to_owned(),
        })
        .await
        .expect("StopPodSandbox after restart");
    remove_pod(w, pod).await;
}

/// ExecSync `cmd` in `id` with `timeout` seconds.
async fn exec(w: &World, id: &str, cmd: &[&str], timeout: i64) -> Result<cri::ExecSyncResponse, CriError> {
    w.svc
        .clone()
        .exec_sync_detached(cri::ExecSyncRequest {
            container_id: id.to_owned(),
            cmd: cmd.iter().map(std::string::ToString::to_string).collect(),
            timeout,
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn run_pod_sandbox_gives_the_pod_an_ip_on_the_bridge_and_a_sandbox_pid() {
    let w = world().await;
    let (_, pod, _) = pod_with(&w, &[]).await;
    let sb = w.svc.sandboxes.get(&pod).unwrap();
    assert!(sb.ip.starts_with("10.88."), "{}", sb.ip);
    assert!(sb.pid > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn pod_start_is_observed_once_at_its_first_running_container() {
    let w = world().await;
    pod_with(&w, &[("app", APP), ("side", SIDE)]).await;
    assert_eq!(
        w.svc
            .metrics
            .pod_start
            .with_label_values(&[""])
            .get_sample_count(),
        1,
        "one pod start observed, at its first running container"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn container_log_holds_its_output_with_the_pods_hostname_and_ip() {
    let w = world().await;
    let (_, pod, _) = pod_with(&w, &[("app", APP)]).await;
    let sb = w.svc.sandboxes.get(&pod).unwrap();
    let app_log = log_of(&w, "app");
    wait_for("app output", || {
        std::fs::read_to_string(&app_log)
            .unwrap_or_default()
            .contains("eth0")
    });
    let text = std::fs::read_to_string(&app_log).unwrap();
    assert!(text.contains(" stdout F hello from app\n"), "{text}");
    assert!(
        text.contains(" stdout F web-pod\n"),
        "hostname from the pod: {text}"
    );
    assert!(text.contains(&sb.ip), "the pod IP on eth0: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn a_container_exiting_on_its_own_is_recorded_with_its_exit_code() {
    let w = world().await;
    // side exits 3 on its own: the event loop records it.
    let side = exited_side(&w).await;
    let s = w.svc.containers.get(&side).unwrap();
    assert_eq!((s.exit.code, s.exit.reason.as_str()), (3, "Error"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn containers_share_the_pods_pid_namespace() {
    let w = world().await;
    app_and_side(&w).await;
    // PID namespace shared with the pod: ps in side sees app's and the pause's processes.
    let side_log = std::fs::read_to_string(log_of(&w, "side")).unwrap();
    assert!(side_log.contains("sleep 3600"), "{side_log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn exec_sync_returns_stdout_stderr_and_the_exit_code() {
    let w = world().await;
    let (_, _, ids) = pod_with(&w, &[("app", APP)]).await;
    let r = exec(
        &w,
        &ids[0],
        &["/bin/sh", "-c", "echo hi; echo err >&2; exit 7"],
        10,
    )
    .await
    .expect("ExecSync");
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"hi\n"[..], &b"err\n"[..], 7)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn exec_sync_past_its_timeout_is_killed_and_deadline_exceeded() {
    let w = world().await;
    let (_, _, ids) = pod_with(&w, &[("app", APP)]).await;
    let e = exec(&w, &ids[0], &["/bin/sleep", "600"], 1).await.unwrap_err();
    assert_eq!(
        taskd::errdefs::ErrorKind::kind(&e),
        taskd::errdefs::Kind::DeadlineExceeded,
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn concurrent_exec_syncs_each_get_their_own_exit_code() {
    let w = world().await;
    let (_, _, ids) = pod_with(&w, &[("app", APP)]).await;
    let all = futures::future::join_all((0..20).map(|i| {
        exec(
            &w,
            &ids[0],
            if i % 2 == 0 {
                &["/bin/sh", "-c", "true"]
            } else {
                &["/bin/sh", "-c", "false"]
            },
            30,
        )
    }))
    .await;
    for (i, r) in all.into_iter().enumerate() {
        assert_eq!(r.expect("concurrent ExecSync").exit_code, (i % 2) as i32);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn exec_sync_in_an_exited_container_is_a_failed_precondition() {
    let w = world().await;
    let side = exited_side(&w).await;
    let e = exec(&w, &side, &["true"], 5).await.unwrap_err();
    assert_eq!(
        taskd::errdefs::ErrorKind::kind(&e),
        taskd::errdefs::Kind::FailedPrecondition,
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn container_stats_come_from_the_tasks_cgroup_with_a_rate_from_the_second_sample() {
    let w = world().await;
    let (_, _, ids) = pod_with(&w, &[("app", APP)]).await;
    let app = &ids[0];
    let st = w
        .svc
        .container_stats(cri::ContainerStatsRequest {
            container_id: app.clone(),
        })
        .await
        .expect("ContainerStats")
        .stats
        .unwrap();
    assert!(
        st.cpu.as_ref().unwrap().usage_core_nano_seconds.unwrap().value > 0,
        "{st:?}"
    );
    let mem = st.memory.as_ref().unwrap();
    assert!(
        mem.usage_bytes.unwrap().value > 0 && mem.working_set_bytes.is_some(),
        "{st:?}"
    );
    let again = w
        .svc
        .container_stats(cri::ContainerStatsRequest {
            container_id: app.clone(),
        })
        .await
        .unwrap()
        .stats
        .unwrap();
    assert!(
        again.cpu.unwrap().usage_nano_cores.is_some(),
        "a rate from the second sample"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn list_container_stats_lists_the_pods_containers_and_no_sample_of_an_exited_one() {
    let w = world().await;
    let (pod, _, side) = app_and_side(&w).await;
    let list = w
        .svc
        .list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("ListContainerStats")
        .stats;
    assert_eq!(list.len(), 2);
    let side_stats = list
        .iter()
        .find(|s| s.attributes.as_ref().unwrap().id == side)
        .unwrap();
    assert!(
        side_stats.cpu.is_none(),
        "an exited container has no task to sample"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn pod_sandbox_stats_sum_the_pods_tasks_and_read_its_network() {
    let w = world().await;
    let (pod, _, _) = app_and_side(&w).await;
    // Pod stats: cpu/memory/processes summed over the pause task and running containers,
    // network from the pod's netns (eth0 from the bridge plugin), containers listed.
    let ps = w
        .svc
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("PodSandboxStats")
        .stats
        .unwrap();
    assert_eq!(ps.attributes.as_ref().unwrap().id, pod);
    let linux = ps.linux.as_ref().unwrap();
    assert!(
        linux.cpu.as_ref().unwrap().usage_core_nano_seconds.unwrap().value > 0,
        "{ps:?}"
    );
    assert!(
        linux.memory.as_ref().unwrap().working_set_bytes.unwrap().value > 0,
        "{ps:?}"
    );
    // pause + app's sh + sleep (side has exited): at least 2 processes.
    assert!(
        linux.process.as_ref().unwrap().process_count.unwrap().value >= 2,
        "{ps:?}"
    );
    let net = linux.network.as_ref().expect("pod network usage");
    assert_eq!(net.default_interface.as_ref().unwrap().name, "eth0");
    assert_eq!(linux.containers.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn list_pod_sandbox_stats_honours_the_label_selector() {
    let w = world().await;
    pod_with(&w, &[]).await;
    let listed = w
        .svc
        .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest {
            filter: Some(cri::PodSandboxStatsFilter {
                id: String::new(),
                label_selector: [("nope".to_string(), "x".to_string())].into(),
            }),
        })
        .await
        .expect("ListPodSandboxStats")
        .stats;
    assert!(listed.is_empty(), "label selector matches nothing");
    assert_eq!(
        w.svc
            .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
            .await
            .unwrap()
            .stats
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn pod_sandbox_metrics_cover_running_containers_and_every_series_is_described() {
    let w = world().await;
    let (pod, app, _) = app_and_side(&w).await;
    // CRI metrics: every served series has a descriptor with as many label keys as values.
    let desc = w
        .svc
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .expect("ListMetricDescriptors")
        .descriptors;
    let metrics = w
        .svc
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .expect("ListPodSandboxMetrics")
        .pod_metrics;
    assert_eq!(metrics.len(), 1);
    let pm = &metrics[0];
    assert_eq!(pm.pod_sandbox_id, pod);
    assert!(
        pm.metrics
            .iter()
            .any(|m| m.name == "container_network_receive_bytes_total"
                && m.label_values.last().map(String::as_str) == Some("eth0")),
        "{pm:?}"
    );
    assert_eq!(pm.container_metrics.len(), 1, "only the running container");
    let cm = &pm.container_metrics[0];
    assert_eq!(cm.container_id, app);
    let working_set = cm
        .metrics
        .iter()
        .find(|m| m.name == "container_memory_working_set_bytes")
        .expect("working set series");
    assert!(working_set.value.unwrap().value > 0);
    assert_eq!(
        working_set.label_values[..3],
        ["app".to_string(), "web".into(), "default".into()]
    );
    for m in pm.metrics.iter().chain(&cm.metrics) {
        let d = desc
            .iter()
            .find(|d| d.name == m.name)
            .unwrap_or_else(|| panic!("{} not described", m.name));
        assert_eq!(d.label_keys.len(), m.label_values.len(), "{}", m.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn stop_and_remove_of_containers_and_the_pod_leave_no_netns_record_or_task() {
    let w = world().await;
    let (pod, app, _) = app_and_side(&w).await;
    let netns_path = w.svc.sandboxes.get(&pod).unwrap().netns_path.clone();
    w.svc
        .stop_container(cri::StopContainerRequest {
            container_id: app.clone(),
            timeout: 5,
        })
        .await
        .expect("StopContainer");
    assert_eq!(w.svc.containers.get(&app).unwrap().state, ContainerState::Exited);
    w.svc
        .remove_container(cri::RemoveContainerRequest {
            container_id: app.clone(),
        })
        .await
        .expect("RemoveContainer");
    w.svc
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("StopPodSandbox");
    assert!(!Path::new(&netns_path).exists());
    remove_pod(&w, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn memory_limit_exceeded_reports_oomkilled() {
    let w = world().await;
    let (pod_cfg, pod) = pod_for(&w, "hog").await;
    // 32 MiB limit, then allocate far more: the kernel OOM-kills it.
    let mut hog = container(
        "hog",
        "echo start; x=$(head -c 268435456 /dev/zero | tr '\\0' x); echo survived",
    );
    hog.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = w.create_and_start(&pod, &pod_cfg, hog).await;
    wait_exited(&w, &id);
    let c = w.svc.containers.get(&id).unwrap();
    remove_pod(&w, &pod).await;
    assert_eq!((c.exit.code, c.exit.reason.as_str()), (137, "OOMKilled"), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn a_command_that_does_not_exist_is_a_start_error() {
    let w = world().await;
    let (pod_cfg, pod) = pod_for(&w, "bad").await;
    // A command that does not exist: StartContainer fails, the container shows StartError.
    let mut bad = container("bad", "");
    bad.command = vec!["/no/such/binary".into()];
    let created = w
        .svc
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(bad),
            sandbox_config: Some(pod_cfg.clone()),
        })
        .await;
    match created {
        // runc may refuse at create: nothing is left behind.
        Err(e) => assert!(
            e.to_string().contains("no such file") || e.to_string().contains("not found"),
            "{e}"
        ),
        Ok(r) => {
            let e = w
                .svc
                .start_container(cri::StartContainerRequest {
                    container_id: r.container_id.clone(),
                })
                .await
                .unwrap_err();
            let c = w.svc.containers.get(&r.container_id).unwrap();
            assert_eq!(
                (c.state, c.exit.reason.as_str()),
                (ContainerState::Exited, "StartError"),
                "{e}"
            );
        }
    }
    remove_pod(&w, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn a_tty_containers_console_output_reaches_the_cri_log() {
    let w = world().await;
    let mut tty = container("tty", "echo on-a-tty; [ -t 1 ] && echo is-a-terminal; sleep 3600");
    tty.tty = true;
    let (pod_cfg, pod) = pod_for(&w, "tty").await;
    w.create_and_start(&pod, &pod_cfg, tty).await;
    let tty_log = log_of(&w, "tty");
    wait_for("tty output", || {
        std::fs::read_to_string(&tty_log)
            .unwrap_or_default()
            .contains("is-a-terminal")
    });
    remove_pod(&w, &pod).await;
}

/// The script of a container that logs a numbered tick every 100 ms.
const TICKER: &str = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done";

/// The CRI plugin crashes (taskd's crash: see [`World::crash_cri`]); `while_down` runs; a new
/// CRI plugin instance loads, subscribes and recovers. The recovery report and what
/// `while_down` returned.
async fn crash_and_restart<T, F: std::future::Future<Output = T>>(
    w: &mut World,
    while_down: impl FnOnce(Arc<dyn Tasks>) -> F,
) -> (taskd::cri::recover::Report, T) {
    w.crash_cri();
    let t = while_down(w.tasks.clone()).await;
    let (report, skipped) = w.restart_cri().await;
    assert_eq!(skipped, 0, "no corrupt record");
    (report, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn cri_restart_recovers_the_running_pod_and_container_whose_log_goes_on_without_loss() {
    let mut w = world().await;
    let (_, pod, ids) = pod_with(&w, &[("ticker", TICKER)]).await;
    let ticker = &ids[0];
    let before = w.svc.sandboxes.get(&pod).unwrap();
    let ticker_log = log_of(&w, "ticker");
    wait_for("ticks", || {
        std::fs::read_to_string(&ticker_log)
            .unwrap_or_default()
            .contains("tick 3")
    });
    let ticker_pid = w.svc.containers.get(ticker).unwrap().pid;
    let (report, lines_at_crash) = crash_and_restart(&mut w, |_| {
        let lines = std::fs::read_to_string(&ticker_log).unwrap().lines().count();
        async move { lines }
    })
    .await;
    assert_eq!((report.sandboxes, report.ready), (1, 1), "{report:?}");
    assert_eq!((report.containers, report.running), (1, 1), "{report:?}");

    let sb = w.svc.sandboxes.get(&pod).unwrap();
    assert!(sb.state.is_ready());
    assert_eq!((sb.ip.as_str(), sb.pid), (before.ip.as_str(), before.pid));
    let t = w.svc.containers.get(ticker).unwrap();
    assert_eq!((t.state, t.pid), (ContainerState::Running, ticker_pid));

    // The ticker's output continues in the same log file.
    wait_for("ticks after the restart", || {
        std::fs::read_to_string(&ticker_log).unwrap().lines().count() > lines_at_crash + 3
    });
    let text = std::fs::read_to_string(&ticker_log).unwrap();
    let ticks: Vec<u64> = text
        .lines()
        .filter_map(|l| l.rsplit_once("tick ").and_then(|(_, n)| n.parse().ok()))
        .collect();
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "no line lost or repeated across the restart"
        );
    }
    stop_and_remove_after_restart(&w, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn an_exit_while_the_cri_is_down_is_recovered_and_reported_to_late_subscribers() {
    let mut w = world().await;
    let (_, pod, ids) = pod_with(&w, &[("victim", "sleep 3600")]).await;
    let victim = ids[0].clone();
    // The victim dies while the CRI plugin is away.
    let (report, ()) = crash_and_restart(&mut w, |tasks| {
        let victim = victim.clone();
        async move {
            tasks
                .kill("k8s.io", &victim, "", 9, false)
                .await
                .expect("kill victim");
            tasks.wait("k8s.io", &victim, "").await.expect("victim exits");
        }
    })
    .await;
    assert_eq!((report.sandboxes, report.ready), (1, 1), "{report:?}");
    assert_eq!((report.containers, report.running), (1, 0), "{report:?}");
    // The victim's exit is found by recovery, or (when its event reaches the new event loop
    // first) by the loop: either way it is EXITED below and reported to late subscribers.
    assert!(report.exited_while_down <= 1, "{report:?}");
    let v = w.svc.containers.get(&victim).unwrap();
    assert_eq!(v.state, ContainerState::Exited);
    assert_eq!((v.exit.code, v.exit.reason.as_str()), (137, "Error"));
    assert!(v.exit.finished_at.is_some());

    // GetContainerEvents after the restart reports the exit that happened while down.
    let mut events = w.svc.events.subscribe();
    let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("a recovery event")
        .expect("stream open");
    stop_and_remove_after_restart(&w, &pod).await;
    assert_eq!(ev.container_id, victim);
    assert_eq!(
        ev.container_event_type,
        cri::ContainerEventType::ContainerStoppedEvent as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn a_container_that_completed_before_the_cri_restart_is_recovered_completed() {
    let mut w = world().await;
    let (_, pod, ids) = pod_with(&w, &[("done", "echo finished; exit 0")]).await;
    wait_exited(&w, &ids[0]);
    let (report, ()) = crash_and_restart(&mut w, |_| async {}).await;
    assert_eq!((report.containers, report.running), (1, 0), "{report:?}");
    let d = w.svc.containers.get(&ids[0]).unwrap();
    stop_and_remove_after_restart(&w, &pod).await;
    assert_eq!(
        (d.state, d.exit.code, d.exit.reason.as_str()),
        (ContainerState::Exited, 0, "Completed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn a_corrupt_record_is_skipped_at_cri_restart_and_set_aside_when_the_pod_is_removed() {
    let mut w = world().await;
    let (_, pod, _) = pod_with(&w, &[("ticker", TICKER)]).await;
    // The CRI plugin goes away; a record file gets corrupted.
    w.crash_cri();
    std::fs::write(w.dir.path().join("root/cri/containers/0bad.json"), b"{\"id\": 12").unwrap();
    let (report, skipped) = w.restart_cri().await;
    assert_eq!(skipped, 1, "the corrupt record is skipped, not fatal");
    assert_eq!((report.containers, report.running), (1, 1), "{report:?}");

    // Everything can be stopped and removed by the new instance.
    stop_and_remove_after_restart(&w, &pod).await;
    let left: Vec<_> = std::fs::read_dir(w.dir.path().join("root/cri/containers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        left,
        ["0bad.json.corrupt"],
        "record files removed with their containers, the corrupt one set aside"
    );
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn pod_with_two_containers_sharing_pids_logs_and_teardown() {
    let w = world().await;
    let logs = w.dir.path().join("logs");
    for d in ["app", "side"] {
        std::fs::create_dir_all(logs.join(d)).unwrap();
    }
    let pod_cfg = pod_config(&logs, cgroup_parent(w.dir.path()));
    let pod = w.run_pod(&pod_cfg).await;
    let sb = w.svc.sandboxes.get(&pod).unwrap();
    assert!(sb.ip.starts_with("10.88."), "{}", sb.ip);
    assert!(sb.pid > 0);

    let create = |name: &str, script: &str| {
        let svc = w.svc.clone();
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container(name, script)),
            sandbox_config: Some(pod_cfg.clone()),
        };
        async move {
            svc.create_container(req)
                .await
                .expect("CreateContainer")
                .container_id
        }
    };
    let app = create(
        "app",
        "echo hello from app; hostname; ip -4 -o addr show eth0; sleep 3600",
    )
    .await;
    w.svc
        .start_container(cri::StartContainerRequest {
            container_id: app.clone(),
        })
        .await
        .expect("StartContainer");
    let side = create("side", "ps; exit 3").await;
    w.svc
        .start_container(cri::StartContainerRequest {
            container_id: side.clone(),
        })
        .await
        .expect("StartContainer side");

    assert_eq!(
        w.svc
            .metrics
            .pod_start
            .with_label_values(&[""])
            .get_sample_count(),
        1,
        "one pod start observed, at its first running container"
    );

    let app_log = logs.join("app/0.log");
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

    // side exits 3 on its own: the event loop records it.
    wait_for("side exit", || {
        w.svc.containers.get(&side).unwrap().state == ContainerState::Exited
    });
    let s = w.svc.containers.get(&side).unwrap();
    assert_eq!((s.exit.code, s.exit.reason.as_str()), (3, "Error"));
    // PID namespace shared with the pod: ps in side sees app's and the pause's processes.
    let side_log = std::fs::read_to_string(logs.join("side/0.log")).unwrap();
    assert!(side_log.contains("sleep 3600"), "{side_log}");

    // ExecSync: output, stderr, exit code.
    let exec = |cmd: &[&str], timeout: i64| {
        let svc = w.svc.clone();
        let req = cri::ExecSyncRequest {
            container_id: app.clone(),
            cmd: cmd.iter().map(std::string::ToString::to_string).collect(),
            timeout,
        };
        async move { svc.exec_sync_detached(req).await }
    };
    let r = exec(&["/bin/sh", "-c", "echo hi; echo err >&2; exit 7"], 10)
        .await
        .expect("ExecSync");
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"hi\n"[..], &b"err\n"[..], 7)
    );
    // The timeout is honoured: killed, DeadlineExceeded.
    let e = exec(&["/bin/sleep", "600"], 1).await.unwrap_err();
    assert_eq!(
        taskd::errdefs::ErrorKind::kind(&e),
        taskd::errdefs::Kind::DeadlineExceeded,
        "{e}"
    );
    // Many at once.
    let all = futures::future::join_all(
        (0..20).map(|i| exec(&["/bin/sh", "-c", if i % 2 == 0 { "true" } else { "false" }], 30)),
    )
    .await;
    for (i, r) in all.into_iter().enumerate() {
        assert_eq!(r.expect("concurrent ExecSync").exit_code, (i % 2) as i32);
    }
    // Not running: FailedPrecondition.
    let e = w
        .svc
        .clone()
        .exec_sync_detached(cri::ExecSyncRequest {
            container_id: side.clone(),
            cmd: vec!["true".into()],
            timeout: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(
        taskd::errdefs::ErrorKind::kind(&e),
        taskd::errdefs::Kind::FailedPrecondition,
        "{e}"
    );

    // Stats from the task's cgroup.
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

    // Stop app, then remove it.
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

    let netns_path = sb.netns_path.clone();
    w.svc
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("StopPodSandbox");
    assert!(!Path::new(&netns_path).exists());
    w.svc
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("RemovePodSandbox");
    assert!(w.svc.sandboxes.is_empty() && w.svc.containers.is_empty());
    assert!(
        w.tasks.list("k8s.io", "").await.unwrap().is_empty(),
        "no task left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn memory_limit_exceeded_reports_oomkilled_and_bad_command_is_a_start_error() {
    let w = world().await;
    let logs = w.dir.path().join("logs");
    for d in ["hog", "bad"] {
        std::fs::create_dir_all(logs.join(d)).unwrap();
    }
    let mut pod_cfg = pod_config(&logs, cgroup_parent(w.dir.path()));
    pod_cfg.metadata.as_mut().unwrap().name = "oom".into();
    let pod = w.run_pod(&pod_cfg).await;

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
    wait_for("hog exit", || {
        w.svc.containers.get(&id).unwrap().state == ContainerState::Exited
    });
    let c = w.svc.containers.get(&id).unwrap();
    assert_eq!((c.exit.code, c.exit.reason.as_str()), (137, "OOMKilled"), "{c:?}");

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

    // A tty container: the console output reaches the CRI log too.
    std::fs::create_dir_all(logs.join("tty")).unwrap();
    let mut tty = container("tty", "echo on-a-tty; [ -t 1 ] && echo is-a-terminal; sleep 3600");
    tty.tty = true;
    w.create_and_start(&pod, &pod_cfg, tty).await;
    let tty_log = logs.join("tty/0.log");
    wait_for("tty output", || {
        std::fs::read_to_string(&tty_log)
            .unwrap_or_default()
            .contains("is-a-terminal")
    });

    w.svc
        .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod })
        .await
        .expect("RemovePodSandbox");
    assert!(w.svc.containers.is_empty());
    assert!(
        w.tasks.list("k8s.io", "").await.unwrap().is_empty(),
        "no task left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins"]
async fn cri_restart_recovers_pods_containers_logs_and_exits_while_down() {
    let mut w = world().await;
    let logs = w.dir.path().join("logs");
    for d in ["ticker", "victim", "done"] {
        std::fs::create_dir_all(logs.join(d)).unwrap();
    }
    let pod_cfg = pod_config(&logs, cgroup_parent(w.dir.path()));
    let pod = w.run_pod(&pod_cfg).await;
    let before = w.svc.sandboxes.get(&pod).unwrap();
    let mut ids = Vec::new();
    for (name, script) in [
        (
            "ticker",
            "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done",
        ),
        ("victim", "sleep 3600"),
        ("done", "echo finished; exit 0"),
    ] {
        ids.push(w.create_and_start(&pod, &pod_cfg, container(name, script)).await);
    }
    let (ticker, victim, done) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    let ticker_log = logs.join("ticker/0.log");
    wait_for("ticks", || {
        std::fs::read_to_string(&ticker_log)
            .unwrap_or_default()
            .contains("tick 3")
    });
    wait_for("done exits", || {
        w.svc.containers.get(&done).unwrap().state == ContainerState::Exited
    });
    let ticker_pid = w.svc.containers.get(&ticker).unwrap().pid;

    // The CRI plugin goes away; a record file gets corrupted; the victim dies meanwhile.
    w.crash_cri();
    std::fs::write(w.dir.path().join("root/cri/containers/0bad.json"), b"{\"id\": 12").unwrap();
    w.tasks
        .kill("k8s.io", &victim, "", 9, false)
        .await
        .expect("kill victim");
    w.tasks.wait("k8s.io", &victim, "").await.expect("victim exits");
    let lines_at_crash = std::fs::read_to_string(&ticker_log).unwrap().lines().count();

    let (report, skipped) = w.restart_cri().await;
    assert_eq!(skipped, 1, "the corrupt record is skipped, not fatal");
    assert_eq!((report.sandboxes, report.ready), (1, 1), "{report:?}");
    assert_eq!((report.containers, report.running), (3, 1), "{report:?}");
    // The victim's exit is found by recovery, or (when its event reaches the new event loop
    // first) by the loop: either way it is EXITED below and reported to late subscribers.
    assert!(report.exited_while_down <= 1, "{report:?}");

    let sb = w.svc.sandboxes.get(&pod).unwrap();
    assert!(sb.state.is_ready());
    assert_eq!((sb.ip.as_str(), sb.pid), (before.ip.as_str(), before.pid));
    let t = w.svc.containers.get(&ticker).unwrap();
    assert_eq!((t.state, t.pid), (ContainerState::Running, ticker_pid));
    let v = w.svc.containers.get(&victim).unwrap();
    assert_eq!(v.state, ContainerState::Exited);
    assert_eq!((v.exit.code, v.exit.reason.as_str()), (137, "Error"));
    assert!(v.exit.finished_at.is_some());
    let d = w.svc.containers.get(&done).unwrap();
    assert_eq!(
        (d.state, d.exit.code, d.exit.reason.as_str()),
        (ContainerState::Exited, 0, "Completed")
    );

    // GetContainerEvents after the restart reports the exit that happened while down.
    let mut events = w.svc.events.subscribe();
    let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("a recovery event")
        .expect("stream open");
    assert_eq!(ev.container_id, victim);
    assert_eq!(
        ev.container_event_type,
        cri::ContainerEventType::ContainerStoppedEvent as i32
    );

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

    // Everything can be stopped and removed by the new instance.
    w.svc
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("StopPodSandbox after restart");
    w.svc
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("RemovePodSandbox after restart");
    assert!(w.svc.sandboxes.is_empty() && w.svc.containers.is_empty());
    assert!(
        w.tasks.list("k8s.io", "").await.unwrap().is_empty(),
        "no task left"
    );
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

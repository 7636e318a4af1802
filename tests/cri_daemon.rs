//! CRI end to end against the real daemon, driven only through the independent k8s-cri
//! client (kubelet's generated API) over taskd's socket: server-side pulls through
//! registry mirrors from a local `docker-registry`, the images service, the overlayfs
//! snapshotter, pods with real CNI (bridge + host-local on a private subnet, no masquerade,
//! no default route: nothing leaves the machine), real shims and runc.
//!
//! The daemon's images service maps `docker.io` and `registry.k8s.io` to the local registry
//! (`registries."<host>".mirrors`), so `busybox` (→ docker.io/library/busybox:latest) and
//! the sandbox image `registry.k8s.io/pause:3.10` come from there. `pause` is busybox
//! with an entrypoint that sleeps.
//!
//! Clean-up (also on panic): the daemon's shims (support), the pods' netns pins, the test's
//! bridge, the pods' cgroup parent, the registry.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use support::Daemon;
use support::cri_client::{container_stats, create_and_start, exited, status, stop_and_remove};
use support::observe::sample;
use support::registry::{ImageBuilder, OciLayout, Registry};
use tonic::transport::Channel;

const CRI: &str = "plugins.\"io.containerd.cri.v1.cri\"";
const IMAGES: &str = "plugins.\"io.containerd.service.v1.images-service\"";
const GREETING: &str = "GREETING=from-image";

/// The busybox image kubelet pulls: entrypoint, cmd, env, user and working dir set.
fn busybox_image() -> ImageBuilder {
    let mut b = ImageBuilder::busybox();
    b.entrypoint = vec!["/bin/sh".into(), "-c".into()];
    b.cmd = vec!["echo $GREETING; id; pwd; exec sleep 3600".into()];
    b.env.push(GREETING.into());
    b.user = "nobody".into();
    b.working_dir = "/tmp".into();
    b
}

fn pause_image() -> ImageBuilder {
    let mut b = ImageBuilder::busybox();
    b.entrypoint = vec!["/bin/sleep".into(), "2147483647".into()];
    b.cmd = Vec::new();
    b
}

struct World {
    d: Daemon,
    registry: Registry,
    dir: tempfile::TempDir,
    bridge: String,
    octet: u8,
    busybox: support::registry::BuiltImage,
}

impl Drop for World {
    fn drop(&mut self) {
        // The daemon and its shims first (a failed test leaves pods running), so the pods'
        // cgroups empty; the daemon's own drop repeats this harmlessly.
        self.d.kill9();
        // Shims killed; everything mounted under the state dir (pod netns, IPC/UTS pins,
        // /dev/shm, rootfs) unmounted.
        support::cleanup::after_daemon(&self.d.state);
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
        // The pods' cgroup parent, once the kernel released the dead containers' cgroups.
        support::cleanup::remove_cgroup_parent(&self.cgroup_parent());
    }
}

/// The entries of `<plugin state>/<dir>` under the daemon's state dir, for every plugin.
fn state_entries(d: &Daemon, dir: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(plugins) = std::fs::read_dir(&d.state) {
        for p in plugins.flatten() {
            if let Ok(pins) = std::fs::read_dir(p.path().join(dir)) {
                out.extend(pins.flatten().map(|e| e.path()));
            }
        }
    }
    out
}

/// The pinned pod network namespaces under the daemon's state dir.
fn netns_pins(d: &Daemon) -> Vec<PathBuf> {
    state_entries(d, "netns")
}

/// The pinned IPC/UTS namespaces of pods without a pause container (one dir per pod).
fn podns_pins(d: &Daemon) -> Vec<PathBuf> {
    state_entries(d, "podns")
}

/// What kubelet sends for a pod that does not share one process namespace (the usual pod):
/// pid mode CONTAINER for the pod, so taskd runs it without a pause container.
fn kubelet_pod(mut cfg: cri::PodSandboxConfig) -> cri::PodSandboxConfig {
    let l = cfg.linux.get_or_insert_with(Default::default);
    let sc = l.security_context.get_or_insert_with(Default::default);
    sc.namespace_options.get_or_insert_with(Default::default).pid = cri::NamespaceMode::Container as i32;
    cfg
}

/// What kubelet sends for a container of such a pod: its own PID namespace.
fn own_pid(mut c: cri::ContainerConfig) -> cri::ContainerConfig {
    let l = c.linux.get_or_insert_with(Default::default);
    let sc = l.security_context.get_or_insert_with(Default::default);
    sc.namespace_options.get_or_insert_with(Default::default).pid = cri::NamespaceMode::Container as i32;
    c
}

/// RunPodSandbox with the default handler; the pod id (`what` names the call on failure).
async fn run_pod(rt: &mut RuntimeServiceClient<Channel>, cfg: &cri::PodSandboxConfig, what: &str) -> String {
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(cfg.clone()),
        runtime_handler: String::new(),
    })
    .await
    .unwrap_or_else(|e| panic!("{what}: {e:?}"))
    .into_inner()
    .pod_sandbox_id
}

/// Every message of a server stream, until it ends.
async fn all_of<T>(mut s: tonic::Streaming<T>) -> Vec<T> {
    let mut out = Vec::new();
    while let Some(m) = s.message().await.expect("stream message") {
        out.push(m);
    }
    out
}

/// The `infraContainer` flag of PodSandboxStatus's verbose info.
async fn has_pause_container(rt: &mut RuntimeServiceClient<Channel>, pod: &str) -> bool {
    let s = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus verbose")
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&s.info["info"]).expect("info JSON");
    info["infraContainer"].as_bool().expect("infraContainer")
}

impl World {
    /// A registry with busybox (`library/busybox:latest` and `:1.36`) and pause, a CNI
    /// conf dir with bridge + host-local on 10.88.<octet>.0/24 followed by `extra` plugins
    /// (JSON objects, each with a leading comma), and a daemon using both. Plugins of a
    /// test's own go in `<dir>/cni-bin`, searched before /usr/lib/cni.
    fn new(octet: u8, extra: &str) -> World {
        World::with_cri_config(octet, extra, "")
    }

    /// As [`World::new`], with `cri_extra` added to the CRI plugin's table.
    fn with_cri_config(octet: u8, extra: &str, cri_extra: &str) -> World {
        support::require_root();
        support::require_bin("runc", "runc");
        support::require_bin("containerd-shim-runc-v2", "containerd");
        for p in ["bridge", "host-local", "loopback"] {
            assert!(
                Path::new("/usr/lib/cni").join(p).is_file(),
                "install the CNI plugins (apt-get install containernetworking-plugins)"
            );
        }
        let registry = Registry::start();
        let busybox = busybox_image().build();
        let mut layout = OciLayout::new();
        layout.add_image("latest", &busybox);
        layout.add_image("pause", &pause_image().build());
        registry.push(&layout, "latest", "library/busybox", "latest");
        registry.push(&layout, "latest", "library/busybox", "1.36");
        registry.push(&layout, "pause", "pause", "3.10");

        let dir = tempfile::Builder::new()
            .prefix("taskd-cri-daemon")
            .tempdir()
            .unwrap();
        let bridge = format!("tkq{}-{octet}", std::process::id() % 100_000);
        let conf_dir = dir.path().join("net.d");
        std::fs::create_dir(&conf_dir).unwrap();
        // Test plugins (`extra`) go here; the system's after them.
        let cni_bin = dir.path().join("cni-bin");
        std::fs::create_dir(&cni_bin).unwrap();
        std::fs::write(
            conf_dir.join("10-taskd.conflist"),
            format!(
                r#"{{"cniVersion":"1.0.0","name":"taskd-e2e","plugins":[
                  {{"type":"bridge","bridge":"{bridge}","isGateway":false,"ipMasq":false,
                    "ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"10.88.{octet}.0/24"}}]]}}}}
                  {extra}]}}"#,
                dir.path().join("ipam").display()
            ),
        )
        .unwrap();
        let mirror = format!("[\"http://{}\"]", registry.addr);
        let d = Daemon::start_with(&format!(
            "[{IMAGES}.registries.\"docker.io\"]\nmirrors = {mirror}\n\
             [{IMAGES}.registries.\"registry.k8s.io\"]\nmirrors = {mirror}\n\
             [{CRI}]\nsandbox_image = \"registry.k8s.io/pause:3.10\"\n{cri_extra}\n\
             [{CRI}.cni]\nconf_dir = {:?}\nbin_dirs = [{:?}, \"/usr/lib/cni\"]\n",
            conf_dir.display().to_string(),
            cni_bin.display().to_string()
        ));
        World {
            d,
            registry,
            dir,
            bridge,
            octet,
            busybox,
        }
    }

    async fn clients(&self) -> (RuntimeServiceClient<Channel>, ImageServiceClient<Channel>) {
        let ch = self.d.channel().await;
        (RuntimeServiceClient::new(ch.clone()), ImageServiceClient::new(ch))
    }

    fn cgroup_parent(&self) -> String {
        let tail = self
            .dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("/taskd-cri-daemon-{}-{tail}", std::process::id())
    }

    /// A pod config; its log directory exists (kubelet creates it).
    fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        std::fs::create_dir_all(self.dir.path().join("logs").join(name)).unwrap();
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: format!("{name}-host"),
            log_directory: self.dir.path().join("logs").join(name).display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Nothing of any pod is left: no shim bundle, pinned netns or IPC/UTS namespaces, IP.
    fn assert_no_pod_left(&self) {
        assert!(self.bundles().is_empty(), "shims left: {:?}", self.bundles());
        assert!(
            netns_pins(&self.d).is_empty(),
            "netns left: {:?}",
            netns_pins(&self.d)
        );
        assert!(
            podns_pins(&self.d).is_empty(),
            "podns left: {:?}",
            podns_pins(&self.d)
        );
        assert!(
            self.ipam_leases().is_empty(),
            "IPs left: {:?}",
            self.ipam_leases()
        );
    }

    /// IPs host-local has handed out.
    fn ipam_leases(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("ipam").join("taskd-e2e"))
            .map(|e| {
                e.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("10."))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Task bundles the shim manager holds in k8s.io (a shim per bundle).
    fn bundles(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.d.state.join("io.containerd.runtime.v2.task").join("k8s.io"))
            .map(|e| e.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }
}

fn image_spec(s: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: s.into(),
        ..Default::default()
    })
}

async fn pull(images: &mut ImageServiceClient<Channel>, r: &str, auth: Option<cri::AuthConfig>) -> String {
    images
        .pull_image(cri::PullImageRequest {
            image: image_spec(r),
            auth,
            sandbox_config: None,
        })
        .await
        .unwrap_or_else(|e| panic!("PullImage {r}: {e:?}"))
        .into_inner()
        .image_ref
}

async fn list(images: &mut ImageServiceClient<Channel>, filter: Option<&str>) -> Vec<cri::Image> {
    images
        .list_images(cri::ListImagesRequest {
            filter: filter.map(|f| cri::ImageFilter { image: image_spec(f) }),
        })
        .await
        .expect("ListImages")
        .into_inner()
        .images
}

async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A container of the busybox image named `name`, logging to `<name>.log`, running `script`
/// (empty: the image's entrypoint + cmd).
fn container_config(name: &str, script: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: image_spec("busybox"),
        command: if script.is_empty() {
            Vec::new()
        } else {
            vec!["/bin/sh".into(), "-c".into(), script.into()]
        },
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_service_pull_list_status_remove_fsinfo() {
    let w = World::new(200 + (std::process::id() % 20) as u8, "");
    let (_, mut images) = w.clients().await;
    let id = w.busybox.config.digest.clone();
    let manifest = w.busybox.manifest.digest.clone();

    // Normalized as kubelet sends it, pulled through the docker.io mirror.
    assert_eq!(pull(&mut images, "busybox", None).await, id);
    let all = list(&mut images, None).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].id, id);
    assert_eq!(all[0].repo_tags, vec!["docker.io/library/busybox:latest"]);
    assert_eq!(
        all[0].repo_digests,
        vec![format!("docker.io/library/busybox@{manifest}")]
    );
    assert_eq!(all[0].username, "nobody");
    assert!(all[0].size > 0);
    // A second tag of the same digest joins the same image.
    assert_eq!(
        pull(&mut images, "docker.io/library/busybox:1.36", None).await,
        id
    );
    let all = list(&mut images, None).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].repo_tags.len(), 2, "{all:?}");

    // Filter: by reference, by id, and a miss.
    assert_eq!(list(&mut images, Some("busybox:1.36")).await.len(), 1);
    assert_eq!(list(&mut images, Some(&id)).await.len(), 1);
    assert!(list(&mut images, Some("nothing-here")).await.is_empty());

    // Verbose status carries the image config.
    let st = images
        .image_status(cri::ImageStatusRequest {
            image: image_spec("busybox"),
            verbose: true,
        })
        .await
        .expect("ImageStatus")
        .into_inner();
    assert_eq!(st.image.as_ref().unwrap().id, id);
    let info = &st.info["info"];
    assert!(
        info.contains(GREETING) && info.contains("\"WorkingDir\":\"/tmp\"") && info.contains("sleep 3600"),
        "{info}"
    );

    // Usage of the snapshotter the image was unpacked into.
    let fs = images
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .expect("ImageFsInfo")
        .into_inner();
    let u = &fs.image_filesystems[0];
    assert!(
        u.fs_id.as_ref().unwrap().mountpoint.ends_with("overlayfs"),
        "{fs:?}"
    );
    assert!(
        u.used_bytes.unwrap().value > 0 && u.inodes_used.unwrap().value > 0,
        "{fs:?}"
    );

    // Remove by one tag removes every tag, the digest and the id; again is fine.
    for _ in 0..2 {
        images
            .remove_image(cri::RemoveImageRequest {
                image: image_spec("busybox:1.36"),
            })
            .await
            .expect("RemoveImage");
        assert!(list(&mut images, None).await.is_empty());
    }
    let st = images
        .image_status(cri::ImageStatusRequest {
            image: image_spec(&id),
            verbose: false,
        })
        .await
        .expect("ImageStatus of a removed image")
        .into_inner();
    assert!(st.image.is_none());

    // Auth from the request, against a registry that requires it.
    let private = Registry::start_basic_auth();
    private.push_busybox("private/bb", "v1");
    let r = format!("{}/private/bb:v1", private.addr);
    let e = images
        .pull_image(cri::PullImageRequest {
            image: image_spec(&r),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let (user, password) = private.creds.clone().unwrap();
    let auth = cri::AuthConfig {
        username: user,
        password,
        ..Default::default()
    };
    assert!(pull(&mut images, &r, Some(auth)).await.starts_with("sha256:"));
    assert_eq!(list(&mut images, Some(&r)).await.len(), 1);

    // An image pulled client-side by ctr into k8s.io is a CRI image too.
    let ctr_ref = format!("{}/library/busybox:1.36", w.registry.addr);
    w.d.ctr_ok(&["-n", "k8s.io", "images", "pull", "--plain-http", &ctr_ref]);
    let found = list(&mut images, Some(&ctr_ref)).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn pod_and_container_lifecycle_through_the_daemon() {
    let w = World::new(180 + (std::process::id() % 20) as u8, "");
    let (mut rt, mut images) = w.clients().await;
    // The sandbox image comes from ctr (client-side pull, unpacked into the native
    // snapshotter only, then tagged): the CRI finds it and unpacks it into overlayfs.
    let ctr_pause = format!("{}/pause:3.10", w.registry.addr);
    w.d.ctr_ok(&[
        "-n",
        "k8s.io",
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        "native",
        &ctr_pause,
    ]);
    w.d.ctr_ok(&[
        "-n",
        "k8s.io",
        "images",
        "tag",
        &ctr_pause,
        "registry.k8s.io/pause:3.10",
    ]);
    let overlay = |d: &Daemon| d.ctr_ok(&["-n", "k8s.io", "snapshots", "--snapshotter", "overlayfs", "ls"]);
    assert_eq!(
        overlay(&w.d).lines().count(),
        1,
        "nothing in overlayfs yet: {}",
        overlay(&w.d)
    );
    let pod_cfg = w.pod_config("web");
    let pod = run_pod(&mut rt, &pod_cfg, "RunPodSandbox").await;
    let st = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .unwrap();
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    let ip = st.network.unwrap().ip;
    assert!(ip.starts_with(&format!("10.88.{}.", w.octet)), "{ip}");
    let pause = list(&mut images, Some("registry.k8s.io/pause:3.10")).await;
    assert_eq!(pause.len(), 1, "{pause:?}");
    assert!(
        overlay(&w.d).contains("Committed"),
        "the pause image was unpacked into overlayfs: {}",
        overlay(&w.d)
    );
    let image_id = pull(&mut images, "busybox", None).await;
    assert!(pause[0].pinned, "the sandbox image is pinned: {pause:?}");
    assert!(!list(&mut images, Some("busybox")).await[0].pinned);

    // No command or args: the image's entrypoint + cmd, env, user (nobody, its group from
    // the image's /etc/passwd) and working dir.
    let ctr = create_and_start(&mut rt, &pod, &pod_cfg, container_config("app", "")).await;
    let log = PathBuf::from(&pod_cfg.log_directory).join("app.log");
    wait_for("the container's output", || {
        let log = log.clone();
        async move {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(" stdout F /tmp\n")
        }
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(" stdout F from-image\n"), "{text}");
    assert!(
        text.contains(" stdout F uid=65534(nobody) gid=65534(nogroup)"),
        "{text}"
    );
    let first = text.lines().next().unwrap();
    let ts = first.split(' ').next().unwrap();
    assert!(
        ts.contains('T') && ts.len() > 20,
        "RFC3339Nano timestamp: {first}"
    );

    let r = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo exec $GREETING; id -u; exit 3".into(),
            ],
            timeout: 30,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    assert_eq!(
        (String::from_utf8_lossy(&r.stdout).as_ref(), r.exit_code),
        ("exec from-image\n65534\n", 3)
    );

    let cs = status(&mut rt, &ctr).await;
    assert_eq!(cs.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(cs.image_ref, image_id);
    assert_eq!(cs.image.unwrap().image, "docker.io/library/busybox:latest");
    assert_eq!(cs.log_path, log.display().to_string());

    // A second container shares the pod's PID namespace: it sees the app's processes.
    let side = create_and_start(&mut rt, &pod, &pod_cfg, container_config("side", "ps; exit 3")).await;
    let s = exited(&mut rt, &side).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (3, "Error"), "{s:?}");
    let side_log = std::fs::read_to_string(PathBuf::from(&pod_cfg.log_directory).join("side.log")).unwrap();
    assert!(side_log.contains("sleep 3600"), "{side_log}");

    // Over its memory limit: OOMKilled.
    let mut hog = container_config(
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
    let hog = create_and_start(&mut rt, &pod, &pod_cfg, hog).await;
    let s = exited(&mut rt, &hog).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (137, "OOMKilled"), "{s:?}");
    for id in [&side, &hog] {
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: id.to_string(),
        })
        .await
        .expect("RemoveContainer");
    }

    // The pod shares its PID namespace (mode POD): sleep is not pid 1 and dies of the
    // image's stop signal (SIGTERM, the default) before the timeout.
    rt.stop_container(cri::StopContainerRequest {
        container_id: ctr.clone(),
        timeout: 1,
    })
    .await
    .expect("StopContainer");
    let cs = status(&mut rt, &ctr).await;
    assert_eq!(cs.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!((cs.exit_code, cs.reason.as_str()), (143, "Error"), "{cs:?}");
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: ctr.clone(),
    })
    .await
    .expect("RemoveContainer");
    let left = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(left.is_empty(), "{left:?}");

    for _ in 0..2 {
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("StopPodSandbox (idempotent)");
    }
    for _ in 0..2 {
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("RemovePodSandbox (idempotent)");
    }
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
    w.assert_no_pod_left();
    // The container snapshots are gone; the images' layers stay.
    let snaps = w.d.ctr_ok(&["-n", "k8s.io", "snapshots", "ls"]);
    assert_eq!(
        snaps.lines().skip(1).filter(|l| l.contains("Active")).count(),
        0,
        "{snaps}"
    );
}

/// `drop_infra_container = false`: every pod gets a pause container, as with containerd,
/// also one kubelet sends without a shared PID namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn every_pod_has_a_pause_container_when_drop_infra_container_is_off() {
    let w = World::with_cri_config(
        80 + (std::process::id() % 20) as u8,
        "",
        "drop_infra_container = false",
    );
    let (mut rt, mut images) = w.clients().await;
    pull(&mut images, "busybox", None).await;
    let cfg = kubelet_pod(w.pod_config("infra"));
    let pod = run_pod(&mut rt, &cfg, "RunPodSandbox").await;
    assert!(has_pause_container(&mut rt, &pod).await);
    assert!(podns_pins(&w.d).is_empty(), "{:?}", podns_pins(&w.d));
    let app = create_and_start(
        &mut rt,
        &pod,
        &cfg,
        own_pid(container_config("app", "exec sleep 3600")),
    )
    .await;
    // The pause container is a container of the k8s.io namespace, beside the app.
    let listed = w.d.ctr_ok(&["-n", "k8s.io", "containers", "ls", "-q"]);
    let mut ids: Vec<&str> = listed.lines().collect();
    ids.sort();
    let mut want = vec![pod.as_str(), app.as_str()];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(
        live_shims(&w).len(),
        1,
        "the pod's containers share the pause's shim"
    );
    stop_and_remove(&mut rt, &pod).await;
    w.assert_no_pod_left();
}

/// A RuntimeClass handler's runc options reach the shim: `BinaryName` names a wrapper that
/// logs each runc call, and the pod's container is created and started through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn runtime_handler_options_reach_the_runc_shim() {
    let tools = tempfile::tempdir().unwrap();
    let calls = tools.path().join("runc-calls.log");
    let wrapper = tools.path().join("runc-wrapper");
    let runc = support::which("runc").expect("runc");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$*\" >> {}\nexec {} \"$@\"\n",
            calls.display(),
            runc.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let w = World::with_cri_config(
        20 + (std::process::id() % 20) as u8,
        "",
        &format!(
            "[{CRI}.runtimes.wrapped]\nruntime_type = \"io.containerd.runc.v2\"\n\
             [{CRI}.runtimes.wrapped.options]\nBinaryName = {:?}\n",
            wrapper.display().to_string()
        ),
    );
    let (mut rt, mut images) = w.clients().await;
    pull(&mut images, "busybox", None).await;
    let handlers = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner()
        .runtime_handlers;
    assert!(handlers.iter().any(|h| h.name == "wrapped"), "{handlers:?}");
    let cfg = kubelet_pod(w.pod_config("wrapped"));
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: "wrapped".into(),
        })
        .await
        .expect("RunPodSandbox wrapped")
        .into_inner()
        .pod_sandbox_id;
    let app = create_and_start(
        &mut rt,
        &pod,
        &cfg,
        own_pid(container_config("app", "exec sleep 3600")),
    )
    .await;
    let log = std::fs::read_to_string(&calls).unwrap_or_default();
    for verb in ["create", "start"] {
        assert!(
            log.lines().any(|l| l.contains(verb) && l.contains(&app)),
            "no `runc {verb}` of {app} through the handler's BinaryName:\n{log}"
        );
    }
    stop_and_remove(&mut rt, &pod).await;
    w.assert_no_pod_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_cni_add_rolls_the_pod_back() {
    // The bridge ADD succeeds, then tuning fails on a sysctl that does not exist.
    let w = World::new(
        160 + (std::process::id() % 20) as u8,
        r#",{"type":"tuning","sysctl":{"net.ipv4.conf.eth0.no_such_knob":"1"}}"#,
    );
    let (mut rt, _) = w.clients().await;
    let e = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(w.pod_config("broken")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("tuning"), "{e:?}");
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
    w.assert_no_pod_left();
    let containers = w.d.ctr_ok(&["-n", "k8s.io", "containers", "ls", "-q"]);
    assert!(containers.trim().is_empty(), "pause container left: {containers}");

    // The same for a pod without a pause container: no pinned namespace left either.
    let e = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(kubelet_pod(w.pod_config("broken2"))),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("tuning"), "{e:?}");
    w.assert_no_pod_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn host_port_on_loopback_reaches_the_pod() {
    support::require_bin("iptables", "iptables");
    let octet = 140 + (std::process::id() % 20) as u8;
    let w = World::new(
        octet,
        r#",{"type":"portmap","capabilities":{"portMappings":true}}"#,
    );
    // The host reaches the pod subnet through the bridge's address (the pods still have no
    // default route and nothing is masqueraded out of the machine).
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip(&["link", "add", &w.bridge, "type", "bridge"]);
    ip(&["addr", "add", &format!("10.88.{octet}.1/24"), "dev", &w.bridge]);
    ip(&["link", "set", &w.bridge, "up"]);

    let (mut rt, mut images) = w.clients().await;
    pull(&mut images, "busybox", None).await;
    assert!(
        list(&mut images, Some("registry.k8s.io/pause:3.10"))
            .await
            .is_empty()
    );
    let host_port = support::free_port();
    let mut pod_cfg = w.pod_config("ports");
    pod_cfg.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 8080,
        host_port: host_port as i32,
        host_ip: "127.0.0.1".into(),
    }];
    let pod = run_pod(&mut rt, &pod_cfg, "RunPodSandbox").await;
    // The sandbox image was pulled on demand, through the registry.k8s.io mirror.
    assert_eq!(
        list(&mut images, Some("registry.k8s.io/pause:3.10")).await.len(),
        1
    );
    create_and_start(
        &mut rt,
        &pod,
        &pod_cfg,
        container_config(
            "web",
            "mkdir -p /tmp/www && echo hostport-ok > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www",
        ),
    )
    .await;
    let addr = format!("127.0.0.1:{host_port}");
    let mut body = String::new();
    wait_for("the pod's httpd through the host port", || {
        let got = support::http_get(&addr, "/index.html", None);
        if let Ok((200, b)) = &got {
            body = b.clone();
        }
        async move { matches!(got, Ok((200, _))) }
    })
    .await;
    assert!(body.contains("hostport-ok"), "{body}");

    stop_and_remove(&mut rt, &pod).await;
    // The DNAT is gone with the pod.
    let nat = Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&nat.stdout).contains(&format!("--dport {host_port}")),
        "portmap rules left"
    );
}

/// The shim pids of the daemon's k8s.io bundles that are alive.
fn live_shims(w: &World) -> Vec<i32> {
    let mut pids: Vec<i32> = w
        .bundles()
        .iter()
        .filter_map(|b| std::fs::read_to_string(b.join("shim.pid")).ok())
        .filter_map(|p| p.trim().parse().ok())
        .filter(|&p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok())
        .collect();
    pids.sort();
    pids.dedup();
    pids
}

async fn containers_by_state(rt: &mut RuntimeServiceClient<Channel>) -> (usize, usize, usize) {
    let all = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    let n = |s: cri::ContainerState| all.iter().filter(|c| c.state == s as i32).count();
    (
        n(cri::ContainerState::ContainerRunning),
        n(cri::ContainerState::ContainerExited),
        all.len(),
    )
}

async fn ready_pods(rt: &mut RuntimeServiceClient<Channel>) -> usize {
    rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
        .iter()
        .filter(|p| p.state == cri::PodSandboxState::SandboxReady as i32)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn node_restarts_keep_20_pods_and_report_what_exited_meanwhile() {
    const PODS: usize = 20;
    let mut w = World::new(220 + (std::process::id() % 20) as u8, "");
    let (mut rt, mut images) = w.clients().await;
    pull(&mut images, "busybox", None).await;
    let gate = w.dir.path().join("gate");
    std::fs::create_dir_all(&gate).unwrap();
    let mut pods = Vec::new();
    let mut tickers = Vec::new();
    // Even pods as kubelet sends a usual pod (no pause container), odd ones sharing one
    // PID namespace (with a pause container): both kinds go through the restarts.
    for i in 0..PODS {
        let mut cfg = w.pod_config(&format!("node{i}"));
        if i % 2 == 0 {
            cfg = kubelet_pod(cfg);
        }
        let pod = run_pod(&mut rt, &cfg, "RunPodSandbox").await;
        let ticker = create_and_start(
            &mut rt,
            &pod,
            &cfg,
            own_pid(container_config(
                "ticker",
                "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
            )),
        )
        .await;
        assert_eq!(has_pause_container(&mut rt, &pod).await, i % 2 == 1);
        tickers.push((
            ticker,
            w.dir
                .path()
                .join("logs")
                .join(format!("node{i}"))
                .join("ticker.log"),
        ));
        pods.push((pod, cfg));
    }
    // In pod 0: a container that exits 7 once the test opens the gate.
    let mut waiter = own_pid(container_config(
        "waiter",
        "while [ ! -f /gate/open ]; do sleep 0.1; done; exit 7",
    ));
    waiter.mounts = vec![cri::Mount {
        container_path: "/gate".into(),
        host_path: gate.display().to_string(),
        ..Default::default()
    }];
    let waiter = create_and_start(&mut rt, &pods[0].0, &pods[0].1, waiter).await;
    assert_eq!(ready_pods(&mut rt).await, PODS);
    assert_eq!(containers_by_state(&mut rt).await, (PODS + 1, 0, PODS + 1));
    let shims = live_shims(&w);
    assert_eq!(shims.len(), PODS, "one shim per pod: {shims:?}");
    let (ticker0, ticker0_log) = tickers[0].clone();
    wait_for("ticks", || async {
        std::fs::read_to_string(&ticker0_log)
            .unwrap_or_default()
            .contains("tick 2")
    })
    .await;

    // kill -9; the waiter exits while taskd is down.
    w.d.kill9();
    std::fs::write(gate.join("open"), b"").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let lines_down = std::fs::read_to_string(&ticker0_log).unwrap().lines().count();
    w.d.restart();
    let (mut rt, _) = w.clients().await;
    let mut events = rt
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("GetContainerEvents")
        .into_inner();

    assert_eq!(ready_pods(&mut rt).await, PODS, "every pod READY after kill -9");
    assert_eq!(containers_by_state(&mut rt).await, (PODS, 1, PODS + 1));
    assert_eq!(live_shims(&w), shims, "the same shims, none restarted or lost");
    let ws = status(&mut rt, &waiter).await;
    assert_eq!((ws.exit_code, ws.reason.as_str()), (7, "Error"), "{ws:?}");
    assert!(ws.finished_at > ws.started_at, "{ws:?}");
    let ev = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("an event for the exit while down")
        .expect("stream")
        .expect("event");
    assert_eq!(
        (ev.container_id.as_str(), ev.container_event_type),
        (
            waiter.as_str(),
            cri::ContainerEventType::ContainerStoppedEvent as i32
        )
    );
    // Logs continue in the same files, no tick lost or repeated.
    wait_for("ticks after the restart", || async {
        std::fs::read_to_string(&ticker0_log).unwrap().lines().count() > lines_down + 5
    })
    .await;
    let ticks: Vec<u64> = std::fs::read_to_string(&ticker0_log)
        .unwrap()
        .lines()
        .filter_map(|l| l.rsplit_once("tick ").and_then(|(_, n)| n.parse().ok()))
        .collect();
    for pair in ticks.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "log continuity across kill -9");
    }
    let r = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: ticker0.clone(),
            cmd: vec!["/bin/sh".into(), "-c".into(), "echo alive".into()],
            timeout: 10,
        })
        .await
        .expect("ExecSync after restart")
        .into_inner();
    assert_eq!((r.stdout.as_slice(), r.exit_code), (&b"alive\n"[..], 0));

    // A clean SIGTERM restart kills nothing either.
    w.d.restart();
    let (mut rt, _) = w.clients().await;
    assert_eq!(ready_pods(&mut rt).await, PODS, "every pod READY after SIGTERM");
    assert_eq!(containers_by_state(&mut rt).await, (PODS, 1, PODS + 1));
    assert_eq!(live_shims(&w), shims);

    // Stop and remove every pod.
    for (pod, _) in &pods {
        stop_and_remove(&mut rt, pod).await;
    }
    assert_eq!(containers_by_state(&mut rt).await, (0, 0, 0));
    assert!(live_shims(&w).is_empty());
    w.assert_no_pod_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn probes_stats_metrics_and_events_through_the_client() {
    let w = World::new(120 + (std::process::id() % 20) as u8, "");
    let (mut rt, mut images) = w.clients().await;
    pull(&mut images, "busybox", None).await;
    // Two GetContainerEvents subscribers, both before anything happens.
    let mut subs = Vec::new();
    for _ in 0..2 {
        subs.push(
            rt.get_container_events(cri::GetEventsRequest {})
                .await
                .expect("GetContainerEvents")
                .into_inner(),
        );
    }
    let cfg = w.pod_config("probed");
    let pod = run_pod(&mut rt, &cfg, "RunPodSandbox").await;
    let app = create_and_start(
        &mut rt,
        &pod,
        &cfg,
        container_config(
            "app",
            "dd if=/dev/zero of=/tmp/fill bs=1024 count=512 2>/dev/null; exec sleep 3600",
        ),
    )
    .await;

    // ExecSync: output and exit code; 50 at once; the timeout is honoured promptly; output
    // is capped at 16 MiB per stream.
    let exec = |cmd: &str, timeout: i64| cri::ExecSyncRequest {
        container_id: app.clone(),
        cmd: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
        timeout,
    };
    let r = rt
        .exec_sync(exec("echo out; echo err >&2; exit 3", 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 3)
    );
    // 50 at once. Many parallel `runc exec` in one container are slow on some hosts (on
    // this one, 50 parallel `ctr tasks exec` take 20-50 s against containerd and taskd
    // alike), so each gets a generous timeout: the point is that all of them work.
    let all = futures::future::join_all((0..50).map(|i| {
        let mut rt = rt.clone();
        let req = exec(&format!("echo {i}"), 240);
        async move { rt.exec_sync(req).await }
    }))
    .await;
    for (i, r) in all.into_iter().enumerate() {
        let r = r
            .unwrap_or_else(|e| {
                let log = w.d.log();
                let tail: Vec<&str> = log.lines().rev().take(400).collect();
                panic!(
                    "concurrent ExecSync {i}: {e:?}\n--- daemon log (last lines, newest first) ---\n{}",
                    tail.join("\n")
                )
            })
            .into_inner();
        assert_eq!((r.stdout, r.exit_code), (format!("{i}\n").into_bytes(), 0));
    }
    let t0 = Instant::now();
    let e = rt.exec_sync(exec("sleep 600", 1)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "the timeout is honoured, not minutes later"
    );
    // As kubelet's CRI client: messages of up to 16 MiB.
    let big = rt
        .clone()
        .max_decoding_message_size(16 << 20)
        .exec_sync(exec("head -c 20000000 /dev/zero", 60))
        .await
        .expect("ExecSync with a big output")
        .into_inner();
    assert_eq!(
        big.stdout.len(),
        taskd::cri::server::container::exec_sync::MAX_RESPONSE_OUTPUT,
        "stdout capped to what one 16 MiB response holds"
    );

    // Stats: container (cpu, memory, writable layer), pod (cpu, memory, network, processes).
    let cs = container_stats(&mut rt, &app).await;
    assert!(
        cs.cpu
            .as_ref()
            .unwrap()
            .usage_core_nano_seconds
            .as_ref()
            .unwrap()
            .value
            > 0
    );
    assert!(
        cs.memory
            .as_ref()
            .unwrap()
            .working_set_bytes
            .as_ref()
            .unwrap()
            .value
            > 0
    );
    let layer = cs.writable_layer.as_ref().expect("writable layer usage");
    assert!(
        layer.used_bytes.as_ref().unwrap().value >= 512 * 1024,
        "{layer:?}"
    );
    assert!(layer.inodes_used.as_ref().unwrap().value >= 1);
    let listed = rt
        .list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("ListContainerStats")
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);
    let ps = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("PodSandboxStats")
        .into_inner()
        .stats
        .unwrap();
    let linux = ps.linux.unwrap();
    assert!(linux.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    assert!(linux.memory.unwrap().working_set_bytes.unwrap().value > 0);
    assert!(linux.process.unwrap().process_count.unwrap().value >= 2);
    assert_eq!(linux.network.unwrap().default_interface.unwrap().name, "eth0");
    assert_eq!(linux.containers.len(), 1);
    let desc = rt
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .expect("ListMetricDescriptors")
        .into_inner()
        .descriptors;
    let pm = rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .expect("ListPodSandboxMetrics")
        .into_inner()
        .pod_metrics;
    assert_eq!(pm.len(), 1);
    let names: Vec<&str> = pm[0].container_metrics[0]
        .metrics
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    for want in [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
    ] {
        assert!(names.contains(&want), "{want} missing: {names:?}");
    }
    for m in pm[0].metrics.iter().chain(&pm[0].container_metrics[0].metrics) {
        let d = desc.iter().find(|d| d.name == m.name).expect("described");
        assert_eq!(d.label_keys.len(), m.label_values.len(), "{}", m.name);
    }

    // The Stream* twins (cri-api 0.34+, taskd's own generated client) answer what List does,
    // and UpdatePodSandboxResources is kept and shown in the verbose pod status.
    {
        use taskd_proto::cri::v1 as t;
        let mut c = t::runtime_service_client::RuntimeServiceClient::new(w.d.channel().await);
        let stats = all_of(
            c.stream_container_stats(t::StreamContainerStatsRequest { filter: None })
                .await
                .expect("StreamContainerStats")
                .into_inner(),
        )
        .await;
        assert_eq!(stats.iter().map(|m| m.container_stats.len()).sum::<usize>(), 1);
        let stats = all_of(
            c.stream_pod_sandbox_stats(t::StreamPodSandboxStatsRequest { filter: None })
                .await
                .expect("StreamPodSandboxStats")
                .into_inner(),
        )
        .await;
        assert_eq!(stats.iter().map(|m| m.pod_sandbox_stats.len()).sum::<usize>(), 1);
        let ids: Vec<String> = all_of(
            c.stream_pod_sandbox_metrics(t::StreamPodSandboxMetricsRequest {})
                .await
                .expect("StreamPodSandboxMetrics")
                .into_inner(),
        )
        .await
        .into_iter()
        .flat_map(|m| m.pod_sandbox_metrics.into_iter().map(|p| p.pod_sandbox_id))
        .collect();
        assert_eq!(ids, std::slice::from_ref(&pod));
        c.update_pod_sandbox_resources(t::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: pod.clone(),
            resources: Some(t::LinuxContainerResources {
                cpu_shares: 512,
                memory_limit_in_bytes: 256 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("UpdatePodSandboxResources");
        let st = c
            .pod_sandbox_status(t::PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: true,
            })
            .await
            .expect("PodSandboxStatus")
            .into_inner();
        let info = st.info.values().cloned().collect::<Vec<_>>().join("\n");
        assert!(
            info.contains("268435456"),
            "the new pod resources in the verbose status: {info}"
        );
    }

    // Stop and remove: both subscribers saw CREATED, STARTED, STOPPED, DELETED in order.
    rt.stop_container(cri::StopContainerRequest {
        container_id: app.clone(),
        timeout: 2,
    })
    .await
    .expect("StopContainer");
    let e = rt.exec_sync(exec("true", 5)).await.unwrap_err();
    assert_eq!(
        e.code(),
        tonic::Code::FailedPrecondition,
        "exec in a stopped container: {e:?}"
    );
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: app.clone(),
    })
    .await
    .expect("RemoveContainer");
    use cri::ContainerEventType::*;
    for sub in &mut subs {
        let mut seen = Vec::new();
        while seen.len() < 4 {
            let ev = tokio::time::timeout(Duration::from_secs(10), sub.message())
                .await
                .expect("event in time")
                .expect("stream")
                .expect("event");
            if ev.container_id == app {
                seen.push(ev.container_event_type);
            }
        }
        assert_eq!(
            seen,
            [
                ContainerCreatedEvent,
                ContainerStartedEvent,
                ContainerStoppedEvent,
                ContainerDeletedEvent
            ]
            .map(|t| t as i32)
        );
    }
    stop_and_remove(&mut rt, &pod).await;

    // The operation metrics kubelet operators scrape.
    let (_, body) = w.d.http("/v1/metrics", None);
    for want in [
        "taskd_cri_operations_total{operation=\"ExecSync\",runtime_handler=\"\"} ",
        "taskd_cri_operation_duration_seconds_bucket{operation=\"RunPodSandbox\"",
        "taskd_cri_pod_start_duration_seconds_count{runtime_handler=\"\"} 1",
        "taskd_cri_image_pulls_total{result=\"success\"} 1",
        "taskd_cri_container_events_dropped_total 0",
        "taskd_cri_operation_duration_seconds_count{operation=\"CreateContainer\",runtime_handler=\"\"} ",
        "taskd_cri_operation_duration_seconds_count{operation=\"StartContainer\",runtime_handler=\"\"} ",
        "taskd_cri_cni_operation_duration_seconds_count{command=\"ADD\",plugin=\"bridge\"} 1",
        "taskd_cri_cni_operation_duration_seconds_count{command=\"DEL\",plugin=\"bridge\"} ",
        "taskd_cri_image_pull_throughput_bytes_per_second_count 1",
        "taskd_cri_sandboxes{state=\"ready\"} 0",
        "taskd_cri_containers{state=\"running\"} 0",
    ] {
        assert!(
            body.lines().any(|l| l.starts_with(want)),
            "{want} missing from /v1/metrics"
        );
    }
    support::observe::check_metrics_doc(&body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn checkpoint_container_writes_the_archive_or_says_why_criu_cannot() {
    let w = World::new(100 + (std::process::id() % 20) as u8, "");
    let (mut rt, mut images) = w.clients().await;
    pull(&mut images, "busybox", None).await;
    let cfg = w.pod_config("ckpt");
    let pod = run_pod(&mut rt, &cfg, "RunPodSandbox").await;
    let app = create_and_start(
        &mut rt,
        &pod,
        &cfg,
        container_config("app", "echo changed > /tmp/marker; exec sleep 3600"),
    )
    .await;
    let out = w.dir.path().join("checkpoints");
    std::fs::create_dir_all(&out).unwrap();
    let checkpoint = |location: String| cri::CheckpointContainerRequest {
        container_id: app.clone(),
        location,
        timeout: 60,
    };
    // Bad locations are refused before anything runs.
    for bad in ["relative.tar".to_owned(), "/no/such/dir/c.tar".to_owned()] {
        let e = rt
            .checkpoint_container(checkpoint(bad.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}: {e:?}");
    }
    let location = out.join("app.tar");
    let criu_ok = Command::new("criu")
        .arg("check")
        .output()
        .is_ok_and(|o| o.status.success());
    let r = rt
        .checkpoint_container(checkpoint(location.display().to_string()))
        .await;
    if criu_ok {
        r.expect("CheckpointContainer");
        let names: Vec<String> = tar::Archive::new(std::fs::File::open(&location).unwrap())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        for want in ["config.dump", "rootfs-diff.tar", "checkpoint/"] {
            assert!(
                names.iter().any(|n| n.contains(want)),
                "{want} missing: {names:?}"
            );
        }
    } else {
        let e = r.unwrap_err();
        eprintln!("CheckpointContainer on this host (CRIU cannot run): {e:?}");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(
            e.message().to_lowercase().contains("criu"),
            "CRIU's error is named: {e:?}"
        );
        assert!(!location.exists(), "no archive after a failed dump");
    }
    // Either way: nothing staged is left and the container still runs.
    let stage = w.d.state.join("io.containerd.cri.v1.cri").join("checkpoints");
    let left: Vec<_> = std::fs::read_dir(&stage)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "staging left: {left:?}");
    assert_eq!(
        status(&mut rt, &app).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    let e = rt
        .checkpoint_container(checkpoint(out.join("again.tar").display().to_string()))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        tonic::Code::FailedPrecondition,
        "an exited container: {e:?}"
    );
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn pod_options_security_context_resources_and_log_reopen() {
    let w = World::new(240 + (std::process::id() % 14) as u8, "");
    let (mut rt, mut images) = w.clients().await;
    pull(&mut images, "busybox", None).await;
    // As kubelet sends a usual pod: no pause container, so the hostname and the sysctl are
    // set in namespaces taskd pinned itself.
    let mut cfg = kubelet_pod(w.pod_config("opts"));
    cfg.hostname = "opts-host".into();
    cfg.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.0.0.10".into()],
        searches: vec!["svc.example".into()],
        options: vec!["ndots:2".into()],
    });
    if let Some(l) = cfg.linux.as_mut() {
        l.sysctls
            .insert("net.ipv4.ip_unprivileged_port_start".into(), "80".into());
    }
    let pod = run_pod(&mut rt, &cfg, "RunPodSandbox").await;
    assert!(!has_pause_container(&mut rt, &pod).await);
    // A sysctl outside the pod's namespaces is refused, and nothing is left of that pod.
    let (netns_before, podns_before, ips_before) = (
        netns_pins(&w.d).len(),
        podns_pins(&w.d).len(),
        w.ipam_leases().len(),
    );
    let mut bad = kubelet_pod(w.pod_config("badsysctl"));
    if let Some(l) = bad.linux.as_mut() {
        l.sysctls.insert("vm.swappiness".into(), "1".into());
    }
    let e = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(bad),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("vm.swappiness"), "{e:?}");
    assert_eq!(
        (
            netns_pins(&w.d).len(),
            podns_pins(&w.d).len(),
            w.ipam_leases().len()
        ),
        (netns_before, podns_before, ips_before),
        "the refused pod left something"
    );
    // A container cannot join a PID namespace the pod does not share.
    let e = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("podpid", "true")),
            sandbox_config: Some(cfg.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("pid"), "{e:?}");

    // DNS, hostname, a namespaced sysctl; run as 1234, read-only rootfs, no capabilities.
    let mut locked = container_config(
        "locked",
        "cat /etc/resolv.conf; hostname; cat /proc/sys/net/ipv4/ip_unprivileged_port_start; \
         id -u; touch /x 2>/dev/null || echo READONLY; grep CapEff /proc/self/status; exec sleep 3600",
    );
    locked.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Container as i32,
                ..Default::default()
            }),
            run_as_user: Some(cri::Int64Value { value: 1234 }),
            readonly_rootfs: true,
            capabilities: Some(cri::Capability {
                drop_capabilities: vec!["ALL".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let locked = create_and_start(&mut rt, &pod, &cfg, locked).await;
    let log = w.dir.path().join("logs/opts/locked.log");
    wait_for("the locked container's output", || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("CapEff")
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    for want in [
        "nameserver 10.0.0.10",
        "search svc.example",
        "options ndots:2",
        "opts-host",
        " 80\n",
        " 1234\n",
        "READONLY",
        "CapEff:\t0000000000000000",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }

    // UpdateContainerResources reaches the container's cgroup and its status.
    rt.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: locked.clone(),
        linux: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_shares: 512,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("UpdateContainerResources");
    let r = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: locked.clone(),
            cmd: vec!["cat".into(), "/sys/fs/cgroup/memory/memory.limit_in_bytes".into()],
            timeout: 30,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).trim(),
        (64u64 << 20).to_string()
    );
    let st = status(&mut rt, &locked).await;
    assert_eq!(
        st.resources
            .and_then(|r| r.linux)
            .map(|l| l.memory_limit_in_bytes),
        Some(64 << 20)
    );

    // ReopenContainerLog: kubelet renames the file, asks for a reopen; output goes on in a
    // new file at the same path.
    let ticker = create_and_start(
        &mut rt,
        &pod,
        &cfg,
        own_pid(container_config(
            "ticker",
            "while true; do echo tick; sleep 0.1; done",
        )),
    )
    .await;
    let tlog = w.dir.path().join("logs/opts/ticker.log");
    wait_for("ticks", || async {
        std::fs::read_to_string(&tlog)
            .unwrap_or_default()
            .contains("tick")
    })
    .await;
    // The pod's containers share one /dev/shm: a 64 MiB tmpfs.
    let (mounts, code) = sh(
        &mut rt,
        &locked,
        "echo shared > /dev/shm/seg && grep ' /dev/shm ' /proc/mounts",
    )
    .await;
    assert_eq!(code, 0, "{mounts}");
    assert!(
        mounts.contains("tmpfs") && mounts.contains("size=65536k"),
        "{mounts}"
    );
    assert_eq!(
        sh(&mut rt, &ticker, "cat /dev/shm/seg").await,
        ("shared\n".into(), 0)
    );
    std::fs::rename(&tlog, tlog.with_extension("log.1")).unwrap();
    rt.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: ticker.clone(),
    })
    .await
    .expect("ReopenContainerLog");
    wait_for("ticks in the new file", || async {
        std::fs::read_to_string(&tlog).unwrap_or_default().lines().count() >= 3
    })
    .await;
    rt.stop_container(cri::StopContainerRequest {
        container_id: ticker.clone(),
        timeout: 1,
    })
    .await
    .unwrap();
    let e = rt
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: ticker.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        tonic::Code::FailedPrecondition,
        "reopen on a stopped container: {e:?}"
    );

    // A hostNetwork pod sees the node's interfaces (this test's bridge among them).
    let mut host_cfg = w.pod_config("hostnet");
    if let Some(l) = host_cfg.linux.as_mut() {
        l.security_context = Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let host_pod = run_pod(&mut rt, &host_cfg, "RunPodSandbox hostNetwork").await;
    let mut c = container_config("net", "cat /proc/net/dev; exec sleep 3600");
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    create_and_start(&mut rt, &host_pod, &host_cfg, c).await;
    let nlog = w.dir.path().join("logs/hostnet/net.log");
    let bridge = w.bridge.clone();
    wait_for("the node's interfaces", || async {
        std::fs::read_to_string(&nlog)
            .unwrap_or_default()
            .contains(&bridge)
    })
    .await;

    // hostPID + hostIPC (as kubelet sends them for pod and container): the host's PID and
    // IPC namespaces and the host's /dev/shm; no pause container (nothing to hold).
    let host_ns = cri::NamespaceOption {
        pid: cri::NamespaceMode::Node as i32,
        ipc: cri::NamespaceMode::Node as i32,
        ..Default::default()
    };
    let mut hostns_cfg = w.pod_config("hostns");
    if let Some(l) = hostns_cfg.linux.as_mut() {
        l.security_context = Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(host_ns.clone()),
            ..Default::default()
        });
    }
    let hostns_pod = run_pod(&mut rt, &hostns_cfg, "RunPodSandbox hostPID + hostIPC").await;
    assert!(!has_pause_container(&mut rt, &hostns_pod).await);
    let mut c = container_config("hostns", "exec sleep 3600");
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(host_ns),
            ..Default::default()
        }),
        ..Default::default()
    });
    let hostns = create_and_start(&mut rt, &hostns_pod, &hostns_cfg, c).await;
    let link = |p: &str| std::fs::read_link(p).unwrap().display().to_string();
    let (out, code) = sh(
        &mut rt,
        &hostns,
        "readlink /proc/self/ns/pid; readlink /proc/self/ns/ipc",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        format!("{}\n{}\n", link("/proc/self/ns/pid"), link("/proc/self/ns/ipc")),
        "the host's PID and IPC namespaces"
    );
    let seg = format!("taskd-e2e-{}", std::process::id());
    let (out, code) = sh(&mut rt, &hostns, &format!("echo host > /dev/shm/{seg}")).await;
    assert_eq!(code, 0, "{out}");
    let host_seg = Path::new("/dev/shm").join(&seg);
    let seen = std::fs::read_to_string(&host_seg);
    let _ = std::fs::remove_file(&host_seg);
    assert_eq!(seen.unwrap(), "host\n", "the host's /dev/shm");

    for p in [pod, host_pod, hostns_pod] {
        stop_and_remove(&mut rt, &p).await;
    }
    w.assert_no_pod_left();
}

/// `sh -c script` in a container through ExecSync: stdout + stderr, exit code.
async fn sh(rt: &mut RuntimeServiceClient<Channel>, id: &str, script: &str) -> (String, i32) {
    let r = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 30,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync {script:?}: {e:?}"))
        .into_inner();
    (
        format!(
            "{}{}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        ),
        r.exit_code,
    )
}

/// The container's init pid on the host (ContainerStatus verbose info, as containerd's).
async fn host_pid(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> u32 {
    let info = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .expect("ContainerStatus verbose")
        .into_inner()
        .info;
    let v: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    v["pid"]
        .as_u64()
        .filter(|&p| p > 0)
        .expect("a running container's pid") as u32
}

/// The names of the containers ListContainers reports.
async fn container_names(rt: &mut RuntimeServiceClient<Channel>) -> Vec<String> {
    rt.list_containers(cri::ListContainersRequest { filter: None })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
        .into_iter()
        .filter_map(|c| c.metadata.map(|m| m.name))
        .collect()
}

/// A line of the host's `/proc/<pid>/status`.
fn proc_status(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| panic!("{key} missing from /proc/{pid}/status"))
}

fn with_security(
    mut c: cri::ContainerConfig,
    sec: cri::LinuxContainerSecurityContext,
) -> cri::ContainerConfig {
    let linux = c.linux.get_or_insert_with(Default::default);
    linux.security_context = Some(sec);
    c
}

fn seccomp(t: cri::security_profile::ProfileType, localhost_ref: &str) -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile {
        profile_type: t as i32,
        localhost_ref: localhost_ref.into(),
    })
}

/// What the masked/read-only paths probe saw in a container.
#[derive(Debug)]
struct Probed {
    file_bytes: String,
    firmware_entries: String,
    group_bytes: String,
    file_masked: bool,
    proc_sys_ro: bool,
    group_masked: bool,
    tmp_ro: bool,
    sysfs_ro: bool,
    out: String,
}

/// The mount options of `path` in a container (`-` when nothing is mounted there).
const MOUNT_OPTS: &str =
    "awk -v p=\"$P\" '$5==p{o=$6} END{print (o==\"\" ? \"-\" : o)}' /proc/self/mountinfo";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn seccomp_masked_paths_devices_hugepages_and_target_pid_namespace() {
    use cri::security_profile::ProfileType;
    let w = World::new(60 + (std::process::id() % 20) as u8, "");
    let (mut rt, mut images) = w.clients().await;
    pull(&mut images, "busybox", None).await;
    let cfg = w.pod_config("sec");
    let pod = run_pod(&mut rt, &cfg, "RunPodSandbox").await;
    let sleeper = |name: &str| container_config(name, "exec sleep 3600");
    let cgroup = |controller: &str, id: &str| {
        PathBuf::from("/sys/fs/cgroup")
            .join(controller)
            .join(w.cgroup_parent().trim_start_matches('/'))
            .join(id)
    };

    // --- seccomp -------------------------------------------------------------------------
    // RuntimeDefault: a filter (mode 2), and unshare(2) refused without CAP_SYS_ADMIN; the
    // default masked and read-only paths are in place.
    let dflt = create_and_start(
        &mut rt,
        &pod,
        &cfg,
        with_security(
            sleeper("rtdefault"),
            cri::LinuxContainerSecurityContext {
                seccomp: seccomp(ProfileType::RuntimeDefault, ""),
                ..Default::default()
            },
        ),
    )
    .await;
    assert_eq!(proc_status(host_pid(&mut rt, &dflt).await, "Seccomp"), "2");
    let (out, code) = sh(&mut rt, &dflt, "grep Seccomp: /proc/self/status; unshare -U true").await;
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(
        code != 0 && out.contains("Operation not permitted"),
        "unshare under RuntimeDefault: {code} {out}"
    );
    // Unconfined: no filter, and the same unshare(2) passes the (absent) filter.
    let unconf = create_and_start(
        &mut rt,
        &pod,
        &cfg,
        with_security(
            sleeper("unconfined"),
            cri::LinuxContainerSecurityContext {
                seccomp: seccomp(ProfileType::Unconfined, ""),
                ..Default::default()
            },
        ),
    )
    .await;
    assert_eq!(proc_status(host_pid(&mut rt, &unconf).await, "Seccomp"), "0");
    let (out, code) = sh(
        &mut rt,
        &unconf,
        "grep Seccomp: /proc/self/status; unshare -U true",
    )
    .await;
    assert!(out.contains("Seccomp:\t0"), "{out}");
    if code != 0 {
        // The kernel may refuse user namespaces on its own; the filter is what differs.
        eprintln!("unshare -U unconfined fails on this host too ({out}): Seccomp lines only");
    }
    // Localhost: the node's profile file denies mkdir with EPERM.
    let profile = w.dir.path().join("deny-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )
    .unwrap();
    let local = create_and_start(
        &mut rt,
        &pod,
        &cfg,
        with_security(
            sleeper("localhost"),
            cri::LinuxContainerSecurityContext {
                seccomp: seccomp(ProfileType::Localhost, &profile.display().to_string()),
                ..Default::default()
            },
        ),
    )
    .await;
    assert_eq!(proc_status(host_pid(&mut rt, &local).await, "Seccomp"), "2");
    let (out, code) = sh(&mut rt, &local, "mkdir /tmp/made").await;
    assert!(
        code != 0 && out.contains("Operation not permitted"),
        "mkdir under the Localhost profile: {code} {out}"
    );
    // The same file as `localhost/<path>` (the prefix containerd trims): touch still works,
    // mkdir does not.
    let prefixed = create_and_start(
        &mut rt,
        &pod,
        &cfg,
        with_security(
            sleeper("prefixed"),
            cri::LinuxContainerSecurityContext {
                seccomp: seccomp(
                    ProfileType::Localhost,
                    &format!("localhost/{}", profile.display()),
                ),
                ..Default::default()
            },
        ),
    )
    .await;
    let (out, code) = sh(&mut rt, &prefixed, "touch /tmp/f && mkdir /tmp/d").await;
    assert!(
        code != 0 && out.contains("mkdir") && out.contains("Operation not permitted"),
        "{out}"
    );
    // A Localhost profile that is not on the node: a clear error, nothing left behind.
    let bundles = w.bundles().len();
    let missing = w.dir.path().join("no-such-profile.json");
    let e = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(with_security(
                sleeper("missing-profile"),
                cri::LinuxContainerSecurityContext {
                    seccomp: seccomp(ProfileType::Localhost, &missing.display().to_string()),
                    ..Default::default()
                },
            )),
            sandbox_config: Some(cfg.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("no-such-profile.json") && e.message().contains("localhost_ref"),
        "{e:?}"
    );
    let names = container_names(&mut rt).await;
    assert!(!names.iter().any(|n| n == "missing-profile"), "{names:?}");
    assert_eq!(w.bundles().len(), bundles, "no task for the failed create");

    // --- masked and read-only paths --------------------------------------------------------
    // `KEY=value` lines: the size of a masked proc file (one this kernel has), the entries of
    // /sys/firmware, the mount options at a path (`-`: nothing mounted there).
    let masked_file = ["/proc/kcore", "/proc/timer_list", "/proc/keys"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("a proc file of the default masked list on this kernel");
    let probe = format!(
        "echo FILE=$(cat {masked_file} 2>/dev/null | wc -c); echo FIRMWARE=$(ls -A /sys/firmware | wc -l); \
         echo GROUP=$(wc -c < /etc/group); \
         for P in {masked_file} /proc/sys /etc/group /tmp /sys /sys/fs/cgroup; do echo \"$P=$({MOUNT_OPTS})\"; done; \
         echo 1 2>&1 > /proc/sys/kernel/ns_last_pid | sed 's/^/SYSCTL=/'; \
         touch /tmp/x 2>&1 | sed 's/^/TMP=/'"
    );
    let probe = async |rt: &mut RuntimeServiceClient<Channel>, id: &str| {
        let (out, _) = sh(rt, id, &probe).await;
        let get = |k: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{k} missing from:\n{out}"))
                .to_owned()
        };
        let ro = |p: &str| get(p).split(',').any(|o| o == "ro");
        Probed {
            file_bytes: get("FILE"),
            firmware_entries: get("FIRMWARE"),
            group_bytes: get("GROUP"),
            file_masked: get(masked_file) != "-",
            proc_sys_ro: ro("/proc/sys"),
            group_masked: get("/etc/group") != "-",
            tmp_ro: ro("/tmp"),
            sysfs_ro: ro("/sys") || ro("/sys/fs/cgroup"),
            out: out.clone(),
        }
    };
    // The defaults (containerd's): the proc file reads empty, /sys/firmware is an empty
    // tmpfs, /proc/sys is mounted read-only (a write fails so).
    let p = probe(&mut rt, &dflt).await;
    assert_eq!(
        (p.file_bytes.as_str(), p.firmware_entries.as_str()),
        ("0", "0"),
        "{p:?}"
    );
    assert!(
        p.file_masked && p.proc_sys_ro && !p.group_masked && !p.tmp_ro && p.sysfs_ro,
        "{p:?}"
    );
    assert!(
        p.out.contains("SYSCTL=") && p.out.contains("Read-only file system"),
        "{p:?}"
    );
    // Custom lists from the security context replace the defaults.
    let custom = create_and_start(
        &mut rt,
        &pod,
        &cfg,
        with_security(
            sleeper("custom-paths"),
            cri::LinuxContainerSecurityContext {
                masked_paths: vec!["/etc/group".into()],
                readonly_paths: vec!["/tmp".into()],
                ..Default::default()
            },
        ),
    )
    .await;
    let p = probe(&mut rt, &custom).await;
    assert_eq!(p.group_bytes, "0", "/etc/group masked: {p:?}");
    assert!(p.group_masked && p.tmp_ro && p.out.contains("TMP="), "{p:?}");
    assert!(
        !p.file_masked && !p.proc_sys_ro && p.firmware_entries != "0",
        "the defaults are gone: {p:?}"
    );
    // Privileged: only in a privileged pod (as containerd); there no masks, no read-only
    // /proc/sys, no seccomp, every device allowed and the host's devices in /dev.
    let privileged_cfg = with_security(
        sleeper("privileged"),
        cri::LinuxContainerSecurityContext {
            privileged: true,
            masked_paths: vec!["/etc/group".into()],
            readonly_paths: vec!["/tmp".into()],
            seccomp: seccomp(ProfileType::RuntimeDefault, ""),
            ..Default::default()
        },
    );
    let e = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(privileged_cfg.clone()),
            sandbox_config: Some(cfg.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("privileged pod"), "{e:?}");
    let mut priv_cfg = w.pod_config("privpod");
    if let Some(l) = priv_cfg.linux.as_mut() {
        l.security_context = Some(cri::LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        });
    }
    let priv_pod = run_pod(&mut rt, &priv_cfg, "RunPodSandbox privileged").await;
    let privileged = create_and_start(&mut rt, &priv_pod, &priv_cfg, privileged_cfg).await;
    let p = probe(&mut rt, &privileged).await;
    assert!(
        !p.file_masked && !p.proc_sys_ro && !p.group_masked && !p.tmp_ro && !p.sysfs_ro,
        "{p:?}"
    );
    assert!(p.group_bytes != "0" && p.firmware_entries != "0", "{p:?}");
    let pid = host_pid(&mut rt, &privileged).await;
    assert_eq!(proc_status(pid, "Seccomp"), "0");
    let devices = std::fs::read_to_string(cgroup("devices", &privileged).join("devices.list")).unwrap();
    assert_eq!(devices.trim(), "a *:* rwm", "privileged devices cgroup");
    // A host device runc would not create on its own.
    if let Some(host_dev) = ["/dev/loop-control", "/dev/kmsg", "/dev/fuse", "/dev/autofs"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    {
        use std::os::unix::fs::MetadataExt;
        let rdev = std::fs::metadata(host_dev).unwrap().rdev();
        let want = format!(
            "{:x}:{:x}",
            nix::sys::stat::major(rdev),
            nix::sys::stat::minor(rdev)
        );
        let (out, _) = sh(&mut rt, &privileged, &format!("stat -c '%t:%T' {host_dev}")).await;
        assert_eq!(
            out.trim(),
            want,
            "the host's {host_dev} in the privileged container"
        );
        let (out, _) = sh(&mut rt, &dflt, &format!("ls {host_dev} 2>&1")).await;
        assert!(out.contains("No such file"), "not in an unprivileged one: {out}");
    }

    // --- devices -------------------------------------------------------------------------
    // The host's /dev/zero as /dev/mydev (rw), and a char node with no driver behind it
    // (major 241, local/experimental) as /dev/fake (r): the devices cgroup allows both;
    // a node the container makes itself is refused by the cgroup.
    // A directory given as a device brings every node under it (here one more, 241:9).
    let fake = w.dir.path().join("fake-dev");
    let devdir = w.dir.path().join("devdir");
    std::fs::create_dir_all(devdir.join("sub")).unwrap();
    for (path, minor) in [(fake.clone(), 7), (devdir.join("sub/nine"), 9)] {
        nix::sys::stat::mknod(
            &path,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
            nix::sys::stat::makedev(241, minor),
        )
        .expect("mknod a fake device");
    }
    // As root: mknod needs CAP_MKNOD (the image's user is nobody).
    let mut devc = with_security(
        sleeper("devices"),
        cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 0 }),
            ..Default::default()
        },
    );
    devc.devices = vec![
        cri::Device {
            container_path: "/dev/mydev".into(),
            host_path: "/dev/zero".into(),
            permissions: "rw".into(),
        },
        cri::Device {
            container_path: "/dev/fake".into(),
            host_path: fake.display().to_string(),
            permissions: "r".into(),
        },
        cri::Device {
            container_path: "/dev/group".into(),
            host_path: devdir.display().to_string(),
            permissions: "rw".into(),
        },
    ];
    let devc = create_and_start(&mut rt, &pod, &cfg, devc).await;
    let (out, code) = sh(
        &mut rt,
        &devc,
        "stat -c '%F %t:%T' /dev/mydev; head -c 4 /dev/mydev | od -An -tx1; \
         stat -c '%t:%T' /dev/fake; cat /dev/fake 2>&1; \
         mknod /dev/other c 241 8 && cat /dev/other 2>&1; echo GROUP=$(stat -c '%t:%T' /dev/group/sub/nine); true",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "character special file 1:5", "{out}");
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["00"; 4],
        "{out}"
    );
    assert_eq!(lines[2], "f1:7", "{out}");
    let says = |path: &str, what: &str| out.lines().any(|l| l.contains(path) && l.contains(what));
    assert!(
        says("/dev/fake", "No such device or address"),
        "the cgroup lets /dev/fake open (no driver behind it): {out}"
    );
    assert!(
        says("/dev/other", "Operation not permitted"),
        "the cgroup refuses a device the container was not given: {out}"
    );
    let devices = std::fs::read_to_string(cgroup("devices", &devc).join("devices.list")).unwrap();
    let rules: Vec<&str> = devices.lines().collect();
    assert!(rules.contains(&"c 241:7 r"), "{devices}");
    assert!(rules.contains(&"c 241:9 rw"), "{devices}");
    assert!(out.contains("GROUP=f1:9"), "the directory's device: {out}");
    assert!(rules.iter().any(|r| r.starts_with("c 1:5 ")), "{devices}");
    assert!(!rules.contains(&"a *:* rwm"), "{devices}");

    // --- hugepages -----------------------------------------------------------------------
    // A limit only (nothing is allocated, no host sysctl changes). Without the hugetlb
    // controller taskd skips the limit (as containerd by default) and the container runs.
    let mut huge = sleeper("hugepages");
    huge.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            ..Default::default()
        }),
        ..Default::default()
    });
    let huge = create_and_start(&mut rt, &pod, &cfg, huge).await;
    assert_eq!(
        status(&mut rt, &huge).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    let hugetlb = PathBuf::from("/sys/fs/cgroup/hugetlb");
    if hugetlb.is_dir() && Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").is_dir() {
        let limit =
            std::fs::read_to_string(cgroup("hugetlb", &huge).join("hugetlb.2MB.limit_in_bytes")).unwrap();
        assert_eq!(limit.trim(), (4u64 << 20).to_string());
    } else {
        eprintln!(
            "hugepages: no hugetlb cgroup controller on this host (no {}): the limit is \
             skipped, only checked that the container runs",
            hugetlb.display()
        );
    }

    // --- pid namespace TARGET ------------------------------------------------------------
    // The first container has its own PID namespace; the second joins it by TARGET.
    let ns = |pid: cri::NamespaceMode, target_id: &str| cri::LinuxContainerSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            pid: pid as i32,
            target_id: target_id.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let first = create_and_start(
        &mut rt,
        &pod,
        &cfg,
        with_security(
            container_config("first", "exec sleep 3601"),
            ns(cri::NamespaceMode::Container, ""),
        ),
    )
    .await;
    let second = create_and_start(
        &mut rt,
        &pod,
        &cfg,
        with_security(sleeper("second"), ns(cri::NamespaceMode::Target, &first)),
    )
    .await;
    let (seen, _) = sh(&mut rt, &second, "ps").await;
    assert!(seen.contains("sleep 3601"), "the target's processes: {seen}");
    assert!(!seen.contains("2147483647"), "not the pod's (pause): {seen}");
    let link = "readlink /proc/self/ns/pid";
    let (a, _) = sh(&mut rt, &first, link).await;
    let (b, _) = sh(&mut rt, &second, link).await;
    let (pod_ns, _) = sh(&mut rt, &dflt, link).await;
    assert!(a.starts_with("pid:["), "{a}");
    assert_eq!(a, b, "the second container is in the first's PID namespace");
    assert_ne!(a, pod_ns, "which is not the pod's");
    // A TARGET that does not exist: NotFound, nothing created.
    let e = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(with_security(
                sleeper("orphan"),
                ns(cri::NamespaceMode::Target, "no-such-container"),
            )),
            sandbox_config: Some(cfg.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("no-such-container"), "{e:?}");
    // A target in another pod: refused (containerd's rule), nothing created.
    let e = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: priv_pod.clone(),
            config: Some(with_security(
                sleeper("elsewhere"),
                ns(cri::NamespaceMode::Target, &first),
            )),
            sandbox_config: Some(priv_cfg.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains(&pod), "names the target's pod: {e:?}");
    let names = container_names(&mut rt).await;
    assert!(
        !names.iter().any(|n| n == "orphan" || n == "elsewhere"),
        "{names:?}"
    );

    for p in [pod, priv_pod] {
        stop_and_remove(&mut rt, &p).await;
    }
    w.assert_no_pod_left();
}

/// Runs `cmd`; panics with its output unless it succeeds.
fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Host mounts made for a test, each `--bind` onto itself with a propagation; unmounted
/// (lazily, newest first) on drop, also when the test panics.
struct HostMounts(Vec<PathBuf>);

impl HostMounts {
    /// Makes `dir` a mount point of its own with `propagation` (`rshared`, `private`, ...).
    fn bind_self(&mut self, dir: &Path, propagation: &str) {
        std::fs::create_dir_all(dir).unwrap();
        run_ok(Command::new("mount").arg("--bind").arg(dir).arg(dir));
        self.0.push(dir.to_owned());
        run_ok(
            Command::new("mount")
                .arg(format!("--make-{propagation}"))
                .arg(dir),
        );
    }

    /// A tmpfs at `dir` (created).
    fn tmpfs(&mut self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        run_ok(Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(dir));
        self.0.push(dir.to_owned());
    }
}

impl Drop for HostMounts {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Inside container `id`: a tmpfs at `dir` holding the file `name` with `text` and a newline.
async fn tmpfs_inside(rt: &mut RuntimeServiceClient<Channel>, id: &str, dir: &str, name: &str, text: &str) {
    let script = format!("mkdir -p {dir} && mount -t tmpfs tmpfs {dir} && echo {text} > {dir}/{name}");
    let (out, code) = sh(rt, id, &script).await;
    assert_eq!(code, 0, "{script}: {out}");
}

fn mount_of(host: &Path, container: &str, propagation: cri::MountPropagation) -> cri::Mount {
    cri::Mount {
        container_path: container.into(),
        host_path: host.display().to_string(),
        propagation: propagation as i32,
        ..Default::default()
    }
}

/// CRI mount propagation, as containerd: BIDIRECTIONAL needs a shared host mount and makes
/// mounts travel both ways; HOST_TO_CONTAINER only from the host into the container; either
/// on a private host mount is refused (FailedPrecondition) before anything is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn mount_propagation_reaches_across_host_and_container() {
    use cri::MountPropagation::{PropagationBidirectional, PropagationHostToContainer};
    let w = World::new(40 + (std::process::id() % 20) as u8, "");
    let (mut rt, mut images) = w.clients().await;
    pull(&mut images, "busybox", None).await;
    let shared = w.dir.path().join("shared");
    let private = w.dir.path().join("private");
    let mut host = HostMounts(Vec::new());
    host.bind_self(&shared, "rshared");
    host.bind_self(&private, "private");

    // Mounting inside a container needs CAP_SYS_ADMIN: a privileged pod.
    let mut cfg = kubelet_pod(w.pod_config("prop"));
    if let Some(l) = cfg.linux.as_mut() {
        l.security_context = Some(cri::LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        });
    }
    let pod = run_pod(&mut rt, &cfg, "RunPodSandbox").await;
    let privileged = |name: &str, m: cri::Mount| {
        // Root: the image's own user may not mount or write the host directory.
        let mut c = own_pid(with_security(
            container_config(name, "exec sleep 3600"),
            cri::LinuxContainerSecurityContext {
                privileged: true,
                run_as_user: Some(cri::Int64Value { value: 0 }),
                ..Default::default()
            },
        ));
        c.mounts = vec![m];
        c
    };

    for p in [PropagationBidirectional, PropagationHostToContainer] {
        let e = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(privileged("refused", mount_of(&private, "/m", p))),
                sandbox_config: Some(cfg.clone()),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{p:?}: {e:?}");
        assert!(e.message().contains("not shared"), "{e:?}");
    }
    assert!(
        container_names(&mut rt).await.is_empty(),
        "a refused create leaves no container"
    );

    let bi = create_and_start(
        &mut rt,
        &pod,
        &cfg,
        privileged("bi", mount_of(&shared, "/bi", PropagationBidirectional)),
    )
    .await;
    let h2c = create_and_start(
        &mut rt,
        &pod,
        &cfg,
        privileged("h2c", mount_of(&shared, "/h2c", PropagationHostToContainer)),
    )
    .await;

    // Host → both containers: a mount the host makes after they started.
    host.tmpfs(&shared.join("fromhost"));
    std::fs::write(shared.join("fromhost/hello"), "from the host").unwrap();
    assert_eq!(
        sh(&mut rt, &bi, "cat /bi/fromhost/hello").await,
        ("from the host".into(), 0)
    );
    assert_eq!(
        sh(&mut rt, &h2c, "cat /h2c/fromhost/hello").await,
        ("from the host".into(), 0)
    );

    // Bidirectional container → host (and on into the host-to-container one).
    tmpfs_inside(&mut rt, &bi, "/bi/fromctr", "x", "from-bi").await;
    host.0.push(shared.join("fromctr"));
    assert_eq!(
        std::fs::read_to_string(shared.join("fromctr/x")).unwrap(),
        "from-bi\n"
    );
    assert_eq!(
        sh(&mut rt, &h2c, "cat /h2c/fromctr/x").await,
        ("from-bi\n".into(), 0)
    );

    // Host-to-container is one way: its own mount stays inside it.
    tmpfs_inside(&mut rt, &h2c, "/h2c/fromh2c", "y", "mine").await;
    assert!(
        shared.join("fromh2c").is_dir(),
        "the directory itself is on the shared fs"
    );
    assert!(
        !shared.join("fromh2c/y").exists(),
        "the container's mount must not reach the host"
    );

    stop_and_remove(&mut rt, &pod).await;
    drop(host);
    w.assert_no_pod_left();
}

/// Two CRI API rules containerd 1.7 follows: StopContainer and StopPodSandbox of an unknown id
/// succeed (as Remove* already did), and `run_as_group` without `run_as_user` or
/// `run_as_username` is InvalidArgument.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn unknown_ids_stop_and_a_group_without_a_user_is_refused() {
    let w = World::new(30 + (std::process::id() % 20) as u8, "");
    let (mut rt, mut images) = w.clients().await;
    rt.stop_container(cri::StopContainerRequest {
        container_id: "no-such-container".into(),
        timeout: 1,
    })
    .await
    .expect("StopContainer of an unknown id");
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: "no-such-pod".into(),
    })
    .await
    .expect("StopPodSandbox of an unknown id");

    pull(&mut images, "busybox", None).await;
    let cfg = kubelet_pod(w.pod_config("group"));
    let pod = run_pod(&mut rt, &cfg, "RunPodSandbox").await;
    let grouped = |user: Option<i64>, username: &str| {
        own_pid(with_security(
            container_config("grouped", "id -u; id -g"),
            cri::LinuxContainerSecurityContext {
                run_as_user: user.map(|value| cri::Int64Value { value }),
                run_as_username: username.into(),
                run_as_group: Some(cri::Int64Value { value: 4242 }),
                ..Default::default()
            },
        ))
    };
    let e = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(grouped(None, "")),
            sandbox_config: Some(cfg.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("run_as_group"), "{e:?}");
    // With a user it runs with that group.
    let id = create_and_start(&mut rt, &pod, &cfg, grouped(Some(1000), "")).await;
    let s = exited(&mut rt, &id).await;
    assert_eq!(s.exit_code, 0);
    let log = std::fs::read_to_string(&s.log_path).unwrap();
    assert!(log.contains(" 1000\n") && log.contains(" 4242\n"), "{log}");
    stop_and_remove(&mut rt, &pod).await;
    // Stopping it again, now that it is gone, still succeeds.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod })
        .await
        .expect("StopPodSandbox of a removed pod");
    w.assert_no_pod_left();
}

/// What a local user without privileges (`nobody`) can open or list among `paths`, tried in
/// one shell run as that user: `ls` of directories, `cat` of files, `touch` in `writable`.
fn open_to_nobody(paths: &[PathBuf], writable: &[PathBuf]) -> Vec<String> {
    let script = r#"
        for p in "$@"; do
            case "$p" in
                W:*) touch "${p#W:}/probe-by-nobody" 2>/dev/null && echo "writable ${p#W:}" ;;
                *) if [ -d "$p" ]; then ls "$p" >/dev/null 2>&1 && echo "listable $p"
                   else cat "$p" >/dev/null 2>&1 && echo "readable $p"; fi ;;
            esac
        done"#;
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        "sh",
        "-c",
        script,
        "sh",
    ]);
    cmd.args(paths);
    cmd.args(writable.iter().map(|p| format!("W:{}", p.display())));
    let out = cmd.output().expect("setpriv (util-linux)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Every path below `dir` (not crossing into mounts: a pod's rootfs or shm), as root sees it.
fn tree(dir: &Path, out: &mut Vec<PathBuf>) {
    let dev = |p: &Path| std::os::unix::fs::MetadataExt::dev(&std::fs::symlink_metadata(p).unwrap());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        out.push(p.clone());
        if ft.is_dir() && dev(&p) == dev(dir) {
            tree(&p, out);
        }
    }
}

/// The CVE-2021-41103 class: while a pod runs with a secret in its env, a local user without
/// privileges can neither list nor read anything below taskd's root and state (the plugin
/// directories are 0700: CRI records, meta.redb, content, snapshots, bundles), and cannot
/// write into the pod's /dev/shm from the host. Below the plugin directories nothing is open
/// to other users either (taskd's umask is 0077), but for the named exceptions; and a
/// container of another user still reads its pod files and cgroup, writes the pod's shm, and
/// runs in the mount point and working directory runc made for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn other_users_cannot_reach_pod_state() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new(1 + (std::process::id() % 19) as u8, "");
    // The test's temp dir is 0700; open it so that only taskd's own modes stand in the way.
    std::fs::set_permissions(&w.d.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (mut rt, mut images) = w.clients().await;
    pull(&mut images, "busybox", None).await;
    let cfg = kubelet_pod(w.pod_config("secret"));
    let pod = run_pod(&mut rt, &cfg, "RunPodSandbox").await;
    let mut c = own_pid(container_config("app", "exec sleep 3600"));
    c.envs = vec![cri::KeyValue {
        key: "MYSECRET".into(),
        value: "hunter2".into(),
    }];
    create_and_start(&mut rt, &pod, &cfg, c).await;
    let vol = w.d.dir.join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::set_permissions(&vol, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut other = own_pid(container_config("other", "exec sleep 3600"));
    other.working_dir = "/made/by/runc".into();
    other.mounts = vec![cri::Mount {
        container_path: "/deep/mount/point".into(),
        host_path: vol.display().to_string(),
        readonly: true,
        ..Default::default()
    }];
    let sc = other
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .unwrap();
    sc.run_as_user = Some(cri::Int64Value { value: 1234 });
    let other = create_and_start(&mut rt, &pod, &cfg, other).await;
    let (out, code) = sh(
        &mut rt,
        &other,
        "id -u; pwd; cat /etc/hosts /etc/hostname /etc/resolv.conf >/dev/null && echo files; \
         echo x >/dev/shm/by-1234 && echo shm; ls /deep/mount/point >/dev/null && echo mount; \
         cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null \
         | grep -q . && echo cgroup",
    )
    .await;
    assert_eq!(
        (out.as_str(), code),
        ("1234\n/made/by/runc\nfiles\nshm\nmount\ncgroup\n", 0),
        "a container of uid 1234"
    );

    let mut paths = Vec::new();
    tree(&w.d.root, &mut paths);
    tree(&w.d.state, &mut paths);
    let plugin_dirs: Vec<&PathBuf> = paths
        .iter()
        .filter(|p| p.parent() == Some(&w.d.root) || p.parent() == Some(&w.d.state))
        .filter(|p| p.is_dir())
        .collect();
    assert!(plugin_dirs.len() > 10, "{plugin_dirs:?}");
    for d in &plugin_dirs {
        let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }
    let shm =
        w.d.state
            .join("io.containerd.cri.v1.cri/sandboxes")
            .join(&pod)
            .join("shm");
    assert!(shm.is_dir(), "the pod's /dev/shm at {}", shm.display());
    let secret_files: Vec<&PathBuf> = paths
        .iter()
        .filter(|p| p.is_file() && std::fs::read(p).is_ok_and(|b| b.windows(7).any(|w| w == b"hunter2")))
        .collect();
    assert!(
        !secret_files.is_empty(),
        "the secret is on disk somewhere (record or db)"
    );
    let open = open_to_nobody(&paths, &[shm]);
    assert!(open.is_empty(), "open to nobody: {open:#?}");

    // What may be open to other users below the closed plugin directories, and why.
    let dev = |p: &Path| std::os::unix::fs::MetadataExt::dev(&std::fs::symlink_metadata(p).unwrap());
    let snapshots = w.d.root.join("io.containerd.snapshotter.v1.overlayfs/snapshots");
    let sandboxes = w.d.state.join("io.containerd.cri.v1.cri/sandboxes");
    let bundles = w.d.state.join("io.containerd.runtime.v2.task");
    let exception = |p: &Path, m: &std::fs::Metadata| {
        // A layer's tree (and its root, the container's `/`) keeps the image's modes.
        p.strip_prefix(&snapshots).is_ok_and(|r| r.iter().nth(1) == Some("fs".as_ref()))
            // A mount point shows the mounted root: a rootfs, the shm (1777), namespace files.
            || p.parent().is_some_and(|d| dev(d) != dev(p))
            // Bound into the containers, which read them as any user (0644).
            || (p.parent().and_then(Path::parent) == Some(&sandboxes)
                && ["hosts", "hostname", "resolv.conf"].iter().any(|f| p.ends_with(f)))
            // The shim's own files: it runs with umask 0022 for runc's sake, in 0700 bundles.
            || (p.starts_with(&bundles) && m.is_file())
    };
    let world: Vec<String> = paths
        .iter()
        .filter_map(|p| {
            let m = std::fs::symlink_metadata(p).unwrap();
            let mode = m.permissions().mode();
            (mode & 0o007 != 0 && !m.file_type().is_symlink() && !exception(p, &m))
                .then(|| format!("{:o} {}", mode & 0o7777, p.display()))
        })
        .collect();
    assert!(world.is_empty(), "open to other users: {world:#?}");
    stop_and_remove(&mut rt, &pod).await;
    w.assert_no_pod_left();
}

/// Pod and container annotations reach the OCI specs (the bundles' config.json, which the shim
/// and runc read; pods with a pause container, so that both specs are there) only when the
/// handler allows them: by default neither a systemd property
/// nor the runc shim's grouping annotation gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn annotations_reach_config_json_only_when_the_handler_allows_them() {
    let w = World::with_cri_config(
        50 + (std::process::id() % 20) as u8,
        "",
        &format!(
            "drop_infra_container = false\n\
             [{CRI}.runtimes.open]\nruntime_type = \"io.containerd.runc.v2\"\n\
             pod_annotations = [\"example.com/*\"]\ncontainer_annotations = [\"org.systemd.property.*\"]\n"
        ),
    );
    let (mut rt, mut images) = w.clients().await;
    pull(&mut images, "busybox", None).await;
    let kv = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let hostile = [
        kv("org.systemd.property.CPUQuota", "1%"),
        kv("io.containerd.runc.v2.group", "someone-else"),
        kv("example.com/trace", "on"),
    ];
    let annotations_of = |id: &str| -> Vec<String> {
        let path =
            w.d.state
                .join("io.containerd.runtime.v2.task/k8s.io")
                .join(id)
                .join("config.json");
        let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let mut keys: Vec<String> = spec["annotations"]
            .as_object()
            .map(|m| {
                m.keys()
                    .filter(|k| !k.starts_with("io.kubernetes.cri."))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        keys.sort();
        keys
    };
    for (handler, want_pod, want_ctr) in [
        ("", vec![], vec![]),
        (
            "open",
            vec!["example.com/trace"],
            vec!["example.com/trace", "org.systemd.property.CPUQuota"],
        ),
    ] {
        let mut cfg = kubelet_pod(w.pod_config(if handler.is_empty() { "closed" } else { handler }));
        cfg.annotations = hostile.clone().into();
        let pod = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: handler.into(),
            })
            .await
            .expect("RunPodSandbox")
            .into_inner()
            .pod_sandbox_id;
        let mut c = own_pid(container_config("app", "exec sleep 3600"));
        c.annotations = hostile.clone().into();
        let app = create_and_start(&mut rt, &pod, &cfg, c).await;
        assert_eq!(annotations_of(&app), want_ctr, "container of handler {handler:?}");
        assert!(has_pause_container(&mut rt, &pod).await);
        assert_eq!(annotations_of(&pod), want_pod, "pause of handler {handler:?}");
        stop_and_remove(&mut rt, &pod).await;
    }
    w.assert_no_pod_left();
}

/// What Status reports for the default handler (runc): recursive read-only mounts where
/// runc lists `rro` and the kernel has mount_setattr (both true on this host); no user
/// namespaces; SupplementalGroupsPolicy.
async fn features(rt: &mut RuntimeServiceClient<Channel>) -> (cri::RuntimeHandlerFeatures, bool) {
    let s = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    let default = s
        .runtime_handlers
        .iter()
        .find(|h| h.name.is_empty())
        .expect("the \"\" handler");
    let runc = s
        .runtime_handlers
        .iter()
        .find(|h| h.name == "runc")
        .expect("runc");
    assert_eq!(
        default.features, runc.features,
        "\"\" is the default handler, runc"
    );
    (
        default.features.unwrap(),
        s.features.unwrap().supplemental_groups_policy,
    )
}

/// A recursive read-only CRI mount is read-only down to its submounts (runc's `rro`), where a
/// plain read-only one leaves a submount writable; the CRI API's refusals (not readonly, not
/// PRIVATE) are InvalidArgument with nothing created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn recursive_read_only_mounts_reach_submounts() {
    let w = World::new(70 + (std::process::id() % 20) as u8, "");
    let (mut rt, mut images) = w.clients().await;
    let (f, _) = features(&mut rt).await;
    assert!(f.recursive_read_only_mounts, "{f:?}");
    pull(&mut images, "busybox", None).await;
    let vol = w.dir.path().join("vol");
    let mut host = HostMounts(Vec::new());
    host.bind_self(&vol, "private");
    host.tmpfs(&vol.join("sub"));
    let cfg = kubelet_pod(w.pod_config("rro"));
    let pod = run_pod(&mut rt, &cfg, "RunPodSandbox").await;
    let with_mount = |name: &str, readonly: bool, rro: bool, propagation: cri::MountPropagation| {
        let mut c = own_pid(with_security(
            container_config(name, "exec sleep 3600"),
            cri::LinuxContainerSecurityContext {
                run_as_user: Some(cri::Int64Value { value: 0 }),
                ..Default::default()
            },
        ));
        c.mounts = vec![cri::Mount {
            readonly,
            recursive_read_only: rro,
            ..mount_of(&vol, "/vol", propagation)
        }];
        c
    };
    use cri::MountPropagation::{PropagationHostToContainer, PropagationPrivate};
    for (readonly, propagation, why) in [
        (false, PropagationPrivate, "readonly"),
        (true, PropagationHostToContainer, "PROPAGATION_PRIVATE"),
    ] {
        let e = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(with_mount("refused", readonly, true, propagation)),
                sandbox_config: Some(cfg.clone()),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().contains("recursive_read_only") && e.message().contains(why),
            "{e:?}"
        );
    }
    assert!(container_names(&mut rt).await.is_empty());

    let rro = create_and_start(
        &mut rt,
        &pod,
        &cfg,
        with_mount("rro", true, true, PropagationPrivate),
    )
    .await;
    let ro = create_and_start(
        &mut rt,
        &pod,
        &cfg,
        with_mount("ro", true, false, PropagationPrivate),
    )
    .await;
    let (out, code) = sh(&mut rt, &rro, "touch /vol/sub/x").await;
    assert!(
        code != 0 && out.contains("Read-only file system"),
        "rro submount: {code} {out}"
    );
    let (out, code) = sh(&mut rt, &rro, "touch /vol/y").await;
    assert!(
        code != 0 && out.contains("Read-only file system"),
        "rro top: {code} {out}"
    );
    assert_eq!(
        sh(&mut rt, &ro, "touch /vol/sub/x && echo ok").await,
        ("ok\n".into(), 0),
        "plain ro is not recursive"
    );
    stop_and_remove(&mut rt, &pod).await;
    drop(host);
    w.assert_no_pod_left();
}

/// SupplementalGroupsPolicy: Merge (the default) adds the image's /etc/group memberships of
/// the user to the pod spec's groups, Strict keeps only the pod spec's; `id -G` inside and
/// ContainerStatus.user agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn supplemental_groups_policy_merge_and_strict() {
    let w = World::new(90 + (std::process::id() % 20) as u8, "");
    let mut groupy = busybox_image();
    groupy
        .layers
        .push(support::registry::LayerBuilder::new().dir("etc").file(
            "etc/group",
            "root:x:0:\nnogroup:x:65534:\nextra:x:2000:nobody\nmore:x:3000:other,nobody\n",
        ));
    let mut layout = OciLayout::new();
    layout.add_image("latest", &groupy.build());
    w.registry.push(&layout, "latest", "library/groupy", "latest");
    let (mut rt, mut images) = w.clients().await;
    assert!(features(&mut rt).await.1, "SupplementalGroupsPolicy reported");
    pull(&mut images, "groupy", None).await;
    let cfg = kubelet_pod(w.pod_config("groups"));
    let pod = run_pod(&mut rt, &cfg, "RunPodSandbox").await;
    for (policy, want) in [
        (
            cri::SupplementalGroupsPolicy::Merge,
            vec![65534, 2000, 3000, 5555],
        ),
        (cri::SupplementalGroupsPolicy::Strict, vec![65534, 5555]),
    ] {
        let mut c = own_pid(with_security(
            container_config(policy.as_str_name(), "exec sleep 3600"),
            cri::LinuxContainerSecurityContext {
                supplemental_groups: vec![5555],
                supplemental_groups_policy: policy as i32,
                ..Default::default()
            },
        ));
        c.image = image_spec("groupy");
        let id = create_and_start(&mut rt, &pod, &cfg, c).await;
        let (out, code) = sh(&mut rt, &id, "id -G").await;
        assert_eq!(code, 0, "{out}");
        let mut seen: Vec<i64> = out.split_whitespace().map(|g| g.parse().unwrap()).collect();
        seen.sort();
        let mut sorted = want.clone();
        sorted.sort();
        assert_eq!(seen, sorted, "{policy:?}: id -G");
        let user = status(&mut rt, &id)
            .await
            .user
            .and_then(|u| u.linux)
            .expect("ContainerStatus.user");
        assert_eq!((user.uid, user.gid), (65534, 65534), "{policy:?}");
        assert_eq!(user.supplemental_groups, want, "{policy:?}: status");
    }
    stop_and_remove(&mut rt, &pod).await;
    w.assert_no_pod_left();
}

/// The exec dirs of container `id` left under the CRI state dir.
fn exec_dirs(d: &Daemon, id: &str) -> Vec<PathBuf> {
    std::fs::read_dir(
        d.state
            .join("io.containerd.cri.v1.cri/containers")
            .join(id)
            .join("exec"),
    )
    .map(|e| e.flatten().map(|e| e.path()).collect())
    .unwrap_or_default()
}

/// ExecSync never hangs (issue: `sh -c 'sleep 600 & echo ok'` kept containerd 1.6 and taskd
/// waiting for an EOF the background child never gives): 100 such probes return `ok` within
/// their drain bound and leave no exec state or exec process behind; a caller that goes away
/// (its deadline) gets its exec process killed and its state removed all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn exec_sync_with_a_background_child_returns_and_leaves_nothing() {
    let w = World::with_cri_config(
        110 + (std::process::id() % 10) as u8,
        "",
        "drain_exec_sync_io_timeout = \"300ms\"",
    );
    let (mut rt, mut images) = w.clients().await;
    pull(&mut images, "busybox", None).await;
    let cfg = kubelet_pod(w.pod_config("probes"));
    let pod = run_pod(&mut rt, &cfg, "RunPodSandbox").await;
    let id = create_and_start(
        &mut rt,
        &pod,
        &cfg,
        own_pid(container_config("app", "exec sleep 3600")),
    )
    .await;
    let before = w.d.task_pids(&id);
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (mut rt, id) = (rt.clone(), id.clone());
        set.spawn(async move {
            for _ in 0..10 {
                let r = rt
                    .exec_sync(cri::ExecSyncRequest {
                        container_id: id.clone(),
                        cmd: vec!["sh".into(), "-c".into(), "sleep 600 & echo ok".into()],
                        timeout: 5,
                    })
                    .await
                    .expect("ExecSync with a background child")
                    .into_inner();
                assert_eq!((r.stdout.as_slice(), r.exit_code), (&b"ok\n"[..], 0));
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    eprintln!("100 probes with a background child: {:?}", t0.elapsed());
    assert!(exec_dirs(&w.d, &id).is_empty(), "{:?}", exec_dirs(&w.d, &id));
    // What is left is the container's own: its init and the 100 backgrounded sleeps (the
    // probes' children, reparented), no exec shell.
    assert_eq!(w.d.task_pids(&id), before + 100);

    // A caller that gives up after 1 s: the exec process is killed and removed anyway.
    let mut req = tonic::Request::new(cri::ExecSyncRequest {
        container_id: id.clone(),
        cmd: vec!["sleep".into(), "30".into()],
        timeout: 0,
    });
    req.set_timeout(Duration::from_secs(1));
    let e = rt.exec_sync(req).await.unwrap_err();
    // tonic's own timer ends the call on the client side.
    assert!(
        matches!(e.code(), tonic::Code::Cancelled | tonic::Code::DeadlineExceeded),
        "{e:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while (w.d.task_pids(&id) != before + 100 || !exec_dirs(&w.d, &id).is_empty())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        w.d.task_pids(&id),
        before + 100,
        "the abandoned exec's sleep is killed"
    );
    assert!(exec_dirs(&w.d, &id).is_empty(), "{:?}", exec_dirs(&w.d, &id));
    stop_and_remove(&mut rt, &pod).await;
    w.assert_no_pod_left();
}

/// A static probe (C, built here with gcc) that makes the syscalls RuntimeDefault must
/// refuse and prints `name return errno` for each, then whether a thread starts.
const SYSCALL_PROBE: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
static void *thread(void *a) { return a; }
static void probe(const char *name, long r) { printf("%s %ld %d\n", name, r, r < 0 ? errno : 0); }
int main(void) {
    unsigned params[30] = {0};
    probe("io_uring_setup", syscall(SYS_io_uring_setup, 1, params));
    probe("keyctl", syscall(SYS_keyctl, 0, -3, 0));
    probe("unshare", syscall(SYS_unshare, CLONE_NEWUSER));
    probe("unlisted", syscall(SYS_uselib, 0));
    pthread_t t;
    int e = pthread_create(&t, 0, thread, 0);
    if (e == 0) pthread_join(t, 0);
    printf("pthread_create %d\n", e);
    return 0;
}
"#;

/// `name → errno` (0: the call succeeded) from the probe's output.
fn probe_errnos(out: &str) -> std::collections::HashMap<String, i64> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [name, _, errno] => Some((name.to_string(), errno.parse().ok()?)),
                [name, e] => Some((name.to_string(), e.parse().ok()?)),
                _ => None,
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry, gcc (static libc)"]
async fn runtime_default_seccomp_denies_what_it_does_not_list() {
    use cri::security_profile::ProfileType;
    let w = World::new(130 + (std::process::id() % 20) as u8, "");
    let bin = w.dir.path().join("probe-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let src = w.dir.path().join("probe.c");
    std::fs::write(&src, SYSCALL_PROBE).unwrap();
    run_ok(
        Command::new("gcc")
            .args(["-static", "-O1", "-pthread", "-o"])
            .arg(bin.join("probe"))
            .arg(&src),
    );
    let (mut rt, mut images) = w.clients().await;
    pull(&mut images, "busybox", None).await;
    let cfg = w.pod_config("seccomp");
    let pod = run_pod(&mut rt, &cfg, "RunPodSandbox").await;
    let with_probe = |name: &str, profile: ProfileType| {
        let mut c = with_security(
            container_config(name, "exec sleep 3600"),
            cri::LinuxContainerSecurityContext {
                seccomp: seccomp(profile, ""),
                ..Default::default()
            },
        );
        c.mounts = vec![cri::Mount {
            container_path: "/probe".into(),
            host_path: bin.display().to_string(),
            readonly: true,
            ..Default::default()
        }];
        c
    };
    let dflt = create_and_start(
        &mut rt,
        &pod,
        &cfg,
        with_probe("dflt", ProfileType::RuntimeDefault),
    )
    .await;
    let open = create_and_start(&mut rt, &pod, &cfg, with_probe("open", ProfileType::Unconfined)).await;

    // The profile in config.json is deny-by-default.
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            w.d.state
                .join(format!("io.containerd.runtime.v2.task/k8s.io/{dflt}/config.json")),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        config["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO",
        "{}",
        config["linux"]["seccomp"]
    );

    let (out, code) = sh(&mut rt, &dflt, "/probe/probe").await;
    assert_eq!(code, 0, "{out}");
    let seen = probe_errnos(&out);
    for call in ["io_uring_setup", "keyctl", "unshare", "unlisted"] {
        assert_eq!(
            seen.get(call),
            Some(&(libc::EPERM as i64)),
            "{call} under RuntimeDefault: {out}"
        );
    }
    assert_eq!(
        seen.get("pthread_create"),
        Some(&0),
        "threads start (clone3 → ENOSYS → clone): {out}"
    );
    let (out, code) = sh(&mut rt, &dflt, "ls / >/dev/null && echo listed").await;
    assert_eq!((out.trim(), code), ("listed", 0));

    // Unconfined, the same calls reach the kernel: the unlisted one (uselib) answers ENOSYS
    // or EFAULT there, so the EPERM above came from the profile's default action. (A number
    // above every syscall libseccomp knows gets ENOSYS from runc's filter either way, so
    // that glibc's fallbacks for calls newer than libseccomp work.)
    let (out, code) = sh(&mut rt, &open, "/probe/probe").await;
    assert_eq!(code, 0, "{out}");
    let seen = probe_errnos(&out);
    let unlisted = seen.get("unlisted").copied();
    assert!(unlisted.is_some_and(|e| e != libc::EPERM as i64), "{out}");
    assert_eq!(seen.get("pthread_create"), Some(&0), "{out}");
    stop_and_remove(&mut rt, &pod).await;
}

/// A chained CNI plugin that sleeps 3 s on ADD, then passes the bridge's result on, or
/// fails when `<dir>/cni-fail` exists.
const SLOW_CNI: &str = r#"#!/bin/sh
case "$CNI_COMMAND" in
ADD)
    sleep 3
    if [ -e "$FAIL_MARKER" ]; then
        echo '{"cniVersion":"1.0.0","code":11,"msg":"told to fail"}'
        exit 1
    fi
    exec python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["prevResult"]))' ;;
VERSION)
    echo '{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}' ;;
esac
"#;

async fn run_pod_within(
    rt: &mut RuntimeServiceClient<Channel>,
    cfg: &cri::PodSandboxConfig,
    deadline: Duration,
) -> Result<String, tonic::Status> {
    let mut req = tonic::Request::new(cri::RunPodSandboxRequest {
        config: Some(cfg.clone()),
        runtime_handler: String::new(),
    });
    req.set_timeout(deadline);
    rt.run_pod_sandbox(req)
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

async fn pods_named(rt: &mut RuntimeServiceClient<Channel>, name: &str) -> Vec<cri::PodSandbox> {
    rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items
        .into_iter()
        .filter(|p| p.metadata.as_ref().is_some_and(|m| m.name == name))
        .collect()
}

/// kubelet's deadline passing mid-RunPodSandbox cuts nothing short: the call finishes or
/// rolls back in a task of its own, and kubelet's retry finds a consistent state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry, python3"]
async fn run_pod_sandbox_past_the_callers_deadline_finishes_or_rolls_back() {
    let w = World::new(150 + (std::process::id() % 20) as u8, r#",{"type":"slow-cni"}"#);
    let plugin = w.dir.path().join("cni-bin/slow-cni");
    let marker = w.dir.path().join("cni-fail");
    std::fs::write(
        &plugin,
        SLOW_CNI.replace("$FAIL_MARKER", &marker.display().to_string()),
    )
    .unwrap();
    run_ok(Command::new("chmod").arg("0755").arg(&plugin));
    let (mut rt, mut images) = w.clients().await;
    pull(&mut images, "busybox", None).await;

    // 1. The CNI ADD fails after the caller has gone: the rollback still runs to the end.
    std::fs::write(&marker, "").unwrap();
    let cfg = w.pod_config("slow");
    let first = run_pod_within(&mut rt, &cfg, Duration::from_secs(1)).await;
    let code = first.as_ref().map_err(|s| s.code());
    assert!(
        matches!(code, Err(tonic::Code::DeadlineExceeded | tonic::Code::Cancelled)),
        "{first:?}"
    );
    // The call runs on and rolls back: no record, netns, IP lease or shim is left.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pods_named(&mut rt, "slow").await.is_empty() {
        assert!(Instant::now() < deadline, "the failed call was not rolled back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    w.assert_no_pod_left();

    // 2. The retry of a failed, abandoned call runs afresh; this time it gives up the
    // caller again, but succeeds in its own task: the retry gets that pod, not a second.
    std::fs::remove_file(&marker).unwrap();
    let first = run_pod_within(&mut rt, &cfg, Duration::from_secs(1)).await;
    assert!(first.is_err(), "{first:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let retry = run_pod_within(&mut rt, &cfg, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("retry: {e:?}\n{}", w.d.log()));
    let pods = pods_named(&mut rt, "slow").await;
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(
        (pods[0].id.as_str(), pods[0].state),
        (retry.as_str(), cri::PodSandboxState::SandboxReady as i32)
    );
    assert_eq!(w.ipam_leases().len(), 1, "one IP: {:?}", w.ipam_leases());
    assert_eq!(netns_pins(&w.d).len(), 1);

    // A plain second RunPodSandbox of the same pod, its caller present, is refused as before.
    let dup = run_pod_within(&mut rt, &cfg, Duration::from_secs(30)).await;
    assert_eq!(dup.map_err(|s| s.code()), Err(tonic::Code::AlreadyExists));

    stop_and_remove(&mut rt, &retry).await;
    w.assert_no_pod_left();
}

/// One scrape over a fresh connection: the HTTP status (0: no answer).
async fn scrape_status(addr: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    let req = format!("GET /v1/metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Pods start while waves of 500 parallel scrapes run: each scrape is answered (200, or 503
/// when 64 wait already), the scrapes share collections, and every pod starts. The start
/// times of the quiet and the flooded pods are printed (timing is measured by benchmarks,
/// not asserted here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn a_scrape_flood_is_bounded_and_pods_still_start() {
    let w = World::new(170 + (std::process::id() % 20) as u8, "");
    let (mut rt, mut images) = w.clients().await;
    pull(&mut images, "busybox", None).await;
    let start_pods = |prefix: &'static str| {
        let mut rt = rt.clone();
        let w = &w;
        async move {
            let mut took = Vec::new();
            for i in 0..4 {
                let name = format!("{prefix}{i}");
                let cfg = w.pod_config(&name);
                let t = Instant::now();
                let pod = run_pod(&mut rt, &cfg, "RunPodSandbox").await;
                create_and_start(&mut rt, &pod, &cfg, container_config(&name, "exec sleep 3600")).await;
                took.push(t.elapsed());
            }
            took
        }
    };
    let quiet = start_pods("quiet").await;
    let before = w.d.http("/v1/metrics", None).1;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = w.d.metrics_addr.clone();
    let flood = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut codes: std::collections::BTreeMap<u16, usize> = Default::default();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let wave: Vec<_> = (0..500)
                    .map(|_| {
                        let addr = addr.clone();
                        tokio::spawn(async move { scrape_status(&addr).await })
                    })
                    .collect();
                for h in wave {
                    *codes.entry(h.await.unwrap_or(0)).or_default() += 1;
                }
            }
            codes
        })
    };
    let flooded = start_pods("flood").await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let codes = flood.await.unwrap();
    eprintln!(
        "pod start (RunPodSandbox + CreateContainer + StartContainer): quiet {quiet:?}, under the flood {flooded:?}; scrapes {codes:?}"
    );

    let total: usize = codes.values().sum();
    assert!(total >= 500, "{codes:?}");
    assert!(
        codes.keys().all(|c| *c == 200 || *c == 503),
        "every scrape is answered 200 or 503: {codes:?}"
    );
    let after = w.d.http("/v1/metrics", None).1;
    let collections = sample(&after, "taskd_metrics_collections_total", &[]).unwrap_or(0.0)
        - sample(&before, "taskd_metrics_collections_total", &[]).unwrap_or(0.0);
    assert!(
        collections < (total / 10) as f64,
        "{total} scrapes took {collections} collections"
    );
    let refused = ["busy", "timeout"]
        .iter()
        .map(|r| sample(&after, "taskd_metrics_scrapes_refused_total", &[("reason", r)]).unwrap_or(0.0))
        .sum::<f64>();
    assert_eq!(
        refused as usize,
        codes.get(&503).copied().unwrap_or(0),
        "{codes:?}"
    );
    let (running, _, _) = containers_by_state(&mut rt).await;
    assert_eq!(running, 8, "every container runs");
    for p in ["quiet", "flood"] {
        for i in 0..4 {
            for pod in pods_named(&mut rt, &format!("{p}{i}")).await {
                stop_and_remove(&mut rt, &pod.id).await;
            }
        }
    }
    w.assert_no_pod_left();
}

/// SIGHUP through a real daemon with a pod: a handler the pod uses is kept although the new
/// file drops it (and removed by the next SIGHUP once the pod is gone); the images service's
/// registries are replaced, so a registry name that only a new mirror serves pulls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn sighup_keeps_a_handler_pods_use_and_applies_new_registries() {
    let w = World::with_cri_config(
        190 + (std::process::id() % 20) as u8,
        "",
        &format!("[{CRI}.runtimes.alt]\nruntime_type = \"io.containerd.runc.v2\"\n"),
    );
    let (mut rt, mut images) = w.clients().await;
    pull(&mut images, "busybox", None).await;
    let cfg = kubelet_pod(w.pod_config("alt"));
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: "alt".into(),
        })
        .await
        .expect("RunPodSandbox alt")
        .into_inner()
        .pod_sandbox_id;
    // A loopback "registry" nothing listens on: only a mirror can serve it.
    let nowhere = format!("127.0.0.1:{}", support::free_port());
    let image = format!("{nowhere}/library/busybox:latest");
    let e = images
        .pull_image(cri::PullImageRequest {
            image: image_spec(&image),
            auth: None,
            sandbox_config: None,
        })
        .await
        .expect_err("no mirror yet");
    assert!(e.message().contains(&nowhere), "{e:?}");

    let mirror = format!("http://{}", w.registry.addr);
    let drop_alt_add_mirror = |cfg: &mut toml::Table| {
        let plugins = cfg["plugins"].as_table_mut().unwrap();
        let cri = plugins["io.containerd.cri.v1.cri"].as_table_mut().unwrap();
        cri.remove("runtimes");
        let regs = plugins["io.containerd.service.v1.images-service"]["registries"]
            .as_table_mut()
            .unwrap();
        let mut entry = toml::Table::new();
        entry.insert("mirrors".into(), toml::Value::Array(vec![mirror.clone().into()]));
        regs.insert(nowhere.clone(), toml::Value::Table(entry));
    };
    let log = w.d.reload_with(drop_alt_add_mirror);
    assert!(log.contains("SIGHUP: config reloaded"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("runtime handler kept") && l.contains("alt")),
        "{log}"
    );
    let handlers = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .runtime_handlers;
    assert!(handlers.iter().any(|h| h.name == "alt"), "{handlers:?}");
    pull(&mut images, &image, None).await;

    stop_and_remove(&mut rt, &pod).await;
    let log = w.d.sighup_and_wait();
    assert!(log.contains("runtimes.alt removed"), "{log}");
    let handlers = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .runtime_handlers;
    assert!(!handlers.iter().any(|h| h.name == "alt"), "{handlers:?}");
    w.assert_no_pod_left();
}

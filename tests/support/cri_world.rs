//! A real taskd with its CRI plugin, ready for pods: a local registry with busybox
//! (`docker.io/library/busybox:latest`) and the sandbox image (`registry.k8s.io/pause:3.10`,
//! busybox sleeping), a CNI conf dir (bridge + host-local on a private /24, no masquerade, no
//! default route: nothing leaves the machine), and the k8s-cri client for set-up. The one
//! world of every CRI test binary (`support::cri_world`).
//!
//! Two kinds of world, one type:
//! - [`CriWorld::start`]: plain busybox (`sh`, root), subnet 10.89.<base + n>.0/24 (one per
//!   world of a binary), for the tests that drive pods through independent clients;
//! - [`CriWorld::kubelet`]: busybox as kubelet pulls it (entrypoint, cmd, env, user `nobody`,
//!   working dir; also tagged `1.36`), subnet 10.88.<octet>.0/24 named by the test, and a
//!   test's own CNI plugins after the bridge, for the CRI area tests (`tests/cri_*.rs`).
//!
//! Subnets must stay distinct between the worlds of one test binary (they run in parallel;
//! binaries run one after another): each `tests/cri_*.rs` test names its own 10.88 octet.
//!
//! Clean-up (also on panic): the daemon and its shims and mounts (support), the pods' netns
//! pins, the bridge, the pods' cgroup parent, the registry.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crate::support::Daemon;
use crate::support::registry::{BuiltImage, ImageBuilder, OciLayout, Registry};
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

pub const CRI: &str = "plugins.\"io.containerd.cri.v1.cri\"";
pub const IMAGES: &str = "plugins.\"io.containerd.service.v1.images-service\"";
/// The environment the kubelet-style busybox image sets.
pub const GREETING: &str = "GREETING=from-image";
/// The name of the worlds' CNI network (host-local keeps its leases under it).
const NETWORK: &str = "taskd-world";

/// The busybox image kubelet pulls: entrypoint, cmd, env, user and working dir set.
pub fn kubelet_busybox_image() -> ImageBuilder {
    let mut b = ImageBuilder::busybox();
    b.entrypoint = vec!["/bin/sh".into(), "-c".into()];
    b.cmd = vec!["echo $GREETING; id; pwd; exec sleep 3600".into()];
    b.env.push(GREETING.into());
    b.user = "nobody".into();
    b.working_dir = "/tmp".into();
    b
}

/// The sandbox image: busybox sleeping.
pub fn pause_image() -> ImageBuilder {
    let mut b = ImageBuilder::busybox();
    b.entrypoint = vec!["/bin/sleep".into(), "2147483647".into()];
    b.cmd = Vec::new();
    b
}

pub struct CriWorld {
    pub server: Daemon,
    pub registry: Registry,
    pub dir: tempfile::TempDir,
    pub bridge: String,
    /// The third octet of the pods' subnet (10.88.<octet>.0/24 or 10.89.<octet>.0/24).
    pub octet: u8,
    /// The image pushed as `library/busybox:latest`.
    pub busybox: BuiltImage,
}

impl Drop for CriWorld {
    fn drop(&mut self) {
        // The daemon and its shims first (a failed test leaves pods running), so the pods'
        // cgroups empty; the daemon's own drop repeats this harmlessly.
        self.server.kill9();
        // Shims killed; everything mounted under the state dir (pod netns, IPC/UTS pins,
        // /dev/shm, rootfs) unmounted.
        crate::support::cleanup::after_daemon(&self.server.state);
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
        // The pods' cgroup parent, once the kernel released the dead containers' cgroups.
        crate::support::cleanup::remove_cgroup_parent(&self.cgroup_parent());
    }
}

/// A /24 of its own for each world of this test binary: 10.89.<base + n>.0/24.
fn next_octet(base: u8) -> u8 {
    static N: AtomicU8 = AtomicU8::new(0);
    base.wrapping_add(N.fetch_add(1, Ordering::Relaxed) % 50)
}

/// What differs between worlds.
struct Spec<'a> {
    /// The pods' subnet: 10.<net>.<octet>.0/24.
    net: u8,
    octet: u8,
    busybox: ImageBuilder,
    /// More tags of busybox (`library/busybox:<tag>`).
    tags: &'a [&'a str],
    /// CNI plugins after the bridge (JSON objects, each with a leading comma).
    cni_extra: &'a str,
    /// Added to the CRI plugin's table.
    cri_extra: &'a str,
    /// Whole TOML tables added to taskd's config.
    tables: &'a str,
}

impl CriWorld {
    /// A world around taskd whose subnet octets start at `octet_base` (one per world, 50
    /// at most), with `cri_extra` added to the CRI plugin's table.
    pub fn start(octet_base: u8, cri_extra: &str) -> CriWorld {
        CriWorld::start_with_tables(octet_base, cri_extra, "")
    }

    /// [`CriWorld::start`] with `tables` (whole TOML tables, e.g. `[tracing]`) added to
    /// taskd's config.
    pub fn start_with_tables(octet_base: u8, cri_extra: &str, tables: &str) -> CriWorld {
        CriWorld::launch(Spec {
            net: 89,
            octet: next_octet(octet_base),
            busybox: ImageBuilder::busybox(),
            tags: &[],
            cni_extra: "",
            cri_extra,
            tables,
        })
    }

    /// A world whose busybox is kubelet's (also tagged `1.36`), on 10.88.<octet>.0/24, with
    /// `cni_extra` plugins after the bridge (JSON objects, each with a leading comma; a test's
    /// own plugins go in `<dir>/cni-bin`, searched before /usr/lib/cni) and `cri_extra` in the
    /// CRI plugin's table.
    pub fn kubelet(octet: u8, cni_extra: &str, cri_extra: &str) -> CriWorld {
        CriWorld::launch(Spec {
            net: 88,
            octet,
            busybox: kubelet_busybox_image(),
            tags: &["1.36"],
            cni_extra,
            cri_extra,
            tables: "",
        })
    }

    fn launch(spec: Spec) -> CriWorld {
        crate::support::require(&[
            crate::support::Need::Root,
            crate::support::Need::Bin("runc", "runc"),
            crate::support::Need::Bin("containerd-shim-runc-v2", "containerd"),
            crate::support::Need::Bin("ip", "iproute2"),
        ]);
        crate::support::require(&crate::support::CNI_PLUGINS);
        let registry = Registry::start();
        let busybox = spec.busybox.build();
        let mut layout = OciLayout::new();
        layout.add_image("busybox", &busybox);
        layout.add_image("pause", &pause_image().build());
        registry.push(&layout, "busybox", "library/busybox", "latest");
        for tag in spec.tags {
            registry.push(&layout, "busybox", "library/busybox", tag);
        }
        registry.push(&layout, "pause", "pause", "3.10");

        let dir = tempfile::Builder::new()
            .prefix("taskd-cri-world")
            .tempdir()
            .expect("create the world's temp dir");
        let (net, octet) = (spec.net, spec.octet);
        let bridge = format!("tk{net}-{}-{octet}", std::process::id() % 100_000);
        let conf_dir = dir.path().join("net.d");
        std::fs::create_dir(&conf_dir).expect("create the CNI conf dir");
        // A test's own plugins go here; the system's after them.
        let cni_bin = dir.path().join("cni-bin");
        std::fs::create_dir(&cni_bin).expect("create the test's CNI bin dir");
        std::fs::write(
            conf_dir.join("10-world.conflist"),
            format!(
                r#"{{"cniVersion":"1.0.0","name":"{NETWORK}","plugins":[
                  {{"type":"bridge","bridge":"{bridge}","isGateway":false,"ipMasq":false,
                    "ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"10.{net}.{octet}.0/24"}}]]}}}}
                  {}]}}"#,
                dir.path().join("ipam").display(),
                spec.cni_extra
            ),
        )
        .expect("write the CNI conf");
        let mirror = format!("[\"http://{}\"]", registry.addr);
        let server = Daemon::start_with(&format!(
            "[{IMAGES}.registries.\"docker.io\"]\nmirrors = {mirror}\n\
             [{IMAGES}.registries.\"registry.k8s.io\"]\nmirrors = {mirror}\n\
             [{CRI}]\nsandbox_image = \"registry.k8s.io/pause:3.10\"\n{}\n\
             [{CRI}.cni]\nconf_dir = {:?}\nbin_dirs = [{:?}, \"/usr/lib/cni\"]\n{}\n",
            spec.cri_extra,
            conf_dir.display().to_string(),
            cni_bin.display().to_string(),
            spec.tables
        ));
        CriWorld {
            server,
            registry,
            dir,
            bridge,
            octet,
            busybox,
        }
    }

    /// The k8s-cri runtime and image clients.
    pub async fn clients(&self) -> (RuntimeServiceClient<Channel>, ImageServiceClient<Channel>) {
        let ch = self.server.channel().await;
        (RuntimeServiceClient::new(ch.clone()), ImageServiceClient::new(ch))
    }

    /// Nothing of any pod is left: no shim bundle, pinned netns or IPC/UTS namespaces, IP.
    pub fn assert_no_pod_left(&self) {
        assert!(self.bundles().is_empty(), "shims left: {:?}", self.bundles());
        assert!(
            netns_pins(&self.server).is_empty(),
            "netns left: {:?}",
            netns_pins(&self.server)
        );
        assert!(
            podns_pins(&self.server).is_empty(),
            "podns left: {:?}",
            podns_pins(&self.server)
        );
        assert!(
            self.ipam_leases().is_empty(),
            "IPs left: {:?}",
            self.ipam_leases()
        );
    }

    /// IPs host-local has handed out.
    pub fn ipam_leases(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("ipam").join(NETWORK))
            .map(|e| {
                e.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("10."))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Task bundles the shim manager holds in k8s.io (a shim per bundle).
    pub fn bundles(&self) -> Vec<PathBuf> {
        std::fs::read_dir(
            self.server
                .state
                .join("io.containerd.runtime.v2.task")
                .join("k8s.io"),
        )
        .map(|e| e.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
    }

    /// The taskd of this world.
    pub fn taskd(&self) -> &Daemon {
        &self.server
    }

    /// The CRI socket.
    pub fn socket(&self) -> &Path {
        &self.server.socket
    }

    /// The server's log so far.
    pub fn server_log(&self) -> String {
        self.server.log()
    }

    /// The k8s-cri runtime client (set-up only; the tests' checks go through the
    /// independent clients).
    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(crate::support::unix_channel(self.socket()).await)
    }

    pub fn cgroup_parent(&self) -> String {
        let tail = self
            .dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("/taskd-cri-world-{}-{tail}", std::process::id())
    }

    /// A pod config (its log directory exists, as kubelet makes it).
    pub fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        let logs = self.dir.path().join("logs").join(name);
        std::fs::create_dir_all(&logs).expect("create the pod's log dir");
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: logs.display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The same pod in the host's network namespace.
    pub fn host_network_pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        let mut cfg = self.pod_config(name);
        // The host's UTS namespace too (containerd refuses a hostname there).
        cfg.hostname = String::new();
        let linux = cfg.linux.get_or_insert_with(Default::default);
        linux
            .security_context
            .get_or_insert_with(Default::default)
            .namespace_options
            .get_or_insert_with(Default::default)
            .network = cri::NamespaceMode::Node as i32;
        cfg
    }

    /// The CRI log of container `name` of pod `pod` (see [`container`]).
    pub fn log(&self, pod: &str, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("logs").join(pod).join(format!("{name}.log")))
            .unwrap_or_default()
    }

    /// PullImage busybox, RunPodSandbox `cfg`; the pod id.
    pub async fn run_pod(
        &self,
        rt: &mut RuntimeServiceClient<Channel>,
        cfg: &cri::PodSandboxConfig,
    ) -> String {
        let mut images = k8s_cri::v1::image_service_client::ImageServiceClient::new(
            crate::support::unix_channel(self.socket()).await,
        );
        images
            .pull_image(cri::PullImageRequest {
                image: image_spec("busybox"),
                auth: None,
                sandbox_config: None,
            })
            .await
            .unwrap_or_else(|e| panic!("PullImage busybox: {e:?}"));
        rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e:?}\n--- server log ---\n{}", self.server_log()))
        .into_inner()
        .pod_sandbox_id
    }

    /// CreateContainer + StartContainer; the container id.
    pub async fn start_container(
        &self,
        rt: &mut RuntimeServiceClient<Channel>,
        pod: &str,
        pod_cfg: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> String {
        crate::support::cri_client::create_and_start(rt, pod, pod_cfg, config).await
    }

    /// A pod with one container running `script`; (pod id, container id).
    pub async fn pod_with(
        &self,
        rt: &mut RuntimeServiceClient<Channel>,
        name: &str,
        script: &str,
    ) -> (String, String) {
        let cfg = self.pod_config(name);
        let pod = self.run_pod(rt, &cfg).await;
        let id = self
            .start_container(rt, &pod, &cfg, container(name, script))
            .await;
        (pod, id)
    }
}

pub fn image_spec(s: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: s.into(),
        ..Default::default()
    })
}

/// A busybox container named `name` running `sh -c script`, logging to `<name>.log`.
pub fn container(name: &str, script: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: image_spec("busybox"),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

/// Polls `f` every 100 ms until it holds; panics with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The entries of `<plugin state>/<dir>` under the daemon's state dir, for every plugin.
pub fn state_entries(d: &Daemon, dir: &str) -> Vec<PathBuf> {
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
pub fn netns_pins(d: &Daemon) -> Vec<PathBuf> {
    state_entries(d, "netns")
}

/// The pinned IPC/UTS namespaces of pods without a pause container (one dir per pod).
pub fn podns_pins(d: &Daemon) -> Vec<PathBuf> {
    state_entries(d, "podns")
}

/// What kubelet sends for a pod that does not share one process namespace (the usual pod):
/// pid mode CONTAINER for the pod, so taskd runs it without a pause container.
pub fn kubelet_pod(mut cfg: cri::PodSandboxConfig) -> cri::PodSandboxConfig {
    let l = cfg.linux.get_or_insert_with(Default::default);
    let sc = l.security_context.get_or_insert_with(Default::default);
    sc.namespace_options.get_or_insert_with(Default::default).pid = cri::NamespaceMode::Container as i32;
    cfg
}

/// What kubelet sends for a container of such a pod: its own PID namespace.
pub fn own_pid(mut c: cri::ContainerConfig) -> cri::ContainerConfig {
    let l = c.linux.get_or_insert_with(Default::default);
    let sc = l.security_context.get_or_insert_with(Default::default);
    sc.namespace_options.get_or_insert_with(Default::default).pid = cri::NamespaceMode::Container as i32;
    c
}

/// RunPodSandbox with the default handler; the pod id (`what` names the call on failure).
pub async fn run_pod(
    rt: &mut RuntimeServiceClient<Channel>,
    cfg: &cri::PodSandboxConfig,
    what: &str,
) -> String {
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
pub async fn all_of<T>(mut s: tonic::Streaming<T>) -> Vec<T> {
    let mut out = Vec::new();
    while let Some(m) = s.message().await.expect("stream message") {
        out.push(m);
    }
    out
}

/// The `infraContainer` flag of PodSandboxStatus's verbose info.
pub async fn has_pause_container(rt: &mut RuntimeServiceClient<Channel>, pod: &str) -> bool {
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

pub async fn pull(
    images: &mut ImageServiceClient<Channel>,
    r: &str,
    auth: Option<cri::AuthConfig>,
) -> String {
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

pub async fn list(images: &mut ImageServiceClient<Channel>, filter: Option<&str>) -> Vec<cri::Image> {
    images
        .list_images(cri::ListImagesRequest {
            filter: filter.map(|f| cri::ImageFilter { image: image_spec(f) }),
        })
        .await
        .expect("ListImages")
        .into_inner()
        .images
}

pub async fn wait_for<F, Fut>(what: &str, mut f: F)
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
pub fn container_config(name: &str, script: &str) -> cri::ContainerConfig {
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

/// `sh -c script` in a container through ExecSync: stdout + stderr, exit code.
pub async fn sh(rt: &mut RuntimeServiceClient<Channel>, id: &str, script: &str) -> (String, i32) {
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

/// The names of the containers ListContainers reports.
pub async fn container_names(rt: &mut RuntimeServiceClient<Channel>) -> Vec<String> {
    rt.list_containers(cri::ListContainersRequest { filter: None })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
        .into_iter()
        .filter_map(|c| c.metadata.map(|m| m.name))
        .collect()
}

pub fn with_security(
    mut c: cri::ContainerConfig,
    sec: cri::LinuxContainerSecurityContext,
) -> cri::ContainerConfig {
    let linux = c.linux.get_or_insert_with(Default::default);
    linux.security_context = Some(sec);
    c
}

/// Runs `cmd`; panics with its output unless it succeeds.
pub fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What Status reports for the default handler (runc): recursive read-only mounts where
/// runc lists `rro` and the kernel has mount_setattr (both true on this host); no user
/// namespaces; SupplementalGroupsPolicy.
pub async fn features(rt: &mut RuntimeServiceClient<Channel>) -> (cri::RuntimeHandlerFeatures, bool) {
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

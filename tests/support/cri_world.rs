//! A real taskd with its CRI plugin, ready for pods: a local registry with busybox
//! (`docker.io/library/busybox:latest`) and the sandbox image, a CNI conf dir (bridge +
//! host-local on a private /24, no masquerade, no default route: nothing leaves the
//! machine), and the k8s-cri client for set-up. Used with `#[path]` by the tests that need
//! it, next to `mod support;`.
//!
//! Clean-up (also on panic): the daemon and its shims and mounts (support), the bridge, the pods' cgroup parent, the registry.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crate::support::Daemon;
use crate::support::registry::{ImageBuilder, OciLayout, Registry};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

pub const CRI: &str = "plugins.\"io.containerd.cri.v1.cri\"";
const IMAGES: &str = "plugins.\"io.containerd.service.v1.images-service\"";

pub struct CriWorld {
    pub server: Daemon,
    pub registry: Registry,
    pub dir: tempfile::TempDir,
    pub bridge: String,
}

impl Drop for CriWorld {
    fn drop(&mut self) {
        // The daemon and its shims first, so the pods' cgroups empty.
        self.server.kill9();
        let state = self.server.state.clone();
        crate::support::cleanup::after_daemon(&state);
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
        crate::support::cleanup::remove_cgroup_parent(&self.cgroup_parent());
    }
}

/// A /24 of its own for each world of this test binary: 10.89.<base + n>.0/24.
fn next_octet(base: u8) -> u8 {
    static N: AtomicU8 = AtomicU8::new(0);
    base.wrapping_add(N.fetch_add(1, Ordering::Relaxed) % 50)
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
        let (registry, dir, bridge, conf_dir) = CriWorld::prepare(octet_base);
        let mirror = format!("[\"http://{}\"]", registry.addr);
        let d = Daemon::start_with(&format!(
            "[{IMAGES}.registries.\"docker.io\"]\nmirrors = {mirror}\n\
             [{IMAGES}.registries.\"registry.k8s.io\"]\nmirrors = {mirror}\n\
             [{CRI}]\nsandbox_image = \"registry.k8s.io/pause:3.10\"\n{cri_extra}\n\
             [{CRI}.cni]\nconf_dir = {:?}\nbin_dirs = [\"/usr/lib/cni\"]\n{tables}\n",
            conf_dir.display().to_string()
        ));
        CriWorld {
            server: d,
            registry,
            dir,
            bridge,
        }
    }

    /// Registry (busybox and pause pushed), temp dir, bridge name, CNI conf dir.
    fn prepare(octet_base: u8) -> (Registry, tempfile::TempDir, String, PathBuf) {
        crate::support::require_root();
        crate::support::require_bin("runc", "runc");
        crate::support::require_bin("containerd-shim-runc-v2", "containerd");
        for p in ["bridge", "host-local", "loopback"] {
            assert!(
                Path::new("/usr/lib/cni").join(p).is_file(),
                "install the CNI plugins (apt-get install containernetworking-plugins)"
            );
        }
        let octet = next_octet(octet_base);
        let registry = Registry::start();
        let mut layout = OciLayout::new();
        layout.add_image("busybox", &ImageBuilder::busybox().build());
        let mut pause = ImageBuilder::busybox();
        pause.entrypoint = vec!["/bin/sleep".into(), "2147483647".into()];
        pause.cmd = Vec::new();
        layout.add_image("pause", &pause.build());
        registry.push(&layout, "busybox", "library/busybox", "latest");
        registry.push(&layout, "pause", "pause", "3.10");

        let dir = tempfile::Builder::new()
            .prefix("taskd-cri-world")
            .tempdir()
            .expect("create the world's temp dir");
        let bridge = format!("tkw{}-{octet}", std::process::id() % 100_000);
        let conf_dir = dir.path().join("net.d");
        std::fs::create_dir(&conf_dir).expect("create the CNI conf dir");
        std::fs::write(
            conf_dir.join("10-world.conflist"),
            format!(
                r#"{{"cniVersion":"1.0.0","name":"taskd-world","plugins":[
                  {{"type":"bridge","bridge":"{bridge}","isGateway":false,"ipMasq":false,
                    "ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"10.89.{octet}.0/24"}}]]}}}}]}}"#,
                dir.path().join("ipam").display()
            ),
        )
        .expect("write the CNI conf");
        (registry, dir, bridge, conf_dir)
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

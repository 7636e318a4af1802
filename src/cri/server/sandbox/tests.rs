//! RunPodSandbox / StopPodSandbox / RemovePodSandbox against a fake controller (the pause
//! container) and the real CNI plugins + netns (root; /usr/lib/cni).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use taskd_proto::cri::v1 as cri;

use crate::cri::backend::contract::{ImageInfo, SandboxController, StartSandbox};
use crate::cri::config::CriConfig;
use crate::cri::container_events::ContainerEvents;
use crate::cri::error::CriError;
use crate::cri::network::netns;
use crate::cri::service::CriService;
use crate::cri::store::sandbox::SandboxState;
use crate::errdefs::{ErrorKind, Kind};

#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<String>>,
    fail_start: bool,
    specs: Mutex<Vec<oci_spec::runtime::Spec>>,
}

#[async_trait]
impl SandboxController for Fake {
    async fn ensure_image(&self, image: &str) -> Result<ImageInfo, CriError> {
        self.calls.lock().unwrap().push(format!("image {image}"));
        Ok(ImageInfo::default())
    }
    async fn start(&self, req: StartSandbox) -> Result<u32, CriError> {
        self.calls.lock().unwrap().push(format!("start {}", &req.id[..8]));
        self.specs.lock().unwrap().push(req.spec);
        if self.fail_start {
            return Err(CriError::FailedPrecondition {
                what: "pause".into(),
                reason: "fake start failure".into(),
            });
        }
        Ok(4242)
    }
    async fn stop(&self, id: &str) -> Result<(), CriError> {
        self.calls.lock().unwrap().push(format!("stop {}", &id[..8]));
        Ok(())
    }
    async fn delete(&self, id: &str) -> Result<(), CriError> {
        self.calls.lock().unwrap().push(format!("delete {}", &id[..8]));
        Ok(())
    }
}

struct Env {
    dir: tempfile::TempDir,
    bridge: String,
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(self.dir.path().join("state/netns")) {
            for e in entries.flatten() {
                let _ = netns::remove(&e.path());
            }
        }
        // Pods a test left up: their pinned namespaces and /dev/shm mounts.
        let entries = |sub: &str| {
            std::fs::read_dir(self.dir.path().join(sub))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
        };
        for dir in entries("state/podns") {
            let _ = crate::cri::podns::unpin(&dir);
        }
        for dir in entries("state/sandboxes") {
            let _ = crate::cri::podfiles::remove(&dir);
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

fn env(octet: u8, fake: Arc<Fake>) -> (Env, CriService) {
    use crate::e2e_guard::{CNI_PLUGINS, Need, require};
    require(&[Need::Root]);
    require(&CNI_PLUGINS);
    let dir = tempfile::tempdir().unwrap();
    let bridge = format!("tkc{}-{}", std::process::id() % 100_000, octet % 100);
    let conf_dir = dir.path().join("net.d");
    std::fs::create_dir(&conf_dir).unwrap();
    std::fs::write(
        conf_dir.join("10-t.conflist"),
        format!(
            r#"{{"cniVersion":"1.0.0","name":"crit","plugins":[{{"type":"bridge","bridge":"{bridge}","isGateway":false,"ipMasq":false,
               "ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"10.88.{octet}.0/24"}}]]}}}}]}}"#,
            dir.path().join("ipam").display()
        ),
    )
    .unwrap();
    let mut cfg = CriConfig::default();
    cfg.cni.conf_dir = conf_dir;
    cfg.cni.bin_dirs = vec![PathBuf::from("/usr/lib/cni")];
    let mut svc = CriService::new(
        cfg,
        &dir.path().join("root"),
        &dir.path().join("state"),
        ContainerEvents::new().unwrap(),
    );
    svc.controller = Some(fake);
    (Env { dir, bridge }, svc)
}

fn leases(e: &Env) -> usize {
    std::fs::read_dir(e.dir.path().join("ipam/crit"))
        .map(|d| {
            d.flatten()
                .filter(|f| f.file_name().to_string_lossy().starts_with("10."))
                .count()
        })
        .unwrap_or(0)
}

fn pod(name: &str, host_network: bool) -> cri::RunPodSandboxRequest {
    cri::RunPodSandboxRequest {
        config: Some(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            dns_config: Some(cri::DnsConfig {
                servers: vec!["10.96.0.10".into()],
                ..Default::default()
            }),
            labels: [("app".to_owned(), name.to_owned())].into(),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: if host_network {
                            cri::NamespaceMode::Node
                        } else {
                            cri::NamespaceMode::Pod
                        } as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        runtime_handler: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, CNI plugins"]
async fn run_status_stop_remove_with_cni() {
    let fake = Arc::new(Fake::default());
    let (e, svc) = env(211, fake.clone());
    let id = svc
        .run_pod_sandbox(pod("web", false))
        .await
        .unwrap()
        .pod_sandbox_id;
    assert_eq!(id.len(), 64);
    let s = svc.sandboxes.get(&id).unwrap();
    assert_eq!(s.state, SandboxState::Ready);
    assert_eq!(s.pid, 4242);
    assert!(s.ip.starts_with("10.88.211."), "{}", s.ip);
    assert!(netns::is_pinned(Path::new(&s.netns_path)));
    assert_eq!(leases(&e), 1);
    // The spec joined the pinned netns; pod files exist.
    let spec = fake.specs.lock().unwrap()[0].clone();
    let nss = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
    assert!(nss.iter().any(|n| {
        n.path()
            .as_ref()
            .is_some_and(|p| p.display().to_string() == s.netns_path)
    }));
    let resolv = std::fs::read_to_string(svc.sandbox_dir(&id).join("resolv.conf")).unwrap();
    assert_eq!(resolv, "nameserver 10.96.0.10\n");

    // The same pod name again: AlreadyExists, and nothing leaked.
    let err = svc.run_pod_sandbox(pod("web", false)).await.unwrap_err();
    assert_eq!(err.kind(), Kind::AlreadyExists, "{err}");
    assert_eq!(leases(&e), 1);

    let st = svc
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id[..12].into(),
            verbose: true,
        })
        .await
        .unwrap();
    let status = st.status.unwrap();
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(status.network.unwrap().ip, s.ip);

    svc.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    let stopped = svc.sandboxes.get(&id).unwrap();
    assert_eq!(stopped.state, SandboxState::NotReady);
    assert!(!Path::new(&s.netns_path).exists(), "netns removed");
    assert_eq!(leases(&e), 0, "IP released");
    // Idempotent.
    svc.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();

    svc.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    assert!(svc.sandboxes.get(&id).is_err());
    assert!(!svc.sandbox_dir(&id).exists());
    svc.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    let calls = fake.calls.lock().unwrap().clone();
    let short = &id[..8];
    assert_eq!(
        calls,
        [
            "image registry.k8s.io/pause:3.10".to_owned(),
            format!("start {short}"),
            format!("stop {short}"),
            format!("stop {short}"),
            format!("delete {short}"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, CNI plugins"]
async fn failed_start_rolls_back_netns_ip_files_and_record() {
    let fake = Arc::new(Fake {
        fail_start: true,
        ..Default::default()
    });
    let (e, svc) = env(212, fake.clone());
    let err = svc.run_pod_sandbox(pod("db", false)).await.unwrap_err();
    assert!(err.to_string().contains("fake start failure"), "{err}");
    assert!(svc.sandboxes.is_empty());
    assert_eq!(leases(&e), 0, "IP released");
    let left: Vec<_> = std::fs::read_dir(svc.netns_dir.clone())
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "netns left: {left:?}");
    assert!(
        !svc.state.join("sandboxes").exists()
            || std::fs::read_dir(svc.state.join("sandboxes"))
                .unwrap()
                .next()
                .is_none()
    );
    assert!(
        fake.calls.lock().unwrap().iter().any(|c| c.starts_with("delete")),
        "pause container deleted"
    );
    // The name is free again.
    let fake_ok = Arc::new(Fake::default());
    let mut svc = svc;
    svc.controller = Some(fake_ok);
    svc.run_pod_sandbox(pod("db", false)).await.unwrap();
    let id = svc.sandboxes.list()[0].id.clone();
    svc.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
    assert_eq!(leases(&e), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, CNI plugins"]
async fn host_network_needs_no_cni_and_bad_input_is_refused() {
    let fake = Arc::new(Fake::default());
    let (_e, svc) = env(213, fake.clone());
    let id = svc
        .run_pod_sandbox(pod("hostnet", true))
        .await
        .unwrap()
        .pod_sandbox_id;
    let s = svc.sandboxes.get(&id).unwrap();
    assert!(s.netns_path.is_empty() && s.ip.is_empty() && s.host.network);

    let mut bad = pod("x", true);
    bad.runtime_handler = "kata".into();
    let e = svc.run_pod_sandbox(bad).await.unwrap_err();
    assert_eq!(e.kind(), Kind::InvalidArgument);
    assert!(e.to_string().contains("kata"), "{e}");
    let mut bad = pod("", true);
    bad.config
        .as_mut()
        .unwrap()
        .metadata
        .as_mut()
        .unwrap()
        .name
        .clear();
    assert!(
        svc.run_pod_sandbox(bad)
            .await
            .unwrap_err()
            .to_string()
            .contains("config.metadata.name")
    );
    assert_eq!(svc.sandboxes.len(), 1);
}

#[tokio::test]
async fn without_a_controller_pod_rpcs_are_unimplemented() {
    let dir = tempfile::tempdir().unwrap();
    let svc = crate::cri::service::testing::service(dir.path());
    let e = svc.run_pod_sandbox(pod("a", true)).await.unwrap_err();
    assert_eq!(e.kind(), Kind::NotImplemented);
    assert!(e.to_string().contains("unpacks into a snapshotter"), "{e}");
}

/// A RunPodSandbox cut short (taskd died in it) leaves a record that recovery shows as
/// NotReady, with the netns path the first write already held but nothing set up after it
/// recorded; kubelet's Stop + Remove of that record leave no netns, IP, pinned namespace,
/// /dev/shm or pod dir behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, CNI plugins"]
async fn stop_and_remove_clean_up_after_a_run_cut_short() {
    let fake = Arc::new(Fake::default());
    let (e, svc) = env(214, fake.clone());
    let mut req = pod("cut", false);
    if let Some(ns) = req
        .config
        .as_mut()
        .and_then(|c| c.linux.as_mut())
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
    {
        ns.pid = cri::NamespaceMode::Container as i32;
    }
    let id = svc.run_pod_sandbox(req).await.unwrap().pod_sandbox_id;
    let s = svc.sandboxes.get(&id).unwrap();
    let netns_path = e.dir.path().join("state/netns").join(format!("cni-{id}"));
    assert_eq!(
        s.netns_path,
        netns_path.display().to_string(),
        "named by the sandbox"
    );
    assert!(!s.infra && !s.ipc_ns_path.is_empty() && leases(&e) == 1);
    // What recovery makes of the record written before the crash.
    svc.sandboxes
        .update(&id, |r| {
            r.state = SandboxState::NotReady;
            r.ip.clear();
            r.ipc_ns_path.clear();
            r.uts_ns_path.clear();
            Ok(())
        })
        .unwrap();
    svc.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    assert!(!netns_path.exists(), "netns left");
    assert_eq!(leases(&e), 0, "IP left");
    assert!(!svc.podns_dir(&id).exists(), "pinned namespaces left");
    assert!(!svc.sandbox_dir(&id).exists(), "pod dir (and its /dev/shm) left");
    assert!(svc.sandboxes.get(&id).is_err());

    // Cut shorter: the record was written, the netns never created.
    let mut early = crate::cri::service::testing::sandbox("early", "early", SandboxState::NotReady, &[], 0);
    early.infra = false;
    early.netns_path = e.dir.path().join("state/netns/cni-early").display().to_string();
    svc.sandboxes.add(early).unwrap();
    svc.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: "early".into(),
    })
    .await
    .unwrap();
    assert!(svc.sandboxes.get("early").is_err());
}

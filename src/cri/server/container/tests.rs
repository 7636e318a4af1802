//! The container RPCs against a fake runtime that behaves like a shim: it opens the stdio
//! fifos for writing on create, writes output, and exits on a signal.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use taskd_proto::cri::v1 as cri;
use tokio::sync::watch;

use crate::cri::backend::contract::{
    ContainerRuntime, CreateContainer, ExitInfo, ImageInfo, SandboxController, StartSandbox,
};
use crate::cri::container_events::ContainerEvents;
use crate::cri::error::CriError;
use crate::cri::service::CriService;
use crate::cri::store::container::ContainerState;
use crate::cri::store::image::ImageConfig;
use crate::errdefs::{ErrorKind, Kind};

struct Proc {
    exited: watch::Sender<Option<u32>>,
    writers: Vec<std::fs::File>,
}

#[derive(Default)]
struct FakeRt {
    procs: Mutex<HashMap<String, Proc>>,
    specs: Mutex<Vec<oci_spec::runtime::Spec>>,
    updates: Mutex<Vec<(String, oci_spec::runtime::LinuxResources)>>,
    ignore_term: bool,
}

#[async_trait]
impl SandboxController for FakeRt {
    async fn ensure_image(&self, _image: &str) -> Result<ImageInfo, CriError> {
        Ok(ImageInfo::default())
    }
    async fn start(&self, _req: StartSandbox) -> Result<u32, CriError> {
        Ok(1)
    }
    async fn stop(&self, _id: &str) -> Result<(), CriError> {
        Ok(())
    }
    async fn delete(&self, _id: &str) -> Result<(), CriError> {
        Ok(())
    }
}

#[async_trait]
impl ContainerRuntime for FakeRt {
    async fn image(&self, reference: &str) -> Result<ImageInfo, CriError> {
        Ok(ImageInfo {
            id: "sha256:feed".into(),
            reference: crate::images::reference::normalize(reference)?.to_string(),
            config: ImageConfig {
                entrypoint: vec!["/bin/sh".into()],
                user: "app".into(),
                ..Default::default()
            },
            passwd: Some("root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n".into()),
            group: Some("app:x:1000:\n".into()),
        })
    }
    async fn create(&self, req: CreateContainer) -> Result<(), CriError> {
        let (out, err) = (req.stdout.clone(), req.stderr.clone());
        // Like the shim: open the write ends (blocking until the readers are there).
        let writers = tokio::task::spawn_blocking(move || {
            let mut o = std::fs::OpenOptions::new().write(true).open(out).unwrap();
            let e = std::fs::OpenOptions::new().write(true).open(err).unwrap();
            o.write_all(b"hello from the container\n").unwrap();
            vec![o, e]
        })
        .await
        .unwrap();
        self.specs.lock().unwrap().push(req.spec);
        self.procs.lock().unwrap().insert(
            req.id,
            Proc {
                exited: watch::Sender::new(None),
                writers,
            },
        );
        Ok(())
    }
    async fn start(&self, id: &str) -> Result<u32, CriError> {
        self.procs
            .lock()
            .unwrap()
            .get(id)
            .map(|_| 777)
            .ok_or(CriError::FailedPrecondition {
                what: id.into(),
                reason: "no task".into(),
            })
    }
    async fn checkpoint(&self, _id: &str, _image_dir: &std::path::Path) -> Result<(), CriError> {
        Err(CriError::Unimplemented {
            rpc: "CheckpointContainer",
            missing: "the fake runtime has no CRIU",
        })
    }
    async fn task_state(&self, id: &str) -> Result<Option<crate::runtime::State>, CriError> {
        Ok(self.procs.lock().unwrap().get(id).map(|p| crate::runtime::State {
            id: id.to_owned(),
            pid: 777,
            status: match *p.exited.borrow() {
                Some(_) => crate::runtime::Status::Stopped,
                None => crate::runtime::Status::Running,
            },
            exit_status: p.exited.borrow().unwrap_or(0),
            io: Default::default(),
            exited_at: None,
        }))
    }
    async fn kill(&self, id: &str, signal: u32) -> Result<(), CriError> {
        if let Some(p) = self.procs.lock().unwrap().get(id)
            && !(self.ignore_term && signal == libc::SIGTERM as u32)
        {
            p.exited.send_replace(Some(128 + signal));
        }
        Ok(())
    }
    async fn wait(&self, id: &str) -> Result<ExitInfo, CriError> {
        let mut rx = self.procs.lock().unwrap().get(id).unwrap().exited.subscribe();
        let code = rx.wait_for(std::option::Option::is_some).await.unwrap().unwrap();
        Ok(ExitInfo {
            code,
            at: SystemTime::now(),
        })
    }
    async fn update(&self, id: &str, resources: oci_spec::runtime::LinuxResources) -> Result<(), CriError> {
        self.updates.lock().unwrap().push((id.to_owned(), resources));
        Ok(())
    }
    async fn exec(
        &self,
        _: &str,
        _: &str,
        _: Vec<String>,
        _: crate::cri::io::exec_output::ExecIo,
    ) -> Result<u32, CriError> {
        Err(CriError::Unimplemented {
            rpc: "ExecSync",
            missing: "the fake runtime has no exec (tests/cri_task_runtime.rs covers it)",
        })
    }
    async fn exec_wait(&self, _: &str, _: &str) -> Result<ExitInfo, CriError> {
        unreachable!("exec never starts in the fake")
    }
    async fn exec_kill(&self, _: &str, _: &str, _: u32) -> Result<(), CriError> {
        Ok(())
    }
    async fn exec_delete(&self, _: &str, _: &str) -> Result<(), CriError> {
        Ok(())
    }
    async fn resize_pty(&self, _: &str, _: &str, _: u32, _: u32) -> Result<(), CriError> {
        Ok(())
    }
    async fn close_stdin(&self, _: &str, _: &str) -> Result<(), CriError> {
        Ok(())
    }
    async fn stats(&self, _: &[String]) -> Result<Vec<crate::cri::backend::contract::TaskStats>, CriError> {
        Ok(Vec::new())
    }
    async fn delete(&self, id: &str) -> Result<(), CriError> {
        // Dropping the writers closes the fifos (the shim going away).
        if let Some(p) = self.procs.lock().unwrap().remove(id) {
            drop(p.writers);
        }
        Ok(())
    }
}

fn service(dir: &std::path::Path, rt: Arc<FakeRt>) -> CriService {
    let mut svc = CriService::new(
        Default::default(),
        &dir.join("root"),
        &dir.join("state"),
        ContainerEvents::new().unwrap(),
    );
    svc.controller = Some(rt.clone());
    svc.runner = Some(rt);
    svc
}

async fn pod(svc: &CriService, logs: &std::path::Path) -> (String, cri::PodSandboxConfig) {
    let cfg = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "p".into(),
            uid: "u".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                // Host network and IPC: no netns, no /dev/shm mount for these tests to
                // leave behind (they never stop their pods).
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    ipc: cri::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = svc
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .pod_sandbox_id;
    (id, cfg)
}

fn container_config(name: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: "busybox".into(),
            ..Default::default()
        }),
        args: vec!["-c".into(), "echo hi".into()],
        log_path: format!("{name}/0.log"),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_start_stop_remove_with_logs_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRt::default());
    let svc = service(dir.path(), rt.clone());
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(logs.join("app")).unwrap();
    let (pod_id, pod_cfg) = pod(&svc, &logs).await;
    let mut feed = svc.events.subscribe();

    let id = svc
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container_config("app")),
            sandbox_config: Some(pod_cfg.clone()),
        })
        .await
        .unwrap()
        .container_id;
    let c = svc.containers.get(&id).unwrap();
    assert_eq!(c.state, ContainerState::Created);
    assert_eq!(c.image, "docker.io/library/busybox:latest");
    assert_eq!(c.log_path, logs.join("app/0.log").display().to_string());
    // The image user resolved through the image's passwd; args merged with the entrypoint.
    let spec = rt.specs.lock().unwrap()[0].clone();
    let p = spec.process().as_ref().unwrap();
    assert_eq!((p.user().uid(), p.user().gid()), (1000, 1000));
    assert_eq!(p.args().as_ref().unwrap(), &["/bin/sh", "-c", "echo hi"]);
    assert_eq!(
        feed.recv().await.unwrap().container_event_type,
        cri::ContainerEventType::ContainerCreatedEvent as i32
    );

    // A second container with the same name in the pod: AlreadyExists.
    let dup = svc
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container_config("app")),
            sandbox_config: Some(pod_cfg.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(dup.kind(), Kind::AlreadyExists, "{dup}");

    svc.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let c = svc.containers.get(&id).unwrap();
    assert_eq!((c.state, c.pid), (ContainerState::Running, 777));
    assert!(c.started_at.is_some());
    let ev = feed.recv().await.unwrap();
    assert_eq!(
        ev.container_event_type,
        cri::ContainerEventType::ContainerStartedEvent as i32
    );
    assert_eq!(
        ev.containers_statuses[0].state,
        cri::ContainerState::ContainerRunning as i32
    );
    // Starting again is refused.
    let again = svc
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.kind(), Kind::FailedPrecondition);

    // Resources update reaches the runtime and shows in the status.
    svc.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 128 << 20,
            cpu_shares: 256,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let (uid, r) = rt.updates.lock().unwrap()[0].clone();
    assert_eq!(uid, id);
    assert_eq!(r.memory().as_ref().unwrap().limit(), Some(128 << 20));
    let st = svc
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(
        st.resources.unwrap().linux.unwrap().memory_limit_in_bytes,
        128 << 20
    );

    // Reopen works while running.
    std::fs::rename(logs.join("app/0.log"), logs.join("app/0.log.1")).unwrap();
    svc.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    assert!(logs.join("app/0.log").exists());

    svc.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 10,
    })
    .await
    .unwrap();
    let c = svc.containers.get(&id).unwrap();
    assert_eq!(
        (c.state, c.exit.code, c.exit.reason.as_str()),
        (ContainerState::Exited, 143, "Error")
    );
    assert_eq!(
        feed.recv().await.unwrap().container_event_type,
        cri::ContainerEventType::ContainerStoppedEvent as i32
    );
    svc.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 10,
    })
    .await
    .unwrap();

    svc.remove_container(cri::RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    assert!(svc.containers.get(&id).is_err());
    assert!(!svc.container_dir(&id).exists());
    assert_eq!(
        feed.recv().await.unwrap().container_event_type,
        cri::ContainerEventType::ContainerDeletedEvent as i32
    );
    svc.remove_container(cri::RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    // The output is in the rotated or the new file (depending on when the copier ran), in
    // CRI format, exactly once.
    let text = std::fs::read_to_string(logs.join("app/0.log.1")).unwrap()
        + &std::fs::read_to_string(logs.join("app/0.log")).unwrap();
    assert_eq!(text.matches("hello from the container").count(), 1, "{text:?}");
    assert!(text.contains(" stdout F hello from the container\n"), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_escalates_to_sigkill_and_pod_stop_stops_containers() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRt {
        ignore_term: true,
        ..Default::default()
    });
    let svc = service(dir.path(), rt);
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(logs.join("a")).unwrap();
    std::fs::create_dir_all(logs.join("b")).unwrap();
    let (pod_id, pod_cfg) = pod(&svc, &logs).await;
    let mut ids = Vec::new();
    for name in ["a", "b"] {
        let id = svc
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(container_config(name)),
                sandbox_config: Some(pod_cfg.clone()),
            })
            .await
            .unwrap()
            .container_id;
        svc.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
        ids.push(id);
    }
    // SIGTERM is ignored: after the 1s timeout, SIGKILL.
    svc.stop_container(cri::StopContainerRequest {
        container_id: ids[0].clone(),
        timeout: 1,
    })
    .await
    .unwrap();
    assert_eq!(svc.containers.get(&ids[0]).unwrap().exit.code, 137);
    // StopPodSandbox stops the other one; RemovePodSandbox removes both.
    svc.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(svc.containers.get(&ids[1]).unwrap().state, ContainerState::Exited);
    svc.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .unwrap();
    assert!(svc.containers.is_empty() && svc.sandboxes.is_empty());
}

#[tokio::test]
async fn create_refuses_bad_input_and_not_ready_pods() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path(), Arc::new(FakeRt::default()));
    let (pod_id, pod_cfg) = pod(&svc, dir.path()).await;
    let mut cfg = container_config("x");
    cfg.image = None;
    let e = svc
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(cfg),
            sandbox_config: Some(pod_cfg.clone()),
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("config.image.image"), "{e}");
    let mut cfg = container_config("x");
    cfg.image.as_mut().unwrap().image = "Bad/Ref".into();
    let e = svc
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(cfg),
            sandbox_config: Some(pod_cfg.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), Kind::InvalidArgument, "{e}");
    svc.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .unwrap();
    let e = svc
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id,
            config: Some(container_config("x")),
            sandbox_config: Some(pod_cfg),
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), Kind::FailedPrecondition, "{e}");
    assert!(svc.containers.is_empty());
}

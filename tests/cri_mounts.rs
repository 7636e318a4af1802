//! CRI mounts end to end: mount propagation between host and container and recursive
//! read-only mounts, driven only through the independent k8s-cri client over taskd's socket
//! (real shims and runc).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "support/cri_world.rs"]
mod cri_world;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use cri_world::{
    CriWorld, container_config, container_names, features, kubelet_pod, own_pid, pull, run_ok, run_pod, sh,
    with_security,
};
use k8s_cri::v1 as cri;

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;

use support::cri_client::{create_and_start, stop_and_remove};

use tonic::transport::Channel;

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
    let w = CriWorld::kubelet(40 + (std::process::id() % 20) as u8, "", "");
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

/// A recursive read-only CRI mount is read-only down to its submounts (runc's `rro`), where a
/// plain read-only one leaves a submount writable; the CRI API's refusals (not readonly, not
/// PRIVATE) are InvalidArgument with nothing created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn recursive_read_only_mounts_reach_submounts() {
    let w = CriWorld::kubelet(70 + (std::process::id() % 20) as u8, "", "");
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

//! Pods in a user namespace (`NamespaceOption.userns_options`, issue 20 item 4), end to end
//! on a real taskd (runc, taskd's shim, CNI bridge): the mapping seen inside, the pod's root
//! owning its rootfs (a per-pod remapped image copy), a host dir written as the mapped host
//! uid, the `user_namespaces` feature in Status, survival of `kill -9` + restart, the copy and
//! the pinned namespaces gone with the pod, and the refused configurations leaving nothing;
//! for a pod without a pause container (taskd pins its namespaces) and one with.
//! Set-up and the pod's life go through the k8s-cri client, Status and the refusals through
//! Python grpcio (`tests/clients/cri_grpc.py`).
//!
//! Run: `TASKD_E2E=1 cargo test --test userns -- --include-ignored` (as root).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "support/clients.rs"]
mod clients;
#[path = "support/cri_world.rs"]
mod cri_world;
mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clients::cri_grpc;
use cri_world::{CRI, CriWorld, container, wait_until};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde_json::json;
use tonic::transport::Channel;

/// Subnets 10.89.<150..199>.0/24 for this binary's worlds.
const OCTETS: u8 = 150;
/// The pod's ranges on the host (uid and gid differ, so each is checked on its own).
const HOST_UID: u32 = 2_000_000;
const HOST_GID: u32 = 2_100_000;
/// The range of the pod with a pause container.
const PAUSED: u32 = 2_200_000;

fn squeeze(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn userns(mode: cri::NamespaceMode, uid_host: u32, gid_host: u32) -> cri::UserNamespace {
    let map = |host_id| cri::IdMapping {
        host_id,
        container_id: 0,
        length: 65536,
    };
    cri::UserNamespace {
        mode: mode as i32,
        uids: vec![map(uid_host)],
        gids: vec![map(gid_host)],
    }
}

fn with_userns(mut cfg: cri::PodSandboxConfig, u: cri::UserNamespace) -> cri::PodSandboxConfig {
    cfg.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options
        .get_or_insert_with(Default::default)
        .userns_options = Some(u);
    cfg
}

/// A container in a PID namespace of its own (kubelet's default), with `userns` in its
/// options (kubelet repeats the pod's there).
fn own_pid(mut c: cri::ContainerConfig, userns: Option<cri::UserNamespace>) -> cri::ContainerConfig {
    let ns = c
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options
        .get_or_insert_with(Default::default);
    ns.pid = cri::NamespaceMode::Container as i32;
    ns.userns_options = userns;
    c
}

fn cri_state(w: &CriWorld) -> PathBuf {
    w.taskd().state.join("io.containerd.cri.v1.cri")
}

/// The entries of a dir (none when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The k8s.io snapshots of the CRI's snapshotter.
fn snapshots(w: &CriWorld) -> String {
    w.taskd().ctr_ok(&["-n", "k8s.io", "snapshots", "ls"])
}

/// ExecSync `sh -c script`, expected to exit 0: its stdout.
async fn exec(rt: &mut RuntimeServiceClient<Channel>, id: &str, script: &str) -> String {
    let r = support::cri_client::sh(rt, id, script).await;
    assert_eq!(r.exit_code, 0, "{script}: {}", String::from_utf8_lossy(&r.stderr));
    String::from_utf8_lossy(&r.stdout).into_owned()
}

/// A world with a second handler on containerd's own shim (containerd-shim-runc-v2), for the
/// pod with a pause container: the feature holds for both shims.
async fn world() -> (CriWorld, RuntimeServiceClient<Channel>) {
    let w = CriWorld::start(
        OCTETS,
        &format!("[{CRI}.runtimes.stock]\nruntime_type = \"io.containerd.runc.v2\"\n"),
    );
    let rt = w.runtime().await;
    (w, rt)
}

/// A [`world`] with [`userns_app`] running.
async fn app_world() -> (CriWorld, RuntimeServiceClient<Channel>, UsernsApp) {
    let (w, mut rt) = world().await;
    let app = userns_app(&w, &mut rt).await;
    (w, rt, app)
}

/// The pod `userns` as kubelet sends it (PID mode CONTAINER): a pod without a pause container,
/// whose namespaces taskd pins, in a user namespace mapped to HOST_UID / HOST_GID.
fn userns_pod_config(w: &CriWorld) -> cri::PodSandboxConfig {
    let mut cfg = with_userns(
        w.pod_config("userns"),
        userns(cri::NamespaceMode::Pod, HOST_UID, HOST_GID),
    );
    if let Some(ns) = cfg
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
    {
        ns.pid = cri::NamespaceMode::Container as i32;
    }
    cfg
}

/// The `userns` pod with container "app", which reports its mappings, a read-only volume's
/// data, its uid, the owner of its rootfs and whether it can write there, and makes a file in
/// an emptyDir-like host dir; waited for until it reported.
struct UsernsApp {
    cfg: cri::PodSandboxConfig,
    pod: String,
    id: String,
    /// The host dir mounted at /vol.
    vol: PathBuf,
    /// The container's log, whitespace squeezed.
    log: String,
}

async fn userns_app(w: &CriWorld, rt: &mut RuntimeServiceClient<Channel>) -> UsernsApp {
    // An emptyDir-like host dir, writable by anyone.
    let vol = w.dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::set_permissions(&vol, std::fs::Permissions::from_mode(0o777)).unwrap();
    // A read-only volume from a nosuid,nodev,noexec mount (as /run is): flags a user
    // namespace cannot drop. Under the state dir, so the world's clean-up unmounts it.
    let locked = w.taskd().state.join("locked-src");
    std::fs::create_dir(&locked).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &locked,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .unwrap();
    std::fs::write(locked.join("data"), "locked-ok\n").unwrap();

    let cfg = userns_pod_config(w);
    let pod = w.run_pod(rt, &cfg).await;
    let mut app = container(
        "app",
        "cat /proc/self/uid_map /proc/self/gid_map /locked/data; id -u; stat -c 'root-owner %u:%g' /etc/passwd; \
         echo x > /rootfs-write && echo rootfs-writable; touch /vol/made-inside; exec sleep 3600",
    );
    app.mounts.push(cri::Mount {
        container_path: "/vol".into(),
        host_path: vol.display().to_string(),
        ..Default::default()
    });
    app.mounts.push(cri::Mount {
        container_path: "/locked".into(),
        host_path: locked.display().to_string(),
        readonly: true,
        ..Default::default()
    });
    // kubelet repeats the pod's user namespace in the container's options.
    let app = own_pid(app, Some(userns(cri::NamespaceMode::Pod, HOST_UID, HOST_GID)));
    let id = w.start_container(rt, &pod, &cfg, app).await;
    wait_until("the container's report", Duration::from_secs(20), || {
        w.log("userns", "app").contains("rootfs-writable")
    });
    let log = squeeze(&w.log("userns", "app"));
    UsernsApp {
        cfg,
        pod,
        id,
        vol,
        log,
    }
}

/// A pod sharing a PID namespace, so with a pause container (its pid 1) in the user namespace
/// mapped to PAUSED, on the stock shim, with a sleeping container "c"; (pod id, container id).
async fn paused_pod(w: &CriWorld, rt: &mut RuntimeServiceClient<Channel>) -> (String, String) {
    let paused_cfg = with_userns(
        w.pod_config("paused"),
        userns(cri::NamespaceMode::Pod, PAUSED, PAUSED),
    );
    let paused = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(paused_cfg.clone()),
            runtime_handler: "stock".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox on the stock shim: {e:?}\n{}", w.server_log()))
        .into_inner()
        .pod_sandbox_id;
    let in_paused = w
        .start_container(rt, &paused, &paused_cfg, container("c", "exec sleep 3600"))
        .await;
    (paused, in_paused)
}

/// kill -9 and restart the world's taskd; a new runtime client.
async fn kill9_and_restart(w: &mut CriWorld) -> RuntimeServiceClient<Channel> {
    w.server.kill9();
    w.server.restart();
    w.runtime().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Python grpcio"]
async fn both_shims_report_the_user_namespaces_feature_and_the_probe_is_logged() {
    let (w, _) = world().await;
    // The feature, as kubelet reads it (Python grpcio).
    let status = cri_grpc(w.socket(), &["call", "RuntimeService/Status", "{}"]).ok();
    let handlers = status["response"]["runtime_handlers"]
        .as_array()
        .unwrap_or_else(|| panic!("{status}"));
    for name in ["runc", "stock"] {
        assert!(
            handlers
                .iter()
                .any(|h| h["name"] == name && h["features"]["user_namespaces"] == true),
            "{name}: {status}"
        );
    }
    assert!(
        w.server_log().contains("runc_userns=true") && w.server_log().contains("kernel_userns=true"),
        "the probe is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Python grpcio"]
async fn the_pause_process_and_the_container_share_the_pods_user_namespace_mapping() {
    let (w, mut rt) = world().await;
    let (_, in_paused) = paused_pod(&w, &mut rt).await;
    let paused_map = format!("0 {PAUSED} 65536");
    let pid1 = exec(
        &mut rt,
        &in_paused,
        "cat /proc/1/uid_map /proc/1/cmdline /proc/self/uid_map",
    )
    .await;
    assert!(
        squeeze(&pid1).matches(&paused_map).count() == 2 && pid1.contains("sleep"),
        "the pause process and the container share the mapping: {pid1}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Python grpcio"]
async fn a_container_sees_the_pods_mapping_and_its_root_owns_the_rootfs() {
    let (_w, _, UsernsApp { log, .. }) = app_world().await;
    assert!(log.contains(&format!("0 {HOST_UID} 65536")), "uid_map: {log}");
    assert!(log.contains(&format!("0 {HOST_GID} 65536")), "gid_map: {log}");
    assert!(
        log.contains("root-owner 0:0"),
        "the rootfs belongs to the pod's root: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Python grpcio"]
async fn a_read_only_volume_from_a_nosuid_nodev_noexec_mount_is_readable() {
    let (_w, _, UsernsApp { log, .. }) = app_world().await;
    assert!(log.contains("locked-ok"), "the read-only volume: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Python grpcio"]
async fn a_file_made_in_a_host_dir_is_owned_by_the_mapped_host_ids() {
    let (_w, _, UsernsApp { vol, .. }) = app_world().await;
    let made = std::fs::metadata(vol.join("made-inside")).expect("the container's file on the host");
    assert_eq!(
        (made.uid(), made.gid()),
        (HOST_UID, HOST_GID),
        "owned by the mapped host ids"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Python grpcio"]
async fn a_container_cannot_ask_for_another_user_namespace_than_its_pods() {
    let (w, mut rt) = world().await;
    let cfg = userns_pod_config(&w);
    let pod = w.run_pod(&mut rt, &cfg).await;
    let other = own_pid(
        container("other", "true"),
        Some(userns(cri::NamespaceMode::Pod, PAUSED, PAUSED)),
    );
    let refused = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(other),
            sandbox_config: Some(cfg.clone()),
        })
        .await
        .expect_err("a container in another user namespace than its pod's");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Python grpcio"]
async fn a_userns_pod_survives_kill_9_and_a_new_container_joins_its_namespace_and_copy() {
    let (mut w, mut rt, UsernsApp { cfg, pod, id, .. }) = app_world().await;
    let pause_ns = exec(&mut rt, &id, "readlink /proc/self/ns/user").await;

    // kill -9 and restart: the pod and its container are back, and work.
    let mut rt = kill9_and_restart(&mut w).await;
    // PodSandboxStatus after restart.
    let st = support::cri_client::pod_status(&mut rt, &pod).await;
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    assert!(
        squeeze(&exec(&mut rt, &id, "cat /proc/self/uid_map").await).contains(&format!("0 {HOST_UID} 65536"))
    );
    // A second container after the restart joins the same user namespace and the pod's copy.
    let second = w
        .start_container(
            &mut rt,
            &pod,
            &cfg,
            own_pid(container("second", "exec sleep 3600"), None),
        )
        .await;
    assert_eq!(
        exec(&mut rt, &second, "readlink /proc/self/ns/user").await,
        pause_ns
    );
    assert_eq!(exec(&mut rt, &second, "stat -c %u /bin/sh").await.trim(), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Python grpcio"]
async fn a_userns_pod_with_a_pause_container_keeps_its_mapping_across_kill_9() {
    let (mut w, mut rt) = world().await;
    let (paused, in_paused) = paused_pod(&w, &mut rt).await;
    let paused_map = format!("0 {PAUSED} 65536");
    let mut rt = kill9_and_restart(&mut w).await;
    assert!(squeeze(&exec(&mut rt, &in_paused, "cat /proc/1/uid_map").await).contains(&paused_map));
    support::cri_client::stop_and_remove(&mut rt, &paused).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Python grpcio"]
async fn the_pods_remapped_copy_and_pinned_namespaces_go_with_the_pod() {
    let (w, mut rt, UsernsApp { pod, .. }) = app_world().await;
    let copies = |w: &CriWorld| {
        snapshots(w)
            .lines()
            .filter(|l| l.starts_with(&format!("cri-userns-{pod}")))
            .count()
    };
    assert_eq!(
        copies(&w),
        1,
        "one remapped copy of busybox for the pod: {}",
        snapshots(&w)
    );
    support::cri_client::stop_and_remove(&mut rt, &pod).await;
    assert_eq!(
        copies(&w),
        0,
        "the pod's copy is removed with it: {}",
        snapshots(&w)
    );
    assert!(
        entries(&cri_state(&w).join("podns")).is_empty(),
        "user namespace unpinned"
    );
    assert!(entries(&cri_state(&w).join("netns")).is_empty(), "netns removed");
}

/// A world with a handler whose runc cannot be asked for its features: user_namespaces false.
fn refusing_world() -> CriWorld {
    CriWorld::start(
        OCTETS,
        &format!(
            "[{CRI}.runtimes.nouserns]\nruntime_type = \"io.containerd.runc.v2\"\n\
             [{CRI}.runtimes.nouserns.options]\nBinaryName = \"/bin/false\"\n"
        ),
    )
}

/// A pod config (as JSON for cri_grpc) named `name` with `linux`.
fn pod_json(name: &str, linux: serde_json::Value) -> serde_json::Value {
    json!({
        "metadata": {"name": name, "uid": format!("uid-{name}"), "namespace": "default"},
        "hostname": name,
        "linux": linux,
    })
}

/// The pod's `linux` with `userns` as its user namespace options.
fn ns(userns: serde_json::Value) -> serde_json::Value {
    json!({"security_context": {"namespace_options": {"userns_options": userns}}})
}

fn map(c: u32, h: u32) -> serde_json::Value {
    json!({"container_id": c, "host_id": h, "length": 65536})
}

fn pod_mode(uids: serde_json::Value, gids: serde_json::Value) -> serde_json::Value {
    json!({"mode": "POD", "uids": uids, "gids": gids})
}

/// RunPodSandbox `req` through Python grpcio: INVALID_ARGUMENT whose details hold `why`.
fn assert_refused(w: &CriWorld, what: &str, req: &serde_json::Value, why: &str) {
    let r = cri_grpc(
        w.socket(),
        &["call", "RuntimeService/RunPodSandbox", &req.to_string()],
    )
    .ok();
    assert_eq!(r["error"]["code"], "INVALID_ARGUMENT", "{what}: {r}");
    let details = r["error"]["details"].as_str().unwrap_or_default();
    assert!(details.contains(why), "{what}: {details}");
}

/// Nothing behind: no record, netns, pinned namespace, pod dir, IP lease, shim, snapshot.
fn assert_nothing_behind(w: &CriWorld) {
    let list = cri_grpc(w.socket(), &["call", "RuntimeService/ListPodSandbox", "{}"]).ok();
    assert!(list["response"].get("items").is_none(), "{list}");
    let state = cri_state(w);
    for dir in ["netns", "podns", "sandboxes"] {
        assert!(
            entries(&state.join(dir)).is_empty(),
            "{dir}: {:?}",
            entries(&state.join(dir))
        );
    }
    let leases: Vec<String> = entries(&w.dir.path().join("ipam"))
        .into_iter()
        .flat_map(|net| entries(&w.dir.path().join("ipam").join(net)))
        .filter(|f| f.starts_with("10."))
        .collect();
    assert!(leases.is_empty(), "IP leases: {leases:?}");
    assert!(
        entries(
            &w.taskd()
                .state
                .join("io.containerd.runtime.v2.task")
                .join("k8s.io")
        )
        .is_empty(),
        "no task bundle (so no shim)"
    );
    assert!(
        !snapshots(w).lines().any(|l| l.starts_with("cri-")),
        "no snapshot: {}",
        snapshots(w)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Python grpcio"]
async fn a_handler_without_user_namespaces_says_so_and_refuses_a_userns_pod_leaving_nothing() {
    let w = refusing_world();
    let good = ns(pod_mode(json!([map(0, HOST_UID)]), json!([map(0, HOST_GID)])));
    let status = cri_grpc(w.socket(), &["call", "RuntimeService/Status", "{}"]).ok();
    let unsupported = status["response"]["runtime_handlers"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["name"] == "nouserns"))
        .unwrap_or_else(|| panic!("{status}"));
    assert_ne!(unsupported["features"]["user_namespaces"], true, "{status}");
    let req = json!({"config": pod_json("unsupported", good), "runtime_handler": "nouserns"});
    assert_refused(&w, "unsupported", &req, "does not support user namespaces");
    assert_nothing_behind(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Python grpcio"]
async fn user_namespace_configs_the_cri_api_refuses_are_invalid_and_leave_nothing_behind() {
    let w = refusing_world();
    let cases = [
        (
            "container-mode",
            ns(json!({"mode": "CONTAINER", "uids": [map(0, HOST_UID)], "gids": [map(0, HOST_GID)]})),
            "CONTAINER",
        ),
        (
            "target-mode",
            ns(json!({"mode": "TARGET", "uids": [map(0, HOST_UID)], "gids": [map(0, HOST_GID)]})),
            "TARGET",
        ),
        (
            "two-uid-maps",
            ns(pod_mode(
                json!([map(0, HOST_UID), map(65536, 3_000_000)]),
                json!([map(0, HOST_GID)]),
            )),
            "exactly one",
        ),
        (
            "two-gid-maps",
            ns(pod_mode(
                json!([map(0, HOST_UID)]),
                json!([map(0, HOST_GID), map(65536, 3_000_000)]),
            )),
            "exactly one",
        ),
        (
            "no-gid-map",
            ns(pod_mode(json!([map(0, HOST_UID)]), json!([]))),
            "got 0",
        ),
        (
            "root-unmapped",
            ns(pod_mode(json!([map(1, HOST_UID)]), json!([map(0, HOST_GID)]))),
            "container id 0",
        ),
        (
            "host-network",
            json!({"security_context": {"namespace_options": {
                "network": "NODE",
                "userns_options": pod_mode(json!([map(0, HOST_UID)]), json!([map(0, HOST_GID)]))}}}),
            "host's network",
        ),
    ];
    for (name, linux, why) in cases {
        assert_refused(&w, name, &json!({"config": pod_json(name, linux)}), why);
    }
    assert_nothing_behind(&w);
}

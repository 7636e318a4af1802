//! CRI containers end to end: the pod and container lifecycle, runtime handler options,
//! probes (ExecSync), stats, metrics and events, checkpoints, annotations, exec clean-up and
//! refused requests, driven only through the independent k8s-cri client over taskd's socket
//! (real CNI bridge on a private subnet, real shims and runc).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "support/cri_world.rs"]
mod cri_world;
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use cri_world::{
    CRI, CriWorld, all_of, container_config, has_pause_container, kubelet_pod, list, own_pid, pull, run_pod,
    wait_for, with_security,
};
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use support::Daemon;
use support::cri_client::{container_stats, create_and_start, exited, pod_status, status, stop_and_remove};

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

/// A kubelet world on its own 10.88.<octet>.0/24 (`slot`: one per test of this file that uses
/// it; tests run in parallel) and its runtime and image clients.
async fn world(
    slot: u8,
) -> (
    CriWorld,
    RuntimeServiceClient<Channel>,
    ImageServiceClient<Channel>,
) {
    let w = CriWorld::kubelet(130 + slot * 4 + (std::process::id() % 4) as u8, "", "");
    let (rt, images) = w.clients().await;
    (w, rt, images)
}

/// A pod of `w` named `name` (busybox pulled) running container "app" with `script`; (pod
/// config, pod id, container id).
async fn pod_with_app(
    w: &CriWorld,
    rt: &mut RuntimeServiceClient<Channel>,
    images: &mut ImageServiceClient<Channel>,
    name: &str,
    script: &str,
) -> (cri::PodSandboxConfig, String, String) {
    pull(images, "busybox", None).await;
    let cfg = w.pod_config(name);
    let pod = run_pod(rt, &cfg, "RunPodSandbox").await;
    let app = create_and_start(rt, &pod, &cfg, container_config("app", script)).await;
    (cfg, pod, app)
}

/// Pod "web" whose container "app" runs the image's entrypoint + cmd (no command or args),
/// waited for until it printed its working dir and went to sleep; (pod config, pod id,
/// container id, its log).
async fn web_with_image_defaults(
    w: &CriWorld,
    rt: &mut RuntimeServiceClient<Channel>,
    images: &mut ImageServiceClient<Channel>,
) -> (cri::PodSandboxConfig, String, String, PathBuf) {
    let (cfg, pod, ctr) = pod_with_app(w, rt, images, "web", "").await;
    let log = wait_for_app_line(&cfg, " stdout F /tmp\n").await;
    (cfg, pod, ctr, log)
}

/// Waits until the log of the pod's container "app" holds `line`; the log's path.
async fn wait_for_app_line(cfg: &cri::PodSandboxConfig, line: &str) -> PathBuf {
    let log = PathBuf::from(&cfg.log_directory).join("app.log");
    wait_for(&format!("{line:?} in the container's log"), || {
        let log = log.clone();
        async move { std::fs::read_to_string(&log).unwrap_or_default().contains(line) }
    })
    .await;
    log
}

/// RemoveContainer `id`.
async fn remove(rt: &mut RuntimeServiceClient<Channel>, id: &str) {
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: id.to_owned(),
    })
    .await
    .expect("RemoveContainer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn run_pod_sandbox_is_ready_with_an_ip_on_the_worlds_subnet() {
    let (w, mut rt, _) = world(0).await;
    let pod = run_pod(&mut rt, &w.pod_config("web"), "RunPodSandbox").await;
    let st = pod_status(&mut rt, &pod).await;
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    let ip = st.network.unwrap().ip;
    assert!(ip.starts_with(&format!("10.88.{}.", w.octet)), "{ip}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn a_sandbox_image_pulled_by_ctr_is_unpacked_into_overlayfs_and_pinned() {
    let (w, mut rt, mut images) = world(1).await;
    // The sandbox image comes from ctr (client-side pull, unpacked into the native
    // snapshotter only, then tagged): the CRI finds it and unpacks it into overlayfs.
    let ctr_pause = format!("{}/pause:3.10", w.registry.addr);
    w.server.ctr_ok(&[
        "-n",
        "k8s.io",
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        "native",
        &ctr_pause,
    ]);
    w.server.ctr_ok(&[
        "-n",
        "k8s.io",
        "images",
        "tag",
        &ctr_pause,
        "registry.k8s.io/pause:3.10",
    ]);
    let overlay = |d: &Daemon| d.ctr_ok(&["-n", "k8s.io", "snapshots", "--snapshotter", "overlayfs", "ls"]);
    assert_eq!(
        overlay(&w.server).lines().count(),
        1,
        "nothing in overlayfs yet: {}",
        overlay(&w.server)
    );
    run_pod(&mut rt, &w.pod_config("web"), "RunPodSandbox").await;
    let pause = list(&mut images, Some("registry.k8s.io/pause:3.10")).await;
    assert_eq!(pause.len(), 1, "{pause:?}");
    assert!(
        overlay(&w.server).contains("Committed"),
        "the pause image was unpacked into overlayfs: {}",
        overlay(&w.server)
    );
    pull(&mut images, "busybox", None).await;
    assert!(pause[0].pinned, "the sandbox image is pinned: {pause:?}");
    assert!(!list(&mut images, Some("busybox")).await[0].pinned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn a_container_without_command_runs_the_images_entrypoint_env_user_and_working_dir() {
    let (w, mut rt, mut images) = world(2).await;
    // No command or args: the image's entrypoint + cmd, env, user (nobody, its group from
    // the image's /etc/passwd) and working dir.
    let (_, _, _, log) = web_with_image_defaults(&w, &mut rt, &mut images).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn exec_sync_runs_with_the_images_env_and_user() {
    let (w, mut rt, mut images) = world(3).await;
    let (_, _, ctr, _) = web_with_image_defaults(&w, &mut rt, &mut images).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn container_status_shows_running_the_pulled_image_and_the_log_path() {
    let (w, mut rt, mut images) = world(4).await;
    let image_id = pull(&mut images, "busybox", None).await;
    let (_, _, ctr, log) = web_with_image_defaults(&w, &mut rt, &mut images).await;
    let cs = status(&mut rt, &ctr).await;
    assert_eq!(cs.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(cs.image_ref, image_id);
    assert_eq!(cs.image.unwrap().image, "docker.io/library/busybox:latest");
    assert_eq!(cs.log_path, log.display().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn a_second_container_shares_the_pods_pid_namespace() {
    let (w, mut rt, mut images) = world(5).await;
    let (pod_cfg, pod, _, _) = web_with_image_defaults(&w, &mut rt, &mut images).await;
    // A second container shares the pod's PID namespace: it sees the app's processes.
    let side = create_and_start(&mut rt, &pod, &pod_cfg, container_config("side", "ps; exit 3")).await;
    let s = exited(&mut rt, &side).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (3, "Error"), "{s:?}");
    let side_log = std::fs::read_to_string(PathBuf::from(&pod_cfg.log_directory).join("side.log")).unwrap();
    assert!(side_log.contains("sleep 3600"), "{side_log}");
    remove(&mut rt, &side).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn a_container_over_its_memory_limit_is_oomkilled() {
    let (w, mut rt, mut images) = world(6).await;
    pull(&mut images, "busybox", None).await;
    let pod_cfg = w.pod_config("web");
    let pod = run_pod(&mut rt, &pod_cfg, "RunPodSandbox").await;
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
    remove(&mut rt, &hog).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn stop_container_ends_a_shared_pid_namespace_sleep_with_the_images_stop_signal() {
    let (w, mut rt, mut images) = world(7).await;
    let (_, _, ctr, _) = web_with_image_defaults(&w, &mut rt, &mut images).await;
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
    remove(&mut rt, &ctr).await;
    let left = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn stop_and_remove_pod_sandbox_are_idempotent_and_leave_no_pod_or_container_snapshot() {
    let (w, mut rt, mut images) = world(8).await;
    let (_, pod, _, _) = web_with_image_defaults(&w, &mut rt, &mut images).await;
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
    let snaps = w.server.ctr_ok(&["-n", "k8s.io", "snapshots", "ls"]);
    assert_eq!(
        snaps.lines().skip(1).filter(|l| l.contains("Active")).count(),
        0,
        "{snaps}"
    );
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
    let w = CriWorld::kubelet(
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

/// The script of the probed pod's container: 512 KiB in its writable layer, then sleep.
const FILL: &str = "dd if=/dev/zero of=/tmp/fill bs=1024 count=512 2>/dev/null; echo filled; exec sleep 3600";

/// A [`world`] with pod "probed" whose container "app" wrote 512 KiB into its writable layer
/// and sleeps; (world, runtime client, pod id, container id).
async fn probed(slot: u8) -> (CriWorld, RuntimeServiceClient<Channel>, String, String) {
    let (w, mut rt, mut images) = world(slot).await;
    let (cfg, pod, app) = pod_with_app(&w, &mut rt, &mut images, "probed", FILL).await;
    wait_for_app_line(&cfg, " stdout F filled\n").await;
    (w, rt, pod, app)
}

/// ExecSync `sh -c cmd` in `id` with `timeout` seconds.
fn sh(id: &str, cmd: &str, timeout: i64) -> cri::ExecSyncRequest {
    cri::ExecSyncRequest {
        container_id: id.to_owned(),
        cmd: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
        timeout,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn exec_sync_returns_stdout_stderr_and_the_exit_code() {
    let (_w, mut rt, _, app) = probed(9).await;
    let r = rt
        .exec_sync(sh(&app, "echo out; echo err >&2; exit 3", 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn fifty_exec_syncs_at_once_all_answer() {
    let (w, rt, _, app) = probed(10).await;
    // 50 at once. Many parallel `runc exec` in one container are slow on some hosts (on
    // this one, 50 parallel `ctr tasks exec` take 20-50 s against containerd and taskd
    // alike), so each gets a generous timeout: the point is that all of them work.
    let all = futures::future::join_all((0..50).map(|i| {
        let mut rt = rt.clone();
        let req = sh(&app, &format!("echo {i}"), 240);
        async move { rt.exec_sync(req).await }
    }))
    .await;
    for (i, r) in all.into_iter().enumerate() {
        let r = r
            .unwrap_or_else(|e| {
                let log = w.server.log();
                let tail: Vec<&str> = log.lines().rev().take(400).collect();
                panic!(
                    "concurrent ExecSync {i}: {e:?}\n--- daemon log (last lines, newest first) ---\n{}",
                    tail.join("\n")
                )
            })
            .into_inner();
        assert_eq!((r.stdout, r.exit_code), (format!("{i}\n").into_bytes(), 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn exec_sync_timeout_is_honoured_promptly() {
    let (_w, mut rt, _, app) = probed(11).await;
    let t0 = Instant::now();
    let e = rt.exec_sync(sh(&app, "sleep 600", 1)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "the timeout is honoured, not minutes later"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn exec_sync_output_is_capped_to_what_one_16_mib_response_holds() {
    let (_w, rt, _, app) = probed(12).await;
    // As kubelet's CRI client: messages of up to 16 MiB.
    let big = rt
        .clone()
        .max_decoding_message_size(16 << 20)
        .exec_sync(sh(&app, "head -c 20000000 /dev/zero", 60))
        .await
        .expect("ExecSync with a big output")
        .into_inner();
    assert_eq!(
        big.stdout.len(),
        taskd::cri::server::container::exec_sync::MAX_RESPONSE_OUTPUT,
        "stdout capped to what one 16 MiB response holds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn container_stats_report_cpu_memory_and_the_writable_layer() {
    let (_w, mut rt, pod, app) = probed(13).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn pod_sandbox_stats_report_cpu_memory_processes_and_network() {
    let (_w, mut rt, pod, _) = probed(14).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn pod_sandbox_metrics_carry_the_container_series_and_each_is_described() {
    let (_w, mut rt, _, _) = probed(15).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn the_stream_twins_answer_what_list_does() {
    use taskd_proto::cri::v1 as t;
    let (w, _, pod, _) = probed(16).await;
    // The Stream* twins (cri-api 0.34+, taskd's own generated client) answer what List does.
    let mut c = t::runtime_service_client::RuntimeServiceClient::new(w.server.channel().await);
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn update_pod_sandbox_resources_is_kept_and_shown_in_the_verbose_pod_status() {
    use taskd_proto::cri::v1 as t;
    let (w, _, pod, _) = probed(17).await;
    let mut c = t::runtime_service_client::RuntimeServiceClient::new(w.server.channel().await);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn exec_sync_in_a_stopped_container_is_a_failed_precondition() {
    let (_w, mut rt, _, app) = probed(18).await;
    rt.stop_container(cri::StopContainerRequest {
        container_id: app.clone(),
        timeout: 2,
    })
    .await
    .expect("StopContainer");
    let e = rt.exec_sync(sh(&app, "true", 5)).await.unwrap_err();
    assert_eq!(
        e.code(),
        tonic::Code::FailedPrecondition,
        "exec in a stopped container: {e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn every_container_events_subscriber_sees_created_started_stopped_deleted_in_order() {
    let (w, mut rt, mut images) = world(19).await;
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
    let (_, pod, app) = pod_with_app(&w, &mut rt, &mut images, "probed", FILL).await;
    rt.stop_container(cri::StopContainerRequest {
        container_id: app.clone(),
        timeout: 2,
    })
    .await
    .expect("StopContainer");
    remove(&mut rt, &app).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn the_cri_operation_metrics_kubelet_operators_scrape_are_served() {
    let (w, mut rt, pod, app) = probed(20).await;
    rt.exec_sync(sh(&app, "true", 10)).await.expect("ExecSync");
    stop_and_remove(&mut rt, &pod).await;
    // The operation metrics kubelet operators scrape.
    let (_, body) = w.server.http("/v1/metrics", None);
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
    let w = CriWorld::kubelet(100 + (std::process::id() % 20) as u8, "", "");
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
    let stage = w
        .server
        .state
        .join("io.containerd.cri.v1.cri")
        .join("checkpoints");
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

/// Two CRI API rules containerd 1.7 follows: StopContainer and StopPodSandbox of an unknown id
/// succeed (as Remove* already did), and `run_as_group` without `run_as_user` or
/// `run_as_username` is InvalidArgument.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn stop_of_an_unknown_container_or_pod_succeeds() {
    let (_w, mut rt, _) = world(21).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn stop_pod_sandbox_of_a_removed_pod_succeeds() {
    let (w, mut rt, mut images) = world(22).await;
    let (_, pod, _) = pod_with_app(&w, &mut rt, &mut images, "gone", "exec sleep 3600").await;
    stop_and_remove(&mut rt, &pod).await;
    // Stopping it again, now that it is gone, still succeeds.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod })
        .await
        .expect("StopPodSandbox of a removed pod");
    w.assert_no_pod_left();
}

/// A pod (its own PID namespace per container, as kubelet's usual pod) and a container of it
/// printing its uid and gid, run as group 4242 and as `user` / `username`.
async fn group_pod(
    w: &CriWorld,
    rt: &mut RuntimeServiceClient<Channel>,
    images: &mut ImageServiceClient<Channel>,
    user: Option<i64>,
    username: &str,
) -> (cri::PodSandboxConfig, String, cri::ContainerConfig) {
    pull(images, "busybox", None).await;
    let cfg = kubelet_pod(w.pod_config("group"));
    let pod = run_pod(rt, &cfg, "RunPodSandbox").await;
    let grouped = own_pid(with_security(
        container_config("grouped", "id -u; id -g"),
        cri::LinuxContainerSecurityContext {
            run_as_user: user.map(|value| cri::Int64Value { value }),
            run_as_username: username.into(),
            run_as_group: Some(cri::Int64Value { value: 4242 }),
            ..Default::default()
        },
    ));
    (cfg, pod, grouped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn a_group_without_a_user_is_invalid_argument() {
    let (w, mut rt, mut images) = world(23).await;
    let (cfg, pod, grouped) = group_pod(&w, &mut rt, &mut images, None, "").await;
    let e = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(grouped),
            sandbox_config: Some(cfg.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("run_as_group"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn a_group_with_a_user_runs_with_that_group() {
    let (w, mut rt, mut images) = world(24).await;
    let (cfg, pod, grouped) = group_pod(&w, &mut rt, &mut images, Some(1000), "").await;
    let id = create_and_start(&mut rt, &pod, &cfg, grouped).await;
    let s = exited(&mut rt, &id).await;
    assert_eq!(s.exit_code, 0);
    let log = std::fs::read_to_string(&s.log_path).unwrap();
    assert!(log.contains(" 1000\n") && log.contains(" 4242\n"), "{log}");
    stop_and_remove(&mut rt, &pod).await;
    w.assert_no_pod_left();
}

/// nor the runc shim's grouping annotation gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn annotations_reach_config_json_only_when_the_handler_allows_them() {
    let w = CriWorld::kubelet(
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
        let path = w
            .server
            .state
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

/// ExecSync never hangs (issue: `sh -c 'sleep 600 & echo ok'` kept containerd 1.6 and taskd
/// waiting for an EOF the background child never gives): 100 such probes return `ok` within
/// their drain bound and leave no exec state or exec process behind; a caller that goes away
/// (its deadline) gets its exec process killed and its state removed all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn exec_sync_with_a_background_child_returns_and_leaves_nothing() {
    let w = CriWorld::kubelet(
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
    let before = w.server.task_pids(&id);
    let t0 = Instant::now();
    // 50 callers, two probes each in a row. Each probe's exec delete waits out the runc
    // shim's own 10 s bound on the output copy the background child keeps open ("output
    // copy did not finish within 10s"), so the rounds, not the probes, set the time: ten
    // rounds of ten took 100 s, two rounds of fifty take 20 s.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (mut rt, id) = (rt.clone(), id.clone());
        set.spawn(async move {
            for _ in 0..2 {
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
    assert!(
        exec_dirs(&w.server, &id).is_empty(),
        "{:?}",
        exec_dirs(&w.server, &id)
    );
    // What is left is the container's own: its init and the 100 backgrounded sleeps (the
    // probes' children, reparented), no exec shell.
    assert_eq!(w.server.task_pids(&id), before + 100);

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
    while (w.server.task_pids(&id) != before + 100 || !exec_dirs(&w.server, &id).is_empty())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        w.server.task_pids(&id),
        before + 100,
        "the abandoned exec's sleep is killed"
    );
    assert!(
        exec_dirs(&w.server, &id).is_empty(),
        "{:?}",
        exec_dirs(&w.server, &id)
    );
    stop_and_remove(&mut rt, &pod).await;
    w.assert_no_pod_left();
}

//! CRI security end to end: pod and container security contexts, resources, seccomp
//! (RuntimeDefault, Localhost, Unconfined), masked paths, devices, hugepages, PID namespace
//! targets, supplemental groups and the permissions of pod state, driven only through the
//! independent k8s-cri client over taskd's socket (real shims and runc).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "support/cri_world.rs"]
mod cri_world;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use cri_world::{
    CriWorld, container_config, container_names, features, has_pause_container, image_spec,
    kubelet_busybox_image, kubelet_pod, netns_pins, own_pid, podns_pins, pull, run_ok, run_pod, sh, wait_for,
    with_security,
};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::security_profile::ProfileType;
use support::cri_client::{create_and_start, status, stop_and_remove};
use support::registry::OciLayout;
use tonic::transport::Channel;

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

/// A line of the host's `/proc/<pid>/status`.
fn proc_status(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| panic!("{key} missing from /proc/{pid}/status"))
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

/// A world on its own 10.88.<octet>.0/24 (`slot`: one per test of the pod options below) with
/// busybox pulled and pod "opts" run as kubelet sends a usual pod: no pause container, so its
/// hostname and sysctl are set in namespaces taskd pinned itself.
async fn opts_pod(slot: u8) -> OptsPod {
    let w = CriWorld::kubelet(240 + slot, "", "");
    let (mut rt, mut images) = w.clients().await;
    pull(&mut images, "busybox", None).await;
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
    OptsPod { w, rt, cfg, pod }
}

/// The pod of [`opts_pod`] with its world and client.
struct OptsPod {
    w: CriWorld,
    rt: RuntimeServiceClient<Channel>,
    cfg: cri::PodSandboxConfig,
    pod: String,
}

/// Container "locked" of the opts pod: prints its DNS, hostname and the namespaced sysctl, runs
/// as 1234 on a read-only rootfs with no capabilities (printing its uid, whether it can
/// write, its capabilities), then sleeps; (container id, its log once all is printed).
async fn locked(op: &mut OptsPod) -> (String, String) {
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
    let locked = create_and_start(&mut op.rt, &op.pod, &op.cfg, locked).await;
    let log = opts_log_with(&op.w, "locked", "CapEff").await;
    (locked, std::fs::read_to_string(&log).unwrap())
}

/// Container "ticker" of the opts pod, ticking every 100 ms; (container id, its log, once
/// it ticked).
async fn ticker(op: &mut OptsPod) -> (String, PathBuf) {
    let ticker = create_and_start(
        &mut op.rt,
        &op.pod,
        &op.cfg,
        own_pid(container_config(
            "ticker",
            "while true; do echo tick; sleep 0.1; done",
        )),
    )
    .await;
    (ticker, opts_log_with(&op.w, "ticker", "tick").await)
}

/// The log of container `name` of the opts pod, once it holds `needle`.
async fn opts_log_with(w: &CriWorld, name: &str, needle: &str) -> PathBuf {
    let log = w.dir.path().join(format!("logs/opts/{name}.log"));
    wait_for(&format!("{needle:?} in {name}'s log"), || async {
        std::fs::read_to_string(&log).unwrap_or_default().contains(needle)
    })
    .await;
    log
}

/// `want` lines all in `text`.
fn assert_has_all(text: &str, want: &[&str]) {
    for want in want {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn a_pods_dns_hostname_and_namespaced_sysctl_reach_its_container_without_a_pause_container() {
    let mut op = opts_pod(0).await;
    let (_, text) = locked(&mut op).await;
    assert!(!has_pause_container(&mut op.rt, &op.pod).await);
    assert_has_all(
        &text,
        &[
            "nameserver 10.0.0.10",
            "search svc.example",
            "options ndots:2",
            "opts-host",
            " 80\n",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn run_as_user_read_only_rootfs_and_dropped_capabilities_apply() {
    let mut op = opts_pod(1).await;
    let (_, text) = locked(&mut op).await;
    assert_has_all(&text, &[" 1234\n", "READONLY", "CapEff:\t0000000000000000"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn a_sysctl_outside_the_pods_namespaces_is_refused_and_leaves_nothing() {
    let OptsPod { w, mut rt, .. } = opts_pod(2).await;
    let (netns_before, podns_before, ips_before) = (
        netns_pins(&w.server).len(),
        podns_pins(&w.server).len(),
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
            netns_pins(&w.server).len(),
            podns_pins(&w.server).len(),
            w.ipam_leases().len()
        ),
        (netns_before, podns_before, ips_before),
        "the refused pod left something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn a_container_cannot_join_a_pid_namespace_the_pod_does_not_share() {
    let OptsPod {
        w: _w,
        mut rt,
        cfg,
        pod,
    } = opts_pod(3).await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn update_container_resources_reaches_the_containers_cgroup_and_its_status() {
    let mut op = opts_pod(4).await;
    let (locked, _) = locked(&mut op).await;
    let mut rt = op.rt;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn the_pods_containers_share_one_64_mib_dev_shm() {
    let mut op = opts_pod(5).await;
    let (locked, _) = locked(&mut op).await;
    let (ticker, _) = ticker(&mut op).await;
    let mut rt = op.rt;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn reopen_container_log_goes_on_in_a_new_file_at_the_same_path() {
    let mut op = opts_pod(6).await;
    let (ticker, tlog) = ticker(&mut op).await;
    // The world stays with `op` until the end.
    let OptsPod { mut rt, .. } = op;
    // ReopenContainerLog: kubelet renames the file, asks for a reopen; output goes on in a
    // new file at the same path.
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn reopen_container_log_of_a_stopped_container_is_a_failed_precondition() {
    let mut op = opts_pod(7).await;
    let (ticker, _) = ticker(&mut op).await;
    let OptsPod { w, mut rt, pod, .. } = op;
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

    stop_and_remove(&mut rt, &pod).await;
    w.assert_no_pod_left();
}

/// A hostNetwork pod sees the node's interfaces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn host_network_pod_sees_the_nodes_interfaces() {
    let w = CriWorld::kubelet(110 + (std::process::id() % 20) as u8, "", "");
    let (mut rt, mut images) = w.clients().await;
    pull(&mut images, "busybox", None).await;
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
    // The node's interfaces other than lo (a fresh network namespace has only lo); other
    // tests add and remove veths meanwhile, so one of them showing up is the proof.
    let node_ifaces: Vec<String> = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_owned()))
        .filter(|n| n != "lo")
        .collect();
    assert!(!node_ifaces.is_empty(), "the node has an interface besides lo");
    wait_for("the node's interfaces", || async {
        let seen = std::fs::read_to_string(&nlog).unwrap_or_default();
        node_ifaces.iter().any(|n| seen.contains(&format!("{n}:")))
    })
    .await;

    stop_and_remove(&mut rt, &host_pod).await;
    w.assert_no_pod_left();
}

/// hostPID + hostIPC: the host's PID and IPC namespaces and /dev/shm, no pause container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn host_pid_and_ipc_pod_shares_the_hosts_namespaces_and_dev_shm() {
    let w = CriWorld::kubelet(220 + (std::process::id() % 20) as u8, "", "");
    let (mut rt, mut images) = w.clients().await;
    pull(&mut images, "busybox", None).await;
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

    stop_and_remove(&mut rt, &hostns_pod).await;
    w.assert_no_pod_left();
}

/// The start of every container security test of this file: a world on 10.88.<octet>.0/24,
/// busybox pulled, and one pod (`sec`) with a pause container.
struct SecPod {
    w: CriWorld,
    rt: RuntimeServiceClient<Channel>,
    cfg: cri::PodSandboxConfig,
    pod: String,
}

async fn sec_pod(octet: u8) -> SecPod {
    let w = CriWorld::kubelet(octet, "", "");
    let (mut rt, mut images) = w.clients().await;
    pull(&mut images, "busybox", None).await;
    let cfg = w.pod_config("sec");
    let pod = run_pod(&mut rt, &cfg, "RunPodSandbox").await;
    SecPod { w, rt, cfg, pod }
}

/// A container of the busybox image that sleeps.
fn sleeper(name: &str) -> cri::ContainerConfig {
    container_config(name, "exec sleep 3600")
}

/// The cgroup dir of container `id` under `controller` (cgroup v1).
fn cgroup(w: &CriWorld, controller: &str, id: &str) -> PathBuf {
    PathBuf::from("/sys/fs/cgroup")
        .join(controller)
        .join(w.cgroup_parent().trim_start_matches('/'))
        .join(id)
}

/// A RuntimeDefault container (the pod's PID namespace, the default masked paths).
async fn runtime_default(sp: &mut SecPod, name: &str) -> String {
    with_seccomp(sp, name, ProfileType::RuntimeDefault, "").await
}

/// A sleeping container of `sp`'s pod with seccomp profile `t` (`localhost_ref` for Localhost).
async fn with_seccomp(
    sp: &mut SecPod,
    name: &str,
    t: cri::security_profile::ProfileType,
    localhost_ref: &str,
) -> String {
    create_and_start(
        &mut sp.rt,
        &sp.pod,
        &sp.cfg,
        with_security(
            sleeper(name),
            cri::LinuxContainerSecurityContext {
                seccomp: seccomp(t, localhost_ref),
                ..Default::default()
            },
        ),
    )
    .await
}

/// The seccomp tests' pod (`slot`: one per test, for its subnet).
async fn seccomp_pod(slot: u8) -> SecPod {
    sec_pod(60 + slot * 4 + (std::process::id() % 4) as u8).await
}

/// RuntimeDefault: a filter (mode 2), and unshare(2) refused without CAP_SYS_ADMIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn runtime_default_seccomp_filters_and_refuses_unshare() {
    let mut sp = seccomp_pod(0).await;
    let dflt = runtime_default(&mut sp, "rtdefault").await;
    let rt = &mut sp.rt;
    assert_eq!(proc_status(host_pid(rt, &dflt).await, "Seccomp"), "2");
    let (out, code) = sh(rt, &dflt, "grep Seccomp: /proc/self/status; unshare -U true").await;
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(
        code != 0 && out.contains("Operation not permitted"),
        "unshare under RuntimeDefault: {code} {out}"
    );
}

/// Unconfined: no filter, and the same unshare(2) passes the (absent) filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn unconfined_seccomp_has_no_filter() {
    let mut sp = seccomp_pod(1).await;
    let unconf = with_seccomp(&mut sp, "unconfined", ProfileType::Unconfined, "").await;
    let rt = &mut sp.rt;
    assert_eq!(proc_status(host_pid(rt, &unconf).await, "Seccomp"), "0");
    let (out, code) = sh(rt, &unconf, "grep Seccomp: /proc/self/status; unshare -U true").await;
    assert!(out.contains("Seccomp:\t0"), "{out}");
    if code != 0 {
        // The kernel may refuse user namespaces on its own; the filter is what differs.
        eprintln!("unshare -U unconfined fails on this host too ({out}): Seccomp lines only");
    }
}

/// A seccomp pod (`slot`) with container `name` under a Localhost profile: a node profile file
/// that denies mkdir with EPERM, named `<prefix><path>`; (the pod, the container id).
async fn under_deny_mkdir(slot: u8, name: &str, prefix: &str) -> (SecPod, String) {
    let mut sp = seccomp_pod(slot).await;
    let profile = sp.w.dir.path().join("deny-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )
    .unwrap();
    let localhost_ref = format!("{prefix}{}", profile.display());
    let id = with_seccomp(&mut sp, name, ProfileType::Localhost, &localhost_ref).await;
    (sp, id)
}

/// Localhost: the node's profile file denies mkdir with EPERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn a_localhost_seccomp_profile_from_the_node_applies() {
    let (mut sp, local) = under_deny_mkdir(2, "localhost", "").await;
    let rt = &mut sp.rt;
    assert_eq!(proc_status(host_pid(rt, &local).await, "Seccomp"), "2");
    let (out, code) = sh(rt, &local, "mkdir /tmp/made").await;
    assert!(
        code != 0 && out.contains("Operation not permitted"),
        "mkdir under the Localhost profile: {code} {out}"
    );
}

/// The same file as `localhost/<path>` (the prefix containerd trims): touch still works, mkdir
/// does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn a_localhost_slash_prefixed_seccomp_profile_applies_too() {
    let (mut sp, prefixed) = under_deny_mkdir(3, "prefixed", "localhost/").await;
    let (out, code) = sh(&mut sp.rt, &prefixed, "touch /tmp/f && mkdir /tmp/d").await;
    assert!(
        code != 0 && out.contains("mkdir") && out.contains("Operation not permitted"),
        "{out}"
    );
}

/// A Localhost profile that is not on the node: a clear error, nothing left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn a_localhost_seccomp_profile_missing_from_the_node_is_refused_and_leaves_nothing() {
    let SecPod { w, mut rt, cfg, pod } = seccomp_pod(4).await;
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

    stop_and_remove(&mut rt, &pod).await;
    w.assert_no_pod_left();
}

/// A proc file of the default masked list that this kernel has.
fn masked_file() -> &'static str {
    ["/proc/kcore", "/proc/timer_list", "/proc/keys"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("a proc file of the default masked list on this kernel")
}

/// What container `id` sees of the masked and read-only paths.
async fn probe_paths(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> Probed {
    let masked_file = masked_file();
    // `KEY=value` lines: the size of a masked proc file (one this kernel has), the entries of
    // /sys/firmware, the mount options at a path (`-`: nothing mounted there).
    let probe = format!(
        "echo FILE=$(cat {masked_file} 2>/dev/null | wc -c); echo FIRMWARE=$(ls -A /sys/firmware | wc -l); \
         echo GROUP=$(wc -c < /etc/group); \
         for P in {masked_file} /proc/sys /etc/group /tmp /sys /sys/fs/cgroup; do echo \"$P=$({MOUNT_OPTS})\"; done; \
         echo 1 2>&1 > /proc/sys/kernel/ns_last_pid | sed 's/^/SYSCTL=/'; \
         touch /tmp/x 2>&1 | sed 's/^/TMP=/'"
    );
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
}

/// The masked-paths tests' pod (`slot`: one per test, for its subnet).
async fn masked_pod(slot: u8) -> SecPod {
    sec_pod(20 + slot * 4 + (std::process::id() % 4) as u8).await
}

/// A privileged container asking for masks, read-only paths and RuntimeDefault seccomp (all
/// of which privileged overrides).
fn privileged_sleeper() -> cri::ContainerConfig {
    with_security(
        sleeper("privileged"),
        cri::LinuxContainerSecurityContext {
            privileged: true,
            masked_paths: vec!["/etc/group".into()],
            readonly_paths: vec!["/tmp".into()],
            seccomp: seccomp(ProfileType::RuntimeDefault, ""),
            ..Default::default()
        },
    )
}

/// [`privileged_sleeper`] in a privileged pod of `sp`'s world; (pod id, container id).
async fn privileged_in_a_privileged_pod(sp: &mut SecPod) -> (String, String) {
    let mut priv_cfg = sp.w.pod_config("privpod");
    if let Some(l) = priv_cfg.linux.as_mut() {
        l.security_context = Some(cri::LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        });
    }
    let priv_pod = run_pod(&mut sp.rt, &priv_cfg, "RunPodSandbox privileged").await;
    let id = create_and_start(&mut sp.rt, &priv_pod, &priv_cfg, privileged_sleeper()).await;
    (priv_pod, id)
}

/// The defaults (containerd's): the proc file reads empty, /sys/firmware is an empty tmpfs,
/// /proc/sys is mounted read-only (a write fails so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn containerds_default_masked_and_read_only_paths_are_in_place() {
    let mut sp = masked_pod(0).await;
    let dflt = runtime_default(&mut sp, "rtdefault").await;
    let p = probe_paths(&mut sp.rt, &dflt).await;
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
}

/// Custom lists from the security context replace the defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn custom_masked_and_read_only_paths_replace_the_defaults() {
    let SecPod {
        w: _w,
        mut rt,
        cfg,
        pod,
    } = masked_pod(1).await;
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
    let p = probe_paths(&mut rt, &custom).await;
    assert_eq!(p.group_bytes, "0", "/etc/group masked: {p:?}");
    assert!(p.group_masked && p.tmp_ro && p.out.contains("TMP="), "{p:?}");
    assert!(
        !p.file_masked && !p.proc_sys_ro && p.firmware_entries != "0",
        "the defaults are gone: {p:?}"
    );
}

/// Privileged: only in a privileged pod (as containerd).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn a_privileged_container_in_an_unprivileged_pod_is_refused() {
    let SecPod {
        w: _w,
        mut rt,
        cfg,
        pod,
    } = masked_pod(2).await;
    let e = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(privileged_sleeper()),
            sandbox_config: Some(cfg.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("privileged pod"), "{e:?}");
}

/// In a privileged pod: no masks, no read-only /proc/sys, no seccomp, every device allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn a_privileged_container_has_no_masks_read_only_paths_seccomp_or_device_limits() {
    let mut sp = masked_pod(3).await;
    let (_, privileged) = privileged_in_a_privileged_pod(&mut sp).await;
    let p = probe_paths(&mut sp.rt, &privileged).await;
    assert!(
        !p.file_masked && !p.proc_sys_ro && !p.group_masked && !p.tmp_ro && !p.sysfs_ro,
        "{p:?}"
    );
    assert!(p.group_bytes != "0" && p.firmware_entries != "0", "{p:?}");
    let pid = host_pid(&mut sp.rt, &privileged).await;
    assert_eq!(proc_status(pid, "Seccomp"), "0");
    let devices =
        std::fs::read_to_string(cgroup(&sp.w, "devices", &privileged).join("devices.list")).unwrap();
    assert_eq!(devices.trim(), "a *:* rwm", "privileged devices cgroup");
}

/// A host device runc would not create on its own is in a privileged container's /dev, not in
/// an unprivileged one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn a_privileged_container_sees_the_hosts_devices_and_an_unprivileged_one_does_not() {
    let Some(host_dev) = ["/dev/loop-control", "/dev/kmsg", "/dev/fuse", "/dev/autofs"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        panic!("none of the host devices this test looks for is on this host");
    };
    let mut sp = masked_pod(4).await;
    let dflt = runtime_default(&mut sp, "rtdefault").await;
    let (priv_pod, privileged) = privileged_in_a_privileged_pod(&mut sp).await;
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(host_dev).unwrap().rdev();
    let want = format!(
        "{:x}:{:x}",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    );
    let (out, _) = sh(&mut sp.rt, &privileged, &format!("stat -c '%t:%T' {host_dev}")).await;
    assert_eq!(
        out.trim(),
        want,
        "the host's {host_dev} in the privileged container"
    );
    let (out, _) = sh(&mut sp.rt, &dflt, &format!("ls {host_dev} 2>&1")).await;
    assert!(out.contains("No such file"), "not in an unprivileged one: {out}");
    let SecPod { w, mut rt, pod, .. } = sp;
    for p in [pod, priv_pod] {
        stop_and_remove(&mut rt, &p).await;
    }
    w.assert_no_pod_left();
}

/// Devices: a host device and a driverless node (and a directory of them) reach the container
/// and its devices cgroup; a node the container makes itself is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn devices_from_the_host_reach_the_container_and_the_cgroup_refuses_others() {
    let sp = sec_pod(150 + (std::process::id() % 20) as u8).await;
    let SecPod { w, mut rt, cfg, pod } = sp;
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
    let devices = std::fs::read_to_string(cgroup(&w, "devices", &devc).join("devices.list")).unwrap();
    let rules: Vec<&str> = devices.lines().collect();
    assert!(rules.contains(&"c 241:7 r"), "{devices}");
    assert!(rules.contains(&"c 241:9 rw"), "{devices}");
    assert!(out.contains("GROUP=f1:9"), "the directory's device: {out}");
    assert!(rules.iter().any(|r| r.starts_with("c 1:5 ")), "{devices}");
    assert!(!rules.contains(&"a *:* rwm"), "{devices}");

    stop_and_remove(&mut rt, &pod).await;
    w.assert_no_pod_left();
}

/// Hugepages: a limit reaches the hugetlb cgroup, or is skipped (and the container runs)
/// without the controller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn hugepage_limits_reach_the_cgroup_when_the_controller_exists() {
    let sp = sec_pod(170 + (std::process::id() % 20) as u8).await;
    let SecPod { w, mut rt, cfg, pod } = sp;
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
            std::fs::read_to_string(cgroup(&w, "hugetlb", &huge).join("hugetlb.2MB.limit_in_bytes")).unwrap();
        assert_eq!(limit.trim(), (4u64 << 20).to_string());
    } else {
        eprintln!(
            "hugepages: no hugetlb cgroup controller on this host (no {}): the limit is \
             skipped, only checked that the container runs",
            hugetlb.display()
        );
    }

    stop_and_remove(&mut rt, &pod).await;
    w.assert_no_pod_left();
}

/// PID namespace TARGET: a container joins another's PID namespace (not the pod's); an unknown
/// target is NotFound, a target in another pod FailedPrecondition; nothing created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn pid_namespace_target_joins_a_container_and_refuses_unknown_or_foreign_targets() {
    let mut sp = sec_pod(200 + (std::process::id() % 20) as u8).await;
    let dflt = runtime_default(&mut sp, "pod-member").await;
    let priv_cfg = sp.w.pod_config("otherpod");
    let priv_pod = run_pod(&mut sp.rt, &priv_cfg, "RunPodSandbox otherpod").await;
    let SecPod { w, mut rt, cfg, pod } = sp;
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
    let w = CriWorld::kubelet(1 + (std::process::id() % 19) as u8, "", "");
    // The test's temp dir is 0700; open it so that only taskd's own modes stand in the way.
    std::fs::set_permissions(&w.server.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
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
    let vol = w.server.dir.join("vol");
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
    tree(&w.server.root, &mut paths);
    tree(&w.server.state, &mut paths);
    let plugin_dirs: Vec<&PathBuf> = paths
        .iter()
        .filter(|p| p.parent() == Some(&w.server.root) || p.parent() == Some(&w.server.state))
        .filter(|p| p.is_dir())
        .collect();
    assert!(plugin_dirs.len() > 10, "{plugin_dirs:?}");
    for d in &plugin_dirs {
        let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }
    let shm = w
        .server
        .state
        .join("io.containerd.cri.v1.cri/sandboxes")
        .join(&pod)
        .join("shm");
    assert!(shm.is_dir(), "the pod's /dev/shm at {}", shm.display());
    // Regular files only: the image's applet symlinks all lead to its busybox, and reading
    // it through each of them scanned ~800 MB (20-30 s of this test).
    let secret_files: Vec<&PathBuf> = paths
        .iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_file()))
        .filter(|p| std::fs::read(p).is_ok_and(|b| b.windows(7).any(|w| w == b"hunter2")))
        .collect();
    assert!(
        !secret_files.is_empty(),
        "the secret is on disk somewhere (record or db)"
    );
    let open = open_to_nobody(&paths, &[shm]);
    assert!(open.is_empty(), "open to nobody: {open:#?}");

    // What may be open to other users below the closed plugin directories, and why.
    let dev = |p: &Path| std::os::unix::fs::MetadataExt::dev(&std::fs::symlink_metadata(p).unwrap());
    let snapshots = w
        .server
        .root
        .join("io.containerd.snapshotter.v1.overlayfs/snapshots");
    let sandboxes = w.server.state.join("io.containerd.cri.v1.cri/sandboxes");
    let bundles = w.server.state.join("io.containerd.runtime.v2.task");
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
            // Gone since the walk (a record's temp file renamed, a pool shim's dir removed):
            // nothing left to read.
            let m = std::fs::symlink_metadata(p).ok()?;
            let mode = m.permissions().mode();
            (mode & 0o007 != 0 && !m.file_type().is_symlink() && !exception(p, &m))
                .then(|| format!("{:o} {}", mode & 0o7777, p.display()))
        })
        .collect();
    assert!(world.is_empty(), "open to other users: {world:#?}");
    stop_and_remove(&mut rt, &pod).await;
    w.assert_no_pod_left();
}

/// SupplementalGroupsPolicy: Merge (the default) adds the image's /etc/group memberships of
/// the user to the pod spec's groups, Strict keeps only the pod spec's; `id -G` inside and
/// ContainerStatus.user agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn supplemental_groups_policy_merge_and_strict() {
    let w = CriWorld::kubelet(90 + (std::process::id() % 20) as u8, "", "");
    let mut groupy = kubelet_busybox_image();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry, gcc (static libc)"]
async fn runtime_default_seccomp_denies_what_it_does_not_list() {
    use cri::security_profile::ProfileType;
    let w = CriWorld::kubelet(130 + (std::process::id() % 20) as u8, "", "");
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
            w.server
                .state
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

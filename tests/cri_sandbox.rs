//! CRI pod sandboxes end to end: pause containers, CNI set-up and its roll-back, host ports,
//! node restarts with pods running, RunPodSandbox past the caller's deadline, and pod starts
//! under a metrics scrape flood, driven only through the independent k8s-cri client over
//! taskd's socket (real CNI bridge on a private subnet, real shims and runc).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "support/cri_world.rs"]
mod cri_world;
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use cri_world::{
    CriWorld, container_config, has_pause_container, kubelet_pod, list, netns_pins, own_pid, podns_pins,
    pull, run_ok, run_pod, wait_for,
};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use support::cri_client::{create_and_start, status, stop_and_remove};
use support::observe::sample;
use tonic::transport::Channel;

/// The shim pids of the daemon's k8s.io bundles that are alive.
fn live_shims(w: &CriWorld) -> Vec<i32> {
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

/// `drop_infra_container = false`: every pod gets a pause container, as with containerd,
/// also one kubelet sends without a shared PID namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn every_pod_has_a_pause_container_when_drop_infra_container_is_off() {
    let w = CriWorld::kubelet(
        80 + (std::process::id() % 20) as u8,
        "",
        "drop_infra_container = false",
    );
    let (mut rt, mut images) = w.clients().await;
    pull(&mut images, "busybox", None).await;
    let cfg = kubelet_pod(w.pod_config("infra"));
    let pod = run_pod(&mut rt, &cfg, "RunPodSandbox").await;
    assert!(has_pause_container(&mut rt, &pod).await);
    assert!(podns_pins(&w.server).is_empty(), "{:?}", podns_pins(&w.server));
    let app = create_and_start(
        &mut rt,
        &pod,
        &cfg,
        own_pid(container_config("app", "exec sleep 3600")),
    )
    .await;
    // The pause container is a container of the k8s.io namespace, beside the app.
    let listed = w.server.ctr_ok(&["-n", "k8s.io", "containers", "ls", "-q"]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn failed_cni_add_rolls_the_pod_back() {
    // The bridge ADD succeeds, then tuning fails on a sysctl that does not exist.
    let w = CriWorld::kubelet(
        160 + (std::process::id() % 20) as u8,
        r#",{"type":"tuning","sysctl":{"net.ipv4.conf.eth0.no_such_knob":"1"}}"#,
        "",
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
    let containers = w.server.ctr_ok(&["-n", "k8s.io", "containers", "ls", "-q"]);
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
    support::require(&[support::Need::Bin("iptables", "iptables")]);
    let octet = 140 + (std::process::id() % 20) as u8;
    let w = CriWorld::kubelet(
        octet,
        r#",{"type":"portmap","capabilities":{"portMappings":true}}"#,
        "",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn node_restarts_keep_20_pods_and_report_what_exited_meanwhile() {
    const PODS: usize = 20;
    let mut w = CriWorld::kubelet(220 + (std::process::id() % 20) as u8, "", "");
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
    w.server.kill9();
    std::fs::write(gate.join("open"), b"").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let lines_down = std::fs::read_to_string(&ticker0_log).unwrap().lines().count();
    w.server.restart();
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
    w.server.restart();
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

/// kubelet's deadline passing mid-RunPodSandbox cuts nothing short: the call finishes or
/// rolls back in a task of its own, and kubelet's retry finds a consistent state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry, python3"]
async fn run_pod_sandbox_past_the_callers_deadline_finishes_or_rolls_back() {
    let w = CriWorld::kubelet(
        150 + (std::process::id() % 20) as u8,
        r#",{"type":"slow-cni"}"#,
        "",
    );
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
    let code = first.as_ref().map_err(tonic::Status::code);
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
        .unwrap_or_else(|e| panic!("retry: {e:?}\n{}", w.server.log()));
    let pods = pods_named(&mut rt, "slow").await;
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(
        (pods[0].id.as_str(), pods[0].state),
        (retry.as_str(), cri::PodSandboxState::SandboxReady as i32)
    );
    assert_eq!(w.ipam_leases().len(), 1, "one IP: {:?}", w.ipam_leases());
    assert_eq!(netns_pins(&w.server).len(), 1);

    // A plain second RunPodSandbox of the same pod, its caller present, is refused as before.
    let dup = run_pod_within(&mut rt, &cfg, Duration::from_secs(30)).await;
    assert_eq!(dup.map_err(|s| s.code()), Err(tonic::Code::AlreadyExists));

    stop_and_remove(&mut rt, &retry).await;
    w.assert_no_pod_left();
}

/// Pods start while waves of 500 parallel scrapes run: each scrape is answered (200, or 503
/// when 64 wait already), the scrapes share collections, and every pod starts. The start
/// times of the quiet and the flooded pods are printed (timing is measured by benchmarks,
/// not asserted here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, CNI plugins, docker-registry"]
async fn a_scrape_flood_is_bounded_and_pods_still_start() {
    let w = CriWorld::kubelet(170 + (std::process::id() % 20) as u8, "", "");
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
    let before = w.server.http("/v1/metrics", None).1;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = w.server.metrics_addr.clone();
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
    let after = w.server.http("/v1/metrics", None).1;
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

// ------------------------------------------------------- runc from taskd's sealed copy

/// The bundle dir of container `id`.
fn bundle_of(w: &CriWorld, id: &str) -> std::path::PathBuf {
    w.bundles()
        .into_iter()
        .find(|b| b.ends_with(id))
        .unwrap_or_else(|| panic!("no bundle for {id}"))
}

/// What `/proc/<pid>/exe` of the created (not started) container's `runc init` names.
async fn created_init_exe(
    w: &CriWorld,
    rt: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    name: &str,
) -> String {
    let cfg = w.pod_config(pod);
    let pod_id = w.run_pod(rt, &cfg).await;
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id,
            config: Some(container_config(name, "sleep 3600")),
            sandbox_config: Some(cfg),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    let pid = std::fs::read_to_string(bundle_of(w, &id).join("init.pid")).expect("init.pid");
    std::fs::read_link(format!("/proc/{}/exe", pid.trim()))
        .expect("exe of runc init")
        .display()
        .to_string()
}

/// The mounts at the runtime's `.sealed-runc` in taskd's state dir.
fn sealed_mounts(w: &CriWorld) -> usize {
    let at = w.server.state.join("io.containerd.runtime.v2.task/.sealed-runc");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(at.to_str().unwrap()))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, taskd's shim, CNI plugins, docker-registry"]
async fn containers_start_from_the_sealed_runc_copy_so_runc_init_mounts_nothing() {
    let w = CriWorld::start(200, "");
    let mut rt = w.runtime().await;
    assert_eq!(sealed_mounts(&w), 1, "one sealed copy per taskd");
    // runc init of a container that waits for StartContainer: run from the memfd (runc
    // saw it sealed and skipped its bind mount and re-exec), not from a runc.XXXXXX mount.
    let exe = created_init_exe(&w, &mut rt, "sealed", "waits").await;
    assert!(
        exe.starts_with("/memfd:taskd-sealed-runc"),
        "runc init runs from {exe}"
    );
    // Start and exec through it.
    let (_, id) = w.pod_with(&mut rt, "sealed-exec", "exec sleep 3600").await;
    let r = support::cri_client::sh(&mut rt, &id, "echo via-sealed").await;
    assert_eq!(
        (r.exit_code, String::from_utf8_lossy(&r.stdout).into_owned()),
        (0, "via-sealed\n".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, taskd's shim, CNI plugins, docker-registry"]
async fn a_restart_replaces_the_sealed_runc_copy_and_a_stop_removes_it() {
    let mut w = CriWorld::start(205, "");
    let mut rt = w.runtime().await;
    let (_, before) = w.pod_with(&mut rt, "kept", "exec sleep 3600").await;
    w.server.kill9();
    // The killed taskd's mount is stale; the restart detaches it and mounts a new copy.
    w.server.restart();
    assert_eq!(
        sealed_mounts(&w),
        1,
        "exactly one sealed copy after kill -9 and a restart"
    );
    let mut rt = w.runtime().await;
    let r = support::cri_client::sh(&mut rt, &before, "echo still").await;
    assert_eq!(r.exit_code, 0, "exec in a container of the earlier run");
    let exe = created_init_exe(&w, &mut rt, "after", "waits").await;
    assert!(
        exe.starts_with("/memfd:taskd-sealed-runc"),
        "runc init runs from {exe}"
    );
    assert_eq!(w.server.stop().code(), Some(0));
    assert_eq!(sealed_mounts(&w), 0, "no sealed copy left mounted after a stop");
    w.server.restart();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, taskd's shim, CNI plugins, docker-registry"]
async fn with_sealed_runc_off_runc_clones_itself_as_before() {
    let w = CriWorld::start_with_tables(
        210,
        "",
        "[plugins.\"io.containerd.runtime.v2.task\"]\nsealed_runc = false\n",
    );
    let mut rt = w.runtime().await;
    assert_eq!(sealed_mounts(&w), 0, "nothing sealed when switched off");
    let exe = created_init_exe(&w, &mut rt, "unsealed", "waits").await;
    assert!(!exe.contains("taskd-sealed-runc"), "runc init runs from {exe}");
}

//! The daemon's skeleton against the real binary and the real `ctr`: startup, sockets,
//! locking, config, signals, HTTP endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::Daemon;

fn taskd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_taskd"));
    c.env_remove("TASKD_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    c
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Polls `cond` for up to 20s.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "e2e: needs ctr (containerd)"]
fn smoke_daemon_serves_and_ctr_reaches_it() {
    support::require(&[support::Need::Bin("ctr", "containerd")]);
    let mut d = Daemon::start();
    assert!(UnixStream::connect(&d.socket).is_ok());
    assert!(UnixStream::connect(&d.ttrpc_socket).is_ok());
    let stdout = d.ctr_ok(&["version"]);
    assert!(
        stdout.contains("Client:") && stdout.contains("Server:"),
        "{stdout}"
    );
    let status = d.stop();
    assert!(status.success(), "{status}\n{}", d.log());
}

#[test]
fn sigterm_exits_zero_and_removes_both_sockets() {
    let mut d = Daemon::start();
    let status = d.stop();
    assert_eq!(status.code(), Some(0), "{status}\n{}", d.log());
    assert!(!d.socket.exists(), "grpc socket left behind");
    assert!(!d.ttrpc_socket.exists(), "ttrpc socket left behind");
    assert!(d.log().contains("SIGTERM"), "{}", d.log());
}

#[test]
fn second_instance_on_the_same_root_is_refused_and_the_first_keeps_serving() {
    let mut d = Daemon::start();
    let out = d.command().output().unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("another taskd already runs on this root"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(&format!("pid {}", d.pid())),
        "{}",
        stderr(&out)
    );
    // Another root but the same socket: refused too, and the socket is not stolen.
    let other = tempfile::tempdir().unwrap();
    let out = d
        .command()
        .arg("--root")
        .arg(other.path().join("root"))
        .arg("--state")
        .arg(other.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("in use by another live process"),
        "{}",
        stderr(&out)
    );
    assert!(d.running());
    assert!(UnixStream::connect(&d.socket).is_ok());
    assert_eq!(d.http("/readyz", None).0, 200);
    assert!(d.stop().success());
}

#[test]
fn socket_is_0660_in_a_0711_directory() {
    let d = Daemon::start();
    for s in [&d.socket, &d.ttrpc_socket] {
        let mode = std::fs::metadata(s).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660, "{}", s.display());
        let dir = std::fs::metadata(s.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir, 0o711, "{}", s.display());
    }
    let root = std::fs::metadata(&d.root).unwrap().permissions().mode() & 0o777;
    assert_eq!(root, 0o711);
}

#[test]
fn stale_sockets_after_kill9_are_replaced_on_restart() {
    let mut d = Daemon::start();
    d.kill9();
    assert!(
        d.socket.exists() && d.ttrpc_socket.exists(),
        "kill -9 leaves the socket files"
    );
    d.restart();
    assert!(UnixStream::connect(&d.socket).is_ok());
    assert!(d.log().contains("replacing stale socket"), "{}", d.log());
    assert!(d.stop().success());
}

#[test]
fn too_long_socket_path_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("x".repeat(110)).join("taskd.sock");
    let out = taskd()
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg("--address")
        .arg(&long)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("grpc.address") && err.contains("at most 107 bytes"),
        "{err}"
    );
    assert!(
        !dir.path().join("root").exists(),
        "refused before touching the disk"
    );
}

#[test]
fn config_default_passes_config_check() {
    let out = taskd().args(["config", "default"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("version = 1") && text.contains("[grpc]"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("default.toml");
    std::fs::write(&file, &text).unwrap();
    let out = taskd().args(["config", "check"]).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).is_empty(), "no warnings expected: {}", stderr(&out));
}

/// `taskd config migrate FILE` then `taskd config check` on its output: the findings.
fn migrate_and_check(dir: &std::path::Path, name: &str, containerd_toml: &str) -> String {
    let src = dir.join(format!("{name}.containerd.toml"));
    std::fs::write(&src, containerd_toml).unwrap();
    let out = taskd().args(["config", "migrate"]).arg(&src).output().unwrap();
    assert!(out.status.success(), "{name}: {}", stderr(&out));
    let migrated = String::from_utf8(out.stdout).unwrap();
    let dst = dir.join(format!("{name}.taskd.toml"));
    std::fs::write(&dst, &migrated).unwrap();
    let out = taskd().args(["config", "check"]).arg(&dst).output().unwrap();
    assert!(
        out.status.success(),
        "{name}: check refused the migrated config: {}\n{migrated}",
        stderr(&out)
    );
    migrated
}

#[test]
#[ignore = "e2e: needs containerd (its built-in default config)"]
fn config_migrate_of_containerd_1_6_default_passes_check() {
    support::require(&[support::Need::Bin("containerd", "containerd")]);
    let out = Command::new("containerd")
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let default = String::from_utf8(out.stdout).unwrap();
    assert!(default.contains("version = 2"), "{default}");
    let dir = tempfile::tempdir().unwrap();
    let m = migrate_and_check(dir.path(), "default", &default);
    let cfg: toml::Table = m.parse().unwrap();
    assert_eq!(cfg["root"].as_str(), Some("/var/lib/containerd"));
    assert_eq!(
        cfg["grpc"]["address"].as_str(),
        Some("/run/containerd/containerd.sock")
    );
    assert_eq!(
        cfg["metrics"]["address"].as_str(),
        Some(""),
        "containerd's metrics are off by default"
    );
    let cri = &cfg["plugins"]["io.containerd.cri.v1.cri"];
    assert_eq!(cri["sandbox_image"].as_str(), Some("registry.k8s.io/pause:3.6"));
    assert_eq!(
        cri["cni"]["bin_dirs"].as_array().unwrap()[0].as_str(),
        Some("/opt/cni/bin")
    );
    assert_eq!(cri["stream_idle_timeout"].as_str(), Some("4h"));
    assert_eq!(
        cri["runtimes"]["runc"]["runtime_type"].as_str(),
        Some("io.containerd.runc.v2")
    );
    // Every source key not carried over is listed, with its reason.
    for key in [
        "plugins.\"io.containerd.grpc.v1.cri\".disable_apparmor = false",
        "plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options.CriuPath = \"\"",
        "plugins.\"io.containerd.gc.v1.scheduler\".pause_threshold = 0.02",
        "stream_processors.\"io.containerd.ocicrypt.decoder.v1.tar\".path = \"ctd-decoder\"",
        "oom_score = 0",
    ] {
        let line = m
            .lines()
            .position(|l| l == format!("#   {key}"))
            .unwrap_or_else(|| panic!("{key} not listed:\n{m}"));
        assert!(
            m.lines()
                .nth(line + 1)
                .is_some_and(|r| r.starts_with("#       ") && r.len() > 12)
        );
    }
}

#[test]
fn config_migrate_of_the_bench_containerd_config_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = include_str!("../benches/containerd-config.toml")
        .replace("{root}", &d.join("root").display().to_string())
        .replace("{state}", &d.join("state").display().to_string())
        .replace("{sock}", &d.join("cd.sock").display().to_string())
        .replace("{debug}", &d.join("debug.sock").display().to_string())
        .replace("{conf}", &d.join("net.d").display().to_string())
        .replace("{registry}", "127.0.0.1:5000")
        .replace("{sandbox_image}", "registry.k8s.io/pause:3.10");
    let m = migrate_and_check(d, "bench", &text);
    let cfg: toml::Table = m.parse().unwrap();
    assert_eq!(
        cfg["ttrpc"]["address"].as_str(),
        Some(d.join("cd.sock.ttrpc").to_str().unwrap())
    );
    assert_eq!(cfg["debug"]["level"].as_str(), Some("warn"));
    let cri = &cfg["plugins"]["io.containerd.cri.v1.cri"];
    assert_eq!(
        cri["cni"]["conf_dir"].as_str(),
        Some(d.join("net.d").to_str().unwrap())
    );
    let regs = &cfg["plugins"]["io.containerd.service.v1.images-service"]["registries"];
    for r in ["registry.k8s.io", "docker.io"] {
        assert_eq!(
            regs[r]["mirrors"].as_array().unwrap()[0].as_str(),
            Some("http://127.0.0.1:5000")
        );
    }
    assert!(
        m.contains("#   plugins.\"io.containerd.grpc.v1.cri\".restrict_oom_score_adj = true"),
        "{m}"
    );
    assert!(m.contains("#   debug.address = "), "{m}");
}

#[test]
fn config_check_refuses_systemd_cgroup_that_disagrees_with_the_driver() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.toml");
    std::fs::write(
        &file,
        "version = 1\n[plugins.\"io.containerd.cri.v1.cri\"]\ncgroup_driver = \"systemd\"\n\
         [plugins.\"io.containerd.cri.v1.cri\".runtimes.runc.options]\nSystemdCgroup = false\n",
    )
    .unwrap();
    let out = taskd().args(["config", "check"]).arg(&file).output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(":5: plugins.\"io.containerd.cri.v1.cri\".runtimes.runc.options.SystemdCgroup")
            && err.contains("cgroup_driver"),
        "{err}"
    );
}

#[test]
fn config_check_names_unknown_key_and_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "version = 1\n\n[grpc]\naddress = \"/run/t.sock\"\nmax_recv_mesage_size = 1\n",
    )
    .unwrap();
    let out = taskd().args(["config", "check"]).arg(&file).output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}:5: grpc.max_recv_mesage_size", file.display())),
        "{err}"
    );
    // The daemon refuses the same file, naming the error.
    let out = taskd().arg("--config").arg(&file).output().unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("grpc.max_recv_mesage_size"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn sighup_does_not_kill_and_reloads_the_log_level() {
    // Without RUST_LOG, so the config's level is the one in force.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("taskd.toml");
    let port = support::free_port();
    let write = |level: &str| {
        std::fs::write(
            &cfg,
            format!("version = 1\n[metrics]\naddress = \"127.0.0.1:{port}\"\n[debug]\nlevel = \"{level}\"\n"),
        )
        .unwrap();
    };
    write("info");
    let log = dir.path().join("log");
    let mut child = taskd()
        .arg("--config")
        .arg(&cfg)
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg("--address")
        .arg(dir.path().join("state/taskd.sock"))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    eventually("readyz", || {
        matches!(support::http_get(&addr, "/readyz", None), Ok((200, _)))
    });
    write("debug");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    eventually("log level reloaded", || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("log level reloaded")
    });
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP killed taskd");
    assert_eq!(support::http_get(&addr, "/readyz", None).unwrap().0, 200);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn sighup_with_harness_overrides_keeps_serving() {
    let mut d = Daemon::start();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    eventually("SIGHUP handled", || d.log().contains("config level not applied"));
    assert!(d.running());
    assert_eq!(d.http("/readyz", None).0, 200);
    assert!(d.stop().success());
}

#[test]
#[ignore = "e2e: needs ctr (containerd)"]
fn healthz_readyz_and_metrics_answer_over_http() {
    let d = Daemon::start();
    assert_eq!(d.http("/healthz", None).0, 200);
    assert_eq!(d.http("/readyz", None), (200, "ready\n".into()));
    let _ = d.ctr(&["version"]);
    for path in ["/metrics", "/v1/metrics"] {
        let (code, body) = d.http(path, None);
        assert_eq!(code, 200);
        for name in [
            "taskd_build_info{",
            "process_resident_memory_bytes",
            "taskd_grpc_requests_total{",
            "taskd_grpc_request_duration_seconds_bucket{",
        ] {
            assert!(body.contains(name), "{name} missing from {path}:\n{body}");
        }
    }
    assert_eq!(d.http("/nope", None).0, 404);
}

#[test]
fn bearer_token_is_enforced_on_metrics_only() {
    let tokdir = tempfile::tempdir().unwrap();
    let token = tokdir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let d = Daemon::start_with(&format!(
        "[metrics]\nbearer_token_file = {:?}\n",
        token.display().to_string()
    ));
    assert_eq!(d.http("/metrics", None).0, 401);
    assert_eq!(d.http("/v1/metrics", Some("wrong")).0, 401);
    assert_eq!(d.http("/metrics", Some("s3cret")).0, 200);
    assert_eq!(d.http("/v1/metrics", Some("s3cret")).0, 200);
    assert_eq!(d.http("/healthz", None).0, 200);
    assert_eq!(d.http("/readyz", None).0, 200);
}

#[tokio::test]
async fn invalid_namespace_header_is_invalid_argument_for_every_rpc() {
    use taskd_proto::containerd::services::version::v1::version_client::VersionClient;
    let d = Daemon::start();
    let mut client = VersionClient::new(d.channel().await);
    let mut req = tonic::Request::new(());
    req.metadata_mut()
        .insert("containerd-namespace", "-bad-".parse().unwrap());
    let status = client.version(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("namespace"), "{status:?}");
    let mut req = tonic::Request::new(());
    req.metadata_mut()
        .insert("containerd-namespace", "default".parse().unwrap());
    if let Err(status) = client.version(req).await {
        assert_ne!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
    let (_, metrics) = d.http("/metrics", None);
    assert!(metrics.contains("code=\"InvalidArgument\""), "{metrics}");
}

#[test]
fn json_log_format_writes_one_json_object_per_line() {
    let mut d = Daemon::start_with("[debug]\nformat = \"json\"\n");
    assert!(d.stop().success());
    let log = d.log();
    let (mut lines, mut serving) = (0, None);
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{log}"));
        // The names log pipelines expect, every field at the top level.
        for key in ["time", "level", "msg", "target"] {
            assert!(
                v.get(key).is_some_and(serde_json::Value::is_string),
                "{key} in {line}"
            );
        }
        assert!(v.get("fields").is_none(), "{line}");
        if v["msg"] == "taskd is serving" {
            serving = Some(v.clone());
        }
        lines += 1;
    }
    assert!(lines > 0, "{log}");
    let serving = serving.unwrap_or_else(|| panic!("no 'taskd is serving' line: {log}"));
    assert_eq!(serving["level"], "info");
    assert!(
        serving["grpc"]
            .as_str()
            .is_some_and(|g| g.ends_with("taskd.sock")),
        "{serving}"
    );
    assert!(
        serving["time"].as_str().is_some_and(|t| t.contains('T')),
        "{serving}"
    );
}

#[test]
fn metrics_endpoint_can_be_disabled() {
    let mut d = Daemon::start_with("[metrics]\naddress = \"\"\n");
    assert!(d.metrics_addr.is_empty());
    assert!(!d.log().contains("serving metrics"), "{}", d.log());
    assert!(d.stop().success());
}

#[test]
fn log_level_flag_applies_when_rust_log_is_unset() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("state/taskd.sock");
    let log = dir.path().join("log");
    let cfg = dir.path().join("taskd.toml");
    std::fs::write(&cfg, "[metrics]\naddress = \"\"\n[debug]\nlevel = \"debug\"\n").unwrap();
    let mut child = taskd()
        .arg("--config")
        .arg(&cfg)
        .args(["--log-level", "warn"])
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg("--address")
        .arg(&socket)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    eventually("socket", || UnixStream::connect(&socket).is_ok());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("INFO") && !text.contains("DEBUG"),
        "--log-level warn wins over the config:\n{text}"
    );
}

/// A namespace whose labels make a request of about `bytes` bytes (each label under the
/// 4096-byte label limit, so the service accepts it once it is decoded).
fn big_namespace(name: &str, bytes: usize) -> taskd_proto::containerd::services::namespaces::v1::Namespace {
    let value = "v".repeat(4000);
    taskd_proto::containerd::services::namespaces::v1::Namespace {
        name: name.into(),
        labels: (0..bytes.div_ceil(4000))
            .map(|i| (format!("k{i:05}"), value.clone()))
            .collect(),
    }
}

fn with_ns<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("containerd-namespace", "default".parse().unwrap());
    req
}

#[tokio::test]
#[ignore = "e2e: needs ctr (containerd)"]
async fn grpc_max_recv_message_size_is_applied() {
    use taskd_proto::containerd::services::namespaces::v1::CreateNamespaceRequest;
    use taskd_proto::containerd::services::namespaces::v1::namespaces_client::NamespacesClient;
    let d = Daemon::start_with("[grpc]\nmax_recv_message_size = 65536\n");
    let mut client = NamespacesClient::new(d.channel().await);
    let status = client
        .create(with_ns(CreateNamespaceRequest {
            namespace: Some(big_namespace("big", 100_000)),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    // Under the limit: served.
    client
        .create(with_ns(CreateNamespaceRequest {
            namespace: Some(big_namespace("small", 20_000)),
        }))
        .await
        .unwrap();
    assert!(!d.ctr_ok(&["namespaces", "ls", "-q"]).contains("big"));
}

#[tokio::test]
async fn grpc_max_send_message_size_is_applied() {
    use taskd_proto::containerd::services::namespaces::v1::namespaces_client::NamespacesClient;
    use taskd_proto::containerd::services::namespaces::v1::{CreateNamespaceRequest, GetNamespaceRequest};
    let d = Daemon::start_with("[grpc]\nmax_send_message_size = 65536\n");
    let mut client = NamespacesClient::new(d.channel().await);
    // The request is decoded (default 16 MiB) and the namespace created; the response, which
    // echoes the labels, is over the send limit.
    let status = client
        .create(with_ns(CreateNamespaceRequest {
            namespace: Some(big_namespace("big", 100_000)),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let status = client
        .get(with_ns(GetNamespaceRequest { name: "big".into() }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
}

#[tokio::test]
async fn grpc_default_message_size_accepts_one_mib() {
    use taskd_proto::containerd::services::namespaces::v1::namespaces_client::NamespacesClient;
    use taskd_proto::containerd::services::namespaces::v1::{CreateNamespaceRequest, GetNamespaceRequest};
    let d = Daemon::start();
    let mut client = NamespacesClient::new(d.channel().await);
    let ns = big_namespace("big", 1 << 20);
    client
        .create(with_ns(CreateNamespaceRequest {
            namespace: Some(ns.clone()),
        }))
        .await
        .unwrap();
    let got = client
        .get(with_ns(GetNamespaceRequest { name: "big".into() }))
        .await
        .unwrap()
        .into_inner()
        .namespace
        .unwrap();
    assert_eq!(got, ns);
}

/// The next sd_notify datagram on `rx`, skipping watchdog pings when `skip_pings` (blocking
/// read on the blocking pool, 20 s at most).
async fn notification(
    rx: std::os::unix::net::UnixDatagram,
    skip_pings: bool,
) -> (String, std::os::unix::net::UnixDatagram) {
    tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 512];
        loop {
            let n = rx.recv(&mut buf).expect("a notification within 20 s");
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            if !(skip_pings && m == "WATCHDOG=1") {
                return (m, rx);
            }
        }
    })
    .await
    .unwrap()
}

/// systemd readiness (`Type=notify`): READY=1 reaches `NOTIFY_SOCKET` only once the CRI
/// answers, the watchdog is pinged at half of `WATCHDOG_USEC`, and SIGTERM sends STOPPING=1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_ready_only_once_the_cri_answers_then_watchdog_and_stopping() {
    let mut d = Daemon::start();
    d.stop();
    let path = d.dir.join("notify.sock");
    let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(&d.log_path)
        .unwrap();
    let mut child = d
        .command()
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "300000")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let (ready, rx) = notification(rx, false).await;
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(ready.contains(&format!("MAINPID={}", child.id())), "{ready}");
    // At the moment READY=1 arrives, the CRI already answers.
    let version = k8s_cri::v1::runtime_service_client::RuntimeServiceClient::new(d.channel().await)
        .version(k8s_cri::v1::VersionRequest::default())
        .await
        .expect("CRI Version right after READY=1")
        .into_inner();
    assert_eq!(version.runtime_name, "taskd");
    let (ping, rx) = notification(rx, false).await;
    assert_eq!(ping, "WATCHDOG=1");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (stopping, _) = notification(rx, true).await;
    assert!(stopping.starts_with("STOPPING=1"), "{stopping}");
    assert!(child.wait().unwrap().success());
}

/// SIGHUP through a real daemon: the metrics bearer token is turned on and rotated live, a
/// key that needs a restart is named in the log, and a file that fails its check is rejected
/// whole (its new token is not applied either).
#[test]
fn sighup_reloads_the_metrics_token_names_restart_keys_and_rejects_a_bad_file() {
    let d = Daemon::start();
    assert_eq!(d.http("/v1/metrics", None).0, 200);
    let token = d.dir.join("metrics-token");
    std::fs::write(&token, "first-secret\n").unwrap();
    let file = token.display().to_string();
    let log = d.reload_with(|cfg| {
        let m = cfg
            .entry("metrics")
            .or_insert(toml::Value::Table(Default::default()));
        m.as_table_mut()
            .unwrap()
            .insert("bearer_token_file".into(), file.clone().into());
        let g = cfg
            .entry("grpc")
            .or_insert(toml::Value::Table(Default::default()));
        g.as_table_mut()
            .unwrap()
            .insert("max_recv_message_size".into(), 65536.into());
    });
    assert!(log.contains("SIGHUP: config reloaded"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("cannot change live") && l.contains("grpc")),
        "the restart-only key is named: {log}"
    );
    assert_eq!(d.http("/v1/metrics", None).0, 401);
    assert_eq!(d.http("/v1/metrics", Some("first-secret")).0, 200);

    // A rotated token file takes effect on the next SIGHUP.
    std::fs::write(&token, "second-secret\n").unwrap();
    let log = d.sighup_and_wait();
    assert!(log.contains("SIGHUP: config reloaded"), "{log}");
    assert_eq!(d.http("/v1/metrics", Some("first-secret")).0, 401);
    assert_eq!(d.http("/v1/metrics", Some("second-secret")).0, 200);

    // A bad key anywhere rejects the whole file: the token stays in force.
    let log = d.reload_with(|cfg| {
        if let Some(m) = cfg.get_mut("metrics").and_then(toml::Value::as_table_mut) {
            m.remove("bearer_token_file");
        }
        cfg.insert("bogus_key".into(), 1.into());
    });
    assert!(
        log.contains("SIGHUP: config rejected") && log.contains("bogus_key"),
        "{log}"
    );
    assert_eq!(d.http("/v1/metrics", None).0, 401);
    assert_eq!(d.http("/v1/metrics", Some("second-secret")).0, 200);
    assert!(d.http("/healthz", None).0 == 200, "still serving");
}

/// containerd's `registry.config_path` (its hosts.toml directory) becomes the images
/// service's `config_path`, which `taskd config check` accepts.
#[test]
fn config_migrate_maps_the_registry_config_path() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs.d");
    std::fs::create_dir(&certs).unwrap();
    let text = format!(
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = {:?}\n",
        certs.display().to_string()
    );
    let m = migrate_and_check(dir.path(), "config_path", &text);
    let cfg: toml::Table = m.parse().unwrap();
    assert_eq!(
        cfg["plugins"]["io.containerd.service.v1.images-service"]["config_path"].as_str(),
        Some(certs.to_str().unwrap()),
        "{m}"
    );
}

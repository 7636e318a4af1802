//! taskd through clients that share none of its HTTP/2, SPDY or WebSocket code: Python
//! grpcio on its default unix-socket channel, Debian's grpc-go dialled as kubelet dials, a
//! Go client on github.com/moby/spdystream (kubelet's SPDY protocols), and a Python
//! websocket-client (kubelet's WebSocket protocols). The clients are in `tests/clients/`
//! (`tests/support/clients.rs` runs them); the pods are set up with the k8s-cri client
//! (`tests/support/cri_world.rs`), every check goes through an independent client.
//!
//! Run: `TASKD_E2E=1 cargo test --test interop -- --include-ignored` (as root; needs what
//! `scripts/test.sh` installs).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "support/clients.rs"]
mod clients;
#[path = "support/cri_world.rs"]
mod cri_world;
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clients::{cri_grpc, grpcgo, spdy, spdy_with_stdin, ws};
use cri_world::{CriWorld, container, wait_until};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde_json::json;
use tonic::transport::Channel;

/// Subnets 10.89.<100..150>.0/24 for this binary's worlds.
const OCTETS: u8 = 100;

fn world() -> CriWorld {
    CriWorld::start(OCTETS, "")
}

/// The exec URL for `cmd` in container `id`.
async fn exec_url(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    cmd: &[&str],
    tty: bool,
    stdin: bool,
) -> String {
    rt.exec(cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(std::string::ToString::to_string).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    })
    .await
    .unwrap_or_else(|e| panic!("Exec {cmd:?}: {e:?}"))
    .into_inner()
    .url
}

async fn attach_url(rt: &mut RuntimeServiceClient<Channel>, id: &str, tty: bool) -> String {
    rt.attach(cri::AttachRequest {
        container_id: id.into(),
        stdin: true,
        tty,
        stdout: true,
        stderr: !tty,
    })
    .await
    .unwrap_or_else(|e| panic!("Attach: {e:?}"))
    .into_inner()
    .url
}

async fn port_forward_url(rt: &mut RuntimeServiceClient<Channel>, pod: &str, ports: &[i32]) -> String {
    rt.port_forward(cri::PortForwardRequest {
        pod_sandbox_id: pod.into(),
        port: ports.to_vec(),
    })
    .await
    .unwrap_or_else(|e| panic!("PortForward {ports:?}: {e:?}"))
    .into_inner()
    .url
}

/// Asserts `url` is `http://127.0.0.1:PORT/<kind>/<token>` (taskd's defaults).
fn assert_stream_url(url: &str, kind: &str) {
    let rest = url
        .strip_prefix("http://127.0.0.1:")
        .unwrap_or_else(|| panic!("not a loopback http URL: {url}"));
    let (port, path) = rest.split_once('/').unwrap_or_else(|| panic!("no path: {url}"));
    assert!(port.parse::<u16>().is_ok_and(|p| p > 0), "port of {url}");
    let token = path
        .strip_prefix(&format!("{kind}/"))
        .unwrap_or_else(|| panic!("{url} is not a /{kind}/ URL"));
    assert!(token.len() >= 8 && !token.contains('/'), "token of {url}");
}

/// The Status a v4 client decoded, as text for messages.
fn status_of(r: &serde_json::Value) -> String {
    format!(
        "status {} / error stream {:?} / error {}",
        r["status"], r["error_stream"], r["error"]
    )
}

// ---------------------------------------------------------------- gRPC: grpcio and grpc-go

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, python3 grpcio + grpcio-tools"]
async fn grpcio_default_unix_channel_runs_pod_container_exec_and_containerd_version() {
    let w = &world();
    let pod = w.pod_config("grpcio");
    // proto3 JSON of the same PodSandboxConfig and ContainerConfig the k8s-cri client sends.
    let pod_json = json!({
        "metadata": {"name": "grpcio", "uid": "uid-grpcio", "namespace": "default"},
        "hostname": "grpcio",
        "log_directory": pod.log_directory,
        "linux": {"cgroup_parent": w.cgroup_parent()},
    });
    let ctr_json = json!({
        "metadata": {"name": "app"},
        "image": {"image": "busybox"},
        "command": ["/bin/sh", "-c", "exec sleep 3600"],
        "log_path": "app.log",
    });
    let r = cri_grpc(
        w.socket(),
        &[
            "flow",
            "--image",
            "busybox",
            "--pod",
            &pod_json.to_string(),
            "--container",
            &ctr_json.to_string(),
        ],
    );
    let r = r.ok();
    assert_eq!(r["version"]["runtime_name"], "taskd", "{r}");
    assert_eq!(r["version"]["runtime_api_version"], "v1", "{r}");
    assert!(
        r["image_ref"].as_str().unwrap_or_default().starts_with("sha256:"),
        "{r}"
    );
    assert_eq!(
        r["exec_sync"],
        json!({"stdout": "exec-ok\n", "stderr": "err\n", "exit_code": 3}),
        "{r}"
    );
    assert_stream_url(r["exec_url"].as_str().unwrap_or_default(), "exec");
    // Exec into a stopped container is refused.
    assert_eq!(r["exec_after_stop"]["code"], "FAILED_PRECONDITION", "{r}");
    assert!(
        !r["containerd_version"]["version"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{r}"
    );
    let pod_id = r["pod"].as_str().unwrap_or_default();
    assert!(
        !r["pods_left"]
            .as_array()
            .expect("pods_left")
            .iter()
            .any(|p| p == pod_id),
        "{r}"
    );
}

#[test]
#[ignore = "e2e: root, python3 grpcio + grpcio-tools"]
fn grpcio_every_authority_form_reaches_cri_containerd_api_and_streaming_rpcs() {
    support::require(&[support::Need::Root]);
    let d = support::Daemon::start();
    let r = cri_grpc(&d.socket, &["authority"]);
    let sock = d.socket.display().to_string();
    let forms: Vec<&str> = r.json["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", r.json))
        .iter()
        .filter_map(|x| x["authority"].as_str())
        .collect();
    // The default channel, then every explicit form.
    assert_eq!(forms.len(), 5, "{}", r.json);
    assert!(forms.contains(&sock.as_str()), "{forms:?}");
    assert!(forms.iter().any(|f| f.starts_with("%2F")), "{forms:?}");
    assert!(forms.contains(&"localhost"), "{forms:?}");
    // Every form, every call: all failures at once.
    let failed: Vec<String> = r.json["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| {
            x["cri_version"]["ok"] != "taskd"
                || x["containerd_version"]["ok"].as_str().is_none_or(str::is_empty)
                || x["stream"]["ok"] != 0
        })
        .map(std::string::ToString::to_string)
        .collect();
    assert!(
        failed.is_empty(),
        "authority forms that failed:\n{}",
        failed.join("\n")
    );
    assert!(r.success, "{}", r.json);
}

#[test]
#[ignore = "e2e: root, Go (golang-go, golang-google-grpc-dev)"]
fn grpc_go_dialled_like_kubelet_gets_cri_and_containerd_versions() {
    support::require(&[support::Need::Root]);
    let d = support::Daemon::start();
    let r = grpcgo(&d.socket, "/runtime.v1.RuntimeService/Version").ok();
    // VersionResponse: version, runtime_name, runtime_version, runtime_api_version.
    assert_eq!(r["fields"]["2"], "taskd", "{r}");
    assert_eq!(r["fields"]["4"], "v1", "{r}");
    let r = grpcgo(&d.socket, "/containerd.services.version.v1.Version/Version").ok();
    assert!(r["fields"]["1"].as_str().is_some_and(|v| !v.is_empty()), "{r}");
}

#[test]
#[ignore = "e2e: root, python3 grpcio + grpcio-tools"]
fn grpcio_streaming_requests_for_unknown_ids_are_not_found() {
    support::require(&[support::Need::Root]);
    let d = support::Daemon::start();
    for (method, req) in [
        (
            "RuntimeService/Exec",
            json!({"container_id": "no-such-container", "cmd": ["true"], "stdout": true}),
        ),
        (
            "RuntimeService/Attach",
            json!({"container_id": "no-such-container", "stdin": true, "stdout": true}),
        ),
        (
            "RuntimeService/PortForward",
            json!({"pod_sandbox_id": "no-such-pod", "port": [80]}),
        ),
    ] {
        let r = cri_grpc(&d.socket, &["call", method, &req.to_string()]).ok();
        assert_eq!(r["error"]["code"], "NOT_FOUND", "{method}: {r}");
    }
}

// ---------------------------------------------------------------- SPDY exec

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Go + spdystream"]
async fn spdy_exec_carries_stdin_stdout_stderr_and_stdin_close_ends_the_process() {
    let w = &world();
    let mut rt = w.runtime().await;
    let (_, id) = w.pod_with(&mut rt, "exec", "exec sleep 3600").await;
    // cat ends only when the half-close of the stdin stream reaches it.
    let url = exec_url(&mut rt, &id, &["sh", "-c", "cat; echo done >&2"], false, true).await;
    assert_stream_url(&url, "exec");
    let r = spdy_with_stdin("exec", &["-stdin"], &url, b"hello from stdin\nsecond line\n").ok();
    assert_eq!(r["protocol"], "v4.channel.k8s.io", "{r}");
    assert_eq!(r["stdout"], "hello from stdin\nsecond line\n", "{r}");
    assert_eq!(r["stderr"], "done\n", "{r}");
    assert_eq!(r["exit_code"], 0, "{}", status_of(&r));
    assert_eq!(r["status"]["status"], "Success", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Go + spdystream"]
async fn spdy_exec_exit_codes_reach_the_client_in_the_v4_status() {
    let w = &world();
    let mut rt = w.runtime().await;
    let (_, id) = w.pod_with(&mut rt, "codes", "exec sleep 3600").await;
    for code in [0, 3, 42] {
        let url = exec_url(
            &mut rt,
            &id,
            &["sh", "-c", &format!("echo out; exit {code}")],
            false,
            false,
        )
        .await;
        let r = spdy("exec", &[], &url).ok();
        assert_eq!(r["stdout"], "out\n", "{r}");
        assert_eq!(r["exit_code"], code, "exit {code}: {}", status_of(&r));
        if code == 0 {
            assert_eq!(r["status"]["status"], "Success", "{r}");
        } else {
            assert_eq!(r["status"]["status"], "Failure", "{r}");
            assert_eq!(r["status"]["reason"], "NonZeroExitCode", "{r}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Go + spdystream"]
async fn spdy_exec_speaks_remotecommand_v3_v2_and_v1() {
    let w = &world();
    let mut rt = w.runtime().await;
    let (_, id) = w.pod_with(&mut rt, "versions", "exec sleep 3600").await;
    for proto in ["v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"] {
        let url = exec_url(
            &mut rt,
            &id,
            &["sh", "-c", "echo out-$0; echo err >&2", proto],
            false,
            false,
        )
        .await;
        let r = spdy("exec", &["-protocols", proto], &url).ok();
        assert_eq!(r["protocol"], proto, "{r}");
        assert_eq!(r["stdout"], format!("out-{proto}\n"), "{r}");
        assert_eq!(r["stderr"], "err\n", "{r}");
        // Before v4 a clean exit leaves the error stream empty.
        assert_eq!(r["error_stream"], "", "{r}");
        // v2 and v3 say there, as text, that an exit failed (v1 says nothing: kubelet's
        // server, in containerd 1.6, writes no status in v1).
        if proto != "channel.k8s.io" {
            let url = exec_url(&mut rt, &id, &["sh", "-c", "exit 7"], false, false).await;
            let r = spdy("exec", &["-protocols", proto], &url).ok();
            assert!(
                r["error_stream"].as_str().is_some_and(|e| e.contains('7')),
                "{proto}: {r}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Go + spdystream"]
async fn spdy_tty_exec_sees_terminal_resizes() {
    let w = &world();
    let mut rt = w.runtime().await;
    let (_, id) = w.pod_with(&mut rt, "tty", "exec sleep 3600").await;
    // Waits (bounded) for each size in turn, so the check does not race the resize stream.
    let script = "for want in '40 100' '50 120'; do i=0; \
                  while [ \"$(stty size 2>/dev/null)\" != \"$want\" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; \
                  echo \"size=$(stty size)\"; done; [ -t 0 ] && echo stdin-is-a-tty";
    let url = exec_url(&mut rt, &id, &["sh", "-c", script], true, true).await;
    let r = spdy(
        "exec",
        &[
            "-tty",
            "-stdin",
            "-no-stdin-close",
            "-resize",
            "100x40",
            "-resize",
            "120x50",
        ],
        &url,
    )
    .ok();
    let out = r["stdout"].as_str().unwrap_or_default().replace('\r', "");
    assert_eq!(out, "size=40 100\nsize=50 120\nstdin-is-a-tty\n", "{r}");
    assert_eq!(r["exit_code"], 0, "{}", status_of(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Go + spdystream"]
async fn spdy_exec_with_a_stream_opened_twice_runs_nothing() {
    let w = &world();
    let mut rt = w.runtime().await;
    let (_, id) = w.pod_with(&mut rt, "twice", "exec sleep 3600").await;
    let url = exec_url(
        &mut rt,
        &id,
        &["sh", "-c", "echo ran > /tmp/ran; echo ran"],
        false,
        false,
    )
    .await;
    // error, stdout, stdout again (before stderr completes the set).
    let r = spdy("exec", &["-dup-stream", "stdout", "-timeout", "20s"], &url);
    let error = r.str("error");
    assert!(
        !error.contains("did not end"),
        "no answer to a stream opened twice: {}",
        r.json
    );
    assert!(
        !r.success || !r.str("error_stream").is_empty(),
        "a stream opened twice was accepted: {}",
        r.json
    );
    assert_eq!(r.str("stdout"), "", "{}", r.json);
    let ran = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["cat".into(), "/tmp/ran".into()],
            timeout: 10,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    assert_ne!(
        ran.exit_code,
        0,
        "the command ran: {}",
        String::from_utf8_lossy(&ran.stdout)
    );
}

// ---------------------------------------------------------------- SPDY attach

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Go + spdystream"]
async fn spdy_attach_reaches_a_stdin_container_and_its_output_stays_in_the_cri_log() {
    let w = &world();
    let mut rt = w.runtime().await;
    let cfg = w.pod_config("attach");
    let pod = w.run_pod(&mut rt, &cfg).await;
    let mut c = container(
        "reader",
        "while read l; do echo got:$l; echo err:$l >&2; done; echo stdin-closed",
    );
    c.stdin = true;
    c.stdin_once = true;
    let id = w.start_container(&mut rt, &pod, &cfg, c).await;
    let url = attach_url(&mut rt, &id, false).await;
    assert_stream_url(&url, "attach");
    let r = spdy("attach", &["-stdin-data", "one\ntwo\n"], &url).ok();
    assert_eq!(r["stdout"], "got:one\ngot:two\nstdin-closed\n", "{r}");
    assert_eq!(r["stderr"], "err:one\nerr:two\n", "{r}");
    // stdin_once: closing the attached stdin closed the container's; it has exited.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = rt
            .container_status(cri::ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("status")
            .state;
        if state == cri::ContainerState::ContainerExited as i32 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the container did not exit: state {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = w.log("attach", "reader");
    for line in [
        "stdout F got:one",
        "stdout F got:two",
        "stderr F err:one",
        "stdout F stdin-closed",
    ] {
        assert!(log.contains(line), "{line:?} not in the CRI log:\n{log}");
    }
}

// ---------------------------------------------------------------- SPDY port-forward

/// A pod serving httpd on 127.0.0.1:`http` and, in its own network namespace only (nc
/// cannot bind loopback alone), `pong:<line>` on `echo`.
async fn servers_pod(
    w: &CriWorld,
    rt: &mut RuntimeServiceClient<Channel>,
    cfg: &cri::PodSandboxConfig,
    http: u16,
    echo: Option<u16>,
) -> String {
    let pod = w.run_pod(rt, cfg).await;
    let name = cfg.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
    let echo = echo
        .map(|p| format!("{{ nc -ll -p {p} -e /bin/sh -c 'read l; echo pong:$l' & }} && sleep 0.5 && "))
        .unwrap_or_default();
    let script = format!(
        "mkdir -p /tmp/www && echo pf-ok > /tmp/www/index.html && httpd -p 127.0.0.1:{http} -h /tmp/www && \
         {echo}echo ready && exec sleep 3600"
    );
    w.start_container(rt, &pod, cfg, container(&name, &script)).await;
    wait_until("the pod's servers", Duration::from_secs(30), || {
        w.log(&name, &name).contains("ready")
    });
    pod
}

const GET: &str = "GET /index.html HTTP/1.0\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Go + spdystream"]
async fn spdy_port_forward_reaches_pod_loopback_ports_over_concurrent_connections() {
    let w = &world();
    let mut rt = w.runtime().await;
    let cfg = w.pod_config("pf");
    let pod = servers_pod(w, &mut rt, &cfg, 8080, Some(9090)).await;
    let url = port_forward_url(&mut rt, &pod, &[8080, 9090]).await;
    assert_stream_url(&url, "portforward");
    let conns: Vec<String> = [
        format!("8080:{GET}"),
        "9090:one\n".into(),
        format!("8080:{GET}"),
        "9090:two\n".into(),
        "9090:three\n".into(),
    ]
    .into_iter()
    .flat_map(|c| ["-conn".to_owned(), c])
    .collect();
    let args: Vec<&str> = conns.iter().map(String::as_str).collect();
    let r = spdy("portforward", &args, &url).ok();
    assert_eq!(r["protocol"], "portforward.k8s.io", "{r}");
    let got: Vec<(i64, String, String)> = r["conns"]
        .as_array()
        .expect("conns")
        .iter()
        .map(|c| {
            (
                c["port"].as_i64().unwrap_or_default(),
                c["data"].as_str().unwrap_or_default().to_owned(),
                c["error_stream"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(got.len(), 5, "{r}");
    for (i, (port, data, err)) in got.iter().enumerate() {
        assert_eq!(err, "", "connection {i}: {r}");
        if *port == 8080 {
            assert!(
                data.starts_with("HTTP/1.") && data.ends_with("pf-ok\n"),
                "connection {i}: {data:?}"
            );
        }
    }
    assert_eq!(got[1].1, "pong:one\n");
    assert_eq!(got[3].1, "pong:two\n");
    assert_eq!(got[4].1, "pong:three\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Go + spdystream"]
async fn spdy_port_forward_in_a_host_network_pod_reaches_the_host_loopback() {
    let w = &world();
    let mut rt = w.runtime().await;
    let cfg = w.host_network_pod_config("hostpf");
    let http = support::free_port();
    let pod = servers_pod(w, &mut rt, &cfg, http, None).await;
    // The pod's httpd is on the host's loopback.
    let (code, body) = support::http_get(&format!("127.0.0.1:{http}"), "/index.html", None).expect("GET");
    assert_eq!((code, body.as_str()), (200, "pf-ok\n"));
    let url = port_forward_url(&mut rt, &pod, &[http as i32]).await;
    let c = format!("{http}:{GET}");
    let r = spdy("portforward", &["-conn", &c, "-conn", &c], &url).ok();
    for c in r["conns"].as_array().expect("conns") {
        assert!(c["data"].as_str().is_some_and(|d| d.ends_with("pf-ok\n")), "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Go + spdystream"]
async fn spdy_port_forward_to_a_port_nobody_listens_on_fails_on_the_error_stream() {
    let w = &world();
    let mut rt = w.runtime().await;
    let cfg = w.pod_config("closed");
    let pod = servers_pod(w, &mut rt, &cfg, 8080, Some(9090)).await;
    let url = port_forward_url(&mut rt, &pod, &[8081, 8080]).await;
    // One refused and one good connection in the same session: the error is per connection.
    let c = format!("8080:{GET}");
    let r = spdy(
        "portforward",
        &["-conn", "8081:hello", "-conn", &c, "-read-idle", "5s"],
        &url,
    )
    .ok();
    let conns = r["conns"].as_array().expect("conns");
    assert!(
        conns[0]["error_stream"]
            .as_str()
            .is_some_and(|e| e.contains("8081")),
        "no error for port 8081: {r}"
    );
    assert_eq!(conns[0]["data"], "", "{r}");
    assert!(
        conns[1]["data"].as_str().is_some_and(|d| d.ends_with("pf-ok\n")),
        "{r}"
    );
}

// ---------------------------------------------------------------- tokens

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Go + spdystream, python3 websocket-client"]
async fn streaming_urls_are_single_use_and_unknown_tokens_are_refused() {
    let w = &world();
    let mut rt = w.runtime().await;
    let (_, id) = w.pod_with(&mut rt, "tokens", "exec sleep 3600").await;
    let url = exec_url(&mut rt, &id, &["echo", "once"], false, false).await;
    assert_eq!(spdy("exec", &[], &url).ok()["stdout"], "once\n");
    // Reused, over SPDY and over WebSocket: refused before any upgrade.
    let again = spdy("exec", &[], &url);
    assert!(!again.success, "{}", again.json);
    let status = again.json["http_status"].as_i64().unwrap_or_default();
    assert!((400..500).contains(&status), "reused token: {}", again.json);
    let again = ws("exec", &url.replace("http://", "ws://"), &[]);
    let ws_status = again.json["http_status"].as_i64().unwrap_or_default();
    assert!(
        !again.success && (400..500).contains(&ws_status),
        "reused token: {}",
        again.json
    );
    // Unknown tokens, for each kind of URL.
    let base = url.rsplit_once("/exec/").expect("exec URL").0.to_owned();
    for kind in ["exec", "attach", "portforward"] {
        let unknown = format!("{base}/{kind}/AAAAAAAAAAAAAAAAAAAAAAAA");
        let r = spdy(
            if kind == "portforward" {
                "portforward"
            } else {
                "exec"
            },
            &["-conn", "80"],
            &unknown,
        );
        let s = r.json["http_status"].as_i64().unwrap_or_default();
        assert!(
            !r.success && (400..500).contains(&s),
            "unknown {kind} token: {}",
            r.json
        );
    }
    // taskd still serves the next URL.
    let url = exec_url(&mut rt, &id, &["echo", "twice"], false, false).await;
    assert_eq!(spdy("exec", &[], &url).ok()["stdout"], "twice\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Go + spdystream; waits 1 min"]
async fn streaming_urls_expire_after_one_minute() {
    let w = world();
    let mut rt = w.runtime().await;
    let (_, id) = w.pod_with(&mut rt, "expiry", "exec sleep 3600").await;
    let early = exec_url(&mut rt, &id, &["echo", "in-time"], false, false).await;
    let late = exec_url(&mut rt, &id, &["echo", "too-late"], false, false).await;
    tokio::time::sleep(Duration::from_secs(50)).await;
    assert_eq!(spdy("exec", &[], &early).ok()["stdout"], "in-time\n");
    tokio::time::sleep(Duration::from_secs(12)).await;
    let r = spdy("exec", &[], &late);
    let status = r.json["http_status"].as_i64().unwrap_or_default();
    assert!(
        !r.success && (400..500).contains(&status),
        "expired token: {}",
        r.json
    );
}

// ---------------------------------------------------------------- WebSocket

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, python3 websocket-client"]
async fn websocket_v5_exec_closes_stdin_with_the_close_signal_and_reports_exit_codes() {
    let w = &world();
    let mut rt = w.runtime().await;
    let (_, id) = w.pod_with(&mut rt, "wsv5", "exec sleep 3600").await;
    let url = exec_url(
        &mut rt,
        &id,
        &["sh", "-c", "cat; echo err >&2; exit 5"],
        false,
        true,
    )
    .await;
    let r = ws(
        "exec",
        &url.replace("http://", "ws://"),
        &["--stdin-data", "over websocket\n"],
    )
    .ok();
    assert_eq!(r["protocol"], "v5.channel.k8s.io", "{r}");
    assert_eq!(r["stdout"], "over websocket\n", "{r}");
    assert_eq!(r["stderr"], "err\n", "{r}");
    assert_eq!(r["exit_code"], 5, "{}", status_of(&r));
    assert_eq!(r["status"]["reason"], "NonZeroExitCode", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, python3 websocket-client"]
async fn websocket_v4_exec_streams_output_and_the_exit_status() {
    let w = &world();
    let mut rt = w.runtime().await;
    let (_, id) = w.pod_with(&mut rt, "wsv4", "exec sleep 3600").await;
    for code in [0, 4] {
        let url = exec_url(
            &mut rt,
            &id,
            &["sh", "-c", &format!("echo v4-out; echo v4-err >&2; exit {code}")],
            false,
            false,
        )
        .await;
        let r = ws(
            "exec",
            &url.replace("http://", "ws://"),
            &["--protocols", "v4.channel.k8s.io"],
        )
        .ok();
        assert_eq!(r["protocol"], "v4.channel.k8s.io", "{r}");
        assert_eq!(r["stdout"], "v4-out\n", "{r}");
        assert_eq!(r["stderr"], "v4-err\n", "{r}");
        assert_eq!(r["exit_code"], code, "{}", status_of(&r));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, python3 websocket-client"]
async fn websocket_tty_exec_and_attach_see_resizes_and_stdin() {
    let w = &world();
    let mut rt = w.runtime().await;
    let cfg = w.pod_config("wstty");
    let pod = w.run_pod(&mut rt, &cfg).await;
    let mut c = container("term", "read l; echo attached:$l; exec sleep 3600");
    c.stdin = true;
    c.tty = true;
    let id = w.start_container(&mut rt, &pod, &cfg, c).await;
    let script = "i=0; while [ \"$(stty size 2>/dev/null)\" != \"33 77\" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; stty size";
    let url = exec_url(&mut rt, &id, &["sh", "-c", script], true, false).await;
    let r = ws("exec", &url.replace("http://", "ws://"), &["--resize", "77x33"]).ok();
    assert_eq!(r["stdout"].as_str().unwrap_or_default().trim(), "33 77", "{r}");
    assert_eq!(r["exit_code"], 0, "{}", status_of(&r));
    // Attach to the tty container's main process: stdin reaches it, its answer comes back.
    let url = attach_url(&mut rt, &id, true).await;
    let r = ws(
        "attach",
        &url.replace("http://", "ws://"),
        &["--stdin-data", "hi\r", "--timeout", "5"],
    );
    assert!(r.str("stdout").contains("attached:hi"), "{}", r.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, python3 websocket-client"]
async fn websocket_port_forward_frames_each_port_as_kubelet_does() {
    let w = &world();
    let mut rt = w.runtime().await;
    let cfg = w.pod_config("wspf");
    let pod = servers_pod(w, &mut rt, &cfg, 8080, Some(9090)).await;
    let url = port_forward_url(&mut rt, &pod, &[8080, 9090]).await;
    let r = ws(
        "portforward",
        &url.replace("http://", "ws://"),
        &[
            "--protocols",
            "v4.channel.k8s.io",
            "--port",
            "8080",
            "--payload",
            GET,
            "--port",
            "9090",
            "--payload",
            "ws\n",
        ],
    )
    .ok();
    let conns = r["conns"].as_array().expect("conns");
    for (c, port) in conns.iter().zip([8080, 9090]) {
        // The first message on each channel is the port, 2 bytes little-endian.
        assert_eq!(c["data_port_prefix"], port, "{r}");
        assert_eq!(c["error_port_prefix"], port, "{r}");
        assert_eq!(c["error_stream"], "", "{r}");
    }
    assert!(
        conns[0]["data"].as_str().is_some_and(|d| d.ends_with("pf-ok\n")),
        "{r}"
    );
    assert_eq!(conns[1]["data"], "pong:ws\n", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Go + spdystream, python3 websocket-client"]
async fn tls_streaming_serves_exec_over_spdy_and_websocket_with_a_self_signed_pair() {
    let w = CriWorld::start(OCTETS, "enable_tls_streaming = true");
    let mut rt = w.runtime().await;
    let (_, id) = w.pod_with(&mut rt, "tls", "exec sleep 3600").await;
    let url = exec_url(&mut rt, &id, &["sh", "-c", "echo over-tls; exit 6"], false, false).await;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let r = spdy("exec", &[], &url).ok();
    assert_eq!(r["stdout"], "over-tls\n", "{r}");
    assert_eq!(r["exit_code"], 6, "{}", status_of(&r));
    let url = exec_url(&mut rt, &id, &["echo", "wss"], false, false).await;
    let r = ws("exec", &url.replace("https://", "wss://"), &[]).ok();
    assert_eq!(r["stdout"], "wss\n", "{r}");
    assert_eq!(r["exit_code"], 0, "{}", status_of(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Go + spdystream"]
async fn an_exec_whose_client_goes_away_is_killed_and_leaves_nothing() {
    let w = world();
    let mut rt = w.runtime().await;
    let (_, id) = w.pod_with(&mut rt, "gone", "exec sleep 3600").await;
    // One finished session first: the container's exec dir (kept) is in the baseline.
    let url = exec_url(&mut rt, &id, &["true"], false, false).await;
    spdy("exec", &[], &url).ok();
    let pids = w.taskd().task_pids(&id);
    let files = tree(&w.taskd().state);
    let url = exec_url(&mut rt, &id, &["sleep", "300"], false, false).await;
    // The client gives up after 2 s and exits: its connection closes.
    let r = spdy("exec", &["-timeout", "2s"], &url);
    assert!(r.str("error").contains("did not end"), "{}", r.json);
    wait_until("the exec process killed", Duration::from_secs(15), || {
        w.taskd().task_pids(&id) == pids
    });
    let settle = Instant::now() + Duration::from_secs(15);
    while tree(&w.taskd().state) != files && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let now = tree(&w.taskd().state);
    let added: Vec<_> = now.difference(&files).collect();
    assert!(added.is_empty(), "left under the state dir: {added:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Go + spdystream"]
async fn a_streaming_session_without_traffic_ends_at_the_idle_timeout() {
    let w = CriWorld::start(OCTETS, "stream_idle_timeout = \"2s\"");
    let mut rt = w.runtime().await;
    let (_, id) = w.pod_with(&mut rt, "idle", "exec sleep 3600").await;
    let pids = w.taskd().task_pids(&id);
    let url = exec_url(&mut rt, &id, &["sleep", "300"], false, false).await;
    let r = spdy("exec", &["-timeout", "30s"], &url).ok();
    let millis = r["millis"].as_i64().unwrap_or_default();
    assert!((1500..15_000).contains(&millis), "ended after {millis} ms: {r}");
    assert_ne!(r["exit_code"], 0, "{}", status_of(&r));
    wait_until("the idle exec process killed", Duration::from_secs(15), || {
        w.taskd().task_pids(&id) == pids
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Go + spdystream"]
async fn streaming_sessions_over_the_cap_are_refused_with_429() {
    let w = CriWorld::start(OCTETS, "stream_max_sessions = 1");
    let mut rt = w.runtime().await;
    let (_, id) = w.pod_with(&mut rt, "cap", "exec sleep 3600").await;
    let first = exec_url(&mut rt, &id, &["sh", "-c", "sleep 4; echo first"], false, false).await;
    let held = std::thread::spawn(move || spdy("exec", &[], &first).ok());
    std::thread::sleep(Duration::from_millis(1500));
    let second = exec_url(&mut rt, &id, &["echo", "second"], false, false).await;
    let r = spdy("exec", &[], &second);
    assert!(!r.success && r.json["http_status"] == 429, "{}", r.json);
    assert_eq!(held.join().expect("first session")["stdout"], "first\n");
    // The refused token is still good once the session is over.
    assert_eq!(spdy("exec", &[], &second).ok()["stdout"], "second\n");
}

// ---------------------------------------------------------------- leaks

/// Every path under `dir` with its file type (fifos, sockets, dirs, files).
fn tree(dir: &Path) -> BTreeSet<(PathBuf, String)> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            let kind = format!("{t:?}");
            if t.is_dir() && !is_mount(&e.path()) {
                stack.push(e.path());
            }
            out.insert((e.path(), kind));
        }
    }
    out
}

/// Mount points (a container rootfs, netns pins) are listed, not walked.
fn is_mount(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(a), Some(parent)) = (std::fs::metadata(p), p.parent()) else {
        return false;
    };
    std::fs::metadata(parent).is_ok_and(|b| a.dev() != b.dev())
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(std::iter::Iterator::count)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, Go + spdystream; ~1 min"]
async fn a_thousand_spdy_exec_sessions_leave_no_fd_process_fifo_or_exec_state_behind() {
    const SESSIONS: usize = 1000;
    const PARALLEL: usize = 4;
    let w = world();
    let mut rt = w.runtime().await;
    let (_, id) = w.pod_with(&mut rt, "leak", "exec sleep 3600").await;
    // One session first, so whatever taskd sets up once (listener, pools) is in the baseline.
    let url = exec_url(&mut rt, &id, &["true"], false, false).await;
    spdy("exec", &[], &url).ok();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = w.taskd().pid();
    let fds = fd_count(pid);
    let files = tree(&w.taskd().state);
    let pids = w.taskd().task_pids(&id);

    let started = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..PARALLEL {
        let next = next.clone();
        let mut rt = rt.clone();
        let id = id.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= SESSIONS {
                    return;
                }
                let n = i.to_string();
                let url = exec_url(&mut rt, &id, &["echo", &n], false, false).await;
                let r = clients::spdy_async("exec", &[], &url).await.ok();
                assert_eq!(r["stdout"], format!("{n}\n"), "session {i}: {r}");
                assert_eq!(r["exit_code"], 0, "session {i}: {r}");
            }
        }));
    }
    for h in workers {
        h.await.expect("exec worker");
    }
    let took = started.elapsed();
    eprintln!("{SESSIONS} exec sessions ({PARALLEL} at a time) took {took:?}");

    // Give the last sessions' clean-up a moment, then nothing may be left.
    let settle = Instant::now() + Duration::from_secs(20);
    while (fd_count(pid) > fds || tree(&w.taskd().state) != files) && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let now = tree(&w.taskd().state);
    let added: Vec<_> = now.difference(&files).collect();
    assert!(added.is_empty(), "left under the state dir: {added:?}");
    assert!(
        fd_count(pid) <= fds,
        "taskd had {fds} fds before, {} after",
        fd_count(pid)
    );
    assert_eq!(w.taskd().task_pids(&id), pids, "processes left in the container");
}

//! Integration test: the real `containerd-shim-runc-v2` (Debian's containerd 1.6) publishes
//! task events to taskd's ttrpc events service, and they reach exchange subscribers with
//! the shim's namespace, topic, timestamp and containerd's type URLs.
//!
//! No daemon: a ttrpc server with `services::events::ttrpc::TtrpcEvents` over an
//! `Exchange` on a temporary socket plays taskd's ttrpc endpoint (`TTRPC_ADDRESS`); the test
//! drives the shim through its task API as taskd's runtime would (start, Create, Start,
//! Wait, Delete, Shutdown). Needs root, runc, containerd-shim-runc-v2 and busybox.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

// The end-to-end guard (the file tests/support includes; this binary does not use support).
#[path = "../src/e2e_guard.rs"]
#[allow(dead_code)]
mod e2e_guard;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use prost::Message;
use taskd::events::{Envelope, Exchange, Subscriber};
use taskd::filters::Filter;
use taskd::server::TtrpcService;
use taskd::services::events::ttrpc::TtrpcEvents;
use taskd_proto::containerd::events as ev;
use taskd_proto::ttrpc::v2::shim;
use taskd_proto::ttrpc::v2::shim_ttrpc::TaskClient;
use tokio::io::AsyncReadExt;

const NAMESPACE: &str = "taskd-shim-events-test";

/// A bundle running `busybox sh -c 'exit 3'` with the shim's `log` fifo.
fn bundle(dir: &Path, busybox: &Path) -> Result<()> {
    let out = std::process::Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(dir)
        .output()?;
    ensure!(
        out.status.success(),
        "runc spec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/busybox", "sh", "-c", "exit 3"]);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    std::fs::create_dir_all(dir.join("rootfs/bin"))?;
    std::fs::copy(busybox, dir.join("rootfs/bin/busybox"))?;
    nix::unistd::mkfifo(&dir.join("log"), nix::sys::stat::Mode::from_bits_truncate(0o700))?;
    Ok(())
}

fn ctx() -> ttrpc::context::Context {
    let mut md = HashMap::new();
    md.insert(
        "containerd-namespace-ttrpc".to_owned(),
        vec![NAMESPACE.to_owned()],
    );
    let mut c = ttrpc::context::with_metadata(md);
    c.timeout_nano = 30_000_000_000;
    c
}

async fn next(sub: &mut tokio::sync::mpsc::Receiver<Envelope>) -> Result<Envelope> {
    tokio::time::timeout(Duration::from_secs(30), sub.recv())
        .await
        .context("no event from the shim within 30s")?
        .context("subscription ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, busybox-static"]
async fn real_shim_forwards_task_events_over_ttrpc() -> Result<()> {
    e2e_guard::require(&[
        e2e_guard::Need::Root,
        e2e_guard::Need::File("/usr/bin/containerd-shim-runc-v2", "containerd"),
        e2e_guard::Need::File("/usr/sbin/runc", "runc"),
        e2e_guard::Need::File("/bin/busybox", "busybox-static"),
    ]);
    let shim_bin = PathBuf::from("/usr/bin/containerd-shim-runc-v2");
    let busybox = PathBuf::from("/bin/busybox");

    let dir = tempfile::tempdir()?;
    let id = format!("taskd-shim-events-{}", std::process::id());
    let bundle_dir = dir.path().join(&id);
    std::fs::create_dir(&bundle_dir)?;
    bundle(&bundle_dir, &busybox)?;

    // the shim's log fifo: keep a reader open, print what it says
    let mut log = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(bundle_dir.join("log"))?;
    let log_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = log.read(&mut buf).await {
            if n == 0 {
                break;
            }
            eprint!("shim: {}", String::from_utf8_lossy(&buf[..n]));
        }
    });

    // taskd's ttrpc endpoint
    let exchange = Arc::new(Exchange::new()?);
    let mut sub = exchange.subscribe("test", Filter::always()).receiver;
    let ttrpc_sock = dir.path().join("ttrpc.sock");
    let mut server = ttrpc::r#async::Server::new()
        .bind(&format!("unix://{}", ttrpc_sock.display()))?
        .register_service(TtrpcEvents::new(exchange.clone()).services());
    server.start().await?;

    let result = drive_shim(&shim_bin, &bundle_dir, &id, &ttrpc_sock, dir.path(), &mut sub).await;

    // cleanup by pid, whatever happened
    if let Ok(pid) = std::fs::read_to_string(bundle_dir.join("shim.pid"))
        && let Ok(pid) = pid.trim().parse::<i32>()
    {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    let runc_root = format!("/run/containerd/runc/{NAMESPACE}");
    let _ = std::process::Command::new("runc")
        .args(["--root", &runc_root, "delete", "--force", &id])
        .output();
    // the shim's runc root for the namespace: remove it when nothing else is in it
    let _ = std::fs::remove_dir(&runc_root);
    log_task.abort();
    server.shutdown().await?;
    result
}

async fn drive_shim(
    shim_bin: &Path,
    bundle: &Path,
    id: &str,
    ttrpc_sock: &Path,
    tmp: &Path,
    sub: &mut tokio::sync::mpsc::Receiver<Envelope>,
) -> Result<()> {
    // `containerd-shim-runc-v2 ... start`, as containerd 1.6 (and taskd) runs it
    let out = tokio::process::Command::new(shim_bin)
        .args(["-namespace", NAMESPACE, "-address"])
        .arg(tmp.join("grpc.sock"))
        .args(["-publish-binary", "/nonexistent/containerd", "-id", id, "start"])
        .env("TTRPC_ADDRESS", ttrpc_sock)
        .env("GRPC_ADDRESS", tmp.join("grpc.sock"))
        .env("NAMESPACE", NAMESPACE)
        .current_dir(bundle)
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "shim start: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let address = String::from_utf8(out.stdout)?.trim().to_owned();
    ensure!(address.starts_with("unix://"), "shim printed {address:?}");
    let task = TaskClient::new(ttrpc::r#async::Client::connect(&address).await?);

    let mut create = shim::CreateTaskRequest::new();
    create.id = id.to_owned();
    create.bundle = bundle.to_string_lossy().into_owned();
    let created = task.create(ctx(), &create).await?;

    let e = next(sub).await?;
    assert_eq!(e.namespace, NAMESPACE);
    assert_eq!(e.topic, "/tasks/create");
    assert_eq!(e.event.type_url, "containerd.events.TaskCreate");
    let tc = ev::TaskCreate::decode(e.event.value.as_slice())?;
    assert_eq!(tc.container_id, id);
    assert_eq!(tc.pid, created.pid);
    let age = std::time::SystemTime::now().duration_since(e.timestamp)?;
    assert!(age < Duration::from_secs(300), "timestamp {:?}", e.timestamp);

    let mut start = shim::StartRequest::new();
    start.id = id.to_owned();
    task.start(ctx(), &start).await?;
    let mut wait = shim::WaitRequest::new();
    wait.id = id.to_owned();
    let waited = task.wait(ctx(), &wait).await?;
    assert_eq!(waited.exit_status, 3);

    let mut topics = Vec::new();
    let mut exit = None;
    while topics.len() < 2 {
        let e = next(sub).await?;
        if e.topic == "/tasks/exit" {
            exit = Some(ev::TaskExit::decode(e.event.value.as_slice())?);
        }
        topics.push(e.topic);
    }
    assert_eq!(topics, ["/tasks/start", "/tasks/exit"]);
    let exit = exit.context("no exit event")?;
    assert_eq!((exit.container_id.as_str(), exit.exit_status), (id, 3));

    let mut delete = shim::DeleteRequest::new();
    delete.id = id.to_owned();
    task.delete(ctx(), &delete).await?;
    let e = next(sub).await?;
    assert_eq!(e.topic, "/tasks/delete");
    assert_eq!(e.event.type_url, "containerd.events.TaskDelete");

    let mut shutdown = shim::ShutdownRequest::new();
    shutdown.id = id.to_owned();
    // the shim exits while answering; an error here is expected
    let _ = task.shutdown(ctx(), &shutdown).await;
    Ok(())
}

//! taskd's own shim, `containerd-shim-taskd-v2` (runtime `io.containerd.taskd.v2`), end to
//! end: driven directly over its ttrpc task API as taskd's runtime drives it (start, RPCs,
//! events on a ttrpc events server playing taskd's), through a real taskd with `ctr`, and
//! under Debian's containerd 1.6. The shim is built by `cargo build -p
//! containerd-shim-taskd-v2` (scripts/test.sh); the key lifecycle tests of tests/tasks.rs,
//! tests/runtime_v2.rs and the CRI suites (whose default handler uses this shim) cover the
//! rest against both shims.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "support/rootfs.rs"]
mod rootfs;
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use support::procs::{command_lines, fd_count, zombie_children};
use taskd::events::{Envelope, Exchange, Subscriber};
use taskd::filters::Filter;
use taskd::server::TtrpcService;
use taskd::services::events::ttrpc::TtrpcEvents;
use taskd_proto::containerd::events as ev;
use taskd_proto::ttrpc::v2::shim;
use taskd_proto::ttrpc::v2::shim_ttrpc::TaskClient;

const RUNTIME: &str = "io.containerd.taskd.v2";

/// One shim started by hand in a temp dir, with a ttrpc events server playing taskd's.
struct Rig {
    dir: tempfile::TempDir,
    rootfs: tempfile::TempDir,
    ns: String,
    sub: tokio::sync::mpsc::Receiver<Envelope>,
    server: ttrpc::r#async::Server,
    task: Option<TaskClient>,
    /// The shim's ttrpc address.
    address: String,
    shim_pid: Option<i32>,
    ids: Vec<String>,
}

fn ctx(ns: &str) -> ttrpc::context::Context {
    let mut md = HashMap::new();
    md.insert("containerd-namespace-ttrpc".to_owned(), vec![ns.to_owned()]);
    let mut c = ttrpc::context::with_metadata(md);
    c.timeout_nano = 30_000_000_000;
    c
}

fn code(e: &ttrpc::Error) -> ttrpc::Code {
    match e {
        ttrpc::Error::RpcStatus(s) => s.code(),
        other => panic!("not a ttrpc status: {other:?}"),
    }
}

impl Rig {
    async fn new(test: &str) -> Rig {
        support::require(&[support::Need::Root, support::Need::Bin("runc", "runc")]);
        let dir = tempfile::Builder::new()
            .prefix("taskd-shim")
            .tempdir()
            .expect("tmp");
        let rootfs = tempfile::Builder::new()
            .prefix("taskd-rootfs")
            .tempdir()
            .expect("tmp");
        rootfs::build(rootfs.path()).expect("rootfs");
        let exchange = Arc::new(Exchange::new().expect("exchange"));
        let sub = exchange.subscribe("test", Filter::always()).receiver;
        let sock = dir.path().join("ttrpc.sock");
        let mut server = ttrpc::r#async::Server::new()
            .bind(&format!("unix://{}", sock.display()))
            .expect("bind")
            .register_service(TtrpcEvents::new(exchange.clone()).services());
        server.start().await.expect("events server");
        Rig {
            ns: format!("shim-taskd-{}-{test}", std::process::id()),
            dir,
            rootfs,
            sub,
            server,
            task: None,
            address: String::new(),
            shim_pid: None,
            ids: Vec::new(),
        }
    }

    /// A bundle for `id` running `args` (optionally with a memory limit), with the `log`
    /// fifo the shim writes to.
    fn bundle(&self, id: &str, args: &[&str], memory_limit: Option<i64>) -> PathBuf {
        let b = self.dir.path().join(id);
        std::fs::create_dir_all(&b).expect("mkdir");
        let out = std::process::Command::new("runc")
            .args(["spec", "--bundle"])
            .arg(&b)
            .output()
            .expect("runc spec");
        assert!(out.status.success());
        let path = b.join("config.json");
        let mut spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        spec["process"]["terminal"] = false.into();
        spec["process"]["args"] = serde_json::json!(args);
        spec["root"]["path"] = self.rootfs.path().to_string_lossy().into_owned().into();
        spec["linux"]["cgroupsPath"] = format!("/{}/{id}", self.ns).into();
        if let Some(limit) = memory_limit {
            spec["linux"]["resources"]["memory"] = serde_json::json!({ "limit": limit });
            if Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists() {
                spec["linux"]["resources"]["memory"]["swap"] = limit.into();
            }
        }
        std::fs::write(&path, serde_json::to_vec_pretty(&spec).expect("json")).expect("write");
        let log = b.join("log");
        if !log.exists() {
            nix::unistd::mkfifo(&log, nix::sys::stat::Mode::from_bits_truncate(0o700)).expect("mkfifo");
            // Keep a reader so the shim's log writes never block.
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&log)
                .expect("open log");
            std::mem::forget(f);
        }
        b
    }

    /// `<shim> start` in `bundle`, as taskd runs it; connects to the printed address.
    async fn start_shim(&mut self, id: &str, bundle: &Path) {
        let out = tokio::process::Command::new(support::taskd_shim())
            .args(["-namespace", &self.ns, "-address"])
            .arg(self.dir.path().join("grpc.sock"))
            .args(["-publish-binary", "/nonexistent", "-id", id, "start"])
            .env("TTRPC_ADDRESS", self.dir.path().join("ttrpc.sock"))
            .current_dir(bundle)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("shim start");
        assert!(out.status.success(), "shim start: {out:?}");
        let address = String::from_utf8(out.stdout).expect("utf-8").trim().to_owned();
        assert!(address.starts_with("unix://"), "shim printed {address:?}");
        let client = ttrpc::r#async::Client::connect(&address).await.expect("connect");
        let task = TaskClient::new(client);
        let c = task
            .connect(
                ctx(&self.ns),
                &shim::ConnectRequest {
                    id: id.into(),
                    ..Default::default()
                },
            )
            .await
            .expect("Connect");
        self.shim_pid = Some(c.shim_pid as i32);
        self.task = Some(task);
        self.address = address;
    }

    fn task(&self) -> &TaskClient {
        self.task.as_ref().expect("shim started")
    }

    async fn create(&mut self, id: &str, bundle: &Path, terminal: bool) -> Result<u32, ttrpc::Error> {
        self.ids.push(id.to_owned());
        let r = self
            .task()
            .create(
                ctx(&self.ns),
                &shim::CreateTaskRequest {
                    id: id.into(),
                    bundle: bundle.to_string_lossy().into_owned(),
                    terminal,
                    ..Default::default()
                },
            )
            .await?;
        Ok(r.pid)
    }

    async fn next_event(&mut self) -> Envelope {
        tokio::time::timeout(Duration::from_secs(30), self.sub.recv())
            .await
            .expect("no event from the shim within 30s")
            .expect("subscription ended")
    }

    /// The next `n` event topics.
    async fn topics(&mut self, n: usize) -> Vec<String> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(self.next_event().await.topic);
        }
        v
    }

    fn shim_alive(&self) -> bool {
        self.shim_pid
            .is_some_and(|p| taskd::runtime::v2::shim::pid_alive(p as u32))
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // The shim we connected to, and any of this rig's namespace a failed start left.
        let pids = self
            .shim_pid
            .into_iter()
            .chain(shims_of(&self.ns).into_iter().map(|p| p as i32));
        for p in pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
        }
        let root = format!("/run/containerd/runc/{}", self.ns);
        for id in &self.ids {
            let _ = std::process::Command::new("runc")
                .args(["--root", &root, "delete", "--force", id])
                .output();
        }
        let _ = std::fs::remove_dir(&root);
        for sub in [
            "memory", "cpu", "pids", "freezer", "devices", "blkio", "cpuset", "cpuacct", "systemd", "",
        ] {
            let d = Path::new("/sys/fs/cgroup").join(sub).join(&self.ns);
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    let _ = std::fs::remove_dir(e.path());
                }
                let _ = std::fs::remove_dir(&d);
            }
        }
        let _ = &self.server;
    }
}

fn exec_spec(args: &[&str], terminal: bool) -> protobuf::well_known_types::any::Any {
    let v = serde_json::json!({
        "args": args, "cwd": "/", "env": ["PATH=/bin"],
        "user": {"uid": 0, "gid": 0}, "terminal": terminal,
    });
    protobuf::well_known_types::any::Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
        value: serde_json::to_vec(&v).expect("json"),
        ..Default::default()
    }
}

fn start_req(id: &str, exec_id: &str) -> shim::StartRequest {
    shim::StartRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    }
}

fn kill_req(id: &str, exec_id: &str) -> shim::KillRequest {
    shim::KillRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        signal: 9,
        ..Default::default()
    }
}

fn wait_req(id: &str, exec_id: &str) -> shim::WaitRequest {
    shim::WaitRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    }
}

fn delete_req(id: &str, exec_id: &str) -> shim::DeleteRequest {
    shim::DeleteRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    }
}

/// A rig whose shim serves container `c1` (`sleep 1000`), not yet created; its task client.
async fn shim_for_c1(test: &str) -> (Rig, TaskClient, PathBuf) {
    let mut r = Rig::new(test).await;
    let b = r.bundle("c1", &["/bin/sleep", "1000"], None);
    r.start_shim("c1", &b).await;
    let t = r.task().clone();
    (r, t, b)
}

/// A rig whose shim runs `c1` (`sleep 1000`): created, then started with the created pid.
async fn running_c1(test: &str) -> (Rig, TaskClient, u32) {
    let (mut r, t, b) = shim_for_c1(test).await;
    let pid = r.create("c1", &b, false).await.expect("Create");
    assert!(pid > 0);
    let started = t.start(ctx(&r.ns), &start_req("c1", "")).await.expect("Start");
    assert_eq!(started.pid, pid);
    (r, t, pid)
}

/// SIGKILL the init of `c1` and wait for it: exit status 137.
async fn kill_and_wait_c1(r: &Rig, t: &TaskClient) {
    t.kill(ctx(&r.ns), &kill_req("c1", "")).await.expect("Kill");
    let w = t.wait(ctx(&r.ns), &wait_req("c1", "")).await.expect("Wait");
    assert_eq!(w.exit_status, 137);
}

/// Exec `e1` (`true`, no terminal) in `c1`, start it and wait for its exit status 0.
async fn exec_to_its_exit(r: &Rig, t: &TaskClient) {
    let ns = &r.ns;
    t.exec(
        ctx(ns),
        &shim::ExecProcessRequest {
            id: "c1".into(),
            exec_id: "e1".into(),
            spec: protobuf::MessageField::some(exec_spec(&["/bin/true"], false)),
            ..Default::default()
        },
    )
    .await
    .expect("Exec");
    t.start(ctx(ns), &start_req("c1", "e1"))
        .await
        .expect("exec Start");
    let w = t.wait(ctx(ns), &wait_req("c1", "e1")).await.expect("exec Wait");
    assert_eq!(w.exit_status, 0);
}

#[track_caller]
fn assert_shim_lives(r: &Rig) {
    assert!(r.shim_alive(), "the shim died on bad input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, busybox-static, the built containerd-shim-taskd-v2"]
async fn create_from_a_bundle_without_config_json_is_invalid_argument_naming_it() {
    let (mut r, _t, _b) = shim_for_c1("nobundle").await;
    let bad = r.dir.path().join("nobundle");
    std::fs::create_dir_all(&bad).expect("mkdir");
    let e = r.create("bad", &bad, false).await.expect_err("bad bundle");
    assert_eq!(code(&e), ttrpc::Code::INVALID_ARGUMENT, "{e:?}");
    assert!(format!("{e:?}").contains("config.json"), "{e:?}");
    assert_shim_lives(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, busybox-static, the built containerd-shim-taskd-v2"]
async fn start_of_an_unknown_id_is_not_found() {
    let (r, t, _b) = shim_for_c1("nosuch").await;
    let e = t
        .start(ctx(&r.ns), &start_req("nosuch", ""))
        .await
        .expect_err("unknown id");
    assert_eq!(code(&e), ttrpc::Code::NOT_FOUND, "{e:?}");
    assert_shim_lives(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, busybox-static, the built containerd-shim-taskd-v2"]
async fn create_of_an_existing_id_is_already_exists() {
    let (mut r, _t, b) = shim_for_c1("recreate").await;
    let pid = r.create("c1", &b, false).await.expect("Create");
    assert!(pid > 0);
    let e = r.create("c1", &b, false).await.expect_err("second create");
    assert_eq!(code(&e), ttrpc::Code::ALREADY_EXISTS, "{e:?}");
    assert_shim_lives(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, busybox-static, the built containerd-shim-taskd-v2"]
async fn a_second_start_is_failed_precondition() {
    // running_c1 checks that Start returns the pid Create did.
    let (r, t, _) = running_c1("restart").await;
    let e = t
        .start(ctx(&r.ns), &start_req("c1", ""))
        .await
        .expect_err("second start");
    assert_eq!(code(&e), ttrpc::Code::FAILED_PRECONDITION, "{e:?}");
    assert_shim_lives(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, busybox-static, the built containerd-shim-taskd-v2"]
async fn start_of_an_unknown_exec_is_not_found_naming_it() {
    let (r, t, _) = running_c1("noexec").await;
    let e = t
        .start(ctx(&r.ns), &start_req("c1", "nosuch"))
        .await
        .expect_err("unknown exec");
    assert_eq!(code(&e), ttrpc::Code::NOT_FOUND, "{e:?}");
    assert!(format!("{e:?}").contains("nosuch"), "{e:?}");
    assert_shim_lives(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, busybox-static, the built containerd-shim-taskd-v2"]
async fn exec_without_a_spec_is_invalid_argument() {
    let (r, t, _) = running_c1("nospec").await;
    let e = t
        .exec(
            ctx(&r.ns),
            &shim::ExecProcessRequest {
                id: "c1".into(),
                exec_id: "x".into(),
                ..Default::default()
            },
        )
        .await
        .expect_err("exec without spec");
    assert_eq!(code(&e), ttrpc::Code::INVALID_ARGUMENT, "{e:?}");
    assert_shim_lives(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, busybox-static, the built containerd-shim-taskd-v2"]
async fn a_terminal_exec_takes_the_size_resize_pty_sets() {
    let (r, t, _) = running_c1("tty").await;
    let ns = r.ns.clone();
    let fifo = r.dir.path().join("e1-out");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(&fifo).unwrap_or_default())
    };
    t.exec(
        ctx(&ns),
        &shim::ExecProcessRequest {
            id: "c1".into(),
            exec_id: "e1".into(),
            terminal: true,
            stdout: fifo.to_string_lossy().into_owned(),
            spec: protobuf::MessageField::some(exec_spec(
                &["/bin/sh", "-c", "sleep 1; stty size; tty"],
                true,
            )),
            ..Default::default()
        },
    )
    .await
    .expect("Exec");
    t.start(ctx(&ns), &start_req("c1", "e1"))
        .await
        .expect("exec Start");
    t.resize_pty(
        ctx(&ns),
        &shim::ResizePtyRequest {
            id: "c1".into(),
            exec_id: "e1".into(),
            width: 91,
            height: 37,
            ..Default::default()
        },
    )
    .await
    .expect("ResizePty");
    let w = t.wait(ctx(&ns), &wait_req("c1", "e1")).await.expect("exec Wait");
    assert_eq!(w.exit_status, 0);
    t.delete(ctx(&ns), &delete_req("c1", "e1"))
        .await
        .expect("exec Delete");
    let out = String::from_utf8_lossy(&reader.join().expect("reader")).into_owned();
    assert!(out.contains("37 91") && out.contains("/dev/pts/"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, busybox-static, the built containerd-shim-taskd-v2"]
async fn kill_of_an_exited_exec_is_not_found_process_already_finished() {
    let (r, t, _) = running_c1("killexec").await;
    exec_to_its_exit(&r, &t).await;
    let e = t
        .kill(ctx(&r.ns), &kill_req("c1", "e1"))
        .await
        .expect_err("kill an exited exec");
    // NotFound "process already finished", as the stock shim answers.
    assert_eq!(code(&e), ttrpc::Code::NOT_FOUND, "{e:?}");
    assert!(format!("{e:?}").contains("process already finished"), "{e:?}");
    assert_shim_lives(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, busybox-static, the built containerd-shim-taskd-v2"]
async fn pids_lists_the_running_init() {
    let (r, t, pid) = running_c1("pids").await;
    let pids = t
        .pids(
            ctx(&r.ns),
            &shim::PidsRequest {
                id: "c1".into(),
                ..Default::default()
            },
        )
        .await
        .expect("Pids");
    assert!(pids.processes.iter().any(|p| p.pid == pid), "{pids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, busybox-static, the built containerd-shim-taskd-v2"]
async fn stats_of_the_running_init_are_cgroup_metrics() {
    let (r, t, _) = running_c1("stats").await;
    let stats = t
        .stats(
            ctx(&r.ns),
            &shim::StatsRequest {
                id: "c1".into(),
                ..Default::default()
            },
        )
        .await
        .expect("Stats");
    assert!(
        stats.stats.type_url.contains("io.containerd.cgroups"),
        "{:?}",
        stats.stats.type_url
    );
}

/// Pause then Resume of the running init (their events: in the order test below).
async fn pause_and_resume_c1(r: &Rig, t: &TaskClient) {
    t.pause(
        ctx(&r.ns),
        &shim::PauseRequest {
            id: "c1".into(),
            ..Default::default()
        },
    )
    .await
    .expect("Pause");
    t.resume(
        ctx(&r.ns),
        &shim::ResumeRequest {
            id: "c1".into(),
            ..Default::default()
        },
    )
    .await
    .expect("Resume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, busybox-static, the built containerd-shim-taskd-v2"]
async fn pause_and_resume_of_the_running_init_succeed() {
    let (r, t, _) = running_c1("pause").await;
    pause_and_resume_c1(&r, &t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, busybox-static, the built containerd-shim-taskd-v2"]
async fn delete_of_a_running_task_is_failed_precondition() {
    let (r, t, _) = running_c1("delrunning").await;
    let e = t
        .delete(ctx(&r.ns), &delete_req("c1", ""))
        .await
        .expect_err("delete running");
    assert_eq!(code(&e), ttrpc::Code::FAILED_PRECONDITION, "{e:?}");
    assert_shim_lives(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, busybox-static, the built containerd-shim-taskd-v2"]
async fn kill_9_ends_the_init_and_wait_returns_137() {
    // kill_and_wait_c1 asserts the 137.
    let (r, t, _) = running_c1("kill").await;
    kill_and_wait_c1(&r, &t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, busybox-static, the built containerd-shim-taskd-v2"]
async fn kill_of_an_exited_init_is_not_found() {
    let (r, t, _) = running_c1("killexited").await;
    kill_and_wait_c1(&r, &t).await;
    let e = t
        .kill(ctx(&r.ns), &kill_req("c1", ""))
        .await
        .expect_err("kill exited");
    assert_eq!(code(&e), ttrpc::Code::NOT_FOUND, "{e:?}");
    assert_shim_lives(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, busybox-static, the built containerd-shim-taskd-v2"]
async fn delete_of_an_exited_task_returns_its_exit_status() {
    let (r, t, _) = running_c1("delete").await;
    kill_and_wait_c1(&r, &t).await;
    let d = t.delete(ctx(&r.ns), &delete_req("c1", "")).await.expect("Delete");
    assert_eq!(d.exit_status, 137);
}

/// One sequence (the order is the behaviour): a failed create publishes nothing; create,
/// start, an exec's life, pause/resume, the exit and delete publish their events in order,
/// and the delete event carries the exit status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, busybox-static, the built containerd-shim-taskd-v2"]
async fn events_come_in_the_order_of_the_calls_and_delete_carries_the_exit() {
    let (mut r, t, b) = shim_for_c1("events").await;
    let bad = r.dir.path().join("nobundle");
    std::fs::create_dir_all(&bad).expect("mkdir");
    r.create("bad", &bad, false).await.expect_err("bad bundle");
    r.create("c1", &b, false).await.expect("Create");
    t.start(ctx(&r.ns), &start_req("c1", "")).await.expect("Start");
    exec_to_its_exit(&r, &t).await;
    t.delete(ctx(&r.ns), &delete_req("c1", "e1"))
        .await
        .expect("exec Delete");
    pause_and_resume_c1(&r, &t).await;
    kill_and_wait_c1(&r, &t).await;
    t.delete(ctx(&r.ns), &delete_req("c1", "")).await.expect("Delete");

    let topics = r.topics(8).await;
    assert_eq!(
        topics,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/exit",
        ]
    );
    let del = r.next_event().await;
    assert_eq!(del.topic, "/tasks/delete");
    assert_eq!(del.event.type_url, "containerd.events.TaskDelete");
    let d = ev::TaskDelete::decode(del.event.value.as_slice()).expect("decode");
    assert_eq!((d.container_id.as_str(), d.exit_status), ("c1", 137));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, busybox-static, the built containerd-shim-taskd-v2"]
async fn shutdown_with_nothing_left_exits_the_shim() {
    let (r, t, _) = running_c1("shutdown").await;
    kill_and_wait_c1(&r, &t).await;
    t.delete(ctx(&r.ns), &delete_req("c1", "")).await.expect("Delete");
    let pid = r.shim_pid.expect("pid");
    let _ = t
        .shutdown(
            ctx(&r.ns),
            &shim::ShutdownRequest {
                id: "c1".into(),
                ..Default::default()
            },
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.shim_alive() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!r.shim_alive(), "shim {pid} still running after Shutdown");
}

/// A container over its memory limit is OOM-killed and the shim reports /tasks/oom.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, busybox-static, memory cgroup, the built containerd-shim-taskd-v2"]
async fn oom_kill_is_reported() {
    let mut r = Rig::new("oom").await;
    let b = r.bundle(
        "o1",
        &[
            "/bin/sh",
            "-c",
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo $x",
        ],
        Some(16 << 20),
    );
    r.start_shim("o1", &b).await;
    let ns = r.ns.clone();
    let t = r.task().clone();
    r.create("o1", &b, false).await.expect("Create");
    t.start(
        ctx(&ns),
        &shim::StartRequest {
            id: "o1".into(),
            ..Default::default()
        },
    )
    .await
    .expect("Start");
    let w = t
        .wait(
            ctx(&ns),
            &shim::WaitRequest {
                id: "o1".into(),
                ..Default::default()
            },
        )
        .await
        .expect("Wait");
    assert_ne!(w.exit_status, 0);
    let mut topics = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !topics.iter().any(|t| t == "/tasks/oom") && Instant::now() < deadline {
        topics.push(r.next_event().await.topic);
    }
    assert!(topics.iter().any(|t| t == "/tasks/oom"), "{topics:?}");
    t.delete(
        ctx(&ns),
        &shim::DeleteRequest {
            id: "o1".into(),
            ..Default::default()
        },
    )
    .await
    .expect("Delete");
}

/// A Start whose caller goes mid-call (the daemon killed: its connection closes and ttrpc
/// drops the request's handler) still leaves a process that can be started, killed and
/// deleted: before, a start cut at its runc call left the process "starting" for good, and
/// every later Delete failed (found by tests/soak.rs: RemovePodSandbox after a kill -9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, busybox-static, the built containerd-shim-taskd-v2"]
async fn start_cut_by_a_closed_connection_leaves_no_stuck_process() {
    let mut r = Rig::new("cut").await;
    let ids = ["k1", "k2", "k3", "k4"];
    let bundles: Vec<PathBuf> = ids
        .iter()
        .map(|id| r.bundle(id, &["/bin/sleep", "1000"], None))
        .collect();
    r.start_shim(ids[0], &bundles[0]).await;
    let ns = r.ns.clone();
    let t = r.task().clone();
    let req = |id: &str| shim::StartRequest {
        id: id.into(),
        ..Default::default()
    };
    for (i, (id, b)) in ids.iter().zip(&bundles).enumerate() {
        r.create(id, b, false).await.expect("Create");
        // Start on a connection of its own, closed after 0, 2, 5, 10 ms.
        let own = TaskClient::new(
            ttrpc::r#async::Client::connect(&r.address)
                .await
                .expect("connect"),
        );
        let (c, n) = (ctx(&ns), req(id));
        let call = tokio::spawn(async move { own.start(c, &n).await });
        tokio::time::sleep(Duration::from_millis([0, 2, 5, 10][i])).await;
        call.abort();
        let _ = call.await;
        // Whatever the cut left: started, or startable again; never stuck.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let st = t
            .state(
                ctx(&ns),
                &shim::StateRequest {
                    id: (*id).into(),
                    ..Default::default()
                },
            )
            .await
            .expect("State");
        if st.status.enum_value() != Ok(taskd_proto::ttrpc::v2::task::Status::RUNNING) {
            t.start(ctx(&ns), &req(id))
                .await
                .unwrap_or_else(|e| panic!("Start {id} again after a cut start ({st:?}): {e:?}"));
        }
        t.kill(
            ctx(&ns),
            &shim::KillRequest {
                id: (*id).into(),
                signal: 9,
                ..Default::default()
            },
        )
        .await
        .expect("Kill");
        t.wait(
            ctx(&ns),
            &shim::WaitRequest {
                id: (*id).into(),
                ..Default::default()
            },
        )
        .await
        .expect("Wait");
        t.delete(
            ctx(&ns),
            &shim::DeleteRequest {
                id: (*id).into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("Delete {id} after a cut start: {e:?}"));
    }
}

/// Debian's containerd 1.6 in a temp root/state/address, killed (and its tasks with it)
/// when dropped; never left running.
struct Containerd {
    child: std::process::Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Containerd {
    fn start() -> Containerd {
        support::require(&[support::Need::Bin("containerd", "containerd")]);
        let dir = tempfile::Builder::new()
            .prefix("taskd-cd16")
            .tempdir()
            .expect("tmp");
        let d = dir.path();
        let socket = d.join("cd.sock");
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  address = \"{debug}\"\n  level = \"info\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = socket.display(),
            debug = d.join("debug.sock").display(),
        );
        std::fs::write(d.join("config.toml"), config).expect("config");
        let shim_dir = support::taskd_shim().parent().expect("dir").to_path_buf();
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![shim_dir];
        dirs.extend(std::env::split_paths(&path));
        let log = std::fs::File::create(d.join("containerd.log")).expect("log");
        let child = std::process::Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", std::env::join_paths(dirs).expect("PATH"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let c = Containerd { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.ctr("", &["version"]).status.success() {
            assert!(Instant::now() < deadline, "containerd not up: {}", c.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self, ns: &str, args: &[&str]) -> std::process::Output {
        let mut c = std::process::Command::new("ctr");
        c.arg("--address").arg(&self.socket);
        if !ns.is_empty() {
            c.args(["-n", ns]);
        }
        c.args(args)
            .env_remove("CONTAINERD_ADDRESS")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run ctr")
    }

    fn ctr_ok(&self, ns: &str, args: &[&str]) -> String {
        let out = self.ctr(ns, args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {out:?}\n--- containerd log ---\n{}",
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// containerd 1.6 runs containers with the shim on PATH: `ctr run --runtime
/// io.containerd.taskd.v2`, both `--rm` and detached with an exec, kill and delete.
#[test]
#[ignore = "e2e: root, Debian's containerd 1.6 + ctr, runc, busybox-static, the built containerd-shim-taskd-v2"]
fn containerd_1_6_runs_containers_with_the_shim() {
    support::require(&[support::Need::Root, support::Need::Bin("ctr", "containerd")]);
    let rootfs = tempfile::Builder::new()
        .prefix("taskd-rootfs")
        .tempdir()
        .expect("tmp");
    rootfs::build(rootfs.path()).expect("rootfs");
    let root = rootfs.path().to_str().expect("utf-8");
    let cd = Containerd::start();
    let ns = format!("shim-cd16-{}", std::process::id());
    let out = cd.ctr_ok(
        &ns,
        &[
            "run",
            "--runtime",
            RUNTIME,
            "--rm",
            "--rootfs",
            root,
            "c1",
            "/bin/echo",
            "hi",
        ],
    );
    assert_eq!(out.trim_end(), "hi");

    cd.ctr_ok(
        &ns,
        &[
            "run",
            "--runtime",
            RUNTIME,
            "-d",
            "--rootfs",
            root,
            "c2",
            "/bin/sleep",
            "1000",
        ],
    );
    let tasks = cd.ctr_ok(&ns, &["tasks", "ls"]);
    assert!(
        tasks
            .lines()
            .any(|l| l.starts_with("c2") && l.contains("RUNNING")),
        "{tasks}"
    );
    let out = cd.ctr_ok(
        &ns,
        &["tasks", "exec", "--exec-id", "e1", "c2", "/bin/echo", "from-exec"],
    );
    assert_eq!(out.trim_end(), "from-exec");
    let shim = process_with_arg(&["-id", "c2"]).expect("a shim serves c2");
    cd.ctr_ok(&ns, &["tasks", "kill", "-s", "SIGKILL", "c2"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cd.ctr_ok(&ns, &["tasks", "ls"]).contains("STOPPED") {
        assert!(Instant::now() < deadline, "c2 never stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
    cd.ctr_ok(&ns, &["tasks", "rm", "c2"]);
    cd.ctr_ok(&ns, &["containers", "rm", "c2"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while taskd::runtime::v2::shim::pid_alive(shim) {
        assert!(
            Instant::now() < deadline,
            "shim {shim} still running after delete"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = cd.log();
    assert!(!log.contains("level=error"), "{log}");
    drop(cd);
    let _ = std::fs::remove_dir(format!("/run/containerd/runc/{ns}"));
    // ctr's cgroups are /<ns>/<id>: the namespace's parents, empty now.
    for ctrl in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = std::fs::remove_dir(ctrl.path().join(&ns));
    }
    let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(&ns));
}

/// Command lines of this shim's processes (read-only lookup).
fn taskd_shims() -> Vec<(u32, Vec<String>)> {
    command_lines()
        .into_iter()
        .filter(|(_, args)| {
            args.first()
                .is_some_and(|a| a.ends_with("containerd-shim-taskd-v2"))
        })
        .collect()
}

/// A shim whose command line holds every one of `needles`.
fn process_with_arg(needles: &[&str]) -> Option<u32> {
    taskd_shims()
        .into_iter()
        .find(|(_, args)| needles.iter().all(|n| args.iter().any(|a| a == n)))
        .map(|(p, _)| p)
}

fn shims_of(ns: &str) -> Vec<u32> {
    taskd_shims()
        .into_iter()
        .filter(|(_, args)| args.iter().any(|a| a == ns))
        .map(|(p, _)| p)
        .collect()
}

/// 100 create/start/exec/kill/delete cycles through taskd on this shim (the warm pool's
/// shim serves one after the other) leak no fd (taskd's or the shim's), mount, process,
/// zombie, cgroup, console socket or bundle. (The issue asks 500; 100 keep CI in budget.)
#[test]
#[ignore = "e2e: root, runc, ctr, busybox-static, the built containerd-shim-taskd-v2 (100 cycles)"]
fn hundred_cycles_leak_nothing() {
    const CYCLES: usize = 100;
    support::require(&[support::Need::Root, support::Need::Bin("ctr", "containerd")]);
    let d = support::Daemon::start();
    let rootfs = tempfile::Builder::new()
        .prefix("taskd-rootfs")
        .tempdir()
        .expect("tmp");
    rootfs::build(rootfs.path()).expect("rootfs");
    let root = rootfs.path().to_str().expect("utf-8");
    let ns = format!("shim-cycles-{}", std::process::id());
    let ctr = |args: &[&str]| -> String {
        let out = std::process::Command::new("ctr")
            .arg("--address")
            .arg(&d.socket)
            .args(["-n", &ns])
            .args(args)
            .env_remove("CONTAINERD_ADDRESS")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("ctr");
        assert!(out.status.success(), "ctr {args:?}: {out:?}\n{}", d.log());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let cycle = |i: usize| {
        let id = format!("c{i}");
        ctr(&[
            "run",
            "--runtime",
            RUNTIME,
            "-d",
            "--rootfs",
            root,
            &id,
            "/bin/sleep",
            "1000",
        ]);
        assert_eq!(
            ctr(&["tasks", "exec", "--exec-id", "e", &id, "/bin/echo", "x"]).trim_end(),
            "x"
        );
        ctr(&["tasks", "kill", "-s", "SIGKILL", &id]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ctr(&["tasks", "ls"]).contains("STOPPED") {
            assert!(Instant::now() < deadline, "{id} never stopped");
            std::thread::sleep(Duration::from_millis(20));
        }
        ctr(&["tasks", "rm", &id]);
        ctr(&["containers", "rm", &id]);
    };
    for i in 0..5 {
        cycle(i);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let taskd_fds = fd_count(d.pid());
    let shims = shims_of(&ns);
    assert!(
        !shims.is_empty(),
        "no shim of {ns} after 5 cycles (the warm pool keeps one)"
    );
    let shim_fds: Vec<usize> = shims.iter().map(|p| fd_count(*p)).collect();
    let ptys = |p: u32| {
        std::fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("taskd-pty-{p}-"))
            })
            .count()
    };
    for i in 5..CYCLES {
        cycle(i);
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        fd_count(d.pid()) <= taskd_fds + 2,
        "taskd fds {taskd_fds} → {}",
        fd_count(d.pid())
    );
    let after = shims_of(&ns);
    assert!(after.len() <= 1, "shims left: {after:?} (pool keeps one)");
    for (p, fds) in shims.iter().zip(&shim_fds) {
        if after.contains(p) {
            assert!(fd_count(*p) <= fds + 2, "shim {p} fds {fds} → {}", fd_count(*p));
            assert_eq!(zombie_children(*p).len(), 0, "zombies under shim {p}");
            assert_eq!(ptys(*p), 0);
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let prefix = d.dir.to_string_lossy().into_owned();
    // (The daemon's one sealed runc copy is there by design while it runs.)
    let left: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(&prefix) && !l.contains("/.sealed-runc "))
        .collect();
    assert!(left.is_empty(), "mounts left under {prefix}: {left:?}");
    for sub in ["memory", "pids", "cpu", ""] {
        let cg = Path::new("/sys/fs/cgroup").join(sub).join(&ns);
        let left: Vec<_> = std::fs::read_dir(&cg)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "cgroups left in {}: {left:?}", cg.display());
    }
    let bundles = d.state.join("io.containerd.runtime.v2.task").join(&ns);
    let left: Vec<_> = std::fs::read_dir(&bundles)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "bundles left: {left:?}");
    assert!(process_with_arg(&["-namespace", &ns]).is_none_or(|p| after.contains(&p)));
}

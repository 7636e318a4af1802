//! The tasks service end to end: Debian's `ctr` against a real taskd, with the real
//! `containerd-shim-runc-v2` and runc, on a busybox rootfs dir built from busybox-static.
//!
//! Every test uses its own namespace and container ids (shims hash them into their socket
//! paths; runc keeps state per namespace), so tests run in parallel with each other and with
//! other suites. Slow tests (10-task restart, 200 cycles) are `#[ignore = "e2e: ..."]`: `scripts/test.sh --e2e`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "support/rootfs.rs"]
mod rootfs;
mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::Daemon;
use support::procs::{command_lines, fd_count, zombie_children};
use support::registry::LayerBuilder;
use taskd_proto::containerd::services::tasks::v1 as api;

fn require_tools() {
    support::require(&[
        support::Need::Root,
        support::Need::Bin("runc", "runc"),
        support::Need::Bin("containerd-shim-runc-v2", "containerd"),
        support::Need::Bin("ctr", "containerd"),
    ]);
}

/// A busybox rootfs dir for one test (removed with it).
fn build_rootfs() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("taskd-busybox")
        .tempdir()
        .expect("temp dir");
    rootfs::build(d.path()).expect("build busybox rootfs");
    d
}

/// A namespace unique to this test run.
fn namespace(test: &str) -> String {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    format!(
        "tasks-{}-{}-{test}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

/// A test's namespace on a daemon (owns copies of the daemon's paths, so the daemon can be
/// killed and restarted while it lives).
struct Ns {
    rootfs: tempfile::TempDir,
    socket: PathBuf,
    state: PathBuf,
    log_path: PathBuf,
    ns: String,
    /// The runtime `ctr run` uses (`--runtime`).
    runtime: &'static str,
}

/// The stock Go shim and taskd's own: the key lifecycle tests run against both.
const RUNC_V2: &str = "io.containerd.runc.v2";
const TASKD_V2: &str = "io.containerd.taskd.v2";

impl Ns {
    fn new(d: &Daemon, test: &str) -> Self {
        Ns::with_runtime(d, test, RUNC_V2)
    }

    fn with_runtime(d: &Daemon, test: &str, runtime: &'static str) -> Self {
        require_tools();
        Ns {
            runtime,
            rootfs: build_rootfs(),
            socket: d.socket.clone(),
            state: d.state.clone(),
            log_path: d.log_path.clone(),
            ns: namespace(test),
        }
    }

    fn rootfs(&self) -> &str {
        self.rootfs.path().to_str().expect("utf-8 temp path")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", &self.ns])
            .args(args)
            .env_remove("CONTAINERD_ADDRESS")
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        if !out.status.success() {
            panic!(
                "ctr {args:?} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- daemon log ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn run_detached(&self, id: &str, cmd: &[&str]) {
        let mut args = vec![
            "run",
            "--runtime",
            self.runtime,
            "-d",
            "--rootfs",
            self.rootfs(),
            id,
        ];
        args.extend_from_slice(cmd);
        self.ctr_ok(&args);
    }

    /// `ctr tasks ls` as id → (pid, status).
    fn tasks(&self) -> BTreeMap<String, (u32, String)> {
        self.ctr_ok(&["tasks", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 3).then(|| (f[0].to_owned(), (f[1].parse().unwrap_or(0), f[2].to_owned())))
            })
            .collect()
    }

    fn status(&self, id: &str) -> String {
        self.tasks()
            .get(id)
            .map(|t| t.1.clone())
            .unwrap_or_else(|| "MISSING".into())
    }

    fn bundle(&self, id: &str) -> PathBuf {
        bundles(&self.state).join(&self.ns).join(id)
    }

    fn pid_file(&self, id: &str, name: &str) -> u32 {
        std::fs::read_to_string(self.bundle(id).join(name))
            .unwrap_or_else(|e| panic!("read {name} of {id}: {e}"))
            .trim()
            .parse()
            .expect("pid")
    }

    /// Wait RPC over gRPC (ctr 1.6 has no `tasks wait`).
    async fn wait(&self, id: &str) -> u32 {
        wait_on(&self.socket, &self.ns, id).await
    }
}

fn bundles(state: &Path) -> PathBuf {
    state.join("io.containerd.runtime.v2.task")
}

fn alive(pid: u32) -> bool {
    taskd::runtime::v2::shim::pid_alive(pid)
}

/// The pids of namespace `ns`'s warm pool shims (`<bundles>/.pool/<ns>/*/shim.pid`).
fn pool_pids(state: &Path, ns: &str) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir(bundles(state).join(".pool").join(ns))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|d| std::fs::read_to_string(d.path().join("shim.pid")).ok())
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    v.sort_unstable();
    v
}

/// Waits (up to 10 s) until `ns` has exactly `n` pool dirs whose shims are alive.
fn pool_settles(state: &Path, ns: &str, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = pool_pids(state, ns);
        if pids.len() == n && pids.iter().all(|p| alive(*p)) {
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "pool of {ns} never had {n} live shims: {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        // The daemon's one sealed runc copy is there by design while it runs.
        .filter(|m| !m.ends_with("/.sealed-runc"))
        .map(str::to_owned)
        .collect()
}

/// Whether any live process's command line holds all of `needles` (read-only check; tests
/// never kill by name).
fn process_with_args(needles: &[&str]) -> Option<u32> {
    command_lines()
        .into_iter()
        .find(|(p, args)| needles.iter().all(|n| args.iter().any(|a| a == n)) && alive(*p))
        .map(|(p, _)| p)
}

#[test]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
fn ctr_run_rm_echo_prints_hi() {
    run_rm_echo(RUNC_V2);
}

#[test]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
fn ctr_run_rm_echo_prints_hi_taskd_shim() {
    run_rm_echo(TASKD_V2);
}

fn run_rm_echo(runtime: &'static str) {
    let d = Daemon::start();
    let n = Ns::with_runtime(&d, "echo", runtime);
    let out = n.ctr_ok(&[
        "run",
        "--runtime",
        runtime,
        "--rm",
        "--rootfs",
        n.rootfs(),
        "t1",
        "/bin/echo",
        "hi",
    ]);
    assert_eq!(out.trim_end(), "hi");
    assert!(n.tasks().is_empty());
    assert!(!n.bundle("t1").exists());
    assert!(n.ctr_ok(&["containers", "ls", "-q"]).trim().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
async fn ctr_detached_task_lifecycle() {
    detached_task_lifecycle(RUNC_V2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
async fn ctr_detached_task_lifecycle_taskd_shim() {
    detached_task_lifecycle(TASKD_V2).await;
}

async fn detached_task_lifecycle(runtime: &'static str) {
    let d = Daemon::start();
    let n = Ns::with_runtime(&d, "life", runtime);
    n.run_detached("d1", &["/bin/sleep", "1000"]);
    let (pid, status) = n.tasks()["d1"].clone();
    assert_eq!(status, "RUNNING");
    assert_eq!(pid, n.pid_file("d1", "init.pid"));

    let ps = n.ctr_ok(&["tasks", "ps", "d1"]);
    assert!(
        ps.lines().skip(1).any(|l| l.starts_with(&pid.to_string())),
        "{ps}"
    );

    let out = n.ctr_ok(&["tasks", "exec", "--exec-id", "e1", "d1", "/bin/echo", "from-exec"]);
    assert_eq!(out.trim_end(), "from-exec");
    let failed = n.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "e2",
        "d1",
        "/bin/sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(failed.status.code(), Some(3), "{failed:?}");

    n.ctr_ok(&["tasks", "pause", "d1"]);
    assert_eq!(n.status("d1"), "PAUSED");
    n.ctr_ok(&["tasks", "resume", "d1"]);
    assert_eq!(n.status("d1"), "RUNNING");

    // Update: the new memory limit lands in the container's cgroup (ctr's default cgroups
    // path is /<namespace>/<id>).
    // (ctr 1.6 has no `tasks update`: the Update RPC directly, as containerd's client sends it.)
    let mut c = api::tasks_client::TasksClient::new(d.channel().await);
    let resources = serde_json::json!({ "memory": { "limit": 67108864 } });
    c.update(in_ns(
        &n.ns,
        api::UpdateTaskRequest {
            container_id: "d1".into(),
            resources: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value: serde_json::to_vec(&resources).expect("json"),
            }),
            annotations: Default::default(),
        },
    ))
    .await
    .expect("Update");
    let limit = Path::new("/sys/fs/cgroup/memory")
        .join(&n.ns)
        .join("d1")
        .join("memory.limit_in_bytes");
    if limit.exists() {
        assert_eq!(
            std::fs::read_to_string(&limit).expect("read limit").trim(),
            "67108864"
        );
    } else {
        let v2 = Path::new("/sys/fs/cgroup")
            .join(&n.ns)
            .join("d1")
            .join("memory.max");
        assert_eq!(
            std::fs::read_to_string(&v2).expect("read memory.max").trim(),
            "67108864"
        );
    }

    let metrics = n.ctr_ok(&["tasks", "metrics", "d1"]);
    assert!(metrics.contains("memory.usage_in_bytes"), "{metrics}");

    // Removing a running task fails like containerd's and keeps the task.
    let rm = n.ctr(&["tasks", "rm", "d1"]);
    assert!(!rm.status.success());
    assert_eq!(n.status("d1"), "RUNNING");

    let waiter = {
        let ns = n.ns.clone();
        let socket = d.socket.clone();
        tokio::spawn(async move { wait_on(&socket, &ns, "d1").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    n.ctr_ok(&["tasks", "kill", "--all", "-s", "SIGKILL", "d1"]);
    assert_eq!(waiter.await.expect("join"), 137);
    assert_eq!(n.status("d1"), "STOPPED");
    n.ctr_ok(&["tasks", "rm", "d1"]);
    n.ctr_ok(&["containers", "rm", "d1"]);
    assert!(!n.bundle("d1").exists());
    assert!(!alive(pid));
    assert!(mounts_under(&d.dir).is_empty());
    let gone = n.ctr(&["tasks", "rm", "d1"]);
    assert!(!gone.status.success());
}

/// Wait over a fresh connection (for use from a spawned task).
async fn wait_on(socket: &Path, ns: &str, id: &str) -> u32 {
    let path = socket.to_path_buf();
    let ch = tonic::transport::Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .expect("connect");
    let mut c = api::tasks_client::TasksClient::new(ch);
    let mut req = tonic::Request::new(api::WaitRequest {
        container_id: id.into(),
        exec_id: String::new(),
    });
    req.metadata_mut()
        .insert("containerd-namespace", ns.parse().expect("ascii ns"));
    c.wait(req).await.expect("Wait").into_inner().exit_status
}

#[test]
#[ignore = "e2e: needs root, runc, the runc shim, ctr, script (bsdutils)"]
fn ctr_run_tty_gives_a_terminal() {
    support::require(&[support::Need::Bin("script", "bsdutils")]);
    let d = Daemon::start();
    let n = Ns::new(&d, "tty");
    let cmd = format!(
        "ctr --address {} -n {} run -t --rm --rootfs {} tty1 /bin/sh -c 'tty; echo sum-$((40+2))'",
        d.socket.display(),
        n.ns,
        n.rootfs()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("run script");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}\n--- daemon log ---\n{}", d.log());
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("sum-42"), "{text}");
    assert!(!n.bundle("tty1").exists());
}

#[test]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
fn runc_failing_at_create_cleans_up() {
    let d = Daemon::start();
    let n = Ns::new(&d, "badrun");
    let id = format!("bad{}", std::process::id());
    let out = n.ctr(&["run", "--rm", "--rootfs", n.rootfs(), &id, "/no/such/binary"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/no/such/binary") && err.contains("no such file"),
        "unclear error: {err}"
    );
    assert!(!n.bundle(&id).exists(), "bundle left behind");
    assert!(mounts_under(&d.dir).is_empty());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        process_with_args(&["-id", &id]),
        None,
        "a shim for {id} is still running"
    );
    assert!(n.tasks().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
async fn shim_sigkill_gives_exit_event_and_wait_returns() {
    shim_sigkill_exit(RUNC_V2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
async fn shim_sigkill_gives_exit_event_and_wait_returns_taskd_shim() {
    shim_sigkill_exit(TASKD_V2).await;
}

async fn shim_sigkill_exit(runtime: &'static str) {
    let d = Daemon::start();
    let n = Ns::with_runtime(&d, "shimkill", runtime);
    n.run_detached("v1", &["/bin/sleep", "1000"]);
    let shim = n.pid_file("v1", "shim.pid");
    let init = n.pid_file("v1", "init.pid");

    // Watch events with ctr.
    let mut events = Command::new("ctr")
        .arg("--address")
        .arg(&d.socket)
        .args(["events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ctr events");
    let stdout = events.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));

    let waiter = {
        let ns = n.ns.clone();
        let socket = d.socket.clone();
        tokio::spawn(async move { wait_on(&socket, &ns, "v1").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill shim");
    let status = tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("Wait returns after the shim died")
        .expect("join");
    assert_eq!(status, 137);

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains("/tasks/exit") && l.contains(&n.ns) && l.contains("v1"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => panic!(
                "no /tasks/exit event; saw {seen:?}\n--- daemon log ---\n{}",
                d.log()
            ),
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    let _ = reader.join();

    assert_eq!(n.status("v1"), "STOPPED");
    assert!(!alive(init), "container init survived its shim");
    n.ctr_ok(&["tasks", "rm", "v1"]);
    n.ctr_ok(&["containers", "rm", "v1"]);
    assert!(!n.bundle("v1").exists());
    assert!(mounts_under(&d.dir).is_empty());
    assert_eq!(zombie_children(d.pid()), Vec::<u32>::new());
}

/// Restart recovery with `count` long-running tasks, a task whose shim dies while taskd is
/// down, and a broken bundle.
async fn restart_recovery(count: usize, runtime: &'static str) {
    let mut d = Daemon::start();
    let n = Ns::with_runtime(&d, "restart", runtime);
    let ids: Vec<String> = (0..count).map(|i| format!("r{i}")).collect();
    for id in &ids {
        n.run_detached(id, &["/bin/sleep", "1000"]);
    }
    n.run_detached("lost", &["/bin/sleep", "1000"]);
    let pids: Vec<(u32, u32)> = ids
        .iter()
        .map(|id| (n.pid_file(id, "shim.pid"), n.pid_file(id, "init.pid")))
        .collect();
    let lost_shim = n.pid_file("lost", "shim.pid");
    let lost_init = n.pid_file("lost", "init.pid");
    // The warm pool (default size 1): shims that took a task are those tasks' shims; the
    // rest are idle and must never come back as tasks.
    let task_shims: Vec<u32> = pids.iter().map(|p| p.0).chain([lost_shim]).collect();
    let idle_pool: Vec<u32> = pool_pids(&d.state, &n.ns)
        .into_iter()
        .filter(|p| !task_shims.contains(p))
        .collect();

    d.kill9();
    for (shim, init) in &pids {
        assert!(
            alive(*shim) && alive(*init),
            "shim {shim} / init {init} died with taskd"
        );
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(lost_shim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill shim");
    let broken = bundles(&d.state).join(&n.ns).join("broken");
    std::fs::create_dir_all(broken.join("shim-binary-path")).expect("mkdir");
    std::fs::write(broken.join("config.json"), b"{not json").expect("write");
    let cut = bundles(&d.state).join(&n.ns).join("cut");
    std::fs::create_dir_all(&cut).expect("mkdir");
    std::fs::write(cut.join("config.json"), b"{}").expect("write");

    d.restart();
    let tasks = n.tasks();
    for id in &ids {
        assert_eq!(tasks.get(id).map(|t| t.1.as_str()), Some("RUNNING"), "{tasks:?}");
    }
    assert_eq!(tasks.len(), count + 1, "{tasks:?}");
    for p in &idle_pool {
        assert!(!alive(*p), "idle pool shim {p} survived recovery");
    }
    for p in pool_pids(&d.state, &n.ns) {
        assert!(
            task_shims.contains(&p),
            "pool dir of shim {p} that serves no task"
        );
    }
    assert_eq!(
        tasks.get("lost").map(|t| t.1.as_str()),
        Some("STOPPED"),
        "{tasks:?}"
    );
    assert!(!alive(lost_init), "the lost shim's container was not cleaned up");
    assert!(!n.bundle("lost").exists());
    let log = d.log();
    assert!(log.contains("broken bundle skipped"), "{log}");
    assert!(
        !cut.exists(),
        "a bundle without a shim (cut create or delete) is removed"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("published /tasks/exit") && l.contains("lost")),
        "no exit published for the lost task"
    );
    // The monitor has the recovered tasks again, with their runtime label.
    let (code, metrics) = d.http("/v1/metrics", None);
    assert_eq!(code, 200);
    for id in &ids {
        assert!(
            metrics
                .lines()
                .any(|l| l.contains(&format!("container_id=\"{id}\""))
                    && l.contains(&format!("runtime=\"{runtime}\""))),
            "monitor lost {id} after restart"
        );
    }

    // The runtime's own gauges, computed at scrape.
    let gauge = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing from /v1/metrics"))
    };
    assert_eq!(gauge("taskd_tasks{state=\"running\"}"), count as f64);
    assert_eq!(gauge("taskd_tasks{state=\"stopped\"}"), 1.0);
    assert_eq!(gauge("taskd_shims_running"), count as f64);
    // Histograms exist (they count creates of this daemon run only: none yet).
    assert!(metrics.contains("taskd_shim_start_duration_seconds_bucket"));
    assert!(metrics.contains("taskd_task_create_duration_seconds_count 0"));

    for id in &ids {
        let out = n.ctr_ok(&["tasks", "exec", "--exec-id", "e1", id, "/bin/echo", "back"]);
        assert_eq!(out.trim_end(), "back");
        n.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", id]);
        assert_eq!(n.wait(id).await, 137);
        n.ctr_ok(&["tasks", "rm", id]);
        n.ctr_ok(&["containers", "rm", id]);
        assert!(!n.bundle(id).exists());
    }
    n.ctr_ok(&["tasks", "rm", "lost"]);
    n.ctr_ok(&["containers", "rm", "lost"]);
    std::fs::remove_dir_all(&broken).expect("remove broken bundle");
    // A warm pool shim whose task was deleted may be the pool's one idle shim now.
    let pool = pool_pids(&d.state, &n.ns);
    assert!(
        pool.len() <= 1,
        "more idle pool shims than shim_pool_size: {pool:?}"
    );
    for (shim, init) in &pids {
        assert!(!alive(*init), "init {init} survived");
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(*shim) && !pool.contains(shim) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            !alive(*shim) || pool.contains(shim),
            "shim {shim} survived its last task"
        );
    }
    for p in &pool {
        assert!(task_shims.contains(p), "pool shim {p} was not a recovered task's");
    }
    assert!(mounts_under(&d.dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
async fn restart_recovers_running_tasks() {
    restart_recovery(2, RUNC_V2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
async fn restart_recovers_running_tasks_taskd_shim() {
    restart_recovery(2, TASKD_V2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: slow (10 tasks through a daemon restart); needs root, runc, the runc shim"]
async fn restart_recovers_ten_tasks_e2e() {
    restart_recovery(10, RUNC_V2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: slow (200 task cycles); needs root, runc, the runc shim"]
async fn two_hundred_cycles_leave_nothing_behind_e2e() {
    let mut d = Daemon::start();
    let n = Ns::new(&d, "cycles");
    let mut pids = Vec::new();
    let mut fds_before = 0;
    for i in 0..200 {
        let id = format!("c{i}");
        n.run_detached(&id, &["/bin/sleep", "1000"]);
        pids.push(n.pid_file(&id, "shim.pid"));
        pids.push(n.pid_file(&id, "init.pid"));
        n.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", &id]);
        assert_eq!(n.wait(&id).await, 137);
        n.ctr_ok(&["tasks", "rm", &id]);
        n.ctr_ok(&["containers", "rm", &id]);
        if i == 0 {
            // After one warm-up cycle: lazily opened fds exist now.
            fds_before = fd_count(d.pid());
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    // Warm shims go back to the pool after their task: exactly one idle pool shim is left.
    let pool = pool_settles(&d.state, &n.ns, 1);
    let left: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| alive(*p) && *p != pool[0])
        .collect();
    assert!(left.is_empty(), "processes left: {left:?}");
    assert!(mounts_under(&d.dir).is_empty(), "{:?}", mounts_under(&d.dir));
    let ns_dir = bundles(&d.state).join(&n.ns);
    let left_bundles = std::fs::read_dir(&ns_dir)
        .map(std::iter::Iterator::count)
        .unwrap_or(0);
    assert_eq!(left_bundles, 0, "bundles left in {}", ns_dir.display());
    let fds_after = fd_count(d.pid());
    assert!(
        fds_after <= fds_before + 4,
        "taskd fds grew from {fds_before} to {fds_after}"
    );
    assert_eq!(zombie_children(d.pid()), Vec::<u32>::new());
    assert!(n.tasks().is_empty());
    // SIGTERM stops the idle pool shim.
    assert_eq!(pool_settles(&d.state, &n.ns, 1), pool);
    assert!(d.stop().success());
    assert!(!alive(pool[0]), "SIGTERM left the idle pool shim running");
    assert_eq!(pool_pids(&d.state, &n.ns), Vec::<u32>::new());
}

/// A request with the namespace header.
fn in_ns<T>(ns: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("containerd-namespace", ns.parse().expect("ascii ns"));
    req
}

type Tasks = api::tasks_client::TasksClient<tonic::transport::Channel>;

/// A daemon, a namespace on it and a tasks client.
async fn tasks_daemon(test: &str) -> (Daemon, Ns, Tasks) {
    let d = Daemon::start();
    let n = Ns::new(&d, test);
    let c = Tasks::new(d.channel().await);
    (d, n, c)
}

/// A daemon whose namespace runs the task `e1` (`sleep 1000`).
async fn sleeping_e1(test: &str) -> (Daemon, Ns, Tasks) {
    let (d, n, c) = tasks_daemon(test).await;
    n.run_detached("e1", &["/bin/sleep", "1000"]);
    (d, n, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
async fn a_shim_s_not_found_reaches_the_client_as_not_found() {
    let (_d, n, mut c) = sleeping_e1("errors-get").await;
    let st = c
        .get(in_ns(
            &n.ns,
            api::GetRequest {
                container_id: "e1".into(),
                exec_id: "nope".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::NotFound, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
async fn create_of_an_existing_task_is_already_exists_naming_it() {
    let (_d, n, mut c) = sleeping_e1("errors-create").await;
    let st = c
        .create(in_ns(
            &n.ns,
            api::CreateTaskRequest {
                container_id: "e1".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::AlreadyExists);
    assert_eq!(st.message(), "task e1 already exists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
async fn checkpoint_of_a_container_that_does_not_exist_is_not_found() {
    let (_d, n, mut c) = tasks_daemon("errors-checkpoint").await;
    let st = c
        .checkpoint(in_ns(
            &n.ns,
            api::CheckpointTaskRequest {
                container_id: "nope".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::NotFound, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
async fn exec_without_an_id_is_invalid_argument() {
    let (_d, n, mut c) = sleeping_e1("errors-exec").await;
    let st = c
        .exec(in_ns(
            &n.ns,
            api::ExecProcessRequest {
                container_id: "e1".into(),
                exec_id: String::new(),
                spec: Some(prost_types::Any::default()),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::InvalidArgument);
}

/// One sequence: a container whose task was killed and removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
async fn get_and_delete_on_a_container_without_a_task_are_not_found_naming_the_task() {
    let (_d, n, mut c) = sleeping_e1("errors-notask").await;
    n.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "e1"]);
    assert_eq!(n.wait("e1").await, 137);
    n.ctr_ok(&["tasks", "rm", "e1"]);
    for st in [
        c.get(in_ns(
            &n.ns,
            api::GetRequest {
                container_id: "e1".into(),
                exec_id: String::new(),
            },
        ))
        .await
        .unwrap_err(),
        c.delete(in_ns(
            &n.ns,
            api::DeleteTaskRequest {
                container_id: "e1".into(),
            },
        ))
        .await
        .unwrap_err(),
    ] {
        assert_eq!(st.code(), tonic::Code::NotFound);
        assert_eq!(st.message(), "task e1 not found");
    }
    n.ctr_ok(&["containers", "rm", "e1"]);
}

#[test]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
fn runtime_v1_is_refused_naming_the_v2_runtime() {
    let d = Daemon::start();
    let n = Ns::new(&d, "errors-v1");
    let out = n.ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.runc.v1",
        "--rootfs",
        n.rootfs(),
        "v1",
        "/bin/true",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("io.containerd.runc.v2"), "{err}");
    assert!(!n.bundle("v1").exists());
}

/// `ctr events` in the background: the `/tasks/*` topics of one namespace, in order.
struct EventWatch {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl EventWatch {
    fn start(n: &Ns) -> EventWatch {
        let mut child = Command::new("ctr")
            .arg("--address")
            .arg(&n.socket)
            .arg("events")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ctr events");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Let the subscription reach the daemon before anything happens.
        std::thread::sleep(Duration::from_millis(300));
        EventWatch {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Task topics of `ns` until `count` of them arrived (bounded).
    fn task_topics(&mut self, ns: &str, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let topics: Vec<String> = self
                .seen
                .iter()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let i = f.iter().position(|t| t.starts_with("/tasks/"))?;
                    (i > 0 && f[i - 1] == ns).then(|| f[i].to_owned())
                })
                .collect();
            if topics.len() >= count {
                return topics;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => return topics,
            }
        }
    }
}

impl Drop for EventWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
fn task_events_reach_ctr_in_runtime_v2_order() {
    let d = Daemon::start();
    let n = Ns::new(&d, "order");
    let mut events = EventWatch::start(&n);
    n.ctr_ok(&["run", "--rm", "--rootfs", n.rootfs(), "o1", "/bin/true"]);
    assert_eq!(
        events.task_topics(&n.ns, 4),
        ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    );

    n.run_detached("o2", &["/bin/sleep", "1000"]);
    n.ctr_ok(&["tasks", "exec", "--exec-id", "x1", "o2", "/bin/true"]);
    n.ctr_ok(&["tasks", "pause", "o2"]);
    n.ctr_ok(&["tasks", "resume", "o2"]);
    n.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "o2"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while n.status("o2") != "STOPPED" {
        assert!(Instant::now() < deadline, "o2 did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    n.ctr_ok(&["tasks", "rm", "o2"]);
    n.ctr_ok(&["containers", "rm", "o2"]);
    let topics = events.task_topics(&n.ns, 13);
    assert_eq!(
        topics[4..],
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/exit",
            "/tasks/delete"
        ],
        "{topics:?}"
    );
}

/// Counts into /tmp/c of the rootfs, ten a second.
const COUNTER: &str = "i=0; while true; do echo $i > /tmp/c; i=$((i+1)); sleep 0.1; done";

/// The tasks service's staging dirs for checkpoints (`checkpoint/`) and restores (`restore/`).
fn tasks_service_root(d: &Daemon) -> PathBuf {
    d.root.join("io.containerd.service.v1.tasks-service")
}

/// Entries of a dir (none when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `ctr content ingest REF` of `data` in the test's namespace; the digest.
fn ingest(n: &Ns, r: &str, data: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("ctr")
        .arg("--address")
        .arg(&n.socket)
        .args(["-n", &n.ns, "content", "ingest", r])
        .env_remove("CONTAINERD_ADDRESS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ctr content ingest");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("write to ctr");
    let out = child.wait_with_output().expect("ctr content ingest");
    assert!(
        out.status.success(),
        "ctr content ingest: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    support::registry::sha256(data)
}

fn create_from_checkpoint(
    ns: &str,
    id: &str,
    media_type: &str,
    digest: &str,
    size: i64,
) -> tonic::Request<api::CreateTaskRequest> {
    in_ns(
        ns,
        api::CreateTaskRequest {
            container_id: id.into(),
            checkpoint: Some(taskd_proto::containerd::types::Descriptor {
                media_type: media_type.into(),
                digest: digest.into(),
                size,
                annotations: Default::default(),
            }),
            ..Default::default()
        },
    )
}

const MEDIA_CRIU: &str = "application/vnd.containerd.container.criu.checkpoint.criu.tar";

// Create with a `checkpoint` descriptor, as containerd's tasks service: only the CRIU tar
// media type, content that exists, an archive that stays inside its restore dir. A
// well-formed archive reaches the shim (whose Start runs `runc restore`), and the restore
// dir goes with the task. The tests below check one of these each.

/// A daemon with the container `r1` (the counter script, no task) to restore into; the
/// tasks client and the namespace's restore staging dir.
async fn restore_target(test: &str) -> (Daemon, Ns, Tasks, PathBuf) {
    let (d, n, c) = tasks_daemon(test).await;
    std::fs::write(n.rootfs.path().join("count.sh"), COUNTER).unwrap();
    n.ctr_ok(&[
        "containers",
        "create",
        "--rootfs",
        n.rootfs(),
        "r1",
        "/bin/sh",
        "/count.sh",
    ]);
    let restore = tasks_service_root(&d).join("restore").join(&n.ns);
    (d, n, c, restore)
}

/// A create of `r1` from the archive `tar(escape)` (aimed at /tmp/`escape`) is refused as
/// InvalidArgument saying `expect` and naming the digest; nothing is written outside,
/// nothing staged, no task created.
async fn assert_hostile_checkpoint_refused(name: &str, tar: impl FnOnce(&str) -> Vec<u8>, expect: &str) {
    let escape = format!("taskd-ckpt-escape-{}-{name}", std::process::id());
    let tar = tar(&escape);
    let (_d, n, mut c, restore) = restore_target(&format!("restore-{name}")).await;
    let digest = ingest(&n, &format!("hostile-{name}"), &tar);
    let st = c
        .create(create_from_checkpoint(
            &n.ns,
            "r1",
            MEDIA_CRIU,
            &digest,
            tar.len() as i64,
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::InvalidArgument, "{name}: {st:?}");
    assert!(st.message().contains(expect), "{name}: {}", st.message());
    assert!(st.message().contains(&digest), "{name}: {}", st.message());
    assert!(!Path::new("/tmp").join(&escape).exists(), "{name}: wrote outside");
    assert!(
        entries(&restore).is_empty(),
        "{name}: left {:?}",
        entries(&restore)
    );
    assert!(n.tasks().is_empty(), "{name}: a task was created");
}

/// A well-formed archive that is no CRIU image, in the content store; `r1` created from it.
async fn create_from_a_fake_criu_image(n: &Ns, c: &mut Tasks) {
    let image = LayerBuilder::new()
        .file("inventory.img", "not a CRIU image")
        .file("descriptors.json", r#"["/dev/null","/dev/null","/dev/null"]"#)
        .tar();
    let digest = ingest(n, "fake-criu-image", &image);
    c.create(create_from_checkpoint(
        &n.ns,
        "r1",
        MEDIA_CRIU,
        &digest,
        image.len() as i64,
    ))
    .await
    .unwrap_or_else(|e| panic!("create from checkpoint: {e:?}\n{}", n.log()));
}

/// Start of `r1` created by [`create_from_a_fake_criu_image`]: `runc restore` fails (it is
/// no CRIU image, and CRIU may not run here at all) with CRIU's error.
async fn start_fails_with_criu_s_error(n: &Ns, c: &mut Tasks) {
    let st = c
        .start(in_ns(
            &n.ns,
            api::StartRequest {
                container_id: "r1".into(),
                exec_id: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert!(
        st.message().starts_with("restore of task r1: ") && st.message().contains("criu"),
        "{st:?}"
    );
    eprintln!("restore from a fake image: {st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
async fn create_from_a_checkpoint_of_another_media_type_is_refused_before_any_read() {
    let (_d, n, mut c, _) = restore_target("restore-media").await;
    let st = c
        .create(create_from_checkpoint(
            &n.ns,
            "r1",
            "application/vnd.oci.image.layer.v1.tar",
            &support::registry::sha256(b"x"),
            1,
        ))
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::InvalidArgument, "{st:?}");
    assert_eq!(
        st.message(),
        "unsupported checkpoint type \"application/vnd.oci.image.layer.v1.tar\""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
async fn create_from_a_checkpoint_the_content_store_lacks_is_not_found_naming_it() {
    let (_d, n, mut c, _) = restore_target("restore-missing").await;
    let missing = support::registry::sha256(b"no such checkpoint");
    let st = c
        .create(create_from_checkpoint(&n.ns, "r1", MEDIA_CRIU, &missing, 18))
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::NotFound, "{st:?}");
    assert!(st.message().contains(&missing), "{}", st.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
async fn a_checkpoint_archive_with_a_dotdot_path_is_refused_and_writes_nothing() {
    let tar = |escape: &str| {
        LayerBuilder::new()
            .raw_file(&format!("../../../../../../../../../../tmp/{escape}"), "x")
            .tar()
    };
    assert_hostile_checkpoint_refused("dotdot", tar, "path escapes the root").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
async fn a_checkpoint_archive_writing_through_a_symlink_out_is_refused_and_writes_nothing() {
    let tar = |escape: &str| {
        LayerBuilder::new()
            .raw_symlink("evil", "/tmp")
            .raw_file(&format!("evil/{escape}"), "x")
            .tar()
    };
    assert_hostile_checkpoint_refused("symlink", tar, "resolves outside the root").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
async fn create_from_a_well_formed_checkpoint_unpacks_it_in_one_restore_dir() {
    let (_d, n, mut c, restore) = restore_target("restore-unpack").await;
    create_from_a_fake_criu_image(&n, &mut c).await;
    let dirs = entries(&restore.join("r1"));
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert_eq!(
        entries(&restore.join("r1").join(&dirs[0])).len(),
        2,
        "the archive's two files"
    );
    assert_eq!(
        std::fs::read(restore.join("r1").join(&dirs[0]).join("inventory.img")).unwrap(),
        b"not a CRIU image"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
async fn start_from_an_archive_that_is_no_criu_image_fails_with_criu_s_error() {
    let (_d, n, mut c, _) = restore_target("restore-start").await;
    create_from_a_fake_criu_image(&n, &mut c).await;
    start_fails_with_criu_s_error(&n, &mut c).await;
}

/// One sequence: a task whose restore failed at Start is deleted with its restore dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
async fn delete_of_a_task_whose_restore_failed_removes_its_restore_dir() {
    let (_d, n, mut c, restore) = restore_target("restore-delete").await;
    create_from_a_fake_criu_image(&n, &mut c).await;
    start_fails_with_criu_s_error(&n, &mut c).await;
    // No process ever ran: Delete (`ctr tasks rm -f` would wait for an exit that never comes).
    let deleted = tokio::time::timeout(
        Duration::from_secs(60),
        c.delete(in_ns(
            &n.ns,
            api::DeleteTaskRequest {
                container_id: "r1".into(),
            },
        )),
    )
    .await
    .expect("delete of the unrestored task hangs");
    deleted.unwrap_or_else(|e| panic!("delete: {e:?}"));
    assert!(!restore.join("r1").exists(), "restore dir left after delete");
    n.ctr_ok(&["containers", "rm", "r1"]);
}

/// Checkpoint of a running task through the content store. When CRIU cannot dump here (see
/// docs/CRIU.md) the error is FailedPrecondition and carries CRIU's own `Error` lines; the
/// task keeps running and no staging dir or content is left. Where CRIU works, the image and
/// the spec come back as containerd's two descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
async fn checkpoint_of_a_running_task() {
    let d = Daemon::start();
    let n = Ns::new(&d, "checkpoint");
    let mut c = api::tasks_client::TasksClient::new(d.channel().await);
    n.run_detached("c1", &["/bin/sh", "-c", COUNTER]);
    let dumps = tasks_service_root(&d).join("checkpoint");
    let result = c
        .checkpoint(in_ns(
            &n.ns,
            api::CheckpointTaskRequest {
                container_id: "c1".into(),
                ..Default::default()
            },
        ))
        .await;
    match result {
        Ok(r) => {
            let media: Vec<String> = r
                .into_inner()
                .descriptors
                .into_iter()
                .map(|d| d.media_type)
                .collect();
            assert_eq!(
                media,
                [
                    MEDIA_CRIU,
                    "application/vnd.containerd.container.checkpoint.config.v1+proto"
                ]
            );
        }
        Err(st) => {
            eprintln!("checkpoint failed as CRIU cannot run here: {st:?}");
            assert_eq!(st.code(), tonic::Code::FailedPrecondition, "{st:?}");
            assert!(
                st.message().starts_with("checkpoint of task c1: ") && st.message().contains("criu failed"),
                "{st:?}"
            );
            let check = Command::new("criu").arg("check").output().expect("criu check");
            let check = String::from_utf8_lossy(&check.stderr).into_owned();
            if let Some(first) = check.lines().find(|l| l.contains("Error (")) {
                // CRIU's own words reach the client (its log's Error lines).
                let words = first.split_once("): ").map_or(first, |(_, w)| w);
                assert!(st.message().contains(words), "{words:?} not in {st:?}");
            }
            assert_eq!(n.ctr_ok(&["content", "ls", "-q"]).trim(), "");
            // ctr's own path: pause, checkpoint, resume; the same error.
            let out = n.ctr(&["tasks", "checkpoint", "c1"]);
            assert!(!out.status.success());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("criu failed"), "{err}");
        }
    }
    assert_eq!(n.status("c1"), "RUNNING");
    assert!(
        entries(&dumps).is_empty(),
        "dump dirs left: {:?}",
        entries(&dumps)
    );
    n.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "c1"]);
    assert_eq!(n.wait("c1").await, 137);
    n.ctr_ok(&["tasks", "rm", "c1"]);
    n.ctr_ok(&["containers", "rm", "c1"]);
}

/// `ctr containers checkpoint` on a container made from an image. With `--task` ctr pauses
/// the task, calls Checkpoint, resumes: where CRIU cannot dump (docs/CRIU.md) it fails with
/// CRIU's error and the task runs on; without `--task` it records the container (image,
/// runtime, snapshotter) as a checkpoint image through the content, images and leases
/// services.
#[test]
#[ignore = "e2e: needs root, runc, the runc shim, ctr"]
fn ctr_containers_checkpoint() {
    use support::registry::{ImageBuilder, OciLayout};
    let d = Daemon::start();
    let n = Ns::new(&d, "ctrckpt");
    let mut layout = OciLayout::new();
    layout.add_image("v1", &ImageBuilder::busybox().build());
    let archive = d.dir.join("busybox.tar");
    std::fs::write(&archive, layout.tar()).unwrap();
    n.ctr_ok(&[
        "images",
        "import",
        "--base-name",
        "example.com/busybox",
        archive.to_str().unwrap(),
    ]);
    let image = n
        .ctr_ok(&["images", "ls", "-q"])
        .lines()
        .next()
        .expect("the imported image")
        .to_owned();
    n.ctr_ok(&["run", "-d", &image, "c2", "/bin/sh", "-c", COUNTER]);

    let out = n.ctr(&["containers", "checkpoint", "--task", "c2", "checkpoint/c2:task"]);
    let images = n.ctr_ok(&["images", "ls", "-q"]);
    if out.status.success() {
        assert!(images.contains("checkpoint/c2:task"), "{images}");
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("ctr containers checkpoint --task: {err}");
        assert!(err.contains("criu failed"), "{err}");
        assert!(!images.contains("checkpoint/c2:task"), "{images}");
    }
    assert_eq!(n.status("c2"), "RUNNING");

    n.ctr_ok(&["containers", "checkpoint", "c2", "checkpoint/c2:meta"]);
    let ls = n.ctr_ok(&["images", "ls"]);
    let index = ls
        .lines()
        .find(|l| l.starts_with("checkpoint/c2:meta"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_else(|| panic!("no checkpoint image in\n{ls}"))
        .to_owned();
    let index: serde_json::Value =
        serde_json::from_str(&n.ctr_ok(&["content", "get", &index])).expect("index JSON");
    assert_eq!(
        index["annotations"]["io.containerd.checkpoint.runtime"], "io.containerd.runc.v2",
        "{index}"
    );
    assert_eq!(
        index["annotations"]["org.opencontainers.image.ref.name"], image,
        "{index}"
    );

    n.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "c2"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while n.status("c2") != "STOPPED" {
        assert!(Instant::now() < deadline, "c2 did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    n.ctr_ok(&["tasks", "rm", "c2"]);
    n.ctr_ok(&["containers", "rm", "c2"]);
}

//! Component tests of the runtime v2 shim manager and the tasks `Local`, in process, against
//! the real `containerd-shim-runc-v2` and runc. Shim events arrive on a ttrpc events server
//! the test serves; the daemon-side events on a recording publisher; both land in one
//! ordered log.
//!
//! Needs root, runc, containerd-shim-runc-v2 (package containerd) and busybox-static.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "support/rootfs.rs"]
mod rootfs;

// The end-to-end guard (the file tests/support includes; this binary does not use support).
#[path = "../src/e2e_guard.rs"]
#[allow(dead_code)]
mod e2e_guard;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use taskd::errdefs::{ErrorKind, Kind};
use taskd::events::{EventError, Publisher};
use taskd::metadata::{Container, ContainerStore, MetadataError, Runtime};
use taskd::monitor::{MonitoredTask, TaskMonitor};
use taskd::runtime::v2::binary::DaemonAddresses;
use taskd::runtime::v2::{Config, TaskManager};
use taskd::runtime::{ExecOpts, Status, Stdio};
use taskd::services::tasks::{CreateTask, Local, Tasks};
use taskd_proto::ttrpc::v2::{events as pbevents, events_ttrpc};

// ---------- fixtures ----------

fn require_tools() {
    e2e_guard::require(&[
        e2e_guard::Need::Root,
        e2e_guard::Need::Bin("runc", "runc"),
        e2e_guard::Need::Bin("containerd-shim-runc-v2", "containerd"),
    ]);
}

/// A default runc spec (`runc spec`) with the given rootfs and args, for container `id` in
/// namespace `ns`; its cgroup is `/taskd-test/<ns>-<id>`, one per world (tests run in
/// parallel, and many use the same container ids).
fn spec_with(
    rootfs: &Path,
    ns: &str,
    id: &str,
    args: &[&str],
    terminal: bool,
    sandbox: Option<&str>,
) -> prost_types::Any {
    static BASE: OnceLock<serde_json::Value> = OnceLock::new();
    let base = BASE.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let st = std::process::Command::new("runc")
            .args(["spec", "--bundle"])
            .arg(d.path())
            .status()
            .unwrap();
        assert!(st.success());
        serde_json::from_slice(&std::fs::read(d.path().join("config.json")).unwrap()).unwrap()
    });
    let mut v = base.clone();
    v["root"]["path"] = rootfs.to_string_lossy().into_owned().into();
    v["root"]["readonly"] = true.into();
    v["process"]["args"] = serde_json::json!(args);
    v["process"]["terminal"] = terminal.into();
    v["hostname"] = id.into();
    v["linux"]["cgroupsPath"] = format!("/taskd-test/{ns}-{id}").into();
    if let Some(sb) = sandbox {
        v["annotations"] = serde_json::json!({ "io.kubernetes.cri.sandbox-id": sb });
    }
    prost_types::Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
        value: serde_json::to_vec(&v).unwrap(),
    }
}

fn process_spec(args: &[&str]) -> prost_types::Any {
    let v = serde_json::json!({
        "args": args, "cwd": "/", "env": ["PATH=/bin"],
        "user": {"uid": 0, "gid": 0}, "terminal": false,
    });
    prost_types::Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
        value: serde_json::to_vec(&v).unwrap(),
    }
}

/// Every event, in arrival order: (namespace, topic).
#[derive(Default)]
struct EventLog(Mutex<Vec<(String, String)>>);

impl EventLog {
    fn topics(&self, ns: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == ns)
            .map(|(_, t)| t.clone())
            .collect()
    }

    async fn wait_for(&self, ns: &str, topic: &str, count: usize) {
        for _ in 0..200 {
            if self.topics(ns).iter().filter(|t| *t == topic).count() >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no {topic} event (x{count}) in {ns}: {:?}", self.topics(ns));
    }
}

struct Sink(Arc<EventLog>);

#[async_trait::async_trait]
impl events_ttrpc::Events for Sink {
    async fn forward(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: pbevents::ForwardRequest,
    ) -> ttrpc::Result<protobuf::well_known_types::empty::Empty> {
        if let Some(env) = req.envelope.as_ref() {
            self.0
                .0
                .lock()
                .unwrap()
                .push((env.namespace.clone(), env.topic.clone()));
        }
        Ok(Default::default())
    }
}

impl Publisher for Sink {
    fn publish(&self, ns: &str, topic: &str, _e: prost_types::Any) -> Result<(), EventError> {
        self.0.0.lock().unwrap().push((ns.to_owned(), topic.to_owned()));
        Ok(())
    }
}

#[derive(Default)]
struct Store(Mutex<HashMap<(String, String), Container>>);

impl ContainerStore for Store {
    fn get(&self, ns: &str, id: &str) -> Result<Container, MetadataError> {
        self.0
            .lock()
            .unwrap()
            .get(&(ns.to_owned(), id.to_owned()))
            .cloned()
            .ok_or(MetadataError::NotFound {
                what: "container",
                namespace: ns.into(),
                id: id.into(),
            })
    }
    fn list(&self, _: &str, _: &[String]) -> Result<Vec<Container>, MetadataError> {
        Ok(self.0.lock().unwrap().values().cloned().collect())
    }
    fn create(&self, ns: &str, c: Container) -> Result<Container, MetadataError> {
        self.0
            .lock()
            .unwrap()
            .insert((ns.to_owned(), c.id.clone()), c.clone());
        Ok(c)
    }
    fn update(&self, ns: &str, c: Container, _: &[String]) -> Result<Container, MetadataError> {
        self.create(ns, c)
    }
    fn delete(&self, ns: &str, id: &str) -> Result<(), MetadataError> {
        self.0.lock().unwrap().remove(&(ns.to_owned(), id.to_owned()));
        Ok(())
    }
}

#[derive(Default)]
struct Monitor(Mutex<BTreeMap<(String, String), MonitoredTask>>);

impl TaskMonitor for Monitor {
    fn monitor(&self, t: MonitoredTask) {
        self.0
            .lock()
            .unwrap()
            .insert((t.namespace.clone(), t.id.clone()), t);
    }
    fn stop(&self, ns: &str, id: &str) {
        self.0.lock().unwrap().remove(&(ns.to_owned(), id.to_owned()));
    }
}

/// One test's world: dirs, events server, manager, Local.
struct World {
    dir: tempfile::TempDir,
    rootfs: tempfile::TempDir,
    ns: String,
    events: Arc<EventLog>,
    store: Arc<Store>,
    monitor: Arc<Monitor>,
    manager: TaskManager,
    local: Arc<Local>,
    /// `shim_pool_size` of every manager of this world (0 unless a test is about the pool).
    pool: usize,
    /// The runtime of the world's containers: the stock Go shim, or taskd's own.
    runtime: &'static str,
    _server: ttrpc::r#async::Server,
}

const RUNC_V2: &str = "io.containerd.runc.v2";
const TASKD_V2: &str = "io.containerd.taskd.v2";

static SEQ: AtomicUsize = AtomicUsize::new(0);

impl World {
    async fn new() -> World {
        World::with_pool(0).await
    }

    /// A world whose containers run on `runtime`.
    async fn on(runtime: &'static str) -> World {
        let mut w = World::with_pool(0).await;
        w.runtime = runtime;
        w
    }

    async fn with_pool(pool: usize) -> World {
        require_tools();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::Builder::new().prefix("taskd-rt").tempdir().unwrap();
        let ns = format!(
            "taskd-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let events = Arc::new(EventLog::default());
        let ttrpc_sock = dir.path().join("ttrpc.sock");
        let mut server = ttrpc::r#async::Server::new()
            .bind(&format!("unix://{}", ttrpc_sock.display()))
            .unwrap()
            .register_service(events_ttrpc::create_events(Arc::new(Sink(events.clone()))));
        server.start().await.unwrap();
        let rootfs = tempfile::Builder::new().prefix("taskd-rootfs").tempdir().unwrap();
        rootfs::build(rootfs.path()).unwrap();
        let mut w = World {
            rootfs,
            ns,
            events,
            store: Arc::default(),
            monitor: Arc::default(),
            manager: Self::manager_at(dir.path(), Arc::new(EventLog::default()), pool),
            local: Arc::new(Local::new(
                Arc::new(Self::manager_at(dir.path(), Arc::new(EventLog::default()), pool)),
                Arc::new(Store::default()),
                Arc::new(Monitor::default()),
            )),
            dir,
            _server: server,
            pool,
            runtime: RUNC_V2,
        };
        w.restart().await;
        w
    }

    fn manager_at(dir: &Path, events: Arc<EventLog>, pool: usize) -> TaskManager {
        TaskManager::new(
            dir.join("state"),
            dir.join("root"),
            DaemonAddresses {
                grpc: dir.join("grpc.sock"),
                ttrpc: dir.join("ttrpc.sock"),
                exe: std::env::current_exe().unwrap(),
                sealed_runc: None,
            },
            Config {
                shim_pool_size: pool,
                // taskd's own shim, built next to taskd (`cargo build -p
                // containerd-shim-taskd-v2`; the in-process manager is not next to it).
                shims: [(TASKD_V2.to_owned(), taskd_shim())].into(),
                ..Config::default()
            },
            Arc::new(Sink(events)),
        )
        .unwrap()
    }

    /// The daemon "dies": the manager and Local are dropped (their shim watchers with
    /// them), shims are left alone.
    fn crash(&mut self) {
        let idle = Self::manager_at(self.dir.path(), Arc::new(EventLog::default()), self.pool);
        self.manager = idle.clone();
        self.local = Arc::new(Local::new(
            Arc::new(idle),
            self.store.clone(),
            Arc::new(Monitor::default()),
        ));
    }

    /// A new manager + Local over the same dirs (a daemon restart), with recovery.
    async fn restart(&mut self) {
        std::fs::create_dir_all(self.dir.path().join("state")).unwrap();
        self.manager = Self::manager_at(self.dir.path(), self.events.clone(), self.pool);
        self.manager.load().await;
        self.monitor = Arc::default();
        let local = Local::new(
            Arc::new(self.manager.clone()),
            self.store.clone(),
            self.monitor.clone(),
        );
        local.monitor_recovered().await;
        self.local = Arc::new(local);
    }

    fn container(&self, id: &str, args: &[&str]) {
        self.container_with(id, args, self.runtime);
    }

    fn spec(&self, id: &str, args: &[&str], terminal: bool, sandbox: Option<&str>) -> prost_types::Any {
        spec_with(self.rootfs.path(), &self.ns, id, args, terminal, sandbox)
    }

    fn container_spec(&self, id: &str, spec: prost_types::Any) {
        self.store
            .create(
                &self.ns,
                Container {
                    id: id.into(),
                    runtime: Runtime {
                        name: self.runtime.into(),
                        options: None,
                    },
                    spec: Some(spec),
                    ..Default::default()
                },
            )
            .unwrap();
    }

    fn container_with(&self, id: &str, args: &[&str], runtime: &str) {
        self.store
            .create(
                &self.ns,
                Container {
                    id: id.into(),
                    runtime: Runtime {
                        name: runtime.into(),
                        options: None,
                    },
                    spec: Some(self.spec(id, args, false, None)),
                    ..Default::default()
                },
            )
            .unwrap();
    }

    fn out(&self, name: &str) -> (String, PathBuf) {
        let p = self.dir.path().join(name);
        (format!("file://{}", p.display()), p)
    }

    async fn create(&self, id: &str) -> u32 {
        let (uri, _) = self.out(&format!("{id}.out"));
        self.local
            .create(
                &self.ns,
                CreateTask {
                    container_id: id.into(),
                    io: Stdio {
                        stdout: uri.clone(),
                        stderr: uri,
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await
            .unwrap()
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.dir.path().join("state").join(&self.ns).join(id)
    }

    /// This namespace's pool dirs (`<state>/.pool/<ns>/<pool id>`).
    fn pool_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path().join("state").join(".pool").join(&self.ns))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// The pids in the pool dirs' `shim.pid` files.
    fn pool_dir_pids(&self) -> Vec<u32> {
        self.pool_dirs()
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("shim.pid")).ok())
            .filter_map(|p| p.trim().parse().ok())
            .collect()
    }

    /// SIGKILLs task `id`, waits for its exit and deletes it; returns the exit status.
    async fn kill9_and_delete(&self, id: &str) -> u32 {
        self.local.kill(&self.ns, id, "", 9, false).await.unwrap();
        let status = self.local.wait(&self.ns, id, "").await.unwrap().status;
        self.local.delete(&self.ns, id).await.unwrap();
        status
    }

    /// Waits until the pool has exactly `n` idle-or-serving shims that are alive, and
    /// returns their pids.
    async fn pool_settles(&self, n: usize) -> Vec<u32> {
        for _ in 0..200 {
            let pids = self.manager.pool_shim_pids();
            if pids.len() == n && pids.iter().all(|p| alive(*p)) {
                return pids;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("pool never had {n} shims: {:?}", self.manager.pool_shim_pids());
    }

    fn mounts_under_dir(&self) -> usize {
        let prefix = self.dir.path().to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&prefix)))
            .count()
    }
}

impl Drop for World {
    /// Teardown by pid and path: kill the shims and init processes this world started,
    /// unmount under its dir.
    fn drop(&mut self) {
        for t in self.manager.shim_tasks() {
            if let Some(c) = &t.conn {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.shim_pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if t.pid() != 0 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(t.pid() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = std::process::Command::new("runc")
                .arg("--root")
                .arg(Path::new("/run/containerd/runc").join(&self.ns))
                .args(["delete", "--force", &t.id])
                .stderr(std::process::Stdio::null())
                .status();
            let _ = taskd::runtime::v2::bundle::unmount_all(&t.bundle.rootfs());
        }
        // Pool shims (idle ones serve nothing; a crashed manager's are only in their dirs).
        let mut pool = self.manager.pool_shim_pids();
        pool.extend(self.pool_dir_pids());
        for pid in pool.into_iter().filter(|p| *p > 1) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // runc's per-namespace state dir (the runc shim's default root), once empty.
        let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(&self.ns));
    }
}

fn alive(pid: u32) -> bool {
    taskd::runtime::v2::shim::pid_alive(pid)
}

fn taskd_shim() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_taskd")).with_file_name("containerd-shim-taskd-v2");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build -p containerd-shim-taskd-v2` first (scripts/test.sh does)",
        p.display()
    );
    p
}

// ---------- tests ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn echo_prints_and_exits_zero_with_events_in_order() {
    echo_events_in_order(RUNC_V2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn echo_prints_and_exits_zero_with_events_in_order_taskd_shim() {
    echo_events_in_order(TASKD_V2).await;
}

async fn echo_events_in_order(runtime: &'static str) {
    let w = World::on(runtime).await;
    w.container("echo", &["/bin/echo", "hi"]);
    let pid = w.create("echo").await;
    assert!(pid > 0);
    assert_eq!(
        w.monitor.0.lock().unwrap()[&(w.ns.clone(), "echo".into())].labels["runtime"],
        runtime
    );
    let wait = {
        let local = w.local.clone();
        let ns = w.ns.clone();
        tokio::spawn(async move { local.wait(&ns, "echo", "").await })
    };
    w.local.start(&w.ns, "echo", "").await.unwrap();
    let exit = wait.await.unwrap().unwrap();
    assert_eq!(exit.status, 0);
    let st = w.local.get(&w.ns, "echo", "").await.unwrap();
    assert_eq!(st.status, Status::Stopped);
    let exit = w.local.delete(&w.ns, "echo").await.unwrap();
    assert_eq!(exit.status, 0);
    // The shim finishes copying output by the time the task is deleted (not at exit).
    let (_, out) = w.out("echo.out");
    assert_eq!(std::fs::read_to_string(out).unwrap(), "hi\n");
    assert!(w.monitor.0.lock().unwrap().is_empty());
    assert!(!w.bundle("echo").exists());
    w.events.wait_for(&w.ns, "/tasks/delete", 1).await;
    assert_eq!(
        w.events.topics(&w.ns),
        ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    );
    let err = w.local.delete(&w.ns, "echo").await.unwrap_err();
    assert_eq!(err.kind(), Kind::NotFound);
    assert_eq!(err.to_string(), "task echo not found");
}

/// A Create of task `id` (no IO) that must fail; its error.
async fn create_that_fails(w: &World, id: &str) -> impl ErrorKind + std::fmt::Display {
    w.local
        .create(
            &w.ns,
            CreateTask {
                container_id: id.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err()
}

/// A world with the task `long` (`sleep 1000`) created and started: its init pid, alive.
async fn long_running() -> (World, u32) {
    let w = World::new().await;
    w.container("long", &["/bin/sleep", "1000"]);
    w.create("long").await;
    let pid = w.local.start(&w.ns, "long", "").await.unwrap();
    assert!(alive(pid));
    (w, pid)
}

/// A Wait on process `exec` of `id` (the init when empty), in the background; its exit status.
fn spawn_wait(w: &World, id: &'static str, exec: &'static str) -> tokio::task::JoinHandle<u32> {
    let local = w.local.clone();
    let ns = w.ns.clone();
    tokio::spawn(async move { local.wait(&ns, id, exec).await.unwrap().status })
}

/// Exec `e1` in `long` (prints, exits 3), start it, wait for its exit and delete it (both
/// report 3); the file its stdout and stderr went to.
async fn exec_exit_3_and_delete(w: &World) -> PathBuf {
    let ns = &w.ns;
    let (uri, out) = w.out("e1.out");
    w.local
        .exec(
            ns,
            "long",
            "e1",
            ExecOpts {
                spec: process_spec(&["/bin/sh", "-c", "echo from-exec; exit 3"]),
                io: Stdio {
                    stdout: uri.clone(),
                    stderr: uri,
                    ..Default::default()
                },
            },
        )
        .await
        .unwrap();
    let wait = spawn_wait(w, "long", "e1");
    w.local.start(ns, "long", "e1").await.unwrap();
    assert_eq!(wait.await.unwrap(), 3);
    let e = w.local.delete_process(ns, "long", "e1").await.unwrap();
    assert_eq!(e.status, 3);
    out
}

async fn pause_and_resume_long(w: &World) {
    w.local.pause(&w.ns, "long").await.unwrap();
    assert_eq!(
        w.local.get(&w.ns, "long", "").await.unwrap().status,
        Status::Paused
    );
    w.local.resume(&w.ns, "long").await.unwrap();
    assert_eq!(
        w.local.get(&w.ns, "long", "").await.unwrap().status,
        Status::Running
    );
}

/// SIGKILL `long`, whose Wait returns 137, and delete it (137 too).
async fn kill_wait_and_delete_long(w: &World) {
    let wait = spawn_wait(w, "long", "");
    w.local.kill(&w.ns, "long", "", 9, false).await.unwrap();
    assert_eq!(wait.await.unwrap(), 137);
    let exit = w.local.delete(&w.ns, "long").await.unwrap();
    assert_eq!(exit.status, 137);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn create_of_a_task_that_exists_is_already_exists_naming_it() {
    let w = World::new().await;
    w.container("long", &["/bin/sleep", "1000"]);
    w.create("long").await;
    let err = create_that_fails(&w, "long").await;
    assert_eq!(err.kind(), Kind::AlreadyExists);
    assert_eq!(err.to_string(), "task long already exists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn a_started_task_is_listed_running() {
    let (w, _) = long_running().await;
    let listed = w.local.list(&w.ns, "").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, Status::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn an_exec_s_output_is_copied_by_the_time_it_is_deleted() {
    // exec_exit_3_and_delete checks the exit status from Wait and Delete.
    let (w, _) = long_running().await;
    let out = exec_exit_3_and_delete(&w).await;
    // The shim finishes copying output by the time the process is deleted (not at exit).
    assert_eq!(std::fs::read_to_string(out).unwrap(), "from-exec\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn a_deleted_exec_is_not_found() {
    let (w, _) = long_running().await;
    exec_exit_3_and_delete(&w).await;
    let err = w.local.get(&w.ns, "long", "e1").await.unwrap_err();
    assert_eq!(err.kind(), Kind::NotFound, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn list_pids_includes_the_init() {
    let (w, pid) = long_running().await;
    let pids = w.local.list_pids(&w.ns, "long").await.unwrap();
    assert!(pids.iter().any(|p| p.pid == pid), "{pids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn pause_and_resume_move_the_status_to_paused_and_back_to_running() {
    let (w, _) = long_running().await;
    pause_and_resume_long(&w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn metrics_of_a_task_are_its_cgroup_stats() {
    let (w, _) = long_running().await;
    let metrics = w.local.metrics(&w.ns, &["id==long".to_owned()]).await.unwrap();
    assert_eq!(metrics.len(), 1);
    let data = metrics[0].data.as_ref().expect("stats");
    assert!(
        data.type_url.contains("io.containerd.cgroups.v1.Metrics"),
        "{}",
        data.type_url
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn update_with_linux_resources_succeeds() {
    let (w, _) = long_running().await;
    let resources = serde_json::json!({"cpu": {"shares": 512}});
    w.local
        .update(
            &w.ns,
            "long",
            Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value: serde_json::to_vec(&resources).unwrap(),
            }),
            HashMap::new(),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn close_io_of_the_init_s_stdin_succeeds() {
    let (w, _) = long_running().await;
    w.local.close_io(&w.ns, "long", "", true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn checkpoint_without_the_content_store_is_not_implemented() {
    let (w, _) = long_running().await;
    let err = w
        .local
        .checkpoint(&w.ns, "long", "", None, None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Kind::NotImplemented);
    assert!(
        err.to_string().starts_with("checkpoint needs the content store"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn kill_wait_and_delete_leave_no_bundle_and_no_mount() {
    // kill_wait_and_delete_long checks the exit status from Wait and Delete.
    let (w, _) = long_running().await;
    kill_wait_and_delete_long(&w).await;
    assert!(!w.bundle("long").exists());
    assert_eq!(w.mounts_under_dir(), 0);
}

/// One sequence (the order is the behaviour): the task's and an exec's lives publish their
/// events in the order of the calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn a_long_running_task_s_rpcs_publish_events_in_order() {
    let (w, _) = long_running().await;
    exec_exit_3_and_delete(&w).await;
    pause_and_resume_long(&w).await;
    kill_wait_and_delete_long(&w).await;
    w.events.wait_for(&w.ns, "/tasks/delete", 1).await;
    assert_eq!(
        w.events.topics(&w.ns),
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
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn runtime_v1_is_refused() {
    let w = World::new().await;
    w.container_with("v1", &["/bin/true"], "io.containerd.runc.v1");
    let err = create_that_fails(&w, "v1").await;
    assert_eq!(err.kind(), Kind::FailedPrecondition);
    assert!(err.to_string().contains("io.containerd.runc.v2"), "{err}");
    assert!(!w.bundle("v1").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn runc_create_failure_cleans_bundle_and_shim() {
    let w = World::new().await;
    w.container("bad", &["/no/such/binary"]);
    let err = w
        .local
        .create(
            &w.ns,
            CreateTask {
                container_id: "bad".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("/no/such/binary") || msg.contains("no such file"),
        "{msg}"
    );
    assert!(!w.bundle("bad").exists());
    assert!(w.manager.shim_tasks().is_empty());
    assert_eq!(w.mounts_under_dir(), 0);
    assert!(w.monitor.0.lock().unwrap().is_empty());
}

/// Kills pids on drop (teardown by pid when an assertion fails first).
struct KillOnDrop(Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn shim_connect_failure_after_start_kills_the_shim() {
    let w = World::new().await;
    // A shim whose `start` really starts containerd-shim-runc-v2 (which writes shim.pid and
    // address in the bundle) but answers with an address nobody serves.
    let record = w.dir.path().join("started");
    let wrapper = w.dir.path().join("unreachable-shim");
    let script = r#"#!/bin/sh
for a in "$@"; do last=$a; done
if [ "$last" = start ]; then
  containerd-shim-runc-v2 "$@" >/dev/null || exit 1
  for p in /proc/[0-9]*; do
    [ "${p#/proc/}" != $$ ] && [ "$(readlink $p/cwd)" = "$PWD" ] && echo "${p#/proc/}"
  done > REC.pids
  cat address > REC.address
  echo unix://REC.nobody.sock
  exit 0
fi
exec containerd-shim-runc-v2 "$@"
"#;
    std::fs::write(&wrapper, script.replace("REC", &record.to_string_lossy())).unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    w.container_with("unreachable", &["/bin/true"], &wrapper.to_string_lossy());
    let err = w
        .local
        .create(
            &w.ns,
            CreateTask {
                container_id: "unreachable".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    let read = |ext: &str| std::fs::read_to_string(format!("{}.{ext}", record.display()));
    let pids: Vec<u32> = read("pids")
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    let _guard = KillOnDrop(pids.clone());
    assert!(!pids.is_empty(), "the wrapper started no shim");
    assert_eq!(err.kind(), Kind::Unavailable, "{err}");
    for pid in &pids {
        assert!(!alive(*pid), "shim {pid} left running after the failed connect");
    }
    let address = read("address").unwrap();
    let socket = address.trim().trim_start_matches("unix://");
    assert!(!Path::new(socket).exists(), "shim socket {socket} left behind");
    assert!(!w.bundle("unreachable").exists());
    assert!(w.manager.shim_tasks().is_empty());
    assert_eq!(w.mounts_under_dir(), 0);
    assert!(w.monitor.0.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn shim_sigkill_publishes_exit_and_wait_returns() {
    let w = World::new().await;
    let ns = w.ns.clone();
    w.container("victim", &["/bin/sleep", "1000"]);
    w.create("victim").await;
    let pid = w.local.start(&ns, "victim", "").await.unwrap();
    let shim_pid = w.manager.shim_tasks()[0].conn.as_ref().unwrap().shim_pid;
    let wait = {
        let local = w.local.clone();
        let ns = ns.clone();
        tokio::spawn(async move { local.wait(&ns, "victim", "").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("wait returns")
        .unwrap()
        .unwrap();
    assert_eq!(exit.status, 137);
    w.events.wait_for(&ns, "/tasks/exit", 1).await;
    assert!(!alive(pid), "container init {pid} still running");
    assert!(!w.bundle("victim").exists());
    assert_eq!(w.mounts_under_dir(), 0);
    let st = w.local.get(&ns, "victim", "").await.unwrap();
    assert_eq!(st.status, Status::Stopped);
    let exit = w.local.delete(&ns, "victim").await.unwrap();
    assert_eq!(exit.status, 137);
    assert_eq!(
        w.events.topics(&ns),
        ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    );
    assert!(w.manager.shim_tasks().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn restart_reconnects_live_shims_and_cleans_dead_ones() {
    let mut w = World::new().await;
    let ns = w.ns.clone();
    for id in ["r1", "r2", "gone"] {
        w.container(id, &["/bin/sleep", "1000"]);
        w.create(id).await;
        w.local.start(&ns, id, "").await.unwrap();
    }
    let gone = w
        .manager
        .shim_tasks()
        .into_iter()
        .find(|t| t.id == "gone")
        .unwrap();
    let gone_shim = gone.conn.as_ref().unwrap().shim_pid;
    drop(gone);
    // A broken bundle (its shim-binary-path unreadable), and one a cut create or delete left
    // (no shim-binary-path: no shim was ever started from it, or its delete was cut).
    let broken = w.dir.path().join("state").join(&ns).join("broken");
    std::fs::create_dir_all(broken.join("shim-binary-path")).unwrap();
    std::fs::write(broken.join("config.json"), b"{").unwrap();
    let cut = w.dir.path().join("state").join(&ns).join("cut");
    std::fs::create_dir_all(&cut).unwrap();
    std::fs::write(cut.join("config.json"), b"{").unwrap();

    // "Daemon dies": forget the manager without touching shims; one shim dies meanwhile.
    w.crash();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gone_shim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.restart().await;

    let tasks = w.local.list(&ns, "").await.unwrap();
    let status: BTreeMap<_, _> = tasks.iter().map(|s| (s.id.clone(), s.status)).collect();
    assert_eq!(status["r1"], Status::Running);
    assert_eq!(status["r2"], Status::Running);
    assert_eq!(status["gone"], Status::Stopped);
    assert!(!w.bundle("gone").exists());
    assert!(broken.exists(), "broken bundle is left alone");
    assert!(!cut.exists(), "a bundle without a shim is removed");
    assert!(w.events.topics(&ns).contains(&"/tasks/exit".to_owned()));
    {
        let m = w.monitor.0.lock().unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[&(ns.clone(), "r1".into())].labels["runtime"],
            "io.containerd.runc.v2"
        );
    }
    for id in ["r1", "r2"] {
        w.local
            .exec(
                &ns,
                id,
                "x",
                ExecOpts {
                    spec: process_spec(&["/bin/true"]),
                    io: Stdio::default(),
                },
            )
            .await
            .unwrap();
        w.local.start(&ns, id, "x").await.unwrap();
        assert_eq!(w.local.wait(&ns, id, "x").await.unwrap().status, 0);
        w.local.delete_process(&ns, id, "x").await.unwrap();
        assert_eq!(w.kill9_and_delete(id).await, 137);
        assert!(!w.bundle(id).exists());
    }
    w.local.delete(&ns, "gone").await.unwrap();
    std::fs::remove_dir_all(&broken).unwrap();
    assert_eq!(w.mounts_under_dir(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn pod_containers_share_one_shim() {
    pod_shares_one_shim(RUNC_V2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn pod_containers_share_one_shim_taskd_shim() {
    pod_shares_one_shim(TASKD_V2).await;
}

async fn pod_shares_one_shim(runtime: &'static str) {
    let w = World::on(runtime).await;
    let ns = w.ns.clone();
    w.container_spec("sb", w.spec("sb", &["/bin/sleep", "1000"], false, Some("sb")));
    w.container_spec("c1", w.spec("c1", &["/bin/sleep", "1000"], false, Some("sb")));
    w.create("sb").await;
    w.local.start(&ns, "sb", "").await.unwrap();
    w.create("c1").await;
    w.local.start(&ns, "c1", "").await.unwrap();
    let tasks = w.manager.shim_tasks();
    assert_eq!(tasks.len(), 2);
    let (a, b) = (tasks[0].conn.as_ref().unwrap(), tasks[1].conn.as_ref().unwrap());
    assert!(Arc::ptr_eq(a, b), "one connection for the pod's shim");
    assert_eq!(
        std::fs::read_to_string(w.bundle("sb").join("address")).unwrap(),
        std::fs::read_to_string(w.bundle("c1").join("address")).unwrap()
    );
    let shim_pid = a.shim_pid;
    drop(tasks);
    w.kill9_and_delete("c1").await;
    assert!(alive(shim_pid), "the shim still serves the sandbox");
    assert_eq!(w.local.get(&ns, "sb", "").await.unwrap().status, Status::Running);
    w.kill9_and_delete("sb").await;
    for _ in 0..100 {
        if !alive(shim_pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive(shim_pid), "the shim exits with its last task");
    // No exit was published for the deleted tasks by taskd (the shim published its own).
    let topics = w.events.topics(&ns);
    assert_eq!(
        topics.iter().filter(|t| *t == "/tasks/exit").count(),
        2,
        "{topics:?}"
    );
    assert_eq!(
        topics.iter().filter(|t| *t == "/tasks/delete").count(),
        2,
        "{topics:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn terminal_task_with_resize() {
    terminal_with_resize(RUNC_V2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn terminal_task_with_resize_taskd_shim() {
    terminal_with_resize(TASKD_V2).await;
}

async fn terminal_with_resize(runtime: &'static str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = World::on(runtime).await;
    let ns = w.ns.clone();
    w.container_spec("tty", w.spec("tty", &["/bin/sh"], true, None));
    let (stdin, stdout) = (w.dir.path().join("tty.in"), w.dir.path().join("tty.out"));
    for p in [&stdin, &stdout] {
        nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }
    let mut input = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(&stdin)
        .unwrap();
    let mut output = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&stdout)
        .unwrap();
    w.local
        .create(
            &ns,
            CreateTask {
                container_id: "tty".into(),
                io: Stdio {
                    stdin: stdin.display().to_string(),
                    stdout: stdout.display().to_string(),
                    stderr: String::new(),
                    terminal: true,
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    w.local.start(&ns, "tty", "").await.unwrap();
    w.local.resize_pty(&ns, "tty", "", 100, 30).await.unwrap();
    input
        .write_all(b"stty size; tty; echo sum-$((40+2)); exit 7\n")
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !(seen.contains("sum-42") && seen.contains("30 100")) {
        let n = tokio::time::timeout(Duration::from_secs(20), output.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("terminal output so far: {seen:?}"))
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("/dev/pts/"), "{seen:?}");
    assert_eq!(w.local.wait(&ns, "tty", "").await.unwrap().status, 7);
    w.local.delete(&ns, "tty").await.unwrap();
}

/// 200 create/start/kill/delete cycles leave no process, mount, fd or bundle behind: with
/// the warm pool on (the default), exactly one idle pool shim is left, and the pool's
/// close stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: slow (200 cycles); needs root, runc, the runc shim"]
async fn cycles_leave_nothing_behind() {
    let w = World::with_pool(1).await;
    let ns = w.ns.clone();
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    // One warm-up cycle so lazily created fds (runtime, pools) exist before counting.
    let mut shim_pids = Vec::new();
    let mut init_pids = Vec::new();
    let mut before = 0;
    for i in 0..201 {
        if i == 1 {
            before = fds();
        }
        let id = format!("c{i}");
        w.container(&id, &["/bin/sleep", "1000"]);
        w.create(&id).await;
        init_pids.push(w.local.start(&ns, &id, "").await.unwrap());
        shim_pids.push(w.manager.shim_tasks()[0].conn.as_ref().unwrap().shim_pid);
        w.kill9_and_delete(&id).await;
        let _ = std::fs::remove_file(w.dir.path().join(format!("{id}.out")));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Tasks ran in warm shims that went back to the pool after each delete: exactly one
    // idle pool shim is left (fixed overhead), every other process is gone.
    let pool = w.pool_settles(1).await;
    assert_eq!(w.pool_dir_pids(), pool, "one pool dir, the idle shim's");
    let left: Vec<_> = shim_pids
        .iter()
        .chain(&init_pids)
        .filter(|p| alive(**p) && **p != pool[0])
        .collect();
    assert!(left.is_empty(), "processes left: {left:?}");
    assert!(w.manager.shim_tasks().is_empty());
    w.manager.close_pool().await;
    assert!(!alive(pool[0]), "close left the idle pool shim running");
    assert!(w.pool_dirs().is_empty(), "{:?}", w.pool_dirs());
    assert!(w.manager.pool_shim_pids().is_empty());
    assert_eq!(w.mounts_under_dir(), 0);
    assert_eq!(
        std::fs::read_dir(w.dir.path().join("state").join(&ns))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(w.dir.path().join("root").join(&ns))
            .unwrap()
            .count(),
        0
    );
    let after = fds();
    assert!(after <= before + 2, "fds before {before}, after {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn shim_dying_after_the_exit_does_not_publish_a_second_exit() {
    let w = World::new().await;
    let ns = w.ns.clone();
    w.container("done", &["/bin/true"]);
    w.create("done").await;
    let wait = {
        let local = w.local.clone();
        let ns = ns.clone();
        tokio::spawn(async move { local.wait(&ns, "done", "").await })
    };
    w.local.start(&ns, "done", "").await.unwrap();
    assert_eq!(wait.await.unwrap().unwrap().status, 0);
    w.events.wait_for(&ns, "/tasks/exit", 1).await;
    let shim_pid = w.manager.shim_tasks()[0].conn.as_ref().unwrap().shim_pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for _ in 0..200 {
        if w.local.get(&ns, "done", "").await.unwrap().status == Status::Stopped && !w.bundle("done").exists()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!w.bundle("done").exists(), "dead shim not cleaned up");
    w.local.delete(&ns, "done").await.unwrap();
    assert_eq!(
        w.events.topics(&ns),
        ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    );
}

// ---------- the warm shim pool ----------

/// The first task of a namespace starts its shim as usual and fills the pool; the next task
/// takes the warm shim (its bundle names it), which exits with that task; a new one is
/// warmed meanwhile. Closing the pool stops the idle one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn warm_pool_shim_serves_the_next_task() {
    let w = World::with_pool(1).await;
    let ns = w.ns.clone();
    assert!(
        w.manager.pool_shim_pids().is_empty(),
        "no pool shim before first use"
    );
    w.container("first", &["/bin/true"]);
    w.create("first").await;
    let first_shim = w.manager.shim_tasks()[0].conn.as_ref().unwrap().shim_pid;
    let warm = w.pool_settles(1).await[0];
    assert_ne!(warm, first_shim);
    assert_eq!(w.pool_dir_pids(), vec![warm]);
    w.local.start(&ns, "first", "").await.unwrap();
    w.local.wait(&ns, "first", "").await.unwrap();
    w.local.delete(&ns, "first").await.unwrap();

    w.container("second", &["/bin/echo", "warm"]);
    w.create("second").await;
    let t = w.manager.shim_tasks();
    let conn = t[0].conn.as_ref().unwrap();
    assert_eq!(conn.shim_pid, warm, "the task did not take the warm shim");
    let bundle = w.bundle("second");
    assert_eq!(
        std::fs::read_to_string(bundle.join("address")).unwrap().trim(),
        conn.address
    );
    assert_eq!(
        std::fs::read_to_string(bundle.join("shim.pid")).unwrap().trim(),
        warm.to_string()
    );
    w.local.start(&ns, "second", "").await.unwrap();
    assert_eq!(w.local.wait(&ns, "second", "").await.unwrap().status, 0);
    w.local.delete(&ns, "second").await.unwrap();
    assert!(!bundle.exists());
    assert_eq!(std::fs::read_to_string(w.out("second.out").1).unwrap(), "warm\n");
    // The used shim serves nothing now: it went back to the pool, unless a refill (after
    // REFILL_DELAY on a slow run) filled it first, in which case it exited. Either way the
    // pool holds exactly one live shim, and only its dir.
    let refilled = w.pool_settles(1).await;
    if refilled != [warm] {
        for _ in 0..100 {
            if !alive(warm) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(warm), "the warm shim outlived its task outside the pool");
    }
    assert_eq!(w.pool_dir_pids(), refilled, "a pool dir without its shim");
    w.events.wait_for(&ns, "/tasks/delete", 2).await;
    assert_eq!(
        w.events.topics(&ns),
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete",
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete"
        ]
    );
    w.manager.close_pool().await;
    assert!(!alive(refilled[0]));
    assert!(w.pool_dirs().is_empty());
}

/// A warm shim killed under its task: the exit is published, Wait returns, and the task's
/// bundle and the shim's pool dir are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn warm_shim_sigkill_cleans_task_and_pool_dir() {
    let w = World::with_pool(1).await;
    let ns = w.ns.clone();
    w.container("a", &["/bin/true"]);
    w.create("a").await;
    let warm = w.pool_settles(1).await[0];
    w.container("b", &["/bin/sleep", "1000"]);
    w.create("b").await;
    w.local.start(&ns, "b", "").await.unwrap();
    let b = w.manager.shim_tasks().into_iter().find(|t| t.id == "b").unwrap();
    assert_eq!(b.conn.as_ref().unwrap().shim_pid, warm);
    let wait = {
        let local = w.local.clone();
        let ns = ns.clone();
        tokio::spawn(async move { local.wait(&ns, "b", "").await })
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(warm as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait.await.unwrap().unwrap();
    w.local.delete(&ns, "b").await.unwrap();
    assert!(!w.bundle("b").exists());
    let left = w.pool_settles(1).await;
    assert!(!left.contains(&warm));
    assert_eq!(w.pool_dir_pids(), left, "the killed shim's pool dir is gone");
    w.local.delete(&ns, "a").await.unwrap();
    w.manager.close_pool().await;
    assert!(w.pool_dirs().is_empty());
}

/// After a crash, recovery shuts down the idle pool shim (never a task), keeps the warm shim
/// that serves a task, and that shim's pool dir goes when it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn restart_stops_idle_pool_shims_and_keeps_serving_ones() {
    let mut w = World::with_pool(1).await;
    let ns = w.ns.clone();
    w.container("a", &["/bin/sleep", "1000"]);
    w.create("a").await;
    let warm = w.pool_settles(1).await[0];
    w.container("b", &["/bin/sleep", "1000"]);
    w.create("b").await;
    w.local.start(&ns, "b", "").await.unwrap();
    let idle = w.pool_settles(2).await.into_iter().find(|p| *p != warm).unwrap();

    w.crash();
    assert!(alive(warm) && alive(idle));
    w.restart().await;
    let ids: Vec<String> = w.manager.shim_tasks().iter().map(|t| t.id.clone()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, ["a", "b"], "a pool shim was taken for a task");
    assert!(!alive(idle), "recovery left the idle pool shim running");
    assert_eq!(w.manager.pool_shim_pids(), vec![warm]);
    assert_eq!(w.pool_dir_pids(), vec![warm]);
    assert_eq!(w.local.get(&ns, "b", "").await.unwrap().status, Status::Running);
    w.kill9_and_delete("b").await;
    // It serves nothing now and the pool is empty: it is the pool's idle shim again.
    assert_eq!(w.pool_settles(1).await, vec![warm]);
    w.kill9_and_delete("a").await;
    w.manager.close_pool().await;
    assert!(!alive(warm));
    assert!(w.pool_dirs().is_empty(), "{:?}", w.pool_dirs());
}

/// A runc group (`io.containerd.runc.v2.group`) is `<shim> start`'s to find: such a create
/// never takes a pool shim. A CRI pod's tasks (`io.kubernetes.cri.sandbox-id`, a pod without
/// a pause container) do: the first takes the warm shim, the next finds it by sandbox id,
/// and the pool is refilled at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the runc shim"]
async fn runc_groups_skip_the_pool_and_cri_pods_share_a_warm_shim() {
    let w = World::with_pool(1).await;
    let ns = w.ns.clone();
    let mut grouped = w.spec("g", &["/bin/sleep", "1000"], false, None);
    let mut v: serde_json::Value = serde_json::from_slice(&grouped.value).unwrap();
    v["annotations"] = serde_json::json!({ "io.containerd.runc.v2.group": "g" });
    grouped.value = serde_json::to_vec(&v).unwrap();
    w.container_spec("g", grouped);
    w.create("g").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        w.manager.pool_shim_pids().is_empty(),
        "a runc-grouped create filled the pool"
    );
    w.kill9_and_delete("g").await;

    // Fill the pool with a plain task, then run a pod's two containers.
    w.container("plain", &["/bin/true"]);
    w.create("plain").await;
    let warm = w.pool_settles(1).await[0];
    w.local.delete(&ns, "plain").await.unwrap();
    let shim_of = |id: &str| {
        w.manager
            .shim_tasks()
            .into_iter()
            .find(|t| t.id == id)
            .and_then(|t| t.conn.as_ref().map(|c| c.shim_pid))
            .unwrap()
    };
    for id in ["app", "side"] {
        w.container_spec(id, w.spec(id, &["/bin/sleep", "1000"], false, Some("pod")));
        w.create(id).await;
        w.local.start(&ns, id, "").await.unwrap();
    }
    let pod_shim = shim_of("app");
    assert_eq!(shim_of("side"), pod_shim, "the pod's tasks share one shim");
    assert_eq!(pod_shim, warm, "the pod's first task took the warm shim");
    // Refilled at once: a pool shim serves the pod, another one is idle.
    let pool = w.pool_settles(2).await;
    assert!(pool.contains(&pod_shim), "{pool:?}");
    // One container goes; the shim stays for the other, out of the pool.
    w.kill9_and_delete("app").await;
    assert!(alive(pod_shim), "the pod's shim went with one of its tasks");
    assert_eq!(shim_of("side"), pod_shim);
    w.kill9_and_delete("side").await;
    assert_eq!(w.pool_settles(1).await.len(), 1, "one idle pool shim left");
    w.manager.close_pool().await;
    assert!(w.pool_dirs().is_empty());
}

/// taskd dies while its shim is still creating a task (a slow `runc create` here): the shim
/// finishes the create on its own, and the restarted daemon must take the task as created,
/// not as lost. (Taken as lost, its cleanup raced the shim's create and left a shim holding
/// a task nobody knew of: the soak's rare leftover shim.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, runc, the taskd shim"]
async fn restart_while_the_shim_still_creates_takes_the_task_once_created() {
    let mut w = World::on(TASKD_V2).await;
    let ns = w.ns.clone();
    // runc, with every `create` slowed by a second.
    let slow = w.dir.path().join("slow-runc");
    std::fs::write(
        &slow,
        "#!/bin/sh\ncase \" $* \" in *\" create \"*) sleep 1 ;; esac\nexec runc \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let options = taskd_proto::containerd::types::runc::options::Options {
        binary_name: slow.display().to_string(),
        ..Default::default()
    };
    w.store
        .create(
            &ns,
            Container {
                id: "slow".into(),
                runtime: Runtime {
                    name: TASKD_V2.into(),
                    options: Some(prost_types::Any {
                        type_url: "containerd.runc.v1.Options".into(),
                        value: prost::Message::encode_to_vec(&options),
                    }),
                },
                spec: Some(w.spec("slow", &["/bin/sleep", "1000"], false, None)),
                ..Default::default()
            },
        )
        .unwrap();
    let local = w.local.clone();
    let ns2 = ns.clone();
    let creating = tokio::spawn(async move {
        local
            .create(
                &ns2,
                CreateTask {
                    container_id: "slow".into(),
                    ..Default::default()
                },
            )
            .await
    });
    // The shim has the Create by now and sits in the slow `runc create`.
    let address = w.bundle("slow").join("address");
    for _ in 0..100 {
        if address.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    creating.abort();
    let _ = creating.await;
    w.crash();
    w.restart().await;

    let t = w.local.get(&ns, "slow", "").await.unwrap();
    assert_eq!(
        t.status,
        Status::Created,
        "the shim's finished create was taken as lost"
    );
    assert_ne!(t.pid, 0);
    let shim_pid = w
        .manager
        .shim_tasks()
        .into_iter()
        .find(|t| t.id == "slow")
        .and_then(|t| t.conn.as_ref().map(|c| c.shim_pid))
        .unwrap();
    w.local.delete(&ns, "slow").await.unwrap();
    assert!(!w.bundle("slow").exists());
    for _ in 0..100 {
        if !alive(shim_pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!alive(shim_pid), "the shim outlived its only task");
}

//! The runtime v2 shim manager (`io.containerd.runtime.v2.task`).
//!
//! - [`binary`]: resolve `io.containerd.runc.v2` → `containerd-shim-runc-v2`, run
//!   `<shim> start` / `<shim> delete` with containerd's flags and env.
//! - [`bundle`]: the bundle dir, `<state>/io.containerd.runtime.v2.task/<ns>/<id>/`.
//! - [`shim`]: the ttrpc client (`containerd.task.v2.Task`), one connection per shim.
//!
//! Grouping: the shim itself decides which shim serves a container (runc's shim hashes the
//! `io.kubernetes.cri.sandbox-id` annotation into its socket address and answers `start`
//! with the sandbox shim's address). Here, tasks whose shim printed the same address share
//! one [`shim::ShimConn`].
//!
//! Death: every shim connection has a watcher on the shim's pidfd. When the shim exits,
//! each live task it served gets `<shim> delete` in its bundle, its bundle removed, a
//! `/tasks/exit` published and its state set to stopped; `delete` later forgets it and
//! publishes `/tasks/delete` (the shim can no longer). Tasks deleted normally get their
//! events from the shim itself, so nothing is published twice.
//!
//! Recovery ([`TaskManager::load`]): every bundle dir is visited; a live shim is reconnected,
//! a dead one is cleaned up as above. A broken bundle is logged and skipped. Shims are
//! never killed on daemon shutdown (idle pool shims are: they serve nothing).
//!
//! Warm pool ([`pool`]): pre-started shims per namespace + runtime that a create takes
//! instead of running `<shim> start` (`shim_pool_size`).

pub mod binary;
pub mod bundle;
pub mod pool;
pub mod shim;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use serde::{Deserialize, Serialize};
use taskd_proto::ttrpc::v2::{mount as pbmount, shim as pb, shim_ttrpc::TaskClient};
use tokio::io::AsyncBufReadExt;

use self::binary::DaemonAddresses;
use self::bundle::Bundle;
use self::shim::{ShimConn, ShimTask, TaskHandle};
use crate::config::HumanDuration;
use crate::events::{self, Publisher};
use crate::plugin::{InitContext, Instance, PluginError, PluginType, Registration, ids};
use crate::runtime::{CreateOpts, Exit, PlatformRuntime, Result, RuntimeError, Status, Task};
use taskd_proto::containerd::events::{TaskDelete, TaskExit};

/// How long connecting to a shim (and its Connect call) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Plugin config: `[plugins."io.containerd.runtime.v2.task"]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Runtime name → absolute shim binary path, overriding the PATH lookup
    /// (`shims = { "io.containerd.runc.v2" = "/opt/bin/containerd-shim-runc-v2" }`).
    pub shims: BTreeMap<String, PathBuf>,
    /// Warm shims kept ready per namespace + runtime once that pair was used (0 disables).
    pub shim_pool_size: usize,
    /// An idle pool shim is shut down after this long unused.
    pub shim_pool_idle_timeout: HumanDuration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            shims: BTreeMap::new(),
            shim_pool_size: 1,
            shim_pool_idle_timeout: HumanDuration(Duration::from_secs(60)),
        }
    }
}

/// The plugin registration.
pub fn registration() -> Registration {
    Registration::new(PluginType::Runtime, ids::TASK, |cx: InitContext| async move {
        let config: Config = cx.config()?;
        let publisher = cx.get::<dyn Publisher>()?;
        let exe = std::env::current_exe().map_err(|source| {
            PluginError::init(RuntimeError::Io {
                op: "resolve",
                path: PathBuf::from("/proc/self/exe"),
                source,
            })
        })?;
        let addrs = DaemonAddresses {
            grpc: cx.addresses().grpc.clone(),
            ttrpc: cx.addresses().ttrpc.clone(),
            exe,
        };
        let manager = TaskManager::new(
            cx.state().to_path_buf(),
            cx.root().to_path_buf(),
            addrs,
            config,
            publisher,
        )
        .map_err(PluginError::init)?;
        manager
            .register_metrics(cx.metrics())
            .map_err(PluginError::init)?;
        manager.load().await;
        let state = cx.state().display().to_string();
        let closing = manager.clone();
        Ok(Instance::new()
            .with::<dyn PlatformRuntime>(Arc::new(manager.clone()))
            .with::<TaskManager>(Arc::new(manager))
            .export("state", state)
            .on_shutdown(move || async move { closing.close_pool().await }))
    })
    .requires(&[PluginType::Event])
    .config::<Config>()
}

type Key = (String, String);

/// The shim task manager (containerd's `TaskManager` + `ShimManager`).
#[derive(Clone)]
pub struct TaskManager {
    inner: Arc<Inner>,
}

struct Inner {
    state: PathBuf,
    root: PathBuf,
    addrs: DaemonAddresses,
    config: Config,
    publisher: Arc<dyn Publisher>,
    tasks: Mutex<HashMap<Key, Arc<ShimTask>>>,
    /// Ids being created (so two creates of one id cannot race).
    pending: Mutex<HashSet<Key>>,
    conns: Mutex<HashMap<String, Weak<ShimConn>>>,
    pool: Mutex<pool::Pool>,
    /// Live pool shims' dirs, by shim pid (removed when the shim exits).
    pool_dirs: Mutex<HashMap<u32, pool::PoolDir>>,
    pool_seq: AtomicU64,
    shim_start: prometheus::Histogram,
    task_create: prometheus::Histogram,
}

/// Removes a pending create reservation when dropped.
struct Pending<'a>(&'a Inner, Key);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.0.pending.lock() {
            p.remove(&self.1);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these short locks cannot leave the maps half-updated
    // (every critical section is a single insert/remove/clone), so poison is ignored.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn histogram(name: &str, help: &str) -> prometheus::Result<prometheus::Histogram> {
    prometheus::Histogram::with_opts(
        prometheus::HistogramOpts::new(name, help)
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
    )
}

impl TaskManager {
    pub fn new(
        state: PathBuf,
        root: PathBuf,
        addrs: DaemonAddresses,
        config: Config,
        publisher: Arc<dyn Publisher>,
    ) -> Result<TaskManager> {
        for (name, path) in &config.shims {
            if !path.is_absolute() {
                return Err(RuntimeError::InvalidArgument {
                    field: "shims",
                    reason: format!("shim path for {name:?} must be absolute: {path:?}"),
                });
            }
        }
        let metric_err = |e: prometheus::Error| RuntimeError::InvalidArgument {
            field: "metrics",
            reason: e.to_string(),
        };
        Ok(TaskManager {
            inner: Arc::new(Inner {
                state,
                root,
                addrs,
                config,
                publisher,
                tasks: Mutex::new(HashMap::new()),
                pending: Mutex::new(HashSet::new()),
                conns: Mutex::new(HashMap::new()),
                pool: Mutex::new(pool::Pool::default()),
                pool_dirs: Mutex::new(HashMap::new()),
                pool_seq: AtomicU64::new(0),
                shim_start: histogram(
                    "taskd_shim_start_duration_seconds",
                    "Time to run `<shim> start` and connect to the shim",
                )
                .map_err(metric_err)?,
                task_create: histogram(
                    "taskd_task_create_duration_seconds",
                    "Time to create a task (bundle, shim, runc create)",
                )
                .map_err(metric_err)?,
            }),
        })
    }

    /// Registers the manager's collectors in the daemon's registry.
    pub fn register_metrics(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.inner.shim_start.clone()))?;
        registry.register(Box::new(self.inner.task_create.clone()))?;
        registry.register(Box::new(StateCollector::new(Arc::downgrade(&self.inner))?))?;
        Ok(())
    }

    /// Recovery: reconnects to every live shim and cleans up after dead ones. Never fails.
    pub async fn load(&self) {
        let inner = &self.inner;
        let namespaces = match std::fs::read_dir(&inner.state) {
            Ok(rd) => rd,
            Err(e) => {
                tracing::warn!(path = %inner.state.display(), error = %e, "read runtime state dir");
                return;
            }
        };
        for ns in namespaces.flatten() {
            let ns_name = ns.file_name().to_string_lossy().into_owned();
            if !ns.path().is_dir() || ns_name == pool::POOL_DIR {
                continue;
            }
            let Ok(bundles) = std::fs::read_dir(ns.path()) else {
                tracing::warn!(path = %ns.path().display(), "unreadable namespace dir, skipped");
                continue;
            };
            for b in bundles.flatten() {
                let id = b.file_name().to_string_lossy().into_owned();
                if let Err(e) = inner.load_one(&ns_name, &id).await {
                    tracing::warn!(
                        namespace = %ns_name, id = %id, error = %e,
                        "broken bundle skipped during recovery"
                    );
                }
            }
        }
        // After the tasks: a pool shim that serves a recovered task is known by now.
        inner.load_pool().await;
        let n = lock(&inner.tasks).len();
        tracing::info!(tasks = n, "runtime recovery done");
    }

    /// Daemon shutdown: stops the idle pool shims (never a shim that serves a task) and
    /// starts no more.
    pub async fn close_pool(&self) {
        self.inner.close_pool(Duration::from_secs(3)).await;
    }

    /// The pids of the live pool shims this manager started or found (idle or serving a
    /// task), for tests and introspection.
    pub fn pool_shim_pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = lock(&self.inner.pool_dirs).keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Every task, with its shim-side object (tests and introspection).
    pub fn shim_tasks(&self) -> Vec<Arc<ShimTask>> {
        lock(&self.inner.tasks).values().cloned().collect()
    }
}

impl Inner {
    fn bundle(&self, ns: &str, id: &str) -> Result<Bundle> {
        Bundle::at(&self.state, &self.root, ns, id)
    }

    fn spawn_log_reader(&self, b: &Bundle) -> Option<tokio::task::JoinHandle<()>> {
        let path = b.path.join(bundle::LOG);
        let rx = match tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&path)
        {
            Ok(rx) => rx,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "no shim log fifo");
                return None;
            }
        };
        let (ns, id) = (b.namespace.clone(), b.id.clone());
        Some(tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(rx).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(target: "taskd::shim", namespace = %ns, id = %id, "{line}");
            }
        }))
    }

    /// The connection for `address`: an existing one (grouped shims) or a new one with a
    /// watcher on the shim's pid.
    async fn connect(self: &Arc<Self>, address: &str, ns: &str, id: &str) -> Result<(Arc<ShimConn>, u32)> {
        let existing = lock(&self.conns).get(address).and_then(Weak::upgrade);
        let fail = |reason: String| RuntimeError::ShimConnect {
            address: address.to_owned(),
            reason,
        };
        let client = match &existing {
            Some(c) => c.client.clone(),
            None => {
                let c = tokio::time::timeout(CONNECT_TIMEOUT, ttrpc::r#async::Client::connect(address))
                    .await
                    .map_err(|_| fail("timed out".into()))?
                    .map_err(|e| fail(e.to_string()))?;
                TaskClient::new(c)
            }
        };
        let req = pb::ConnectRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        let resp = client
            .connect(shim::context(ns, Some(CONNECT_TIMEOUT)), &req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if let Some(c) = existing {
            return Ok((c, resp.task_pid));
        }
        let shim_pid = resp.shim_pid;
        let weak = Arc::downgrade(self);
        let addr = address.to_owned();
        let watcher = tokio::spawn(async move {
            if let Err(e) = shim::wait_pid_exit(shim_pid).await {
                tracing::warn!(pid = shim_pid, error = %e, "cannot watch shim pid");
                return;
            }
            if let Some(inner) = weak.upgrade() {
                inner.shim_died(&addr, shim_pid).await;
            }
        });
        let conn = Arc::new(ShimConn {
            address: address.to_owned(),
            client,
            shim_pid,
            _watcher: watcher,
        });
        lock(&self.conns).insert(address.to_owned(), Arc::downgrade(&conn));
        Ok((conn, resp.task_pid))
    }

    /// A shim exited: clean up every live task it served.
    async fn shim_died(&self, address: &str, shim_pid: u32) {
        {
            let mut conns = lock(&self.conns);
            let same = conns
                .get(address)
                .and_then(Weak::upgrade)
                .is_none_or(|c| c.shim_pid == shim_pid);
            if same {
                conns.remove(address);
            }
        }
        let victims: Vec<Arc<ShimTask>> = lock(&self.tasks)
            .values()
            .filter(|t| {
                t.dead_exit().is_none()
                    && t.conn
                        .as_ref()
                        .is_some_and(|c| c.address == address && c.shim_pid == shim_pid)
            })
            .cloned()
            .collect();
        for t in victims {
            tracing::warn!(namespace = %t.namespace, id = %t.id, shim_pid, "shim died, cleaning up");
            self.cleanup_dead(&t.binary, &t.bundle, t.pid(), Some(&t)).await;
        }
        self.pool_shim_died(shim_pid);
        shim::remove_stale_socket(address);
    }

    /// `<shim> delete` in the bundle, remove the bundle, publish `/tasks/exit`, mark dead.
    async fn cleanup_dead(&self, binary: &Path, b: &Bundle, pid: u32, task: Option<&ShimTask>) -> Exit {
        let exit = match binary::delete(binary, b, &self.addrs).await {
            Ok(exit) => exit,
            Err(e) => {
                tracing::warn!(namespace = %b.namespace, id = %b.id, error = %e, "shim delete failed");
                Exit {
                    pid,
                    status: 255,
                    timestamp: SystemTime::now(),
                }
            }
        };
        let exit = Exit {
            pid: if exit.pid == 0 { pid } else { exit.pid },
            ..exit
        };
        if let Some(t) = task {
            t.stop_log();
        }
        if let Err(e) = b.delete() {
            tracing::warn!(namespace = %b.namespace, id = %b.id, error = %e, "remove bundle");
        }
        // A task the shim already reported as exited had its /tasks/exit published by
        // the shim: do not publish a second one.
        let already_exited = task.is_some_and(|t| t.hint() == Status::Stopped);
        if !already_exited {
            self.publish_exit(b, &exit);
        }
        if let Some(t) = task {
            t.dead.send_replace(Some(exit));
        }
        exit
    }

    fn publish_exit(&self, b: &Bundle, exit: &Exit) {
        let ev = TaskExit {
            container_id: b.id.clone(),
            id: b.id.clone(),
            pid: exit.pid,
            exit_status: exit.status,
            exited_at: Some(exit.timestamp.into()),
        };
        match self
            .publisher
            .publish(&b.namespace, "/tasks/exit", events::any(&ev))
        {
            Ok(()) => tracing::info!(
                namespace = %b.namespace, id = %b.id, status = exit.status,
                "published /tasks/exit for a task whose shim is gone"
            ),
            Err(e) => tracing::warn!(id = %b.id, error = %e, "publish /tasks/exit"),
        }
    }

    async fn load_one(self: &Arc<Self>, ns: &str, id: &str) -> Result<()> {
        let b = self.bundle(ns, id)?;
        let empty = std::fs::read_dir(&b.path)
            .map(|mut rd| rd.next().is_none())
            .map_err(|source| RuntimeError::Io {
                op: "read",
                path: b.path.clone(),
                source,
            })?;
        if empty {
            return b.delete();
        }
        let binary = b
            .read(bundle::SHIM_BINARY_PATH)?
            .map(PathBuf::from)
            .ok_or_else(|| RuntimeError::InvalidArgument {
                field: "bundle",
                reason: format!("{} has no {}", b.path.display(), bundle::SHIM_BINARY_PATH),
            })?;
        let runtime = b.read(bundle::RUNTIME)?.unwrap_or_default();
        let facts = b.spec_facts();
        let live = match b.read(bundle::ADDRESS)? {
            None => Err(RuntimeError::ShimConnect {
                address: String::new(),
                reason: "no address file".into(),
            }),
            Some(address) => self.connect(&address, ns, id).await,
        };
        if live.is_err()
            && let Some(address) = b.read(bundle::ADDRESS)?
        {
            shim::remove_stale_socket(&address);
        }
        let (conn, pid) = match live {
            Ok((conn, pid)) if pid != 0 => (conn, pid),
            Ok(_) | Err(_) => {
                let pid = b
                    .read("init.pid")
                    .ok()
                    .flatten()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0);
                tracing::warn!(namespace = ns, id, "shim is gone, cleaning up its task");
                let exit = self.cleanup_dead(&binary, &b, pid, None).await;
                let t = Arc::new(ShimTask {
                    namespace: ns.to_owned(),
                    id: id.to_owned(),
                    runtime,
                    binary,
                    bundle: b,
                    pid: AtomicU32::new(exit.pid),
                    cgroups_path: facts.cgroups_path,
                    group: facts.sandbox_id,
                    conn: None,
                    dead: tokio::sync::watch::Sender::new(Some(exit)),
                    status_hint: Mutex::new(Status::Stopped),
                    log_reader: Mutex::new(None),
                });
                lock(&self.tasks).insert((ns.to_owned(), id.to_owned()), t);
                return Ok(());
            }
        };
        let log = self.spawn_log_reader(&b);
        let t = Arc::new(ShimTask {
            namespace: ns.to_owned(),
            id: id.to_owned(),
            runtime,
            binary,
            bundle: b,
            pid: AtomicU32::new(pid),
            cgroups_path: facts.cgroups_path,
            group: facts.sandbox_id,
            conn: Some(conn),
            dead: tokio::sync::watch::Sender::new(None),
            status_hint: Mutex::new(Status::Unknown),
            log_reader: Mutex::new(log),
        });
        // Learn the real status (created / running / paused) once; a slow shim must not
        // hold up the daemon's start.
        let handle = TaskHandle(t.clone());
        let _ = tokio::time::timeout(CONNECT_TIMEOUT, crate::runtime::Process::state(&handle)).await;
        lock(&self.tasks).insert((ns.to_owned(), id.to_owned()), t);
        tracing::info!(namespace = ns, id, pid, "reconnected to shim");
        Ok(())
    }

    async fn create(self: &Arc<Self>, ns: &str, id: &str, opts: CreateOpts) -> Result<Arc<ShimTask>> {
        let key = (ns.to_owned(), id.to_owned());
        crate::identifiers::validate("namespace", ns)?;
        crate::identifiers::validate("id", id)?;
        {
            let tasks = lock(&self.tasks);
            let mut pending = lock(&self.pending);
            if tasks.contains_key(&key) || !pending.insert(key.clone()) {
                return Err(RuntimeError::TaskExists {
                    namespace: ns.to_owned(),
                    id: id.to_owned(),
                });
            }
        }
        let _pending = Pending(self, key.clone());
        let began = Instant::now();
        let binary = binary::resolve(&opts.runtime, &self.config.shims)?;
        let spec = opts
            .spec
            .as_ref()
            .map(|s| s.value.clone())
            .filter(|v| !v.is_empty())
            .ok_or(RuntimeError::InvalidArgument {
                field: "spec",
                reason: "the container has no OCI spec".into(),
            })?;
        let facts = bundle::SpecFacts::of(&spec);
        let poolable = self.config.shim_pool_size > 0 && pool::eligible(&opts, &facts);
        let b = Bundle::create(&self.state, &self.root, ns, id, &spec)?;
        let mut rollback = Rollback {
            bundle: Some(&b),
            task: None,
        };
        let result = self
            .create_in(&b, &binary, &opts, facts, poolable, &mut rollback)
            .await;
        match result {
            Ok(t) => {
                rollback.bundle = None;
                rollback.task = None;
                lock(&self.tasks).insert(key, t.clone());
                self.task_create.observe(began.elapsed().as_secs_f64());
                if poolable {
                    // After this task's `runc create`, so the next one finds a warm shim. A
                    // taken warm shim usually comes back when its task is deleted: the
                    // refill then waits a little for that.
                    let took_warm = t
                        .conn
                        .as_ref()
                        .is_some_and(|c| lock(&self.pool_dirs).contains_key(&c.shim_pid));
                    let delay = if took_warm && t.group.is_none() {
                        pool::REFILL_DELAY
                    } else {
                        Duration::ZERO
                    };
                    self.refill(ns, &binary, delay);
                }
                Ok(t)
            }
            Err(e) => match rollback.run().await {
                Ok(()) => Err(e),
                Err(cleanup) => Err(RuntimeError::Rollback {
                    error: Box::new(e),
                    cleanup: Box::new(cleanup),
                }),
            },
        }
    }

    async fn create_in<'a>(
        self: &Arc<Self>,
        b: &'a Bundle,
        binary: &Path,
        opts: &CreateOpts,
        facts: bundle::SpecFacts,
        poolable: bool,
        rollback: &mut Rollback<'a>,
    ) -> Result<Arc<ShimTask>> {
        b.write(bundle::SHIM_BINARY_PATH, binary.to_string_lossy().as_bytes())?;
        b.write(bundle::RUNTIME, opts.runtime.as_bytes())?;
        // A container of a pod whose shim runs here (the sandbox's task, or another of the
        // pod's tasks) goes to that shim directly (containerd's shim manager does the same);
        // otherwise a warm pool shim, or `<shim> start` (which may still answer with a
        // shared shim's address).
        let group = facts.sandbox_id;
        let sandbox_conn = group
            .as_deref()
            .and_then(|sb| self.group_conn(&b.namespace, sb, &b.id, binary));
        // A warm pool shim logs into its pool dir's fifo, which taskd reads until it exits.
        let warm = if poolable && sandbox_conn.is_none() {
            self.take_warm(&b.namespace, binary)
        } else {
            None
        };
        let warm_taken = warm.is_some();
        let log = if warm_taken {
            None
        } else {
            self.spawn_log_reader(b)
        };
        let topts = opts.task_options.as_ref().or(opts.runtime_options.as_ref());
        let started = Instant::now();
        let (address, shim_started, conn) = match (sandbox_conn, warm) {
            (Some(conn), _) => {
                tracing::debug!(id = %b.id, address = %conn.address, "reusing the sandbox's shim");
                (conn.address.clone(), Duration::ZERO, Some(conn))
            }
            (None, Some(w)) => {
                tracing::debug!(id = %b.id, pool_id = %w.id, pid = w.conn.shim_pid, "taking a warm pool shim");
                (w.conn.address.clone(), Duration::ZERO, Some(w.conn))
            }
            (None, None) => {
                let address = binary::start(binary, b, &self.addrs, topts).await?;
                (address, started.elapsed(), None)
            }
        };
        let reused = conn.is_some();
        let warm_conn = conn.clone().filter(|_| warm_taken);
        let connected = async {
            if b.read(bundle::ADDRESS)?.is_none() {
                b.write(bundle::ADDRESS, address.as_bytes())?;
            }
            match conn {
                Some(conn) => Ok(conn),
                None => Ok(self.connect(&address, &b.namespace, &b.id).await?.0),
            }
        }
        .await;
        let conn = match connected {
            Ok(conn) => conn,
            Err(e) => {
                if let Some(c) = warm_conn {
                    // Nothing was created in it: it serves nothing, so it exits.
                    shim::shutdown_idle(&c, &b.namespace).await;
                } else if !reused {
                    self.abandon_shim(binary, b, &address).await;
                }
                return Err(e);
            }
        };
        let connected = started.elapsed();
        if !shim_started.is_zero() {
            self.shim_start.observe(connected.as_secs_f64());
        }
        let t = Arc::new(ShimTask {
            namespace: b.namespace.clone(),
            id: b.id.clone(),
            runtime: opts.runtime.clone(),
            binary: binary.to_path_buf(),
            bundle: b.clone(),
            pid: AtomicU32::new(0),
            cgroups_path: facts.cgroups_path,
            group: group.clone(),
            conn: Some(conn.clone()),
            dead: tokio::sync::watch::Sender::new(None),
            status_hint: Mutex::new(Status::Created),
            log_reader: Mutex::new(log),
        });
        rollback.task = Some(t.clone());
        if b.read(bundle::SHIM_PID)?.is_none() {
            b.write(bundle::SHIM_PID, conn.shim_pid.to_string().as_bytes())?;
        }
        let req = pb::CreateTaskRequest {
            id: b.id.clone(),
            bundle: b.path.to_string_lossy().into_owned(),
            rootfs: opts
                .rootfs
                .iter()
                .map(|m| pbmount::Mount {
                    type_: m.r#type.clone(),
                    source: m.source.clone(),
                    target: m.target.clone(),
                    options: m.options.clone(),
                    ..Default::default()
                })
                .collect(),
            terminal: opts.io.terminal,
            stdin: opts.io.stdin.clone(),
            stdout: opts.io.stdout.clone(),
            stderr: opts.io.stderr.clone(),
            checkpoint: opts.checkpoint.clone().unwrap_or_default(),
            options: topts.map(shim::to_pb_any).into(),
            ..Default::default()
        };
        let resp = conn
            .client
            .create(shim::context(&b.namespace, None), &req)
            .await
            .map_err(|e| shim::map_err(&b.id, "create", e))?;
        tracing::debug!(
            namespace = %b.namespace, id = %b.id, pid = resp.pid,
            shim_start_us = shim_started.as_micros() as u64,
            connect_us = (connected - shim_started).as_micros() as u64,
            create_us = (started.elapsed() - connected).as_micros() as u64,
            "task created"
        );
        t.pid.store(resp.pid, std::sync::atomic::Ordering::Relaxed);
        rollback.task = None;
        Ok(t)
    }

    /// `<shim> start` succeeded but the shim cannot be reached (connect or Connect failed):
    /// kill the shim process it left, run `<shim> delete` in the bundle and remove its
    /// socket, so nothing outlives the failed create. The shim is found by what `start`
    /// gave it (cwd = this bundle, `-namespace NS -id ID`) plus the bundle's `shim.pid` if
    /// the shim wrote one; a pid that a known connection uses (a shared shim) is never
    /// killed.
    async fn abandon_shim(&self, binary: &Path, b: &Bundle, address: &str) {
        let mut pids = shim::shim_pids_in(&b.path, &b.namespace, &b.id);
        if let Some(pid) = b
            .read(bundle::SHIM_PID)
            .ok()
            .flatten()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .filter(|p| *p > 1 && !pids.contains(p))
        {
            pids.push(pid);
        }
        for pid in pids {
            let shared = lock(&self.conns)
                .values()
                .filter_map(Weak::upgrade)
                .any(|c| c.shim_pid == pid);
            if shared {
                tracing::warn!(id = %b.id, pid, "unreachable shim pid belongs to a live connection, not killed");
                continue;
            }
            tracing::warn!(namespace = %b.namespace, id = %b.id, pid, "shim unreachable after start, killing it");
            if let Err(e) = shim::kill_pid(pid, CONNECT_TIMEOUT).await {
                tracing::warn!(id = %b.id, pid, error = %e, "kill unreachable shim");
            }
        }
        if let Err(e) = binary::delete(binary, b, &self.addrs).await {
            tracing::debug!(id = %b.id, error = %e, "shim delete after failed connect");
        }
        shim::remove_stale_socket(address);
        if let Ok(Some(written)) = b.read(bundle::ADDRESS)
            && written != address
        {
            shim::remove_stale_socket(&written);
        }
    }

    /// The live connection of task `ns/id` when it runs under the same shim binary.
    /// The live shim of CRI sandbox `group` in `ns` for `binary`: the sandbox's own task's
    /// (its pause container), else any other live task of the pod's (a pod without a pause
    /// container). `id` (the task being created) is not a candidate.
    fn group_conn(&self, ns: &str, group: &str, id: &str, binary: &Path) -> Option<Arc<ShimConn>> {
        let tasks = lock(&self.tasks);
        let usable = |t: &Arc<ShimTask>| {
            if t.id == id || t.dead_exit().is_some() || t.binary != binary {
                return None;
            }
            t.conn.clone().filter(|c| shim::pid_alive(c.shim_pid))
        };
        if let Some(c) = tasks.get(&(ns.to_owned(), group.to_owned())).and_then(usable) {
            return Some(c);
        }
        tasks
            .iter()
            .filter(|((tns, _), t)| tns == ns && t.group.as_deref() == Some(group))
            .find_map(|(_, t)| usable(t))
    }

    async fn delete(self: &Arc<Self>, ns: &str, id: &str) -> Result<Exit> {
        let key = (ns.to_owned(), id.to_owned());
        let t = lock(&self.tasks)
            .get(&key)
            .cloned()
            .ok_or_else(|| RuntimeError::TaskNotFound {
                namespace: ns.to_owned(),
                id: id.to_owned(),
            })?;
        if let Some(exit) = t.dead_exit() {
            return Ok(self.forget_dead(&key, &t, exit));
        }
        let began = Instant::now();
        let exit = match t.delete_init().await {
            Ok(exit) => exit,
            Err(RuntimeError::ShimClosed { .. } | RuntimeError::ShimTransport { .. }) => {
                // The shim died under us: its watcher records the exit.
                let mut rx = t.dead.subscribe();
                let exit = tokio::time::timeout(Duration::from_secs(90), rx.wait_for(Option::is_some))
                    .await
                    .ok()
                    .and_then(|r| r.ok().and_then(|v| *v));
                match exit {
                    Some(exit) => return Ok(self.forget_dead(&key, &t, exit)),
                    None => return Err(RuntimeError::ShimClosed { id: id.to_owned() }),
                }
            }
            Err(e) if crate::errdefs::ErrorKind::kind(&e) == crate::errdefs::Kind::NotFound => {
                // The shim no longer knows the task: finish the cleanup, report not found.
                self.forget(&key, &t, false).await;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let deleted = began.elapsed();
        let (shutdown, removed) = self.forget(&key, &t, true).await;
        tracing::debug!(
            namespace = ns,
            id,
            shim_delete_us = deleted.as_micros() as u64,
            shutdown_us = shutdown.as_micros() as u64,
            bundle_us = removed.as_micros() as u64,
            "task deleted"
        );
        Ok(exit)
    }

    /// Drops the task, asks its shim to shut down (or, after a clean delete, gives a warm
    /// pool shim back to the pool) and removes the bundle; returns how long the Shutdown call
    /// and the bundle removal took (for the debug log).
    async fn forget(self: &Arc<Self>, key: &Key, t: &Arc<ShimTask>, recycle: bool) -> (Duration, Duration) {
        lock(&self.tasks).remove(key);
        let began = Instant::now();
        if !(recycle && self.recycle(t)) {
            t.shutdown_shim().await;
        }
        let shutdown = began.elapsed();
        t.stop_log();
        if let Err(e) = t.bundle.delete() {
            tracing::error!(namespace = %t.namespace, id = %t.id, error = %e, "failed to delete bundle");
        }
        (shutdown, began.elapsed() - shutdown)
    }

    fn forget_dead(&self, key: &Key, t: &Arc<ShimTask>, exit: Exit) -> Exit {
        lock(&self.tasks).remove(key);
        let ev = TaskDelete {
            container_id: t.id.clone(),
            pid: exit.pid,
            exit_status: exit.status,
            exited_at: Some(exit.timestamp.into()),
            id: String::new(),
        };
        if let Err(e) = self
            .publisher
            .publish(&t.namespace, "/tasks/delete", events::any(&ev))
        {
            tracing::warn!(id = %t.id, error = %e, "publish /tasks/delete");
        }
        exit
    }
}

/// Undo a failed create: delete the task in the shim (if it got that far), ask the shim
/// to shut down, remove the bundle.
struct Rollback<'a> {
    bundle: Option<&'a Bundle>,
    task: Option<Arc<ShimTask>>,
}

impl Rollback<'_> {
    async fn run(self) -> Result<()> {
        if let Some(t) = &self.task {
            if let Err(e) = t.delete_init().await {
                tracing::debug!(id = %t.id, error = %e, "rollback: shim delete");
            }
            t.shutdown_shim().await;
            t.stop_log();
        }
        match self.bundle {
            Some(b) => b.delete(),
            None => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl PlatformRuntime for TaskManager {
    fn id(&self) -> String {
        format!("{}.{}", PluginType::Runtime, ids::TASK)
    }

    async fn create(&self, namespace: &str, id: &str, opts: CreateOpts) -> Result<Arc<dyn Task>> {
        let t = self.inner.create(namespace, id, opts).await?;
        Ok(Arc::new(TaskHandle(t)))
    }

    async fn get(&self, namespace: &str, id: &str) -> Result<Arc<dyn Task>> {
        lock(&self.inner.tasks)
            .get(&(namespace.to_owned(), id.to_owned()))
            .map(|t| Arc::new(TaskHandle(t.clone())) as Arc<dyn Task>)
            .ok_or_else(|| RuntimeError::TaskNotFound {
                namespace: namespace.to_owned(),
                id: id.to_owned(),
            })
    }

    async fn tasks(&self, namespace: Option<&str>) -> Vec<Arc<dyn Task>> {
        let mut v: Vec<Arc<ShimTask>> = lock(&self.inner.tasks)
            .values()
            .filter(|t| namespace.is_none_or(|ns| t.namespace == ns))
            .cloned()
            .collect();
        v.sort_by(|a, b| (&a.namespace, &a.id).cmp(&(&b.namespace, &b.id)));
        v.into_iter()
            .map(|t| Arc::new(TaskHandle(t)) as Arc<dyn Task>)
            .collect()
    }

    async fn delete(&self, namespace: &str, id: &str) -> Result<Exit> {
        self.inner.delete(namespace, id).await
    }
}

/// `taskd_tasks{state}` and `taskd_shims_running`, computed at scrape from what the
/// manager knows plus `/proc` (no shim call at scrape time).
struct StateCollector {
    inner: Weak<Inner>,
    descs: Vec<Desc>,
}

impl StateCollector {
    fn new(inner: Weak<Inner>) -> prometheus::Result<Self> {
        let tasks = prometheus::IntGaugeVec::new(
            prometheus::Opts::new("taskd_tasks", "Tasks known to the runtime, by state"),
            &["state"],
        )?;
        let shims = prometheus::IntGauge::new(
            "taskd_shims_running",
            "Shim processes taskd is connected to (idle warm pool shims included)",
        )?;
        let mut descs: Vec<Desc> = tasks.desc().into_iter().cloned().collect();
        descs.extend(shims.desc().into_iter().cloned());
        Ok(StateCollector { inner, descs })
    }
}

impl Collector for StateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok(tasks) = prometheus::IntGaugeVec::new(
            prometheus::Opts::new("taskd_tasks", "Tasks known to the runtime, by state"),
            &["state"],
        ) else {
            return Vec::new();
        };
        let Ok(shims) = prometheus::IntGauge::new(
            "taskd_shims_running",
            "Shim processes taskd is connected to (idle warm pool shims included)",
        ) else {
            return Vec::new();
        };
        if let Some(inner) = self.inner.upgrade() {
            for s in [Status::Created, Status::Running, Status::Paused, Status::Stopped] {
                tasks.with_label_values(&[s.as_str()]).set(0);
            }
            for t in lock(&inner.tasks).values() {
                let state = if t.dead_exit().is_some() {
                    Status::Stopped
                } else {
                    match t.hint() {
                        s @ (Status::Running | Status::Paused | Status::Created | Status::Pausing)
                            if !shim::pid_alive(t.pid()) =>
                        {
                            let _ = s;
                            Status::Stopped
                        }
                        s => s,
                    }
                };
                tasks.with_label_values(&[state.as_str()]).inc();
            }
            let live = lock(&inner.conns)
                .values()
                .filter_map(Weak::upgrade)
                .filter(|c| shim::pid_alive(c.shim_pid))
                .count();
            shims.set(i64::try_from(live).unwrap_or(i64::MAX));
        }
        let mut out = tasks.collect();
        out.extend(shims.collect());
        out
    }
}

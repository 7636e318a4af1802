//! The shim task manager (containerd's `TaskManager` + `ShimManager`): the task table,
//! create (bundle, a shim for the task, shim Create) with its rollback, delete, and what
//! happens when a shim dies. Recovery of an earlier run's tasks is in [`super::recovery`],
//! the shim connections in [`super::conns`], the warm pool in [`super::pool`].

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use taskd_proto::ttrpc::v2::{mount as pbmount, shim as pb};

use super::binary::{self, DaemonAddresses};
use super::bundle::{self, Bundle};
use super::conns::{Connections, ShimDeaths};
use super::metrics::RuntimeMetrics;
use super::pool::{self, WarmPool};
use super::shim::{self, Key, ShimConn, ShimTask, TaskHandle, TaskSource, TaskTable, lock};
use crate::config::HumanDuration;
use crate::events::{self, Publisher};
use crate::plugin::{PluginType, ids};
use crate::rollback::Rollback;
use crate::runtime::{CreateOpts, Exit, PlatformRuntime, Result, RuntimeError, Status, Task};
use taskd_proto::containerd::events::{TaskDelete, TaskExit};

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
    /// Keep one sealed in-memory copy of runc for taskd's own shim to run (see
    /// `sealed_runc.rs`): no bind mount and re-exec at each `runc init`.
    pub sealed_runc: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            shims: BTreeMap::new(),
            shim_pool_size: 1,
            shim_pool_idle_timeout: HumanDuration(Duration::from_secs(60)),
            sealed_runc: true,
        }
    }
}

/// The shim task manager.
#[derive(Clone)]
pub struct TaskManager {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    state: PathBuf,
    root: PathBuf,
    addrs: DaemonAddresses,
    shims: BTreeMap<String, PathBuf>,
    publisher: Arc<dyn Publisher>,
    pub(super) tasks: Arc<TaskTable>,
    /// Ids being created (so two creates of one id cannot race).
    pending: Mutex<HashSet<Key>>,
    pub(super) conns: Arc<Connections>,
    pub(super) pool: Arc<WarmPool>,
    metrics: RuntimeMetrics,
}

/// Removes a pending create reservation when dropped.
struct Pending<'a>(&'a Inner, Key);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        lock(&self.0.pending).remove(&self.1);
    }
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
        let metrics = RuntimeMetrics::new().map_err(|e| RuntimeError::InvalidArgument {
            field: "metrics",
            reason: e.to_string(),
        })?;
        let inner = Arc::new_cyclic(|me: &Weak<Inner>| {
            let deaths: Weak<dyn ShimDeaths> = me.clone();
            let conns = Arc::new(Connections::new(deaths));
            let pool = Arc::new(WarmPool::new(
                &state,
                addrs.clone(),
                conns.clone(),
                config.shim_pool_size,
                config.shim_pool_idle_timeout.0,
            ));
            Inner {
                state,
                root,
                addrs,
                shims: config.shims,
                publisher,
                tasks: Arc::new(TaskTable::default()),
                pending: Mutex::new(HashSet::new()),
                conns,
                pool,
                metrics,
            }
        });
        Ok(TaskManager { inner })
    }

    /// Registers the manager's collectors in the daemon's registry.
    pub fn register_metrics(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        let inner = &self.inner;
        inner.metrics.register(registry, &inner.tasks, &inner.conns)
    }

    /// Daemon shutdown: stops the idle pool shims (never a shim that serves a task) and
    /// starts no more.
    pub async fn close_pool(&self) {
        self.inner.pool.close(Duration::from_secs(3)).await;
    }

    /// The pids of the live pool shims this manager started or found (idle or serving a
    /// task), for tests and introspection.
    pub fn pool_shim_pids(&self) -> Vec<u32> {
        self.inner.pool.shim_pids()
    }

    /// Every task, with its shim-side object (tests and introspection).
    pub fn shim_tasks(&self) -> Vec<Arc<ShimTask>> {
        lock(&self.inner.tasks).values().cloned().collect()
    }
}

#[async_trait::async_trait]
impl ShimDeaths for Inner {
    /// A shim exited: clean up every live task it served, and let the pool forget it.
    async fn shim_died(&self, address: &str, shim_pid: u32) {
        self.conns.forget(address, shim_pid);
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
        self.pool.shim_died(shim_pid);
        shim::remove_stale_socket(address);
    }
}

impl Inner {
    pub(super) fn state_dir(&self) -> &Path {
        &self.state
    }

    pub(super) fn bundle(&self, ns: &str, id: &str) -> Result<Bundle> {
        Bundle::at(&self.state, &self.root, ns, id)
    }

    /// `<shim> delete` in the bundle, remove the bundle, publish `/tasks/exit`, mark dead.
    pub(super) async fn cleanup_dead(
        &self,
        binary: &Path,
        b: &Bundle,
        pid: u32,
        task: Option<&ShimTask>,
    ) -> Exit {
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
        let binary = binary::resolve(&opts.runtime, &self.shims)?;
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
        let poolable = self.pool.enabled() && pool::eligible(&opts, &facts);
        let b = Bundle::create(&self.state, &self.root, ns, id, &spec)?;
        // Undone in reverse: the task in its shim (deleted, the shim asked to shut down), the
        // bundle.
        let mut rollback = Rollback::new(format!("create task {ns}/{id}"));
        rollback.defer("remove the bundle", || async { b.delete() });
        let result = self
            .create_in(&b, &binary, &opts, facts, poolable, &mut rollback)
            .await;
        match result {
            Ok(t) => {
                rollback.disarm();
                lock(&self.tasks).insert(key, t.clone());
                self.metrics.task_create.observe(began.elapsed().as_secs_f64());
                if poolable {
                    // After this task's `runc create`, so the next one finds a warm shim. A
                    // taken warm shim usually comes back when its task is deleted: the
                    // refill then waits a little for that.
                    let took_warm = t.conn.as_ref().is_some_and(|c| self.pool.owns(c.shim_pid));
                    let delay = if took_warm && t.group.is_none() {
                        pool::REFILL_DELAY
                    } else {
                        Duration::ZERO
                    };
                    self.pool.refill(ns, &binary, delay);
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
        rollback: &mut Rollback<'a, RuntimeError>,
    ) -> Result<Arc<ShimTask>> {
        b.write(bundle::SHIM_BINARY_PATH, binary.to_string_lossy().as_bytes())?;
        b.write(bundle::RUNTIME, opts.runtime.as_bytes())?;
        // A container of a pod whose shim runs here (the sandbox's task, or another of the
        // pod's tasks) goes to that shim directly (containerd's shim manager does the same);
        // otherwise a warm pool shim, or `<shim> start` (which may still answer with a
        // shared shim's address).
        let group = facts.sandbox_id.clone();
        let sandbox_conn = group
            .as_deref()
            .and_then(|sb| self.group_conn(&b.namespace, sb, &b.id, binary));
        // A warm pool shim logs into its pool dir's fifo, which taskd reads until it exits.
        let warm = if poolable && sandbox_conn.is_none() {
            self.pool.take(&b.namespace, binary)
        } else {
            None
        };
        let warm_taken = warm.is_some();
        let log = if warm_taken { None } else { shim::forward_log(b) };
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
                None => Ok(self.conns.connect(&address, &b.namespace, &b.id).await?.0),
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
                    self.conns.abandon(&self.addrs, binary, b, &address).await;
                }
                return Err(e);
            }
        };
        let connected = started.elapsed();
        if !shim_started.is_zero() {
            self.metrics.shim_start.observe(connected.as_secs_f64());
        }
        let src = TaskSource {
            bundle: b.clone(),
            runtime: opts.runtime.clone(),
            binary: binary.to_path_buf(),
            facts,
        };
        let t = Arc::new(ShimTask::live(src, conn.clone(), 0, Status::Created, log));
        let task = t.clone();
        rollback.defer("delete the task and shut its shim down", || async move {
            // The shim may never have created the task: its answer is not a failure.
            if let Err(e) = task.delete_init().await {
                tracing::debug!(id = %task.id, error = %e, "rollback: shim delete");
            }
            task.shutdown_shim().await;
            task.stop_log();
            Ok(())
        });
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
        Ok(t)
    }

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

    /// After a clean delete of `t` (already out of the table): gives its shim back to the
    /// pool when it is a pool shim no other task uses. Whether it did.
    fn recycle(&self, t: &ShimTask) -> bool {
        let Some(conn) = &t.conn else { return false };
        let serving = lock(&self.tasks)
            .values()
            .any(|o| o.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)));
        self.pool.recycle(conn, &t.id, serving)
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

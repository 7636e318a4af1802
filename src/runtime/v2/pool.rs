//! The warm shim pool: shims started ahead of need, so a task's create skips `<shim> start`
//! and the connect (`shim_pool_size`, default 1; 0 disables).
//!
//! - Per (namespace, shim binary), up to `shim_pool_size` idle shims, each started with a
//!   pool id in its own dir `<state>/.pool/<ns>/<pool-id>/` (config.json `{}` so the runc
//!   shim's `start` groups by the pool id, the `log` fifo the shim needs, `address`,
//!   `shim.pid`). `.pool` cannot be a namespace, so recovery never takes it for bundles.
//! - None exist before a namespace + runtime is first used: the first eligible create starts
//!   its shim as usual and then fills the pool in the background (after its own `runc
//!   create`, off its critical path).
//! - A task takes a warm shim and sends Create with its own id and bundle, as the
//!   containers of a pod do with their sandbox's shim; its bundle's `address` / `shim.pid`
//!   name the shim, so recovery finds it. One task at a time: after the task's clean delete
//!   (shim Delete done, so the shim serves nothing, as a pod's shim between containers) the
//!   shim goes back to the pool if the pool has room, otherwise it shuts down as any other.
//!   A refill after a take waits [`REFILL_DELAY`] for that, so a run-and-remove loop starts
//!   no shim at all; a long-running task's pool is refilled after that delay.
//! - Only creates that a fresh `<shim> start` would give a shim of its own use the pool: no
//!   runc group annotation, and no runtime options that `start` acts on (a shim cgroup). A
//!   CRI pod's first task takes a warm shim; the pod's later tasks find that shim among the
//!   tasks by sandbox id (`group_conn`), as containerd's shim manager finds a sandbox's.
//!   Such a take is refilled at once (a pod's shim does not come back soon).
//! - A pool dir lives as long as its shim: removed when the shim exits (its pidfd watcher),
//!   on the idle timeout (Shutdown), on daemon shutdown (Shutdown of every idle one), and
//!   at recovery (idle ones are shut down; one that serves a recovered task keeps its dir
//!   until it exits).
//! - [`WarmPool`] owns its background work (starts, delayed refills, idle timers) in one
//!   task tracker: [`WarmPool::close`] cancels the timers, waits for the starts in flight and
//!   stops every idle shim. It knows the manager's tasks only through what the manager
//!   passes in (a recycled shim's "still serving" answer), never the other way round.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use taskd_proto::ttrpc::v2::{shim as pb, shim_ttrpc::TaskClient};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::binary::{self, DaemonAddresses};
use super::bundle::{self, Bundle};
use super::conns::Connections;
use super::shim::{self, ShimConn, lock};
use crate::runtime::{CreateOpts, Result, RuntimeError};

/// The pool's dir under the runtime's state dir (not a valid namespace name).
pub const POOL_DIR: &str = ".pool";

/// How long a pool shim gets to exit after Shutdown before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// After a create took a warm shim, how long the refill waits for that shim to come back
/// (its task deleted) before it starts a new one.
pub const REFILL_DELAY: Duration = Duration::from_secs(1);

/// (namespace, shim binary).
type PoolKey = (String, PathBuf);

/// The idle and starting shims, per key.
#[derive(Default)]
struct Slots {
    idle: HashMap<PoolKey, Vec<Warm>>,
    starting: HashMap<PoolKey, usize>,
    /// Set on daemon shutdown: nothing is added any more.
    closed: bool,
}

impl Slots {
    fn have(&self, key: &PoolKey) -> usize {
        self.idle.get(key).map_or(0, Vec::len) + self.starting.get(key).copied().unwrap_or(0)
    }
}

/// An idle, connected pool shim.
pub struct Warm {
    pub id: String,
    pub conn: Arc<ShimConn>,
    /// Which idle period this is (the idle timer of an earlier one must not stop it).
    idle_gen: u64,
}

/// A live pool shim's dir and the reader of its log fifo (kept until the shim exits).
struct PoolDir {
    dir: PathBuf,
    log: Option<JoinHandle<()>>,
    /// Its pool id and key, when it may go back to the pool after its task.
    origin: Option<(String, PoolKey)>,
}

impl PoolDir {
    fn remove(self) {
        if let Some(log) = self.log {
            log.abort();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.dir.display(), error = %e, "remove pool shim dir");
        }
    }
}

/// Whether a fresh `<shim> start` for this create would give it a shim of its own, with
/// nothing from the request applied at start: no runc group annotation in the spec, and no
/// runtime options other than runc options without a shim cgroup. A CRI pod's container
/// (`io.kubernetes.cri.sandbox-id`) is eligible: the caller looks for the pod's shim among
/// its tasks first, and only the pod's first task takes a warm shim, which the others then
/// find the same way.
pub fn eligible(opts: &CreateOpts, spec: &bundle::SpecFacts) -> bool {
    if spec.runc_grouped {
        return false;
    }
    let topts = opts.task_options.as_ref().or(opts.runtime_options.as_ref());
    match topts {
        None => true,
        Some(any) => {
            let name = any.type_url.rsplit('/').next().unwrap_or_default();
            name == "containerd.runc.v1.Options"
                && <taskd_proto::containerd::types::runc::options::Options as prost::Message>::decode(
                    any.value.as_slice(),
                )
                .is_ok_and(|o| o.shim_cgroup.is_empty())
        }
    }
}

fn pool_id(seq: u64) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("pool-{nanos:x}-{seq}")
}

fn create_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(parent)?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    std::fs::write(dir.join(bundle::CONFIG), b"{}")?;
    nix::unistd::mkfifo(
        &dir.join(bundle::LOG),
        nix::sys::stat::Mode::from_bits_truncate(0o700),
    )?;
    Ok(())
}

/// The warm shim pool of one runtime manager.
pub struct WarmPool {
    /// `<state>/.pool`.
    root: PathBuf,
    addrs: DaemonAddresses,
    conns: Arc<Connections>,
    /// Idle shims kept per key (0: the pool is off).
    size: usize,
    idle_timeout: Duration,
    slots: Mutex<Slots>,
    /// Live pool shims' dirs, by shim pid (removed when the shim exits).
    dirs: Mutex<HashMap<u32, PoolDir>>,
    seq: AtomicU64,
    /// Every background task of the pool: starts, delayed refills, idle timers.
    work: TaskTracker,
    /// Cancels the waiting ones (delayed refills, idle timers) on close.
    closing: CancellationToken,
}

impl WarmPool {
    pub fn new(
        state: &Path,
        addrs: DaemonAddresses,
        conns: Arc<Connections>,
        size: usize,
        idle_timeout: Duration,
    ) -> WarmPool {
        WarmPool {
            root: state.join(POOL_DIR),
            addrs,
            conns,
            size,
            idle_timeout,
            slots: Mutex::new(Slots::default()),
            dirs: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            work: TaskTracker::new(),
            closing: CancellationToken::new(),
        }
    }

    /// Whether the pool is on (`shim_pool_size` > 0).
    pub fn enabled(&self) -> bool {
        self.size > 0
    }

    /// Whether `pid` is a shim the pool started (idle, or serving a task it was taken for).
    pub fn owns(&self, pid: u32) -> bool {
        lock(&self.dirs).contains_key(&pid)
    }

    /// The pids of the live pool shims (idle or serving a task), sorted.
    pub fn shim_pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = lock(&self.dirs).keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// An idle pool shim for `ns` + `binary`, if one is ready.
    pub fn take(&self, ns: &str, binary: &Path) -> Option<Warm> {
        let mut slots = lock(&self.slots);
        let list = slots.idle.get_mut(&(ns.to_owned(), binary.to_path_buf()))?;
        while let Some(w) = list.pop() {
            if shim::pid_alive(w.conn.shim_pid) {
                return Some(w);
            }
        }
        None
    }

    /// Starts pool shims in the background (after `delay`) until `ns` + `binary` has
    /// `shim_pool_size` idle or starting ones.
    pub fn refill(self: &Arc<Self>, ns: &str, binary: &Path, delay: Duration) {
        if self.size == 0 {
            return;
        }
        if !delay.is_zero() {
            let weak = Arc::downgrade(self);
            let closing = self.closing.clone();
            let (ns, binary) = (ns.to_owned(), binary.to_path_buf());
            self.work.spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {
                        if let Some(pool) = weak.upgrade() {
                            pool.refill(&ns, &binary, Duration::ZERO);
                        }
                    }
                    () = closing.cancelled() => {}
                }
            });
            return;
        }
        let key = (ns.to_owned(), binary.to_path_buf());
        let missing = {
            let mut slots = lock(&self.slots);
            if slots.closed {
                return;
            }
            let missing = self.size.saturating_sub(slots.have(&key));
            if missing > 0 {
                *slots.starting.entry(key.clone()).or_default() += missing;
            }
            missing
        };
        for _ in 0..missing {
            let pool = self.clone();
            let key = key.clone();
            self.work.spawn(async move {
                let started = pool.start(&key.0, &key.1).await;
                pool.ready(key, started).await;
            });
        }
    }

    /// `<shim> start` in a new pool dir, connect, remember the dir.
    async fn start(&self, ns: &str, binary: &Path) -> Result<Warm> {
        let id = pool_id(self.seq.fetch_add(1, Ordering::Relaxed));
        let dir = self.root.join(ns).join(&id);
        create_dir(&dir).map_err(|source| RuntimeError::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        let b = Bundle {
            namespace: ns.to_owned(),
            id: id.clone(),
            path: dir.clone(),
            work: dir.clone(),
        };
        b.write(bundle::SHIM_BINARY_PATH, binary.to_string_lossy().as_bytes())?;
        let pool_dir = PoolDir {
            dir,
            log: shim::forward_log(&b),
            origin: Some((id.clone(), (ns.to_owned(), binary.to_path_buf()))),
        };
        let address = match binary::start(binary, &b, &self.addrs, None).await {
            Ok(a) => a,
            Err(e) => {
                for pid in shim::shim_pids_in(&b.path, ns, &id) {
                    let _ = shim::kill_pid(pid, STOP_WAIT).await;
                }
                pool_dir.remove();
                return Err(e);
            }
        };
        match self.conns.connect(&address, ns, &id).await {
            Ok((conn, _)) => {
                if let Err(e) = b.write(bundle::SHIM_PID, conn.shim_pid.to_string().as_bytes()) {
                    tracing::debug!(id, error = %e, "write pool shim.pid");
                }
                self.keep_dir(conn.shim_pid, pool_dir);
                Ok(Warm {
                    id,
                    conn,
                    idle_gen: 0,
                })
            }
            Err(e) => {
                self.conns.abandon(&self.addrs, binary, &b, &address).await;
                pool_dir.remove();
                Err(e)
            }
        }
    }

    /// Remembers the dir of live pool shim `pid`; removes it at once when the shim died
    /// before (its watcher may have missed the dir).
    fn keep_dir(&self, pid: u32, dir: PoolDir) {
        lock(&self.dirs).insert(pid, dir);
        if !shim::pid_alive(pid)
            && let Some(d) = lock(&self.dirs).remove(&pid)
        {
            d.remove();
        }
    }

    /// A background start finished: add the shim to the idle list (with its idle timer),
    /// or stop it when the pool was closed meanwhile.
    async fn ready(self: &Arc<Self>, key: PoolKey, started: Result<Warm>) {
        let closed_out = {
            let mut slots = lock(&self.slots);
            if let Some(n) = slots.starting.get_mut(&key) {
                *n = n.saturating_sub(1);
            }
            match started {
                Err(e) => {
                    tracing::warn!(namespace = %key.0, shim = %key.1.display(), error = %e, "pool shim start failed");
                    return;
                }
                Ok(w) if slots.closed => Some(w),
                Ok(mut w) => {
                    tracing::debug!(namespace = %key.0, id = %w.id, pid = w.conn.shim_pid, "pool shim ready");
                    w.idle_gen = self.arm_idle_timer(&key);
                    slots.idle.entry(key.clone()).or_default().push(w);
                    None
                }
            }
        };
        if let Some(w) = closed_out {
            self.stop(&key.0, w).await;
        }
    }

    /// Starts the idle timer of a shim going idle now; returns the idle period's number.
    fn arm_idle_timer(self: &Arc<Self>, key: &PoolKey) -> u64 {
        let idle_gen = self.seq.fetch_add(1, Ordering::Relaxed);
        let weak = Arc::downgrade(self);
        let closing = self.closing.clone();
        let key = key.clone();
        let timeout = self.idle_timeout;
        self.work.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(timeout) => {}
                () = closing.cancelled() => return,
            }
            let Some(pool) = weak.upgrade() else { return };
            let w = {
                let mut slots = lock(&pool.slots);
                slots.idle.get_mut(&key).and_then(|l| {
                    let i = l.iter().position(|w| w.idle_gen == idle_gen)?;
                    Some(l.remove(i))
                })
            };
            if let Some(w) = w {
                tracing::debug!(namespace = %key.0, id = %w.id, pid = w.conn.shim_pid, "idle pool shim timed out");
                pool.stop(&key.0, w).await;
            }
        });
        idle_gen
    }

    /// Shutdown of an idle pool shim; killed if it does not exit in time. Its dir and socket
    /// are removed.
    async fn stop(&self, ns: &str, w: Warm) {
        let pid = w.conn.shim_pid;
        if !stop_idle(&w.conn.client, ns, &w.id, pid, true).await {
            return;
        }
        if let Some(d) = lock(&self.dirs).remove(&pid) {
            d.remove();
        }
        shim::remove_stale_socket(&w.conn.address);
    }

    /// After a clean delete of task `task_id`: when `conn` is a pool shim that now serves
    /// nothing (`still_serving` false: no other task uses it) and the pool has room, it goes
    /// back to the pool (idle, with a new idle timer) instead of shutting down. Whether it
    /// did.
    pub fn recycle(self: &Arc<Self>, conn: &Arc<ShimConn>, task_id: &str, still_serving: bool) -> bool {
        let pid = conn.shim_pid;
        let Some((id, key)) = lock(&self.dirs).get(&pid).and_then(|d| d.origin.clone()) else {
            return false;
        };
        if still_serving || !shim::pid_alive(pid) {
            return false;
        }
        let mut slots = lock(&self.slots);
        if slots.closed || slots.have(&key) >= self.size {
            return false;
        }
        tracing::debug!(namespace = %key.0, task = %task_id, id = %id, pid, "pool shim back in the pool");
        let idle_gen = self.arm_idle_timer(&key);
        slots.idle.entry(key).or_default().push(Warm {
            id,
            conn: conn.clone(),
            idle_gen,
        });
        true
    }

    /// The shim `pid` exited: forget it (when it was a pool shim) and remove its dir.
    pub fn shim_died(&self, pid: u32) {
        if let Some(d) = lock(&self.dirs).remove(&pid) {
            d.remove();
        }
        for list in lock(&self.slots).idle.values_mut() {
            list.retain(|w| w.conn.shim_pid != pid);
        }
    }

    /// Daemon shutdown: no more pool shims; the waiting background tasks end, the starts in
    /// flight get up to `wait_starting` to finish (each stops its shim), and every idle shim
    /// is shut down (never a shim that serves a task).
    pub async fn close(&self, wait_starting: Duration) {
        lock(&self.slots).closed = true;
        self.closing.cancel();
        self.work.close();
        if tokio::time::timeout(wait_starting, self.work.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = self.work.len(),
                "pool shim starts still running at shutdown"
            );
        }
        let idle: Vec<(PoolKey, Warm)> = lock(&self.slots)
            .idle
            .drain()
            .flat_map(|(k, v)| v.into_iter().map(move |w| (k.clone(), w)))
            .collect();
        let n = idle.len();
        futures::future::join_all(
            idle.into_iter()
                .map(|(k, w)| async move { self.stop(&k.0, w).await }),
        )
        .await;
        if n > 0 {
            tracing::info!(shims = n, "idle pool shims stopped");
        }
    }

    /// Recovery, after the tasks': every pool dir left by an earlier run. A shim that serves
    /// a recovered task (its address is a known connection) keeps its dir until it exits;
    /// any other is shut down (an idle pool shim is never taken for a task) and its dir
    /// removed.
    pub async fn recover(&self) {
        let Ok(namespaces) = std::fs::read_dir(&self.root) else {
            return;
        };
        for ns in namespaces.flatten() {
            let ns_name = ns.file_name().to_string_lossy().into_owned();
            let Ok(dirs) = std::fs::read_dir(ns.path()) else {
                continue;
            };
            for d in dirs.flatten() {
                let id = d.file_name().to_string_lossy().into_owned();
                self.recover_dir(&ns_name, &id, d.path()).await;
            }
            let _ = std::fs::remove_dir(ns.path());
        }
    }

    async fn recover_dir(&self, ns: &str, id: &str, dir: PathBuf) {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .ok()
                .map(|s| s.trim().to_owned())
        };
        let address = read(bundle::ADDRESS);
        let pid = read(bundle::SHIM_PID)
            .and_then(|p| p.parse::<u32>().ok())
            .filter(|p| *p > 1);
        if let Some(conn) = address.as_deref().and_then(|a| self.conns.get(a)) {
            tracing::info!(
                namespace = ns,
                id,
                pid = conn.shim_pid,
                "pool shim serves a recovered task"
            );
            let b = Bundle {
                namespace: ns.to_owned(),
                id: id.to_owned(),
                path: dir.clone(),
                work: dir.clone(),
            };
            let log = shim::forward_log(&b);
            let origin = read(bundle::SHIM_BINARY_PATH)
                .map(|bin| (id.to_owned(), (ns.to_owned(), PathBuf::from(bin))));
            self.keep_dir(conn.shim_pid, PoolDir { dir, log, origin });
            return;
        }
        let mut stopped = false;
        if let (Some(address), Some(pid)) = (&address, pid)
            && shim::pid_alive(pid)
        {
            let connected = tokio::time::timeout(STOP_WAIT, ttrpc::r#async::Client::connect(address)).await;
            if let Ok(Ok(c)) = connected {
                if !stop_idle(&TaskClient::new(c), ns, id, pid, false).await {
                    // It serves something after all (a task recovery skipped): leave it.
                    tracing::warn!(
                        namespace = ns,
                        id,
                        pid,
                        "pool shim ignored Shutdown, left running"
                    );
                    return;
                }
                stopped = true;
            }
        }
        if !stopped {
            // Never connected, or unreachable: kill whatever runs in the dir.
            let mut pids = shim::shim_pids_in(&dir, ns, id);
            pids.extend(pid.filter(|p| !pids.contains(p) && shim::pid_alive(*p)));
            for p in pids {
                if !self.conns.serves_pid(p)
                    && let Err(e) = shim::kill_pid(p, STOP_WAIT).await
                {
                    tracing::warn!(namespace = ns, id, pid = p, error = %e, "kill stale pool shim");
                }
            }
        }
        if let Some(address) = &address {
            shim::remove_stale_socket(address);
        }
        tracing::info!(namespace = ns, id, "stale pool shim cleaned up");
        PoolDir {
            dir,
            log: None,
            origin: None,
        }
        .remove();
    }
}

/// Shutdown of a shim that serves no task (the runc shim exits; one that does serve a task
/// ignores it), then wait for `pid` to exit; when it has not after [`STOP_WAIT`], SIGKILL it
/// if `kill` (a shim known idle). Whether it is gone.
async fn stop_idle(client: &TaskClient, ns: &str, id: &str, pid: u32, kill: bool) -> bool {
    let req = pb::ShutdownRequest {
        id: id.to_owned(),
        ..Default::default()
    };
    if let Err(e) = client.shutdown(shim::context(ns, Some(STOP_WAIT)), &req).await {
        tracing::debug!(id, error = %e, "pool shim shutdown");
    }
    if tokio::time::timeout(STOP_WAIT, shim::wait_pid_exit(pid))
        .await
        .is_ok()
    {
        return true;
    }
    if !kill {
        return false;
    }
    tracing::warn!(id, pid, "pool shim did not exit after Shutdown, killing it");
    match shim::kill_pid(pid, STOP_WAIT).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(id, pid, error = %e, "kill pool shim");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bundle::SpecFacts;
    use super::*;
    use prost::Message as _;
    use taskd_proto::containerd::types::runc::options::Options;

    fn runc_options(o: Options) -> prost_types::Any {
        prost_types::Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: o.encode_to_vec(),
        }
    }

    #[test]
    fn only_creates_that_start_would_give_a_shim_of_their_own() {
        let plain = CreateOpts::default();
        assert!(eligible(&plain, &SpecFacts::of(b"{}")));
        // ctr sends empty runc options; a BinaryName etc. are per container (Create), fine.
        let ctr = CreateOpts {
            runtime_options: Some(runc_options(Options {
                binary_name: "runc".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(eligible(&ctr, &SpecFacts::of(b"{}")));
        // `start` puts the shim in a cgroup: a warm shim is not in it.
        let cgroup = CreateOpts {
            task_options: Some(runc_options(Options {
                shim_cgroup: "/pod".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(!eligible(&cgroup, &SpecFacts::of(b"{}")));
        let unknown = CreateOpts {
            runtime_options: Some(prost_types::Any {
                type_url: "example.com/Other".into(),
                value: vec![1, 2],
            }),
            ..Default::default()
        };
        assert!(!eligible(&unknown, &SpecFacts::of(b"{}")));
        // A runc group: only `start` finds the group's shim.
        assert!(!eligible(
            &plain,
            &SpecFacts::of(br#"{"annotations":{"io.containerd.runc.v2.group":"g"}}"#)
        ));
        // A CRI pod's container: its pod's shim is found among the tasks (by sandbox id).
        assert!(eligible(
            &plain,
            &SpecFacts::of(br#"{"annotations":{"io.kubernetes.cri.sandbox-id":"sb"}}"#)
        ));
        assert!(!eligible(&plain, &SpecFacts::of(b"not json")));
    }

    #[test]
    fn pool_ids_are_valid_identifiers_and_distinct() {
        let (a, b) = (pool_id(0), pool_id(1));
        assert_ne!(a, b);
        crate::identifiers::validate("id", &a).unwrap();
    }
}

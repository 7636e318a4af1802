//! The ttrpc side: one [`ShimConn`] per shim (shared by every task the shim runs — the
//! containers of one pod), and [`ShimTask`] / [`ShimProcess`] speaking
//! `containerd.task.v2.Task` over it.
//!
//! Task lifecycle as the manager sees it:
//!
//! ```text
//!             create (start shim, connect, Create)
//!                  │
//!                  ▼
//!   ┌──────── live: calls go to the shim ─────────┐
//!   │ shim process exits (pidfd)                  │ delete: shim Delete → Shutdown
//!   ▼                                             ▼
//! dead: `<shim> delete` ran, bundle removed,    gone (bundle removed; the shim
//!       /tasks/exit published, state = Stopped    published /tasks/delete itself)
//!   │ delete
//!   ▼
//! gone (/tasks/delete published by taskd)
//! ```

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use taskd_proto::ttrpc::v2::{shim as pb, shim_ttrpc::TaskClient, task as pbtask};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::bundle::{self, Bundle};
use crate::errdefs::{Kind, Remote};
use crate::runtime::{
    ExecOpts, Exit, Process, ProcessInfo, Result, RuntimeError, State, Status, Stdio, Task,
};

/// The ttrpc metadata key for the namespace (containerd's `namespaces.TTRPCHeader`).
const TTRPC_NAMESPACE: &str = "containerd-namespace-ttrpc";

/// How long a client's Wait waits for the dead-shim cleanup after the connection broke.
const DEAD_CLEANUP_WAIT: Duration = Duration::from_secs(90);

/// (namespace, id): how the manager's tables key a task.
pub type Key = (String, String);

/// Every task the manager knows, by key: shared by the manager and the scrape-time gauges.
pub type TaskTable = Mutex<HashMap<Key, Arc<ShimTask>>>;

/// Locks one of the runtime's short-lived tables. A panic while holding one cannot leave it
/// half-updated (every critical section is a single insert/remove/clone), so poison is
/// ignored.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Copies the lines a shim writes into its bundle's `log` fifo into taskd's log, until the
/// shim closes it; None when the bundle has no fifo.
pub fn forward_log(b: &Bundle) -> Option<JoinHandle<()>> {
    use tokio::io::AsyncBufReadExt;
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

/// A connection to one shim process.
pub struct ShimConn {
    pub address: String,
    pub client: TaskClient,
    pub shim_pid: u32,
    /// Ends by itself when the shim exits (never aborted: it runs the dead-shim cleanup).
    pub(super) _watcher: JoinHandle<()>,
}

/// A task served by a shim.
pub struct ShimTask {
    pub namespace: String,
    pub id: String,
    pub runtime: String,
    pub binary: PathBuf,
    pub bundle: Bundle,
    pub pid: AtomicU32,
    pub cgroups_path: Option<String>,
    /// The CRI sandbox the task belongs to (its tasks share one shim).
    pub group: Option<String>,
    /// `None` for a task whose shim was found dead at recovery.
    pub conn: Option<Arc<ShimConn>>,
    /// Set once the shim is gone and `<shim> delete` ran.
    pub dead: watch::Sender<Option<Exit>>,
    /// The last status taskd saw (for the `taskd_tasks` gauge, no shim call at scrape).
    pub status_hint: Mutex<Status>,
    pub(super) log_reader: Mutex<Option<JoinHandle<()>>>,
}

/// What a task is, from its bundle: where it lives and which shim binary serves it.
pub struct TaskSource {
    pub bundle: Bundle,
    pub runtime: String,
    pub binary: PathBuf,
    pub facts: bundle::SpecFacts,
}

impl ShimTask {
    /// A task its shim serves: init process `pid` (0 until the shim's Create answers), last
    /// seen in `status`, the shim's log forwarded by `log`.
    pub fn live(
        src: TaskSource,
        conn: Arc<ShimConn>,
        pid: u32,
        status: Status,
        log: Option<JoinHandle<()>>,
    ) -> ShimTask {
        ShimTask::of(src, Some(conn), pid, status, None, log)
    }

    /// A task whose shim is gone and whose `<shim> delete` gave `exit`.
    pub fn dead(src: TaskSource, exit: Exit) -> ShimTask {
        ShimTask::of(src, None, exit.pid, Status::Stopped, Some(exit), None)
    }

    fn of(
        src: TaskSource,
        conn: Option<Arc<ShimConn>>,
        pid: u32,
        status: Status,
        dead: Option<Exit>,
        log: Option<JoinHandle<()>>,
    ) -> ShimTask {
        ShimTask {
            namespace: src.bundle.namespace.clone(),
            id: src.bundle.id.clone(),
            runtime: src.runtime,
            binary: src.binary,
            bundle: src.bundle,
            pid: AtomicU32::new(pid),
            cgroups_path: src.facts.cgroups_path,
            group: src.facts.sandbox_id,
            conn,
            dead: watch::Sender::new(dead),
            status_hint: Mutex::new(status),
            log_reader: Mutex::new(log),
        }
    }
}

impl Drop for ShimTask {
    fn drop(&mut self) {
        self.stop_log();
    }
}

/// An exec process of a task.
pub struct ShimProcess {
    task: Arc<ShimTask>,
    exec_id: String,
}

pub fn from_pb_timestamp(ts: &protobuf::well_known_types::timestamp::Timestamp) -> SystemTime {
    let secs = u64::try_from(ts.seconds).unwrap_or(0);
    let nanos = u32::try_from(ts.nanos).unwrap_or(0);
    UNIX_EPOCH + Duration::new(secs, nanos)
}

pub fn to_pb_any(a: &prost_types::Any) -> protobuf::well_known_types::any::Any {
    let mut out = protobuf::well_known_types::any::Any::new();
    out.type_url = a.type_url.clone();
    out.value = a.value.clone();
    out
}

pub fn from_pb_any(a: &protobuf::well_known_types::any::Any) -> prost_types::Any {
    prost_types::Any {
        type_url: a.type_url.clone(),
        value: a.value.clone(),
    }
}

fn status_of(s: protobuf::EnumOrUnknown<pbtask::Status>) -> Status {
    match s.enum_value() {
        Ok(pbtask::Status::CREATED) => Status::Created,
        Ok(pbtask::Status::RUNNING) => Status::Running,
        Ok(pbtask::Status::STOPPED) => Status::Stopped,
        Ok(pbtask::Status::PAUSED) => Status::Paused,
        Ok(pbtask::Status::PAUSING) => Status::Pausing,
        Ok(pbtask::Status::UNKNOWN) | Err(_) => Status::Unknown,
    }
}

/// Maps a ttrpc error, keeping the shim's status kind.
pub fn map_err(id: &str, method: &'static str, e: ttrpc::Error) -> RuntimeError {
    match e {
        ttrpc::Error::RpcStatus(s) => RuntimeError::Shim {
            id: id.to_owned(),
            method,
            source: Remote {
                kind: Kind::from_code(s.code.value()),
                message: s.message,
            },
        },
        ttrpc::Error::RemoteClosed | ttrpc::Error::LocalClosed | ttrpc::Error::Eof => {
            RuntimeError::ShimClosed { id: id.to_owned() }
        }
        other => RuntimeError::ShimTransport {
            id: id.to_owned(),
            method,
            reason: other.to_string(),
        },
    }
}

/// A ttrpc context carrying the namespace (optionally with a timeout).
pub fn context(namespace: &str, timeout: Option<Duration>) -> ttrpc::context::Context {
    let mut ctx = match timeout {
        Some(t) => ttrpc::context::with_duration(t),
        None => ttrpc::context::with_timeout(0),
    };
    ctx.add(TTRPC_NAMESPACE.to_owned(), namespace.to_owned());
    ctx
}

/// Resolves when process `pid` has exited (pidfd; works for processes that are not our
/// children, which shims never are).
pub async fn wait_pid_exit(pid: u32) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(e);
    }
    let fd = i32::try_from(fd).map_err(std::io::Error::other)?;
    // SAFETY: fd was just returned by pidfd_open and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `owned` is a valid open fd that the AsyncFd owns for its whole life.
    let afd =
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
    let _ready = afd.readable().await?;
    Ok(())
}

/// SIGKILLs process `pid` through a pidfd (no race with pid reuse between the open and the
/// signal) and waits up to `timeout` for it to exit. Ok when it is gone (or already was).
pub async fn kill_pid(pid: u32, timeout: Duration) -> std::io::Result<()> {
    let raw = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(e);
    }
    let fd = i32::try_from(fd).map_err(std::io::Error::other)?;
    // SAFETY: fd was just returned by pidfd_open and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: pidfd_send_signal takes a pidfd, a signal, a null siginfo and flags 0.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd,
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    // SAFETY: `owned` is a valid open fd that the AsyncFd owns for its whole life.
    let afd =
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
    match tokio::time::timeout(timeout, afd.readable()).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("pid {pid} still alive {timeout:?} after SIGKILL"),
        )),
    }
}

/// The shim processes started for one bundle: every process whose working directory is
/// the bundle and whose arguments carry `-namespace NS` and `-id ID` (what `<shim> start`
/// gives the shim it daemonizes). For a shim taskd cannot reach, which cannot tell its pid.
pub fn shim_pids_in(bundle: &std::path::Path, namespace: &str, id: &str) -> Vec<u32> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    all.flatten()
        .filter(|p| p.pid != me)
        .filter(|p| p.cwd().is_ok_and(|c| c == bundle))
        .filter(|p| {
            let Ok(args) = p.cmdline() else {
                return false;
            };
            let has = |flag: &str, value: &str| args.windows(2).any(|w| w[0] == flag && w[1] == value);
            has("-namespace", namespace) && has("-id", id)
        })
        .filter_map(|p| u32::try_from(p.pid).ok())
        .collect()
}

/// Removes a dead shim's socket file (a killed shim cannot; its `delete` does not): only a
/// `unix://` path that is a socket nobody listens on any more.
pub fn remove_stale_socket(address: &str) {
    use std::os::unix::fs::FileTypeExt;
    let Some(path) = address.strip_prefix("unix://").filter(|p| p.starts_with('/')) else {
        return;
    };
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if !is_socket {
        return;
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::debug!(path, error = %e, "remove stale shim socket");
            }
        }
        _ => {}
    }
}

/// Asks a shim that serves no task to exit (errors are expected: it closes the connection
/// as it goes).
pub async fn shutdown_idle(conn: &ShimConn, namespace: &str) {
    let req = pb::ShutdownRequest::default();
    let ctx = context(namespace, Some(Duration::from_secs(5)));
    if let Err(e) = conn.client.shutdown(ctx, &req).await {
        tracing::debug!(address = %conn.address, error = %e, "shim shutdown");
    }
}

/// Whether `pid` is alive and not a zombie (for the scrape-time task gauge).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    pid != 0
        && procfs::process::Process::new(pid)
            .and_then(|p| p.stat())
            .is_ok_and(|s| s.state != 'Z' && s.state != 'X')
}

impl ShimTask {
    pub(super) fn stop_log(&self) {
        if let Ok(mut guard) = self.log_reader.lock()
            && let Some(h) = guard.take()
        {
            h.abort();
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    pub fn dead_exit(&self) -> Option<Exit> {
        *self.dead.borrow()
    }

    /// Records the init process's status. Stopped is final: a Start or Resume answer that
    /// arrives after the exit was seen (a short-lived process) must not undo it.
    fn set_hint(&self, s: Status) {
        if let Ok(mut g) = self.status_hint.lock()
            && *g != Status::Stopped
        {
            *g = s;
        }
    }

    pub fn hint(&self) -> Status {
        self.status_hint.lock().map(|g| *g).unwrap_or(Status::Unknown)
    }

    /// The init's status as last learned: Stopped once the shim died, else the hint.
    pub fn known_status(&self) -> Status {
        if self.dead_exit().is_some() {
            return Status::Stopped;
        }
        self.hint()
    }

    /// The client, or ProcessFinished when the shim is gone.
    fn client(&self, id: &str) -> Result<&TaskClient> {
        if self.dead_exit().is_some() {
            return Err(RuntimeError::ProcessFinished { id: id.to_owned() });
        }
        self.conn
            .as_ref()
            .map(|c| &c.client)
            .ok_or_else(|| RuntimeError::ProcessFinished { id: id.to_owned() })
    }

    fn ctx(&self) -> ttrpc::context::Context {
        context(&self.namespace, None)
    }

    fn name<'a>(&'a self, exec_id: &'a str) -> &'a str {
        if exec_id.is_empty() { &self.id } else { exec_id }
    }

    async fn state_of(&self, exec_id: &str) -> Result<State> {
        if let Some(exit) = self.dead_exit() {
            if !exec_id.is_empty() {
                return Err(RuntimeError::ProcessNotFound {
                    id: self.id.clone(),
                    exec_id: exec_id.to_owned(),
                });
            }
            return Ok(State {
                id: self.id.clone(),
                pid: self.pid(),
                status: Status::Stopped,
                io: Stdio::default(),
                exit_status: exit.status,
                exited_at: Some(exit.timestamp),
            });
        }
        let name = self.name(exec_id);
        let req = pb::StateRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        let r = self
            .client(name)?
            .state(self.ctx(), &req)
            .await
            .map_err(|e| map_err(name, "state", e))?;
        let status = status_of(r.status);
        if exec_id.is_empty() {
            self.set_hint(status);
        }
        Ok(State {
            id: name.to_owned(),
            pid: r.pid,
            status,
            io: Stdio {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                terminal: r.terminal,
            },
            exit_status: r.exit_status,
            exited_at: r
                .exited_at
                .as_ref()
                .filter(|t| t.seconds != 0 || t.nanos != 0)
                .map(from_pb_timestamp),
        })
    }

    async fn kill_of(&self, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let name = self.name(exec_id);
        let req = pb::KillRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            signal,
            all,
            ..Default::default()
        };
        self.client(name)?
            .kill(self.ctx(), &req)
            .await
            .map_err(|e| map_err(name, "kill", e))?;
        Ok(())
    }

    async fn resize_of(&self, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let name = self.name(exec_id);
        let req = pb::ResizePtyRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            width,
            height,
            ..Default::default()
        };
        self.client(name)?
            .resize_pty(self.ctx(), &req)
            .await
            .map_err(|e| map_err(name, "resize_pty", e))?;
        Ok(())
    }

    async fn close_io_of(&self, exec_id: &str) -> Result<()> {
        let name = self.name(exec_id);
        let req = pb::CloseIORequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            stdin: true,
            ..Default::default()
        };
        self.client(name)?
            .close_io(self.ctx(), &req)
            .await
            .map_err(|e| map_err(name, "close_io", e))?;
        Ok(())
    }

    async fn start_of(&self, exec_id: &str) -> Result<u32> {
        let name = self.name(exec_id);
        let req = pb::StartRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        let r = self
            .client(name)?
            .start(self.ctx(), &req)
            .await
            .map_err(|e| map_err(name, "start", e))?;
        if exec_id.is_empty() {
            self.set_hint(Status::Running);
        }
        Ok(r.pid)
    }

    async fn wait_of(&self, exec_id: &str) -> Result<Exit> {
        let name = self.name(exec_id).to_owned();
        let mut dead = self.dead.subscribe();
        if let Some(exit) = *dead.borrow() {
            return Ok(exit);
        }
        let client = self.client(&name)?.clone();
        let req = pb::WaitRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        let pid = if exec_id.is_empty() { self.pid() } else { 0 };
        let waited = tokio::select! {
            r = client.wait(self.ctx(), &req) => r,
            d = dead.wait_for(Option::is_some) => {
                return d.ok().and_then(|v| *v).ok_or(RuntimeError::ShimClosed { id: name });
            }
        };
        match waited {
            Ok(r) => {
                if exec_id.is_empty() {
                    self.set_hint(Status::Stopped);
                }
                Ok(Exit {
                    pid,
                    status: r.exit_status,
                    timestamp: r
                        .exited_at
                        .as_ref()
                        .map(from_pb_timestamp)
                        .unwrap_or_else(SystemTime::now),
                })
            }
            Err(e) => {
                let err = map_err(&name, "wait", e);
                if !matches!(
                    err,
                    RuntimeError::ShimClosed { .. } | RuntimeError::ShimTransport { .. }
                ) {
                    return Err(err);
                }
                // The shim died: the manager runs `<shim> delete` and records the exit.
                match tokio::time::timeout(DEAD_CLEANUP_WAIT, dead.wait_for(Option::is_some)).await {
                    Ok(Ok(v)) => (*v).ok_or(err),
                    _ => Err(err),
                }
            }
        }
    }

    async fn delete_of(&self, exec_id: &str) -> Result<Exit> {
        let name = self.name(exec_id);
        let req = pb::DeleteRequest {
            id: self.id.clone(),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        };
        let r = self
            .client(name)?
            .delete(self.ctx(), &req)
            .await
            .map_err(|e| map_err(name, "delete", e))?;
        Ok(Exit {
            pid: r.pid,
            status: r.exit_status,
            timestamp: r
                .exited_at
                .as_ref()
                .map(from_pb_timestamp)
                .unwrap_or_else(SystemTime::now),
        })
    }

    /// Asks the shim to exit if it serves no other task (errors are expected: the shim
    /// closes the connection as it goes).
    pub(super) async fn shutdown_shim(&self) {
        let Some(conn) = &self.conn else { return };
        let req = pb::ShutdownRequest {
            id: self.id.clone(),
            ..Default::default()
        };
        let ctx = context(&self.namespace, Some(Duration::from_secs(5)));
        if let Err(e) = conn.client.shutdown(ctx, &req).await {
            tracing::debug!(id = %self.id, error = %e, "shim shutdown");
        }
    }

    /// Deletes the init process in the shim.
    pub(super) async fn delete_init(&self) -> Result<Exit> {
        let exit = self.delete_of("").await?;
        self.set_hint(Status::Stopped);
        Ok(exit)
    }
}

#[async_trait::async_trait]
impl Process for ShimProcess {
    fn id(&self) -> &str {
        &self.exec_id
    }
    async fn state(&self) -> Result<State> {
        self.task.state_of(&self.exec_id).await
    }
    async fn kill(&self, signal: u32, all: bool) -> Result<()> {
        self.task.kill_of(&self.exec_id, signal, all).await
    }
    async fn resize_pty(&self, width: u32, height: u32) -> Result<()> {
        self.task.resize_of(&self.exec_id, width, height).await
    }
    async fn close_io(&self) -> Result<()> {
        self.task.close_io_of(&self.exec_id).await
    }
    async fn start(&self) -> Result<u32> {
        self.task.start_of(&self.exec_id).await
    }
    async fn wait(&self) -> Result<Exit> {
        self.task.wait_of(&self.exec_id).await
    }
    async fn delete(&self) -> Result<Exit> {
        self.task.delete_of(&self.exec_id).await
    }
}

/// `Task` for `Arc<ShimTask>`: exec and process need the `Arc` to hand out processes.
pub struct TaskHandle(pub Arc<ShimTask>);

#[async_trait::async_trait]
impl Process for TaskHandle {
    fn id(&self) -> &str {
        &self.0.id
    }
    async fn state(&self) -> Result<State> {
        self.0.state_of("").await
    }
    async fn kill(&self, signal: u32, all: bool) -> Result<()> {
        self.0.kill_of("", signal, all).await
    }
    async fn resize_pty(&self, width: u32, height: u32) -> Result<()> {
        self.0.resize_of("", width, height).await
    }
    async fn close_io(&self) -> Result<()> {
        self.0.close_io_of("").await
    }
    async fn start(&self) -> Result<u32> {
        self.0.start_of("").await
    }
    async fn wait(&self) -> Result<Exit> {
        self.0.wait_of("").await
    }
    async fn delete(&self) -> Result<Exit> {
        Err(RuntimeError::InvalidArgument {
            field: "exec_id",
            reason: "the init process is deleted with the task".into(),
        })
    }
}

#[async_trait::async_trait]
impl Task for TaskHandle {
    fn namespace(&self) -> &str {
        &self.0.namespace
    }
    fn pid(&self) -> u32 {
        self.0.pid()
    }
    fn runtime(&self) -> &str {
        &self.0.runtime
    }
    fn cgroups_path(&self) -> Option<String> {
        self.0.cgroups_path.clone()
    }
    fn last_status(&self) -> Status {
        self.0.known_status()
    }
    async fn pause(&self) -> Result<()> {
        let t = &self.0;
        let req = pb::PauseRequest {
            id: t.id.clone(),
            ..Default::default()
        };
        t.client(&t.id)?
            .pause(t.ctx(), &req)
            .await
            .map_err(|e| map_err(&t.id, "pause", e))?;
        t.set_hint(Status::Paused);
        Ok(())
    }
    async fn resume(&self) -> Result<()> {
        let t = &self.0;
        let req = pb::ResumeRequest {
            id: t.id.clone(),
            ..Default::default()
        };
        t.client(&t.id)?
            .resume(t.ctx(), &req)
            .await
            .map_err(|e| map_err(&t.id, "resume", e))?;
        t.set_hint(Status::Running);
        Ok(())
    }
    async fn exec(&self, exec_id: &str, opts: ExecOpts) -> Result<Arc<dyn Process>> {
        let t = &self.0;
        let req = pb::ExecProcessRequest {
            id: t.id.clone(),
            exec_id: exec_id.to_owned(),
            terminal: opts.io.terminal,
            stdin: opts.io.stdin,
            stdout: opts.io.stdout,
            stderr: opts.io.stderr,
            spec: protobuf::MessageField::some(to_pb_any(&opts.spec)),
            ..Default::default()
        };
        t.client(exec_id)?
            .exec(t.ctx(), &req)
            .await
            .map_err(|e| map_err(exec_id, "exec", e))?;
        Ok(Arc::new(ShimProcess {
            task: t.clone(),
            exec_id: exec_id.to_owned(),
        }))
    }
    async fn process(&self, exec_id: &str) -> Result<Arc<dyn Process>> {
        let p = ShimProcess {
            task: self.0.clone(),
            exec_id: exec_id.to_owned(),
        };
        p.state().await?;
        Ok(Arc::new(p))
    }
    async fn pids(&self) -> Result<Vec<ProcessInfo>> {
        let t = &self.0;
        let req = pb::PidsRequest {
            id: t.id.clone(),
            ..Default::default()
        };
        let r = t
            .client(&t.id)?
            .pids(t.ctx(), &req)
            .await
            .map_err(|e| map_err(&t.id, "pids", e))?;
        Ok(r.processes
            .iter()
            .map(|p| ProcessInfo {
                pid: p.pid,
                info: p.info.as_ref().map(from_pb_any),
            })
            .collect())
    }
    async fn checkpoint(&self, path: &str, options: Option<prost_types::Any>) -> Result<()> {
        let t = &self.0;
        let req = pb::CheckpointTaskRequest {
            id: t.id.clone(),
            path: path.to_owned(),
            options: options.as_ref().map(to_pb_any).into(),
            ..Default::default()
        };
        t.client(&t.id)?
            .checkpoint(t.ctx(), &req)
            .await
            .map_err(|e| map_err(&t.id, "checkpoint", e))?;
        Ok(())
    }
    async fn update(
        &self,
        resources: Option<prost_types::Any>,
        annotations: HashMap<String, String>,
    ) -> Result<()> {
        let t = &self.0;
        let req = pb::UpdateTaskRequest {
            id: t.id.clone(),
            resources: resources.as_ref().map(to_pb_any).into(),
            annotations,
            ..Default::default()
        };
        t.client(&t.id)?
            .update(t.ctx(), &req)
            .await
            .map_err(|e| map_err(&t.id, "update", e))?;
        Ok(())
    }
    async fn stats(&self) -> Result<Option<prost_types::Any>> {
        let t = &self.0;
        let req = pb::StatsRequest {
            id: t.id.clone(),
            ..Default::default()
        };
        let r = t
            .client(&t.id)?
            .stats(t.ctx(), &req)
            .await
            .map_err(|e| map_err(&t.id, "stats", e))?;
        Ok(r.stats.as_ref().map(from_pb_any))
    }
}

//! The TaskService: containers (a pod's shim serves all of them) and their exec processes,
//! driven through runc. State sits behind one std mutex that is never held across an await;
//! runc runs outside it. Exits come from the shim's reaper through one task ([`reap`]).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::asynchronous::io::Stdio;
use containerd_shim::monitor::{Subject, Topic, monitor_subscribe};
use containerd_shim::util::timestamp;
use containerd_shim_protos::api::{self, Empty};
use containerd_shim_protos::events::task::{
    TaskCheckpointed, TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM,
    TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{EnumOrUnknown, Message, MessageField};
use containerd_shim_protos::shim::oci::Options;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::{self, r#async::TtrpcContext};
use containerd_shim_protos::types::task::{ProcessInfo, Status};
use log::{debug, warn};
use runc::Runc;
use runc::options::{CreateOpts, DeleteOpts, KillOpts};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::error::ServiceError;
use crate::events::Publisher;
use crate::stdio::{self, ProcIo};
use crate::{oom, runcx};

/// Exits whose process is not known yet (a start still running), kept for it: at most this
/// many, for at most [`ORPHAN_TTL`] (pids are reused, a stale exit must not end a new
/// process).
const ORPHAN_EXITS: usize = 256;
const ORPHAN_TTL: Duration = Duration::from_secs(10);

type Res<T> = std::result::Result<T, ServiceError>;

struct Proc {
    pid: u32,
    status: Status,
    /// A start is running: its exit waits for the start to publish TaskStart first.
    starting: bool,
    exit: Option<(u32, Timestamp)>,
    stdio: Stdio,
    io: Option<ProcIo>,
    exited: watch::Sender<bool>,
    /// The exec's process spec (JSON, as the request had it), for `runc exec`.
    spec: Option<Vec<u8>>,
}

impl Proc {
    fn new(stdio: Stdio) -> Proc {
        Proc {
            pid: 0,
            status: Status::CREATED,
            starting: false,
            exit: None,
            stdio,
            io: None,
            exited: watch::channel(false).0,
            spec: None,
        }
    }

    fn state_name(&self) -> &'static str {
        match self.status {
            Status::CREATED => "created",
            Status::RUNNING => "running",
            Status::STOPPED => "stopped",
            Status::PAUSED => "paused",
            Status::PAUSING => "pausing",
            Status::UNKNOWN => "unknown",
        }
    }
}

struct Container {
    bundle: PathBuf,
    rootfs_mounted: bool,
    runc: Arc<Runc>,
    opts: Options,
    init: Proc,
    execs: HashMap<String, Proc>,
    oom: Option<JoinHandle<()>>,
    /// The init's cgroup as Stats loaded it, with the pid it was loaded for (see
    /// [`crate::stats::CgroupCache`]).
    cgroup: crate::stats::CgroupCache,
}

impl Container {
    fn proc(&self, id: &str, exec_id: &str) -> Res<&Proc> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs.get(exec_id).ok_or(ServiceError::ExecNotFound {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
        })
    }
    fn proc_mut(&mut self, id: &str, exec_id: &str) -> Res<&mut Proc> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs.get_mut(exec_id).ok_or(ServiceError::ExecNotFound {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
        })
    }
}

#[derive(Default)]
struct State {
    containers: HashMap<String, Container>,
    orphans: VecDeque<(u32, i32, Timestamp, std::time::Instant)>,
}

pub struct Inner {
    state: Mutex<State>,
    publisher: Publisher,
    namespace: String,
    exit: Arc<ExitSignal>,
    oom_tx: mpsc::UnboundedSender<String>,
}

#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
    /// The reaper and OOM tasks; they end with the shim.
    _tasks: Arc<Vec<JoinHandle<()>>>,
}

fn runc_err(op: &'static str, id: &str, bundle: &Path, e: runc::error::Error) -> ServiceError {
    ServiceError::Runc {
        op,
        id: id.to_owned(),
        msg: runcx::describe(&e, bundle),
    }
}

/// Runs a call that changes a process's state to its end even when its caller goes: ttrpc
/// drops the handler of a request whose connection closes (the daemon killed mid-call), and
/// a create, start or delete cut at an await would leave its process half made, or
/// "starting" for good, which nothing can start, kill or delete again (found by
/// tests/soak.rs). The task is not detached for long: it ends with the call, which runc's
/// own run bounds.
async fn to_end<T: Send + 'static>(
    op: &'static str,
    id: &str,
    call: impl std::future::Future<Output = Res<T>> + Send + 'static,
) -> Res<T> {
    tokio::spawn(call).await.map_err(|e| ServiceError::Aborted {
        op,
        id: id.to_owned(),
        msg: e.to_string(),
    })?
}

fn ts_now() -> Timestamp {
    timestamp().unwrap_or_default()
}

impl Service {
    pub async fn new(publisher: Publisher, namespace: String, exit: Arc<ExitSignal>) -> Service {
        let (oom_tx, mut oom_rx) = mpsc::unbounded_channel::<String>();
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            publisher,
            namespace,
            exit,
            oom_tx,
        });
        let mut tasks = Vec::new();
        match monitor_subscribe(Topic::Pid).await {
            Ok(mut sub) => {
                let i = inner.clone();
                tasks.push(tokio::spawn(async move {
                    while let Some(e) = sub.rx.recv().await {
                        if let Subject::Pid(pid) = e.subject {
                            i.on_exit(pid as u32, e.exit_code, ts_now());
                        }
                    }
                }));
            }
            Err(e) => warn!("no exit monitor: {e}"),
        }
        let i = inner.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(id) = oom_rx.recv().await {
                i.publish(
                    topics::TASK_OOM_EVENT_TOPIC,
                    TaskOOM {
                        container_id: id,
                        ..Default::default()
                    },
                );
            }
        }));
        Service {
            inner,
            _tasks: Arc::new(tasks),
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere (panic=abort in release anyway).
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publish<M: Message>(&self, topic: &str, ev: M) {
        self.publisher.publish(topic, ev);
    }

    /// A reaped child: the process it was (if any) exits, else it is kept for a start.
    fn on_exit(&self, pid: u32, code: i32, at: Timestamp) {
        if runcx::forget(pid) {
            return;
        }
        let mut st = self.lock();
        let mut hit = None;
        for (cid, c) in &mut st.containers {
            let procs =
                std::iter::once(("", &mut c.init)).chain(c.execs.iter_mut().map(|(k, p)| (k.as_str(), p)));
            for (eid, p) in procs {
                if p.pid == pid && p.exit.is_none() && !p.starting {
                    hit = Some((cid.clone(), eid.to_owned()));
                    break;
                }
            }
            if hit.is_some() {
                break;
            }
        }
        match hit {
            Some((cid, eid)) => self.exited(&mut st, &cid, &eid, code, at),
            None => {
                Inner::expire_orphans(&mut st);
                if st.orphans.len() >= ORPHAN_EXITS {
                    st.orphans.pop_front();
                }
                st.orphans.push_back((pid, code, at, std::time::Instant::now()));
            }
        }
    }

    fn exited(&self, st: &mut State, cid: &str, eid: &str, code: i32, at: Timestamp) {
        let Some(c) = st.containers.get_mut(cid) else {
            return;
        };
        let Ok(p) = c.proc_mut(cid, eid) else {
            return;
        };
        p.exit = Some((code as u32, at.clone()));
        p.status = Status::STOPPED;
        p.exited.send_replace(true);
        let pid = p.pid;
        debug!("{cid}/{eid} pid {pid} exited {code}");
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            TaskExit {
                container_id: cid.to_owned(),
                id: if eid.is_empty() {
                    cid.to_owned()
                } else {
                    eid.to_owned()
                },
                pid,
                exit_status: code as u32,
                exited_at: MessageField::some(at),
                ..Default::default()
            },
        );
    }

    /// The exit the reaper saw for `pid` before its start finished, if any.
    fn take_orphan(st: &mut State, pid: u32) -> Option<(i32, Timestamp)> {
        Inner::expire_orphans(st);
        let i = st.orphans.iter().position(|(p, ..)| *p == pid)?;
        st.orphans.remove(i).map(|(_, c, t, _)| (c, t))
    }

    fn expire_orphans(st: &mut State) {
        while st.orphans.front().is_some_and(|o| o.3.elapsed() > ORPHAN_TTL) {
            st.orphans.pop_front();
        }
    }

    fn with<T>(&self, id: &str, f: impl FnOnce(&mut Container) -> Res<T>) -> Res<T> {
        let mut st = self.lock();
        let c = st
            .containers
            .get_mut(id)
            .ok_or(ServiceError::NotFound { id: id.to_owned() })?;
        f(c)
    }
}

fn stdio_of(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Stdio {
    Stdio::new(stdin, stdout, stderr, terminal)
}

fn options_of(id: &str, any: &MessageField<Any>) -> Res<Options> {
    match any.as_ref() {
        Some(a) if !a.value.is_empty() => {
            Options::parse_from_bytes(&a.value).map_err(|e| ServiceError::Invalid {
                id: id.to_owned(),
                reason: format!("runtime options {}: {e}", a.type_url),
            })
        }
        _ => Ok(Options::default()),
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

async fn mount_rootfs(id: &str, bundle: &Path, mounts: &[api::Mount]) -> Res<bool> {
    if mounts.is_empty() {
        return Ok(false);
    }
    let target = bundle.join("rootfs");
    let ms: Vec<_> = mounts.to_vec();
    let id2 = id.to_owned();
    tokio::task::spawn_blocking(move || -> Res<()> {
        let merr = |e: &dyn std::fmt::Display| ServiceError::Mount {
            id: id2.clone(),
            msg: e.to_string(),
        };
        std::fs::create_dir_all(&target).map_err(|e| merr(&e))?;
        for m in &ms {
            containerd_shim::mount::mount_rootfs(
                Some(m.type_.as_str()).filter(|t| !t.is_empty()),
                Some(m.source.as_str()).filter(|s| !s.is_empty()),
                &m.options,
                &target,
            )
            .map_err(|e| merr(&e))?;
        }
        Ok(())
    })
    .await
    .map_err(|e| ServiceError::Mount {
        id: id.to_owned(),
        msg: e.to_string(),
    })??;
    Ok(true)
}

fn unmount_rootfs(bundle: &Path) {
    let target = bundle.join("rootfs");
    if let Some(t) = target.to_str()
        && let Err(e) = containerd_shim::mount::umount_recursive(Some(t), libc::MNT_DETACH)
    {
        warn!("unmount {t}: {e}");
    }
}

impl Service {
    async fn create(&self, req: api::CreateTaskRequest) -> Res<u32> {
        let id = req.id.clone();
        if id.is_empty() || req.bundle.is_empty() {
            return Err(ServiceError::Invalid {
                id,
                reason: "id and bundle are required".into(),
            });
        }
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.join("config.json").is_file() {
            return Err(ServiceError::Invalid {
                id,
                reason: format!("bundle {} has no config.json", bundle.display()),
            });
        }
        if self.inner.lock().containers.contains_key(&id) {
            return Err(ServiceError::Exists { id });
        }
        if !req.checkpoint.is_empty() {
            return Err(ServiceError::Unsupported {
                op: "create from checkpoint",
            });
        }
        let opts = options_of(&id, &req.options)?;
        let runc = Arc::new(
            runcx::client(&self.inner.namespace, &bundle, &opts)
                .map_err(|e| runc_err("client", &id, &bundle, e))?,
        );
        let stdio = stdio_of(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let mounted = mount_rootfs(&id, &bundle, &req.rootfs).await?;
        let undo = |e: ServiceError| {
            if mounted {
                unmount_rootfs(&bundle);
            }
            e
        };
        let pending = stdio::prepare(
            &stdio,
            opts.io_uid,
            opts.io_gid,
            &id,
            &self.inner.namespace,
            &std::env::temp_dir(),
        )
        .map_err(|source| {
            undo(ServiceError::Stdio {
                id: id.clone(),
                source,
            })
        })?;
        let pid_file = bundle.join("init.pid");
        let mut copts = CreateOpts::new()
            .pid_file(&pid_file)
            .no_pivot(opts.no_pivot_root)
            .no_new_keyring(opts.no_new_keyring);
        if let Some(io) = &pending.runc_io {
            copts = copts.io(io.clone());
        }
        if let Some((_, path)) = &pending.console {
            copts = copts.console_socket(path);
        }
        if let Err(e) = runc.create(&id, &bundle, Some(&copts)).await {
            return Err(undo(runc_err("create", &id, &bundle, e)));
        }
        let io = match stdio::finish(pending, &stdio).await {
            Ok(io) => io,
            Err(source) => {
                let _ = runc.delete(&id, Some(&DeleteOpts::new().force(true))).await;
                return Err(undo(ServiceError::Stdio { id, source }));
            }
        };
        let pid = read_pid(&pid_file).unwrap_or(0);
        let oom = match oom::watch(pid, id.clone(), self.inner.oom_tx.clone()) {
            Ok(h) => Some(h),
            Err(e) => {
                warn!("{id}: no OOM notification: {e}");
                None
            }
        };
        let mut init = Proc::new(stdio.clone());
        init.pid = pid;
        init.io = Some(io);
        {
            let mut st = self.inner.lock();
            st.containers.insert(
                id.clone(),
                Container {
                    bundle: bundle.clone(),
                    rootfs_mounted: mounted,
                    runc,
                    opts,
                    init,
                    execs: HashMap::new(),
                    oom,
                    cgroup: crate::stats::CgroupCache::default(),
                },
            );
            self.inner.publish(
                topics::TASK_CREATE_EVENT_TOPIC,
                TaskCreate {
                    container_id: id.clone(),
                    bundle: req.bundle.clone(),
                    rootfs: req.rootfs.clone(),
                    io: MessageField::some(TaskIO {
                        stdin: req.stdin.clone(),
                        stdout: req.stdout.clone(),
                        stderr: req.stderr.clone(),
                        terminal: req.terminal,
                        ..Default::default()
                    }),
                    checkpoint: req.checkpoint.clone(),
                    pid,
                    ..Default::default()
                },
            );
            // An init that died between create and here.
            if let Some((code, at)) = Inner::take_orphan(&mut st, pid) {
                self.inner.exited(&mut st, &id, "", code, at);
            }
        }
        Ok(pid)
    }

    async fn start(&self, id: &str, exec_id: &str) -> Res<u32> {
        let (runc, bundle, spec, stdio, opts) = self.inner.with(id, |c| {
            let (runc, bundle, opts) = (c.runc.clone(), c.bundle.clone(), c.opts.clone());
            let p = c.proc_mut(id, exec_id)?;
            if p.status != Status::CREATED || p.starting {
                return Err(ServiceError::State {
                    id: id.to_owned(),
                    exec_id: exec_id.to_owned(),
                    state: if p.starting { "starting" } else { p.state_name() },
                    what: "only a created process can be started",
                });
            }
            p.starting = true;
            Ok((runc, bundle, p.spec.clone(), p.stdio.clone(), opts))
        })?;
        let result = if exec_id.is_empty() {
            runc.start(id)
                .await
                .map(|_| ())
                .map_err(|e| runc_err("start", id, &bundle, e))
        } else {
            self.exec_start(id, exec_id, &bundle, spec, &stdio, &opts).await
        };
        let mut st = self.inner.lock();
        let Some(c) = st.containers.get_mut(id) else {
            return Err(ServiceError::NotFound { id: id.to_owned() });
        };
        let Ok(p) = c.proc_mut(id, exec_id) else {
            return Err(ServiceError::ExecNotFound {
                id: id.to_owned(),
                exec_id: exec_id.to_owned(),
            });
        };
        p.starting = false;
        if let Err(e) = result {
            if !exec_id.is_empty() {
                // A failed exec is stopped, with nothing to wait for.
                p.status = Status::STOPPED;
                p.exit = Some((255, ts_now()));
                p.exited.send_replace(true);
            }
            return Err(e);
        }
        if p.exit.is_none() {
            p.status = Status::RUNNING;
        }
        let pid = p.pid;
        if exec_id.is_empty() {
            self.inner.publish(
                topics::TASK_START_EVENT_TOPIC,
                TaskStart {
                    container_id: id.to_owned(),
                    pid,
                    ..Default::default()
                },
            );
        } else {
            self.inner.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                TaskExecStarted {
                    container_id: id.to_owned(),
                    exec_id: exec_id.to_owned(),
                    pid,
                    ..Default::default()
                },
            );
        }
        if let Some((code, at)) = Inner::take_orphan(&mut st, pid) {
            self.inner.exited(&mut st, id, exec_id, code, at);
        }
        Ok(pid)
    }

    async fn exec_start(
        &self,
        id: &str,
        exec_id: &str,
        bundle: &Path,
        spec: Option<Vec<u8>>,
        stdio: &Stdio,
        opts: &Options,
    ) -> Res<()> {
        let spec = spec.ok_or(ServiceError::Invalid {
            id: id.to_owned(),
            reason: format!("exec {exec_id} has no process spec"),
        })?;
        let pending = stdio::prepare(
            stdio,
            opts.io_uid,
            opts.io_gid,
            id,
            &self.inner.namespace,
            &std::env::temp_dir(),
        )
        .map_err(|source| ServiceError::Stdio {
            id: id.to_owned(),
            source,
        })?;
        let pid_file = bundle.join(format!("{exec_id}.pid"));
        let exec = runcx::Exec {
            id,
            spec: &spec,
            spec_file: &bundle.join(format!("{exec_id}.process.json")),
            pid_file: &pid_file,
            console: pending.console.as_ref().map(|(_, path)| path.as_path()),
            io: pending.runc_io.as_ref(),
        };
        let ran = exec.run(&self.inner.namespace, bundle, opts).await;
        let pid = read_pid(&pid_file).unwrap_or(0);
        let _ = std::fs::remove_file(&pid_file);
        ran.map_err(|e| runc_err("exec", id, bundle, e))?;
        let io = stdio::finish(pending, stdio)
            .await
            .map_err(|source| ServiceError::Stdio {
                id: id.to_owned(),
                source,
            })?;
        self.inner.with(id, |c| {
            let p = c.proc_mut(id, exec_id)?;
            p.pid = pid;
            p.io = Some(io);
            Ok(())
        })
    }

    async fn delete(&self, id: &str, exec_id: &str) -> Res<(u32, u32, Timestamp)> {
        if !exec_id.is_empty() {
            let mut p = self.inner.with(id, |c| {
                let p = c.proc(id, exec_id)?;
                if matches!(p.status, Status::RUNNING | Status::PAUSED) || p.starting {
                    return Err(ServiceError::State {
                        id: id.to_owned(),
                        exec_id: exec_id.to_owned(),
                        state: p.state_name(),
                        what: "cannot delete a running process",
                    });
                }
                c.execs.remove(exec_id).ok_or(ServiceError::ExecNotFound {
                    id: id.to_owned(),
                    exec_id: exec_id.to_owned(),
                })
            })?;
            if let Some(io) = p.io.as_mut() {
                io.shutdown().await;
            }
            let (code, at) = p.exit.clone().unwrap_or((0, ts_now()));
            return Ok((p.pid, code, at));
        }
        let (runc, bundle, status) = self.inner.with(id, |c| {
            if c.init.starting {
                return Err(ServiceError::State {
                    id: id.to_owned(),
                    exec_id: String::new(),
                    state: "starting",
                    what: "cannot delete a starting process",
                });
            }
            if matches!(c.init.status, Status::RUNNING | Status::PAUSED) {
                return Err(ServiceError::State {
                    id: id.to_owned(),
                    exec_id: String::new(),
                    state: c.init.state_name(),
                    what: "cannot delete a running task",
                });
            }
            Ok((c.runc.clone(), c.bundle.clone(), c.init.status))
        })?;
        // A created, never started init is killed by the forced delete.
        let force = status == Status::CREATED;
        if let Err(e) = runc.delete(id, Some(&DeleteOpts::new().force(force))).await {
            let msg = runcx::describe(&e, &bundle);
            if !msg.contains("not exist") && !msg.contains("not found") {
                return Err(ServiceError::Runc {
                    op: "delete",
                    id: id.to_owned(),
                    msg,
                });
            }
        }
        let mut c = {
            let mut st = self.inner.lock();
            st.containers
                .remove(id)
                .ok_or(ServiceError::NotFound { id: id.to_owned() })?
        };
        if let Some(h) = c.oom.take() {
            h.abort();
        }
        for p in c.execs.values_mut().chain(std::iter::once(&mut c.init)) {
            if let Some(io) = p.io.as_mut() {
                io.shutdown().await;
            }
        }
        if c.rootfs_mounted {
            unmount_rootfs(&c.bundle);
        }
        let (code, at) = c.init.exit.clone().unwrap_or((137, ts_now()));
        self.inner.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            TaskDelete {
                container_id: id.to_owned(),
                id: id.to_owned(),
                pid: c.init.pid,
                exit_status: code,
                exited_at: MessageField::some(at.clone()),
                ..Default::default()
            },
        );
        Ok((c.init.pid, code, at))
    }
}

fn ok<T>(r: Res<T>) -> ttrpc::Result<T> {
    r.map_err(Into::into)
}

#[async_trait]
impl Task for Service {
    async fn state(&self, _: &TtrpcContext, req: api::StateRequest) -> ttrpc::Result<api::StateResponse> {
        ok(self.inner.with(&req.id, |c| {
            let p = c.proc(&req.id, &req.exec_id)?;
            let mut r = api::StateResponse {
                id: req.id.clone(),
                bundle: c.bundle.to_string_lossy().into_owned(),
                pid: p.pid,
                status: EnumOrUnknown::new(p.status),
                stdin: p.stdio.stdin.clone(),
                stdout: p.stdio.stdout.clone(),
                stderr: p.stdio.stderr.clone(),
                terminal: p.stdio.terminal,
                exec_id: req.exec_id.clone(),
                ..Default::default()
            };
            if let Some((code, at)) = &p.exit {
                r.exit_status = *code;
                r.exited_at = MessageField::some(at.clone());
            }
            Ok(r)
        }))
    }

    async fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        let (svc, id) = (self.clone(), req.id.clone());
        let pid = ok(to_end("create", &id, async move { Service::create(&svc, req).await }).await)?;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(&self, _: &TtrpcContext, req: api::StartRequest) -> ttrpc::Result<api::StartResponse> {
        let svc = self.clone();
        let (id, exec_id) = (req.id.clone(), req.exec_id.clone());
        let pid = ok(to_end("start", &req.id, async move {
            Service::start(&svc, &id, &exec_id).await
        })
        .await)?;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete(&self, _: &TtrpcContext, req: api::DeleteRequest) -> ttrpc::Result<api::DeleteResponse> {
        let svc = self.clone();
        let (id, exec_id) = (req.id.clone(), req.exec_id.clone());
        let (pid, exit_status, at) = ok(to_end("delete", &req.id, async move {
            Service::delete(&svc, &id, &exec_id).await
        })
        .await)?;
        Ok(api::DeleteResponse {
            pid,
            exit_status,
            exited_at: MessageField::some(at),
            ..Default::default()
        })
    }

    async fn pids(&self, _: &TtrpcContext, req: api::PidsRequest) -> ttrpc::Result<api::PidsResponse> {
        let (runc, bundle, execs) = ok(self.inner.with(&req.id, |c| {
            let execs: HashMap<u32, String> = c.execs.iter().map(|(k, p)| (p.pid, k.clone())).collect();
            Ok((c.runc.clone(), c.bundle.clone(), execs))
        }))?;
        let pids = ok(runc
            .ps(&req.id)
            .await
            .map_err(|e| runc_err("ps", &req.id, &bundle, e)))?;
        let mut processes = Vec::new();
        for pid in pids {
            let pid = pid as u32;
            let mut info = ProcessInfo {
                pid,
                ..Default::default()
            };
            if let Some(exec_id) = execs.get(&pid) {
                let d = containerd_shim_protos::shim::oci::ProcessDetails {
                    exec_id: exec_id.clone(),
                    ..Default::default()
                };
                info.info = d
                    .write_to_bytes()
                    .ok()
                    .map(|v| crate::events::any("containerd.runc.v1.ProcessDetails", v))
                    .into();
            }
            processes.push(info);
        }
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> ttrpc::Result<Empty> {
        let (runc, bundle) = ok(self.running(&req.id, "pause"))?;
        ok(runc
            .pause(&req.id)
            .await
            .map_err(|e| runc_err("pause", &req.id, &bundle, e)))?;
        let _ = self.inner.with(&req.id, |c| {
            c.init.status = Status::PAUSED;
            Ok(())
        });
        self.inner.publish(
            topics::TASK_PAUSED_EVENT_TOPIC,
            TaskPaused {
                container_id: req.id.clone(),
                ..Default::default()
            },
        );
        Ok(Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> ttrpc::Result<Empty> {
        let (runc, bundle) = ok(self.inner.with(&req.id, |c| {
            if c.init.status != Status::PAUSED {
                return Err(ServiceError::State {
                    id: req.id.clone(),
                    exec_id: String::new(),
                    state: c.init.state_name(),
                    what: "only a paused task can be resumed",
                });
            }
            Ok((c.runc.clone(), c.bundle.clone()))
        }))?;
        ok(runc
            .resume(&req.id)
            .await
            .map_err(|e| runc_err("resume", &req.id, &bundle, e)))?;
        let _ = self.inner.with(&req.id, |c| {
            if c.init.exit.is_none() {
                c.init.status = Status::RUNNING;
            }
            Ok(())
        });
        self.inner.publish(
            topics::TASK_RESUMED_EVENT_TOPIC,
            TaskResumed {
                container_id: req.id.clone(),
                ..Default::default()
            },
        );
        Ok(Empty::new())
    }

    async fn checkpoint(&self, _: &TtrpcContext, req: api::CheckpointTaskRequest) -> ttrpc::Result<Empty> {
        let (runc, bundle) = ok(self.running(&req.id, "checkpoint"))?;
        let _ = runc;
        let opts = self.inner.with(&req.id, |c| Ok(c.opts.clone()));
        let opts = ok(opts)?;
        ok(crate::checkpoint::run(&req, &bundle, &self.inner.namespace, &opts).await)?;
        self.inner.publish(
            topics::TASK_CHECKPOINTED_EVENT_TOPIC,
            TaskCheckpointed {
                container_id: req.id.clone(),
                checkpoint: req.path.clone(),
                ..Default::default()
            },
        );
        Ok(Empty::new())
    }

    async fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<Empty> {
        enum How {
            Runc(Arc<Runc>, PathBuf),
            Pid(u32),
        }
        let how = ok(self.inner.with(&req.id, |c| {
            let (runc, bundle) = (c.runc.clone(), c.bundle.clone());
            let p = c.proc(&req.id, &req.exec_id)?;
            if p.exit.is_some() {
                return Err(ServiceError::Finished {
                    id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                });
            }
            if req.exec_id.is_empty() {
                Ok(How::Runc(runc, bundle))
            } else if p.pid == 0 {
                Err(ServiceError::State {
                    id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    state: p.state_name(),
                    what: "process not started",
                })
            } else {
                Ok(How::Pid(p.pid))
            }
        }))?;
        match how {
            How::Runc(runc, bundle) => {
                let r = runc
                    .kill(&req.id, req.signal, Some(&KillOpts::new().all(req.all)))
                    .await;
                if let Err(e) = r {
                    let msg = runcx::describe(&e, &bundle);
                    // Raced with the exit: the process is gone.
                    if msg.contains("not running") || msg.contains("process already finished") {
                        return Err(ServiceError::Finished {
                            id: req.id.clone(),
                            exec_id: String::new(),
                        }
                        .into());
                    }
                    return Err(ServiceError::Runc {
                        op: "kill",
                        id: req.id.clone(),
                        msg,
                    }
                    .into());
                }
            }
            How::Pid(pid) => {
                let sig = nix::sys::signal::Signal::try_from(req.signal as i32).map_err(|e| {
                    ttrpc::Error::from(ServiceError::Invalid {
                        id: req.id.clone(),
                        reason: format!("signal {}: {e}", req.signal),
                    })
                })?;
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
            }
        }
        Ok(Empty::new())
    }

    async fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> ttrpc::Result<Empty> {
        // Kept as JSON for `runc exec --process` (see runcx::Exec); runc checks the rest.
        let spec = ok(req
            .spec
            .as_ref()
            .ok_or_else(|| "no process spec".to_owned())
            .and_then(|a| match serde_json::from_slice(&a.value) {
                Ok(serde_json::Value::Object(_)) => Ok(a.value.clone()),
                Ok(_) => Err("the process spec is not a JSON object".to_owned()),
                Err(e) => Err(e.to_string()),
            })
            .map_err(|reason| ServiceError::Invalid {
                id: req.id.clone(),
                reason: format!("exec {}: {reason}", req.exec_id),
            }))?;
        if req.exec_id.is_empty() {
            return ok(Err(ServiceError::Invalid {
                id: req.id.clone(),
                reason: "exec id is required".into(),
            }));
        }
        ok(self.inner.with(&req.id, |c| {
            if c.init.exit.is_some() {
                return Err(ServiceError::State {
                    id: req.id.clone(),
                    exec_id: String::new(),
                    state: "stopped",
                    what: "cannot exec in a stopped container",
                });
            }
            if c.execs.contains_key(&req.exec_id) {
                return Err(ServiceError::ExecExists {
                    id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                });
            }
            let mut p = Proc::new(stdio_of(&req.stdin, &req.stdout, &req.stderr, req.terminal));
            p.spec = Some(spec);
            c.execs.insert(req.exec_id.clone(), p);
            Ok(())
        }))?;
        self.inner.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            },
        );
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: api::ResizePtyRequest) -> ttrpc::Result<Empty> {
        ok(self.inner.with(&req.id, |c| {
            let p = c.proc(&req.id, &req.exec_id)?;
            let io = p.io.as_ref().ok_or(ServiceError::State {
                id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                state: p.state_name(),
                what: "process has no stdio yet",
            })?;
            io.resize(req.width, req.height)
                .map_err(|e| ServiceError::Invalid {
                    id: req.id.clone(),
                    reason: format!("resize {}: {e}", req.exec_id),
                })
        }))?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> ttrpc::Result<Empty> {
        ok(self.inner.with(&req.id, |c| {
            let p = c.proc(&req.id, &req.exec_id)?;
            if req.stdin
                && let Some(io) = &p.io
            {
                io.tasks.close_input();
            }
            Ok(())
        }))?;
        Ok(Empty::new())
    }

    async fn update(&self, _: &TtrpcContext, req: api::UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let (runc, bundle) = ok(self
            .inner
            .with(&req.id, |c| Ok((c.runc.clone(), c.bundle.clone()))))?;
        let res: oci_spec::runtime::LinuxResources = ok(req
            .resources
            .as_ref()
            .ok_or_else(|| "no resources".to_owned())
            .and_then(|a| serde_json::from_slice(&a.value).map_err(|e| e.to_string()))
            .map_err(|reason| ServiceError::Invalid {
                id: req.id.clone(),
                reason: format!("update: {reason}"),
            }))?;
        ok(runc
            .update(&req.id, &res)
            .await
            .map_err(|e| runc_err("update", &req.id, &bundle, e)))?;
        Ok(Empty::new())
    }

    async fn wait(&self, _: &TtrpcContext, req: api::WaitRequest) -> ttrpc::Result<api::WaitResponse> {
        let mut rx = ok(self
            .inner
            .with(&req.id, |c| Ok(c.proc(&req.id, &req.exec_id)?.exited.subscribe())))?;
        let _ = rx.wait_for(|done| *done).await;
        ok(self.inner.with(&req.id, |c| {
            let p = c.proc(&req.id, &req.exec_id)?;
            let (code, at) = p.exit.clone().unwrap_or((255, ts_now()));
            Ok(api::WaitResponse {
                exit_status: code,
                exited_at: MessageField::some(at),
                ..Default::default()
            })
        }))
    }

    async fn stats(&self, _: &TtrpcContext, req: api::StatsRequest) -> ttrpc::Result<api::StatsResponse> {
        let (pid, cached) = ok(self
            .inner
            .with(&req.id, |c| Ok((c.init.pid, c.cgroup.get(c.init.pid)))))?;
        let (stats, loaded) = ok(crate::stats::collect(&req.id, pid, cached).await)?;
        if let Some(cg) = loaded {
            // Gone since (deleted during the call): nothing to keep.
            let _ = self.inner.with(&req.id, |c| {
                c.cgroup.set(pid, cg);
                Ok(())
            });
        }
        Ok(api::StatsResponse {
            stats: MessageField::some(stats),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        let task_pid = self
            .inner
            .lock()
            .containers
            .get(&req.id)
            .map(|c| c.init.pid)
            .unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            ..Default::default()
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, _req: api::ShutdownRequest) -> ttrpc::Result<Empty> {
        if !self.inner.lock().containers.is_empty() {
            return Ok(Empty::new());
        }
        self.inner.publisher.flush(Duration::from_secs(2)).await;
        self.inner.exit.signal();
        Ok(Empty::new())
    }
}

impl Service {
    fn running(&self, id: &str, op: &'static str) -> Res<(Arc<Runc>, PathBuf)> {
        self.inner.with(id, |c| {
            if c.init.status != Status::RUNNING {
                return Err(ServiceError::State {
                    id: id.to_owned(),
                    exec_id: String::new(),
                    state: c.init.state_name(),
                    what: match op {
                        "pause" => "only a running task can be paused",
                        _ => "only a running task can be checkpointed",
                    },
                });
            }
            Ok((c.runc.clone(), c.bundle.clone()))
        })
    }
}

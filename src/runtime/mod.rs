//! Runtime domain types and traits (no I/O). The v2 shim manager is in [`v2`].
//!
//! A [`PlatformRuntime`] owns tasks; a [`Task`] is a container's init process plus the exec
//! processes started in it (each a [`Process`]). Everything here is transport-free: no
//! tonic, ttrpc or CRI types, only `prost_types::Any` for opaque payloads (spec, options,
//! stats) that are handed through unchanged.
//!
//! Process state machine (as the shim reports it):
//!
//! ```text
//!   create ──▶ Created ──start──▶ Running ──exit──▶ Stopped ──delete──▶ (gone)
//!                                  │   ▲
//!                            pause │   │ resume
//!                                  ▼   │
//!                      Pausing ──▶ Paused
//! ```
//!
//! A shim that dies takes its tasks straight to `Stopped` (the runtime runs `<shim> delete`
//! and publishes the exit); `delete` then only forgets the task.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use crate::errdefs::{ErrorKind, Kind, Remote};

pub mod v2;

/// A process status (containerd's `runtime.Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Status {
    #[default]
    Unknown,
    Created,
    Running,
    Stopped,
    Paused,
    Pausing,
}

impl Status {
    /// Lower-case name (the `state` label of `taskd_tasks`).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Unknown => "unknown",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Paused => "paused",
            Status::Pausing => "pausing",
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: u32,
    pub status: u32,
    pub timestamp: SystemTime,
}

/// The stdio a client gave for a process: fifo paths (or any URI the shim understands).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// A mount for the task's rootfs (containerd's `mount.Mount`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mount {
    pub r#type: String,
    pub source: String,
    pub target: String,
    pub options: Vec<String>,
}

/// Everything needed to create a task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreateOpts {
    /// The OCI runtime spec (JSON in `value`).
    pub spec: Option<prost_types::Any>,
    /// Mounts that make up the rootfs; empty when the spec's `root.path` is used as is.
    pub rootfs: Vec<Mount>,
    pub io: Stdio,
    /// A local checkpoint path to restore from.
    pub checkpoint: Option<String>,
    /// The runtime name (`io.containerd.runc.v2`) or an absolute shim path.
    pub runtime: String,
    pub runtime_options: Option<prost_types::Any>,
    pub task_options: Option<prost_types::Any>,
}

/// What a shim says about a process.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// The task id (init) or the exec id.
    pub id: String,
    pub pid: u32,
    pub status: Status,
    pub io: Stdio,
    pub exit_status: u32,
    pub exited_at: Option<SystemTime>,
}

/// One process inside a task (`ListPids`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// Runtime-specific details (runc: `containerd.runc.v1.ProcessDetails` with the exec id).
    pub info: Option<prost_types::Any>,
}

/// An exec process to add to a task.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecOpts {
    /// The OCI process spec (JSON in `value`).
    pub spec: prost_types::Any,
    pub io: Stdio,
}

/// Errors of the runtime layer. Shim errors keep the kind the shim gave them.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("task {id} not found")]
    TaskNotFound { namespace: String, id: String },
    #[error("task {id} already exists")]
    TaskExists { namespace: String, id: String },
    #[error("process {exec_id} not found in task {id}")]
    ProcessNotFound { id: String, exec_id: String },
    #[error("process {id} already finished: its shim is gone")]
    ProcessFinished { id: String },
    #[error("bundle {path} already exists")]
    BundleExists { path: PathBuf },
    #[error("runtime {name:?} is not supported: runtime v1 was removed, use \"io.containerd.runc.v2\"")]
    RuntimeV1 { name: String },
    #[error("invalid runtime name {name:?}: {reason}")]
    InvalidRuntime { name: String, reason: &'static str },
    #[error("shim binary {binary:?} for runtime {runtime:?} not found in PATH or next to taskd")]
    ShimNotFound { runtime: String, binary: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("run {binary} {subcommand}: {reason}")]
    ShimCommand {
        binary: PathBuf,
        subcommand: &'static str,
        reason: String,
    },
    #[error("shim {binary} start printed no usable address: {output:?}")]
    ShimAddress { binary: PathBuf, output: String },
    #[error("connect to shim {address}: {reason}")]
    ShimConnect { address: String, reason: String },
    #[error("shim connection for task {id} is closed")]
    ShimClosed { id: String },
    #[error("shim {method} for task {id}: {source}")]
    Shim {
        id: String,
        method: &'static str,
        source: Remote,
    },
    #[error("shim {method} for task {id}: transport: {reason}")]
    ShimTransport {
        id: String,
        method: &'static str,
        reason: String,
    },
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("decode {what}: {reason}")]
    Decode { what: &'static str, reason: String },
    #[error("task create failed ({error}); cleanup also failed: {cleanup}")]
    Rollback {
        error: Box<RuntimeError>,
        cleanup: Box<RuntimeError>,
    },
    #[error(transparent)]
    Identifier(#[from] crate::identifiers::InvalidIdentifier),
}

impl ErrorKind for RuntimeError {
    fn kind(&self) -> Kind {
        match self {
            RuntimeError::TaskNotFound { .. }
            | RuntimeError::ProcessNotFound { .. }
            | RuntimeError::ProcessFinished { .. } => Kind::NotFound,
            RuntimeError::TaskExists { .. } => Kind::AlreadyExists,
            RuntimeError::RuntimeV1 { .. }
            | RuntimeError::ShimNotFound { .. }
            | RuntimeError::BundleExists { .. } => Kind::FailedPrecondition,
            RuntimeError::InvalidRuntime { .. } | RuntimeError::InvalidArgument { .. } => {
                Kind::InvalidArgument
            }
            RuntimeError::Io { .. }
            | RuntimeError::ShimCommand { .. }
            | RuntimeError::ShimAddress { .. }
            | RuntimeError::Decode { .. } => Kind::Internal,
            RuntimeError::ShimConnect { .. }
            | RuntimeError::ShimClosed { .. }
            | RuntimeError::ShimTransport { .. } => Kind::Unavailable,
            RuntimeError::Shim { source, .. } => source.kind,
            RuntimeError::Rollback { error, .. } => error.kind(),
            RuntimeError::Identifier(e) => e.kind(),
        }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// A process of a task: the init process or an exec process.
#[async_trait::async_trait]
pub trait Process: Send + Sync {
    /// The task id for the init process, the exec id for an exec process.
    fn id(&self) -> &str;
    async fn state(&self) -> Result<State>;
    async fn kill(&self, signal: u32, all: bool) -> Result<()>;
    async fn resize_pty(&self, width: u32, height: u32) -> Result<()>;
    /// Closes the process's stdin.
    async fn close_io(&self) -> Result<()>;
    /// Starts the process; returns its pid.
    async fn start(&self) -> Result<u32>;
    async fn wait(&self) -> Result<Exit>;
    /// Deletes an exec process (the init process is deleted through
    /// [`PlatformRuntime::delete`]).
    async fn delete(&self) -> Result<Exit>;
}

/// A task: a container's init process and its execs.
#[async_trait::async_trait]
pub trait Task: Process {
    fn namespace(&self) -> &str;
    /// The init pid, as of create.
    fn pid(&self) -> u32;
    /// The runtime name the task was created with (`io.containerd.runc.v2`).
    fn runtime(&self) -> &str;
    /// `linux.cgroupsPath` from the task's spec, when set.
    fn cgroups_path(&self) -> Option<String>;
    /// The init process's status as last learned (from a State answer, a Start, an exit
    /// event; recovery asks each task once), without asking the shim; Unknown when never
    /// learned.
    fn last_status(&self) -> Status;
    async fn pause(&self) -> Result<()>;
    async fn resume(&self) -> Result<()>;
    async fn exec(&self, exec_id: &str, opts: ExecOpts) -> Result<Arc<dyn Process>>;
    /// An existing exec process (verified with the shim).
    async fn process(&self, exec_id: &str) -> Result<Arc<dyn Process>>;
    async fn pids(&self) -> Result<Vec<ProcessInfo>>;
    async fn checkpoint(&self, path: &str, options: Option<prost_types::Any>) -> Result<()>;
    async fn update(
        &self,
        resources: Option<prost_types::Any>,
        annotations: HashMap<String, String>,
    ) -> Result<()>;
    /// Cgroup stats as the shim encodes them (`io.containerd.cgroups.v1.Metrics`, ...).
    async fn stats(&self) -> Result<Option<prost_types::Any>>;
}

/// A runtime that creates and tracks tasks (containerd's `runtime.PlatformRuntime`).
#[async_trait::async_trait]
pub trait PlatformRuntime: Send + Sync {
    /// The runtime plugin's name (`io.containerd.runtime.v2.task`).
    fn id(&self) -> String;
    async fn create(&self, namespace: &str, id: &str, opts: CreateOpts) -> Result<Arc<dyn Task>>;
    async fn get(&self, namespace: &str, id: &str) -> Result<Arc<dyn Task>>;
    /// Tasks of one namespace, or of all namespaces when `namespace` is `None`.
    async fn tasks(&self, namespace: Option<&str>) -> Vec<Arc<dyn Task>>;
    /// Deletes the task's init process, shuts its shim down (unless other tasks share it)
    /// and removes its bundle.
    async fn delete(&self, namespace: &str, id: &str) -> Result<Exit>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_error_keeps_remote_kind() {
        let e = RuntimeError::Shim {
            id: "t1".into(),
            method: "state",
            source: Remote {
                kind: Kind::NotFound,
                message: "process e1 not found".into(),
            },
        };
        assert_eq!(e.kind(), Kind::NotFound);
        assert_eq!(
            RuntimeError::RuntimeV1 {
                name: "io.containerd.runc.v1".into()
            }
            .kind(),
            Kind::FailedPrecondition
        );
    }
}

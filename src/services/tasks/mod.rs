//! The tasks service: [`Tasks`] is the in-process API (the seed's `local`), implemented by
//! [`local::Local`] over the runtime, the container store and the task monitor; [`grpc`]
//! is the thin `containerd.services.tasks.v1.Tasks` adapter.
//!
//! Events: the shim publishes the task events itself (create, start, exit, delete, exec-added,
//! exec-started, paused, resumed, oom) through the ttrpc events socket; the runtime
//! publishes exit/delete only for tasks whose shim died. The service publishes nothing, as
//! containerd's tasks service does not, so no event is seen twice.

pub mod checkpoint;
pub mod grpc;
pub mod local;
pub mod plugin;

use std::collections::HashMap;
use std::time::SystemTime;

use crate::errdefs::{ErrorKind, Kind};
use crate::runtime::{ExecOpts, Exit, Mount, ProcessInfo, RuntimeError, State, Stdio};

pub use local::Local;

/// A content descriptor (for checkpoints).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    pub annotations: HashMap<String, String>,
}

/// A Create request in domain terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreateTask {
    pub container_id: String,
    pub rootfs: Vec<Mount>,
    pub io: Stdio,
    /// Restore from this checkpoint (a CRIU image tar in the content store; see
    /// [`checkpoint`]).
    pub checkpoint: Option<Descriptor>,
    /// Task options (runc: `containerd.runc.v1.Options`).
    pub options: Option<prost_types::Any>,
    /// An absolute shim path overriding the container's runtime name.
    pub runtime_path: String,
}

/// One task's stats.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub id: String,
    pub timestamp: SystemTime,
    pub data: Option<prost_types::Any>,
}

/// Errors of the tasks service.
#[derive(Debug, thiserror::Error)]
pub enum TasksError {
    #[error("task {id} not found")]
    NotFound { id: String },
    #[error("task {id} already exists")]
    AlreadyExists { id: String },
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("{what} needs the content store, which this tasks service was built without")]
    CheckpointNotImplemented { what: &'static str },
    #[error("unsupported checkpoint type {media_type:?}")]
    UnsupportedCheckpoint { media_type: String },
    #[error("checkpoint archive {digest}: {source}")]
    CheckpointArchive {
        digest: String,
        source: crate::diff::DiffError,
    },
    /// CRIU (through the shim and runc) failed; `criu` holds the `Error` lines of its log.
    #[error("{op} of task {id}: {source}{criu}")]
    Criu {
        id: String,
        op: &'static str,
        source: Box<RuntimeError>,
        criu: String,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("tasks service: {op} did not complete: {reason}")]
    Interrupted { op: &'static str, reason: String },
    #[error(transparent)]
    Content(#[from] crate::content::ContentError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Metadata(#[from] crate::metadata::MetadataError),
    #[error(transparent)]
    Filter(#[from] crate::filters::FilterError),
    #[error(transparent)]
    Identifier(#[from] crate::identifiers::InvalidIdentifier),
}

crate::blocking::interrupted!(TasksError);

impl ErrorKind for TasksError {
    fn kind(&self) -> Kind {
        match self {
            TasksError::NotFound { .. } => Kind::NotFound,
            TasksError::AlreadyExists { .. } => Kind::AlreadyExists,
            TasksError::InvalidArgument { .. } => Kind::InvalidArgument,
            TasksError::CheckpointNotImplemented { .. } => Kind::NotImplemented,
            TasksError::UnsupportedCheckpoint { .. } => Kind::InvalidArgument,
            TasksError::CheckpointArchive { source, .. } => source.kind(),
            TasksError::Criu { source, .. } => checkpoint::criu_kind(source),
            TasksError::Io { .. } | TasksError::Interrupted { .. } => Kind::Internal,
            TasksError::Content(e) => e.kind(),
            TasksError::Runtime(e) => e.kind(),
            TasksError::Metadata(e) => e.kind(),
            TasksError::Filter(e) => e.kind(),
            TasksError::Identifier(e) => e.kind(),
        }
    }
}

pub type Result<T, E = TasksError> = std::result::Result<T, E>;

/// The tasks service, in process (what the gRPC adapter and the CRI plugin call).
/// `exec_id` empty = the init process.
#[async_trait::async_trait]
pub trait Tasks: Send + Sync {
    /// Creates the task of a container; returns the init pid.
    async fn create(&self, namespace: &str, req: CreateTask) -> Result<u32>;
    /// Starts the init process or an exec; returns its pid.
    async fn start(&self, namespace: &str, id: &str, exec_id: &str) -> Result<u32>;
    async fn delete(&self, namespace: &str, id: &str) -> Result<Exit>;
    async fn delete_process(&self, namespace: &str, id: &str, exec_id: &str) -> Result<Exit>;
    async fn get(&self, namespace: &str, id: &str, exec_id: &str) -> Result<State>;
    /// `filter`: containerd filter syntax over `id`, `pid`, `status`, `runtime`; empty =
    /// all.
    async fn list(&self, namespace: &str, filter: &str) -> Result<Vec<State>>;
    async fn kill(&self, namespace: &str, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()>;
    async fn exec(&self, namespace: &str, id: &str, exec_id: &str, opts: ExecOpts) -> Result<()>;
    async fn resize_pty(
        &self,
        namespace: &str,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<()>;
    async fn close_io(&self, namespace: &str, id: &str, exec_id: &str, stdin: bool) -> Result<()>;
    async fn pause(&self, namespace: &str, id: &str) -> Result<()>;
    async fn resume(&self, namespace: &str, id: &str) -> Result<()>;
    async fn list_pids(&self, namespace: &str, id: &str) -> Result<Vec<ProcessInfo>>;
    /// CRIU-dumps the task and stores the image and the spec in the content store (under
    /// `lease`); returns their descriptors (none when the runc options name their own
    /// `image_path`).
    async fn checkpoint(
        &self,
        namespace: &str,
        id: &str,
        parent: &str,
        options: Option<prost_types::Any>,
        lease: Option<&str>,
    ) -> Result<Vec<Descriptor>>;
    async fn update(
        &self,
        namespace: &str,
        id: &str,
        resources: Option<prost_types::Any>,
        annotations: HashMap<String, String>,
    ) -> Result<()>;
    /// Stats of the namespace's tasks matching `filters` (`id`, `namespace`, `runtime`).
    async fn metrics(&self, namespace: &str, filters: &[String]) -> Result<Vec<Metric>>;
    async fn wait(&self, namespace: &str, id: &str, exec_id: &str) -> Result<Exit>;
}

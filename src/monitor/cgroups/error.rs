use std::path::PathBuf;

use crate::errdefs::{ErrorKind, Kind};

/// Everything that can go wrong while locating or reading a task's cgroup. Every I/O error
/// names the path it was about.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Neither a unified (`cgroup.controllers`) nor a v1 controller hierarchy under `root`.
    #[error("no cgroup v1 controller or cgroup v2 hierarchy under {root}")]
    NoHierarchy { root: PathBuf },
    /// A file or directory under cgroupfs/procfs could not be read.
    #[error("read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// A cgroup or proc file did not have the expected format.
    #[error("parse {path}: {reason} in {line:?}")]
    Parse {
        path: PathBuf,
        line: String,
        reason: &'static str,
    },
    /// A cgroup path (from `/proc/<pid>/cgroup` or `linux.cgroupsPath`) that would leave the
    /// cgroupfs root or is not a path at all.
    #[error("invalid cgroup path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    /// The task's cgroup could not be located: its process is gone and it has no
    /// `cgroups_path`.
    #[error("task {namespace}/{id}: no cgroup (pid {pid} has no /proc entry and no cgroups_path is set)")]
    NotLocated { namespace: String, id: String, pid: u32 },
    /// The task's cgroup directory no longer exists (the task exited and was cleaned up).
    #[error("cgroup {path} is gone")]
    Gone { path: PathBuf },
    /// A metric table row does not make a valid Prometheus descriptor (a bug in a table).
    #[error("metric descriptor {name}: {source}")]
    Descriptor { name: String, source: prometheus::Error },
    /// The collector could not be registered in the daemon's registry.
    #[error("register cgroups collector: {0}")]
    Register(prometheus::Error),
}

impl ErrorKind for CgroupError {
    fn kind(&self) -> Kind {
        match self {
            CgroupError::NoHierarchy { .. } => Kind::NotImplemented,
            CgroupError::Read { .. } => Kind::Unavailable,
            CgroupError::Parse { .. } => Kind::DataLoss,
            CgroupError::InvalidPath { .. } => Kind::InvalidArgument,
            CgroupError::NotLocated { .. } | CgroupError::Gone { .. } => Kind::NotFound,
            CgroupError::Descriptor { .. } => Kind::Internal,
            CgroupError::Register(_) => Kind::AlreadyExists,
        }
    }
}

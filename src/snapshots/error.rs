//! The snapshotters' error: [`SnapshotError`].

use std::path::{Path, PathBuf};

use crate::errdefs::{ErrorKind, Kind as ErrKind};
use crate::metadata::MetadataError;

/// Errors of the snapshotters.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {key:?} does not exist in namespace {namespace:?}")]
    NotFound { namespace: String, key: String },
    #[error("parent snapshot {parent:?} does not exist in namespace {namespace:?}")]
    ParentNotFound { namespace: String, parent: String },
    #[error("snapshot {key:?} already exists in namespace {namespace:?}")]
    AlreadyExists { namespace: String, key: String },
    #[error("parent snapshot {parent:?} is not committed (it is {kind})")]
    ParentNotCommitted { parent: String, kind: &'static str },
    #[error("snapshot {key:?} is not active (it is {kind}); only active snapshots can be committed")]
    NotActive { key: String, kind: &'static str },
    #[error("cannot remove snapshot {key:?}: it has {children} child snapshot(s) ({first:?} ...)")]
    HasChildren {
        key: String,
        children: usize,
        first: String,
    },
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("snapshotter argument missing")]
    SnapshotterMissing,
    #[error("snapshotter not loaded: {0}")]
    SnapshotterNotLoaded(String),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The blocking task that ran a call did not complete.
    #[error("snapshotter: {op} did not complete: {reason}")]
    Interrupted { op: &'static str, reason: String },
}

crate::blocking::interrupted!(SnapshotError);

impl ErrorKind for SnapshotError {
    fn kind(&self) -> ErrKind {
        match self {
            SnapshotError::NotFound { .. } | SnapshotError::ParentNotFound { .. } => ErrKind::NotFound,
            SnapshotError::AlreadyExists { .. } => ErrKind::AlreadyExists,
            SnapshotError::ParentNotCommitted { .. }
            | SnapshotError::InvalidArgument { .. }
            | SnapshotError::SnapshotterMissing
            | SnapshotError::SnapshotterNotLoaded(_) => ErrKind::InvalidArgument,
            SnapshotError::NotActive { .. } | SnapshotError::HasChildren { .. } => {
                ErrKind::FailedPrecondition
            }
            SnapshotError::Metadata(e) => e.kind(),
            SnapshotError::Io { .. } | SnapshotError::Interrupted { .. } => ErrKind::Internal,
        }
    }
}

impl SnapshotError {
    pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
        let path = path.to_owned();
        move |source| SnapshotError::Io { op, path, source }
    }
}

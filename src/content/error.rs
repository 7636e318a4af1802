//! The content store's error, and [`blocking`], which runs a content call on tokio's blocking pool.

use std::path::PathBuf;

use crate::errdefs::{ErrorKind, Kind};
use crate::metadata::MetadataError;

/// Errors of the content store.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("{field}: invalid digest {digest:?}: {reason}")]
    InvalidDigest {
        field: &'static str,
        digest: String,
        reason: &'static str,
    },
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("content {digest} not found in namespace {namespace:?}")]
    NotFound { namespace: String, digest: String },
    #[error("ingest ref {ref:?} not found in namespace {namespace:?}")]
    IngestNotFound { namespace: String, r#ref: String },
    #[error("content {digest} already exists in namespace {namespace:?}")]
    AlreadyExists { namespace: String, digest: String },
    /// Another writer holds the ref (containerd: "ref ... locked"); clients retry.
    #[error("ref {ref:?} in namespace {namespace:?} is locked by another writer")]
    Locked { namespace: String, r#ref: String },
    #[error("commit of ref {ref:?}: unexpected size {actual}, expected {expected}")]
    SizeMismatch {
        r#ref: String,
        expected: i64,
        actual: i64,
    },
    #[error("commit of ref {ref:?}: unexpected digest {actual}, expected {expected}")]
    DigestMismatch {
        r#ref: String,
        expected: String,
        actual: String,
    },
    #[error("write of ref {ref:?} at offset {offset}: must occur at the current offset {current}")]
    OffsetMismatch {
        r#ref: String,
        offset: i64,
        current: i64,
    },
    #[error("read of {digest}: offset {offset} is beyond the size {size}")]
    ReadOutOfRange { digest: String, offset: i64, size: i64 },
    #[error("lease {lease:?} not found in namespace {namespace:?}")]
    LeaseNotFound { namespace: String, lease: String },
    #[error("content store: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("content store: ingest {path}: corrupt meta.json: {source}")]
    CorruptIngest {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("content store: corrupt record for {digest} in namespace {namespace:?}: {source}")]
    Corrupt {
        namespace: String,
        digest: String,
        source: prost::DecodeError,
    },
    #[error("content store: {op}: {source}")]
    Storage {
        op: &'static str,
        source: Box<redb::Error>,
    },
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Filter(#[from] crate::filters::FilterError),
    #[error(transparent)]
    Identifier(#[from] crate::identifiers::InvalidIdentifier),
    #[error("content store: {op} did not complete: {reason}")]
    Interrupted { op: &'static str, reason: String },
}

impl ErrorKind for ContentError {
    fn kind(&self) -> Kind {
        match self {
            ContentError::InvalidDigest { .. }
            | ContentError::InvalidArgument { .. }
            | ContentError::Identifier(_) => Kind::InvalidArgument,
            ContentError::NotFound { .. }
            | ContentError::IngestNotFound { .. }
            | ContentError::LeaseNotFound { .. } => Kind::NotFound,
            ContentError::AlreadyExists { .. } => Kind::AlreadyExists,
            ContentError::Locked { .. } => Kind::Unavailable,
            ContentError::SizeMismatch { .. } | ContentError::DigestMismatch { .. } => {
                Kind::FailedPrecondition
            }
            ContentError::OffsetMismatch { .. } | ContentError::ReadOutOfRange { .. } => Kind::OutOfRange,
            ContentError::Io { .. } | ContentError::Storage { .. } | ContentError::Interrupted { .. } => {
                Kind::Internal
            }
            ContentError::CorruptIngest { .. } | ContentError::Corrupt { .. } => Kind::DataLoss,
            ContentError::Metadata(e) => e.kind(),
            ContentError::Filter(e) => e.kind(),
        }
    }
}

impl ContentError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ContentError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

crate::blocking::interrupted!(ContentError);

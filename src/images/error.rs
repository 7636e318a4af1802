//! What a pull fails with ([`PullError`]), shared by the pull and the unpacker below it.

use std::time::Duration;

use super::ImageError;
use super::hosts::HostsError;
use super::platform::PlatformError;
use super::registry::RegistryError;
use crate::content::ContentError;
use crate::errdefs::{ErrorKind, Kind};

/// Errors of a pull.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("pull {reference} from {source}")]
    Registry {
        reference: String,
        source: Box<RegistryError>,
    },
    #[error("pull {reference}: {what} {digest}: registry sent content with digest {actual}")]
    DigestMismatch {
        reference: String,
        what: &'static str,
        digest: String,
        actual: String,
    },
    #[error("pull {reference}: no manifest for {wanted} in the index (it has: {available})")]
    NoPlatform {
        reference: String,
        wanted: String,
        available: String,
    },
    #[error("pull {reference}: unsupported manifest media type {media_type:?}")]
    UnsupportedMediaType { reference: String, media_type: String },
    #[error("pull {reference}: malformed {what}: {source}")]
    Malformed {
        reference: String,
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("pull {reference}: bad descriptors: {reason}")]
    BadDescriptor { reference: String, reason: String },
    #[error("pull {reference}: {what} {digest} declares {size} bytes, more than the limit of {limit}")]
    TooLarge {
        reference: String,
        what: &'static str,
        digest: String,
        size: i64,
        limit: u64,
    },
    #[error("pull {reference}: no data for blob {digest} within {timeout:?}")]
    ProgressTimeout {
        reference: String,
        digest: String,
        timeout: Duration,
    },
    #[error("pull {reference}: download of {digest} stopped: another download of the pull failed")]
    Stopped { reference: String, digest: String },
    #[error("pull {reference}: {layers} layers but {diff_ids} diff_ids in the config")]
    LayerCount {
        reference: String,
        layers: usize,
        diff_ids: usize,
    },
    #[error(transparent)]
    Hosts(#[from] HostsError),
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshots::SnapshotError),
    #[error(transparent)]
    Diff(#[from] crate::diff::DiffError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Metadata(#[from] crate::metadata::MetadataError),
}

impl ErrorKind for PullError {
    fn kind(&self) -> Kind {
        match self {
            PullError::InvalidReference { .. } => Kind::InvalidArgument,
            PullError::Registry { source, .. } => source.kind(),
            PullError::DigestMismatch { .. } => Kind::DataLoss,
            PullError::NoPlatform { .. } => Kind::NotFound,
            PullError::UnsupportedMediaType { .. }
            | PullError::Malformed { .. }
            | PullError::BadDescriptor { .. }
            | PullError::TooLarge { .. } => Kind::FailedPrecondition,
            PullError::ProgressTimeout { .. } => Kind::DeadlineExceeded,
            PullError::Stopped { .. } => Kind::Aborted,
            PullError::LayerCount { .. } => Kind::FailedPrecondition,
            PullError::Hosts(e) => e.kind(),
            PullError::Platform(e) => e.kind(),
            PullError::Snapshot(e) => e.kind(),
            PullError::Diff(e) => e.kind(),
            PullError::Content(e) => e.kind(),
            PullError::Image(e) => e.kind(),
            PullError::Metadata(e) => e.kind(),
        }
    }
}

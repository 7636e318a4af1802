//! The diff applier's error: [`DiffError`], and [`LimitKind`], the limit a layer exceeded.

use std::path::PathBuf;

use crate::errdefs::{ErrorKind, Kind};

/// Which limit a layer exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// Total uncompressed bytes.
    Bytes,
    /// Number of tar entries.
    Entries,
    /// Uncompressed bytes per compressed byte.
    Ratio,
}

/// Errors of the diff applier. Every refusal of a hostile layer names the entry.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("unsupported layer media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("layer entry {entry:?}: path escapes the root")]
    PathEscape { entry: String },
    #[error("layer entry {entry:?}: parent {parent:?} resolves outside the root (through a symlink or ..)")]
    ParentEscape { entry: String, parent: String },
    #[error(
        "layer entry {entry:?}: parent {parent:?} is not a directory (or a symlink that does not resolve to one inside the root)"
    )]
    ParentNotDir { entry: String, parent: String },
    #[error("layer entry {entry:?}: hard link target {target:?} is outside the root")]
    HardlinkEscape { entry: String, target: String },
    #[error("layer entry {entry:?}: hard link target {target:?}: {reason}")]
    HardlinkTarget {
        entry: String,
        target: String,
        reason: &'static str,
    },
    #[error("layer entry {entry:?}: {kind} device node {major}:{minor} is not allowed in layers")]
    DeviceNode {
        entry: String,
        kind: &'static str,
        major: u32,
        minor: u32,
    },
    #[error("layer entry {entry:?}: unsupported entry type {kind}")]
    UnsupportedEntry { entry: String, kind: String },
    #[error("layer entry {entry:?}: invalid {what} in header")]
    BadHeader { entry: String, what: &'static str },
    #[error("layer exceeds the {} limit ({limit}{})", limit_name(*kind), limit_unit(*kind))]
    Limit { kind: LimitKind, limit: u64 },
    #[error("malformed layer archive: {source}")]
    Tar { source: std::io::Error },
    #[error("read layer: {source}")]
    Read { source: std::io::Error },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mounts: {0}")]
    InvalidMounts(String),
    #[error("cannot apply to mounts {0}: only a single rw bind or an overlay with an upperdir is supported")]
    UnsupportedMounts(String),
    #[error("no content store is loaded: cannot read layer {0}")]
    NoContentStore(String),
    #[error("layer {digest} not found in namespace {namespace:?}")]
    LayerNotFound { namespace: String, digest: String },
    #[error("layer {digest}: {reason}")]
    Content { digest: String, reason: String },
    #[error("no content store is loaded: cannot store the diff")]
    NoContentSink,
    #[error("diff: {op} did not complete: {reason}")]
    Interrupted { op: &'static str, reason: String },
}

fn limit_name(k: LimitKind) -> &'static str {
    match k {
        LimitKind::Bytes => "uncompressed size",
        LimitKind::Entries => "entry count",
        LimitKind::Ratio => "compression ratio",
    }
}

fn limit_unit(k: LimitKind) -> &'static str {
    match k {
        LimitKind::Bytes => " bytes",
        LimitKind::Entries => " entries",
        LimitKind::Ratio => ":1",
    }
}

crate::blocking::interrupted!(DiffError);

impl ErrorKind for DiffError {
    fn kind(&self) -> Kind {
        match self {
            DiffError::UnsupportedMediaType(_) | DiffError::UnsupportedMounts(_) => Kind::NotImplemented,
            DiffError::PathEscape { .. }
            | DiffError::ParentEscape { .. }
            | DiffError::ParentNotDir { .. }
            | DiffError::HardlinkEscape { .. }
            | DiffError::HardlinkTarget { .. }
            | DiffError::DeviceNode { .. }
            | DiffError::UnsupportedEntry { .. }
            | DiffError::BadHeader { .. }
            | DiffError::Tar { .. }
            | DiffError::InvalidMounts(_) => Kind::InvalidArgument,
            DiffError::Limit { .. } => Kind::ResourceExhausted,
            DiffError::Read { .. } | DiffError::Content { .. } => Kind::DataLoss,
            DiffError::NoContentStore(_) | DiffError::NoContentSink => Kind::Unavailable,
            DiffError::LayerNotFound { .. } => Kind::NotFound,
            DiffError::Io { .. } | DiffError::Interrupted { .. } => Kind::Internal,
        }
    }
}

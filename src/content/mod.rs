//! The content store: content-addressed (sha256) blobs on disk plus namespaced metadata in
//! the redb database, as containerd's local store wrapped by its metadata content store.
//!
//! ```text
//! <root>/io.containerd.content.v1.content/
//! ├── blobs/sha256/<hex>          committed blobs, shared by every namespace (read-only files)
//! └── ingest/<sha256(ns \n ref)>/ one in-progress write per (namespace, ref)
//!     ├── data                    the bytes written so far
//!     └── meta.json               { namespace, ref, expected, total, started_at }
//!
//! meta.redb (the metadata plugin's database; tables created by this plugin on init)
//! └── content_blobs   (<ns>, <digest>) → ContentRecord { size, created_at, updated_at, labels }
//! ```
//!
//! - A blob is visible in a namespace only through its `content_blobs` row. Two namespaces
//!   that commit the same bytes share one file; the file goes when the last row goes (on
//!   Delete, or when the garbage collector sweeps the rows).
//! - A write goes to `ingest/…/data`; Commit checks the size and the digest and only then
//!   renames the file into `blobs/`. A partial or mismatched write is therefore never
//!   visible as committed content; a mismatch is FailedPrecondition naming both values.
//! - One writer per (namespace, ref) at a time: a second one gets Unavailable ("locked"),
//!   which containerd's clients retry. A write is resumable: reopening the ref continues
//!   at the current offset (the digest state is rebuilt by rehashing the data).
//! - A write under a lease records `ingests/<ref>` and, on commit, `content/<digest>` as
//!   resources of that lease, in the commit's transaction.
//! - A namespace that writes bytes another namespace committed already writes them again
//!   (containerd's "isolated" policy for the transfer); Commit then keeps the existing file
//!   and only adds the namespace's row.
//!
//! The writer state machine:
//! ```text
//!  open(ref) ──▶ Open{offset} ──write──▶ Open{offset+n} ──commit ok──▶ Committed (ingest removed)
//!                    │  ▲                       │
//!                    │  └──truncate(0)──────────┤      commit mismatch ──▶ Open (ingest kept)
//!                    └─drop: unlocked, ingest kept (resumable) ; abort: ingest removed
//! ```

pub mod blobs;
pub mod plugin;
mod records;
pub mod store;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

pub use store::{Store, Writer};

use crate::errdefs::{ErrorKind, Kind};
use crate::metadata::MetadataError;

/// The label prefix naming content a blob references (containerd's GC).
pub const LABEL_GC_REF_CONTENT: &str = "containerd.io/gc.ref.content";
/// The label prefix naming snapshots a blob references: `…snapshot.<snapshotter>[.<x>]`.
pub const LABEL_GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";
/// A blob with this label is a garbage-collection root.
pub const LABEL_GC_ROOT: &str = "containerd.io/gc.root";

/// The longest ingest ref accepted, in bytes.
pub const MAX_REF: usize = 4096;

/// Information about a committed blob, as seen in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Info {
    pub digest: String,
    pub size: i64,
    pub created_at: Option<SystemTime>,
    pub updated_at: Option<SystemTime>,
    pub labels: BTreeMap<String, String>,
}

/// The status of an in-progress write.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    pub r#ref: String,
    pub offset: i64,
    pub total: i64,
    pub expected: String,
    pub started_at: Option<SystemTime>,
    pub updated_at: Option<SystemTime>,
}

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

/// Parses `sha256:<64 lowercase hex>`; returns the hex part.
pub fn parse_digest<'a>(field: &'static str, digest: &'a str) -> Result<&'a str, ContentError> {
    let invalid = |reason| ContentError::InvalidDigest {
        field,
        digest: digest.chars().take(200).collect(),
        reason,
    };
    if digest.is_empty() {
        return Err(invalid("must not be empty"));
    }
    let Some((alg, hex)) = digest.split_once(':') else {
        return Err(invalid("must be <algorithm>:<hex>"));
    };
    if alg != "sha256" {
        return Err(invalid("unsupported algorithm (only sha256)"));
    }
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(invalid("sha256 digests are 64 lowercase hex characters"));
    }
    Ok(hex)
}

/// `sha256:<hex>` of the bytes.
pub fn digest_of(data: &[u8]) -> String {
    use sha2::Digest;
    format_digest(&sha2::Sha256::digest(data))
}

pub(crate) fn format_digest(sum: &[u8]) -> String {
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in sum {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Validates an ingest ref: non-empty, bounded, no NUL or newline.
pub fn validate_ref(r: &str) -> Result<(), ContentError> {
    if r.is_empty() {
        return Err(ContentError::InvalidArgument {
            field: "ref",
            reason: "must not be empty".into(),
        });
    }
    if r.len() > MAX_REF {
        return Err(ContentError::InvalidArgument {
            field: "ref",
            reason: format!("longer than {MAX_REF} bytes"),
        });
    }
    if r.contains(['\0', '\n']) {
        return Err(ContentError::InvalidArgument {
            field: "ref",
            reason: "must not contain NUL or newline".into(),
        });
    }
    Ok(())
}

/// Filter fields of [`Info`]: `digest`, `size`, `labels.KEY`.
pub struct InfoFields<'a>(pub &'a Info);

impl crate::filters::Adaptor for InfoFields<'_> {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["digest"] => Some(self.0.digest.clone()),
            ["size"] => Some(self.0.size.to_string()),
            ["labels", _] => crate::filters::label_field(&self.0.labels, path),
            _ => None,
        }
    }
}

/// Filter fields of [`Status`]: `ref`, `expected`.
pub struct StatusFields<'a>(pub &'a Status);

impl crate::filters::Adaptor for StatusFields<'_> {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["ref"] => Some(self.0.r#ref.clone()),
            ["expected"] => Some(self.0.expected.clone()),
            _ => None,
        }
    }
}

/// Decodes a `content_blobs` row (for the garbage collector).
pub(crate) fn records_decode(namespace: &str, digest: &str, bytes: &[u8]) -> Result<Info, ContentError> {
    Ok(records::ContentRecord::decode_for(namespace, digest, bytes)?.into_info(digest))
}

/// Runs a blocking content call on tokio's blocking pool.
pub async fn blocking<T, F>(op: &'static str, f: F) -> Result<T, ContentError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ContentError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ContentError::Interrupted {
            op,
            reason: e.to_string(),
        })?
}

#[cfg(test)]
mod tests;

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
mod error;
mod model;
pub mod plugin;
mod records;
pub mod store;

/// Runs a blocking content call on tokio's blocking pool.
pub use crate::blocking::try_run as blocking;
pub use error::ContentError;
pub use model::{
    Info, InfoFields, LABEL_GC_REF_CONTENT, LABEL_GC_REF_SNAPSHOT, LABEL_GC_ROOT, MAX_REF, Status,
    StatusFields, digest_of, parse_digest, validate_ref,
};
pub(crate) use records::records_decode;
pub use store::{Store, Writer};

#[cfg(test)]
mod tests;

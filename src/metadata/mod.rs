//! Metadata: the domain records, the store traits and their redb implementation.
//!
//! containerd keeps namespaces, containers and leases in one bolt database; taskd keeps them
//! in one redb database, `<root>/io.containerd.metadata.v1.redb/meta.redb`, owned by the
//! metadata plugin ([`plugin`]). The traits here ([`ContainerStore`], [`NamespaceStore`],
//! [`LeaseManager`]) are what other plugins use; [`Db`] implements all three.
//!
//! # Schema (version 1)
//!
//! redb has flat tables rather than nested buckets, so the tree is spelled with tuple keys
//! whose first element is the namespace; a namespace's objects are a contiguous key range.
//!
//! ```text
//! meta.redb
//! ├── meta              "schema_version" → u64 (1)          checked and migrated on open
//! └── namespaces        <ns> → NamespaceRecord { labels }
//!     ├── containers    (<ns>, <id>) → ContainerRecord { labels, image, runtime{name, options},
//!     │                                 spec, snapshotter, snapshot_key, created_at, updated_at,
//!     │                                 extensions, sandbox }
//!     ├── leases        (<ns>, <id>) → LeaseRecord { created_at, labels }
//!     │   └── lease_resources (<ns>, <lease>, <type>, <resource id>) → ()
//!     │                  type: "content" | "ingests" | "snapshots/<snapshotter>"
//!     ├── content_blobs (<ns>, <digest>) → ContentRecord   (crate::content, own file)
//!     ├── images        (<ns>, <name>) → ImageRecord       (crate::images, own file)
//!     └── (snapshots: likewise) — each feature creates its table on init and registers a
//!          [`NamespaceCheck`] so a non-empty namespace cannot be deleted
//! ```
//!
//! Records are protobuf messages defined in `records.rs` (prost derive, explicit tags):
//! compact, and an older taskd ignores fields a newer one added. They are storage types,
//! separate from the API messages, so the wire API and the file format evolve apart.
//!
//! # Rules
//! - Every mutation is ONE redb write transaction: the existence checks, the write and the
//!   namespace bookkeeping commit together or not at all. redb serializes write
//!   transactions, so concurrent creates/updates/deletes on the same id cannot lose an update;
//!   the loser sees AlreadyExists / NotFound.
//! - Commits are durable when they return (`Durability::Immediate`, redb's default): a write
//!   acknowledged to a client survives `kill -9` of the daemon. redb recovers an unclean file
//!   on open.
//! - A namespace exists once it is created explicitly or once a container or lease is created
//!   in it (as containerd creates the bucket on first use).
//! - Schema: `meta/schema_version` holds the version; [`schema::migrate`] runs on open inside
//!   one write transaction and upgrades an older file step by step (v0 = empty file → v1
//!   creates the tables). A file from a newer taskd is refused (FailedPrecondition).
//! - The store is synchronous; each call is one short transaction (a commit is one fsync).
//!   Async callers (the services) run calls through [`blocking`] (`block_in_place` on the
//!   daemon's multi-thread runtime, else tokio's blocking pool), never plainly on a worker.

use std::collections::BTreeMap;
use std::time::SystemTime;

mod adaptors;
mod containers;
mod leases;
mod namespaces;
pub mod plugin;
mod records;
pub mod schema;
mod store;
mod validate;

pub use adaptors::{ContainerFields, LeaseFields, NamespaceFields};
pub use containers::apply_container_update;
pub use leases::random_lease_id;
pub use namespaces::apply_namespace_update;
pub use store::{CountObjects, Db, ObjectTable, apply_key, scan_namespace, write_tx};
pub use validate::{MAX_LABEL_SIZE, validate_labels};

/// The label that gives a lease its expiry (RFC 3339), as containerd's GC reads it.
pub const LABEL_GC_EXPIRE: &str = "containerd.io/gc.expire";

/// A container record (containerd's `containers.Container`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Container {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub image: String,
    pub runtime: Runtime,
    /// The OCI runtime spec as an `Any` (`types.containerd.io/opencontainers/runtime-spec/1/Spec`).
    pub spec: Option<prost_types::Any>,
    pub snapshotter: String,
    pub snapshot_key: String,
    pub created_at: Option<SystemTime>,
    pub updated_at: Option<SystemTime>,
    pub extensions: BTreeMap<String, prost_types::Any>,
    pub sandbox: String,
}

/// The runtime a container runs under: name (`io.containerd.runc.v2`) and options.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Runtime {
    pub name: String,
    pub options: Option<prost_types::Any>,
}

/// Errors of the metadata layer.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("{what} {id:?} not found in namespace {namespace:?}")]
    NotFound {
        what: &'static str,
        namespace: String,
        id: String,
    },
    #[error("{what} {id:?} already exists in namespace {namespace:?}")]
    AlreadyExists {
        what: &'static str,
        namespace: String,
        id: String,
    },
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Identifier(#[from] crate::identifiers::InvalidIdentifier),
    #[error(transparent)]
    Filter(#[from] crate::filters::FilterError),
    /// A namespace still holds objects; `remaining` names them ("2 containers, 1 lease").
    #[error("namespace {namespace:?} must be empty, but it still holds {remaining}")]
    NamespaceNotEmpty { namespace: String, remaining: String },
    /// A lease resource type this store does not track (containerd: "not supported yet").
    #[error("resource.type: lease resource type {type:?} is not supported")]
    UnsupportedResource { r#type: String },
    /// The database file could not be opened (or created).
    #[error("open metadata database {path}: {source}")]
    Open {
        path: std::path::PathBuf,
        source: Box<redb::DatabaseError>,
    },
    /// The database was written by a newer taskd (its schema version is unknown here).
    #[error("metadata database {path} has schema version {found}, this taskd supports up to {supported}")]
    SchemaTooNew {
        path: std::path::PathBuf,
        found: u64,
        supported: u64,
    },
    /// A redb operation failed (I/O, corruption, ...).
    #[error("metadata store: {op}: {source}")]
    Storage {
        op: &'static str,
        source: Box<redb::Error>,
    },
    /// A stored record does not decode.
    #[error("metadata store: corrupt {what} record {key:?}: {source}")]
    Corrupt {
        what: &'static str,
        key: String,
        source: prost::DecodeError,
    },
    /// The blocking task that ran a store call did not complete (panicked or was cancelled).
    #[error("metadata store: {op} did not complete: {reason}")]
    Interrupted { op: &'static str, reason: String },
}

impl crate::errdefs::ErrorKind for MetadataError {
    fn kind(&self) -> crate::errdefs::Kind {
        use crate::errdefs::Kind;
        match self {
            MetadataError::NotFound { .. } => Kind::NotFound,
            MetadataError::AlreadyExists { .. } => Kind::AlreadyExists,
            MetadataError::InvalidArgument { .. } | MetadataError::Identifier(_) => Kind::InvalidArgument,
            MetadataError::FailedPrecondition(_)
            | MetadataError::NamespaceNotEmpty { .. }
            | MetadataError::SchemaTooNew { .. } => Kind::FailedPrecondition,
            MetadataError::Filter(e) => e.kind(),
            MetadataError::UnsupportedResource { .. } => Kind::NotImplemented,
            MetadataError::Open { .. }
            | MetadataError::Storage { .. }
            | MetadataError::Interrupted { .. } => Kind::Internal,
            MetadataError::Corrupt { .. } => Kind::DataLoss,
        }
    }
}

impl MetadataError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        MetadataError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The container store (containerd's `containers.Store`), namespaced. Calls are
/// synchronous and short (one redb transaction each).
pub trait ContainerStore: Send + Sync {
    fn get(&self, namespace: &str, id: &str) -> Result<Container, MetadataError>;
    /// `filters` use containerd's syntax (see `crate::filters`).
    fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Container>, MetadataError>;
    fn create(&self, namespace: &str, container: Container) -> Result<Container, MetadataError>;
    /// `fieldpaths` empty = replace every mutable field (containerd's full update: labels,
    /// spec, extensions, image, snapshot_key; a different snapshotter or runtime name is
    /// InvalidArgument); else only the named ones (`labels`, `labels.KEY`, `spec`, `image`,
    /// `snapshotter`, `snapshot_key` (or containerd's `snapshotkey`), `runtime`,
    /// `runtime.name`, `runtime.options`, `extensions`, `extensions.KEY`). A `labels.KEY`
    /// whose value is empty or absent removes the label. The merged record is validated as on
    /// create; `created_at` is kept and `updated_at` set.
    fn update(
        &self,
        namespace: &str,
        container: Container,
        fieldpaths: &[String],
    ) -> Result<Container, MetadataError>;
    fn delete(&self, namespace: &str, id: &str) -> Result<(), MetadataError>;
}

/// Runs a (blocking) store call without stalling the runtime: on the multi-thread runtime
/// (the daemon) in place with `block_in_place`, which hands this worker's other tasks to
/// another thread while the call (and a commit's fsync) runs here; elsewhere (a
/// current-thread runtime, as in some tests) on tokio's blocking pool. In place saves the
/// hop to a pool thread and back, each a wake-up that costs milliseconds on a loaded
/// 2-CPU host, on every metadata RPC.
pub async fn blocking<T, F>(op: &'static str, f: F) -> Result<T, MetadataError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, MetadataError> + Send + 'static,
{
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        return tokio::task::block_in_place(f);
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| MetadataError::Interrupted {
            op,
            reason: e.to_string(),
        })?
}

/// A namespace (containerd's `namespaces` store entry).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// The namespace store (containerd's `namespaces.Store`).
pub trait NamespaceStore: Send + Sync {
    /// Creates `name`; AlreadyExists if it exists (explicitly or implicitly).
    fn create(&self, name: &str, labels: BTreeMap<String, String>) -> Result<Namespace, MetadataError>;
    fn get(&self, name: &str) -> Result<Namespace, MetadataError>;
    /// Every namespace, sorted by name.
    fn list(&self) -> Result<Vec<Namespace>, MetadataError>;
    /// `fieldpaths` empty or `labels` = replace the labels; `labels.KEY` = set (or, with an
    /// empty or missing value, remove) one label.
    fn update(&self, namespace: Namespace, fieldpaths: &[String]) -> Result<Namespace, MetadataError>;
    /// Deletes an empty namespace; FailedPrecondition naming what remains otherwise
    /// (checked inside the delete's transaction, so nothing can slip in between).
    fn delete(&self, name: &str) -> Result<(), MetadataError>;
}

/// A check run when a namespace is deleted, inside the delete's write transaction: what
/// does the feature that registered it still hold in the namespace? Containers and leases
/// are built in; images, content and snapshots register theirs with
/// [`Db::register_namespace_check`].
pub trait NamespaceCheck: Send + Sync {
    /// What remains, counted: `Some("2 images")`, or `None` when nothing does.
    fn remaining(
        &self,
        tx: &redb::WriteTransaction,
        namespace: &str,
    ) -> Result<Option<String>, MetadataError>;
}

/// A lease (containerd's `leases.Lease`): holds resources against garbage collection until
/// deleted or, with the [`LABEL_GC_EXPIRE`] label, until it expires.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lease {
    pub id: String,
    pub created_at: Option<SystemTime>,
    pub labels: BTreeMap<String, String>,
}

/// A resource held by a lease: `type` is `content`, `ingests` or `snapshots/<snapshotter>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct LeaseResource {
    pub id: String,
    pub r#type: String,
}

/// The lease manager (containerd's `leases.Manager`), namespaced.
pub trait LeaseManager: Send + Sync {
    /// Creates lease `id` (callers generate one when the client gave none).
    fn create(
        &self,
        namespace: &str,
        id: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Lease, MetadataError>;
    fn delete(&self, namespace: &str, id: &str) -> Result<(), MetadataError>;
    /// `filters` use containerd's syntax over `id` and `labels.KEY`.
    fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Lease>, MetadataError>;
    fn add_resource(
        &self,
        namespace: &str,
        lease: &str,
        resource: LeaseResource,
    ) -> Result<(), MetadataError>;
    /// Removing a resource the lease does not hold is not an error.
    fn delete_resource(
        &self,
        namespace: &str,
        lease: &str,
        resource: LeaseResource,
    ) -> Result<(), MetadataError>;
    fn list_resources(&self, namespace: &str, lease: &str) -> Result<Vec<LeaseResource>, MetadataError>;
    /// Deletes every lease (in every namespace) whose expiry label is before `now`, with its
    /// resources, in one transaction; returns the `(namespace, id)` of each.
    fn expire(&self, now: SystemTime) -> Result<Vec<(String, String)>, MetadataError>;
}

#[cfg(test)]
mod tests;

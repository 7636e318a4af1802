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

mod adaptors;
mod containers;
mod error;
mod leases;
mod model;
mod namespaces;
pub mod plugin;
mod records;
pub mod schema;
mod store;
mod validate;

pub use adaptors::{ContainerFields, LeaseFields, NamespaceFields};
pub use containers::apply_container_update;
pub use error::{MetadataError, blocking};
pub use leases::random_lease_id;
pub use model::{Container, LABEL_GC_EXPIRE, Lease, LeaseResource, Namespace, NamespaceCheck, Runtime};
pub use namespaces::apply_namespace_update;
pub use store::{CountObjects, Db, ObjectTable, apply_key, scan_namespace, write_tx};
pub use validate::{MAX_LABEL_SIZE, validate_labels};

use std::collections::BTreeMap;
use std::time::SystemTime;

// The plugin capabilities stay here: introspection names a capability by its Rust path
// (`taskd::metadata::LeaseManager`), so moving one would change what `Plugins` reports.

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

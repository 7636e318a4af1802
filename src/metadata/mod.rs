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
pub use model::{
    Container, ContainerStore, LABEL_GC_EXPIRE, Lease, LeaseManager, LeaseResource, Namespace,
    NamespaceCheck, NamespaceStore, Runtime,
};
pub use namespaces::apply_namespace_update;
pub use store::{CountObjects, Db, ObjectTable, apply_key, scan_namespace, write_tx};
pub use validate::{MAX_LABEL_SIZE, validate_labels};

#[cfg(test)]
mod tests;

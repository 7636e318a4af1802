//! The metadata model: the domain records (containers, namespaces, leases) and the store
//! traits other plugins use ([`ContainerStore`], [`NamespaceStore`], [`LeaseManager`],
//! [`NamespaceCheck`]).

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::error::MetadataError;

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
/// `Db::register_namespace_check`.
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

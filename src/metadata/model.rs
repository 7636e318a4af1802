//! The metadata model: the domain records (containers, namespaces, leases) and
//! [`NamespaceCheck`]. The store traits other plugins use (`ContainerStore`,
//! `NamespaceStore`, `LeaseManager`) stay in `mod.rs`: they are plugin capabilities, named
//! by their paths.

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

/// A namespace (containerd's `namespaces` store entry).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
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

//! Metadata: the domain records and store traits. The redb implementation lives in this
//! module's submodules (see `store.rs`).

use std::collections::BTreeMap;
use std::time::SystemTime;

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
}

impl crate::errdefs::ErrorKind for MetadataError {
    fn kind(&self) -> crate::errdefs::Kind {
        use crate::errdefs::Kind;
        match self {
            MetadataError::NotFound { .. } => Kind::NotFound,
            MetadataError::AlreadyExists { .. } => Kind::AlreadyExists,
            MetadataError::InvalidArgument { .. } | MetadataError::Identifier(_) => Kind::InvalidArgument,
            MetadataError::FailedPrecondition(_) => Kind::FailedPrecondition,
            MetadataError::Filter(e) => e.kind(),
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
    /// `fieldpaths` empty = replace every mutable field; else only the named ones
    /// (`labels`, `labels.KEY`, `spec`, `image`, `snapshotter`, `snapshot_key`, `runtime`,
    /// `extensions`, `extensions.KEY`).
    fn update(
        &self,
        namespace: &str,
        container: Container,
        fieldpaths: &[String],
    ) -> Result<Container, MetadataError>;
    fn delete(&self, namespace: &str, id: &str) -> Result<(), MetadataError>;
}

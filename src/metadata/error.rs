//! The metadata layer's error, and [`blocking`], which runs a store call off the async workers.

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
    crate::blocking::try_run(op, f).await
}

crate::blocking::interrupted!(MetadataError);

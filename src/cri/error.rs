//! The CRI adapter's shared vocabulary: its error ([`CriError`]), the containerd namespace
//! every CRI object lives in, and [`blocking`] for work that must leave the async workers.

use crate::cri::config::ConfigError;
use crate::cri::io::LogError;
use crate::cri::network::cni::CniError;
use crate::cri::network::netns::NetnsError;
use crate::cri::podfiles::PodFilesError;
use crate::cri::podns::PodNsError;
use crate::cri::spec::SpecError;
use crate::cri::store::StoreError;
use crate::cri::stream_front::StreamingError;
use crate::cri::userns::UsernsError;
use crate::errdefs::{ErrorKind, Kind};
use crate::images::reference::ReferenceError;

/// The containerd namespace every CRI object lives in.
pub const NAMESPACE: &str = "k8s.io";

/// Errors of the CRI adapter. Lower layers keep their kind through `#[from]`.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("the CRI plugin is not ready yet (still initializing)")]
    NotReady,
    #[error("{rpc} is not implemented yet: {missing}")]
    Unimplemented {
        rpc: &'static str,
        missing: &'static str,
    },
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("no runtime handler {handler:?} is configured (configured: {known})")]
    UnknownHandler { handler: String, known: String },
    #[error("{what}: {reason}")]
    FailedPrecondition { what: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    PodFiles(#[from] PodFilesError),
    #[error(transparent)]
    PodNs(#[from] PodNsError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Streaming(#[from] StreamingError),
    #[error(transparent)]
    Userns(#[from] UsernsError),
    /// A failure of a service the adapter calls (tasks, containers, images, snapshots);
    /// keeps that service's kind.
    #[error("{op}: {cause}")]
    Backend {
        op: &'static str,
        cause: Box<dyn ErrorKind + Send + Sync>,
    },
    #[error("read the host's mount table (/proc/self/mountinfo): {0}")]
    HostMounts(#[source] procfs::ProcError),
    #[error("{what} timed out after {after:?}")]
    Timeout {
        what: String,
        after: std::time::Duration,
    },
    #[error("{error}; rollback also failed: {cleanup}")]
    Rollback {
        error: Box<CriError>,
        cleanup: Box<CriError>,
    },
}

/// Runs blocking work (mounts, namespaces, file trees) off the async workers; a panic in it
/// is a FailedPrecondition naming `what`.
pub async fn blocking<T, E>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, CriError>
where
    T: Send + 'static,
    E: Into<CriError> + Send + 'static,
{
    crate::blocking::run::<_, CriError>(what, f)
        .await?
        .map_err(Into::into)
}

/// A CRI call's blocking work that never answered fails its precondition.
impl crate::blocking::Interrupted for CriError {
    fn interrupted(op: &'static str, reason: String) -> Self {
        CriError::FailedPrecondition {
            what: op.into(),
            reason,
        }
    }
}

impl CriError {
    /// Wraps an error of another service, keeping its kind.
    pub fn backend(op: &'static str, e: impl ErrorKind + Send + Sync + 'static) -> CriError {
        CriError::Backend {
            op,
            cause: Box::new(e),
        }
    }
}

impl ErrorKind for CriError {
    fn kind(&self) -> Kind {
        match self {
            CriError::NotReady => Kind::Unavailable,
            CriError::Unimplemented { .. } => Kind::NotImplemented,
            CriError::InvalidArgument { .. } | CriError::UnknownHandler { .. } => Kind::InvalidArgument,
            CriError::FailedPrecondition { .. } => Kind::FailedPrecondition,
            CriError::Store(e) => e.kind(),
            CriError::Cni(e) => e.kind(),
            CriError::Netns(e) => e.kind(),
            CriError::Log(e) => e.kind(),
            CriError::Config(e) => e.kind(),
            CriError::Spec(e) => e.kind(),
            CriError::PodFiles(e) => e.kind(),
            CriError::PodNs(e) => e.kind(),
            CriError::Reference(e) => e.kind(),
            CriError::Streaming(e) => e.kind(),
            CriError::Userns(e) => e.kind(),
            CriError::Backend { cause, .. } => cause.kind(),
            CriError::Rollback { error, .. } => error.kind(),
            CriError::Timeout { .. } => Kind::DeadlineExceeded,
            CriError::HostMounts(_) => Kind::Internal,
        }
    }
}

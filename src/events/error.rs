//! The events' error: [`EventError`].

use crate::errdefs::{ErrorKind, Kind};

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic { topic: String, reason: &'static str },
    #[error(transparent)]
    Namespace(#[from] crate::identifiers::InvalidIdentifier),
    #[error("invalid event filter {filter:?}: {reason}")]
    InvalidFilter { filter: String, reason: String },
    #[error("envelope has no event")]
    MissingEvent,
    #[error("invalid topic {topic:?}: component {component:?}: {source}")]
    InvalidTopicComponent {
        topic: String,
        component: String,
        source: crate::identifiers::InvalidIdentifier,
    },
    #[error("forward request has no envelope")]
    MissingEnvelope,
    #[error("timestamp must be set on a forwarded event")]
    MissingTimestamp,
    #[error("invalid event timestamp (seconds {seconds}, nanos {nanos})")]
    InvalidTimestamp { seconds: i64, nanos: i32 },
}

impl ErrorKind for EventError {
    fn kind(&self) -> Kind {
        match self {
            EventError::InvalidTopic { .. }
            | EventError::Namespace(_)
            | EventError::InvalidFilter { .. }
            | EventError::MissingEvent
            | EventError::InvalidTopicComponent { .. }
            | EventError::MissingEnvelope
            | EventError::MissingTimestamp
            | EventError::InvalidTimestamp { .. } => Kind::InvalidArgument,
        }
    }
}

//! Events: the domain traits. The exchange that implements them lives in `exchange.rs`.
//!
//! An [`Envelope`] is what containerd's `events.Envelope` carries: when, which namespace,
//! which topic, and the event as a protobuf `Any`. Topics are validated (`/`-separated,
//! non-empty components, at most 255 bytes) before anything is published.

use std::time::SystemTime;

use crate::errdefs::{ErrorKind, Kind};

pub mod exchange;
pub mod fields;
pub mod plugin;
pub mod topics;

pub use exchange::Exchange;

/// An event with its routing data.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub timestamp: SystemTime,
    pub namespace: String,
    pub topic: String,
    pub event: prost_types::Any,
}

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

/// Publishes an event in a namespace; the publisher stamps the time.
pub trait Publisher: Send + Sync {
    fn publish(&self, namespace: &str, topic: &str, event: prost_types::Any) -> Result<(), EventError>;
}

/// Forwards an envelope that already has its namespace and timestamp (from a shim or a
/// client's `Forward`).
pub trait Forwarder: Send + Sync {
    fn forward(&self, envelope: Envelope) -> Result<(), EventError>;
}

/// Helper: encode a prost message as an `Any` with containerd's type URL
/// (`containerd.events.TaskCreate`, no `type.googleapis.com/` prefix, as containerd's
/// typeurl registers them).
pub fn any<M: prost::Name>(msg: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: M::full_name(),
        value: msg.encode_to_vec(),
    }
}

/// A live subscription: envelopes arrive on `receiver` in publish order. Dropping it
/// unsubscribes. A subscriber that does not keep up loses events (never blocking
/// publishers); the exchange counts and logs the drops.
pub struct Subscription {
    pub receiver: tokio::sync::mpsc::Receiver<Envelope>,
}

/// Subscribes to envelopes that match a filter (containerd's `events.Subscriber`).
/// `name` identifies the subscriber kind in metrics and logs ("grpc", "cri", "monitor").
pub trait Subscriber: Send + Sync {
    fn subscribe(&self, name: &'static str, filter: crate::filters::Filter) -> Subscription;
}

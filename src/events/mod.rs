//! Events: the domain traits (`model.rs`) and the exchange that implements them (`exchange.rs`).
//!
//! An [`Envelope`] is what containerd's `events.Envelope` carries: when, which namespace,
//! which topic, and the event as a protobuf `Any`. Topics are validated (`/`-separated,
//! non-empty components, at most 255 bytes) before anything is published.

mod error;
pub mod exchange;
pub mod fields;
mod model;
pub mod plugin;
pub mod topics;

pub use error::EventError;
pub use exchange::Exchange;
pub use model::{Envelope, Subscription, any};

// The plugin capabilities stay here: introspection names a capability by its Rust path
// (`taskd::events::Publisher`), so moving one would change what `Plugins` reports.

/// Publishes an event in a namespace; the publisher stamps the time.
pub trait Publisher: Send + Sync {
    fn publish(&self, namespace: &str, topic: &str, event: prost_types::Any) -> Result<(), EventError>;
}

impl dyn Publisher {
    /// Publishes `msg` (as [`any`]) and logs a failure: the event of a service call is a
    /// notice, not part of the call's answer.
    pub fn publish_logged<M: prost::Name>(&self, namespace: &str, topic: &str, msg: &M) {
        if let Err(error) = self.publish(namespace, topic, any(msg)) {
            tracing::warn!(%error, namespace, topic, "publish event");
        }
    }
}

/// Forwards an envelope that already has its namespace and timestamp (from a shim or a
/// client's `Forward`).
pub trait Forwarder: Send + Sync {
    fn forward(&self, envelope: Envelope) -> Result<(), EventError>;
}

/// Subscribes to envelopes that match a filter (containerd's `events.Subscriber`).
/// `name` identifies the subscriber kind in metrics and logs ("grpc", "cri", "monitor").
pub trait Subscriber: Send + Sync {
    fn subscribe(&self, name: &'static str, filter: crate::filters::Filter) -> Subscription;
}

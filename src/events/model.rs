//! The events' domain: the [`Envelope`] and the traits the exchange implements
//! ([`Publisher`], [`Forwarder`], [`Subscriber`]).

use std::time::SystemTime;

use super::error::EventError;

/// An event with its routing data.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub timestamp: SystemTime,
    pub namespace: String,
    pub topic: String,
    pub event: prost_types::Any,
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

//! The events' domain: the [`Envelope`] and a [`Subscription`] (the traits the exchange
//! implements stay in `mod.rs`: they are plugin capabilities, named by their paths).

use std::time::SystemTime;

/// An event with its routing data.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub timestamp: SystemTime,
    pub namespace: String,
    pub topic: String,
    pub event: prost_types::Any,
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

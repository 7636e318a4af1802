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
pub use model::{Envelope, Forwarder, Publisher, Subscriber, Subscription, any};

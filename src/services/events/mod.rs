//! The events service, on both transports.
//!
//! The in-process side is the exchange itself (`events::Exchange` behind the `Publisher`,
//! `Forwarder` and `Subscriber` traits); the transports only convert:
//!
//! ```text
//! gRPC  containerd.services.events.v1.Events          (grpc.rs, plugin io.containerd.grpc.v1.events)
//!         Publish   namespace from the containerd-namespace header → Publisher
//!         Forward   envelope as given (namespace, topic validated)  → Forwarder
//!         Subscribe filters (containerd syntax)                     → Subscriber, server stream
//! ttrpc containerd.services.events.ttrpc.v1.Events    (ttrpc.rs, plugin io.containerd.ttrpc.v1.events)
//!         Forward   what shims send: the envelope; its namespace, or else the
//!                   containerd-namespace-ttrpc metadata                → Forwarder
//! ```

pub mod grpc;
pub mod plugin;
pub mod ttrpc;

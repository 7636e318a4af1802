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
pub mod ttrpc;

use std::sync::Arc;

use crate::events::{Forwarder, Publisher, Subscriber};
use crate::plugin::{Instance, PluginType, Registration, ids};
use crate::server::{GrpcService, TtrpcService};

/// `io.containerd.grpc.v1.events`: the gRPC events service over the exchange.
pub fn grpc_plugin() -> Registration {
    Registration::new(PluginType::Grpc, ids::EVENTS, |cx| async move {
        let service = grpc::EventsService::new(
            cx.get::<dyn Publisher>()?,
            cx.get::<dyn Forwarder>()?,
            cx.get::<dyn Subscriber>()?,
        );
        Ok(Instance::new().with::<dyn GrpcService>(Arc::new(service)))
    })
    .requires(&[PluginType::Event])
}

/// `io.containerd.ttrpc.v1.events`: the ttrpc events service shims publish to.
pub fn ttrpc_plugin() -> Registration {
    Registration::new(PluginType::Ttrpc, ids::EVENTS, |cx| async move {
        let service = ttrpc::TtrpcEvents::new(cx.get::<dyn Forwarder>()?);
        Ok(Instance::new().with::<dyn TtrpcService>(Arc::new(service)))
    })
    .requires(&[PluginType::Event])
}

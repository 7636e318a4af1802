//! Wiring of the events services: gRPC for clients, ttrpc for shims.

use std::sync::Arc;

use super::{grpc, ttrpc};
use crate::events::{Forwarder, Publisher, Subscriber};
use crate::plugin::{Instance, PluginType, Registration, ids};
use crate::server::{GrpcService, TtrpcService};

/// The plugins this module registers; `builtins.rs` lists them.
pub fn registrations() -> Vec<Registration> {
    vec![grpc(), ttrpc()]
}

/// `io.containerd.grpc.v1.events`: the gRPC events service over the exchange.
fn grpc() -> Registration {
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
fn ttrpc() -> Registration {
    Registration::new(PluginType::Ttrpc, ids::EVENTS, |cx| async move {
        let service = ttrpc::TtrpcEvents::new(cx.get::<dyn Forwarder>()?);
        Ok(Instance::new().with::<dyn TtrpcService>(Arc::new(service)))
    })
    .requires(&[PluginType::Event])
}

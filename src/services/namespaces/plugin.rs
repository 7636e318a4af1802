//! Wiring of the namespaces service: the in-process `Local` and its gRPC face.

use std::sync::Arc;

use super::grpc::Service;
use super::{Local, Namespaces};
use crate::events::Publisher;
use crate::metadata::NamespaceStore;
use crate::plugin::{Instance, PluginType, Registration, ids};

/// The plugins this module registers; `builtins.rs` lists them.
pub fn registrations() -> Vec<Registration> {
    vec![local(), grpc()]
}

/// `io.containerd.service.v1.namespaces`: provides `dyn Namespaces`.
fn local() -> Registration {
    Registration::new(PluginType::Service, ids::NAMESPACES, |cx| async move {
        let store = cx.get::<dyn NamespaceStore>()?;
        let publisher = cx.get::<dyn Publisher>()?;
        let local: Arc<dyn Namespaces> = Arc::new(Local::new(store, publisher));
        Ok(Instance::new().with::<dyn Namespaces>(local))
    })
    .requires(&[PluginType::Metadata, PluginType::Event])
}

/// `io.containerd.grpc.v1.namespaces`.
fn grpc() -> Registration {
    crate::server::adapter_registration::<dyn Namespaces, _>(ids::NAMESPACES, Service::new)
}

//! Wiring of the containers service: the in-process `Local` and its gRPC face.

use std::sync::Arc;

use super::grpc::Service;
use super::{Containers, Local};
use crate::events::Publisher;
use crate::metadata::ContainerStore;
use crate::plugin::{Instance, PluginType, Registration, ids};

/// The plugins this module registers; `builtins.rs` lists them.
pub fn registrations() -> Vec<Registration> {
    vec![local(), grpc()]
}

/// `io.containerd.service.v1.containers`: provides `dyn Containers`.
fn local() -> Registration {
    Registration::new(PluginType::Service, ids::CONTAINERS, |cx| async move {
        let store = cx.get::<dyn ContainerStore>()?;
        let publisher = cx.get::<dyn Publisher>()?;
        let local: Arc<dyn Containers> = Arc::new(Local::new(store, publisher));
        Ok(Instance::new().with::<dyn Containers>(local))
    })
    .requires(&[PluginType::Metadata, PluginType::Event])
}

/// `io.containerd.grpc.v1.containers`.
fn grpc() -> Registration {
    crate::server::adapter_registration::<dyn Containers, _>(ids::CONTAINERS, Service::new)
}

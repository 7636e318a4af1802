//! Wiring of the leases service: the in-process `Local` and its gRPC face.

use std::sync::Arc;

use super::grpc::Service;
use super::{Leases, Local};
use crate::metadata::LeaseManager;
use crate::plugin::{Instance, PluginType, Registration, ids};

/// The plugins this module registers; `builtins.rs` lists them.
pub fn registrations() -> Vec<Registration> {
    vec![local(), grpc()]
}

/// `io.containerd.service.v1.leases`: provides `dyn Leases`.
fn local() -> Registration {
    Registration::new(PluginType::Service, ids::LEASES, |cx| async move {
        let manager = cx.get::<dyn LeaseManager>()?;
        let gc = cx.get_optional::<crate::gc::Collector>();
        let local: Arc<dyn Leases> = Arc::new(Local::new(manager).with_gc(gc));
        Ok(Instance::new().with::<dyn Leases>(local))
    })
    .requires(&[PluginType::Metadata, PluginType::Internal])
}

/// `io.containerd.grpc.v1.leases`.
fn grpc() -> Registration {
    crate::server::adapter_registration::<dyn Leases, _>(ids::LEASES, Service::new)
}

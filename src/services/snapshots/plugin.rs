//! Wiring of the snapshots service: the in-process `Local` over every snapshotter, and its
//! gRPC face.

use std::sync::Arc;

use super::grpc::Service;
use super::{Local, Snapshots};
use crate::events::Publisher;
use crate::metadata::LeaseManager;
use crate::plugin::{Instance, PluginType, Registration, ids};
use crate::snapshots::Snapshotter;

/// The plugins this module registers; `builtins.rs` lists them.
pub fn registrations() -> Vec<Registration> {
    vec![local(), grpc()]
}

/// `io.containerd.service.v1.snapshots`: provides `dyn Snapshots`.
fn local() -> Registration {
    Registration::new(PluginType::Service, ids::SNAPSHOTS, |cx| async move {
        let snapshotters: Vec<Arc<dyn Snapshotter>> = cx
            .get_all::<dyn Snapshotter>()
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        let leases = cx.get::<dyn LeaseManager>()?;
        let publisher = cx.get::<dyn Publisher>()?;
        let local = Local::new(snapshotters, leases, publisher);
        let names = local.names().join(",");
        let local: Arc<dyn Snapshots> = Arc::new(local);
        Ok(Instance::new()
            .with::<dyn Snapshots>(local)
            .export("snapshotters", names))
    })
    .requires(&[PluginType::Snapshotter, PluginType::Metadata, PluginType::Event])
}

/// `io.containerd.grpc.v1.snapshots`.
fn grpc() -> Registration {
    crate::server::adapter_registration::<dyn Snapshots, _>(ids::SNAPSHOTS, Service::new)
}

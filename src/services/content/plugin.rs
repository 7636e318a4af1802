//! Wiring of the content service: the in-process `Local` and its gRPC face.

use std::sync::Arc;

use super::grpc::Service;
use super::{Content, Local};
use crate::content::Store;
use crate::events::Publisher;
use crate::plugin::{Instance, PluginType, Registration, ids};

/// The plugins this module registers; `builtins.rs` lists them.
pub fn registrations() -> Vec<Registration> {
    vec![local(), grpc()]
}

/// `io.containerd.service.v1.content-service`: provides `dyn Content`.
fn local() -> Registration {
    Registration::new(PluginType::Service, ids::CONTENT_SERVICE, |cx| async move {
        let store = cx.get::<Store>()?;
        let publisher = cx.get::<dyn Publisher>()?;
        let local: Arc<dyn Content> = Arc::new(Local::new(store, publisher));
        Ok(Instance::new().with::<dyn Content>(local))
    })
    .requires(&[PluginType::Content, PluginType::Event])
}

/// `io.containerd.grpc.v1.content`.
fn grpc() -> Registration {
    crate::server::adapter_registration::<dyn Content, _>(ids::CONTENT, Service::new)
}

//! Wiring of the version service.

use std::sync::Arc;

use super::{Local, grpc};
use crate::plugin::{Instance, PluginType, Registration, ids};
use crate::server::GrpcService;

/// The plugins this module registers; `builtins.rs` lists them.
pub fn registrations() -> Vec<Registration> {
    vec![registration()]
}

/// `io.containerd.grpc.v1.version`.
fn registration() -> Registration {
    Registration::new(PluginType::Grpc, ids::VERSION, |_cx| async move {
        let local = Arc::new(Local);
        Ok(Instance::new()
            .with::<dyn GrpcService>(Arc::new(grpc::VersionService::new(local.clone())))
            .with::<Local>(local))
    })
}

//! Wiring of the gRPC health service.

use std::sync::Arc;

use super::Health;
use crate::plugin::{Instance, PluginType, Registration, ids};
use crate::server::GrpcService;

/// The plugins this module registers; `builtins.rs` lists them.
pub fn registrations() -> Vec<Registration> {
    vec![registration()]
}

/// `io.containerd.grpc.v1.healthcheck`, providing `dyn GrpcService` and `Arc<Health>`.
fn registration() -> Registration {
    Registration::new(PluginType::Grpc, ids::HEALTH, |_cx| async move {
        let health = Arc::new(Health::new());
        let on_stop = health.clone();
        Ok(Instance::new()
            .with::<dyn GrpcService>(health.clone())
            .with::<Health>(health)
            .on_shutdown(move || async move { on_stop.set_serving(false).await }))
    })
}

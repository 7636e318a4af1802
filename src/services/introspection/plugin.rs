//! Wiring of the introspection service.

use std::sync::Arc;

use super::{Local, grpc};
use crate::deprecation::Deprecations;
use crate::plugin::{Instance, PluginError, PluginType, Registration, ids};
use crate::server::GrpcService;

/// The plugins this module registers; `builtins.rs` lists them.
pub fn registrations() -> Vec<Registration> {
    vec![registration()]
}

/// `io.containerd.grpc.v1.introspection`, providing `dyn GrpcService` and `Arc<Local>`.
fn registration() -> Registration {
    Registration::new(PluginType::Grpc, ids::INTROSPECTION, |cx| async move {
        let local = Local::open(cx.root(), cx.plugin_table(), cx.get_optional::<Deprecations>())
            .map_err(PluginError::init)?;
        let local = Arc::new(local);
        Ok(Instance::new()
            .with::<dyn GrpcService>(Arc::new(grpc::IntrospectionService::new(local.clone())))
            .with::<Local>(local))
    })
    .requires(&[PluginType::Internal])
}

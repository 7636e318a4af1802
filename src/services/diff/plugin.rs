//! Wiring of the diff service's gRPC face over the differ.

use std::sync::Arc;

use super::grpc::Service;
use crate::diff::Differ;
use crate::plugin::{Instance, PluginType, Registration, ids};
use crate::server::GrpcService;

/// The plugins this module registers; `builtins.rs` lists them.
pub fn registrations() -> Vec<Registration> {
    vec![grpc()]
}

/// `io.containerd.grpc.v1.diff`.
fn grpc() -> Registration {
    Registration::new(PluginType::Grpc, ids::DIFF, |cx| async move {
        let differ = cx.get::<dyn Differ>()?;
        Ok(Instance::new().with::<dyn GrpcService>(Arc::new(Service::new(differ))))
    })
    .requires(&[PluginType::Diff])
}

//! Wiring of the tasks service: the in-process `Local` over the runtime, and its gRPC face.

use std::sync::Arc;

use super::Tasks;
use super::checkpoint::Checkpoints;
use super::grpc::Service;
use super::local::{ID, Local};
use crate::metadata::ContainerStore;
use crate::monitor::{NoopMonitor, TaskMonitor};
use crate::plugin::{InitContext, Instance, PluginType, Registration, ids};
use crate::runtime::PlatformRuntime;
use crate::server::GrpcService;

/// The plugins this module registers; `builtins.rs` lists them.
pub fn registrations() -> Vec<Registration> {
    vec![local(), grpc()]
}

/// `io.containerd.service.v1.tasks-service`: provides `dyn Tasks`.
fn local() -> Registration {
    Registration::new(PluginType::Service, ID, |cx: InitContext| async move {
        let runtime = cx.get::<dyn PlatformRuntime>()?;
        let containers = cx.get::<dyn ContainerStore>()?;
        let monitor = cx
            .get_optional::<dyn TaskMonitor>()
            .unwrap_or_else(|| Arc::new(NoopMonitor));
        let mut local = Local::new(runtime, containers, monitor);
        if let Some(content) = cx.get_optional::<crate::content::Store>() {
            local = local.with_checkpoints(Checkpoints::new(content, cx.root().to_owned()));
        }
        let local = Arc::new(local);
        local.monitor_recovered().await;
        local.clean_stale_checkpoints().await;
        Ok(Instance::new().with::<dyn Tasks>(local))
    })
    .requires(&[
        PluginType::Runtime,
        PluginType::Metadata,
        PluginType::Content,
        PluginType::TaskMonitor,
    ])
}

/// `io.containerd.grpc.v1.tasks`.
fn grpc() -> Registration {
    Registration::new(PluginType::Grpc, ids::TASKS, |cx: InitContext| async move {
        let local = cx.get::<dyn Tasks>()?;
        Ok(Instance::new().with::<dyn GrpcService>(Arc::new(Service::new(local))))
    })
    .requires(&[PluginType::Service])
}

//! The runtime v2 plugin (`io.containerd.runtime.v2.task`): its config table and its
//! registration, which builds the [`TaskManager`], registers its metrics, recovers the
//! tasks of an earlier run and closes the warm pool on shutdown.

use std::path::PathBuf;
use std::sync::Arc;

use super::binary::DaemonAddresses;
use super::manager::{Config, TaskManager};
use super::sealed_runc::SealedRunc;
use crate::events::Publisher;
use crate::plugin::{InitContext, Instance, PluginError, PluginType, Registration, ids};
use crate::runtime::{PlatformRuntime, RuntimeError};

/// The plugins this module registers; `builtins.rs` lists them.
pub fn registrations() -> Vec<Registration> {
    vec![registration()]
}

/// The plugin registration.
fn registration() -> Registration {
    Registration::new(PluginType::Runtime, ids::TASK, |cx: InitContext| async move {
        let config: Config = cx.config()?;
        let publisher = cx.get::<dyn Publisher>()?;
        let exe = std::env::current_exe().map_err(|source| {
            PluginError::init(RuntimeError::Io {
                op: "resolve",
                path: PathBuf::from("/proc/self/exe"),
                source,
            })
        })?;
        let sealed_runc = if config.sealed_runc {
            let state = cx.state().to_path_buf();
            tokio::task::spawn_blocking(move || SealedRunc::install(&state))
                .await
                .ok()
                .flatten()
                .map(Arc::new)
        } else {
            None
        };
        let addrs = DaemonAddresses {
            grpc: cx.addresses().grpc.clone(),
            ttrpc: cx.addresses().ttrpc.clone(),
            exe,
            sealed_runc,
        };
        let manager = TaskManager::new(
            cx.state().to_path_buf(),
            cx.root().to_path_buf(),
            addrs,
            config,
            publisher,
        )
        .map_err(PluginError::init)?;
        manager
            .register_metrics(cx.metrics())
            .map_err(PluginError::init)?;
        manager.load().await;
        let state = cx.state().display().to_string();
        let closing = manager.clone();
        Ok(Instance::new()
            .with::<dyn PlatformRuntime>(Arc::new(manager.clone()))
            .with::<TaskManager>(Arc::new(manager))
            .export("state", state)
            .on_shutdown(move || async move { closing.close_pool().await }))
    })
    .requires(&[PluginType::Event])
    .config::<Config>()
}

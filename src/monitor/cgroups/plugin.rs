//! Wiring of the cgroups task monitor.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{CgroupError, CgroupsMonitor, CollectOptions, Config, Hierarchy};
use crate::monitor::TaskMonitor;
use crate::plugin::{Instance, PluginError, PluginType, Registration, ids};

/// The plugins this module registers; `builtins.rs` lists them.
pub fn registrations() -> Vec<Registration> {
    vec![registration()]
}

/// `io.containerd.monitor.task.v1.cgroups`: provides `dyn TaskMonitor`.
fn registration() -> Registration {
    Registration::new(PluginType::TaskMonitor, ids::CGROUPS, |cx| async move {
        let cfg: Config = cx.config()?;
        let hierarchy = match Hierarchy::detect(&cfg.cgroup_root, Path::new("/proc")) {
            Ok(h) => h,
            Err(e @ CgroupError::NoHierarchy { .. }) => return Err(PluginError::Skip(e.to_string())),
            Err(e) => return Err(PluginError::init(e)),
        };
        let opts = CollectOptions {
            task_timeout: Duration::from_millis(cfg.task_timeout_ms.max(1)),
            parallelism: cfg.parallelism.max(1),
        };
        let monitor = CgroupsMonitor::new(hierarchy, opts).map_err(PluginError::init)?;
        if !cfg.no_prometheus {
            monitor.register(cx.metrics()).map_err(PluginError::init)?;
        }
        tracing::info!(mode = monitor.mode().as_str(), root = %cfg.cgroup_root.display(), "cgroups task monitor up");
        Ok(Instance::new()
            .export("cgroup_mode", monitor.mode().as_str())
            .with::<dyn TaskMonitor>(Arc::new(monitor)))
    })
    .config::<Config>()
}

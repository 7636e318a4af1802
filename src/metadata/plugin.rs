//! The metadata plugin (`io.containerd.metadata.v1.redb`): opens `<root>/meta.redb`, provides
//! [`Db`] and its three store traits, and runs the lease expiry task.
//!
//! Lease expiry: every `lease_expiry_interval_ms` a task deletes the leases whose
//! `containerd.io/gc.expire` label is in the past (containerd does this in its GC, which
//! taskd does not have yet). The task is stopped, and awaited, by the plugin's shutdown hook.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::store::Db;
use super::{ContainerStore, LeaseManager, NamespaceStore};
use crate::plugin::{InitContext, Instance, PluginError, PluginType, Registration, ids};

/// The database file name inside the plugin's root directory.
pub const DB_FILE: &str = "meta.redb";

/// `[plugins."io.containerd.metadata.v1.redb"]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How often expired leases are removed, in milliseconds (at least 10).
    pub lease_expiry_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lease_expiry_interval_ms: 10_000,
        }
    }
}

/// The plugins this module registers; `builtins.rs` lists them.
pub fn registrations() -> Vec<Registration> {
    vec![registration()]
}

fn registration() -> Registration {
    Registration::new(PluginType::Metadata, ids::METADATA, init).config::<Config>()
}

async fn init(cx: InitContext) -> Result<Instance, PluginError> {
    let cfg: Config = cx.config()?;
    let path = cx.root().join(DB_FILE);
    let open_path = path.clone();
    let db = crate::blocking::try_run("open", move || Db::open(&open_path))
        .await
        .map_err(PluginError::init)?;
    let db = Arc::new(db);
    let every = Duration::from_millis(cfg.lease_expiry_interval_ms.max(10));
    let expiry = ExpiryTask::spawn(db.clone(), every);
    Ok(Instance::new()
        .with::<Db>(db.clone())
        .with::<dyn ContainerStore>(db.clone())
        .with::<dyn NamespaceStore>(db.clone())
        .with::<dyn LeaseManager>(db)
        .export("path", path.display().to_string())
        .on_shutdown(move || expiry.stop()))
}

/// The background task that removes expired leases; stop it with [`ExpiryTask::stop`].
pub struct ExpiryTask {
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<()>,
}

impl ExpiryTask {
    /// Starts the task on the current tokio runtime: a tick every `every`, the first at once.
    pub fn spawn(leases: Arc<dyn LeaseManager>, every: Duration) -> ExpiryTask {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {}
                }
                let leases = leases.clone();
                match tokio::task::spawn_blocking(move || leases.expire(SystemTime::now())).await {
                    Ok(Ok(removed)) => {
                        for (namespace, id) in removed {
                            tracing::info!(%namespace, lease = %id, "expired lease removed");
                        }
                    }
                    Ok(Err(error)) => tracing::warn!(%error, "lease expiry failed"),
                    Err(error) => tracing::warn!(%error, "lease expiry task did not complete"),
                }
            }
        });
        ExpiryTask { stop, handle }
    }

    /// Signals the task and waits for it to finish its current tick.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        if let Err(error) = self.handle.await {
            tracing::warn!(%error, "lease expiry task ended abnormally");
        }
    }
}

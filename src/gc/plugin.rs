//! The garbage collector plugin (`io.containerd.internal.v1.gc`): provides
//! `Arc<Collector>` and runs its background task (woken by [`Collector::schedule`], and
//! every `interval_ms`). The task is stopped and awaited by the shutdown hook.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Collector;
use crate::content::Store;
use crate::metadata::Db;
use crate::plugin::{InitContext, Instance, PluginError, PluginType, Registration, ids};

/// `[plugins."io.containerd.internal.v1.gc"]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How often a collection runs without being asked, in milliseconds (at least 100).
    pub interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config { interval_ms: 10_000 }
    }
}

/// The plugins this module registers; `builtins.rs` lists them.
pub fn registrations() -> Vec<Registration> {
    vec![registration()]
}

fn registration() -> Registration {
    Registration::new(PluginType::Internal, ids::GC, init)
        .requires(&[PluginType::Metadata, PluginType::Content, PluginType::Snapshotter])
        .config::<Config>()
}

async fn init(cx: InitContext) -> Result<Instance, PluginError> {
    let cfg: Config = cx.config()?;
    let db = cx.get::<Db>()?;
    let content = cx.get::<Store>()?;
    let tables = db.clone();
    tokio::task::spawn_blocking(move || crate::images::create_table(&tables))
        .await
        .map_err(|e| {
            PluginError::init(super::GcError::Interrupted {
                reason: e.to_string(),
            })
        })?
        .map_err(PluginError::init)?;
    let collector = Collector::new(db, content);
    for (_, sn) in cx.get_all::<crate::snapshots::FsSnapshotter>() {
        collector.register_snapshotter(sn);
    }
    let every = Duration::from_millis(cfg.interval_ms.max(100));
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let c = collector.clone();
    let handle = tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = tick.tick() => {}
                () = c.woken() => {}
            }
            if let Err(error) = c.collect_async().await {
                tracing::warn!(%error, "garbage collection failed");
            }
        }
    });
    Ok(Instance::new()
        .with::<Collector>(collector)
        .export("interval_ms", every.as_millis().to_string())
        .on_shutdown(move || async move {
            let _ = stop.send(());
            if let Err(error) = handle.await {
                tracing::warn!(%error, "gc task ended abnormally");
            }
        }))
}

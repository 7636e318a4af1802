//! `io.containerd.differ.v1.walking`: provides `dyn Differ` ([`Walking`]), with the
//! [`Limits`] from `[plugins."io.containerd.differ.v1.walking"]`. Targets must lie in the
//! `snapshots/` dir of a loaded snapshotter.

use std::sync::Arc;

use super::Differ;
use super::error::DiffError;
use super::model::{LayerSource, Limits};
use super::walking::Walking;
use crate::plugin::{Instance, PluginType, Registration, ids};
use crate::snapshots::Snapshotter;

/// The plugins this module registers; `builtins.rs` lists them.
pub fn registrations() -> Vec<Registration> {
    vec![registration()]
}

fn registration() -> Registration {
    Registration::new(PluginType::Diff, ids::WALKING, |cx| async move {
        let limits: Limits = cx.config()?;
        let allowed = cx
            .get_all::<dyn Snapshotter>()
            .into_iter()
            .map(|(_, s)| s.root().join("snapshots"))
            .collect();
        let content = cx.get_optional::<crate::content::Store>();
        let source = content.clone().map(|s| s as Arc<dyn LayerSource>);
        let mut walking = Walking::new(limits.clone(), allowed, source);
        if let Some(store) = content {
            let scratch = cx.root().join("scratch");
            std::fs::create_dir_all(&scratch).map_err(|e| {
                crate::plugin::PluginError::init(DiffError::Io {
                    op: "create scratch dir",
                    path: scratch.clone(),
                    source: e,
                })
            })?;
            walking = walking.with_sink(Arc::new(super::content_store::Sink(store)), scratch);
        }
        let differ: Arc<dyn Differ> = Arc::new(walking);
        Ok(Instance::new()
            .with::<dyn Differ>(differ)
            .export("max_bytes", limits.max_bytes.to_string())
            .export("max_entries", limits.max_entries.to_string())
            .export("max_ratio", limits.max_ratio.to_string()))
    })
    .requires(&[PluginType::Snapshotter, PluginType::Content])
    .config::<Limits>()
}

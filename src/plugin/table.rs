//! The plugin table (what `ctr plugins ls` and introspection show) and the plugins that are
//! up, shared by the registry that fills them and the init context that reads them.

use std::sync::{Arc, RwLock};

use super::instance::Instance;
use super::types::{PluginId, PluginType};

/// What became of a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginStatus {
    Pending,
    Ok,
    Skipped(String),
    Failed(String),
    Disabled,
}

/// One row of the plugin table (what `ctr plugins ls` shows).
#[derive(Debug, Clone)]
pub struct PluginInfo {
    pub id: PluginId,
    pub requires: Vec<PluginType>,
    pub status: PluginStatus,
    pub exports: Vec<(String, String)>,
    pub capabilities: Vec<&'static str>,
}

/// The live plugin table, shared with introspection.
#[derive(Clone, Default)]
pub struct PluginTable(Arc<RwLock<Vec<PluginInfo>>>);

impl PluginTable {
    pub fn snapshot(&self) -> Vec<PluginInfo> {
        self.0
            .read()
            .map(|t| t.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub(super) fn new(rows: Vec<PluginInfo>) -> PluginTable {
        PluginTable(Arc::new(RwLock::new(rows)))
    }

    pub(super) fn update(&self, index: usize, f: impl FnOnce(&mut PluginInfo)) {
        let mut guard = self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(info) = guard.get_mut(index) {
            f(info);
        }
    }
}

/// A plugin that initialized, with what it provides.
#[derive(Clone)]
pub(super) struct Up {
    pub(super) id: PluginId,
    pub(super) instance: Arc<Instance>,
}

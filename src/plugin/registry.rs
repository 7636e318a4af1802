use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::context::{Addresses, InitContext};
use super::error::PluginError;
use super::graph;
use super::instance::{Instance, ShutdownFn};
use super::table::{PluginInfo, PluginStatus, PluginTable, Up};
use super::types::{PluginId, PluginType};

type InitFuture = Pin<Box<dyn Future<Output = Result<Instance, PluginError>> + Send>>;
type InitFn = Box<dyn Fn(InitContext) -> InitFuture + Send + Sync>;

/// A plugin's meaning check of its table: `Err((dotted key inside the table, reason))`.
pub type ValidateFn = fn(toml::Table) -> Result<(), (String, String)>;

/// A plugin's config schema: its defaults (for `taskd config default`) and a checker (for
/// `taskd config check`). Built with [`PluginConfig::of`].
#[derive(Clone, Copy)]
pub struct PluginConfig {
    pub default: fn() -> toml::Table,
    pub check: fn(toml::Table) -> Result<(), toml::de::Error>,
    /// The meaning check the plugin's init runs too (after `check` passed): the dotted key
    /// inside the plugin's table and the reason. Set with [`Registration::validate`].
    pub validate: Option<ValidateFn>,
}

impl PluginConfig {
    pub fn of<T: Serialize + DeserializeOwned + Default + 'static>() -> Self {
        PluginConfig {
            default: || match toml::Table::try_from(T::default()) {
                Ok(t) => t,
                Err(e) => unreachable!(
                    "default config of {} must serialize: {e}",
                    std::any::type_name::<T>()
                ),
            },
            check: |t| toml::Value::Table(t).try_into::<T>().map(|_| ()),
            validate: None,
        }
    }
}

/// One plugin: type, id, required types, optional config, init function.
pub struct Registration {
    pub r#type: PluginType,
    pub id: &'static str,
    pub requires: Vec<PluginType>,
    pub config: Option<PluginConfig>,
    init: InitFn,
}

impl Registration {
    pub fn new<F, Fut>(r#type: PluginType, id: &'static str, init: F) -> Self
    where
        F: Fn(InitContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Instance, PluginError>> + Send + 'static,
    {
        Registration {
            r#type,
            id,
            requires: Vec::new(),
            config: None,
            init: Box::new(move |cx| Box::pin(init(cx))),
        }
    }

    pub fn requires(mut self, types: &[PluginType]) -> Self {
        self.requires = types.to_vec();
        self
    }

    pub fn config<T: Serialize + DeserializeOwned + Default + 'static>(mut self) -> Self {
        self.config = Some(PluginConfig::of::<T>());
        self
    }

    /// The meaning check of the plugin's config table, run by `taskd config check` (and by
    /// the SIGHUP reload) once the table parsed: `Err((dotted key in the table, reason))`.
    pub fn validate(mut self, f: ValidateFn) -> Self {
        if let Some(pc) = &mut self.config {
            pc.validate = Some(f);
        }
        self
    }

    pub fn plugin_id(&self) -> PluginId {
        PluginId {
            r#type: self.r#type,
            id: self.id,
        }
    }
}

/// A problem with the set of registrations or with `required_plugins`: never a panic.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("plugin {0} is registered twice")]
    Duplicate(String),
    #[error("plugin {plugin} requires type {required}, but no plugin of that type is registered")]
    MissingRequirement { plugin: String, required: PluginType },
    #[error("plugin requirements form a cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error("required plugin {plugin} is not up: {reason}")]
    RequiredNotUp { plugin: String, reason: String },
    #[error("required plugin {0} is not registered")]
    RequiredUnknown(String),
}

/// Everything `init` needs from the daemon's config.
#[derive(Clone, Default)]
pub struct RegistryConfig {
    pub root: PathBuf,
    pub state: PathBuf,
    /// Raw per-plugin tables keyed by `<type uri>.<id>`.
    pub plugins: BTreeMap<String, toml::Table>,
    pub disabled_plugins: Vec<String>,
    pub required_plugins: Vec<String>,
    pub addresses: Addresses,
    pub metrics: prometheus::Registry,
}

/// A validated set of registrations in init order.
pub struct Registry {
    ordered: Vec<Registration>,
}

impl Registry {
    /// Checks duplicates, requirements and cycles, and fixes the init order.
    pub fn new(registrations: Vec<Registration>) -> Result<Registry, RegistryError> {
        let mut seen = HashSet::new();
        for r in &registrations {
            if !seen.insert(r.plugin_id()) {
                return Err(RegistryError::Duplicate(r.plugin_id().to_string()));
            }
        }
        for r in &registrations {
            for &required in &r.requires {
                if !registrations.iter().any(|o| o.r#type == required) {
                    return Err(RegistryError::MissingRequirement {
                        plugin: r.plugin_id().to_string(),
                        required,
                    });
                }
            }
        }
        let nodes: Vec<_> = registrations
            .iter()
            .map(|r| (r.r#type, r.requires.clone()))
            .collect();
        let order = graph::order(&nodes).map_err(|cycle| {
            let mut names: Vec<String> = cycle
                .iter()
                .map(|&i| registrations[i].plugin_id().to_string())
                .collect();
            if let Some(first) = names.first().cloned() {
                names.push(first);
            }
            RegistryError::Cycle(names)
        })?;
        let mut slots: Vec<Option<Registration>> = registrations.into_iter().map(Some).collect();
        let ordered = order.into_iter().filter_map(|i| slots[i].take()).collect();
        Ok(Registry { ordered })
    }

    /// The registrations in init order.
    pub fn registrations(&self) -> &[Registration] {
        &self.ordered
    }

    /// Initializes every plugin in order. Returns an error only for `required_plugins`.
    pub async fn init(self, cfg: RegistryConfig) -> Result<Plugins, RegistryError> {
        let names: Vec<String> = self.ordered.iter().map(|r| r.plugin_id().to_string()).collect();
        for req in &cfg.required_plugins {
            if !names.contains(req) {
                return Err(RegistryError::RequiredUnknown(req.clone()));
            }
        }
        for dis in &cfg.disabled_plugins {
            if !names.contains(dis) {
                tracing::warn!(plugin = %dis, "disabled_plugins names a plugin that is not registered");
            }
        }
        let table = PluginTable::new(
            self.ordered
                .iter()
                .map(|r| PluginInfo {
                    id: r.plugin_id(),
                    requires: r.requires.clone(),
                    status: PluginStatus::Pending,
                    exports: Vec::new(),
                    capabilities: Vec::new(),
                })
                .collect(),
        );
        let mut up: Vec<Up> = Vec::new();
        let mut hooks: Vec<(PluginId, ShutdownFn)> = Vec::new();
        for (index, reg) in self.ordered.into_iter().enumerate() {
            let id = reg.plugin_id();
            let name = id.to_string();
            if cfg.disabled_plugins.contains(&name) {
                tracing::info!(plugin = %name, "plugin disabled by config");
                table.update(index, |i| i.status = PluginStatus::Disabled);
                continue;
            }
            let result = init_one(&reg, &cfg, &up, &table).await;
            match result {
                Ok(mut instance) => {
                    tracing::debug!(plugin = %name, "plugin up");
                    if let Some(hook) = instance.shutdown.take() {
                        hooks.push((id.clone(), hook));
                    }
                    let exports = std::mem::take(&mut instance.exports);
                    let caps = instance.capability_names();
                    table.update(index, |i| {
                        i.status = PluginStatus::Ok;
                        i.exports = exports;
                        i.capabilities = caps;
                    });
                    up.push(Up {
                        id,
                        instance: Arc::new(instance),
                    });
                }
                Err(PluginError::Skip(reason)) => {
                    tracing::info!(plugin = %name, %reason, "plugin skipped");
                    table.update(index, |i| i.status = PluginStatus::Skipped(reason));
                }
                Err(err) => {
                    tracing::warn!(plugin = %name, error = %err, "plugin failed to init");
                    table.update(index, |i| i.status = PluginStatus::Failed(err.to_string()));
                }
            }
        }
        for info in table.snapshot() {
            let name = info.id.to_string();
            if cfg.required_plugins.contains(&name) && info.status != PluginStatus::Ok {
                let reason = match info.status {
                    PluginStatus::Skipped(r) => format!("skipped: {r}"),
                    PluginStatus::Failed(e) => e,
                    PluginStatus::Disabled => "disabled by config".into(),
                    PluginStatus::Pending | PluginStatus::Ok => "not initialized".into(),
                };
                return Err(RegistryError::RequiredNotUp { plugin: name, reason });
            }
        }
        Ok(Plugins { up, hooks, table })
    }
}

/// Creates a plugin's directory 0700 (and makes an existing one 0700): below the 0711 root and
/// state, nothing of a plugin is reachable by other users: not the CRI records (container env,
/// so Secrets), `meta.redb`, content ingests, nor snapshots (layer contents, setuid binaries)
/// (the CVE-2021-41103 class). Containers never walk these paths: runc mounts what they see
/// as root before it drops to the container's user.
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

async fn init_one(
    reg: &Registration,
    cfg: &RegistryConfig,
    up: &[Up],
    table: &PluginTable,
) -> Result<Instance, PluginError> {
    let id = reg.plugin_id();
    let name = id.to_string();
    let root = cfg.root.join(&name);
    let state = cfg.state.join(&name);
    for dir in [&root, &state] {
        private_dir(dir).map_err(|source| PluginError::Dir {
            plugin: name.clone(),
            path: dir.clone(),
            source,
        })?;
    }
    let cx = InitContext {
        id,
        requires: reg.requires.clone(),
        root,
        state,
        config: cfg.plugins.get(&name).cloned(),
        addresses: cfg.addresses.clone(),
        metrics: cfg.metrics.clone(),
        up: up.to_vec(),
        table: table.clone(),
    };
    (reg.init)(cx).await
}

/// The plugins that came up, in init order.
pub struct Plugins {
    up: Vec<Up>,
    hooks: Vec<(PluginId, ShutdownFn)>,
    table: PluginTable,
}

impl Plugins {
    /// Every capability `T` provided by any plugin that is up, with its plugin id.
    pub fn get_all<T: ?Sized + Send + Sync + 'static>(&self) -> Vec<(PluginId, Arc<T>)> {
        self.up
            .iter()
            .filter_map(|u| u.instance.get::<T>().map(|c| (u.id.clone(), c)))
            .collect()
    }

    /// The first capability `T` provided by any plugin that is up.
    pub fn get<T: ?Sized + Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.up.iter().find_map(|u| u.instance.get::<T>())
    }

    pub fn table(&self) -> PluginTable {
        self.table.clone()
    }

    /// Runs the shutdown hooks in reverse init order, each bounded by `timeout`.
    pub async fn shutdown(mut self, timeout: Duration) {
        while let Some((id, hook)) = self.hooks.pop() {
            if tokio::time::timeout(timeout, hook()).await.is_err() {
                tracing::warn!(plugin = %id, ?timeout, "shutdown hook timed out");
            }
        }
    }
}

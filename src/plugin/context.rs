use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::error::PluginError;
use super::table::{PluginTable, Up};
use super::types::{PluginId, PluginType};

/// The server addresses a plugin may need (the shim manager passes them to shims).
#[derive(Debug, Clone, Default)]
pub struct Addresses {
    /// The gRPC unix socket (`GRPC_ADDRESS` for shims).
    pub grpc: PathBuf,
    /// The ttrpc unix socket (`TTRPC_ADDRESS` for shims).
    pub ttrpc: PathBuf,
    /// The HTTP metrics/health listen address, if enabled.
    pub metrics: Option<String>,
}

/// What a plugin's init function gets: typed access to the capabilities of the plugins
/// initialized before it, its own directories and config, and the daemon's addresses.
pub struct InitContext {
    pub(super) id: PluginId,
    pub(super) requires: Vec<PluginType>,
    pub(super) root: PathBuf,
    pub(super) state: PathBuf,
    pub(super) config: Option<toml::Table>,
    pub(super) addresses: Addresses,
    pub(super) metrics: prometheus::Registry,
    pub(super) up: Vec<Up>,
    pub(super) table: PluginTable,
}

impl InitContext {
    /// This plugin's `<type>.<id>`.
    pub fn id(&self) -> &PluginId {
        &self.id
    }

    /// `<root>/<type>.<id>`: persistent, created before init.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<state>/<type>.<id>`: volatile, created before init.
    pub fn state(&self) -> &Path {
        &self.state
    }

    pub fn addresses(&self) -> &Addresses {
        &self.addresses
    }

    /// The daemon's Prometheus registry; plugins register their own collectors in it.
    pub fn metrics(&self) -> &prometheus::Registry {
        &self.metrics
    }

    /// The live table of every plugin and its status (for introspection).
    pub fn plugin_table(&self) -> PluginTable {
        self.table.clone()
    }

    /// This plugin's config table decoded into `T`, or `T::default()` when the config file
    /// has no table for it.
    pub fn config<T: DeserializeOwned + Default>(&self) -> Result<T, PluginError> {
        match &self.config {
            None => Ok(T::default()),
            Some(table) => {
                toml::Value::Table(table.clone())
                    .try_into()
                    .map_err(|source| PluginError::Config {
                        plugin: self.id.to_string(),
                        source,
                    })
            }
        }
    }

    /// The first capability `T` provided by an initialized plugin of a required type.
    pub fn get<T: ?Sized + Send + Sync + 'static>(&self) -> Result<Arc<T>, PluginError> {
        self.get_optional::<T>().ok_or_else(|| PluginError::Missing {
            capability: std::any::type_name::<T>(),
            types: self
                .requires
                .iter()
                .map(|t| t.uri())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Like [`get`](Self::get), but absence is not an error (the caller picks a fallback).
    pub fn get_optional<T: ?Sized + Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.candidates().find_map(|u| u.instance.get::<T>())
    }

    /// Every capability `T` provided by initialized plugins of required types
    /// (containerd's `GetByType`), with the providing plugin's id.
    pub fn get_all<T: ?Sized + Send + Sync + 'static>(&self) -> Vec<(PluginId, Arc<T>)> {
        self.candidates()
            .filter_map(|u| u.instance.get::<T>().map(|c| (u.id.clone(), c)))
            .collect()
    }

    /// The capability `T` of one plugin, by type and id (containerd's `GetByID`).
    pub fn get_by_id<T: ?Sized + Send + Sync + 'static>(
        &self,
        r#type: PluginType,
        id: &str,
    ) -> Result<Arc<T>, PluginError> {
        let name = format!("{type}.{id}");
        let up = self
            .candidates()
            .find(|u| u.id.r#type == r#type && u.id.id == id)
            .ok_or_else(|| PluginError::NotUp { id: name.clone() })?;
        up.instance.get::<T>().ok_or(PluginError::Missing {
            capability: std::any::type_name::<T>(),
            types: name,
        })
    }

    fn candidates(&self) -> impl Iterator<Item = &Up> {
        self.up.iter().filter(|u| self.requires.contains(&u.id.r#type))
    }
}

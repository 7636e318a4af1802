//! Why a plugin did not come up: [`PluginError`].

use crate::errdefs::{ErrorKind, Kind};

/// Why a plugin did not come up.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The plugin does not apply here ("not on this host"); not an error for the daemon.
    #[error("skip plugin: {0}")]
    Skip(String),
    /// A capability the plugin asked for is not provided by any plugin that is up.
    #[error("no plugin of type {types} that is up provides {capability}")]
    Missing { capability: &'static str, types: String },
    /// `get_by_id` named a plugin that is not up.
    #[error("plugin {id} is not up")]
    NotUp { id: String },
    /// The plugin's config table did not decode.
    #[error("invalid config for plugin {plugin}: {source}")]
    Config { plugin: String, source: toml::de::Error },
    /// The plugin could not create its root or state directory.
    #[error("plugin {plugin}: create {path}: {source}")]
    Dir {
        plugin: String,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The plugin's own init failed.
    #[error("{0}")]
    Init(Box<dyn std::error::Error + Send + Sync>),
}

impl PluginError {
    /// Wraps any error from a plugin's own init.
    pub fn init(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        PluginError::Init(Box::new(err))
    }

    pub fn is_skip(&self) -> bool {
        matches!(self, PluginError::Skip(_))
    }
}

impl ErrorKind for PluginError {
    fn kind(&self) -> Kind {
        match self {
            PluginError::Skip(_) => Kind::NotImplemented,
            PluginError::Missing { .. } | PluginError::NotUp { .. } => Kind::FailedPrecondition,
            PluginError::Config { .. } => Kind::InvalidArgument,
            PluginError::Dir { .. } | PluginError::Init(_) => Kind::Unknown,
        }
    }
}

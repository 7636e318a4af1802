//! The typed plugin registry (containerd's `plugin.Register`, with types instead of casts).
//!
//! A [`Registration`] declares a [`PluginType`], an id, the types it requires, an optional
//! config table and an async init function. [`Registry::init`] orders the plugins by their
//! requirements, runs each init with an [`InitContext`] that hands out typed capabilities of
//! the plugins already initialized, records what happened to every plugin (for
//! introspection), and returns the running [`Plugins`], whose [`Plugins::shutdown`] runs the
//! shutdown hooks in reverse init order, each bounded by a timeout.
//!
//! Rules:
//! - a cycle, a duplicate or a requirement no registered plugin can satisfy is a
//!   [`RegistryError`] naming the plugins involved, before any plugin runs;
//! - an init may skip itself ([`PluginError::Skip`], "not on this host") or fail; either
//!   makes the plugins that need it fail in turn, unless another plugin of the same type
//!   is up; a plugin listed in `required_plugins` that is not up stops the daemon;
//! - `disabled_plugins` are never initialized.

mod context;
mod error;
mod graph;
mod instance;
mod registry;
mod table;
mod types;

pub use context::{Addresses, InitContext};
pub use error::PluginError;
pub use instance::{Instance, ShutdownFn};
pub use registry::{PluginConfig, Plugins, Registration, Registry, RegistryConfig, RegistryError};
pub use table::{PluginInfo, PluginStatus, PluginTable};
pub use types::{PluginId, PluginType, ids};

#[cfg(test)]
mod tests;

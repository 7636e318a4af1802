//! Runtime-level RPCs: Version, Status, RuntimeConfig, UpdateRuntimeConfig.

pub mod runtime_config;
pub mod status;
pub mod update_runtime_config;
pub mod version;

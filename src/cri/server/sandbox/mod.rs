//! Pod sandbox RPCs. Run/Stop/Remove do the pod's bookkeeping (store, netns, CNI, pod files)
//! and drive the pause container through the `SandboxController`; Status/List/Stream read
//! the store.

pub mod list;
pub mod metrics;
pub mod port_forward;
pub mod remove;
pub mod run;
pub mod stats;
pub mod status;
pub mod stop;
pub mod stream;
pub mod update_resources;

#[cfg(test)]
mod tests;

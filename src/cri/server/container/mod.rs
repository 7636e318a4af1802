//! Container RPCs. Create/Start/Stop/Remove keep the store and the stdio/log plumbing and
//! drive the task through the `ContainerRuntime`; Status/List/Stream/ReopenContainerLog
//! read the store.

pub mod attach;
pub mod checkpoint;
pub mod create;
pub mod events;
pub mod exec;
pub mod exec_sync;
pub mod list;
pub mod propagation;
pub mod remove;
pub mod reopen_log;
pub mod start;
pub mod stats;
pub mod status;
pub mod stop;
pub mod stream;
pub mod update_resources;

#[cfg(test)]
mod tests;

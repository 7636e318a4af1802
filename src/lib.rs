//! taskd: a Kubernetes node container runtime with containerd's APIs.
//!
//! See `docs/ARCHITECTURE.md` for the map of this crate.

pub mod blocking;
pub mod builtins;
pub mod config;
pub mod content;
pub mod cri;
pub mod deprecation;
pub mod diff;
#[cfg(test)]
#[allow(dead_code)] // each test binary uses part of it (tests/support includes it too)
mod e2e_guard;
pub mod errdefs;
pub mod events;
pub mod filters;
pub mod gc;
pub mod identifiers;
pub mod images;
pub mod logging;
pub mod metadata;
pub mod migrate;
pub mod monitor;
pub mod plugin;
pub mod rollback;
pub mod runtime;
pub mod server;
pub mod services;
pub mod snapshots;
pub mod telemetry;

/// The crate version (`taskd_build_info{version}`, `ctr version`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git revision taskd was built from, or "unknown" (`taskd_build_info{revision}`).
pub const REVISION: &str = env!("TASKD_REVISION");

//! taskd: a Kubernetes node container runtime with containerd's APIs.
//!
//! See `docs/ARCHITECTURE.md` for the map of this crate.

pub mod builtins;
pub mod deprecation;
pub mod errdefs;
pub mod events;
pub mod filters;
pub mod identifiers;
pub mod metadata;
pub mod monitor;
pub mod plugin;
pub mod runtime;
pub mod server;
pub mod services;

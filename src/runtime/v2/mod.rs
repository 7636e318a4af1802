//! The runtime v2 shim manager (`io.containerd.runtime.v2.task`), by concern, from the
//! top floor down (each file imports only files below it):
//!
//! - [`plugin`]: the plugin registration.
//! - [`recovery`]: [`TaskManager::load`], the tasks of an earlier run.
//! - [`manager`]: [`TaskManager`] and its [`Config`]: the task table, create with its
//!   rollback, delete, shim deaths.
//! - [`metrics`]: the runtime's series.
//! - [`pool`]: the warm shim pool, an object owning its background tasks.
//! - [`conns`]: the shim connections, each with a pidfd watcher that reports the shim's
//!   death to the manager.
//! - [`binary`]: resolve `io.containerd.runc.v2` → `containerd-shim-runc-v2`, run
//!   `<shim> start` / `<shim> delete` with containerd's flags and env.
//! - [`shim`]: the ttrpc client (`containerd.task.v2.Task`) of one shim, and the task and
//!   process objects over it.
//! - [`bundle`]: the bundle dir, `<state>/io.containerd.runtime.v2.task/<ns>/<id>/`.
//!
//! Grouping: the shim itself decides which shim serves a container (runc's shim hashes the
//! `io.kubernetes.cri.sandbox-id` annotation into its socket address and answers `start`
//! with the sandbox shim's address). Here, tasks whose shim printed the same address share
//! one [`shim::ShimConn`].
//!
//! Death: every shim connection has a watcher on the shim's pidfd. When the shim exits,
//! each live task it served gets `<shim> delete` in its bundle, its bundle removed, a
//! `/tasks/exit` published and its state set to stopped; `delete` later forgets it and
//! publishes `/tasks/delete` (the shim can no longer). Tasks deleted normally get their
//! events from the shim itself, so nothing is published twice.
//!
//! Recovery ([`TaskManager::load`], in [`recovery`]): every bundle dir is visited; a live shim is reconnected,
//! a dead one is cleaned up as above. A broken bundle is logged and skipped. Shims are
//! never killed on daemon shutdown (idle pool shims are: they serve nothing).
//!
//! Warm pool ([`pool`]): pre-started shims per namespace + runtime that a create takes
//! instead of running `<shim> start` (`shim_pool_size`).

pub mod binary;
pub mod bundle;
pub mod conns;
pub mod manager;
pub mod metrics;
pub mod plugin;
pub mod pool;
pub mod recovery;
pub mod sealed_runc;
pub mod shim;

pub use manager::{Config, TaskManager};

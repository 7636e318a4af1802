//! Snapshotters: the `overlayfs` snapshotter and the copy-based `native` fallback.
//!
//! One implementation, [`FsSnapshotter`], serves both plugins; a [`Backend`] decides how a
//! snapshot's directories turn into mounts (overlay: lowerdir/upperdir/workdir; native: a
//! bind of a full copy). Snapshot metadata lives in the daemon's redb metadata database
//! (`store.rs`), namespaced as containerd's metadata snapshotter does: a key (active or view)
//! and a committed name are per namespace, and a parent is a committed name in the same
//! namespace and snapshotter.
//!
//! # Lifecycle
//!
//! ```text
//!             prepare(key, parent)            commit(name, key)
//!   (none) ─────────────────────────▶ Active ───────────────────▶ Committed(name)
//!     │       view(key, parent)                                        │
//!     └─────────────────────────────▶ View                             │ parent of
//!                                       │                              ▼
//!      remove(key) ◀────────────────────┴──── Active/View/Committed (no children)
//! ```
//!
//! - A parent must be Committed. Removing a snapshot that still has children is
//!   FailedPrecondition. Commit keeps the backing directory (same id) under the new name.
//! - On disk, `<plugin root>/snapshots/<id>/fs` holds a snapshot's files (overlay: its upper
//!   dir; native: the full tree), `<id>/work` the overlay work dir. Ids come from a per
//!   snapshotter sequence in the database; a directory whose id no record names is an orphan
//!   (a crash between allocation and record) that [`Snapshotter::cleanup`] removes.
//!
//! # Garbage collection hook
//!
//! The collector (`gc`, from the content work) needs `snapshots(ns)` and `remove(ns, key)`
//! synchronously: [`FsSnapshotter::list_blocking`] and [`FsSnapshotter::remove_blocking`]
//! are exactly that, so its `SnapshotGc` adapter is a few lines. Alternatively a collector
//! marks what is referenced (images' `containerd.io/gc.ref.snapshot.<name>`
//! labels, containers' snapshot keys, leases' `snapshots/<snapshotter>` resources,
//! `containerd.io/gc.root` labels) and calls [`Snapshotter::remove_unreferenced`] with the
//! marked keys; it removes every other snapshot of the namespace that is not an ancestor of
//! a kept one, children first.

mod error;
mod fsutil;
mod model;
pub mod plugin;
mod snapshotter;
mod store;

#[cfg(test)]
mod tests;

pub use error::SnapshotError;
pub use fsutil::copy_dir as copy_tree;
pub use model::{Info, Kind, Snapshotter, Usage};
pub use snapshotter::{Backend, FsSnapshotter};
pub use store::SnapshotFields;

/// A mount as containerd describes it: the runtime's type, so snapshot mounts go straight
/// into a task's rootfs (`CreateOpts.rootfs`).
pub use crate::runtime::Mount;

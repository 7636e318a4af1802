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
pub use model::{Info, Kind, Usage};
pub use snapshotter::Backend;
pub use store::SnapshotFields;

/// A mount as containerd describes it: the runtime's type, so snapshot mounts go straight
/// into a task's rootfs (`CreateOpts.rootfs`).
pub use crate::runtime::Mount;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

// The plugin capabilities stay here: introspection names a capability by its Rust path
// (`taskd::snapshots::Snapshotter`), so moving one would change what `Plugins` reports.

/// A snapshotter, namespaced: what the snapshots service, the diff applier, the tasks
/// service and the CRI adapter use in process.
#[async_trait]
pub trait Snapshotter: Send + Sync {
    /// The plugin id (`overlayfs`, `native`): the `snapshotter` field of the API.
    fn name(&self) -> &str;
    /// The plugin's root; snapshot directories live in `<root>/snapshots/`.
    fn root(&self) -> &Path;
    async fn stat(&self, namespace: &str, key: &str) -> Result<Info, SnapshotError>;
    /// `fieldpaths` empty or `labels` = replace the labels; `labels.KEY` = set one (an empty
    /// value removes it). Name, parent, kind and created are immutable.
    async fn update(
        &self,
        namespace: &str,
        info: Info,
        fieldpaths: Vec<String>,
    ) -> Result<Info, SnapshotError>;
    /// Active: measured now; Committed: measured at commit; View: 0.
    async fn usage(&self, namespace: &str, key: &str) -> Result<Usage, SnapshotError>;
    async fn mounts(&self, namespace: &str, key: &str) -> Result<Vec<Mount>, SnapshotError>;
    /// A new writable snapshot `key` on top of the committed `parent` ("" = empty).
    async fn prepare(
        &self,
        namespace: &str,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError>;
    /// A new read-only snapshot `key` of `parent`.
    async fn view(
        &self,
        namespace: &str,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError>;
    /// Commits the active `key` as `name` (the key is gone afterwards).
    async fn commit(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), SnapshotError>;
    /// FailedPrecondition while `key` has children.
    async fn remove(&self, namespace: &str, key: &str) -> Result<(), SnapshotError>;
    /// Every snapshot of the namespace matching `filters` (fields `name`, `parent`, `kind`,
    /// `labels.KEY`), sorted by name.
    async fn walk(&self, namespace: &str, filters: Vec<String>) -> Result<Vec<Info>, SnapshotError>;
    /// Removes directories no snapshot record names (crash leftovers, failed removals).
    async fn cleanup(&self) -> Result<(), SnapshotError>;
    /// The GC hook: removes every snapshot of `namespace` that is neither in `keep` nor an
    /// ancestor of a kept one, children first; returns the removed keys.
    async fn remove_unreferenced(
        &self,
        namespace: &str,
        keep: BTreeSet<String>,
    ) -> Result<Vec<String>, SnapshotError>;
}

/// The snapshotter over the metadata database and a directory (both plugins).
pub struct FsSnapshotter {
    name: String,
    root: PathBuf,
    backend: Backend,
    store: Arc<store::Store>,
}

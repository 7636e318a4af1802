//! What a snapshotter speaks: [`Kind`], [`Info`], [`Usage`], and the [`Snapshotter`] trait
//! that the snapshots service, the diff applier, the tasks service and the CRI use.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::SystemTime;

use async_trait::async_trait;

use super::error::SnapshotError;
use crate::runtime::Mount;

/// The kind of a snapshot (containerd's `snapshots.Kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Kind {
    #[default]
    Unknown,
    View,
    Active,
    Committed,
}

impl Kind {
    /// containerd's `Kind.String()` ("View", "Active", "Committed"): what `ctr snapshots ls`
    /// prints and what a `kind==` filter compares.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Unknown => "Unknown",
            Kind::View => "View",
            Kind::Active => "Active",
            Kind::Committed => "Committed",
        }
    }
}

/// A snapshot's metadata (containerd's `snapshots.Info`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Info {
    /// The key (Active, View) or the committed name.
    pub name: String,
    /// The committed parent's name, empty for none.
    pub parent: String,
    pub kind: Kind,
    pub labels: BTreeMap<String, String>,
    pub created_at: Option<SystemTime>,
    pub updated_at: Option<SystemTime>,
}

/// Disk usage of a snapshot's own layer (not its parents).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Bytes used on disk (allocated blocks, hard links counted once).
    pub size: i64,
    /// Inodes used.
    pub inodes: i64,
}

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

//! [`SnapshotGc`] for the snapshotters (`FsSnapshotter`: overlayfs, native), through their
//! blocking list/remove.

use super::{BoxError, GcSnapshot, SnapshotGc};
use crate::snapshots::{FsSnapshotter, Snapshotter};

impl SnapshotGc for FsSnapshotter {
    fn snapshotter(&self) -> &str {
        Snapshotter::name(self)
    }

    fn snapshots(&self, namespace: &str) -> Result<Vec<GcSnapshot>, BoxError> {
        Ok(self
            .list_blocking(namespace)?
            .into_iter()
            .map(|i| GcSnapshot {
                key: i.name,
                parent: i.parent,
                labels: i.labels,
            })
            .collect())
    }

    fn remove(&self, namespace: &str, key: &str) -> Result<(), BoxError> {
        Ok(self.remove_blocking(namespace, key)?)
    }
}

//! What a snapshotter speaks: [`Kind`], [`Info`], [`Usage`] (the `Snapshotter` trait itself
//! stays in `mod.rs`: it is a plugin capability, named by its path).

use std::collections::BTreeMap;
use std::time::SystemTime;

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

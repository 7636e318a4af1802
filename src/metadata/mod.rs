//! Metadata: the domain records and store traits. The redb implementation lives in this
//! module's submodules (see `store.rs`).

use std::collections::BTreeMap;
use std::time::SystemTime;

/// A container record (containerd's `containers.Container`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Container {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub image: String,
    pub runtime: Runtime,
    /// The OCI runtime spec as an `Any` (`types.containerd.io/opencontainers/runtime-spec/1/Spec`).
    pub spec: Option<prost_types::Any>,
    pub snapshotter: String,
    pub snapshot_key: String,
    pub created_at: Option<SystemTime>,
    pub updated_at: Option<SystemTime>,
    pub extensions: BTreeMap<String, prost_types::Any>,
    pub sandbox: String,
}

/// The runtime a container runs under: name (`io.containerd.runc.v2`) and options.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Runtime {
    pub name: String,
    pub options: Option<prost_types::Any>,
}

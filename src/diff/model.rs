//! What the differ speaks: layer media types, [`Limits`], apply options and results,
//! descriptors, and [`LayerSource`] and [`LayerSink`], which the content store implements
//! (the `Differ` trait stays in `mod.rs`: it is a plugin capability, named by its path).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::DiffError;

/// The media type of an uncompressed OCI layer (the "applied" descriptor's type).
pub const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// Layer media types Apply accepts (OCI and Docker; compression is detected by magic bytes,
/// as containerd does).
pub const LAYER_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

pub(crate) fn check_media_type(media_type: &str) -> Result<(), DiffError> {
    if LAYER_MEDIA_TYPES.contains(&media_type) {
        Ok(())
    } else {
        Err(DiffError::UnsupportedMediaType(media_type.to_owned()))
    }
}

/// Limits on one layer; `[plugins."io.containerd.differ.v1.walking"]` sets them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most uncompressed bytes one layer may hold (default 32 GiB).
    pub max_bytes: u64,
    /// Most tar entries one layer may hold (default 2,000,000).
    pub max_entries: u64,
    /// Most uncompressed bytes per compressed byte (default 200; 0 = no check), checked once
    /// more than `ratio_min_bytes` were decompressed.
    pub max_ratio: u64,
    /// Below this many uncompressed bytes the ratio is not checked (default 64 MiB).
    pub ratio_min_bytes: u64,
    /// Allow char/block device nodes in layers (default false: refused).
    pub allow_device_nodes: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 32 << 30,
            max_entries: 2_000_000,
            max_ratio: 200,
            ratio_min_bytes: 64 << 20,
            allow_device_nodes: false,
        }
    }
}

/// The on-disk format of the target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Format {
    /// A plain directory: whiteouts remove.
    #[default]
    Native,
    /// An overlay upper dir over `lowers` (closest first): whiteouts become 0/0 char devices,
    /// opaque dirs get `trusted.overlay.opaque=y`.
    Overlay { lowers: Vec<PathBuf> },
}

/// How to apply a layer.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    pub format: Format,
    pub limits: Limits,
}

/// What was applied: the uncompressed tar's descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub media_type: String,
    /// `sha256:<hex>` of the uncompressed stream.
    pub digest: String,
    /// Uncompressed size in bytes.
    pub size: u64,
}

/// A layer descriptor (`containerd.types.Descriptor`, the fields Apply uses).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
}

/// Where Apply reads layer blobs: the content store implements it (one small adapter when
/// the content store lands).
pub trait LayerSource: Send + Sync {
    /// A reader over the blob `digest` of `namespace`; NotFound-style errors as
    /// [`DiffError::Content`].
    fn open(&self, namespace: &str, digest: &str) -> Result<Box<dyn std::io::Read + Send>, DiffError>;
}

/// Where Compare stores the layers it produces: the content store implements it.
pub trait LayerSink: Send + Sync {
    /// Ingests the finished blob at `path` (its digest and size already computed) as
    /// `desc` under ingest ref `reference` with `labels`; returns the stored descriptor.
    fn ingest(
        &self,
        namespace: &str,
        reference: &str,
        path: &Path,
        desc: Descriptor,
        labels: std::collections::BTreeMap<String, String>,
    ) -> Result<Descriptor, DiffError>;
}

/// The label containerd puts on a compressed layer: the digest of its uncompressed tar.
pub const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";

//! The diff applier (`io.containerd.differ.v1.walking`): applies OCI layers to snapshot
//! mounts. The extraction itself is [`apply_layer`] (in `apply.rs`, with the hardening rules
//! in its module docs); [`Walking`] (`walking.rs`) turns mounts into a target directory and
//! a format, reads the layer blob through a [`LayerSource`] (the content store), and
//! enforces [`Limits`].
//!
//! ```text
//! Diff.Apply(desc, mounts) ─▶ Walking::apply
//!     mounts = [bind SRC rw]                    → native format into SRC
//!     mounts = [overlay upperdir=U,lowerdir=L…] → overlay format into U (whiteouts as 0/0
//!                                                  char devices, opaque dirs as xattrs)
//!     anything else                             → NotImplemented
//!     SRC / U must lie inside a loaded snapshotter's `snapshots/` dir (never a host path)
//!   LayerSource::open(namespace, digest) ─▶ apply_layer(reader, media type, dir, options)
//!     ─▶ Applied { digest, size } of the uncompressed tar (the image config's diff_id)
//! ```
//!
//!
//! Compare (the `Diff` RPC, `compare.rs`) turns two mount sets into a layer: an overlay's
//! upper dir against its own lower layers (overlay whiteouts → OCI whiteouts), or a double
//! walk of two bind-mounted trees (native; or an empty lower for a first layer); the tar is
//! compressed per the requested media type (default tar+gzip), staged in a scratch file and
//! stored through a [`LayerSink`] with the `containerd.io/uncompressed` label.
//!
//! The content store implements [`LayerSource`] and [`LayerSink`]
//! (`diff/content_store.rs`); without one, Apply and Compare answer Unavailable.
//! [`apply_layer`] and [`write_layer`] are pure and tested on their own. The types and traits
//! the differ speaks are in `model.rs`, its error in `error.rs`.

mod apply;
pub mod beneath;
mod compare;
pub mod content_store;
mod error;
mod model;
pub mod plugin;
mod walking;

#[cfg(test)]
mod tests;

pub use apply::{Compression, apply_layer, clean};
pub use compare::{Changes, write_changes, write_layer};
pub use error::{DiffError, LimitKind};
pub use model::{
    Applied, ApplyOptions, Descriptor, Format, LABEL_UNCOMPRESSED, LAYER_MEDIA_TYPES, LayerSink, LayerSource,
    Limits, MEDIA_TYPE_LAYER,
};
pub use walking::Walking;

use async_trait::async_trait;

use crate::snapshots::Mount;

// The plugin capabilities stay here: introspection names a capability by its Rust path
// (`taskd::diff::Differ`), so moving one would change what `Plugins` reports.

/// The in-process diff service (what image unpack and the CRI adapter use).
#[async_trait]
pub trait Differ: Send + Sync {
    /// Applies layer `desc` onto `mounts`; returns the uncompressed descriptor.
    async fn apply(
        &self,
        namespace: &str,
        desc: Descriptor,
        mounts: Vec<Mount>,
    ) -> Result<Applied, DiffError>;
    /// Applies the layer read from `reader` (no content store involved).
    async fn apply_reader(
        &self,
        media_type: &str,
        reader: Box<dyn std::io::Read + Send>,
        mounts: Vec<Mount>,
    ) -> Result<Applied, DiffError>;
    /// The changes from `lower` to `upper` as a layer of `media_type` (empty = tar+gzip),
    /// stored through the [`LayerSink`] under ingest ref `reference` (empty = generated)
    /// with `labels` plus [`LABEL_UNCOMPRESSED`].
    async fn compare(
        &self,
        namespace: &str,
        lower: Vec<Mount>,
        upper: Vec<Mount>,
        media_type: &str,
        reference: &str,
        labels: std::collections::BTreeMap<String, String>,
    ) -> Result<Descriptor, DiffError>;
}

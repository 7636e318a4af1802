//! The diff applier (`io.containerd.differ.v1.walking`): applies OCI layers to snapshot
//! mounts. The extraction itself is [`apply_layer`] (in `apply.rs`, with the hardening rules
//! in its module docs); [`Walking`] turns mounts into a target directory and a format, reads
//! the layer blob through a [`LayerSource`] (the content store), and enforces [`Limits`].
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
//! [`apply_layer`] and [`write_layer`] are pure and tested on their own.

mod apply;
pub mod beneath;
mod compare;
pub mod content_store;
pub mod plugin;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use apply::{Compression, apply_layer, clean};
pub use compare::{Changes, write_changes};

use crate::errdefs::{ErrorKind, Kind};
use crate::snapshots::Mount;

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

/// Which limit a layer exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// Total uncompressed bytes.
    Bytes,
    /// Number of tar entries.
    Entries,
    /// Uncompressed bytes per compressed byte.
    Ratio,
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

/// Errors of the diff applier. Every refusal of a hostile layer names the entry.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("unsupported layer media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("layer entry {entry:?}: path escapes the root")]
    PathEscape { entry: String },
    #[error("layer entry {entry:?}: parent {parent:?} resolves outside the root (through a symlink or ..)")]
    ParentEscape { entry: String, parent: String },
    #[error(
        "layer entry {entry:?}: parent {parent:?} is not a directory (or a symlink that does not resolve to one inside the root)"
    )]
    ParentNotDir { entry: String, parent: String },
    #[error("layer entry {entry:?}: hard link target {target:?} is outside the root")]
    HardlinkEscape { entry: String, target: String },
    #[error("layer entry {entry:?}: hard link target {target:?}: {reason}")]
    HardlinkTarget {
        entry: String,
        target: String,
        reason: &'static str,
    },
    #[error("layer entry {entry:?}: {kind} device node {major}:{minor} is not allowed in layers")]
    DeviceNode {
        entry: String,
        kind: &'static str,
        major: u32,
        minor: u32,
    },
    #[error("layer entry {entry:?}: unsupported entry type {kind}")]
    UnsupportedEntry { entry: String, kind: String },
    #[error("layer entry {entry:?}: invalid {what} in header")]
    BadHeader { entry: String, what: &'static str },
    #[error("layer exceeds the {} limit ({limit}{})", limit_name(*kind), limit_unit(*kind))]
    Limit { kind: LimitKind, limit: u64 },
    #[error("malformed layer archive: {source}")]
    Tar { source: std::io::Error },
    #[error("read layer: {source}")]
    Read { source: std::io::Error },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mounts: {0}")]
    InvalidMounts(String),
    #[error("cannot apply to mounts {0}: only a single rw bind or an overlay with an upperdir is supported")]
    UnsupportedMounts(String),
    #[error("no content store is loaded: cannot read layer {0}")]
    NoContentStore(String),
    #[error("layer {digest} not found in namespace {namespace:?}")]
    LayerNotFound { namespace: String, digest: String },
    #[error("layer {digest}: {reason}")]
    Content { digest: String, reason: String },
    #[error("no content store is loaded: cannot store the diff")]
    NoContentSink,
    #[error("diff: {op} did not complete: {reason}")]
    Interrupted { op: &'static str, reason: String },
}

fn limit_name(k: LimitKind) -> &'static str {
    match k {
        LimitKind::Bytes => "uncompressed size",
        LimitKind::Entries => "entry count",
        LimitKind::Ratio => "compression ratio",
    }
}

fn limit_unit(k: LimitKind) -> &'static str {
    match k {
        LimitKind::Bytes => " bytes",
        LimitKind::Entries => " entries",
        LimitKind::Ratio => ":1",
    }
}

impl ErrorKind for DiffError {
    fn kind(&self) -> Kind {
        match self {
            DiffError::UnsupportedMediaType(_) | DiffError::UnsupportedMounts(_) => Kind::NotImplemented,
            DiffError::PathEscape { .. }
            | DiffError::ParentEscape { .. }
            | DiffError::ParentNotDir { .. }
            | DiffError::HardlinkEscape { .. }
            | DiffError::HardlinkTarget { .. }
            | DiffError::DeviceNode { .. }
            | DiffError::UnsupportedEntry { .. }
            | DiffError::BadHeader { .. }
            | DiffError::Tar { .. }
            | DiffError::InvalidMounts(_) => Kind::InvalidArgument,
            DiffError::Limit { .. } => Kind::ResourceExhausted,
            DiffError::Read { .. } | DiffError::Content { .. } => Kind::DataLoss,
            DiffError::NoContentStore(_) | DiffError::NoContentSink => Kind::Unavailable,
            DiffError::LayerNotFound { .. } => Kind::NotFound,
            DiffError::Io { .. } | DiffError::Interrupted { .. } => Kind::Internal,
        }
    }
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

/// Writes the layer for `changes` compressed as `media_type` says (empty = tar+gzip, as
/// containerd's default) into `out`; returns (the layer's descriptor, uncompressed digest).
pub fn write_layer(
    changes: &Changes,
    media_type: &str,
    out: impl std::io::Write,
) -> Result<(Descriptor, String), DiffError> {
    use sha2::Digest;
    use std::io::Write;
    /// Hashes and counts what passes through.
    struct Hashing<W> {
        inner: W,
        h: sha2::Sha256,
        n: u64,
    }
    impl<W: std::io::Write> std::io::Write for Hashing<W> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = self.inner.write(buf)?;
            self.h.update(&buf[..n]);
            self.n += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }
    let media_type = if media_type.is_empty() {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    } else {
        media_type
    };
    let compression = match media_type {
        "application/vnd.oci.image.layer.v1.tar" | "application/vnd.docker.image.rootfs.diff.tar" => {
            Compression::None
        }
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd" => Compression::Zstd,
        other => return Err(DiffError::UnsupportedMediaType(other.to_owned())),
    };
    let outer = Hashing {
        inner: out,
        h: sha2::Sha256::new(),
        n: 0,
    };
    let err = |source| DiffError::Io {
        op: "write layer",
        path: PathBuf::new(),
        source,
    };
    let (outer, uncompressed) = match compression {
        Compression::None => {
            let mut inner = Hashing {
                inner: outer,
                h: sha2::Sha256::new(),
                n: 0,
            };
            write_changes(changes, &mut inner)?;
            let u = format!("sha256:{:x}", inner.h.clone().finalize());
            (inner.inner, u)
        }
        Compression::Gzip => {
            let mut inner = Hashing {
                inner: flate2::write::GzEncoder::new(outer, flate2::Compression::default()),
                h: sha2::Sha256::new(),
                n: 0,
            };
            write_changes(changes, &mut inner)?;
            let u = format!("sha256:{:x}", inner.h.clone().finalize());
            (inner.inner.finish().map_err(err)?, u)
        }
        Compression::Zstd => {
            let mut inner = Hashing {
                inner: zstd::stream::write::Encoder::new(outer, 3).map_err(err)?,
                h: sha2::Sha256::new(),
                n: 0,
            };
            write_changes(changes, &mut inner)?;
            let u = format!("sha256:{:x}", inner.h.clone().finalize());
            (inner.inner.finish().map_err(err)?, u)
        }
    };
    let mut outer = outer;
    outer.flush().map_err(err)?;
    Ok((
        Descriptor {
            media_type: media_type.to_owned(),
            digest: format!("sha256:{:x}", outer.h.finalize()),
            size: outer.n as i64,
        },
        uncompressed,
    ))
}

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

/// The `walking` differ.
pub struct Walking {
    limits: Limits,
    /// Directories a target must lie in (each snapshotter's `snapshots/` dir).
    allowed: Vec<PathBuf>,
    source: Option<Arc<dyn LayerSource>>,
    sink: Option<Arc<dyn LayerSink>>,
    /// Where Compare writes a layer before the sink ingests it.
    scratch: PathBuf,
}

impl Walking {
    pub fn new(limits: Limits, allowed: Vec<PathBuf>, source: Option<Arc<dyn LayerSource>>) -> Self {
        Walking {
            limits,
            allowed,
            source,
            sink: None,
            scratch: std::env::temp_dir(),
        }
    }

    /// Compare stores its layers through `sink`, staging them in `scratch`.
    pub fn with_sink(mut self, sink: Arc<dyn LayerSink>, scratch: PathBuf) -> Self {
        self.sink = Some(sink);
        self.scratch = scratch;
        self
    }

    /// What changed from `lower` to `upper`, for the mount shapes our snapshotters return.
    pub fn changes(&self, lower: &[Mount], upper: &[Mount]) -> Result<Changes, DiffError> {
        let describe = |ms: &[Mount]| {
            ms.iter()
                .map(|m| format!("{}:{}", m.r#type, m.source))
                .collect::<Vec<_>>()
                .join(",")
        };
        let opt = |m: &Mount, k: &str| {
            m.options
                .iter()
                .find_map(|o| o.strip_prefix(k).map(str::to_owned))
        };
        match upper {
            [u] if u.r#type == "overlay" => {
                let lowers = opt(u, "lowerdir=").unwrap_or_default();
                // An active overlay: its upper dir over `lowers`. A read-only view of a
                // committed snapshot: the first lower dir is that snapshot's own layer.
                let (dir, rest) = match opt(u, "upperdir=") {
                    Some(dir) => (dir, lowers),
                    None => match lowers.split_once(':') {
                        Some((first, rest)) => (first.to_owned(), rest.to_owned()),
                        None => (lowers, String::new()),
                    },
                };
                // The lower side must be exactly those lower layers.
                let same = match lower {
                    [l] if l.r#type == "bind" => l.source == rest,
                    [l] if l.r#type == "overlay" => {
                        opt(l, "upperdir=").is_none() && opt(l, "lowerdir=") == Some(rest.clone())
                    }
                    [] => rest.is_empty(),
                    _ => false,
                };
                if !same || dir.is_empty() {
                    return Err(DiffError::UnsupportedMounts(format!(
                        "{} against {}",
                        describe(upper),
                        describe(lower)
                    )));
                }
                Ok(Changes::OverlayUpper(self.check_allowed(Path::new(&dir))?))
            }
            [u] if u.r#type == "bind" => {
                let up = self.check_allowed(Path::new(&u.source))?;
                match lower {
                    [] => Ok(Changes::Walk {
                        lower: None,
                        upper: up,
                    }),
                    [l] if l.r#type == "bind" => Ok(Changes::Walk {
                        lower: Some(self.check_allowed(Path::new(&l.source))?),
                        upper: up,
                    }),
                    _ => Err(DiffError::UnsupportedMounts(describe(lower))),
                }
            }
            _ => Err(DiffError::UnsupportedMounts(describe(upper))),
        }
    }

    /// The target directory and format for `mounts`.
    pub fn target(&self, mounts: &[Mount]) -> Result<(PathBuf, Format), DiffError> {
        let describe = || {
            mounts
                .iter()
                .map(|m| format!("{}:{}", m.r#type, m.source))
                .collect::<Vec<_>>()
                .join(",")
        };
        let [m] = mounts else {
            return Err(DiffError::UnsupportedMounts(describe()));
        };
        let (dir, format) = match m.r#type.as_str() {
            "bind" | "rbind" => {
                if m.options.iter().any(|o| o == "ro") {
                    return Err(DiffError::InvalidMounts(format!(
                        "bind mount of {} is read-only",
                        m.source
                    )));
                }
                (PathBuf::from(&m.source), Format::Native)
            }
            "overlay" => {
                let opt = |k: &str| {
                    m.options
                        .iter()
                        .find_map(|o| o.strip_prefix(k).map(str::to_owned))
                };
                let upper = opt("upperdir=").ok_or_else(|| DiffError::UnsupportedMounts(describe()))?;
                let lowers: Vec<PathBuf> = opt("lowerdir=")
                    .map(|l| l.split(':').map(PathBuf::from).collect())
                    .unwrap_or_default();
                for l in &lowers {
                    self.check_allowed(l)?;
                }
                (PathBuf::from(upper), Format::Overlay { lowers })
            }
            _ => return Err(DiffError::UnsupportedMounts(describe())),
        };
        let dir = self.check_allowed(&dir)?;
        Ok((dir, format))
    }

    /// `dir` canonicalized, if inside an allowed directory.
    fn check_allowed(&self, dir: &Path) -> Result<PathBuf, DiffError> {
        let canon = dir.canonicalize().map_err(|source| DiffError::Io {
            op: "resolve mount source",
            path: dir.to_owned(),
            source,
        })?;
        if self
            .allowed
            .iter()
            .any(|a| a.canonicalize().is_ok_and(|a| canon.starts_with(a)))
        {
            Ok(canon)
        } else {
            Err(DiffError::InvalidMounts(format!(
                "{} is not a snapshot directory of this daemon",
                dir.display()
            )))
        }
    }

    async fn run(
        &self,
        media_type: String,
        reader: Box<dyn std::io::Read + Send>,
        (dir, format): (PathBuf, Format),
    ) -> Result<Applied, DiffError> {
        let opts = ApplyOptions {
            format,
            limits: self.limits.clone(),
        };
        tokio::task::spawn_blocking(move || apply_layer(reader, &media_type, &dir, &opts))
            .await
            .map_err(|e| DiffError::Interrupted {
                op: "apply",
                reason: e.to_string(),
            })?
    }
}

#[async_trait]
impl Differ for Walking {
    async fn apply(
        &self,
        namespace: &str,
        desc: Descriptor,
        mounts: Vec<Mount>,
    ) -> Result<Applied, DiffError> {
        check_media_type(&desc.media_type)?;
        let target = self.target(&mounts)?;
        let source = self
            .source
            .clone()
            .ok_or_else(|| DiffError::NoContentStore(desc.digest.clone()))?;
        let (ns, digest) = (namespace.to_owned(), desc.digest.clone());
        let reader = tokio::task::spawn_blocking(move || source.open(&ns, &digest))
            .await
            .map_err(|e| DiffError::Interrupted {
                op: "open layer",
                reason: e.to_string(),
            })??;
        self.run(desc.media_type, reader, target).await
    }

    async fn apply_reader(
        &self,
        media_type: &str,
        reader: Box<dyn std::io::Read + Send>,
        mounts: Vec<Mount>,
    ) -> Result<Applied, DiffError> {
        check_media_type(media_type)?;
        let target = self.target(&mounts)?;
        self.run(media_type.to_owned(), reader, target).await
    }

    async fn compare(
        &self,
        namespace: &str,
        lower: Vec<Mount>,
        upper: Vec<Mount>,
        media_type: &str,
        reference: &str,
        mut labels: std::collections::BTreeMap<String, String>,
    ) -> Result<Descriptor, DiffError> {
        let changes = self.changes(&lower, &upper)?;
        let sink = self.sink.clone().ok_or(DiffError::NoContentSink)?;
        let reference = if reference.is_empty() {
            format!("diff-{}", uuid::Uuid::new_v4().simple())
        } else {
            reference.to_owned()
        };
        let staged = self
            .scratch
            .join(format!("compare-{}", uuid::Uuid::new_v4().simple()));
        let (ns, media_type) = (namespace.to_owned(), media_type.to_owned());
        tokio::task::spawn_blocking(move || {
            let result = (|| {
                let file = std::fs::File::create(&staged).map_err(|source| DiffError::Io {
                    op: "create",
                    path: staged.clone(),
                    source,
                })?;
                let (desc, uncompressed) = write_layer(&changes, &media_type, std::io::BufWriter::new(file))?;
                labels.insert(LABEL_UNCOMPRESSED.to_owned(), uncompressed);
                sink.ingest(&ns, &reference, &staged, desc, labels)
            })();
            let _ = std::fs::remove_file(&staged);
            result
        })
        .await
        .map_err(|e| DiffError::Interrupted {
            op: "compare",
            reason: e.to_string(),
        })?
    }
}

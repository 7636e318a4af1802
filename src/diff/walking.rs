//! The `walking` differ: [`Walking`] turns mounts into a target directory and a format,
//! reads the layer blob through a [`LayerSource`], and enforces [`Limits`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::Differ;
use super::apply::apply_layer;
use super::compare::{Changes, write_layer};
use super::error::DiffError;
use super::model::{
    Applied, ApplyOptions, Descriptor, Format, LABEL_UNCOMPRESSED, LayerSink, LayerSource, Limits,
    check_media_type,
};
use crate::snapshots::Mount;

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
        crate::blocking::try_run("apply", move || apply_layer(reader, &media_type, &dir, &opts)).await
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
        let reader =
            crate::blocking::run::<_, DiffError>("open layer", move || source.open(&ns, &digest)).await??;
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
        crate::blocking::try_run("compare", move || {
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
    }
}

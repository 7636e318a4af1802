//! The content store as the diff applier's [`LayerSource`] (Apply reads layers) and
//! [`LayerSink`] (Compare stores the layers it produces). A blob is readable only when the
//! namespace holds it; an ingested layer is verified against its digest and size on commit.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use super::error::DiffError;
use super::model::{Descriptor, LayerSink, LayerSource};
use crate::content::{ContentError, Info, Store};

fn content_err(digest: &str, e: impl std::fmt::Display) -> DiffError {
    DiffError::Content {
        digest: digest.to_owned(),
        reason: e.to_string(),
    }
}

impl LayerSource for Store {
    fn open(&self, namespace: &str, digest: &str) -> Result<Box<dyn std::io::Read + Send>, DiffError> {
        let (path, _) = self.blob(namespace, digest).map_err(|e| match e {
            ContentError::NotFound { .. } => DiffError::LayerNotFound {
                namespace: namespace.to_owned(),
                digest: digest.to_owned(),
            },
            e => content_err(digest, e),
        })?;
        let f = std::fs::File::open(&path)
            .map_err(|e| content_err(digest, format!("open {}: {e}", path.display())))?;
        Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, f)))
    }
}

/// `Arc<Store>` is what plugins hold; the sink needs `Arc` for its writer.
pub struct Sink(pub std::sync::Arc<Store>);

impl LayerSink for Sink {
    fn ingest(
        &self,
        namespace: &str,
        reference: &str,
        path: &Path,
        desc: Descriptor,
        labels: BTreeMap<String, String>,
    ) -> Result<Descriptor, DiffError> {
        let d = desc.digest.clone();
        let mut w = match self.0.writer(namespace, reference, desc.size, &desc.digest, None) {
            Ok(w) => w,
            Err(ContentError::AlreadyExists { .. }) => {
                let paths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
                let info = Info {
                    digest: d.clone(),
                    labels,
                    ..Default::default()
                };
                self.0
                    .update(namespace, info, &paths)
                    .map_err(|e| content_err(&d, e))?;
                return Ok(desc);
            }
            Err(e) => return Err(content_err(&d, e)),
        };
        w.truncate().map_err(|e| content_err(&d, e))?;
        let mut f = std::fs::File::open(path)
            .map_err(|e| content_err(&d, format!("open {}: {e}", path.display())))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| content_err(&d, format!("read {}: {e}", path.display())))?;
            if n == 0 {
                break;
            }
            w.write(&buf[..n]).map_err(|e| content_err(&d, e))?;
        }
        match w.commit(desc.size, &desc.digest, labels) {
            Ok(_) | Err(ContentError::AlreadyExists { .. }) => Ok(desc),
            Err(e) => Err(content_err(&d, e)),
        }
    }
}

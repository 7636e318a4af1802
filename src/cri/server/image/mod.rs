//! The ImageService RPCs over the `ImageBackend` (server-side pull, the images service's
//! names in k8s.io, the snapshotter's usage).
//!
//! CRI sees one image per config digest: every name pointing at it is a repo tag
//! (`name:tag`) or a repo digest (`name@sha256:…`); a bare `sha256:…` name is the id.
//! Lookups accept an id, a normalized reference, or anything that normalizes to one.

pub mod fs_info;
pub mod list;
pub mod pull;
pub mod remove;
pub mod status;
pub mod stream;

use std::collections::BTreeMap;

use taskd_proto::cri::v1 as cri;

use crate::cri::backend::contract::BackendImage;
use crate::cri::error::CriError;
use crate::cri::service::CriService;
use crate::cri::store::image::Image;
use crate::images::reference;

/// Groups image names by config digest.
pub fn group(names: &[BackendImage]) -> Vec<Image> {
    let mut by_id: BTreeMap<String, Image> = BTreeMap::new();
    for n in names {
        let img = by_id.entry(n.config_digest.clone()).or_insert_with(|| Image {
            id: n.config_digest.clone(),
            size: n.size,
            config: n.config.clone(),
            ..Default::default()
        });
        if n.name.contains('@') {
            img.repo_digests.insert(n.name.clone());
        } else if n.name != n.config_digest && !reference::is_image_id(&n.name) {
            img.repo_tags.insert(n.name.clone());
        }
    }
    by_id.into_values().collect()
}

/// The CRI message for an image.
pub fn to_cri(img: &Image) -> cri::Image {
    let (uid, username) = match img.config.user.split(':').next().unwrap_or("") {
        "" => (None, String::new()),
        u => match u.parse::<i64>() {
            Ok(n) => (Some(cri::Int64Value { value: n }), String::new()),
            Err(_) => (None, u.to_owned()),
        },
    };
    cri::Image {
        id: img.id.clone(),
        repo_tags: img.repo_tags.iter().cloned().collect(),
        repo_digests: img.repo_digests.iter().cloned().collect(),
        size: img.size,
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: img.id.clone(),
            ..Default::default()
        }),
        pinned: img.pinned,
    }
}

impl CriService {
    /// All images (also refreshes the in-memory image cache StopContainer reads).
    pub(crate) async fn all_images(&self, rpc: &'static str) -> Result<Vec<Image>, CriError> {
        let names = self.image_backend(rpc)?.list().await?;
        let mut images = group(&names);
        // The sandbox image is pinned (kubelet's image GC never removes it), as containerd.
        if let Ok(sandbox) = reference::normalize(&self.config.sandbox_image) {
            let sandbox = sandbox.to_string();
            for img in &mut images {
                img.pinned = img.repo_tags.contains(&sandbox) || img.repo_digests.contains(&sandbox);
            }
        }
        for img in &images {
            self.images.upsert(img.clone());
        }
        Ok(images)
    }

    /// The image `spec` names (id, id prefix of 12+ hex digits, or reference); None when absent.
    pub(crate) async fn find_image(&self, rpc: &'static str, spec: &str) -> Result<Option<Image>, CriError> {
        if spec.is_empty() {
            return Err(CriError::InvalidArgument {
                field: "image.image",
                reason: "must not be empty".into(),
            });
        }
        let images = self.all_images(rpc).await?;
        if reference::is_image_id(spec) {
            return Ok(images.into_iter().find(|i| i.id == spec));
        }
        let normalized = reference::normalize(spec)?.to_string();
        Ok(images
            .into_iter()
            .find(|i| i.repo_tags.contains(&normalized) || i.repo_digests.contains(&normalized)))
    }
}

#[cfg(test)]
mod tests;

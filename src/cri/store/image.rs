//! Images as CRI sees them: one record per image config digest (the CRI image id), with
//! every tag and digest reference that points at it.
//!
//! ```text
//!   PullImage ──▶ (ref added to the record of its config digest; record created if new)
//!   RemoveImage(any ref or id) ──▶ every ref of that digest removed, record gone (idempotent)
//! ```
//!
//! There is no lifecycle state: an image is present or it is not. References are
//! normalized before they reach the store (`busybox` → `docker.io/library/busybox:latest`).

use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;

/// What CreateContainer takes from an image's config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub user: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub stop_signal: String,
}

/// One image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    /// The config digest (`sha256:…`), CRI's image id.
    pub id: String,
    /// `docker.io/library/busybox:latest`, ...
    pub repo_tags: BTreeSet<String>,
    /// `docker.io/library/busybox@sha256:…`, ...
    pub repo_digests: BTreeSet<String>,
    /// Unpacked size in bytes.
    pub size: u64,
    pub config: ImageConfig,
    pub pinned: bool,
}

/// Images by id, and every reference → id.
#[derive(Default)]
pub struct ImageStore {
    inner: RwLock<(HashMap<String, Image>, HashMap<String, String>)>,
}

impl ImageStore {
    /// Adds or merges an image (its refs join the record of the same id; a ref that
    /// pointed elsewhere moves, and a record left without refs is dropped).
    pub fn upsert(&self, img: Image) {
        let mut g = self
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (images, refs) = &mut *g;
        for r in img.repo_tags.iter().chain(img.repo_digests.iter()) {
            if let Some(old) = refs.insert(r.clone(), img.id.clone())
                && old != img.id
                && let Some(o) = images.get_mut(&old)
            {
                o.repo_tags.remove(r);
                o.repo_digests.remove(r);
                if o.repo_tags.is_empty() && o.repo_digests.is_empty() {
                    images.remove(&old);
                }
            }
        }
        match images.get_mut(&img.id) {
            Some(cur) => {
                cur.repo_tags.extend(img.repo_tags);
                cur.repo_digests.extend(img.repo_digests);
                cur.size = img.size;
                cur.config = img.config;
            }
            None => {
                images.insert(img.id.clone(), img);
            }
        }
    }

    /// The image an id or a reference names.
    pub fn get(&self, id_or_ref: &str) -> Option<Image> {
        let g = self
            .inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = g.1.get(id_or_ref).map(String::as_str).unwrap_or(id_or_ref);
        g.0.get(id).cloned()
    }

    /// Removes the image (and all its refs); returns it if it was there.
    pub fn remove(&self, id: &str) -> Option<Image> {
        let mut g = self
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let img = g.0.remove(id)?;
        g.1.retain(|_, v| v != id);
        Some(img)
    }

    pub fn list(&self) -> Vec<Image> {
        let g = self
            .inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.0.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(id: &str, tags: &[&str]) -> Image {
        Image {
            id: id.into(),
            repo_tags: tags.iter().map(std::string::ToString::to_string).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn refs_merge_move_and_remove_together() {
        let s = ImageStore::default();
        s.upsert(img("sha256:a", &["x:1"]));
        s.upsert(img("sha256:a", &["x:2"]));
        assert_eq!(s.get("x:1").unwrap().repo_tags.len(), 2);
        // x:2 moves to b.
        s.upsert(img("sha256:b", &["x:2"]));
        assert_eq!(s.get("x:2").unwrap().id, "sha256:b");
        assert_eq!(s.get("sha256:a").unwrap().repo_tags.len(), 1);
        // x:1 moves too: a has no refs left and is dropped.
        s.upsert(img("sha256:b", &["x:1"]));
        assert!(s.get("sha256:a").is_none());
        assert!(s.remove("sha256:b").is_some());
        assert!(s.get("x:1").is_none() && s.get("x:2").is_none());
        assert!(s.remove("sha256:b").is_none());
    }
}

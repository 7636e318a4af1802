//! The OCI (and Docker schema 2) JSON that pulls and the CRI read: descriptors, manifests,
//! indexes, in one place, with the checks a hostile image calls for.
//!
//! [`Manifest::check`]: sizes are not negative, a digest listed twice has one size, and
//! the total is summed with checked arithmetic (so a size that overflows is an error, not a
//! wrapped number).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::platform::Platform;

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A descriptor as JSON has it.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct JsonDescriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// A manifest or an index (which one: [`Manifest::is_index`]).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct Manifest {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    #[serde(default)]
    pub config: Option<JsonDescriptor>,
    #[serde(default)]
    pub layers: Vec<JsonDescriptor>,
    #[serde(default)]
    pub manifests: Vec<JsonDescriptor>,
}

impl Manifest {
    /// An index: it lists manifests, or says it is one (here or in the descriptor that
    /// pointed at it).
    pub fn is_index(&self, descriptor_media_type: &str) -> bool {
        !self.manifests.is_empty()
            || [MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST].contains(&self.media_type.as_str())
            || [MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST].contains(&descriptor_media_type)
    }

    /// The platforms an index lists, for messages (`linux/arm64, linux/s390x`).
    pub fn platforms(&self) -> String {
        let v: Vec<String> = self
            .manifests
            .iter()
            .map(|m| match &m.platform {
                Some(p) => p.clone().normalized().to_string(),
                None => "(none)".to_owned(),
            })
            .collect();
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    }

    /// Checks the config and layer descriptors; returns their total size (each distinct
    /// blob once).
    pub fn check(&self) -> Result<u64, String> {
        let mut seen: BTreeMap<&str, i64> = BTreeMap::new();
        let mut total: u64 = 0;
        for d in self.config.iter().chain(self.layers.iter()) {
            if d.size < 0 {
                return Err(format!("blob {} has a negative size {}", d.digest, d.size));
            }
            match seen.get(d.digest.as_str()) {
                Some(s) if *s != d.size => {
                    return Err(format!(
                        "blob {} is listed with two sizes, {s} and {}",
                        d.digest, d.size
                    ));
                }
                Some(_) => continue,
                None => {
                    seen.insert(&d.digest, d.size);
                }
            }
            total = total
                .checked_add(d.size as u64)
                .ok_or_else(|| "the blob sizes overflow".to_owned())?;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(layers: &[(&str, i64)]) -> Manifest {
        Manifest {
            layers: layers
                .iter()
                .map(|(d, s)| JsonDescriptor {
                    digest: (*d).to_owned(),
                    size: *s,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn sizes_are_checked() {
        assert_eq!(m(&[("a", 1), ("b", 2), ("a", 1)]).check(), Ok(3));
        assert!(
            m(&[("a", 1), ("a", 1000)])
                .check()
                .unwrap_err()
                .contains("two sizes")
        );
        assert!(m(&[("a", -1)]).check().is_err());
        assert!(
            m(&[("a", i64::MAX), ("b", i64::MAX), ("c", i64::MAX)])
                .check()
                .unwrap_err()
                .contains("overflow")
        );
    }
}

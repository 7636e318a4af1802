//! The OCI image format (and Docker schema 2), in one place: media types, descriptors,
//! manifests and indexes, the image config, chain ids. Server-side pulls (`pull.rs`,
//! `unpack.rs`) and the CRI's image side (`cri/image_backend.rs`) both read images through
//! this module; which index entry a node takes is `platform.rs`'s matcher.
//!
//! ```text
//! Manifest          a manifest or an index (is_index), as JSON has it
//!   check()         sizes are not negative, a digest listed twice has one size, and the
//!                   total is summed with checked arithmetic (an overflow is an error)
//! ImageConfig       the run config CRI containers start from + rootfs.diff_ids
//! chain_ids         chain[0] = diff_id[0]; chain[n] = sha256(chain[n-1] + " " + diff_id[n])
//! ```
//!
//! The media type strings are `oci_spec::image::MediaType`'s (a test ties them). The JSON
//! structs are ours, not `oci_spec::image::{ImageManifest, ImageIndex, Descriptor,
//! ImageConfiguration}`: those are strict where containerd (Go's lenient JSON decoding) is
//! not: every descriptor must carry `mediaType` and a validated digest, `schemaVersion` and
//! the config's `architecture`/`os`/`rootfs` are required, and a size is a `u64`, so a
//! negative size is a decode error rather than the named [`Manifest::check`] refusal.
//! Parsing with them would refuse images that taskd (and containerd) run today.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Descriptor;
use super::platform::Platform;
use crate::content;

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

impl JsonDescriptor {
    /// The descriptor as the image and content stores keep it.
    pub fn to_descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: BTreeMap::new(),
        }
    }
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

/// An image config: what a container runs (`config`) and its layers' diff ids (`rootfs`).
/// Every field may be absent (as containerd reads it).
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct ImageConfig {
    pub config: RunConfig,
    pub rootfs: RootFs,
}

/// An image config's `config`: the defaults of a container's process.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RunConfig {
    #[serde(rename = "User")]
    pub user: String,
    #[serde(rename = "Entrypoint")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd")]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Env")]
    pub env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir")]
    pub working_dir: String,
    #[serde(rename = "StopSignal")]
    pub stop_signal: String,
}

/// An image config's `rootfs`.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RootFs {
    pub diff_ids: Vec<String>,
}

/// The chain ids of a list of diff ids (the snapshot names of an image's layers).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => content::digest_of(format!("{parent} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
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

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let ids = chain_ids(&[d('a'), d('b')]);
        assert_eq!(ids[0], d('a'));
        assert_eq!(
            ids[1],
            content::digest_of(format!("{} {}", d('a'), d('b')).as_bytes())
        );
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn media_types_are_the_specs() {
        use oci_spec::image::{MediaType, ToDockerV2S2};
        assert_eq!(MEDIA_OCI_INDEX, MediaType::ImageIndex.to_string());
        assert_eq!(MEDIA_OCI_MANIFEST, MediaType::ImageManifest.to_string());
        assert_eq!(Ok(MEDIA_DOCKER_LIST), MediaType::ImageIndex.to_docker_v2s2());
        assert_eq!(
            Ok(MEDIA_DOCKER_MANIFEST),
            MediaType::ImageManifest.to_docker_v2s2()
        );
    }

    #[test]
    fn an_image_config_may_leave_out_any_field() {
        let c: ImageConfig = serde_json::from_str("{}").unwrap();
        assert!(c.rootfs.diff_ids.is_empty() && c.config.entrypoint.is_none());
        let c: ImageConfig =
            serde_json::from_str(r#"{"config": {"Cmd": ["sh"]}, "rootfs": {"diff_ids": ["x"]}}"#).unwrap();
        assert_eq!(c.config.cmd, Some(vec!["sh".to_owned()]));
        assert_eq!(c.rootfs.diff_ids, ["x"]);
    }
}

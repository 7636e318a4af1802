//! Unpack for server-side pulls: apply an image's layers into snapshots named by their
//! chain ids (as containerd's unpacker), under the pull's lease.
//!
//! ```text
//! chains = oci::chain_ids(config.rootfs.diff_ids)
//! for each layer: lease chain (before the stat: an existing snapshot it builds on must
//!                  outlive a concurrent GC until the image holds it)
//!   stat(chain) exists → next; else
//!   prepare("extract-<uuid> <chain>", parent = chain[n-1]) → mounts
//!   Differ::apply(layer, mounts) → uncompressed digest, must equal diff_id[n]
//!   commit(chain, key)        (AlreadyExists: a concurrent unpack won; the key is removed)
//! ```
//! The config blob then gets `containerd.io/gc.ref.snapshot.<snapshotter>` = the top chain id,
//! so the collector keeps the snapshots as long as the image.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Descriptor;
use super::error::PullError;
use super::oci::{ImageConfig, chain_ids};
use crate::diff::{self, Differ};
use crate::metadata::{LeaseManager, LeaseResource};
use crate::snapshots::{SnapshotError, Snapshotter};

/// A pause point in an unpack (tests): awaited with the chain id just found to exist.
pub type UnpackHook = Arc<dyn Fn(String) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// Applies layers with one snapshotter and the differ.
pub struct Unpacker {
    pub snapshotter: Arc<dyn Snapshotter>,
    pub differ: Arc<dyn Differ>,
    pub leases: Arc<dyn LeaseManager>,
    /// Fault injection for tests (a GC between the stat and the commit); None in the daemon.
    after_stat: Option<UnpackHook>,
}

impl Unpacker {
    pub fn new(
        snapshotter: Arc<dyn Snapshotter>,
        differ: Arc<dyn Differ>,
        leases: Arc<dyn LeaseManager>,
    ) -> Unpacker {
        Unpacker {
            snapshotter,
            differ,
            leases,
            after_stat: None,
        }
    }

    /// Awaits `hook` each time a layer's chain snapshot is found to exist (tests).
    pub fn with_hook_after_stat(mut self, hook: UnpackHook) -> Unpacker {
        self.after_stat = Some(hook);
        self
    }

    async fn lease(&self, namespace: &str, lease: &str, id: &str) -> Result<(), PullError> {
        let (l, ns, lease, r) = (
            self.leases.clone(),
            namespace.to_owned(),
            lease.to_owned(),
            LeaseResource {
                id: id.to_owned(),
                r#type: format!("snapshots/{}", self.snapshotter.name()),
            },
        );
        crate::metadata::blocking("lease snapshot", move || l.add_resource(&ns, &lease, r)).await?;
        Ok(())
    }

    /// Unpacks `layers` (in order) described by the image `config`; returns the top chain id.
    pub async fn unpack(
        &self,
        namespace: &str,
        reference: &str,
        lease: &str,
        config: &[u8],
        layers: &[Descriptor],
    ) -> Result<String, PullError> {
        let cfg: ImageConfig = serde_json::from_slice(config).map_err(|source| PullError::Malformed {
            reference: reference.to_owned(),
            what: "image config",
            source,
        })?;
        if cfg.rootfs.diff_ids.len() != layers.len() {
            return Err(PullError::LayerCount {
                reference: reference.to_owned(),
                layers: layers.len(),
                diff_ids: cfg.rootfs.diff_ids.len(),
            });
        }
        let chains = chain_ids(&cfg.rootfs.diff_ids);
        let mut parent = String::new();
        for ((layer, diff_id), chain) in layers.iter().zip(&cfg.rootfs.diff_ids).zip(&chains) {
            // Leased first, so that a snapshot found below cannot be collected before the
            // image's config label holds it.
            self.lease(namespace, lease, chain).await?;
            match self.snapshotter.stat(namespace, chain).await {
                Ok(_) => {
                    if let Some(hook) = &self.after_stat {
                        hook(chain.clone()).await;
                    }
                    parent = chain.clone();
                    continue;
                }
                Err(SnapshotError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            let key = format!("extract-{} {chain}", uuid::Uuid::new_v4().simple());
            self.lease(namespace, lease, &key).await?;
            let mounts = self
                .snapshotter
                .prepare(namespace, &key, &parent, BTreeMap::new())
                .await?;
            let applied = self
                .differ
                .apply(
                    namespace,
                    diff::Descriptor {
                        media_type: layer.media_type.clone(),
                        digest: layer.digest.clone(),
                        size: layer.size,
                    },
                    mounts,
                )
                .await;
            let applied = match applied {
                Ok(a) => a,
                Err(e) => {
                    let _ = self.snapshotter.remove(namespace, &key).await;
                    return Err(e.into());
                }
            };
            if applied.digest != *diff_id {
                let _ = self.snapshotter.remove(namespace, &key).await;
                return Err(PullError::DigestMismatch {
                    reference: reference.to_owned(),
                    what: "uncompressed layer",
                    digest: diff_id.clone(),
                    actual: applied.digest,
                });
            }
            match self
                .snapshotter
                .commit(namespace, chain, &key, BTreeMap::new())
                .await
            {
                Ok(()) => {}
                Err(SnapshotError::AlreadyExists { .. }) => {
                    let _ = self.snapshotter.remove(namespace, &key).await;
                }
                Err(e) => {
                    let _ = self.snapshotter.remove(namespace, &key).await;
                    return Err(e.into());
                }
            }
            parent = chain.clone();
        }
        Ok(parent)
    }
}

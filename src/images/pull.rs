//! Server-side pull (what the CRI adapter's PullImage uses): resolve a reference against the
//! registry's endpoints (`hosts.rs`: mirrors in order, then the registry), fetch the
//! manifest (an index resolves to linux/amd64), write config and layers into the content
//! store under a temporary lease, record the image.
//!
//! ```text
//! pull(ns, "127.0.0.1:5000/busybox:latest")
//!   lease pull-<id> (expires in 1h)          protects everything written until the image exists
//!   for endpoint in endpoints(registry):      first endpoint that serves the manifest wins
//!     manifest (or index → linux/amd64 manifest), sha256 checked against what was asked
//!   layers, config: buffer_unordered(max_concurrent_downloads)
//!     present in the namespace → skipped; present in another namespace → adopted (no fetch)
//!     else streamed into a content writer (expected digest + size: verified on commit),
//!     each chunk within progress_timeout; a ref held by a concurrent pull → wait, then skip
//!   manifest (+ index) with containerd's gc.ref.content labels; image created or updated
//!   lease deleted
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};

use super::hosts::{Endpoint, RegistryConfig, endpoints};
use super::{Descriptor, Image, ImageError, Store};
use crate::content::{self, ContentError, LABEL_GC_REF_CONTENT};
use crate::errdefs::{ErrorKind, Kind};
use crate::metadata::{LABEL_GC_EXPIRE, LeaseManager};

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Pull settings (part of the images service's config table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PullConfig {
    /// Layers downloaded at once per pull.
    pub max_concurrent_downloads: usize,
    /// A download that receives nothing for this long fails (milliseconds).
    pub progress_timeout_ms: u64,
    /// Per registry (`docker.io`, `registry.k8s.io`, `127.0.0.1:5000`): mirrors, TLS, auth.
    pub registries: BTreeMap<String, RegistryConfig>,
    /// The snapshotter pulled images are unpacked into (`overlayfs`; when it is not loaded,
    /// the first loaded one); empty = do not unpack.
    pub snapshotter: String,
}

impl Default for PullConfig {
    fn default() -> Self {
        PullConfig {
            max_concurrent_downloads: 3,
            progress_timeout_ms: 5 * 60 * 1000,
            registries: BTreeMap::new(),
            snapshotter: "overlayfs".into(),
        }
    }
}

/// Errors of a pull.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("pull {reference} from {endpoint}: {source}")]
    Registry {
        reference: String,
        endpoint: String,
        source: Box<oci_client::errors::OciDistributionError>,
    },
    #[error("pull {reference}: {what} {digest}: registry sent content with digest {actual}")]
    DigestMismatch {
        reference: String,
        what: &'static str,
        digest: String,
        actual: String,
    },
    #[error("pull {reference}: no linux/amd64 manifest in the index")]
    NoPlatform { reference: String },
    #[error("pull {reference}: unsupported manifest media type {media_type:?}")]
    UnsupportedMediaType { reference: String, media_type: String },
    #[error("pull {reference}: malformed {what}: {source}")]
    Malformed {
        reference: String,
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("pull {reference}: no data for blob {digest} within {timeout:?}")]
    ProgressTimeout {
        reference: String,
        digest: String,
        timeout: Duration,
    },
    #[error("pull {reference}: read blob {digest}: {source}")]
    Read {
        reference: String,
        digest: String,
        source: std::io::Error,
    },
    #[error("registry CA file {path}: {source}")]
    CaFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("pull {reference}: {layers} layers but {diff_ids} diff_ids in the config")]
    LayerCount {
        reference: String,
        layers: usize,
        diff_ids: usize,
    },
    #[error(transparent)]
    Snapshot(#[from] crate::snapshots::SnapshotError),
    #[error(transparent)]
    Diff(#[from] crate::diff::DiffError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Metadata(#[from] crate::metadata::MetadataError),
}

impl ErrorKind for PullError {
    fn kind(&self) -> Kind {
        match self {
            PullError::InvalidReference { .. } => Kind::InvalidArgument,
            PullError::Registry { source, .. } => match source.as_ref() {
                oci_client::errors::OciDistributionError::ImageManifestNotFoundError(_) => Kind::NotFound,
                oci_client::errors::OciDistributionError::AuthenticationFailure(_)
                | oci_client::errors::OciDistributionError::UnauthorizedError { .. } => Kind::Unauthenticated,
                _ => Kind::Unavailable,
            },
            PullError::DigestMismatch { .. } => Kind::DataLoss,
            PullError::NoPlatform { .. } => Kind::NotFound,
            PullError::UnsupportedMediaType { .. } | PullError::Malformed { .. } => Kind::FailedPrecondition,
            PullError::ProgressTimeout { .. } => Kind::DeadlineExceeded,
            PullError::Read { .. } => Kind::Unavailable,
            PullError::CaFile { .. } => Kind::FailedPrecondition,
            PullError::LayerCount { .. } => Kind::FailedPrecondition,
            PullError::Snapshot(e) => e.kind(),
            PullError::Diff(e) => e.kind(),
            PullError::Content(e) => e.kind(),
            PullError::Image(e) => e.kind(),
            PullError::Metadata(e) => e.kind(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct JsonDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    platform: Option<JsonPlatform>,
}

#[derive(Debug, Deserialize)]
struct JsonPlatform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Debug, Deserialize)]
struct JsonManifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    config: Option<JsonDescriptor>,
    #[serde(default)]
    layers: Vec<JsonDescriptor>,
    #[serde(default)]
    manifests: Vec<JsonDescriptor>,
}

/// Pulls images into the content and image stores.
pub struct Puller {
    content: Arc<content::Store>,
    images: Arc<Store>,
    leases: Arc<dyn LeaseManager>,
    config: PullConfig,
    /// `config.registries`, replaceable at run time ([`Puller::set_registries`], SIGHUP).
    registries: std::sync::RwLock<Arc<BTreeMap<String, RegistryConfig>>>,
    unpacker: Option<super::unpack::Unpacker>,
}

/// One endpoint, ready to use.
struct Remote {
    client: Client,
    auth: RegistryAuth,
    host: String,
    repository: String,
}

impl Remote {
    fn by_digest(&self, digest: &str) -> Reference {
        Reference::with_digest(self.host.clone(), self.repository.clone(), digest.to_owned())
    }
}

impl Puller {
    pub fn new(
        content: Arc<content::Store>,
        images: Arc<Store>,
        leases: Arc<dyn LeaseManager>,
        config: PullConfig,
    ) -> Puller {
        Puller {
            content,
            images,
            leases,
            registries: std::sync::RwLock::new(Arc::new(config.registries.clone())),
            config,
            unpacker: None,
        }
    }

    /// Replaces the registry hosts config; the next pull uses it (a pull under way keeps the
    /// one it started with).
    pub fn set_registries(&self, registries: BTreeMap<String, RegistryConfig>) {
        *self.registries.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(registries);
    }

    /// Unpacks every pulled image with `unpacker` (into its snapshotter).
    pub fn with_unpacker(mut self, unpacker: Option<super::unpack::Unpacker>) -> Self {
        self.unpacker = unpacker;
        self
    }

    /// The unpacker pulled images are unpacked with (None: pulls do not unpack).
    pub fn unpacker(&self) -> Option<&super::unpack::Unpacker> {
        self.unpacker.as_ref()
    }

    fn remote(
        &self,
        e: &Endpoint,
        repository: &str,
        auth: Option<&RegistryAuth>,
    ) -> Result<Remote, PullError> {
        let mut extra = Vec::new();
        if let Some(path) = &e.ca_file {
            let data = std::fs::read(path).map_err(|source| PullError::CaFile {
                path: path.clone(),
                source,
            })?;
            extra.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        let config = ClientConfig {
            protocol: if e.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: e.skip_verify,
            extra_root_certificates: extra,
            max_concurrent_download: self.config.max_concurrent_downloads.max(1),
            ..Default::default()
        };
        let auth = if let Some(a) = auth {
            a.clone()
        } else if e.username.is_empty() {
            RegistryAuth::Anonymous
        } else {
            RegistryAuth::Basic(e.username.clone(), e.password.clone())
        };
        Ok(Remote {
            client: Client::new(config),
            auth,
            host: e.host.clone(),
            repository: repository.to_owned(),
        })
    }

    /// Pulls `reference` into `namespace`; returns the image record.
    pub async fn pull(&self, namespace: &str, reference: &str) -> Result<Image, PullError> {
        self.pull_with_auth(namespace, reference, None).await
    }

    /// [`Puller::pull`] with credentials for this call (e.g. from a CRI PullImage request);
    /// they replace the configured `username`/`password` of every endpoint tried.
    pub async fn pull_with_auth(
        &self,
        namespace: &str,
        reference: &str,
        auth: Option<RegistryAuth>,
    ) -> Result<Image, PullError> {
        let parsed: Reference =
            reference
                .parse()
                .map_err(|e: oci_client::ParseError| PullError::InvalidReference {
                    reference: reference.to_owned(),
                    reason: e.to_string(),
                })?;
        let name = parsed.whole();
        let registry = parsed.registry().to_owned();
        let repository = parsed.repository().to_owned();
        let accepted = [
            MEDIA_OCI_INDEX,
            MEDIA_OCI_MANIFEST,
            MEDIA_DOCKER_LIST,
            MEDIA_DOCKER_MANIFEST,
        ];

        // The first endpoint that serves the manifest is used for everything.
        let mut last_err = None;
        let mut found = None;
        let registries = self.registries.read().unwrap_or_else(|p| p.into_inner()).clone();
        for e in endpoints(&registries, &registry) {
            let remote = self.remote(&e, &repository, auth.as_ref())?;
            let at = match (parsed.digest(), parsed.tag()) {
                (Some(d), _) => remote.by_digest(d),
                (None, tag) => Reference::with_tag(
                    remote.host.clone(),
                    repository.clone(),
                    tag.unwrap_or("latest").to_owned(),
                ),
            };
            match remote
                .client
                .pull_manifest_raw(&at, &remote.auth, &accepted)
                .await
            {
                Ok((bytes, _)) => {
                    found = Some((remote, bytes));
                    break;
                }
                Err(source) => {
                    tracing::debug!(endpoint = %e.host, error = %source, "pull: endpoint failed");
                    last_err = Some(PullError::Registry {
                        reference: name.clone(),
                        endpoint: e.host.clone(),
                        source: Box::new(source),
                    });
                }
            }
        }
        let Some((remote, top)) = found else {
            return Err(last_err.unwrap_or_else(|| PullError::InvalidReference {
                reference: name.clone(),
                reason: "no endpoint".into(),
            }));
        };
        let top_digest = content::digest_of(&top);
        if let Some(want) = parsed.digest()
            && want != top_digest
        {
            return Err(PullError::DigestMismatch {
                reference: name,
                what: "manifest",
                digest: want.to_owned(),
                actual: top_digest,
            });
        }
        let top_json: JsonManifest = serde_json::from_slice(&top).map_err(|source| PullError::Malformed {
            reference: name.clone(),
            what: "manifest",
            source,
        })?;
        let is_index = !top_json.manifests.is_empty()
            || top_json.media_type == MEDIA_OCI_INDEX
            || top_json.media_type == MEDIA_DOCKER_LIST;

        // A lease protects everything written until the image record exists.
        let lease = format!("pull-{}", crate::services::leases::random_id());
        let expire = prost_types::Timestamp::from(std::time::SystemTime::now() + Duration::from_secs(3600))
            .to_string();
        {
            let (l, ns, id) = (self.leases.clone(), namespace.to_owned(), lease.clone());
            crate::metadata::blocking("create pull lease", move || {
                l.create(&ns, &id, [(LABEL_GC_EXPIRE.to_owned(), expire)].into())
            })
            .await?;
        }
        let result = self
            .pull_leased(namespace, &name, &remote, top, top_json, is_index, &lease)
            .await;
        let (l, ns, id) = (self.leases.clone(), namespace.to_owned(), lease);
        if let Err(error) = crate::metadata::blocking("delete pull lease", move || l.delete(&ns, &id)).await {
            tracing::warn!(%error, "pull: lease not deleted (it expires)");
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn pull_leased(
        &self,
        namespace: &str,
        name: &str,
        remote: &Remote,
        top: bytes::Bytes,
        top_json: JsonManifest,
        is_index: bool,
        lease: &str,
    ) -> Result<Image, PullError> {
        let top_digest = content::digest_of(&top);
        let top_media_type = top_json.media_type.clone();
        let (manifest_bytes, manifest_json, manifest_desc, index) = if is_index {
            let chosen = top_json
                .manifests
                .iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
                })
                .ok_or_else(|| PullError::NoPlatform {
                    reference: name.to_owned(),
                })?;
            let (bytes, _) = remote
                .client
                .pull_manifest_raw(
                    &remote.by_digest(&chosen.digest),
                    &remote.auth,
                    &[MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST],
                )
                .await
                .map_err(|source| PullError::Registry {
                    reference: name.to_owned(),
                    endpoint: remote.host.clone(),
                    source: Box::new(source),
                })?;
            let actual = content::digest_of(&bytes);
            if actual != chosen.digest {
                return Err(PullError::DigestMismatch {
                    reference: name.to_owned(),
                    what: "manifest",
                    digest: chosen.digest.clone(),
                    actual,
                });
            }
            let json: JsonManifest =
                serde_json::from_slice(&bytes).map_err(|source| PullError::Malformed {
                    reference: name.to_owned(),
                    what: "manifest",
                    source,
                })?;
            let desc = Descriptor {
                media_type: if chosen.media_type.is_empty() {
                    MEDIA_OCI_MANIFEST.to_owned()
                } else {
                    chosen.media_type.clone()
                },
                digest: chosen.digest.clone(),
                size: bytes.len() as i64,
                annotations: BTreeMap::new(),
            };
            let index = (
                top.clone(),
                top_json
                    .manifests
                    .iter()
                    .map(|m| m.digest.clone())
                    .collect::<Vec<_>>(),
            );
            (bytes, json, desc, Some(index))
        } else {
            let media_type = if top_json.media_type.is_empty() {
                MEDIA_OCI_MANIFEST.to_owned()
            } else {
                top_json.media_type.clone()
            };
            if media_type != MEDIA_OCI_MANIFEST && media_type != MEDIA_DOCKER_MANIFEST {
                return Err(PullError::UnsupportedMediaType {
                    reference: name.to_owned(),
                    media_type,
                });
            }
            let desc = Descriptor {
                media_type,
                digest: top_digest.clone(),
                size: top.len() as i64,
                annotations: BTreeMap::new(),
            };
            (top.clone(), top_json, desc, None)
        };
        let config = manifest_json
            .config
            .as_ref()
            .ok_or_else(|| PullError::UnsupportedMediaType {
                reference: name.to_owned(),
                media_type: "manifest without config".into(),
            })?;

        // Config and layers, bounded in parallel.
        let mut blobs: Vec<&JsonDescriptor> = vec![config];
        blobs.extend(manifest_json.layers.iter());
        // Collected first: a lazy `map` closure here makes the pull future not provably
        // `Send` (higher-ranked lifetime), which callers in spawned tasks need.
        let fetches: Vec<_> = blobs
            .iter()
            .map(|d| self.fetch_blob(namespace, name, remote, d, lease))
            .collect();
        futures::stream::iter(fetches)
            .buffer_unordered(self.config.max_concurrent_downloads.max(1))
            .try_collect::<Vec<()>>()
            .await?;

        // The manifest, labelled with its children (containerd's ChildrenLabelHandler).
        let mut labels = BTreeMap::new();
        labels.insert(format!("{LABEL_GC_REF_CONTENT}.config"), config.digest.clone());
        for (i, l) in manifest_json.layers.iter().enumerate() {
            labels.insert(format!("{LABEL_GC_REF_CONTENT}.l.{i}"), l.digest.clone());
        }
        self.put_bytes(
            namespace,
            &manifest_desc.digest,
            manifest_bytes.to_vec(),
            labels,
            lease,
        )
        .await?;
        let target = match index {
            Some((bytes, children)) => {
                let mut labels = BTreeMap::new();
                // Only the chosen platform was fetched; the label names what is present.
                for (i, d) in children.iter().enumerate() {
                    if *d == manifest_desc.digest {
                        labels.insert(format!("{LABEL_GC_REF_CONTENT}.m.{i}"), d.clone());
                    }
                }
                let digest = content::digest_of(&bytes);
                let size = bytes.len() as i64;
                self.put_bytes(namespace, &digest, bytes.to_vec(), labels, lease)
                    .await?;
                Descriptor {
                    media_type: if top_media_type.is_empty() {
                        MEDIA_OCI_INDEX.to_owned()
                    } else {
                        top_media_type.clone()
                    },
                    digest,
                    size,
                    annotations: BTreeMap::new(),
                }
            }
            None => manifest_desc,
        };

        if let Some(u) = &self.unpacker {
            let (store, ns, cd) = (self.content.clone(), namespace.to_owned(), config.digest.clone());
            let config_bytes =
                content::blocking("read image config", move || store.read_all(&ns, &cd)).await?;
            let layers: Vec<Descriptor> = manifest_json
                .layers
                .iter()
                .map(|l| Descriptor {
                    media_type: l.media_type.clone(),
                    digest: l.digest.clone(),
                    size: l.size,
                    annotations: BTreeMap::new(),
                })
                .collect();
            let top = u.unpack(namespace, name, lease, &config_bytes, &layers).await?;
            let key = format!("containerd.io/gc.ref.snapshot.{}", u.snapshotter.name());
            let info = content::Info {
                digest: config.digest.clone(),
                labels: [(key.clone(), top)].into(),
                ..Default::default()
            };
            let (store, ns) = (self.content.clone(), namespace.to_owned());
            content::blocking("label image config", move || {
                store.update(&ns, info, &[format!("labels.{key}")])
            })
            .await?;
        }
        let image = Image {
            name: name.to_owned(),
            target,
            ..Default::default()
        };
        let (images, ns) = (self.images.clone(), namespace.to_owned());
        let img = image.clone();
        let created = super::blocking("record pulled image", move || {
            match images.create(&ns, img.clone()) {
                Err(ImageError::AlreadyExists { .. }) => images.update(&ns, img, &["target".to_owned()]),
                other => other,
            }
        })
        .await?;
        Ok(created)
    }

    /// Writes small in-memory content (manifests, indexes) unless present.
    async fn put_bytes(
        &self,
        namespace: &str,
        digest: &str,
        data: Vec<u8>,
        labels: BTreeMap<String, String>,
        lease: &str,
    ) -> Result<(), PullError> {
        let (store, ns, d, lease) = (
            self.content.clone(),
            namespace.to_owned(),
            digest.to_owned(),
            lease.to_owned(),
        );
        content::blocking("write manifest", move || {
            let size = data.len() as i64;
            let mut w = match store.writer(&ns, &format!("pull-{d}"), size, &d, Some(&lease)) {
                Ok(w) => w,
                Err(ContentError::AlreadyExists { .. }) => {
                    // Present: refresh its labels.
                    let info = content::Info {
                        digest: d.clone(),
                        labels,
                        ..Default::default()
                    };
                    let paths: Vec<String> = info.labels.keys().map(|k| format!("labels.{k}")).collect();
                    store.update(&ns, info, &paths)?;
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            w.truncate()?;
            w.write(&data)?;
            match w.commit(size, &d, labels) {
                Ok(_) | Err(ContentError::AlreadyExists { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await?;
        Ok(())
    }

    /// Fetches one blob unless the namespace has it; adopts it when another namespace has it.
    async fn fetch_blob(
        &self,
        namespace: &str,
        name: &str,
        remote: &Remote,
        d: &JsonDescriptor,
        lease: &str,
    ) -> Result<(), PullError> {
        let timeout = Duration::from_millis(self.config.progress_timeout_ms.max(1));
        let r = format!("pull-{}", d.digest);
        // Open a writer; a concurrent pull of the same blob holds the ref: wait for it.
        let started = tokio::time::Instant::now();
        let mut writer = loop {
            let (store, ns, rr, dg, size, l) = (
                self.content.clone(),
                namespace.to_owned(),
                r.clone(),
                d.digest.clone(),
                d.size,
                lease.to_owned(),
            );
            let opened = content::blocking("open blob writer", move || {
                if store.adopt(&ns, &dg, size, Some(&l))? {
                    return Ok(None);
                }
                store.writer(&ns, &rr, size, &dg, Some(&l)).map(Some)
            })
            .await;
            match opened {
                Ok(Some(w)) => break w,
                Ok(None) | Err(ContentError::AlreadyExists { .. }) => return Ok(()),
                Err(ContentError::Locked { .. }) if started.elapsed() < timeout => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let desc = OciDescriptor {
            media_type: d.media_type.clone(),
            digest: d.digest.clone(),
            size: d.size,
            ..Default::default()
        };
        let resumed_at = writer.status().offset;
        if resumed_at > 0 {
            // Restart: a ranged resume is possible, but a fresh fetch keeps verification simple.
            writer = content::blocking("restart blob", move || {
                let mut w = writer;
                w.truncate()?;
                Ok(w)
            })
            .await?;
        }
        let mut stream = remote
            .client
            .pull_blob_stream(&remote.by_digest(&d.digest), &desc)
            .await
            .map_err(|source| PullError::Registry {
                reference: name.to_owned(),
                endpoint: remote.host.clone(),
                source: Box::new(source),
            })?
            .stream;
        loop {
            let next = tokio::time::timeout(timeout, stream.next()).await.map_err(|_| {
                PullError::ProgressTimeout {
                    reference: name.to_owned(),
                    digest: d.digest.clone(),
                    timeout,
                }
            })?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|source| PullError::Read {
                reference: name.to_owned(),
                digest: d.digest.clone(),
                source,
            })?;
            writer = content::blocking("write blob", move || {
                let mut w = writer;
                w.write(&chunk)?;
                Ok(w)
            })
            .await?;
        }
        let (size, dg) = (d.size, d.digest.clone());
        content::blocking("commit blob", move || {
            let mut w = writer;
            match w.commit(size, &dg, BTreeMap::new()) {
                Ok(_) | Err(ContentError::AlreadyExists { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await?;
        Ok(())
    }
}

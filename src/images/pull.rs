//! Server-side pull (what the CRI adapter's PullImage uses): resolve a reference against the
//! registry's endpoints (`hosts.rs`: mirrors in order, then the registry; `registry.rs`:
//! the HTTP client), fetch the manifest (an index resolves to the platform the matcher of
//! `platform.rs` prefers), write config and layers into the content store under a temporary
//! lease, record the image.
//!
//! ```text
//! pull(ns, "127.0.0.1:5000/busybox:latest")
//!   endpoints(registry)                       read per pull (hosts.toml edits apply at once)
//!   tag: first endpoint with `resolve` that serves the manifest; digest: with `pull`
//!     manifest (≤ max_manifest_bytes, read through a size-checked stream), sha256 checked
//!     index → the best platform's manifest (≤ its declared size and max_manifest_bytes)
//!     no accepted platform → NotFound naming the wanted and the listed platforms
//!   descriptors checked: sizes ≥ 0, one size per digest, checked sum; config ≤
//!     max_config_bytes
//!   lease pull-<id> (expires in 1h)          protects everything written until the image exists
//!   layers, config: buffer_unordered(max_concurrent_downloads), each distinct digest once,
//!     from the endpoints with `pull` (the resolving one first)
//!     present in the namespace → skipped; present in another namespace → adopted (no fetch)
//!     else streamed into a content writer (expected digest + size: verified on commit),
//!     a stream passing the declared size is cut off at once, each chunk within
//!     progress_timeout; a ref held by a concurrent pull → wait, then skip;
//!     the first failed fetch stops the others at their next chunk (none is dropped
//!     mid-write); each failed fetch aborts its ingest, and a failed pull every ingest its
//!     lease still holds
//!   manifest (+ index) with containerd's gc.ref.content labels; image created or updated
//!   lease deleted
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use oci_client::secrets::RegistryAuth;
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;

pub use super::error::PullError;
use super::hosts::{HostsConfig, RegistryConfig, endpoints};
use super::oci::{JsonDescriptor, Manifest as JsonManifest};
pub use super::oci::{MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST};
use super::platform::{Matcher, PlatformSpec};
use super::registry::{RegistryError, Remote};
use super::{Descriptor, Image, ImageError, Store};
use crate::content::{self, ContentError, LABEL_GC_REF_CONTENT};
use crate::metadata::{LABEL_GC_EXPIRE, LeaseManager};

/// The default cap of a manifest or index.
pub const DEFAULT_MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// The default cap of an image config.
pub const DEFAULT_MAX_CONFIG_BYTES: u64 = 8 << 20;

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
    /// A containerd `certs.d`-style directory of `<host>/hosts.toml` (see `hosts.rs`).
    pub config_path: Option<PathBuf>,
    /// The platforms pulls accept, in order (`linux/amd64`, `linux/arm64/v8`); empty = the
    /// host's.
    pub platforms: Vec<PlatformSpec>,
    /// The largest manifest or index read from a registry, in bytes.
    pub max_manifest_bytes: u64,
    /// The largest image config fetched, in bytes.
    pub max_config_bytes: u64,
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
            config_path: None,
            platforms: Vec::new(),
            max_manifest_bytes: DEFAULT_MAX_MANIFEST_BYTES,
            max_config_bytes: DEFAULT_MAX_CONFIG_BYTES,
            snapshotter: "overlayfs".into(),
        }
    }
}

impl PullConfig {
    /// The platform matcher the config asks for.
    pub fn matcher(&self) -> Matcher {
        Matcher::from_config(&self.platforms)
    }

    /// The registry part (what `Puller::replace_hosts` takes).
    pub fn hosts(&self) -> HostsConfig {
        HostsConfig {
            registries: self.registries.clone(),
            config_path: self.config_path.clone(),
        }
    }
}

/// Credentials for one pull (a CRI PullImage's auth).
#[derive(Debug, Clone)]
pub struct PullAuth {
    pub auth: RegistryAuth,
    /// The registry they are for (`server_address`); empty = the image's registry.
    pub server_address: String,
}

/// Pulls images into the content and image stores.
pub struct Puller {
    content: Arc<content::Store>,
    images: Arc<Store>,
    leases: Arc<dyn LeaseManager>,
    config: PullConfig,
    /// Registries and `config_path`: replaceable while running ([`Puller::replace_hosts`]).
    hosts: RwLock<Arc<HostsConfig>>,
    matcher: Matcher,
    unpacker: Option<super::unpack::Unpacker>,
}

/// The endpoints of one pull: `fetch` serve content by digest, in order.
struct Remotes {
    repository: String,
    fetch: Vec<Arc<Remote>>,
}

/// Whether credentials meant for `server_address` may go to `registry`'s endpoint `host`.
fn auth_applies(server_address: &str, registry: &str, host: &str) -> bool {
    let s = server_address
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or("");
    let docker = |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    s.is_empty() || s == registry || s == host || (docker(s) && docker(registry))
}

impl Puller {
    pub fn new(
        content: Arc<content::Store>,
        images: Arc<Store>,
        leases: Arc<dyn LeaseManager>,
        config: PullConfig,
    ) -> Puller {
        let matcher = config.matcher();
        Puller {
            content,
            images,
            leases,
            hosts: RwLock::new(Arc::new(config.hosts())),
            config,
            matcher,
            unpacker: None,
        }
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

    /// The platforms pulls accept.
    pub fn matcher(&self) -> &Matcher {
        &self.matcher
    }

    /// The registry config pulls use now.
    pub fn hosts(&self) -> Arc<HostsConfig> {
        self.hosts
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the registry config (`registries`, `config_path`) for the pulls that start
    /// from now on (a reload).
    pub fn replace_hosts(&self, hosts: HostsConfig) {
        *self
            .hosts
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(hosts);
    }

    /// Pulls `reference` into `namespace`; returns the image record.
    pub async fn pull(&self, namespace: &str, reference: &str) -> Result<Image, PullError> {
        self.pull_with_auth(namespace, reference, None).await
    }

    /// [`Puller::pull`] with credentials for this call (e.g. from a CRI PullImage request);
    /// they replace the configured `username`/`password`, and go only to the endpoints that
    /// may receive them (see `hosts.rs`).
    /// The pull runs in a span `pull{image}` (OpenTelemetry: `image.pull`, with an
    /// `image.fetch` child per blob and `image.unpack`).
    pub async fn pull_with_auth(
        &self,
        namespace: &str,
        reference: &str,
        auth: Option<PullAuth>,
    ) -> Result<Image, PullError> {
        let span = tracing::info_span!("pull", image = reference, otel.name = "image.pull");
        let result = self
            .pull_in_span(namespace, reference, auth)
            .instrument(span.clone())
            .await;
        if let Err(e) = &result {
            crate::telemetry::set_error(&span, e.to_string());
        }
        result
    }

    async fn pull_in_span(
        &self,
        namespace: &str,
        reference: &str,
        auth: Option<PullAuth>,
    ) -> Result<Image, PullError> {
        let parsed = super::reference::normalize(reference).map_err(|e| PullError::InvalidReference {
            reference: reference.to_owned(),
            reason: e.reason.to_owned(),
        })?;
        let name = parsed.to_string();
        let registry = parsed.domain.clone();
        let repository = parsed.path.clone();
        let accepted = [
            MEDIA_OCI_INDEX,
            MEDIA_OCI_MANIFEST,
            MEDIA_DOCKER_LIST,
            MEDIA_DOCKER_MANIFEST,
        ];
        let registry_err = |source: RegistryError| PullError::Registry {
            reference: name.clone(),
            source: Box::new(source),
        };

        let mut remotes = Vec::new();
        for e in endpoints(&self.hosts(), &registry)? {
            let creds = auth
                .as_ref()
                .filter(|a| auth_applies(&a.server_address, &registry, &e.host))
                .map(|a| a.auth.clone());
            remotes.push(Arc::new(Remote::new(e, creds).map_err(registry_err)?));
        }
        // A tag is resolved by endpoints with `resolve`, a digest fetched from ones with `pull`.
        let (at, by_digest) = match (&parsed.digest, &parsed.tag) {
            (Some(d), _) => (d.clone(), true),
            (None, tag) => (tag.as_deref().unwrap_or("latest").to_owned(), false),
        };
        let mut last_err = None;
        let mut found = None;
        for r in &remotes {
            let capable = if by_digest {
                r.endpoint.pull
            } else {
                r.endpoint.resolve
            };
            if !capable {
                continue;
            }
            match r
                .manifest(&repository, &at, &accepted, self.config.max_manifest_bytes)
                .await
            {
                Ok((bytes, _)) => {
                    found = Some((r.clone(), bytes));
                    break;
                }
                Err(e) if e.is_over_limit() => return Err(registry_err(e)),
                Err(source) => {
                    tracing::debug!(endpoint = %r.endpoint.host, error = %source, "pull: endpoint failed");
                    last_err = Some(registry_err(source));
                }
            }
        }
        let Some((resolver, top)) = found else {
            return Err(last_err.unwrap_or_else(|| PullError::InvalidReference {
                reference: name.clone(),
                reason: format!("no endpoint of {registry} may resolve it"),
            }));
        };
        let top_digest = content::digest_of(&top);
        if let Some(want) = &parsed.digest
            && *want != top_digest
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
        let is_index = top_json.is_index("");
        let mut fetch: Vec<Arc<Remote>> = Vec::new();
        if resolver.endpoint.pull {
            fetch.push(resolver.clone());
        }
        fetch.extend(
            remotes
                .iter()
                .filter(|r| r.endpoint.pull && !Arc::ptr_eq(r, &resolver))
                .cloned(),
        );
        let remotes = Remotes { repository, fetch };

        // A lease protects everything written until the image record exists.
        let lease = format!("pull-{}", crate::metadata::random_lease_id());
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
            .pull_leased(namespace, &name, &remotes, top, top_json, is_index, &lease)
            .await;
        if result.is_err() {
            self.abort_ingests(namespace, &lease).await;
        }
        let (l, ns, id) = (self.leases.clone(), namespace.to_owned(), lease);
        if let Err(error) = crate::metadata::blocking("delete pull lease", move || l.delete(&ns, &id)).await {
            tracing::warn!(%error, "pull: lease not deleted (it expires)");
        }
        result
    }

    /// Removes the partial downloads a failed pull leaves: every ingest its lease holds
    /// (fetches still running when another failed were dropped without cleaning up). An
    /// ingest a writer still holds is retried briefly, then left to the GC (its lease goes).
    async fn abort_ingests(&self, namespace: &str, lease: &str) {
        let (l, ns, id) = (self.leases.clone(), namespace.to_owned(), lease.to_owned());
        let refs =
            match crate::metadata::blocking("list pull ingests", move || l.list_resources(&ns, &id)).await {
                Ok(rs) => rs
                    .into_iter()
                    .filter(|r| r.r#type == "ingests")
                    .map(|r| r.id)
                    .collect::<Vec<_>>(),
                Err(error) => {
                    tracing::warn!(%error, "pull: ingests of a failed pull not listed (the GC removes them)");
                    return;
                }
            };
        for r in refs {
            for _ in 0..20 {
                let (store, ns, rr) = (self.content.clone(), namespace.to_owned(), r.clone());
                match content::blocking("abort pull ingest", move || store.abort(&ns, &rr)).await {
                    Err(ContentError::Locked { .. }) => tokio::time::sleep(Duration::from_millis(50)).await,
                    Ok(()) | Err(ContentError::IngestNotFound { .. }) => break,
                    Err(error) => {
                        tracing::warn!(%error, r#ref = %r, "pull: ingest not removed (the GC removes it)");
                        break;
                    }
                }
            }
        }
    }

    /// Fetches the manifest `digest` (at most `size` bytes) from the first endpoint that has it.
    async fn fetch_manifest(
        &self,
        name: &str,
        remotes: &Remotes,
        digest: &str,
        size: i64,
    ) -> Result<bytes::Bytes, PullError> {
        let limit = self.config.max_manifest_bytes;
        if size < 0 || size as u64 > limit {
            return Err(PullError::TooLarge {
                reference: name.to_owned(),
                what: "manifest",
                digest: digest.to_owned(),
                size,
                limit,
            });
        }
        let mut last = None;
        for r in &remotes.fetch {
            match r
                .manifest(
                    &remotes.repository,
                    digest,
                    &[MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST],
                    size as u64,
                )
                .await
            {
                Ok((bytes, _)) => return Ok(bytes),
                // Content over its limits ends the pull.
                Err(e) if e.is_over_limit() => {
                    last = Some(e);
                    break;
                }
                // Not there, not reachable, refused: the next endpoint may serve it.
                Err(e) => last = Some(e),
            }
        }
        Err(PullError::Registry {
            reference: name.to_owned(),
            source: Box::new(last.unwrap_or_else(|| RegistryError::NotFound {
                endpoint: "(no endpoint with pull)".into(),
                what: format!("manifest {digest}"),
            })),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn pull_leased(
        &self,
        namespace: &str,
        name: &str,
        remotes: &Remotes,
        top: bytes::Bytes,
        top_json: JsonManifest,
        is_index: bool,
        lease: &str,
    ) -> Result<Image, PullError> {
        let top_digest = content::digest_of(&top);
        let top_media_type = top_json.media_type.clone();
        let (manifest_bytes, manifest_json, manifest_desc, index) = if is_index {
            let best = self
                .matcher
                .best(top_json.manifests.iter().map(|m| m.platform.as_ref()))
                .ok_or_else(|| PullError::NoPlatform {
                    reference: name.to_owned(),
                    wanted: self.matcher.describe(),
                    available: top_json.platforms(),
                })?;
            let chosen = &top_json.manifests[best];
            let bytes = self
                .fetch_manifest(name, remotes, &chosen.digest, chosen.size)
                .await?;
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
        manifest_json.check().map_err(|reason| PullError::BadDescriptor {
            reference: name.to_owned(),
            reason,
        })?;
        if config.size as u64 > self.config.max_config_bytes {
            return Err(PullError::TooLarge {
                reference: name.to_owned(),
                what: "image config",
                digest: config.digest.clone(),
                size: config.size,
                limit: self.config.max_config_bytes,
            });
        }

        // Config and layers (each distinct blob once), bounded in parallel.
        let mut blobs: Vec<&JsonDescriptor> = vec![config];
        for l in &manifest_json.layers {
            if !blobs.iter().any(|b| b.digest == l.digest) {
                blobs.push(l);
            }
        }
        // Collected first: a lazy `map` closure here makes the pull future not provably
        // `Send` (higher-ranked lifetime), which callers in spawned tasks need.
        // Every fetch runs to its end (none is dropped mid-write, so each cleans up its own
        // ingest); the first failure tells the others to stop at their next chunk.
        let (stop, _) = tokio::sync::watch::channel(false);
        let fetches: Vec<_> = blobs
            .iter()
            .map(|d| {
                let span = tracing::info_span!(
                    "fetch",
                    digest = %d.digest,
                    size = d.size,
                    otel.name = "image.fetch"
                );
                self.fetch_blob(namespace, name, remotes, d, lease, &stop)
                    .instrument(span)
            })
            .collect();
        let results: Vec<Result<(), PullError>> = futures::stream::iter(fetches)
            .buffer_unordered(self.config.max_concurrent_downloads.max(1))
            .collect()
            .await;
        let mut stopped = None;
        for r in results {
            match r {
                Ok(()) => {}
                Err(e @ PullError::Stopped { .. }) => stopped = Some(e),
                Err(e) => return Err(e),
            }
        }
        if let Some(e) = stopped {
            return Err(e);
        }

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
                .map(super::oci::JsonDescriptor::to_descriptor)
                .collect();
            let top = u
                .unpack(namespace, name, lease, &config_bytes, &layers)
                .instrument(tracing::info_span!("unpack", otel.name = "image.unpack"))
                .await?;
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
            let written = w
                .truncate()
                .and_then(|()| w.write(&data))
                .and_then(|()| w.commit(size, &d, labels).map(|_| ()));
            drop(w);
            match written {
                Ok(()) | Err(ContentError::AlreadyExists { .. }) => Ok(()),
                Err(e) => {
                    let _ = store.abort(&ns, &format!("pull-{d}"));
                    Err(e)
                }
            }
        })
        .await?;
        Ok(())
    }

    /// Fetches one blob unless the namespace has it; adopts it when another namespace has it.
    /// A failed fetch removes its ingest.
    async fn fetch_blob(
        &self,
        namespace: &str,
        name: &str,
        remotes: &Remotes,
        d: &JsonDescriptor,
        lease: &str,
        stop: &tokio::sync::watch::Sender<bool>,
    ) -> Result<(), PullError> {
        let stopped = || PullError::Stopped {
            reference: name.to_owned(),
            digest: d.digest.clone(),
        };
        if *stop.borrow() {
            return Err(stopped());
        }
        let timeout = Duration::from_millis(self.config.progress_timeout_ms.max(1));
        let r = format!("pull-{}", d.digest);
        // Open a writer; a concurrent pull of the same blob holds the ref: wait for it.
        let started = tokio::time::Instant::now();
        let writer = loop {
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
        let result = self
            .stream_blob(name, remotes, d, writer, timeout, stop.subscribe())
            .await;
        if let Err(e) = &result
            && !matches!(e, PullError::Stopped { .. })
        {
            stop.send_replace(true);
        }
        if result.is_err() {
            // The writer is dropped (its lock released): remove what it wrote.
            let (store, ns) = (self.content.clone(), namespace.to_owned());
            let aborted = content::blocking("abort blob ingest", move || store.abort(&ns, &r)).await;
            match aborted {
                Ok(()) | Err(ContentError::IngestNotFound { .. }) => {}
                Err(error) => {
                    tracing::warn!(%error, digest = %d.digest, "pull: ingest not removed (GC removes it with the lease)");
                }
            }
        }
        result
    }

    /// Streams blob `d` from the first endpoint that has it into `writer` and commits it.
    async fn stream_blob(
        &self,
        name: &str,
        remotes: &Remotes,
        d: &JsonDescriptor,
        mut writer: content::Writer,
        timeout: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), PullError> {
        if writer.status().offset > 0 {
            // Restart: a ranged resume is possible, but a fresh fetch keeps verification simple.
            writer = content::blocking("restart blob", move || {
                let mut w = writer;
                w.truncate()?;
                Ok::<_, ContentError>(w)
            })
            .await?;
        }
        let registry_err = |source: RegistryError| PullError::Registry {
            reference: name.to_owned(),
            source: Box::new(source),
        };
        let mut last = None;
        let mut stream = None;
        for r in &remotes.fetch {
            match r.blob(&remotes.repository, &d.digest, d.size.max(0) as u64).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) if e.is_over_limit() => return Err(registry_err(e)),
                Err(e) => last = Some(e),
            }
        }
        let Some(stream) = stream else {
            return Err(registry_err(last.unwrap_or_else(|| RegistryError::NotFound {
                endpoint: "(no endpoint with pull)".into(),
                what: format!("blob {}", d.digest),
            })));
        };
        let mut stream = std::pin::pin!(stream);
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout(timeout, stream.next()) => next.map_err(|_| {
                    PullError::ProgressTimeout {
                        reference: name.to_owned(),
                        digest: d.digest.clone(),
                        timeout,
                    }
                })?,
                _ = stop.wait_for(|s| *s) => {
                    return Err(PullError::Stopped {
                        reference: name.to_owned(),
                        digest: d.digest.clone(),
                    });
                }
            };
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(registry_err)?;
            writer = content::blocking("write blob", move || {
                let mut w = writer;
                w.write(&chunk)?;
                Ok::<_, ContentError>(w)
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

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_apply_to_the_registry_they_name() {
        use super::auth_applies;
        assert!(auth_applies("", "registry.example.com", "mirror.example.com"));
        assert!(auth_applies(
            "registry.example.com",
            "registry.example.com",
            "registry.example.com"
        ));
        assert!(auth_applies(
            "https://index.docker.io/v1/",
            "docker.io",
            "registry-1.docker.io"
        ));
        assert!(!auth_applies(
            "other.example.com",
            "registry.example.com",
            "registry.example.com"
        ));
        assert!(!auth_applies(
            "https://ghcr.io",
            "docker.io",
            "registry-1.docker.io"
        ));
    }
}

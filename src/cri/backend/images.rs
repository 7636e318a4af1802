//! [`ImageSide`]: the CRI's image backend and rootfs provider over the in-process image
//! side, namespace `k8s.io` (containerd's CRI image service does the same with its
//! in-memory services).
//!
//! ```text
//! pull(ref, auth)   Puller::pull_with_auth (hosts/mirrors config, unpack into the
//!                   images service's snapshotter) → names `ref`, `repo@<target digest>`
//!                   and `sha256:<config>` (label io.cri-containerd.image=managed)
//! list / remove     images service (`dyn Images`: events, GC scheduled on delete)
//! resolve(target)   content store (images/oci.rs): index → the manifest of the best
//!                   platform held (images/platform.rs) → config (ImageConfig,
//!                   diff_ids → top chain id), size = manifest + config + layers;
//!                   cached by target digest (content addressed, never stale)
//! image(ref | id)   resolve; a missing name is pulled (the sandbox image); a missing
//!                   chain snapshot (image pulled client-side by ctr without unpack) is
//!                   unpacked; /etc/passwd + /etc/group read from a read-only view
//! prepare(id)       lease cri-rootfs-<id> (expiring) holds snapshot <id> until the
//!                   container record (snapshotter + snapshot_key) references it;
//!                   active snapshot <id> on the top chain id → its mounts
//! remove(id)        snapshot <id> and the lease; absent is fine
//! fs_info           the snapshotter's root; usage summed over its k8s.io snapshots
//! ```
//!
//! Reading the image's files: the view's mounts are mounted read-only on a private scratch
//! directory and each file is opened with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
//! | RESOLVE_NO_XDEV)`, so a symlink planted by a layer (`/etc/passwd → /../../host`)
//! resolves inside the image; only regular files up to [`MAX_USER_FILE`] bytes are read.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use std::os::unix::fs::OpenOptionsExt;

use async_trait::async_trait;
use oci_client::secrets::RegistryAuth;

use crate::content::{self, LABEL_GC_REF_SNAPSHOT};
use crate::cri::backend::contract::{Auth, BackendImage, FsUsage, ImageBackend, ImageInfo, RootfsProvider};
use crate::cri::error::CriError;
use crate::cri::error::NAMESPACE;
use crate::cri::store::image::ImageConfig;
use crate::cri::userns::PodUserns;
use crate::errdefs::{ErrorKind, Kind, not_found_ok};
use crate::images::oci::{self, Manifest as JsonManifest, RunConfig, chain_ids};
use crate::images::platform::Matcher;
use crate::images::pull::{PullAuth, Puller};
use crate::images::reference;
use crate::images::{Descriptor, Image};
use crate::metadata::{LABEL_GC_EXPIRE, LeaseManager, LeaseResource};
use crate::runtime::Mount;
use crate::services::images::Images;
use crate::snapshots::{SnapshotError, Snapshotter};

/// The label containerd's CRI puts on the image names it manages.
pub const LABEL_MANAGED: &str = "io.cri-containerd.image";
/// The largest `/etc/passwd` or `/etc/group` read from an image.
pub const MAX_USER_FILE: u64 = 4 << 20;
/// How long the lease that protects a fresh container snapshot (or a view, or an unpack)
/// lives when nobody deletes it.
const LEASE_TTL: Duration = Duration::from_secs(3600);

impl From<RunConfig> for ImageConfig {
    fn from(c: RunConfig) -> ImageConfig {
        ImageConfig {
            user: c.user,
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir,
            stop_signal: c.stop_signal,
        }
    }
}

/// An image config as CreateContainer reads it, and its layers' diff ids (the entry of the
/// fuzz targets, fuzz/).
pub fn decode_image_config(bytes: &[u8]) -> Result<(ImageConfig, Vec<String>), serde_json::Error> {
    let c: oci::ImageConfig = serde_json::from_slice(bytes)?;
    Ok((c.config.into(), c.rootfs.diff_ids))
}

/// What an image target resolves to.
#[derive(Debug, Clone)]
struct Resolved {
    config_digest: String,
    config: ImageConfig,
    size: u64,
    /// The top chain id ("" for an image without layers).
    chain: String,
    config_bytes: Vec<u8>,
    layers: Vec<Descriptor>,
}

/// `/etc/passwd` and `/etc/group` of an image.
type UserFiles = (Option<String>, Option<String>);

/// The CRI's image backend and rootfs provider (see the module docs).
pub struct ImageSide {
    images: Arc<dyn Images>,
    puller: Arc<Puller>,
    content: Arc<content::Store>,
    snapshotter: Arc<dyn Snapshotter>,
    leases: Arc<dyn LeaseManager>,
    /// Where image views are mounted for reading.
    scratch: PathBuf,
    /// target digest → resolution.
    resolved: Mutex<HashMap<String, Arc<Resolved>>>,
    /// config digest → resolution (what `prepare` needs for an `ImageInfo`).
    by_config: Mutex<HashMap<String, Arc<Resolved>>>,
    /// config digest → the image's user files.
    files: Mutex<HashMap<String, UserFiles>>,
    /// One remapped copy is made at a time (two containers of a pod on the same image
    /// would otherwise both make it).
    remapping: tokio::sync::Mutex<()>,
}

fn precondition(what: impl Into<String>, reason: impl Into<String>) -> CriError {
    CriError::FailedPrecondition {
        what: what.into(),
        reason: reason.into(),
    }
}

/// The credentials of a PullImage request as the registry client takes them.
pub fn registry_auth(a: &Auth) -> Result<Option<RegistryAuth>, CriError> {
    if !a.registry_token.is_empty() {
        return Ok(Some(RegistryAuth::Bearer(a.registry_token.clone())));
    }
    if !a.username.is_empty() {
        return Ok(Some(RegistryAuth::Basic(a.username.clone(), a.password.clone())));
    }
    if !a.auth.is_empty() {
        use base64::Engine;
        let bad = |reason: &str| CriError::InvalidArgument {
            field: "auth.auth",
            reason: reason.to_owned(),
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|_| bad("not base64"))?;
        let text = String::from_utf8(raw).map_err(|_| bad("not UTF-8 once decoded"))?;
        let (user, password) = text.split_once(':').ok_or_else(|| bad("not user:password"))?;
        return Ok(Some(RegistryAuth::Basic(user.to_owned(), password.to_owned())));
    }
    if !a.identity_token.is_empty() {
        return Err(CriError::InvalidArgument {
            field: "auth.identity_token",
            reason:
                "OAuth2 identity tokens are not supported; send username/password, auth or registry_token"
                    .into(),
        });
    }
    Ok(None)
}

impl ImageSide {
    /// None when the images service does not unpack (no snapshotter or no differ): then
    /// there are no root file systems to give containers.
    pub fn new(
        images: Arc<dyn Images>,
        puller: Arc<Puller>,
        content: Arc<content::Store>,
        scratch: PathBuf,
    ) -> Option<ImageSide> {
        let u = puller.unpacker()?;
        let (snapshotter, leases) = (u.snapshotter.clone(), u.leases.clone());
        Some(ImageSide {
            images,
            puller,
            content,
            snapshotter,
            leases,
            scratch,
            resolved: Mutex::new(HashMap::new()),
            by_config: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            remapping: tokio::sync::Mutex::new(()),
        })
    }

    /// Resolves an image target through the content store (cached).
    async fn resolve(&self, target: &Descriptor) -> Result<Arc<Resolved>, CriError> {
        if let Some(r) = lock(&self.resolved).get(&target.digest) {
            return Ok(r.clone());
        }
        let (store, t, m) = (
            self.content.clone(),
            target.clone(),
            self.puller.matcher().clone(),
        );
        let r = tokio::task::spawn_blocking(move || resolve_blocking(&store, &t, &m))
            .await
            .map_err(|e| precondition("resolve image", e.to_string()))??;
        let r = Arc::new(r);
        lock(&self.resolved).insert(target.digest.clone(), r.clone());
        lock(&self.by_config).insert(r.config_digest.clone(), r.clone());
        Ok(r)
    }

    /// Every image record of the namespace.
    async fn records(&self) -> Result<Vec<Image>, CriError> {
        self.images
            .list(NAMESPACE, Vec::new())
            .await
            .map_err(|e| CriError::backend("list images", e))
    }

    /// The record a spec names: an image id (any record whose config has that digest) or a
    /// reference (normalized); None when absent.
    async fn find(&self, spec: &str) -> Result<Option<(String, Image)>, CriError> {
        if reference::is_image_id(spec) {
            let mut found = None;
            for img in self.records().await? {
                match self.resolve(&img.target).await {
                    Ok(r) if r.config_digest == spec => {
                        // Prefer a tag as the reference containers are created from.
                        let is_tag = !img.name.contains('@') && !reference::is_image_id(&img.name);
                        if found.is_none() || is_tag {
                            found = Some((img.name.clone(), img));
                        }
                        if is_tag {
                            break;
                        }
                    }
                    _ => {}
                }
            }
            return Ok(found);
        }
        let name = reference::normalize(spec)?.to_string();
        match self.images.get(NAMESPACE, &name).await {
            Ok(img) => Ok(Some((name, img))),
            Err(e) if e.kind() == Kind::NotFound => Ok(None),
            Err(e) => Err(CriError::backend("get image", e)),
        }
    }

    /// Creates (or repoints) the image name `name` at `target`, labelled as CRI-managed.
    async fn put_name(&self, name: &str, target: &Descriptor) -> Result<(), CriError> {
        let img = Image {
            name: name.to_owned(),
            labels: BTreeMap::from([(LABEL_MANAGED.to_owned(), "managed".to_owned())]),
            target: target.clone(),
            ..Default::default()
        };
        match self.images.create(NAMESPACE, img.clone()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == Kind::AlreadyExists => self
                .images
                .update(
                    NAMESPACE,
                    img,
                    vec!["target".to_owned(), format!("labels.{LABEL_MANAGED}")],
                )
                .await
                .map(|_| ())
                .map_err(|e| CriError::backend("update image", e)),
            Err(e) => Err(CriError::backend("create image", e)),
        }
    }

    /// A lease that expires on its own, holding `resources` (snapshots of our snapshotter).
    async fn lease(&self, id: &str, keys: &[&str]) -> Result<(), CriError> {
        self.lease_with(id, keys, true).await
    }

    /// A lease holding `keys` (snapshots of our snapshotter); it expires only if asked.
    async fn lease_with(&self, id: &str, keys: &[&str], expires: bool) -> Result<(), CriError> {
        let labels: HashMap<String, String> = if expires {
            let expire = prost_types::Timestamp::from(SystemTime::now() + LEASE_TTL).to_string();
            [(LABEL_GC_EXPIRE.to_owned(), expire)].into()
        } else {
            HashMap::new()
        };
        let sn = format!("snapshots/{}", self.snapshotter.name());
        let (l, id, keys) = (
            self.leases.clone(),
            id.to_owned(),
            keys.iter()
                .map(std::string::ToString::to_string)
                .collect::<Vec<_>>(),
        );
        crate::metadata::blocking("create lease", move || {
            match l.create(NAMESPACE, &id, labels.into_iter().collect()) {
                Ok(_) => {}
                Err(e) if e.kind() == Kind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            for k in keys {
                l.add_resource(
                    NAMESPACE,
                    &id,
                    LeaseResource {
                        id: k,
                        r#type: sn.clone(),
                    },
                )?;
            }
            Ok(())
        })
        .await
        .map_err(|e| CriError::backend("lease snapshot", e))
    }

    async fn drop_lease(&self, id: &str) {
        let (l, id) = (self.leases.clone(), id.to_owned());
        let r =
            crate::metadata::blocking("delete lease", move || not_found_ok(l.delete(NAMESPACE, &id))).await;
        if let Err(error) = r {
            tracing::warn!(%error, "CRI: lease not deleted (it expires)");
        }
    }

    /// Makes sure the image's top chain snapshot exists (unpacking an image that was pulled
    /// without unpack, e.g. by `ctr images pull --skip-unpack` or into another snapshotter).
    async fn ensure_unpacked(&self, name: &str, r: &Resolved) -> Result<(), CriError> {
        if r.chain.is_empty() {
            return Ok(());
        }
        match self.snapshotter.stat(NAMESPACE, &r.chain).await {
            Ok(_) => return Ok(()),
            Err(SnapshotError::NotFound { .. }) => {}
            Err(e) => return Err(CriError::backend("stat image snapshot", e)),
        }
        let Some(u) = self.puller.unpacker() else {
            return Err(precondition(
                format!("image {name}"),
                "is not unpacked and the images service has no unpacker",
            ));
        };
        let lease = format!("cri-unpack-{}", uuid::Uuid::new_v4().simple());
        self.lease(&lease, &[]).await?;
        let result = u
            .unpack(NAMESPACE, name, &lease, &r.config_bytes, &r.layers)
            .await
            .map_err(|e| CriError::backend("unpack image", e));
        if let Ok(top) = &result {
            // The image's config keeps the layers from now on, as after a server-side pull.
            let key = format!("{LABEL_GC_REF_SNAPSHOT}{}", self.snapshotter.name());
            let info = content::Info {
                digest: r.config_digest.clone(),
                labels: [(key.clone(), top.clone())].into(),
                ..Default::default()
            };
            let store = self.content.clone();
            let labelled = content::blocking("label image config", move || {
                store.update(NAMESPACE, info, &[format!("labels.{key}")])
            })
            .await;
            if let Err(e) = labelled {
                self.drop_lease(&lease).await;
                return Err(CriError::backend("label image config", e));
            }
        }
        self.drop_lease(&lease).await;
        result.map(|_| ())
    }

    /// The image's `/etc/passwd` and `/etc/group` (cached by config digest).
    async fn user_files(&self, r: &Resolved) -> Result<UserFiles, CriError> {
        if let Some(f) = lock(&self.files).get(&r.config_digest) {
            return Ok(f.clone());
        }
        if r.chain.is_empty() {
            return Ok((None, None));
        }
        let key = format!("cri-view-{}", uuid::Uuid::new_v4().simple());
        self.lease(&key, &[&key]).await?;
        let mounts = self
            .snapshotter
            .view(NAMESPACE, &key, &r.chain, BTreeMap::new())
            .await;
        let result = match mounts {
            Ok(mounts) => {
                let dir = self.scratch.join(&key);
                tokio::task::spawn_blocking(move || read_user_files(&mounts, &dir))
                    .await
                    .map_err(|e| precondition("read image user files", e.to_string()))
                    .and_then(|r| r)
            }
            Err(e) => Err(CriError::backend("view image snapshot", e)),
        };
        if let Err(error) = not_found_ok(self.snapshotter.remove(NAMESPACE, &key).await) {
            tracing::warn!(%error, key, "CRI: image view not removed (the GC removes it)");
        }
        self.drop_lease(&key).await;
        let files = result?;
        lock(&self.files).insert(r.config_digest.clone(), files.clone());
        Ok(files)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read_json<T: serde::de::DeserializeOwned>(
    store: &content::Store,
    digest: &str,
    what: &str,
) -> Result<(Vec<u8>, T), CriError> {
    let bytes = store
        .read_all(NAMESPACE, digest)
        .map_err(|e| CriError::backend("read image content", e))?;
    let v = serde_json::from_slice(&bytes)
        .map_err(|e| precondition(format!("{what} {digest}"), format!("malformed: {e}")))?;
    Ok((bytes, v))
}

fn resolve_blocking(
    store: &content::Store,
    target: &Descriptor,
    matcher: &Matcher,
) -> Result<Resolved, CriError> {
    let (top_bytes, top): (_, JsonManifest) = read_json(store, &target.digest, "manifest")?;
    let mut size = top_bytes.len() as u64;
    let manifest = if top.is_index(&target.media_type) {
        // The best platform's manifest this namespace holds.
        let held: Vec<_> = top
            .manifests
            .iter()
            .filter(|m| store.info(NAMESPACE, &m.digest).is_ok())
            .collect();
        let chosen = matcher
            .best(held.iter().map(|m| m.platform.as_ref()))
            .map(|i| held[i])
            .ok_or_else(|| {
                precondition(
                    format!("image index {}", target.digest),
                    format!(
                        "holds no manifest for {} in the content store (the index lists: {})",
                        matcher.describe(),
                        top.platforms()
                    ),
                )
            })?;
        let (bytes, m): (_, JsonManifest) = read_json(store, &chosen.digest, "manifest")?;
        size += bytes.len() as u64;
        m
    } else {
        top
    };
    let blobs = manifest
        .check()
        .map_err(|reason| precondition(format!("manifest of {}", target.digest), reason))?;
    let config = manifest
        .config
        .ok_or_else(|| precondition(format!("manifest of {}", target.digest), "has no config"))?;
    let (config_bytes, cfg): (_, oci::ImageConfig) = read_json(store, &config.digest, "image config")?;
    if cfg.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(precondition(
            format!("image config {}", config.digest),
            format!(
                "{} diff_ids for {} layers",
                cfg.rootfs.diff_ids.len(),
                manifest.layers.len()
            ),
        ));
    }
    // The config's declared size is in `blobs`; what it holds is what counts.
    let size = size
        .checked_add(blobs)
        .and_then(|s| s.checked_sub(config.size.max(0) as u64))
        .and_then(|s| s.checked_add(config_bytes.len() as u64))
        .ok_or_else(|| precondition(format!("image {}", target.digest), "its size overflows"))?;
    Ok(Resolved {
        config_digest: config.digest,
        config: cfg.config.into(),
        size,
        chain: chain_ids(&cfg.rootfs.diff_ids).pop().unwrap_or_default(),
        config_bytes,
        layers: manifest
            .layers
            .iter()
            .map(crate::images::oci::JsonDescriptor::to_descriptor)
            .collect(),
    })
}

/// Mounts `mounts` read-only on `dir`, reads the user files, unmounts.
fn read_user_files(mounts: &[Mount], dir: &Path) -> Result<UserFiles, CriError> {
    with_mounted(mounts, dir, true, |dir| {
        read_in_root(dir, "etc/passwd").and_then(|p| Ok((p, read_in_root(dir, "etc/group")?)))
    })
}

/// Mounts a snapshot's single mount on `dir` (created), runs `f` on it, then unmounts it
/// and removes `dir`, whatever `f` answered.
fn with_mounted<T>(
    mounts: &[Mount],
    dir: &Path,
    readonly: bool,
    f: impl FnOnce(&Path) -> Result<T, CriError>,
) -> Result<T, CriError> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    let io =
        |op: &str, e: &dyn std::fmt::Display| precondition(format!("{op} {}", dir.display()), e.to_string());
    let [m] = mounts else {
        return Err(precondition(
            "image snapshot",
            format!("{} mounts, expected one", mounts.len()),
        ));
    };
    std::fs::create_dir_all(dir).map_err(|e| io("create", &e))?;
    let mut flags = if readonly {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    let mut data = Vec::new();
    for o in &m.options {
        match o.as_str() {
            "ro" => {}
            "rw" => {}
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            o => data.push(o.to_owned()),
        }
    }
    let is_bind = flags.contains(MsFlags::MS_BIND);
    let fstype = (!is_bind).then_some(m.r#type.as_str());
    let data = data.join(",");
    let mounted = mount(
        Some(m.source.as_str()),
        dir,
        fstype,
        flags,
        (!is_bind && !data.is_empty()).then_some(data.as_str()),
    );
    if let Err(e) = mounted {
        let _ = std::fs::remove_dir(dir);
        return Err(io("mount image snapshot on", &e));
    }
    let out = f(dir);
    if let Err(error) = umount2(dir, MntFlags::MNT_DETACH) {
        tracing::warn!(%error, dir = %dir.display(), "CRI: image snapshot not unmounted");
    }
    let _ = std::fs::remove_dir(dir);
    out
}

/// Reads `path` under `root` without leaving it (symlinks resolve inside `root`); None
/// when it is absent or not a regular file.
fn read_in_root(root: &Path, path: &str) -> Result<Option<String>, CriError> {
    use std::io::Read;

    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
    use nix::sys::stat::Mode;
    let fail = |e: &dyn std::fmt::Display| precondition(format!("image file /{path}"), e.to_string());
    let rootfd = open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail(&e))?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY)
        .resolve(
            ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS | ResolveFlag::RESOLVE_NO_XDEV,
        );
    let fd = match openat2(&rootfd, path, how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR | nix::errno::Errno::EXDEV) => {
            return Ok(None);
        }
        Err(e) => return Err(fail(&e)),
    };
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|e| fail(&e))?;
    if !meta.is_file() {
        return Ok(None);
    }
    if meta.len() > MAX_USER_FILE {
        return Err(fail(&format!("larger than {MAX_USER_FILE} bytes")));
    }
    let mut out = Vec::new();
    file.take(MAX_USER_FILE)
        .read_to_end(&mut out)
        .map_err(|e| fail(&e))?;
    Ok(Some(String::from_utf8_lossy(&out).into_owned()))
}

#[async_trait]
impl ImageBackend for ImageSide {
    async fn pull(&self, reference: &str, auth: Option<Auth>) -> Result<BackendImage, CriError> {
        let auth = match auth {
            Some(a) => registry_auth(&a)?.map(|auth| PullAuth {
                auth,
                server_address: a.server_address.clone(),
            }),
            None => None,
        };
        let img = self
            .puller
            .pull_with_auth(NAMESPACE, reference, auth)
            .await
            .map_err(|e| CriError::backend("pull image", e))?;
        let r = self.resolve(&img.target).await?;
        let repo = reference::normalize(reference)?.name();
        let mut names = vec![
            reference.to_owned(),
            format!("{repo}@{}", img.target.digest),
            r.config_digest.clone(),
        ];
        names.dedup();
        for n in &names {
            self.put_name(n, &img.target).await?;
        }
        Ok(BackendImage {
            name: reference.to_owned(),
            config_digest: r.config_digest.clone(),
            size: r.size,
            config: r.config.clone(),
        })
    }

    async fn list(&self) -> Result<Vec<BackendImage>, CriError> {
        let mut out = Vec::new();
        for img in self.records().await? {
            match self.resolve(&img.target).await {
                Ok(r) => out.push(BackendImage {
                    name: img.name,
                    config_digest: r.config_digest.clone(),
                    size: r.size,
                    config: r.config.clone(),
                }),
                // Another platform, or content that is not (yet) all there: not a CRI image.
                Err(error) => tracing::debug!(image = %img.name, %error, "CRI: image skipped"),
            }
        }
        Ok(out)
    }

    async fn remove(&self, name: &str) -> Result<(), CriError> {
        not_found_ok(self.images.delete(NAMESPACE, name, None, false).await)
            .map_err(|e| CriError::backend("delete image", e))
    }

    async fn fs_info(&self) -> Result<FsUsage, CriError> {
        let mut used = FsUsage {
            mountpoint: self.snapshotter.root().display().to_string(),
            ..Default::default()
        };
        let all = self
            .snapshotter
            .walk(NAMESPACE, Vec::new())
            .await
            .map_err(|e| CriError::backend("walk snapshots", e))?;
        for s in all {
            match self.snapshotter.usage(NAMESPACE, &s.name).await {
                Ok(u) => {
                    used.used_bytes += u.size.max(0) as u64;
                    used.inodes_used += u.inodes.max(0) as u64;
                }
                // Removed meanwhile.
                Err(SnapshotError::NotFound { .. }) => {}
                Err(e) => return Err(CriError::backend("snapshot usage", e)),
            }
        }
        Ok(used)
    }

    async fn rootfs_diff(&self, container_id: &str, dest: &std::path::Path) -> Result<(), CriError> {
        let mounts = self
            .snapshotter
            .mounts(NAMESPACE, container_id)
            .await
            .map_err(|e| CriError::backend("container snapshot mounts", e))?;
        // overlayfs: the upper dir holds exactly the container's changes (whiteouts as
        // 0/0 character devices, as overlayfs keeps them).
        let upper = mounts
            .iter()
            .filter(|m| m.r#type == "overlay")
            .flat_map(|m| m.options.iter())
            .find_map(|o| o.strip_prefix("upperdir="))
            .map(std::path::PathBuf::from)
            .ok_or_else(|| CriError::FailedPrecondition {
                what: format!("container {container_id}"),
                reason: format!(
                    "its root file system is on the {} snapshotter; a rootfs diff needs overlayfs",
                    self.snapshotter.name()
                ),
            })?;
        let dest = dest.to_owned();
        // The container runs while its upper dir is read: walked beneath an fd, never
        // through a symlink it could plant (diff::beneath); the archive is new and 0600.
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&dest)?;
            let mut out = std::io::BufWriter::new(f);
            crate::diff::beneath::write_tree(&upper, &mut out)?;
            out.into_inner()
                .map_err(std::io::IntoInnerError::into_error)?
                .sync_all()
        })
        .await
        .map_err(|e| CriError::FailedPrecondition {
            what: "rootfs diff".into(),
            reason: e.to_string(),
        })?
        .map_err(|e| CriError::FailedPrecondition {
            what: format!("rootfs diff of container {container_id}"),
            reason: e.to_string(),
        })
    }

    async fn writable_layer(&self, container_id: &str) -> Result<Option<FsUsage>, CriError> {
        match self.snapshotter.usage(NAMESPACE, container_id).await {
            Ok(u) => Ok(Some(FsUsage {
                mountpoint: self.snapshotter.root().display().to_string(),
                used_bytes: u.size.max(0) as u64,
                inodes_used: u.inodes.max(0) as u64,
            })),
            Err(SnapshotError::NotFound { .. }) => Ok(None),
            Err(e) => Err(CriError::backend("snapshot usage", e)),
        }
    }
}

#[async_trait]
impl RootfsProvider for ImageSide {
    fn snapshotter(&self) -> &str {
        self.snapshotter.name()
    }

    async fn image(&self, spec: &str) -> Result<ImageInfo, CriError> {
        let (name, img) = match self.find(spec).await? {
            Some(found) => found,
            None if reference::is_image_id(spec) => {
                return Err(CriError::backend(
                    "image",
                    crate::images::ImageError::NotFound {
                        namespace: NAMESPACE.to_owned(),
                        name: spec.to_owned(),
                    },
                ));
            }
            None => {
                // The sandbox image (containerd pulls it when missing too).
                let name = reference::normalize(spec)?.to_string();
                self.pull(&name, None).await?;
                let img = self
                    .images
                    .get(NAMESPACE, &name)
                    .await
                    .map_err(|e| CriError::backend("get image", e))?;
                (name, img)
            }
        };
        let r = self.resolve(&img.target).await?;
        self.ensure_unpacked(&name, &r).await?;
        // Without the files only numeric users resolve; CreateContainer then names the user
        // it could not find.
        let (passwd, group) = match self.user_files(&r).await {
            Ok(files) => files,
            Err(error) => {
                tracing::warn!(image = %name, %error, "CRI: cannot read the image's /etc/passwd and /etc/group");
                (None, None)
            }
        };
        Ok(ImageInfo {
            id: r.config_digest.clone(),
            reference: name,
            config: r.config.clone(),
            passwd,
            group,
        })
    }

    async fn prepare(&self, id: &str, image: &ImageInfo) -> Result<Vec<Mount>, CriError> {
        let r = self.resolved_for(image)?;
        self.prepare_on(id, &r.chain).await
    }

    async fn prepare_remapped(
        &self,
        id: &str,
        image: &ImageInfo,
        pod: &str,
        map: &PodUserns,
    ) -> Result<Vec<Mount>, CriError> {
        let r = self.resolved_for(image)?;
        let parent = self.remapped(&r, pod, map).await?;
        self.prepare_on(id, &parent).await
    }

    async fn remove(&self, id: &str) -> Result<(), CriError> {
        match self.snapshotter.remove(NAMESPACE, id).await {
            Ok(()) | Err(SnapshotError::NotFound { .. }) => {}
            Err(e) => return Err(CriError::backend("remove container snapshot", e)),
        }
        self.drop_lease(&format!("cri-rootfs-{id}")).await;
        Ok(())
    }

    async fn remove_pod(&self, pod: &str) -> Result<(), CriError> {
        let prefix = format!("{}-", pod_lease(pod));
        let keys: Vec<String> = self
            .snapshotter
            .walk(NAMESPACE, Vec::new())
            .await
            .map_err(|e| CriError::backend("walk snapshots", e))?
            .into_iter()
            .map(|i| i.name)
            .filter(|k| k.starts_with(&prefix))
            .collect();
        for key in &keys {
            not_found_ok(self.snapshotter.remove(NAMESPACE, key).await)
                .map_err(|e| CriError::backend("remove the pod's remapped image copy", e))?;
        }
        self.drop_lease(&pod_lease(pod)).await;
        if !keys.is_empty() {
            tracing::info!(
                sandbox = pod,
                copies = keys.len(),
                "CRI: the pod's remapped image copies removed"
            );
        }
        Ok(())
    }
}

/// The lease (never expiring) holding the remapped image copies of a pod in a user
/// namespace; the copies are named `<lease>-<chain id>`.
fn pod_lease(pod: &str) -> String {
    format!("cri-userns-{pod}")
}

impl ImageSide {
    fn resolved_for(&self, image: &ImageInfo) -> Result<Arc<Resolved>, CriError> {
        lock(&self.by_config)
            .get(&image.id)
            .cloned()
            .ok_or_else(|| precondition(format!("image {}", image.id), "was not resolved before prepare"))
    }

    /// The committed copy of the image's top snapshot whose files belong to the pod's user
    /// namespace (made the first time; see `cri/remap.rs`), held by the pod's lease.
    async fn remapped(&self, r: &Resolved, pod: &str, map: &PodUserns) -> Result<String, CriError> {
        let key = format!("{}-{}", pod_lease(pod), r.chain);
        let _one = self.remapping.lock().await;
        match self.snapshotter.stat(NAMESPACE, &key).await {
            Ok(_) => return Ok(key),
            Err(SnapshotError::NotFound { .. }) => {}
            Err(e) => return Err(CriError::backend("stat remapped image copy", e)),
        }
        let tmp = format!("{key}-{}", uuid::Uuid::new_v4().simple());
        self.lease_with(&pod_lease(pod), &[&key, &tmp], false).await?;
        let began = std::time::Instant::now();
        let mounts = self
            .snapshotter
            .prepare(NAMESPACE, &tmp, &r.chain, BTreeMap::new())
            .await
            .map_err(|e| CriError::backend("prepare remapped image copy", e))?;
        let (dir, map_) = (self.scratch.join(uuid::Uuid::new_v4().simple().to_string()), *map);
        let remapped = crate::cri::error::blocking("remap the image copy", move || {
            with_mounted(&mounts, &dir, false, |root| {
                crate::cri::remap::remap_tree(root, &map_).map_err(|e| {
                    precondition("remap the image copy for the pod's user namespace", e.to_string())
                })
            })
        })
        .await;
        let committed = match remapped {
            Ok(files) => self
                .snapshotter
                .commit(NAMESPACE, &key, &tmp, BTreeMap::new())
                .await
                .map(|()| files)
                .map_err(|e| CriError::backend("commit remapped image copy", e)),
            Err(e) => Err(e),
        };
        match committed {
            Ok(files) => {
                tracing::info!(
                    sandbox = pod,
                    chain = %r.chain,
                    files,
                    ms = began.elapsed().as_millis() as u64,
                    "CRI: image copy remapped for the pod's user namespace"
                );
                Ok(key)
            }
            Err(e) => {
                if let Err(error) = not_found_ok(self.snapshotter.remove(NAMESPACE, &tmp).await) {
                    tracing::warn!(%error, key = tmp, "CRI: unfinished remapped copy not removed (its pod's removal does it)");
                }
                Err(e)
            }
        }
    }

    /// Snapshot `id` on `parent`, held by an expiring lease until the container record
    /// references it.
    async fn prepare_on(&self, id: &str, parent: &str) -> Result<Vec<Mount>, CriError> {
        let lease = format!("cri-rootfs-{id}");
        self.lease(&lease, &[id]).await?;
        match self
            .snapshotter
            .prepare(NAMESPACE, id, parent, BTreeMap::new())
            .await
        {
            Ok(m) => Ok(m),
            Err(e) => {
                self.drop_lease(&lease).await;
                Err(CriError::backend("prepare container snapshot", e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::oci::MEDIA_OCI_INDEX;

    #[test]
    fn auth_forms() {
        let a = |f: &dyn Fn(&mut Auth)| {
            let mut x = Auth::default();
            f(&mut x);
            registry_auth(&x)
        };
        assert_eq!(a(&|_| {}).unwrap(), None);
        assert_eq!(
            a(&|x| {
                x.username = "u".into();
                x.password = "p".into();
            })
            .unwrap(),
            Some(RegistryAuth::Basic("u".into(), "p".into()))
        );
        // base64("u:p:q") → user u, password p:q.
        assert_eq!(
            a(&|x| x.auth = "dTpwOnE=".into()).unwrap(),
            Some(RegistryAuth::Basic("u".into(), "p:q".into()))
        );
        assert_eq!(
            a(&|x| x.registry_token = "t".into()).unwrap(),
            Some(RegistryAuth::Bearer("t".into()))
        );
        assert_eq!(
            a(&|x| x.auth = "!!".into()).unwrap_err().kind(),
            Kind::InvalidArgument
        );
        assert_eq!(
            a(&|x| x.identity_token = "t".into()).unwrap_err().kind(),
            Kind::InvalidArgument
        );
    }

    fn put(store: &Arc<content::Store>, data: &[u8]) -> String {
        let d = content::digest_of(data);
        let mut w = store.writer(NAMESPACE, &format!("ref-{d}"), 0, "", None).unwrap();
        w.write(data).unwrap();
        w.commit(data.len() as i64, &d, BTreeMap::new()).unwrap()
    }

    fn amd64() -> Matcher {
        Matcher::from_config(&["linux/amd64".parse().unwrap()])
    }

    fn target(media_type: &str, digest: &str) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: digest.into(),
            ..Default::default()
        }
    }

    #[test]
    fn resolve_index_picks_the_held_linux_amd64_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(crate::metadata::Db::open(&dir.path().join("meta.redb")).unwrap());
        let store = content::Store::open(db, &dir.path().join("content")).unwrap();
        let diff = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let config = serde_json::json!({
            "config": {"User": "1000:1000", "Entrypoint": ["/app"], "Cmd": ["--x"],
                       "Env": ["A=1"], "WorkingDir": "/w", "StopSignal": "SIGINT"},
            "rootfs": {"type": "layers", "diff_ids": [diff('a'), diff('b')]},
        })
        .to_string();
        let config_digest = put(&store, config.as_bytes());
        let manifest = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"digest": config_digest, "size": config.len()},
            "layers": [{"digest": diff('c'), "size": 10}, {"digest": diff('d'), "size": 20}],
        })
        .to_string();
        let manifest_digest = put(&store, manifest.as_bytes());
        // arm64 first (and not held), then the amd64 manifest that is.
        let index = serde_json::json!({
            "mediaType": MEDIA_OCI_INDEX,
            "manifests": [
                {"digest": diff('e'), "size": 1, "platform": {"os": "linux", "architecture": "arm64"}},
                {"digest": manifest_digest, "size": manifest.len(), "platform": {"os": "linux", "architecture": "amd64"}},
            ],
        })
        .to_string();
        let index_digest = put(&store, index.as_bytes());
        let r = resolve_blocking(&store, &target(MEDIA_OCI_INDEX, &index_digest), &amd64()).unwrap();
        assert_eq!(r.config_digest, config_digest);
        assert_eq!(
            r.config,
            ImageConfig {
                user: "1000:1000".into(),
                entrypoint: vec!["/app".into()],
                cmd: vec!["--x".into()],
                env: vec!["A=1".into()],
                working_dir: "/w".into(),
                stop_signal: "SIGINT".into(),
            }
        );
        assert_eq!(r.chain, chain_ids(&[diff('a'), diff('b')])[1]);
        assert_eq!(r.size, (index.len() + manifest.len() + config.len() + 30) as u64);
        assert_eq!(r.layers.len(), 2);

        // No held manifest for the platform, a missing blob, a layer count that does not
        // match: FailedPrecondition / NotFound, never a panic.
        let only_arm = serde_json::json!({"manifests": [
            {"digest": manifest_digest, "size": 1, "platform": {"os": "linux", "architecture": "arm64"}}]})
        .to_string();
        let d = put(&store, only_arm.as_bytes());
        let e = resolve_blocking(&store, &target(MEDIA_OCI_INDEX, &d), &amd64()).unwrap_err();
        assert_eq!(e.kind(), Kind::FailedPrecondition, "{e}");
        let e = resolve_blocking(&store, &target("", &diff('f')), &amd64()).unwrap_err();
        assert_eq!(e.kind(), Kind::NotFound, "{e}");
        let short =
            serde_json::json!({"config": {"digest": config_digest, "size": 1}, "layers": []}).to_string();
        let d = put(&store, short.as_bytes());
        let e = resolve_blocking(&store, &target("", &d), &amd64()).unwrap_err();
        assert_eq!(e.kind(), Kind::FailedPrecondition, "{e}");
        let d = put(&store, b"{not json");
        let e = resolve_blocking(&store, &target("", &d), &amd64()).unwrap_err();
        assert_eq!(e.kind(), Kind::FailedPrecondition, "{e}");
    }

    #[test]
    fn read_in_root_stays_inside() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "host").unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc/hostname", root.path().join("etc/group")).unwrap();
        // Absolute and relative escapes resolve inside the root, where nothing is.
        assert_eq!(read_in_root(root.path(), "etc/passwd").unwrap(), None);
        assert_eq!(read_in_root(root.path(), "etc/group").unwrap(), None);
        std::fs::write(root.path().join("etc/real"), "root:x:0:0::/:/bin/sh\n").unwrap();
        std::fs::remove_file(root.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/real", root.path().join("etc/passwd")).unwrap();
        assert_eq!(
            read_in_root(root.path(), "etc/passwd").unwrap().as_deref(),
            Some("root:x:0:0::/:/bin/sh\n")
        );
        // A directory is not a file.
        std::fs::create_dir(root.path().join("etc/dir")).unwrap();
        assert_eq!(read_in_root(root.path(), "etc/dir").unwrap(), None);
    }
}

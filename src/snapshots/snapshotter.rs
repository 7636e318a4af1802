//! [`FsSnapshotter`]: the overlayfs and native snapshotters over the metadata database and a
//! directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::error::SnapshotError;
use super::model::{Info, Kind, Usage};
use super::{FsSnapshotter, Snapshotter};
use super::{fsutil, store};
use crate::metadata::Db;
use crate::runtime::Mount;

/// How snapshots become mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// overlayfs; `index_off` adds `index=off` as containerd does when the module has the
    /// parameter.
    Overlay { index_off: bool },
    /// A full copy of the parent per snapshot, bind mounted.
    Native,
}

/// What `prepare`/`view` create.
struct NewSnapshot {
    kind: Kind,
    namespace: String,
    key: String,
    parent: String,
    labels: BTreeMap<String, String>,
}

impl FsSnapshotter {
    /// Opens the snapshotter `name` storing its directories under `root`; creates its
    /// tables in `db` and registers the namespace check.
    pub fn open(
        name: &str,
        root: &Path,
        backend: Backend,
        db: Arc<Db>,
    ) -> Result<FsSnapshotter, SnapshotError> {
        let snapshots = root.join("snapshots");
        std::fs::create_dir_all(&snapshots).map_err(SnapshotError::io("create directory", &snapshots))?;
        let store = Arc::new(store::Store::open(name, db)?);
        Ok(FsSnapshotter {
            name: name.to_owned(),
            root: root.to_owned(),
            backend,
            store,
        })
    }

    fn dir(root: &Path, id: u64) -> PathBuf {
        root.join("snapshots").join(id.to_string())
    }

    fn fs_dir(root: &Path, id: u64) -> PathBuf {
        Self::dir(root, id).join("fs")
    }

    fn work_dir(root: &Path, id: u64) -> PathBuf {
        Self::dir(root, id).join("work")
    }

    fn mounts_for(root: &Path, backend: &Backend, s: &store::Resolved) -> Vec<Mount> {
        let ro = if s.kind == Kind::View { "ro" } else { "rw" };
        let bind = |source: PathBuf, flag: &str| {
            vec![Mount {
                r#type: "bind".into(),
                source: source.display().to_string(),
                target: String::new(),
                options: vec![flag.into(), "rbind".into()],
            }]
        };
        match backend {
            Backend::Native => bind(Self::fs_dir(root, s.id), ro),
            Backend::Overlay { index_off } => {
                if s.parent_ids.is_empty() {
                    return bind(Self::fs_dir(root, s.id), ro);
                }
                let mut options = Vec::new();
                if *index_off {
                    options.push("index=off".to_owned());
                }
                if s.kind == Kind::Active {
                    options.push(format!("workdir={}", Self::work_dir(root, s.id).display()));
                    options.push(format!("upperdir={}", Self::fs_dir(root, s.id).display()));
                } else if s.parent_ids.len() == 1 {
                    return bind(Self::fs_dir(root, s.parent_ids[0]), "ro");
                }
                let lower: Vec<String> = s
                    .parent_ids
                    .iter()
                    .map(|id| Self::fs_dir(root, *id).display().to_string())
                    .collect();
                options.push(format!("lowerdir={}", lower.join(":")));
                vec![Mount {
                    r#type: "overlay".into(),
                    source: "overlay".into(),
                    target: String::new(),
                    options,
                }]
            }
        }
    }

    async fn blocking<T, F>(&self, op: &'static str, f: F) -> Result<T, SnapshotError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<store::Store>, PathBuf, Backend) -> Result<T, SnapshotError> + Send + 'static,
    {
        let (store, root, backend) = (self.store.clone(), self.root.clone(), self.backend.clone());
        crate::blocking::try_run(op, move || f(store, root, backend)).await
    }

    /// Prepare ([`Kind::Active`]) and View ([`Kind::View`]): a new snapshot `key` on `parent`.
    async fn new_snapshot(
        &self,
        op: &'static str,
        kind: Kind,
        namespace: &str,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let (namespace, key, parent) = (namespace.to_owned(), key.to_owned(), parent.to_owned());
        self.blocking(op, move |s, root, backend| {
            let new = NewSnapshot {
                kind,
                namespace,
                key,
                parent,
                labels,
            };
            Self::create(&s, &root, &backend, new)
        })
        .await
    }

    fn remove_in(s: &store::Store, root: &Path, ns: &str, key: &str) -> Result<(), SnapshotError> {
        store::validate_key("key", key)?;
        let id = s.remove(ns, key)?;
        let dir = Self::dir(root, id);
        if let Err(error) = fsutil::remove_all(&dir) {
            // The record is gone; cleanup removes the directory later.
            tracing::warn!(path = %dir.display(), %error, "remove snapshot directory (left for cleanup)");
        }
        Ok(())
    }

    /// Every snapshot of `namespace`, synchronously (for the garbage collector, which runs
    /// on a blocking thread).
    pub fn list_blocking(&self, namespace: &str) -> Result<Vec<Info>, SnapshotError> {
        self.store.walk(namespace, &[])
    }

    /// Removes one snapshot synchronously (FailedPrecondition while it has children).
    pub fn remove_blocking(&self, namespace: &str, key: &str) -> Result<(), SnapshotError> {
        Self::remove_in(&self.store, &self.root, namespace, key)
    }

    fn create(
        store: &store::Store,
        root: &Path,
        backend: &Backend,
        new: NewSnapshot,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let NewSnapshot {
            kind,
            namespace,
            key,
            parent,
            labels,
        } = new;
        let (namespace, key, parent) = (namespace.as_str(), key.as_str(), parent.as_str());
        store::validate_key("key", key)?;
        if !parent.is_empty() {
            store::validate_key("parent", parent)?;
        }
        crate::metadata::validate_labels("labels", &labels)?;
        // Early checks (repeated in the transaction): fail before any disk work.
        let parent_ids = store.check_create(namespace, key, parent)?;
        let id = store.next_id()?;
        let dir = Self::dir(root, id);
        let fs = Self::fs_dir(root, id);
        let cleanup = |e: SnapshotError| {
            if let Err(rm) = fsutil::remove_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %rm, "remove directory of a failed snapshot");
            }
            e
        };
        std::fs::create_dir_all(&dir).map_err(SnapshotError::io("create directory", &dir))?;
        let made = (|| {
            match backend {
                Backend::Overlay { .. } => {
                    std::fs::create_dir(&fs).map_err(SnapshotError::io("create directory", &fs))?;
                    // The upper dir is the merged root's inode: it keeps the parent's owner
                    // (a copy remapped for a user namespace stays owned by the pod's root).
                    if let Some(pid) = parent_ids.first() {
                        use std::os::unix::fs::MetadataExt;
                        let parent_fs = Self::fs_dir(root, *pid);
                        let m = std::fs::symlink_metadata(&parent_fs)
                            .map_err(SnapshotError::io("stat", &parent_fs))?;
                        if (m.uid(), m.gid()) != (0, 0) {
                            std::os::unix::fs::lchown(&fs, Some(m.uid()), Some(m.gid()))
                                .map_err(SnapshotError::io("chown", &fs))?;
                        }
                    }
                    if kind == Kind::Active && !parent_ids.is_empty() {
                        let work = Self::work_dir(root, id);
                        std::fs::create_dir(&work).map_err(SnapshotError::io("create directory", &work))?;
                    }
                }
                Backend::Native => match parent_ids.first() {
                    Some(pid) => fsutil::copy_dir(&Self::fs_dir(root, *pid), &fs)?,
                    None => std::fs::create_dir(&fs).map_err(SnapshotError::io("create directory", &fs))?,
                },
            }
            std::fs::set_permissions(&fs, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(SnapshotError::io("chmod", &fs))?;
            store.insert(namespace, key, parent, kind, id, labels)
        })();
        let resolved = made.map_err(cleanup)?;
        Ok(Self::mounts_for(root, backend, &resolved))
    }
}

#[async_trait]
impl Snapshotter for FsSnapshotter {
    fn name(&self) -> &str {
        &self.name
    }

    fn root(&self) -> &Path {
        &self.root
    }

    async fn stat(&self, namespace: &str, key: &str) -> Result<Info, SnapshotError> {
        let (ns, key) = (namespace.to_owned(), key.to_owned());
        self.blocking("stat", move |s, _, _| s.get(&ns, &key).map(|r| r.info))
            .await
    }

    async fn update(
        &self,
        namespace: &str,
        info: Info,
        fieldpaths: Vec<String>,
    ) -> Result<Info, SnapshotError> {
        let ns = namespace.to_owned();
        self.blocking("update", move |s, _, _| s.update(&ns, info, &fieldpaths))
            .await
    }

    async fn usage(&self, namespace: &str, key: &str) -> Result<Usage, SnapshotError> {
        let (ns, key) = (namespace.to_owned(), key.to_owned());
        self.blocking("usage", move |s, root, _| {
            let r = s.get(&ns, &key)?;
            match r.info.kind {
                Kind::Active => fsutil::disk_usage(&Self::fs_dir(&root, r.id)),
                Kind::Committed => Ok(r.usage),
                Kind::View | Kind::Unknown => Ok(Usage::default()),
            }
        })
        .await
    }

    async fn mounts(&self, namespace: &str, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        let (ns, key) = (namespace.to_owned(), key.to_owned());
        self.blocking("mounts", move |s, root, backend| {
            let r = s.resolve(&ns, &key)?;
            Ok(Self::mounts_for(&root, &backend, &r))
        })
        .await
    }

    async fn prepare(
        &self,
        namespace: &str,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.new_snapshot("prepare", Kind::Active, namespace, key, parent, labels)
            .await
    }

    async fn view(
        &self,
        namespace: &str,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.new_snapshot("view", Kind::View, namespace, key, parent, labels)
            .await
    }

    async fn commit(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), SnapshotError> {
        let (ns, name, key) = (namespace.to_owned(), name.to_owned(), key.to_owned());
        self.blocking("commit", move |s, root, _| {
            store::validate_key("name", &name)?;
            store::validate_key("key", &key)?;
            crate::metadata::validate_labels("labels", &labels)?;
            let r = s.get(&ns, &key)?;
            if r.info.kind != Kind::Active {
                return Err(SnapshotError::NotActive {
                    key,
                    kind: r.info.kind.as_str(),
                });
            }
            let usage = fsutil::disk_usage(&Self::fs_dir(&root, r.id))?;
            s.commit(&ns, &name, &key, labels, usage)?;
            // The work dir is only needed while the snapshot is writable.
            let work = Self::work_dir(&root, r.id);
            if let Err(error) = fsutil::remove_all(&work) {
                tracing::warn!(path = %work.display(), %error, "remove work dir of a committed snapshot");
            }
            Ok(())
        })
        .await
    }

    async fn remove(&self, namespace: &str, key: &str) -> Result<(), SnapshotError> {
        let (ns, key) = (namespace.to_owned(), key.to_owned());
        self.blocking("remove", move |s, root, _| Self::remove_in(&s, &root, &ns, &key))
            .await
    }

    async fn walk(&self, namespace: &str, filters: Vec<String>) -> Result<Vec<Info>, SnapshotError> {
        let ns = namespace.to_owned();
        self.blocking("walk", move |s, _, _| s.walk(&ns, &filters)).await
    }

    async fn cleanup(&self) -> Result<(), SnapshotError> {
        self.blocking("cleanup", move |s, root, _| {
            let used = s.all_ids()?;
            let dir = root.join("snapshots");
            let entries = std::fs::read_dir(&dir).map_err(SnapshotError::io("read directory", &dir))?;
            for entry in entries {
                let entry = entry.map_err(SnapshotError::io("read directory", &dir))?;
                let name = entry.file_name();
                let keep = name
                    .to_str()
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|id| used.contains(&id));
                if !keep {
                    let path = entry.path();
                    tracing::info!(path = %path.display(), "cleanup: removing unreferenced snapshot directory");
                    fsutil::remove_all(&path)?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn remove_unreferenced(
        &self,
        namespace: &str,
        keep: BTreeSet<String>,
    ) -> Result<Vec<String>, SnapshotError> {
        let all = self.walk(namespace, Vec::new()).await?;
        let by_name: BTreeMap<&str, &Info> = all.iter().map(|i| (i.name.as_str(), i)).collect();
        // Mark: kept keys and their ancestors.
        let mut marked = BTreeSet::new();
        for k in &keep {
            let mut cur = by_name.get(k.as_str()).copied();
            while let Some(i) = cur {
                if !marked.insert(i.name.clone()) {
                    break;
                }
                cur = by_name.get(i.parent.as_str()).copied();
            }
        }
        // Sweep children first: repeat over what is left until nothing more can go.
        let mut left: Vec<&Info> = all.iter().filter(|i| !marked.contains(&i.name)).collect();
        let mut removed = Vec::new();
        loop {
            let parents: BTreeSet<&str> = all
                .iter()
                .filter(|i| !removed.contains(&i.name))
                .map(|i| i.parent.as_str())
                .collect();
            let (leaves, rest): (Vec<&Info>, Vec<&Info>) =
                left.into_iter().partition(|i| !parents.contains(i.name.as_str()));
            if leaves.is_empty() {
                break;
            }
            for i in leaves {
                self.remove(namespace, &i.name).await?;
                removed.push(i.name.clone());
            }
            left = rest;
        }
        Ok(removed)
    }
}

//! Garbage collection of content and snapshots (containerd's metadata GC, mark and sweep).
//!
//! Per namespace, the roots are:
//! - every image's target digest (and its `containerd.io/gc.ref.*` labels);
//! - every container's snapshot (`snapshotter`, `snapshot_key`) and its `gc.ref.*` labels;
//! - every lease's resources (`content`, `snapshots/<snapshotter>`);
//! - content and snapshots labelled `containerd.io/gc.root`.
//!
//! From there references are followed:
//! ```text
//! content  ──label containerd.io/gc.ref.content[.<x>] = <digest>────────────▶ content
//! content  ──label containerd.io/gc.ref.snapshot.<snapshotter>[.<x>] = <key>─▶ snapshot
//! snapshot ──parent─────────────────────────────────────────────────────────▶ snapshot
//! snapshot ──the same two labels────────────────────────────────────────────▶ content / snapshot
//! ```
//! Everything not reached is swept: content rows (and a blob file once no namespace holds
//! it), then unreached snapshots leaf first. Ingests: one opened under a lease (a pull's
//! downloads) is removed once that lease is gone (deleted or expired) and no writer holds
//! it; one opened without a lease is never swept (a client's write, protected by its lock).
//!
//! Consistency: the mark runs first in read transactions; only when it finds garbage is
//! it repeated inside one write transaction (redb serializes writers, so nothing can gain a
//! reference between that mark and the content sweep), under the content store's file
//! lock. Snapshots are removed after that transaction, through [`SnapshotGc`] (the
//! snapshotter keeps its own records and transactions); a snapshot is re-checked by the
//! next run if it gained a reference meanwhile.
//!
//! When: [`Collector::schedule`] after deletions (images, leases) wakes the background task,
//! which also runs every `interval`; `Delete(sync)` calls [`Collector::collect`] directly.
//!
//! Snapshotters take part through [`SnapshotGc`] (implemented for `FsSnapshotter` in
//! `snapshots.rs`); the gc plugin registers every loaded snapshotter.

pub mod plugin;
mod snapshots;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use redb::{ReadableDatabase, ReadableTable};

use crate::content::store::CONTENT;
use crate::content::{self, ContentError, LABEL_GC_REF_CONTENT, LABEL_GC_REF_SNAPSHOT, LABEL_GC_ROOT};
use crate::errdefs::{ErrorKind, Kind};
use crate::images::{self, IMAGES, ImageError};
use crate::metadata::schema::NAMESPACES;
use crate::metadata::{ContainerStore, Db, LeaseManager, MetadataError};

/// An error from a snapshotter hook.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A snapshot as the collector sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GcSnapshot {
    pub key: String,
    /// The parent's key, empty for none.
    pub parent: String,
    pub labels: BTreeMap<String, String>,
}

/// What a snapshotter offers the collector.
pub trait SnapshotGc: Send + Sync {
    /// The snapshotter's name (`overlayfs`, `native`), as in lease resources
    /// `snapshots/<name>` and labels `containerd.io/gc.ref.snapshot.<name>`.
    fn snapshotter(&self) -> &str;
    /// Every snapshot of `namespace` (committed and active).
    fn snapshots(&self, namespace: &str) -> Result<Vec<GcSnapshot>, BoxError>;
    /// Removes one snapshot that has no children.
    fn remove(&self, namespace: &str, key: &str) -> Result<(), BoxError>;
}

/// Errors of a collection.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("gc: {op}: {source}")]
    Storage {
        op: &'static str,
        source: Box<redb::Error>,
    },
    #[error("gc: snapshotter {snapshotter:?}: {op} in namespace {namespace:?}: {source}")]
    Snapshotter {
        snapshotter: String,
        op: &'static str,
        namespace: String,
        source: BoxError,
    },
    #[error("gc: collection did not complete: {reason}")]
    Interrupted { reason: String },
}

impl ErrorKind for GcError {
    fn kind(&self) -> Kind {
        match self {
            GcError::Content(e) => e.kind(),
            GcError::Image(e) => e.kind(),
            GcError::Metadata(e) => e.kind(),
            GcError::Storage { .. } | GcError::Snapshotter { .. } | GcError::Interrupted { .. } => {
                Kind::Internal
            }
        }
    }
}

trait Ctx<T> {
    fn ctx(self, op: &'static str) -> Result<T, GcError>;
}

impl<T, E: Into<redb::Error>> Ctx<T> for Result<T, E> {
    fn ctx(self, op: &'static str) -> Result<T, GcError> {
        self.map_err(|e| GcError::Storage {
            op,
            source: Box::new(e.into()),
        })
    }
}

/// What one collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// (namespace, digest) rows removed.
    pub content: Vec<(String, String)>,
    /// Blob files removed (no namespace held them anymore).
    pub blobs: Vec<String>,
    /// (namespace, snapshotter, key) removed.
    pub snapshots: Vec<(String, String, String)>,
    /// (namespace, ref) of partial downloads removed (their lease was gone).
    pub ingests: Vec<(String, String)>,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        self.content.is_empty()
            && self.blobs.is_empty()
            && self.snapshots.is_empty()
            && self.ingests.is_empty()
    }
}

/// A node of the reference graph.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Node {
    Content(String),
    /// (snapshotter, key)
    Snapshot(String, String),
}

/// Collects the references a set of labels names.
fn label_refs(labels: &BTreeMap<String, String>, out: &mut Vec<Node>) {
    for (k, v) in labels {
        if k == LABEL_GC_REF_CONTENT || k.starts_with(&format!("{LABEL_GC_REF_CONTENT}.")) {
            out.push(Node::Content(v.clone()));
        } else if let Some(rest) = k.strip_prefix(LABEL_GC_REF_SNAPSHOT) {
            let snapshotter = rest.split('.').next().unwrap_or(rest);
            if !snapshotter.is_empty() {
                out.push(Node::Snapshot(snapshotter.to_owned(), v.clone()));
            }
        }
    }
}

/// One namespace's objects, loaded for a mark.
#[derive(Default)]
struct Namespace {
    content: BTreeMap<String, BTreeMap<String, String>>,
    /// snapshotter → key → snapshot
    snapshots: BTreeMap<String, BTreeMap<String, GcSnapshot>>,
    roots: Vec<Node>,
}

impl Namespace {
    /// Marks everything reachable from the roots.
    fn mark(&self) -> BTreeSet<Node> {
        let mut marked = BTreeSet::new();
        let mut work: Vec<Node> = self.roots.clone();
        let mut next = Vec::new();
        while let Some(n) = work.pop() {
            if !marked.insert(n.clone()) {
                continue;
            }
            match &n {
                Node::Content(d) => {
                    if let Some(labels) = self.content.get(d) {
                        label_refs(labels, &mut next);
                    }
                }
                Node::Snapshot(sn, key) => {
                    if let Some(s) = self.snapshots.get(sn).and_then(|m| m.get(key)) {
                        if !s.parent.is_empty() {
                            next.push(Node::Snapshot(sn.clone(), s.parent.clone()));
                        }
                        label_refs(&s.labels, &mut next);
                    }
                }
            }
            work.append(&mut next);
        }
        marked
    }
}

/// The garbage collector.
pub struct Collector {
    db: Arc<Db>,
    content: Arc<content::Store>,
    snapshotters: RwLock<Vec<Arc<dyn SnapshotGc>>>,
    /// One collection at a time.
    running: Mutex<()>,
    wake: tokio::sync::Notify,
}

impl Collector {
    pub fn new(db: Arc<Db>, content: Arc<content::Store>) -> Arc<Collector> {
        Arc::new(Collector {
            db,
            content,
            snapshotters: RwLock::new(Vec::new()),
            running: Mutex::new(()),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// Adds a snapshotter whose snapshots take part in collections.
    pub fn register_snapshotter(&self, s: Arc<dyn SnapshotGc>) {
        self.snapshotters
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(s);
    }

    /// Asks the background task for a collection soon (after deletions).
    pub fn schedule(&self) {
        self.wake.notify_one();
    }

    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Removes the ingests whose lease is gone (a failed or expired pull's downloads).
    fn unleased_ingests(&self) -> Result<Vec<(String, String)>, GcError> {
        // A lease listing that fails keeps the ingest.
        let live = |ns: &str, lease: &str| {
            LeaseManager::list(&*self.db, ns, &[])
                .map(|v| v.iter().any(|l| l.id == lease))
                .unwrap_or(true)
        };
        Ok(self.content.remove_unleased_ingests(live)?)
    }

    /// Runs a collection on tokio's blocking pool.
    pub async fn collect_async(self: &Arc<Self>) -> Result<Report, GcError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.collect())
            .await
            .map_err(|e| GcError::Interrupted {
                reason: e.to_string(),
            })?
    }

    /// Runs one collection now (blocking).
    pub fn collect(&self) -> Result<Report, GcError> {
        let _running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let snapshotters: Vec<Arc<dyn SnapshotGc>> = self
            .snapshotters
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        // Phase 1: a read-only mark; most runs end here.
        let garbage = {
            let tx = self.db.database().begin_read().ctx("gc read")?;
            let images = tx.open_table(IMAGES).ctx("gc read")?;
            let content = tx.open_table(CONTENT).ctx("gc read")?;
            let namespaces = tx.open_table(NAMESPACES).ctx("gc read")?;
            let nss = self.load(&namespaces, &images, &content, &snapshotters)?;
            self.garbage(&nss)
        };
        let orphans = self.orphan_blobs()?;
        let ingests = self.unleased_ingests()?;
        if garbage.is_empty() && orphans.is_empty() {
            return Ok(Report {
                ingests,
                ..Default::default()
            });
        }
        // Phase 2: mark again and sweep content inside one write transaction.
        let mut report = Report {
            ingests,
            ..Default::default()
        };
        let snapshot_garbage;
        {
            let _files = self.content.files_lock();
            let tx = self.db.database().begin_write().ctx("gc sweep")?;
            let result = (|| -> Result<_, GcError> {
                let nss = {
                    let images = tx.open_table(IMAGES).ctx("gc sweep")?;
                    let content = tx.open_table(CONTENT).ctx("gc sweep")?;
                    let namespaces = tx.open_table(NAMESPACES).ctx("gc sweep")?;
                    self.load(&namespaces, &images, &content, &snapshotters)?
                };
                let garbage = self.garbage(&nss);
                let mut removed_digests = BTreeSet::new();
                {
                    let mut t = tx.open_table(CONTENT).ctx("gc sweep")?;
                    for (ns, node) in &garbage {
                        if let Node::Content(d) = node {
                            t.remove((ns.as_str(), d.as_str())).ctx("gc sweep")?;
                            report.content.push((ns.clone(), d.clone()));
                            removed_digests.insert(d.clone());
                        }
                    }
                }
                let mut files = Vec::new();
                for d in removed_digests.iter().chain(orphans.iter()) {
                    if content::store::Store::holders(&tx, d)?.is_empty() {
                        files.push(d.clone());
                    }
                }
                Ok((garbage, nss, files))
            })();
            let (garbage, nss, files) = match result {
                Ok(v) => v,
                Err(e) => {
                    let _ = tx.abort();
                    return Err(e);
                }
            };
            tx.commit().ctx("gc sweep")?;
            for d in files {
                self.content.blobs().remove(&d)?;
                report.blobs.push(d);
            }
            snapshot_garbage = (garbage, nss);
        }
        // Phase 3: snapshots, leaf first.
        let (garbage, nss) = snapshot_garbage;
        for s in &snapshotters {
            let name = s.snapshotter().to_owned();
            let mut per_ns: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
            for (ns, node) in &garbage {
                if let Node::Snapshot(sn, key) = node
                    && *sn == name
                {
                    per_ns.entry(ns.as_str()).or_default().insert(key.as_str());
                }
            }
            for (ns, mut doomed) in per_ns {
                let all = nss
                    .get(ns)
                    .and_then(|n| n.snapshots.get(&name))
                    .cloned()
                    .unwrap_or_default();
                let mut present: BTreeSet<String> = all.keys().cloned().collect();
                loop {
                    let parents: BTreeSet<&str> = present
                        .iter()
                        .filter_map(|k| all.get(k))
                        .map(|s| s.parent.as_str())
                        .collect();
                    let leaves: Vec<&str> = doomed.iter().copied().filter(|k| !parents.contains(k)).collect();
                    if leaves.is_empty() {
                        break;
                    }
                    for key in leaves {
                        doomed.remove(key);
                        present.remove(key);
                        match s.remove(ns, key) {
                            Ok(()) => report
                                .snapshots
                                .push((ns.to_owned(), name.clone(), key.to_owned())),
                            Err(source) => {
                                tracing::warn!(
                                    error = %GcError::Snapshotter {
                                        snapshotter: name.clone(),
                                        op: "remove",
                                        namespace: ns.to_owned(),
                                        source,
                                    },
                                    key,
                                    "gc: snapshot not removed"
                                );
                            }
                        }
                    }
                }
            }
        }
        tracing::info!(
            content = report.content.len(),
            blobs = report.blobs.len(),
            snapshots = report.snapshots.len(),
            "garbage collected"
        );
        Ok(report)
    }

    /// Blob files no namespace has a row for (a crash between install and record).
    fn orphan_blobs(&self) -> Result<Vec<String>, GcError> {
        let files = self.content.blobs().list()?;
        if files.is_empty() {
            return Ok(files);
        }
        let tx = self.db.database().begin_read().ctx("gc read")?;
        let content = tx.open_table(CONTENT).ctx("gc read")?;
        let mut held = BTreeSet::new();
        for e in content.iter().ctx("gc read")? {
            let (k, _) = e.ctx("gc read")?;
            held.insert(k.value().1.to_owned());
        }
        Ok(files.into_iter().filter(|d| !held.contains(d)).collect())
    }

    /// Everything unmarked: (namespace, node).
    fn garbage(&self, nss: &HashMap<String, Namespace>) -> Vec<(String, Node)> {
        let mut out = Vec::new();
        for (ns, n) in nss {
            let marked = n.mark();
            for d in n.content.keys() {
                let node = Node::Content(d.clone());
                if !marked.contains(&node) {
                    out.push((ns.clone(), node));
                }
            }
            for (sn, snaps) in &n.snapshots {
                for key in snaps.keys() {
                    let node = Node::Snapshot(sn.clone(), key.clone());
                    if !marked.contains(&node) {
                        out.push((ns.clone(), node));
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Loads every namespace's objects and roots.
    fn load(
        &self,
        namespaces: &impl ReadableTable<&'static str, &'static [u8]>,
        images: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
        content: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
        snapshotters: &[Arc<dyn SnapshotGc>],
    ) -> Result<HashMap<String, Namespace>, GcError> {
        let op = "gc load";
        let mut nss: HashMap<String, Namespace> = HashMap::new();
        for e in namespaces.iter().ctx(op)? {
            nss.entry(e.ctx(op)?.0.value().to_owned()).or_default();
        }
        for e in content.iter().ctx(op)? {
            let (k, v) = e.ctx(op)?;
            let (ns, d) = k.value();
            let info = content::records_decode(ns, d, v.value())?;
            let n = nss.entry(ns.to_owned()).or_default();
            if info.labels.contains_key(LABEL_GC_ROOT) {
                n.roots.push(Node::Content(d.to_owned()));
            }
            n.content.insert(d.to_owned(), info.labels);
        }
        for e in images.iter().ctx(op)? {
            let (k, v) = e.ctx(op)?;
            let (ns, name) = k.value();
            let img = images::decode(ns, name, v.value())?;
            let n = nss.entry(ns.to_owned()).or_default();
            n.roots.push(Node::Content(img.target.digest.clone()));
            label_refs(&img.labels, &mut n.roots);
        }
        let names: Vec<String> = nss.keys().cloned().collect();
        for ns in names {
            let containers = ContainerStore::list(&*self.db, &ns, &[])?;
            let leases = LeaseManager::list(&*self.db, &ns, &[])?;
            let mut roots = Vec::new();
            for c in containers {
                if !c.snapshotter.is_empty() && !c.snapshot_key.is_empty() {
                    roots.push(Node::Snapshot(c.snapshotter.clone(), c.snapshot_key.clone()));
                }
                label_refs(&c.labels, &mut roots);
            }
            for l in leases {
                for r in LeaseManager::list_resources(&*self.db, &ns, &l.id)? {
                    if r.r#type == "content" {
                        roots.push(Node::Content(r.id));
                    } else if let Some(sn) = r.r#type.strip_prefix("snapshots/") {
                        roots.push(Node::Snapshot(sn.to_owned(), r.id));
                    }
                }
            }
            let mut snaps = BTreeMap::new();
            for s in snapshotters {
                let name = s.snapshotter().to_owned();
                let list = s.snapshots(&ns).map_err(|source| GcError::Snapshotter {
                    snapshotter: name.clone(),
                    op: "list",
                    namespace: ns.clone(),
                    source,
                })?;
                let mut m = BTreeMap::new();
                for sn in list {
                    if sn.labels.contains_key(LABEL_GC_ROOT) {
                        roots.push(Node::Snapshot(name.clone(), sn.key.clone()));
                    }
                    m.insert(sn.key.clone(), sn);
                }
                snaps.insert(name, m);
            }
            if let Some(n) = nss.get_mut(&ns) {
                n.roots.extend(roots);
                n.snapshots = snaps;
            }
        }
        Ok(nss)
    }
}

#[cfg(test)]
mod tests;

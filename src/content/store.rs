//! [`Store`]: the namespaced content store (redb rows over the shared [`Blobs`] files) and
//! its [`Writer`]. See the module docs of `content` for the layout and the rules.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use prost::Message;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::blobs::{Blobs, Ingest};
use super::error::ContentError;
use super::model::{Info, InfoFields, Status, StatusFields, parse_digest, validate_ref};
use super::records::ContentRecord;
use crate::filters;
use crate::identifiers;
use crate::metadata::schema::{LEASE_RESOURCES, LEASES, NAMESPACES};
use crate::metadata::{CountObjects, Db, validate_labels};

/// `(<ns>, <digest>) → ContentRecord`.
pub(crate) const CONTENT: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("content_blobs");

trait Ctx<T> {
    fn ctx(self, op: &'static str) -> Result<T, ContentError>;
}

impl<T, E: Into<redb::Error>> Ctx<T> for Result<T, E> {
    fn ctx(self, op: &'static str) -> Result<T, ContentError> {
        self.map_err(|e| ContentError::Storage {
            op,
            source: Box::new(e.into()),
        })
    }
}

/// The namespaced content store.
pub struct Store {
    db: Arc<Db>,
    blobs: Blobs,
    /// Refs with an open writer: (namespace, ref).
    locks: Mutex<HashSet<(String, String)>>,
    /// Serializes "install a blob file + add its row" against "drop the last row + remove
    /// the file" (Delete, garbage collection).
    files: Mutex<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("blobs", &self.blobs)
            .finish_non_exhaustive()
    }
}

fn validate_namespace(ns: &str) -> Result<(), ContentError> {
    Ok(identifiers::validate("namespace", ns)?)
}

fn drop_empty(labels: &mut BTreeMap<String, String>) {
    labels.retain(|_, v| !v.is_empty());
}

/// Records `(ns, lease, type, id)` after checking the lease exists.
pub(crate) fn add_lease_resource(
    tx: &WriteTransaction,
    namespace: &str,
    lease: &str,
    r#type: &str,
    id: &str,
) -> Result<(), ContentError> {
    let op = "add lease resource";
    if tx
        .open_table(LEASES)
        .ctx(op)?
        .get((namespace, lease))
        .ctx(op)?
        .is_none()
    {
        return Err(ContentError::LeaseNotFound {
            namespace: namespace.to_owned(),
            lease: lease.to_owned(),
        });
    }
    tx.open_table(LEASE_RESOURCES)
        .ctx(op)?
        .insert((namespace, lease, r#type, id), ())
        .ctx(op)?;
    Ok(())
}

impl Store {
    /// Opens the store: blob files under `root`, rows in `db` (the table is created here),
    /// and registers the namespace check.
    pub fn open(db: Arc<Db>, root: &Path) -> Result<Arc<Store>, ContentError> {
        let blobs = Blobs::open(root)?;
        let tx = db.database().begin_write().ctx("create content table")?;
        tx.open_table(CONTENT).ctx("create content table")?;
        tx.commit().ctx("create content table")?;
        db.register_namespace_check(Arc::new(CountObjects::new(
            CONTENT,
            "content blob",
            "content blobs",
        )));
        Ok(Arc::new(Store {
            db,
            blobs,
            locks: Mutex::new(HashSet::new()),
            files: Mutex::new(()),
        }))
    }

    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// Held while installing/removing blob files (see the field docs).
    pub(crate) fn files_lock(&self) -> MutexGuard<'_, ()> {
        self.files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&WriteTransaction) -> Result<T, ContentError>,
    ) -> Result<T, ContentError> {
        crate::metadata::write_tx(self.db.database(), op, f, |op, e| ContentError::Storage {
            op,
            source: Box::new(e),
        })
    }

    fn get_row(
        t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
        ns: &str,
        digest: &str,
    ) -> Result<Option<Info>, ContentError> {
        match t.get((ns, digest)).ctx("get content")? {
            None => Ok(None),
            Some(v) => Ok(Some(
                ContentRecord::decode_for(ns, digest, v.value())?.into_info(digest),
            )),
        }
    }

    fn not_found(ns: &str, digest: &str) -> ContentError {
        ContentError::NotFound {
            namespace: ns.to_owned(),
            digest: digest.to_owned(),
        }
    }

    pub fn info(&self, namespace: &str, digest: &str) -> Result<Info, ContentError> {
        validate_namespace(namespace)?;
        parse_digest("digest", digest)?;
        let tx = self.db.database().begin_read().ctx("get content")?;
        let t = tx.open_table(CONTENT).ctx("get content")?;
        Self::get_row(&t, namespace, digest)?.ok_or_else(|| Self::not_found(namespace, digest))
    }

    /// `fieldpaths` empty or `labels` = replace the labels; `labels.KEY` = set or (empty
    /// value) remove one label. Digest, size and created_at are immutable.
    pub fn update(&self, namespace: &str, info: Info, fieldpaths: &[String]) -> Result<Info, ContentError> {
        validate_namespace(namespace)?;
        parse_digest("info.digest", &info.digest)?;
        let op = "update content";
        self.write(op, |tx| {
            let mut t = tx.open_table(CONTENT).ctx(op)?;
            let mut existing = Self::get_row(&t, namespace, &info.digest)?
                .ok_or_else(|| Self::not_found(namespace, &info.digest))?;
            if fieldpaths.is_empty() {
                existing.labels = info.labels.clone();
            }
            for p in fieldpaths {
                if p == "labels" {
                    existing.labels = info.labels.clone();
                } else if let Some(key) = p.strip_prefix("labels.") {
                    match info.labels.get(key) {
                        Some(v) if !v.is_empty() => {
                            existing.labels.insert(key.to_owned(), v.clone());
                        }
                        _ => {
                            existing.labels.remove(key);
                        }
                    }
                } else {
                    return Err(ContentError::InvalidArgument {
                        field: "update_mask",
                        reason: format!("cannot update field {p:?} of content {}", info.digest),
                    });
                }
            }
            drop_empty(&mut existing.labels);
            validate_labels("info.labels", &existing.labels)?;
            existing.updated_at = Some(SystemTime::now());
            t.insert(
                (namespace, info.digest.as_str()),
                ContentRecord::from_info(&existing).encode_to_vec().as_slice(),
            )
            .ctx(op)?;
            Ok(existing)
        })
    }

    pub fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Info>, ContentError> {
        validate_namespace(namespace)?;
        let filter = filters::parse(filters)?;
        let op = "list content";
        let tx = self.db.database().begin_read().ctx(op)?;
        let t = tx.open_table(CONTENT).ctx(op)?;
        let mut out = Vec::new();
        for entry in t.range::<(&str, &str)>((namespace, "")..).ctx(op)? {
            let (k, v) = entry.ctx(op)?;
            let (ns, digest) = k.value();
            if ns != namespace {
                break;
            }
            let info = ContentRecord::decode_for(ns, digest, v.value())?.into_info(digest);
            if filter.matches(&InfoFields(&info)) {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Every namespace holding a row for `digest`, inside `tx`.
    pub(crate) fn holders(tx: &WriteTransaction, digest: &str) -> Result<Vec<String>, ContentError> {
        let op = "find content holders";
        let namespaces: Vec<String> = {
            let t = tx.open_table(NAMESPACES).ctx(op)?;
            let mut v = Vec::new();
            for e in t.iter().ctx(op)? {
                v.push(e.ctx(op)?.0.value().to_owned());
            }
            v
        };
        let t = tx.open_table(CONTENT).ctx(op)?;
        let mut out = Vec::new();
        for ns in namespaces {
            if t.get((ns.as_str(), digest)).ctx(op)?.is_some() {
                out.push(ns);
            }
        }
        Ok(out)
    }

    /// Removes the namespace's row; the file goes too when no namespace holds it anymore.
    pub fn delete(&self, namespace: &str, digest: &str) -> Result<(), ContentError> {
        validate_namespace(namespace)?;
        parse_digest("digest", digest)?;
        let _files = self.files_lock();
        let op = "delete content";
        let last = self.write(op, |tx| {
            let removed = tx
                .open_table(CONTENT)
                .ctx(op)?
                .remove((namespace, digest))
                .ctx(op)?
                .is_some();
            if !removed {
                return Err(Self::not_found(namespace, digest));
            }
            Ok(Self::holders(tx, digest)?.is_empty())
        })?;
        if last {
            self.blobs.remove(digest)?;
        }
        Ok(())
    }

    /// The file and size of a blob visible in `namespace`.
    pub fn blob(&self, namespace: &str, digest: &str) -> Result<(PathBuf, i64), ContentError> {
        let info = self.info(namespace, digest)?;
        Ok((self.blobs.blob_path(digest)?, info.size))
    }

    /// Reads `[offset, offset+len)` of a blob (for in-process readers such as export).
    pub fn read_all(&self, namespace: &str, digest: &str) -> Result<Vec<u8>, ContentError> {
        let (path, _) = self.blob(namespace, digest)?;
        std::fs::read(&path).map_err(|e| ContentError::io("read blob", path, e))
    }

    /// Makes a blob visible in `namespace` without transferring it when it is there already:
    /// `true` when the namespace holds it (now), `false` when the bytes must be fetched.
    /// Another namespace's committed file of the same digest and size is adopted (it was
    /// verified when committed). With `lease`, the blob becomes the lease's resource.
    pub fn adopt(
        &self,
        namespace: &str,
        digest: &str,
        size: i64,
        lease: Option<&str>,
    ) -> Result<bool, ContentError> {
        validate_namespace(namespace)?;
        parse_digest("digest", digest)?;
        let _files = self.files_lock();
        let op = "adopt content";
        let on_disk = self.blobs.size(digest)?;
        self.write(op, |tx| {
            let mut t = tx.open_table(CONTENT).ctx(op)?;
            let present = t.get((namespace, digest)).ctx(op)?.is_some();
            if !present {
                match on_disk {
                    Some(s) if size <= 0 || s == size => {
                        let now = SystemTime::now();
                        let info = Info {
                            digest: digest.to_owned(),
                            size: s,
                            created_at: Some(now),
                            updated_at: Some(now),
                            labels: BTreeMap::new(),
                        };
                        t.insert(
                            (namespace, digest),
                            ContentRecord::from_info(&info).encode_to_vec().as_slice(),
                        )
                        .ctx(op)?;
                    }
                    _ => return Ok(false),
                }
            }
            drop(t);
            if let Some(lease) = lease {
                add_lease_resource(tx, namespace, lease, "content", digest)?;
            }
            Ok(true)
        })
    }

    /// Opens a writer for `(namespace, ref)`, resuming an existing ingest. AlreadyExists when
    /// `expected` is already committed in the namespace; Locked when another writer holds
    /// the ref. With `lease`, the ingest is recorded as the lease's resource.
    pub fn writer(
        self: &Arc<Self>,
        namespace: &str,
        r: &str,
        total: i64,
        expected: &str,
        lease: Option<&str>,
    ) -> Result<Writer, ContentError> {
        validate_namespace(namespace)?;
        validate_ref(r)?;
        if !expected.is_empty() {
            parse_digest("expected", expected)?;
        }
        if total < 0 {
            return Err(ContentError::InvalidArgument {
                field: "total",
                reason: format!("must not be negative, got {total}"),
            });
        }
        if !expected.is_empty() {
            match self.info(namespace, expected) {
                Ok(_) => {
                    return Err(ContentError::AlreadyExists {
                        namespace: namespace.to_owned(),
                        digest: expected.to_owned(),
                    });
                }
                Err(ContentError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let key = (namespace.to_owned(), r.to_owned());
        {
            let mut locks = self
                .locks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !locks.insert(key.clone()) {
                return Err(ContentError::Locked {
                    namespace: namespace.to_owned(),
                    r#ref: r.to_owned(),
                });
            }
        }
        // From here on the lock is released by the Writer's Drop (or by `unlock` below).
        let unlock = |e: ContentError| {
            self.locks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&key);
            e
        };
        if let Some(lease) = lease {
            self.write("lease ingest", |tx| {
                add_lease_resource(tx, namespace, lease, "ingests", r)
            })
            .map_err(unlock)?;
        }
        let mode = Mode::Ingest(Box::new(
            self.blobs
                .open_ingest(namespace, r, total, expected, lease)
                .map_err(unlock)?,
        ));
        Ok(Writer {
            store: self.clone(),
            namespace: namespace.to_owned(),
            r#ref: r.to_owned(),
            lease: lease.map(str::to_owned),
            total,
            expected: expected.to_owned(),
            mode,
        })
    }

    pub fn status(&self, namespace: &str, r: &str) -> Result<Status, ContentError> {
        validate_namespace(namespace)?;
        validate_ref(r)?;
        self.blobs
            .ingest_status(namespace, r)?
            .ok_or_else(|| ContentError::IngestNotFound {
                namespace: namespace.to_owned(),
                r#ref: r.to_owned(),
            })
    }

    pub fn list_statuses(&self, namespace: &str, filters: &[String]) -> Result<Vec<Status>, ContentError> {
        validate_namespace(namespace)?;
        let filter = filters::parse(filters)?;
        let mut out: Vec<Status> = self
            .blobs
            .list_ingests()?
            .into_iter()
            .filter(|(ns, s)| ns == namespace && filter.matches(&StatusFields(s)))
            .map(|(_, s)| s)
            .collect();
        out.sort_by(|a, b| a.r#ref.cmp(&b.r#ref));
        Ok(out)
    }

    /// Removes an in-progress write. NotFound when there is none; Locked while a writer is
    /// open on it.
    pub fn abort(&self, namespace: &str, r: &str) -> Result<(), ContentError> {
        validate_namespace(namespace)?;
        validate_ref(r)?;
        let key = (namespace.to_owned(), r.to_owned());
        if self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&key)
        {
            return Err(ContentError::Locked {
                namespace: namespace.to_owned(),
                r#ref: r.to_owned(),
            });
        }
        if !self.blobs.remove_ingest(namespace, r)? {
            return Err(ContentError::IngestNotFound {
                namespace: namespace.to_owned(),
                r#ref: r.to_owned(),
            });
        }
        Ok(())
    }

    /// Removes the ingests whose lease is gone (`live(namespace, lease)` is false) and that no
    /// writer holds; returns their (namespace, ref). The garbage collector calls it, so a
    /// pull that failed or whose lease expired leaves no partial download behind.
    pub fn remove_unleased_ingests(
        &self,
        live: impl Fn(&str, &str) -> bool,
    ) -> Result<Vec<(String, String)>, ContentError> {
        let mut removed = Vec::new();
        for (ns, r, lease) in self.blobs.leased_ingests()? {
            if live(&ns, &lease) {
                continue;
            }
            // Held under the writer locks' mutex: no writer can open it meanwhile.
            let locks = self
                .locks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if locks.contains(&(ns.clone(), r.clone())) {
                continue;
            }
            if self.blobs.remove_ingest(&ns, &r)? {
                removed.push((ns, r));
            }
            drop(locks);
        }
        Ok(removed)
    }

    /// Adds the namespace's row for a verified blob (and the lease resource) in one
    /// transaction; `install` runs first, inside the same file lock.
    fn record(
        &self,
        c: Record<'_>,
        install: impl FnOnce() -> Result<(), ContentError>,
    ) -> Result<(), ContentError> {
        let Record {
            namespace,
            digest,
            size,
            labels,
            lease,
            r#ref: r,
        } = c;
        let _files = self.files_lock();
        let op = "commit content";
        // Checked before the file moves, so a duplicate leaves the store as it was.
        if self.info(namespace, digest).is_ok() {
            return Err(ContentError::AlreadyExists {
                namespace: namespace.to_owned(),
                digest: digest.to_owned(),
            });
        }
        install()?;
        self.write(op, |tx| {
            let mut t = tx.open_table(CONTENT).ctx(op)?;
            if t.get((namespace, digest)).ctx(op)?.is_some() {
                return Err(ContentError::AlreadyExists {
                    namespace: namespace.to_owned(),
                    digest: digest.to_owned(),
                });
            }
            let now = SystemTime::now();
            let info = Info {
                digest: digest.to_owned(),
                size,
                created_at: Some(now),
                updated_at: Some(now),
                labels,
            };
            t.insert(
                (namespace, digest),
                ContentRecord::from_info(&info).encode_to_vec().as_slice(),
            )
            .ctx(op)?;
            drop(t);
            let mut ns = tx.open_table(NAMESPACES).ctx(op)?;
            if ns.get(namespace).ctx(op)?.is_none() {
                // An empty record is the default NamespaceRecord (no labels).
                ns.insert(namespace, [].as_slice()).ctx(op)?;
            }
            drop(ns);
            if let Some(lease) = lease {
                add_lease_resource(tx, namespace, lease, "content", digest)?;
                tx.open_table(LEASE_RESOURCES)
                    .ctx(op)?
                    .remove((namespace, lease, "ingests", r))
                    .ctx(op)?;
            }
            Ok(())
        })
    }
}

/// What a commit records.
struct Record<'a> {
    namespace: &'a str,
    digest: &'a str,
    size: i64,
    labels: BTreeMap<String, String>,
    lease: Option<&'a str>,
    r#ref: &'a str,
}

enum Mode {
    Ingest(Box<Ingest>),
    /// After a commit.
    Done,
}

/// An open write of one ref (holds the ref's lock until dropped). Blocking calls.
pub struct Writer {
    store: Arc<Store>,
    namespace: String,
    r#ref: String,
    lease: Option<String>,
    total: i64,
    expected: String,
    mode: Mode,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("namespace", &self.namespace)
            .field("ref", &self.r#ref)
            .finish_non_exhaustive()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.store
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(
                std::mem::take(&mut self.namespace),
                std::mem::take(&mut self.r#ref),
            ));
    }
}

impl Writer {
    pub fn r#ref(&self) -> &str {
        &self.r#ref
    }

    pub fn status(&self) -> Status {
        match &self.mode {
            Mode::Ingest(i) => i.status(),
            Mode::Done => Status {
                r#ref: self.r#ref.clone(),
                offset: self.total,
                total: self.total,
                expected: self.expected.clone(),
                ..Default::default()
            },
        }
    }

    /// The digest of what was written so far.
    pub fn digest(&self) -> String {
        match &self.mode {
            Mode::Ingest(i) => i.digest(),
            Mode::Done => self.expected.clone(),
        }
    }

    fn ingest(&mut self) -> Result<&mut Ingest, ContentError> {
        match &mut self.mode {
            Mode::Ingest(i) => Ok(i),
            Mode::Done => Err(ContentError::AlreadyExists {
                namespace: self.namespace.clone(),
                digest: self.expected.clone(),
            }),
        }
    }

    pub fn write(&mut self, data: &[u8]) -> Result<(), ContentError> {
        if data.is_empty() {
            return Ok(());
        }
        self.ingest()?.write(data)
    }

    /// Restarts the write at offset 0.
    pub fn truncate(&mut self) -> Result<(), ContentError> {
        self.ingest()?.truncate()
    }

    /// Records expectations given on a later message.
    pub fn expect(&mut self, total: i64, expected: &str) -> Result<(), ContentError> {
        if total > 0 {
            self.total = total;
        }
        if !expected.is_empty() {
            parse_digest("expected", expected)?;
            self.expected = expected.to_owned();
        }
        match &mut self.mode {
            Mode::Ingest(i) => i.expect(total, expected),
            _ => Ok(()),
        }
    }

    /// Verifies size (`size > 0`) and digest (`expected` set), then makes the blob visible
    /// in the namespace. On a mismatch nothing becomes visible and the ingest stays.
    pub fn commit(
        &mut self,
        size: i64,
        expected: &str,
        mut labels: BTreeMap<String, String>,
    ) -> Result<String, ContentError> {
        if !expected.is_empty() {
            parse_digest("expected", expected)?;
        }
        drop_empty(&mut labels);
        validate_labels("labels", &labels)?;
        let (digest, actual) = match &self.mode {
            Mode::Ingest(i) => (i.verify(size, expected)?, i.offset()),
            Mode::Done => {
                return Err(ContentError::AlreadyExists {
                    namespace: self.namespace.clone(),
                    digest: self.expected.clone(),
                });
            }
        };
        let mode = std::mem::replace(&mut self.mode, Mode::Done);
        let store = self.store.clone();
        let result = match mode {
            Mode::Ingest(ingest) => store.record(
                Record {
                    namespace: &self.namespace,
                    digest: &digest,
                    size: actual,
                    labels,
                    lease: self.lease.as_deref(),
                    r#ref: &self.r#ref,
                },
                || ingest.install(&store.blobs, &digest),
            ),
            Mode::Done => Ok(()),
        };
        if let Err(ContentError::AlreadyExists { .. }) = &result {
            // The ingest is not needed anymore: the content is there.
            let _ = store.blobs.remove_ingest(&self.namespace, &self.r#ref);
        }
        self.total = actual;
        self.expected = digest.clone();
        result.map(|()| digest)
    }
}

//! [`Db`]: the redb database behind [`ContainerStore`], [`NamespaceStore`] and
//! [`LeaseManager`]. See the module docs of `metadata` for the schema and the rules.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use prost::Message;
use redb::{ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::adaptors::{ContainerFields, LeaseFields};
use super::records::{ContainerRecord, LeaseRecord, NamespaceRecord, decode};
use super::schema::{self, CONTAINERS, LEASE_RESOURCES, LEASES, Migration, NAMESPACES};
use super::validate::{
    parse_expiry, validate_container, validate_labels, validate_lease_id, validate_lease_labels,
    validate_resource,
};
use super::{
    Container, ContainerStore, LABEL_GC_EXPIRE, Lease, LeaseManager, LeaseResource, MetadataError, Namespace,
    NamespaceCheck, NamespaceStore,
};
use crate::filters;
use crate::identifiers;

/// The metadata database. Cheap to share behind an `Arc`; every method is one transaction.
pub struct Db {
    db: redb::Database,
    path: PathBuf,
    checks: RwLock<Vec<Arc<dyn NamespaceCheck>>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Turns any redb error into [`MetadataError::Storage`] naming the operation.
trait Ctx<T> {
    fn ctx(self, op: &'static str) -> Result<T, MetadataError>;
}

impl<T, E: Into<redb::Error>> Ctx<T> for Result<T, E> {
    fn ctx(self, op: &'static str) -> Result<T, MetadataError> {
        self.map_err(|e| MetadataError::Storage {
            op,
            source: Box::new(e.into()),
        })
    }
}

/// Runs `f` in one write transaction of `db`: committed if it returns Ok, aborted (and the
/// abort failure logged) otherwise. `storage` turns a redb failure of `op` into the caller's
/// error type, so every store built on the metadata db shares this one commit/abort path.
pub fn write_tx<T, E>(
    db: &redb::Database,
    op: &'static str,
    f: impl FnOnce(&WriteTransaction) -> Result<T, E>,
    storage: impl Fn(&'static str, redb::Error) -> E,
) -> Result<T, E> {
    let tx = db.begin_write().map_err(|e| storage(op, e.into()))?;
    match f(&tx) {
        Ok(v) => {
            tx.commit().map_err(|e| storage(op, e.into()))?;
            Ok(v)
        }
        Err(e) => {
            if let Err(abort) = tx.abort() {
                tracing::warn!(op, error = %abort, "abort after error failed");
            }
            Err(e)
        }
    }
}

/// A redb table keyed by `(<namespace>, <id>)`, the shape of every namespaced object table.
pub type ObjectTable = TableDefinition<'static, (&'static str, &'static str), &'static [u8]>;

/// A "namespace is not empty" check that counts the namespace's rows in an object table
/// ("2 images"); used for containers, leases, content and images alike.
pub struct CountObjects {
    table: ObjectTable,
    singular: &'static str,
    plural: &'static str,
}

impl CountObjects {
    pub fn new(table: ObjectTable, singular: &'static str, plural: &'static str) -> CountObjects {
        CountObjects {
            table,
            singular,
            plural,
        }
    }
}

impl NamespaceCheck for CountObjects {
    fn remaining(&self, tx: &WriteTransaction, namespace: &str) -> Result<Option<String>, MetadataError> {
        let op = "count namespace objects";
        let table = tx.open_table(self.table).ctx(op)?;
        let mut n = 0usize;
        for entry in table.range::<(&str, &str)>((namespace, "")..).ctx(op)? {
            let (k, _) = entry.ctx(op)?;
            if k.value().0 != namespace {
                break;
            }
            n += 1;
        }
        Ok(match n {
            0 => None,
            1 => Some(format!("1 {}", self.singular)),
            n => Some(format!("{n} {}", self.plural)),
        })
    }
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn validate_namespace(ns: &str) -> Result<(), MetadataError> {
    Ok(identifiers::validate("namespace", ns)?)
}

/// Drops labels with an empty value: containerd never stores them, and `labels.KEY` with an
/// empty value is how clients remove a label.
fn drop_empty(labels: &mut BTreeMap<String, String>) {
    labels.retain(|_, v| !v.is_empty());
}

impl Db {
    /// Opens (or creates) the database at `path` and migrates it to the current schema.
    pub fn open(path: &Path) -> Result<Db, MetadataError> {
        Self::open_with(path, schema::MIGRATIONS)
    }

    /// [`open`](Self::open) with an explicit list of migrations (tests of the hook).
    pub fn open_with(path: &Path, migrations: &[Migration]) -> Result<Db, MetadataError> {
        let db = redb::Builder::new()
            .create(path)
            .map_err(|source| MetadataError::Open {
                path: path.to_owned(),
                source: Box::new(source),
            })?;
        let db = Db {
            db,
            path: path.to_owned(),
            checks: RwLock::new(vec![
                Arc::new(CountObjects {
                    table: CONTAINERS,
                    singular: "container",
                    plural: "containers",
                }),
                Arc::new(CountObjects {
                    table: LEASES,
                    singular: "lease",
                    plural: "leases",
                }),
            ]),
        };
        let migrated = db.write("open", |tx| schema::migrate(tx, path, migrations))?;
        if migrated.from != migrated.to {
            tracing::info!(path = %path.display(), from = migrated.from, to = migrated.to, "metadata schema migrated");
        }
        Ok(db)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version recorded in the file.
    pub fn schema_version(&self) -> Result<u64, MetadataError> {
        self.read("read schema version", |tx| {
            let op = "read schema version";
            let meta = tx.open_table(schema::META).ctx(op)?;
            Ok(meta
                .get(schema::VERSION_KEY)
                .ctx(op)?
                .map(|v| v.value())
                .unwrap_or(0))
        })
    }

    /// The underlying database, for later features that keep their own `(<ns>, …)` tables in
    /// the same file (images, content labels, snapshots); they register a
    /// [`NamespaceCheck`] for them.
    pub fn database(&self) -> &redb::Database {
        &self.db
    }

    /// Adds a check consulted, inside the transaction, before a namespace is deleted.
    pub fn register_namespace_check(&self, check: Arc<dyn NamespaceCheck>) {
        self.checks.write().unwrap_or_else(|p| p.into_inner()).push(check);
    }

    /// Runs `f` in one write transaction: committed if it returns Ok, aborted otherwise.
    fn write<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&WriteTransaction) -> Result<T, MetadataError>,
    ) -> Result<T, MetadataError> {
        write_tx(&self.db, op, f, |op, source| MetadataError::Storage {
            op,
            source: Box::new(source),
        })
    }

    fn read<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&ReadTransaction) -> Result<T, MetadataError>,
    ) -> Result<T, MetadataError> {
        let tx = self.db.begin_read().ctx(op)?;
        f(&tx)
    }

    /// Records the namespace if it does not exist yet (implicit creation on first use; also
    /// used by the snapshotters inside their own transactions).
    pub fn ensure_namespace(tx: &WriteTransaction, ns: &str) -> Result<(), MetadataError> {
        let op = "create namespace";
        let mut t = tx.open_table(NAMESPACES).ctx(op)?;
        if t.get(ns).ctx(op)?.is_none() {
            t.insert(ns, NamespaceRecord::default().encode_to_vec().as_slice())
                .ctx(op)?;
        }
        Ok(())
    }

    fn get_container_tx(
        t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
        ns: &str,
        id: &str,
    ) -> Result<Option<Container>, MetadataError> {
        match t.get((ns, id)).ctx("get container")? {
            None => Ok(None),
            Some(v) => {
                let r: ContainerRecord = decode("container", &format!("{ns}/{id}"), v.value())?;
                Ok(Some(r.into_container(id)))
            }
        }
    }

    fn lease_exists(
        t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
        ns: &str,
        id: &str,
    ) -> Result<(), MetadataError> {
        if t.get((ns, id)).ctx("get lease")?.is_none() {
            return Err(MetadataError::NotFound {
                what: "lease",
                namespace: ns.to_owned(),
                id: id.to_owned(),
            });
        }
        Ok(())
    }

    fn delete_lease_tx(tx: &WriteTransaction, ns: &str, id: &str) -> Result<bool, MetadataError> {
        let op = "delete lease";
        let removed = tx.open_table(LEASES).ctx(op)?.remove((ns, id)).ctx(op)?.is_some();
        let mut res = tx.open_table(LEASE_RESOURCES).ctx(op)?;
        let mut keys = Vec::new();
        for entry in res
            .range::<(&str, &str, &str, &str)>((ns, id, "", "")..)
            .ctx(op)?
        {
            let (k, _) = entry.ctx(op)?;
            let (kns, klease, ktype, kid) = k.value();
            if kns != ns || klease != id {
                break;
            }
            keys.push((ktype.to_owned(), kid.to_owned()));
        }
        for (t, r) in &keys {
            res.remove((ns, id, t.as_str(), r.as_str())).ctx(op)?;
        }
        Ok(removed)
    }
}

/// Applies an update field mask to a container (containerd's `containerStore.Update`).
/// Empty `fieldpaths`: replace labels, spec, extensions, image and snapshot_key, and refuse
/// a different snapshotter or runtime name (those change only when named).
pub fn apply_container_update(
    existing: &Container,
    incoming: Container,
    fieldpaths: &[String],
) -> Result<Container, MetadataError> {
    const FULL: [&str; 5] = ["labels", "spec", "extensions", "image", "snapshot_key"];
    let mut updated = existing.clone();
    let full: Vec<String>;
    let paths = if fieldpaths.is_empty() {
        if incoming.snapshotter != existing.snapshotter {
            return Err(MetadataError::invalid(
                "snapshotter",
                "field is immutable unless named in the update mask",
            ));
        }
        if incoming.runtime.name != existing.runtime.name {
            return Err(MetadataError::invalid(
                "runtime.name",
                "field is immutable unless named in the update mask",
            ));
        }
        full = FULL.iter().map(|s| s.to_string()).collect();
        &full[..]
    } else {
        fieldpaths
    };
    for path in paths {
        if let Some(key) = path.strip_prefix("labels.") {
            match incoming.labels.get(key) {
                Some(v) if !v.is_empty() => {
                    updated.labels.insert(key.to_owned(), v.clone());
                }
                _ => {
                    updated.labels.remove(key);
                }
            }
            continue;
        }
        if let Some(key) = path.strip_prefix("extensions.") {
            match incoming.extensions.get(key) {
                Some(v) => {
                    updated.extensions.insert(key.to_owned(), v.clone());
                }
                None => {
                    updated.extensions.remove(key);
                }
            }
            continue;
        }
        match path.as_str() {
            "labels" => updated.labels = incoming.labels.clone(),
            "spec" => updated.spec = incoming.spec.clone(),
            "extensions" => updated.extensions = incoming.extensions.clone(),
            "image" => updated.image = incoming.image.clone(),
            "snapshotter" => updated.snapshotter = incoming.snapshotter.clone(),
            "snapshot_key" | "snapshotkey" => updated.snapshot_key = incoming.snapshot_key.clone(),
            "runtime" => updated.runtime = incoming.runtime.clone(),
            "runtime.name" => updated.runtime.name = incoming.runtime.name.clone(),
            "runtime.options" => updated.runtime.options = incoming.runtime.options.clone(),
            other => {
                return Err(MetadataError::invalid(
                    "update_mask",
                    format!("cannot update field {other:?} of container {:?}", existing.id),
                ));
            }
        }
    }
    drop_empty(&mut updated.labels);
    Ok(updated)
}

/// Applies an update field mask to a namespace's labels.
pub fn apply_namespace_update(
    existing: &Namespace,
    incoming: Namespace,
    fieldpaths: &[String],
) -> Result<Namespace, MetadataError> {
    let mut updated = existing.clone();
    if fieldpaths.is_empty() {
        updated.labels = incoming.labels.clone();
    }
    for path in fieldpaths {
        if let Some(key) = path.strip_prefix("labels.") {
            match incoming.labels.get(key) {
                Some(v) if !v.is_empty() => {
                    updated.labels.insert(key.to_owned(), v.clone());
                }
                _ => {
                    updated.labels.remove(key);
                }
            }
        } else if path == "labels" {
            updated.labels = incoming.labels.clone();
        } else {
            return Err(MetadataError::invalid(
                "update_mask",
                format!("cannot update field {path:?} of namespace {:?}", existing.name),
            ));
        }
    }
    drop_empty(&mut updated.labels);
    Ok(updated)
}

impl ContainerStore for Db {
    fn get(&self, namespace: &str, id: &str) -> Result<Container, MetadataError> {
        validate_namespace(namespace)?;
        identifiers::validate("container id", id)?;
        self.read("get container", |tx| {
            let t = tx.open_table(CONTAINERS).ctx("get container")?;
            Self::get_container_tx(&t, namespace, id)?.ok_or_else(|| MetadataError::NotFound {
                what: "container",
                namespace: namespace.to_owned(),
                id: id.to_owned(),
            })
        })
    }

    fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Container>, MetadataError> {
        validate_namespace(namespace)?;
        let filter = filters::parse(filters)?;
        let op = "list containers";
        self.read(op, |tx| {
            let t = tx.open_table(CONTAINERS).ctx(op)?;
            let mut out = Vec::new();
            for entry in t.range::<(&str, &str)>((namespace, "")..).ctx(op)? {
                let (k, v) = entry.ctx(op)?;
                let (ns, id) = k.value();
                if ns != namespace {
                    break;
                }
                let r: ContainerRecord = decode("container", &format!("{ns}/{id}"), v.value())?;
                let c = r.into_container(id);
                if filter.matches(&ContainerFields(&c)) {
                    out.push(c);
                }
            }
            Ok(out)
        })
    }

    fn create(&self, namespace: &str, mut container: Container) -> Result<Container, MetadataError> {
        validate_namespace(namespace)?;
        drop_empty(&mut container.labels);
        validate_container(&container)?;
        let op = "create container";
        self.write(op, |tx| {
            let mut t = tx.open_table(CONTAINERS).ctx(op)?;
            if t.get((namespace, container.id.as_str())).ctx(op)?.is_some() {
                return Err(MetadataError::AlreadyExists {
                    what: "container",
                    namespace: namespace.to_owned(),
                    id: container.id.clone(),
                });
            }
            let t_now = now();
            container.created_at = Some(t_now);
            container.updated_at = Some(t_now);
            let bytes = ContainerRecord::from_container(&container).encode_to_vec();
            t.insert((namespace, container.id.as_str()), bytes.as_slice())
                .ctx(op)?;
            drop(t);
            Self::ensure_namespace(tx, namespace)?;
            Ok(container)
        })
    }

    fn update(
        &self,
        namespace: &str,
        container: Container,
        fieldpaths: &[String],
    ) -> Result<Container, MetadataError> {
        validate_namespace(namespace)?;
        identifiers::validate("container id", &container.id)?;
        let op = "update container";
        self.write(op, |tx| {
            let mut t = tx.open_table(CONTAINERS).ctx(op)?;
            let existing = Self::get_container_tx(&t, namespace, &container.id)?.ok_or_else(|| {
                MetadataError::NotFound {
                    what: "container",
                    namespace: namespace.to_owned(),
                    id: container.id.clone(),
                }
            })?;
            let mut updated = apply_container_update(&existing, container, fieldpaths)?;
            validate_container(&updated)?;
            updated.created_at = existing.created_at;
            updated.updated_at = Some(now());
            let bytes = ContainerRecord::from_container(&updated).encode_to_vec();
            t.insert((namespace, updated.id.as_str()), bytes.as_slice())
                .ctx(op)?;
            Ok(updated)
        })
    }

    fn delete(&self, namespace: &str, id: &str) -> Result<(), MetadataError> {
        validate_namespace(namespace)?;
        identifiers::validate("container id", id)?;
        let op = "delete container";
        self.write(op, |tx| {
            let mut t = tx.open_table(CONTAINERS).ctx(op)?;
            if t.remove((namespace, id)).ctx(op)?.is_none() {
                return Err(MetadataError::NotFound {
                    what: "container",
                    namespace: namespace.to_owned(),
                    id: id.to_owned(),
                });
            }
            Ok(())
        })
    }
}

fn namespace_not_found(name: &str) -> MetadataError {
    MetadataError::NotFound {
        what: "namespace",
        namespace: name.to_owned(),
        id: name.to_owned(),
    }
}

impl NamespaceStore for Db {
    fn create(&self, name: &str, mut labels: BTreeMap<String, String>) -> Result<Namespace, MetadataError> {
        validate_namespace(name)?;
        drop_empty(&mut labels);
        validate_labels("labels", &labels)?;
        let op = "create namespace";
        self.write(op, |tx| {
            let mut t = tx.open_table(NAMESPACES).ctx(op)?;
            if t.get(name).ctx(op)?.is_some() {
                return Err(MetadataError::AlreadyExists {
                    what: "namespace",
                    namespace: name.to_owned(),
                    id: name.to_owned(),
                });
            }
            let rec = NamespaceRecord { labels };
            t.insert(name, rec.encode_to_vec().as_slice()).ctx(op)?;
            Ok(rec.into_namespace(name))
        })
    }

    fn get(&self, name: &str) -> Result<Namespace, MetadataError> {
        validate_namespace(name)?;
        let op = "get namespace";
        self.read(op, |tx| {
            let t = tx.open_table(NAMESPACES).ctx(op)?;
            let v = t.get(name).ctx(op)?.ok_or_else(|| namespace_not_found(name))?;
            let r: NamespaceRecord = decode("namespace", name, v.value())?;
            Ok(r.into_namespace(name))
        })
    }

    fn list(&self) -> Result<Vec<Namespace>, MetadataError> {
        let op = "list namespaces";
        self.read(op, |tx| {
            let t = tx.open_table(NAMESPACES).ctx(op)?;
            let mut out = Vec::new();
            for entry in t.iter().ctx(op)? {
                let (k, v) = entry.ctx(op)?;
                let r: NamespaceRecord = decode("namespace", k.value(), v.value())?;
                out.push(r.into_namespace(k.value()));
            }
            Ok(out)
        })
    }

    fn update(&self, namespace: Namespace, fieldpaths: &[String]) -> Result<Namespace, MetadataError> {
        validate_namespace(&namespace.name)?;
        let op = "update namespace";
        self.write(op, |tx| {
            let mut t = tx.open_table(NAMESPACES).ctx(op)?;
            let name = namespace.name.clone();
            let existing = {
                let v = t
                    .get(name.as_str())
                    .ctx(op)?
                    .ok_or_else(|| namespace_not_found(&name))?;
                let r: NamespaceRecord = decode("namespace", &name, v.value())?;
                r.into_namespace(&name)
            };
            let updated = apply_namespace_update(&existing, namespace, fieldpaths)?;
            validate_labels("labels", &updated.labels)?;
            let rec = NamespaceRecord {
                labels: updated.labels.clone(),
            };
            t.insert(name.as_str(), rec.encode_to_vec().as_slice()).ctx(op)?;
            Ok(updated)
        })
    }

    fn delete(&self, name: &str) -> Result<(), MetadataError> {
        validate_namespace(name)?;
        let checks: Vec<Arc<dyn NamespaceCheck>> =
            self.checks.read().unwrap_or_else(|p| p.into_inner()).clone();
        let op = "delete namespace";
        self.write(op, |tx| {
            if tx.open_table(NAMESPACES).ctx(op)?.get(name).ctx(op)?.is_none() {
                return Err(namespace_not_found(name));
            }
            let mut remaining = Vec::new();
            for check in &checks {
                if let Some(r) = check.remaining(tx, name)? {
                    remaining.push(r);
                }
            }
            if !remaining.is_empty() {
                return Err(MetadataError::NamespaceNotEmpty {
                    namespace: name.to_owned(),
                    remaining: remaining.join(", "),
                });
            }
            tx.open_table(NAMESPACES).ctx(op)?.remove(name).ctx(op)?;
            Ok(())
        })
    }
}

impl LeaseManager for Db {
    fn create(
        &self,
        namespace: &str,
        id: &str,
        mut labels: BTreeMap<String, String>,
    ) -> Result<Lease, MetadataError> {
        validate_namespace(namespace)?;
        validate_lease_id(id)?;
        drop_empty(&mut labels);
        validate_lease_labels(&labels)?;
        let op = "create lease";
        self.write(op, |tx| {
            let mut t = tx.open_table(LEASES).ctx(op)?;
            if t.get((namespace, id)).ctx(op)?.is_some() {
                return Err(MetadataError::AlreadyExists {
                    what: "lease",
                    namespace: namespace.to_owned(),
                    id: id.to_owned(),
                });
            }
            let lease = Lease {
                id: id.to_owned(),
                created_at: Some(now()),
                labels,
            };
            t.insert(
                (namespace, id),
                LeaseRecord::from_lease(&lease).encode_to_vec().as_slice(),
            )
            .ctx(op)?;
            drop(t);
            Self::ensure_namespace(tx, namespace)?;
            Ok(lease)
        })
    }

    fn delete(&self, namespace: &str, id: &str) -> Result<(), MetadataError> {
        validate_namespace(namespace)?;
        validate_lease_id(id)?;
        self.write("delete lease", |tx| {
            if !Self::delete_lease_tx(tx, namespace, id)? {
                return Err(MetadataError::NotFound {
                    what: "lease",
                    namespace: namespace.to_owned(),
                    id: id.to_owned(),
                });
            }
            Ok(())
        })
    }

    fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Lease>, MetadataError> {
        validate_namespace(namespace)?;
        let filter = filters::parse(filters)?;
        let op = "list leases";
        self.read(op, |tx| {
            let t = tx.open_table(LEASES).ctx(op)?;
            let mut out = Vec::new();
            for entry in t.range::<(&str, &str)>((namespace, "")..).ctx(op)? {
                let (k, v) = entry.ctx(op)?;
                let (ns, id) = k.value();
                if ns != namespace {
                    break;
                }
                let r: LeaseRecord = decode("lease", &format!("{ns}/{id}"), v.value())?;
                let l = r.into_lease(id);
                if filter.matches(&LeaseFields(&l)) {
                    out.push(l);
                }
            }
            Ok(out)
        })
    }

    fn add_resource(
        &self,
        namespace: &str,
        lease: &str,
        resource: LeaseResource,
    ) -> Result<(), MetadataError> {
        validate_namespace(namespace)?;
        validate_lease_id(lease)?;
        validate_resource(&resource)?;
        let op = "add lease resource";
        self.write(op, |tx| {
            Self::lease_exists(&tx.open_table(LEASES).ctx(op)?, namespace, lease)?;
            tx.open_table(LEASE_RESOURCES)
                .ctx(op)?
                .insert(
                    (namespace, lease, resource.r#type.as_str(), resource.id.as_str()),
                    (),
                )
                .ctx(op)?;
            Ok(())
        })
    }

    fn delete_resource(
        &self,
        namespace: &str,
        lease: &str,
        resource: LeaseResource,
    ) -> Result<(), MetadataError> {
        validate_namespace(namespace)?;
        validate_lease_id(lease)?;
        validate_resource(&resource)?;
        let op = "delete lease resource";
        self.write(op, |tx| {
            Self::lease_exists(&tx.open_table(LEASES).ctx(op)?, namespace, lease)?;
            tx.open_table(LEASE_RESOURCES)
                .ctx(op)?
                .remove((namespace, lease, resource.r#type.as_str(), resource.id.as_str()))
                .ctx(op)?;
            Ok(())
        })
    }

    fn list_resources(&self, namespace: &str, lease: &str) -> Result<Vec<LeaseResource>, MetadataError> {
        validate_namespace(namespace)?;
        validate_lease_id(lease)?;
        let op = "list lease resources";
        self.read(op, |tx| {
            Self::lease_exists(&tx.open_table(LEASES).ctx(op)?, namespace, lease)?;
            let t = tx.open_table(LEASE_RESOURCES).ctx(op)?;
            let mut out = Vec::new();
            for entry in t
                .range::<(&str, &str, &str, &str)>((namespace, lease, "", "")..)
                .ctx(op)?
            {
                let (k, _) = entry.ctx(op)?;
                let (ns, l, ty, id) = k.value();
                if ns != namespace || l != lease {
                    break;
                }
                out.push(LeaseResource {
                    id: id.to_owned(),
                    r#type: ty.to_owned(),
                });
            }
            Ok(out)
        })
    }

    fn expire(&self, now: SystemTime) -> Result<Vec<(String, String)>, MetadataError> {
        let op = "expire leases";
        let expired = |labels: &BTreeMap<String, String>| {
            labels
                .get(LABEL_GC_EXPIRE)
                .and_then(|v| parse_expiry(v))
                .is_some_and(|at| at <= now)
        };
        // Find candidates in a read transaction, so an idle tick costs no commit.
        let candidates: Vec<(String, String)> = self.read(op, |tx| {
            let t = tx.open_table(LEASES).ctx(op)?;
            let mut out = Vec::new();
            for entry in t.iter().ctx(op)? {
                let (k, v) = entry.ctx(op)?;
                let (ns, id) = k.value();
                let r: LeaseRecord = decode("lease", &format!("{ns}/{id}"), v.value())?;
                if expired(&r.labels) {
                    out.push((ns.to_owned(), id.to_owned()));
                }
            }
            Ok(out)
        })?;
        if candidates.is_empty() {
            return Ok(candidates);
        }
        self.write(op, |tx| {
            let mut removed = Vec::new();
            for (ns, id) in candidates {
                // Re-check inside the write transaction: the lease may have changed.
                let still = {
                    let t = tx.open_table(LEASES).ctx(op)?;
                    match t.get((ns.as_str(), id.as_str())).ctx(op)? {
                        None => false,
                        Some(v) => {
                            let r: LeaseRecord = decode("lease", &format!("{ns}/{id}"), v.value())?;
                            expired(&r.labels)
                        }
                    }
                };
                if still && Self::delete_lease_tx(tx, &ns, &id)? {
                    removed.push((ns, id));
                }
            }
            Ok(removed)
        })
    }
}

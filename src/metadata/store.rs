//! [`Db`]: the redb database behind [`ContainerStore`], [`NamespaceStore`] and
//! [`LeaseManager`]. See the module docs of `metadata` for the schema and the rules.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use prost::Message;
use redb::{ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::error::MetadataError;
use super::model::NamespaceCheck;
use super::records::NamespaceRecord;
use super::schema::{self, CONTAINERS, LEASES, Migration, NAMESPACES};
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
pub(super) trait Ctx<T> {
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

/// Visits every `(namespace, id) → value` entry of one namespace of an [`ObjectTable`], in id
/// order: the one namespace scan of every store on the metadata db.
pub fn scan_namespace(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    namespace: &str,
    op: &'static str,
    mut visit: impl FnMut(&str, &[u8]) -> Result<(), MetadataError>,
) -> Result<(), MetadataError> {
    for entry in table.range::<(&str, &str)>((namespace, "")..).ctx(op)? {
        let (k, v) = entry.ctx(op)?;
        let (ns, id) = k.value();
        if ns != namespace {
            break;
        }
        visit(id, v.value())?;
    }
    Ok(())
}

impl NamespaceCheck for CountObjects {
    fn remaining(&self, tx: &WriteTransaction, namespace: &str) -> Result<Option<String>, MetadataError> {
        let op = "count namespace objects";
        let table = tx.open_table(self.table).ctx(op)?;
        let mut n = 0usize;
        scan_namespace(&table, namespace, op, |_, _| {
            n += 1;
            Ok(())
        })?;
        Ok(match n {
            0 => None,
            1 => Some(format!("1 {}", self.singular)),
            n => Some(format!("{n} {}", self.plural)),
        })
    }
}

pub(super) fn now() -> SystemTime {
    SystemTime::now()
}

pub(super) fn validate_namespace(ns: &str) -> Result<(), MetadataError> {
    Ok(identifiers::validate("namespace", ns)?)
}

/// Applies update path `labels.KEY` (or `annotations.KEY`, ...) from `incoming` to `target`:
/// a non-empty value is set, an empty or missing one removes the key (containerd's rule).
pub fn apply_key(target: &mut BTreeMap<String, String>, incoming: &BTreeMap<String, String>, key: &str) {
    match incoming.get(key) {
        Some(v) if !v.is_empty() => {
            target.insert(key.to_owned(), v.clone());
        }
        _ => {
            target.remove(key);
        }
    }
}

/// Drops labels with an empty value: containerd never stores them, and `labels.KEY` with an
/// empty value is how clients remove a label.
pub(super) fn drop_empty(labels: &mut BTreeMap<String, String>) {
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

    /// The checks consulted before a namespace is deleted.
    pub(super) fn namespace_checks(&self) -> Vec<Arc<dyn NamespaceCheck>> {
        self.checks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Adds a check consulted, inside the transaction, before a namespace is deleted.
    pub fn register_namespace_check(&self, check: Arc<dyn NamespaceCheck>) {
        self.checks
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(check);
    }

    /// Runs `f` in one write transaction: committed if it returns Ok, aborted otherwise.
    pub(super) fn write<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&WriteTransaction) -> Result<T, MetadataError>,
    ) -> Result<T, MetadataError> {
        write_tx(&self.db, op, f, |op, source| MetadataError::Storage {
            op,
            source: Box::new(source),
        })
    }

    pub(super) fn read<T>(
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
}

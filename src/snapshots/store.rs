//! Snapshot metadata in the daemon's redb database (tables of their own, created on open).
//!
//! ```text
//! meta.redb
//! ├── snapshots          (<ns>, <snapshotter>, <key or name>) → SnapshotRecord { id, kind,
//! │                        parent, labels, created_at, updated_at, size, inodes }
//! ├── snapshot_children  (<ns>, <snapshotter>, <parent name>, <child key>) → ()
//! └── snapshot_seq       <snapshotter> → u64   last directory id handed out
//! ```
//!
//! Every mutation is one write transaction (existence checks, parent checks, the record and
//! the children index commit together). A namespace holding snapshots cannot be deleted: each
//! snapshotter registers a [`NamespaceCheck`] counting its own records.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use prost::Message;
use prost_types::Timestamp;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::error::SnapshotError;
use super::model::{Info, Kind, Usage};
use crate::filters::{self, Adaptor};
use crate::identifiers;
use crate::metadata::{Db, MetadataError, NamespaceCheck};

const SNAPSHOTS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("snapshots");
const CHILDREN: TableDefinition<(&str, &str, &str, &str), ()> = TableDefinition::new("snapshot_children");
const SEQ: TableDefinition<&str, u64> = TableDefinition::new("snapshot_seq");

/// Longest key or name accepted (containerd has no limit; keys are often chain ids or
/// `extract-<nanos>-<rand> <chain id>`).
const MAX_KEY: usize = 4096;

#[derive(Clone, PartialEq, Message)]
struct SnapshotRecord {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int32, tag = "2")]
    kind: i32,
    #[prost(string, tag = "3")]
    parent: String,
    #[prost(btree_map = "string, string", tag = "4")]
    labels: BTreeMap<String, String>,
    #[prost(message, optional, tag = "5")]
    created_at: Option<Timestamp>,
    #[prost(message, optional, tag = "6")]
    updated_at: Option<Timestamp>,
    #[prost(int64, tag = "7")]
    size: i64,
    #[prost(int64, tag = "8")]
    inodes: i64,
}

fn kind_to_i32(k: Kind) -> i32 {
    match k {
        Kind::Unknown => 0,
        Kind::View => 1,
        Kind::Active => 2,
        Kind::Committed => 3,
    }
}

fn kind_from_i32(k: i32) -> Kind {
    match k {
        1 => Kind::View,
        2 => Kind::Active,
        3 => Kind::Committed,
        _ => Kind::Unknown,
    }
}

fn time(t: Option<Timestamp>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(t).ok())
}

/// A stored snapshot.
#[derive(Debug, Clone)]
pub(super) struct Record {
    pub id: u64,
    pub info: Info,
    pub usage: Usage,
}

/// A snapshot with its directory id and its parents' ids, closest first.
#[derive(Debug, Clone)]
pub(super) struct Resolved {
    pub id: u64,
    pub kind: Kind,
    pub parent_ids: Vec<u64>,
}

impl SnapshotRecord {
    fn into_record(self, name: &str) -> Record {
        Record {
            id: self.id,
            info: Info {
                name: name.to_owned(),
                parent: self.parent,
                kind: kind_from_i32(self.kind),
                labels: self.labels,
                created_at: time(self.created_at),
                updated_at: time(self.updated_at),
            },
            usage: Usage {
                size: self.size,
                inodes: self.inodes,
            },
        }
    }
}

/// Filter view of a snapshot (containerd's `adaptSnapshot`): `name`, `parent`, `kind`
/// (`View`, `Active`, `Committed`), `labels.KEY`.
pub struct SnapshotFields<'a>(pub &'a Info);

impl Adaptor for SnapshotFields<'_> {
    fn field(&self, path: &[&str]) -> Option<String> {
        let i = self.0;
        let present = |v: &str| (!v.is_empty()).then(|| v.to_owned());
        match path {
            ["name"] => present(&i.name),
            ["parent"] => present(&i.parent),
            ["kind"] => Some(i.kind.as_str().to_owned()),
            ["labels", rest @ ..] if !rest.is_empty() => i.labels.get(&rest.join(".")).cloned(),
            _ => None,
        }
    }
}

/// Keys and names: non-empty, bounded, no NUL.
pub(super) fn validate_key(field: &'static str, key: &str) -> Result<(), SnapshotError> {
    let reason = if key.is_empty() {
        "must not be empty"
    } else if key.len() > MAX_KEY {
        "is longer than 4096 bytes"
    } else if key.contains('\0') {
        "must not contain NUL"
    } else {
        return Ok(());
    };
    Err(SnapshotError::InvalidArgument {
        field,
        reason: format!("snapshot {field} {reason}"),
    })
}

fn validate_namespace(ns: &str) -> Result<(), SnapshotError> {
    identifiers::validate("namespace", ns).map_err(MetadataError::from)?;
    Ok(())
}

fn storage<E: Into<redb::Error>>(op: &'static str) -> impl FnOnce(E) -> SnapshotError {
    move |e| {
        SnapshotError::Metadata(MetadataError::Storage {
            op,
            source: Box::new(e.into()),
        })
    }
}

trait Ctx<T> {
    fn ctx(self, op: &'static str) -> Result<T, SnapshotError>;
}

impl<T, E: Into<redb::Error>> Ctx<T> for Result<T, E> {
    fn ctx(self, op: &'static str) -> Result<T, SnapshotError> {
        self.map_err(storage(op))
    }
}

fn decode(ns: &str, sn: &str, key: &str, bytes: &[u8]) -> Result<SnapshotRecord, SnapshotError> {
    SnapshotRecord::decode(bytes).map_err(|source| {
        SnapshotError::Metadata(MetadataError::Corrupt {
            what: "snapshot",
            key: format!("{ns}/{sn}/{key}"),
            source,
        })
    })
}

/// Counts one snapshotter's snapshots in a namespace being deleted.
struct CountSnapshots {
    snapshotter: String,
}

impl NamespaceCheck for CountSnapshots {
    fn remaining(&self, tx: &WriteTransaction, namespace: &str) -> Result<Option<String>, MetadataError> {
        let op = "count snapshots";
        let st = |e: redb::Error| MetadataError::Storage {
            op,
            source: Box::new(e),
        };
        let t = tx.open_table(SNAPSHOTS).map_err(|e| st(e.into()))?;
        let sn = self.snapshotter.as_str();
        let mut n = 0usize;
        for entry in t
            .range::<(&str, &str, &str)>((namespace, sn, "")..)
            .map_err(|e| st(e.into()))?
        {
            let (k, _) = entry.map_err(|e| st(e.into()))?;
            let (kns, ksn, _) = k.value();
            if kns != namespace || ksn != sn {
                break;
            }
            n += 1;
        }
        Ok(match n {
            0 => None,
            1 => Some(format!("1 snapshot ({sn})")),
            n => Some(format!("{n} snapshots ({sn})")),
        })
    }
}

/// One snapshotter's view of the tables.
pub(super) struct Store {
    snapshotter: String,
    db: Arc<Db>,
}

impl Store {
    pub fn open(snapshotter: &str, db: Arc<Db>) -> Result<Store, SnapshotError> {
        let op = "create snapshot tables";
        let tx = db.database().begin_write().ctx(op)?;
        tx.open_table(SNAPSHOTS).ctx(op)?;
        tx.open_table(CHILDREN).ctx(op)?;
        tx.open_table(SEQ).ctx(op)?;
        tx.commit().ctx(op)?;
        db.register_namespace_check(Arc::new(CountSnapshots {
            snapshotter: snapshotter.to_owned(),
        }));
        Ok(Store {
            snapshotter: snapshotter.to_owned(),
            db,
        })
    }

    fn write<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&WriteTransaction) -> Result<T, SnapshotError>,
    ) -> Result<T, SnapshotError> {
        crate::metadata::write_tx(self.db.database(), op, f, |op, e| storage(op)(e))
    }

    fn get_in(
        &self,
        t: &impl ReadableTable<(&'static str, &'static str, &'static str), &'static [u8]>,
        ns: &str,
        key: &str,
    ) -> Result<Option<Record>, SnapshotError> {
        let sn = self.snapshotter.as_str();
        match t.get((ns, sn, key)).ctx("get snapshot")? {
            None => Ok(None),
            Some(v) => Ok(Some(decode(ns, sn, key, v.value())?.into_record(key))),
        }
    }

    fn not_found(ns: &str, key: &str) -> SnapshotError {
        SnapshotError::NotFound {
            namespace: ns.to_owned(),
            key: key.to_owned(),
        }
    }

    /// Parent ids, closest first, starting at `parent` ("" = none).
    fn chain(
        &self,
        t: &impl ReadableTable<(&'static str, &'static str, &'static str), &'static [u8]>,
        ns: &str,
        parent: &str,
    ) -> Result<Vec<u64>, SnapshotError> {
        let mut ids = Vec::new();
        let mut cur = parent.to_owned();
        while !cur.is_empty() {
            let r = self
                .get_in(t, ns, &cur)?
                .ok_or_else(|| SnapshotError::ParentNotFound {
                    namespace: ns.to_owned(),
                    parent: cur.clone(),
                })?;
            ids.push(r.id);
            cur = r.info.parent;
            if ids.len() > 10_000 {
                return Err(SnapshotError::InvalidArgument {
                    field: "parent",
                    reason: format!("parent chain of {parent:?} is too long or cyclic"),
                });
            }
        }
        Ok(ids)
    }

    pub fn get(&self, ns: &str, key: &str) -> Result<Record, SnapshotError> {
        validate_namespace(ns)?;
        validate_key("key", key)?;
        let tx = self.db.database().begin_read().ctx("get snapshot")?;
        let t = tx.open_table(SNAPSHOTS).ctx("get snapshot")?;
        self.get_in(&t, ns, key)?.ok_or_else(|| Self::not_found(ns, key))
    }

    pub fn resolve(&self, ns: &str, key: &str) -> Result<Resolved, SnapshotError> {
        validate_namespace(ns)?;
        validate_key("key", key)?;
        let tx = self.db.database().begin_read().ctx("get snapshot")?;
        let t = tx.open_table(SNAPSHOTS).ctx("get snapshot")?;
        let r = self
            .get_in(&t, ns, key)?
            .ok_or_else(|| Self::not_found(ns, key))?;
        Ok(Resolved {
            id: r.id,
            kind: r.info.kind,
            parent_ids: self.chain(&t, ns, &r.info.parent)?,
        })
    }

    fn check_parent(
        &self,
        t: &impl ReadableTable<(&'static str, &'static str, &'static str), &'static [u8]>,
        ns: &str,
        key: &str,
        parent: &str,
    ) -> Result<Vec<u64>, SnapshotError> {
        if self.get_in(t, ns, key)?.is_some() {
            return Err(SnapshotError::AlreadyExists {
                namespace: ns.to_owned(),
                key: key.to_owned(),
            });
        }
        if parent.is_empty() {
            return Ok(Vec::new());
        }
        let p = self
            .get_in(t, ns, parent)?
            .ok_or_else(|| SnapshotError::ParentNotFound {
                namespace: ns.to_owned(),
                parent: parent.to_owned(),
            })?;
        if p.info.kind != Kind::Committed {
            return Err(SnapshotError::ParentNotCommitted {
                parent: parent.to_owned(),
                kind: p.info.kind.as_str(),
            });
        }
        self.chain(t, ns, parent)
    }

    /// Checks that `key` is free and `parent` committed; returns the parent chain ids.
    pub fn check_create(&self, ns: &str, key: &str, parent: &str) -> Result<Vec<u64>, SnapshotError> {
        validate_namespace(ns)?;
        let tx = self.db.database().begin_read().ctx("check snapshot")?;
        let t = tx.open_table(SNAPSHOTS).ctx("check snapshot")?;
        self.check_parent(&t, ns, key, parent)
    }

    /// Hands out the next directory id.
    pub fn next_id(&self) -> Result<u64, SnapshotError> {
        let op = "allocate snapshot id";
        self.write(op, |tx| {
            let mut t = tx.open_table(SEQ).ctx(op)?;
            let next = t
                .get(self.snapshotter.as_str())
                .ctx(op)?
                .map(|v| v.value())
                .unwrap_or(0)
                + 1;
            t.insert(self.snapshotter.as_str(), next).ctx(op)?;
            Ok(next)
        })
    }

    /// Records a new Active or View snapshot with directory `id`.
    pub fn insert(
        &self,
        ns: &str,
        key: &str,
        parent: &str,
        kind: Kind,
        id: u64,
        mut labels: BTreeMap<String, String>,
    ) -> Result<Resolved, SnapshotError> {
        labels.retain(|_, v| !v.is_empty());
        let op = "create snapshot";
        let sn = self.snapshotter.as_str();
        self.write(op, |tx| {
            let mut t = tx.open_table(SNAPSHOTS).ctx(op)?;
            let parent_ids = self.check_parent(&t, ns, key, parent)?;
            let now = Some(Timestamp::from(SystemTime::now()));
            let rec = SnapshotRecord {
                id,
                kind: kind_to_i32(kind),
                parent: parent.to_owned(),
                labels,
                created_at: now,
                updated_at: now,
                size: 0,
                inodes: 0,
            };
            t.insert((ns, sn, key), rec.encode_to_vec().as_slice()).ctx(op)?;
            if !parent.is_empty() {
                tx.open_table(CHILDREN)
                    .ctx(op)?
                    .insert((ns, sn, parent, key), ())
                    .ctx(op)?;
            }
            drop(t);
            Db::ensure_namespace(tx, ns)?;
            Ok(Resolved { id, kind, parent_ids })
        })
    }

    /// Turns the active `key` into the committed `name`.
    pub fn commit(
        &self,
        ns: &str,
        name: &str,
        key: &str,
        mut labels: BTreeMap<String, String>,
        usage: Usage,
    ) -> Result<(), SnapshotError> {
        labels.retain(|_, v| !v.is_empty());
        let op = "commit snapshot";
        let sn = self.snapshotter.as_str();
        self.write(op, |tx| {
            let mut t = tx.open_table(SNAPSHOTS).ctx(op)?;
            let active = self
                .get_in(&t, ns, key)?
                .ok_or_else(|| Self::not_found(ns, key))?;
            if active.info.kind != Kind::Active {
                return Err(SnapshotError::NotActive {
                    key: key.to_owned(),
                    kind: active.info.kind.as_str(),
                });
            }
            if self.get_in(&t, ns, name)?.is_some() {
                return Err(SnapshotError::AlreadyExists {
                    namespace: ns.to_owned(),
                    key: name.to_owned(),
                });
            }
            let now = Some(Timestamp::from(SystemTime::now()));
            let rec = SnapshotRecord {
                id: active.id,
                kind: kind_to_i32(Kind::Committed),
                parent: active.info.parent.clone(),
                labels,
                created_at: now,
                updated_at: now,
                size: usage.size,
                inodes: usage.inodes,
            };
            t.remove((ns, sn, key)).ctx(op)?;
            t.insert((ns, sn, name), rec.encode_to_vec().as_slice()).ctx(op)?;
            if !active.info.parent.is_empty() {
                let mut c = tx.open_table(CHILDREN).ctx(op)?;
                let p = active.info.parent.as_str();
                c.remove((ns, sn, p, key)).ctx(op)?;
                c.insert((ns, sn, p, name), ()).ctx(op)?;
            }
            Ok(())
        })
    }

    /// Deletes the record of `key` (no children allowed); returns its directory id.
    pub fn remove(&self, ns: &str, key: &str) -> Result<u64, SnapshotError> {
        validate_namespace(ns)?;
        let op = "remove snapshot";
        let sn = self.snapshotter.as_str();
        self.write(op, |tx| {
            let mut t = tx.open_table(SNAPSHOTS).ctx(op)?;
            let r = self
                .get_in(&t, ns, key)?
                .ok_or_else(|| Self::not_found(ns, key))?;
            let mut c = tx.open_table(CHILDREN).ctx(op)?;
            let mut children = Vec::new();
            for entry in c.range::<(&str, &str, &str, &str)>((ns, sn, key, "")..).ctx(op)? {
                let (k, _) = entry.ctx(op)?;
                let (kns, ksn, kp, child) = k.value();
                if kns != ns || ksn != sn || kp != key {
                    break;
                }
                children.push(child.to_owned());
            }
            if let Some(first) = children.first() {
                return Err(SnapshotError::HasChildren {
                    key: key.to_owned(),
                    children: children.len(),
                    first: first.clone(),
                });
            }
            t.remove((ns, sn, key)).ctx(op)?;
            if !r.info.parent.is_empty() {
                c.remove((ns, sn, r.info.parent.as_str(), key)).ctx(op)?;
            }
            Ok(r.id)
        })
    }

    pub fn update(&self, ns: &str, info: Info, fieldpaths: &[String]) -> Result<Info, SnapshotError> {
        validate_namespace(ns)?;
        validate_key("name", &info.name)?;
        let op = "update snapshot";
        let sn = self.snapshotter.as_str();
        self.write(op, |tx| {
            let mut t = tx.open_table(SNAPSHOTS).ctx(op)?;
            let key = info.name.clone();
            let mut rec = match t.get((ns, sn, key.as_str())).ctx(op)? {
                None => return Err(Self::not_found(ns, &key)),
                Some(v) => decode(ns, sn, &key, v.value())?,
            };
            let mut labels = rec.labels.clone();
            if fieldpaths.is_empty() {
                labels = info.labels.clone();
            }
            for path in fieldpaths {
                if let Some(k) = path.strip_prefix("labels.") {
                    match info.labels.get(k) {
                        Some(v) if !v.is_empty() => {
                            labels.insert(k.to_owned(), v.clone());
                        }
                        _ => {
                            labels.remove(k);
                        }
                    }
                } else if path == "labels" {
                    labels = info.labels.clone();
                } else {
                    return Err(SnapshotError::InvalidArgument {
                        field: "update_mask",
                        reason: format!("cannot update {path:?} field on snapshot {key:?}"),
                    });
                }
            }
            labels.retain(|_, v| !v.is_empty());
            crate::metadata::validate_labels("labels", &labels)?;
            rec.labels = labels;
            rec.updated_at = Some(Timestamp::from(SystemTime::now()));
            t.insert((ns, sn, key.as_str()), rec.encode_to_vec().as_slice())
                .ctx(op)?;
            Ok(rec.into_record(&key).info)
        })
    }

    pub fn walk(&self, ns: &str, filters: &[String]) -> Result<Vec<Info>, SnapshotError> {
        validate_namespace(ns)?;
        let filter = filters::parse(filters).map_err(MetadataError::from)?;
        let op = "list snapshots";
        let sn = self.snapshotter.as_str();
        let tx = self.db.database().begin_read().ctx(op)?;
        let t = tx.open_table(SNAPSHOTS).ctx(op)?;
        let mut out = Vec::new();
        for entry in t.range::<(&str, &str, &str)>((ns, sn, "")..).ctx(op)? {
            let (k, v) = entry.ctx(op)?;
            let (kns, ksn, key) = k.value();
            if kns != ns || ksn != sn {
                break;
            }
            let info = decode(ns, sn, key, v.value())?.into_record(key).info;
            if filter.matches(&SnapshotFields(&info)) {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Every directory id this snapshotter's records name (all namespaces).
    pub fn all_ids(&self) -> Result<BTreeSet<u64>, SnapshotError> {
        let op = "list snapshot ids";
        let tx = self.db.database().begin_read().ctx(op)?;
        let t = tx.open_table(SNAPSHOTS).ctx(op)?;
        let mut ids = BTreeSet::new();
        for entry in t.iter().ctx(op)? {
            let (k, v) = entry.ctx(op)?;
            let (ns, sn, key) = k.value();
            if sn == self.snapshotter {
                ids.insert(decode(ns, sn, key, v.value())?.id);
            }
        }
        Ok(ids)
    }
}

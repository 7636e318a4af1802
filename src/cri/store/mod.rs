//! The CRI plugin's in-memory view of pods, containers and images.
//!
//! Each store keeps records by full id, reserves names (a CRI name must be unique), and
//! resolves id prefixes as crictl sends them (a unique prefix matches; several is an
//! error). State changes go through `transition`, which refuses any edge not drawn in the
//! record's state machine: a bug shows as FailedPrecondition, never as a silent state.
//!
//! Locks: one `std::sync::RwLock` per store, held only to read or swap a record; nothing
//! awaits under it.
//!
//! Persistence (pods and containers, so a restarted taskd knows them again): a store opened
//! with [`Store::open`] writes each record to `<dir>/<id>.json` after every add and update
//! (written to a temp file and renamed over, under the store's lock, so the file is always
//! one whole record) and unlinks it on remove. No fsync: the files must survive a crash of
//! taskd, which the page cache does; after a crash of the machine no container survives
//! either. [`Store::open`] loads every readable file and reports the others (logged and
//! skipped by the caller: one corrupt record never stops the plugin), renamed to
//! `<file>.corrupt` so they are kept for a look but not read again.

pub mod container;
pub mod image;
pub mod sandbox;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::errdefs::{ErrorKind, Kind};

/// Errors of the stores.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{what} {id:?} already exists")]
    IdExists { what: &'static str, id: String },
    #[error("{what} name {name:?} is reserved for {owner}")]
    NameReserved {
        what: &'static str,
        name: String,
        owner: String,
    },
    #[error("{what} id prefix {prefix:?} is ambiguous ({count} matches)")]
    Ambiguous {
        what: &'static str,
        prefix: String,
        count: usize,
    },
    #[error("{what} {id}: persist record: {reason}")]
    Persist {
        what: &'static str,
        id: String,
        reason: String,
    },
    #[error("{what} {id}: cannot go from {from} to {to}")]
    Transition {
        what: &'static str,
        id: String,
        from: &'static str,
        to: &'static str,
    },
}

impl ErrorKind for StoreError {
    fn kind(&self) -> Kind {
        match self {
            StoreError::NotFound { .. } => Kind::NotFound,
            StoreError::IdExists { .. } | StoreError::NameReserved { .. } => Kind::AlreadyExists,
            StoreError::Ambiguous { .. } => Kind::InvalidArgument,
            StoreError::Transition { .. } => Kind::FailedPrecondition,
            StoreError::Persist { .. } => Kind::Internal,
        }
    }
}

/// What a store record must tell the generic store.
pub trait Record: Clone + Send + Sync + Serialize + DeserializeOwned {
    const WHAT: &'static str;
    fn id(&self) -> &str;
    /// The unique CRI name (`<name>_<namespace>_<uid>_<attempt>` for pods).
    fn name(&self) -> &str;
}

/// A CRI filter's id: "" admits every record; otherwise only the record the id (or unique
/// prefix) resolved to, and nothing when it resolved to none or to several (as containerd).
pub struct IdFilter(Option<Option<String>>);

impl IdFilter {
    pub fn admits(&self, id: &str) -> bool {
        self.0.as_ref().is_none_or(|r| r.as_deref() == Some(id))
    }
}

/// A map of records by id with a name index.
pub struct Store<R: Record> {
    inner: RwLock<Inner<R>>,
    /// Where records are persisted (None: memory only).
    dir: Option<PathBuf>,
}

struct Inner<R> {
    by_id: HashMap<String, R>,
    names: HashMap<String, String>,
}

impl<R: Record> Default for Store<R> {
    fn default() -> Self {
        Store {
            inner: RwLock::new(Inner {
                by_id: HashMap::new(),
                names: HashMap::new(),
            }),
            dir: None,
        }
    }
}

/// Serde for a protobuf message field of a persisted record: its wire encoding, as hex.
pub mod proto_hex {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<M: prost::Message, S: Serializer>(m: &M, s: S) -> Result<S::Ok, S::Error> {
        let bytes = m.encode_to_vec();
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            out.push_str(&format!("{b:02x}"));
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, M: prost::Message + Default, D: Deserializer<'de>>(d: D) -> Result<M, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() % 2 != 0 || !text.is_ascii() {
            return Err(D::Error::custom("odd-length or non-ASCII hex"));
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(D::Error::custom)?;
        M::decode(bytes.as_slice()).map_err(D::Error::custom)
    }
}

/// A record file that could not be loaded.
#[derive(Debug)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

impl<R: Record> Store<R> {
    fn read(&self) -> RwLockReadGuard<'_, Inner<R>> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner<R>> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reserves the record's name and id, atomically.
    /// A persistent store over `dir` (created if missing), holding every record found there.
    pub fn open(dir: &Path) -> Result<(Store<R>, Vec<Skipped>), StoreError> {
        let io = |e: std::io::Error| StoreError::Persist {
            what: R::WHAT,
            id: String::new(),
            reason: format!("{}: {e}", dir.display()),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let store = Store {
            dir: Some(dir.to_owned()),
            ..Store::default()
        };
        let mut skipped = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if file_name.starts_with('.') && file_name.ends_with(".tmp") {
                // A temp file of an interrupted write: the record it replaced is whole.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "json") {
                continue; // e.g. a record set aside as corrupt
            }
            let loaded = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<R>(&b).map_err(|e| e.to_string()))
                .and_then(|r| {
                    let file_id = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
                    if r.id() != file_id {
                        return Err(format!("holds id {:?}", r.id()));
                    }
                    let mut g = store.write();
                    if g.names.contains_key(r.name()) {
                        return Err(format!("name {:?} is taken by another record", r.name()));
                    }
                    g.names.insert(r.name().to_owned(), r.id().to_owned());
                    g.by_id.insert(r.id().to_owned(), r);
                    Ok(())
                });
            if let Err(reason) = loaded {
                // Kept for the operator as `<file>.corrupt`, and not read again.
                let mut aside = path.clone().into_os_string();
                aside.push(".corrupt");
                let _ = std::fs::rename(&path, &aside);
                skipped.push(Skipped { path, reason });
            }
        }
        Ok((store, skipped))
    }

    /// Writes `r` to its file (no-op for a memory-only store).
    fn persist(&self, r: &R) -> Result<(), StoreError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let err = |reason: String| StoreError::Persist {
            what: R::WHAT,
            id: r.id().to_owned(),
            reason,
        };
        let data = serde_json::to_vec(r).map_err(|e| err(e.to_string()))?;
        let path = dir.join(format!("{}.json", r.id()));
        let tmp = dir.join(format!(".{}.tmp", r.id()));
        std::fs::write(&tmp, data)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| err(format!("{}: {e}", path.display())))
    }

    fn unpersist(&self, id: &str) {
        if let Some(dir) = &self.dir {
            let path = dir.join(format!("{id}.json"));
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "remove CRI record file");
            }
        }
    }

    pub fn add(&self, r: R) -> Result<(), StoreError> {
        let mut g = self.write();
        if g.by_id.contains_key(r.id()) {
            return Err(StoreError::IdExists {
                what: R::WHAT,
                id: r.id().to_owned(),
            });
        }
        if let Some(owner) = g.names.get(r.name()) {
            return Err(StoreError::NameReserved {
                what: R::WHAT,
                name: r.name().to_owned(),
                owner: owner.clone(),
            });
        }
        self.persist(&r)?;
        g.names.insert(r.name().to_owned(), r.id().to_owned());
        g.by_id.insert(r.id().to_owned(), r);
        Ok(())
    }

    /// The full id for an id or a unique id prefix.
    pub fn resolve(&self, id_or_prefix: &str) -> Result<String, StoreError> {
        let g = self.read();
        if g.by_id.contains_key(id_or_prefix) {
            return Ok(id_or_prefix.to_owned());
        }
        let not_found = || StoreError::NotFound {
            what: R::WHAT,
            id: id_or_prefix.to_owned(),
        };
        if id_or_prefix.is_empty() {
            return Err(not_found());
        }
        let matches: Vec<&String> = g.by_id.keys().filter(|k| k.starts_with(id_or_prefix)).collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(not_found()),
            many => Err(StoreError::Ambiguous {
                what: R::WHAT,
                prefix: id_or_prefix.to_owned(),
                count: many.len(),
            }),
        }
    }

    /// The List* RPCs' id filter on this store (see [`IdFilter`]).
    pub fn id_filter(&self, id_or_prefix: &str) -> IdFilter {
        IdFilter(if id_or_prefix.is_empty() {
            None
        } else {
            Some(self.resolve(id_or_prefix).ok())
        })
    }

    /// A copy of the record (id or unique prefix).
    pub fn get(&self, id_or_prefix: &str) -> Result<R, StoreError> {
        let id = self.resolve(id_or_prefix)?;
        self.read()
            .by_id
            .get(&id)
            .cloned()
            .ok_or(StoreError::NotFound { what: R::WHAT, id })
    }

    /// A copy of the record, or `None` when no record has that id or prefix: for the RPCs that
    /// succeed on an unknown id (Stop*/Remove*, as the CRI API requires).
    pub fn find(&self, id_or_prefix: &str) -> Result<Option<R>, StoreError> {
        match self.get(id_or_prefix) {
            Ok(r) => Ok(Some(r)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Applies `f` to the record under the lock (f must not block).
    pub fn update<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut R) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut g = self.write();
        let r = g.by_id.get_mut(id).ok_or_else(|| StoreError::NotFound {
            what: R::WHAT,
            id: id.to_owned(),
        })?;
        let before = self.dir.as_ref().map(|_| serde_json::to_vec(&*r));
        let out = f(r)?;
        // An update that changed nothing persisted (recovery finding what the record says,
        // a field kept only in memory) writes no file: a full node's restart would
        // otherwise rewrite every record.
        let unchanged = matches!(&before, Some(Ok(b)) if serde_json::to_vec(&*r).is_ok_and(|a| a == *b));
        if !unchanged {
            // Under the lock: files are written in the order the updates happened.
            self.persist(r)?;
        }
        Ok(out)
    }

    /// Removes the record and releases its name; absent is fine (idempotent removes).
    pub fn remove(&self, id: &str) -> Option<R> {
        let mut g = self.write();
        let r = g.by_id.remove(id)?;
        if g.names.get(r.name()).is_some_and(|owner| owner == id) {
            g.names.remove(r.name());
        }
        self.unpersist(id);
        Some(r)
    }

    pub fn list(&self) -> Vec<R> {
        self.read().by_id.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, serde::Serialize, serde::Deserialize)]
    struct R(String, String);
    fn r(id: &str, name: &str) -> R {
        R(id.into(), name.into())
    }
    impl Record for R {
        const WHAT: &'static str = "thing";
        fn id(&self) -> &str {
            &self.0
        }
        fn name(&self) -> &str {
            &self.1
        }
    }

    #[test]
    fn names_are_reserved_and_released() {
        let s = Store::<R>::default();
        s.add(r("abc1", "n")).unwrap();
        assert!(matches!(s.add(r("abc1", "m")), Err(StoreError::IdExists { .. })));
        let e = s.add(r("def", "n")).unwrap_err();
        assert_eq!(e.kind(), Kind::AlreadyExists);
        assert!(e.to_string().contains("abc1"));
        s.remove("abc1");
        s.add(r("def", "n")).unwrap();
        assert!(s.remove("nope").is_none());
    }

    #[test]
    fn prefixes_resolve_when_unique() {
        let s = Store::<R>::default();
        s.add(r("abc1", "a")).unwrap();
        s.add(r("abc2", "b")).unwrap();
        assert_eq!(s.resolve("abc1").unwrap(), "abc1");
        assert!(matches!(
            s.resolve("abc"),
            Err(StoreError::Ambiguous { count: 2, .. })
        ));
        assert!(matches!(s.resolve(""), Err(StoreError::NotFound { .. })));
        s.remove("abc2");
        assert_eq!(s.get("ab").unwrap().0, "abc1");
    }

    #[test]
    fn an_update_that_changes_nothing_writes_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Store::<R>::open(dir.path()).unwrap();
        s.add(r("a1", "one")).unwrap();
        let file = dir.path().join("a1.json");
        std::fs::remove_file(&file).unwrap();
        s.update("a1", |_| Ok(())).unwrap();
        assert!(!file.exists(), "a no-op update rewrote the record");
        s.update("a1", |x| {
            x.1 = "renamed".into();
            Ok(())
        })
        .unwrap();
        assert!(std::fs::read_to_string(&file).unwrap().contains("renamed"));
    }

    #[test]
    fn persistent_store_reloads_records_and_skips_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        let (s, skipped) = Store::<R>::open(dir.path()).unwrap();
        assert!(skipped.is_empty());
        s.add(r("a1", "one")).unwrap();
        s.add(r("b2", "two")).unwrap();
        s.update("a1", |x| {
            x.1 = "uno".into();
            Ok(())
        })
        .unwrap();
        s.add(r("c3", "three")).unwrap();
        s.remove("c3");
        assert!(!dir.path().join("c3.json").exists());
        std::fs::write(dir.path().join("d4.json"), b"{not json").unwrap();
        std::fs::write(dir.path().join("e5.json"), br#"["x9","five"]"#).unwrap();
        std::fs::write(dir.path().join(".f6.tmp"), b"partial").unwrap();

        let (again, skipped) = Store::<R>::open(dir.path()).unwrap();
        let mut names: Vec<String> = again.list().into_iter().map(|x| x.1).collect();
        names.sort();
        assert_eq!(names, vec!["two", "uno"]);
        let mut bad: Vec<String> = skipped
            .iter()
            .map(|k| k.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        bad.sort();
        assert_eq!(bad, vec!["d4.json", "e5.json"], "{skipped:?}");
        assert!(!dir.path().join(".f6.tmp").exists());
        assert!(
            dir.path().join("d4.json.corrupt").exists(),
            "set aside, not deleted"
        );
        assert!(
            Store::<R>::open(dir.path()).unwrap().1.is_empty(),
            "not read again"
        );
        // Names stay reserved across the reload.
        assert!(again.add(r("z", "uno")).is_err());
    }
}

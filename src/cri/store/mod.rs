//! The CRI plugin's in-memory view of pods, containers and images.
//!
//! Each store keeps records by full id, reserves names (a CRI name must be unique), and
//! resolves id prefixes as crictl sends them (a unique prefix matches; several is an
//! error). State changes go through `transition`, which refuses any edge not drawn in the
//! record's state machine: a bug shows as FailedPrecondition, never as a silent state.
//!
//! Locks: one `std::sync::RwLock` per store, held only to read or swap a record; nothing
//! awaits under it.

pub mod container;
pub mod image;
pub mod sandbox;

use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

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
        }
    }
}

/// What a store record must tell the generic store.
pub trait Record: Clone + Send + Sync {
    const WHAT: &'static str;
    fn id(&self) -> &str;
    /// The unique CRI name (`<name>_<namespace>_<uid>_<attempt>` for pods).
    fn name(&self) -> &str;
}

/// A map of records by id with a name index.
pub struct Store<R: Record> {
    inner: RwLock<Inner<R>>,
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
        }
    }
}

impl<R: Record> Store<R> {
    fn read(&self) -> RwLockReadGuard<'_, Inner<R>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner<R>> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves the record's name and id, atomically.
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

    /// A copy of the record (id or unique prefix).
    pub fn get(&self, id_or_prefix: &str) -> Result<R, StoreError> {
        let id = self.resolve(id_or_prefix)?;
        self.read()
            .by_id
            .get(&id)
            .cloned()
            .ok_or(StoreError::NotFound { what: R::WHAT, id })
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
        f(r)
    }

    /// Removes the record and releases its name; absent is fine (idempotent removes).
    pub fn remove(&self, id: &str) -> Option<R> {
        let mut g = self.write();
        let r = g.by_id.remove(id)?;
        if g.names.get(r.name()).is_some_and(|owner| owner == id) {
            g.names.remove(r.name());
        }
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

    #[derive(Clone)]
    struct R(&'static str, &'static str);
    impl Record for R {
        const WHAT: &'static str = "thing";
        fn id(&self) -> &str {
            self.0
        }
        fn name(&self) -> &str {
            self.1
        }
    }

    #[test]
    fn names_are_reserved_and_released() {
        let s = Store::<R>::default();
        s.add(R("abc1", "n")).unwrap();
        assert!(matches!(s.add(R("abc1", "m")), Err(StoreError::IdExists { .. })));
        let e = s.add(R("def", "n")).unwrap_err();
        assert_eq!(e.kind(), Kind::AlreadyExists);
        assert!(e.to_string().contains("abc1"));
        s.remove("abc1");
        s.add(R("def", "n")).unwrap();
        assert!(s.remove("nope").is_none());
    }

    #[test]
    fn prefixes_resolve_when_unique() {
        let s = Store::<R>::default();
        s.add(R("abc1", "a")).unwrap();
        s.add(R("abc2", "b")).unwrap();
        assert_eq!(s.resolve("abc1").unwrap(), "abc1");
        assert!(matches!(
            s.resolve("abc"),
            Err(StoreError::Ambiguous { count: 2, .. })
        ));
        assert!(matches!(s.resolve(""), Err(StoreError::NotFound { .. })));
        s.remove("abc2");
        assert_eq!(s.get("ab").unwrap().0, "abc1");
    }
}

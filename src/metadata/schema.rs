//! The redb tables, the schema version and the migration hook.
//!
//! `meta/schema_version` holds the version of the file. [`migrate`] runs on every open, in
//! one write transaction: it reads the version (absent = 0, a file never initialized),
//! applies each step from there up to [`SCHEMA_VERSION`] in order, and records the new
//! version. A file whose version is above [`SCHEMA_VERSION`] was written by a newer taskd and
//! is refused rather than misread.
//!
//! Adding version N+1: append a step to [`MIGRATIONS`] (it upgrades N → N+1 inside the given
//! transaction), bump [`SCHEMA_VERSION`], document the new tree in `mod.rs`, and add a test
//! that opens a version-N file.

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::error::MetadataError;

/// The schema version this taskd writes.
pub const SCHEMA_VERSION: u64 = 1;

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const NAMESPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("namespaces");
pub(crate) const CONTAINERS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("containers");
pub(crate) const LEASES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("leases");
pub(crate) const LEASE_RESOURCES: TableDefinition<(&str, &str, &str, &str), ()> =
    TableDefinition::new("lease_resources");

pub(crate) const VERSION_KEY: &str = "schema_version";

/// One upgrade step: from version `index` to `index + 1`.
pub type Migration = fn(&WriteTransaction) -> Result<(), redb::Error>;

/// The upgrade steps, in order: `MIGRATIONS[n]` upgrades version n to n + 1.
pub const MIGRATIONS: &[Migration] = &[v0_to_v1];

/// v0 (empty file) → v1: create the tables.
fn v0_to_v1(tx: &WriteTransaction) -> Result<(), redb::Error> {
    tx.open_table(NAMESPACES)?;
    tx.open_table(CONTAINERS)?;
    tx.open_table(LEASES)?;
    tx.open_table(LEASE_RESOURCES)?;
    Ok(())
}

/// What [`migrate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    pub from: u64,
    pub to: u64,
}

/// Reads the file's version and upgrades it to `MIGRATIONS.len()` (the current version).
pub(crate) fn migrate(
    tx: &WriteTransaction,
    path: &std::path::Path,
    migrations: &[Migration],
) -> Result<Migrated, MetadataError> {
    let storage = |source: redb::Error| MetadataError::Storage {
        op: "migrate schema",
        source: Box::new(source),
    };
    let target = migrations.len() as u64;
    let from = {
        let meta = tx.open_table(META).map_err(|e| storage(e.into()))?;
        let v = meta.get(VERSION_KEY).map_err(|e| storage(e.into()))?;
        v.map(|v| v.value()).unwrap_or(0)
    };
    if from > target {
        return Err(MetadataError::SchemaTooNew {
            path: path.to_owned(),
            found: from,
            supported: target,
        });
    }
    for step in &migrations[from as usize..] {
        step(tx).map_err(storage)?;
    }
    if from != target {
        let mut meta = tx.open_table(META).map_err(|e| storage(e.into()))?;
        meta.insert(VERSION_KEY, target).map_err(|e| storage(e.into()))?;
    }
    Ok(Migrated { from, to: target })
}

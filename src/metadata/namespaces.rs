//! The namespaces table: [`NamespaceStore`] on [`Db`]. Deleting a namespace asks every
//! registered [`NamespaceCheck`](super::model::NamespaceCheck) what it still holds.

use std::collections::BTreeMap;

use prost::Message;
use redb::ReadableTable;

use super::NamespaceStore;
use super::error::MetadataError;
use super::model::Namespace;
use super::records::{NamespaceRecord, decode};
use super::schema::NAMESPACES;
use super::store::{Ctx, Db, apply_key, drop_empty, validate_namespace};
use super::validate::validate_labels;

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
            apply_key(&mut updated.labels, &incoming.labels, key);
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
        let checks = self.namespace_checks();
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

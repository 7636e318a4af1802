//! The containers table: [`ContainerStore`] on [`Db`], and the update field mask.

use prost::Message;
use redb::ReadableTable;

use super::ContainerStore;
use super::adaptors::ContainerFields;
use super::error::MetadataError;
use super::model::Container;
use super::records::{ContainerRecord, decode};
use super::schema::CONTAINERS;
use super::store::{Ctx, Db, apply_key, drop_empty, now, scan_namespace, validate_namespace};
use super::validate::validate_container;
use crate::filters;
use crate::identifiers;

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
        full = FULL.iter().map(std::string::ToString::to_string).collect();
        &full[..]
    } else {
        fieldpaths
    };
    for path in paths {
        if let Some(key) = path.strip_prefix("labels.") {
            apply_key(&mut updated.labels, &incoming.labels, key);
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

impl ContainerStore for Db {
    fn get(&self, namespace: &str, id: &str) -> Result<Container, MetadataError> {
        validate_namespace(namespace)?;
        identifiers::validate("container id", id)?;
        self.read("get container", |tx| {
            let t = tx.open_table(CONTAINERS).ctx("get container")?;
            get_container_tx(&t, namespace, id)?.ok_or_else(|| MetadataError::NotFound {
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
            scan_namespace(&t, namespace, op, |id, v| {
                let r: ContainerRecord = decode("container", &format!("{namespace}/{id}"), v)?;
                let c = r.into_container(id);
                if filter.matches(&ContainerFields(&c)) {
                    out.push(c);
                }
                Ok(())
            })?;
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
            let existing =
                get_container_tx(&t, namespace, &container.id)?.ok_or_else(|| MetadataError::NotFound {
                    what: "container",
                    namespace: namespace.to_owned(),
                    id: container.id.clone(),
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

//! The leases tables (leases and their resources): [`LeaseManager`] on [`Db`], with expiry
//! by `containerd.io/gc.expire`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use prost::Message;
use redb::{ReadableTable, WriteTransaction};

use super::LeaseManager;
use super::adaptors::LeaseFields;
use super::error::MetadataError;
use super::model::{LABEL_GC_EXPIRE, Lease, LeaseResource};
use super::records::{LeaseRecord, decode};
use super::schema::{LEASE_RESOURCES, LEASES};
use super::store::{Ctx, Db, drop_empty, now, scan_namespace, validate_namespace};
use super::validate::{parse_expiry, validate_lease_id, validate_lease_labels, validate_resource};
use crate::filters;

/// containerd's `leases.WithRandomID`: `<nanoseconds of the current second>-<8 hex chars>`
/// (the leases service's generated ids, and the pull's lease).
pub fn random_lease_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{nanos}-{}", &rand[..8])
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
            if !delete_lease_tx(tx, namespace, id)? {
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
            scan_namespace(&t, namespace, op, |id, v| {
                let r: LeaseRecord = decode("lease", &format!("{namespace}/{id}"), v)?;
                let l = r.into_lease(id);
                if filter.matches(&LeaseFields(&l)) {
                    out.push(l);
                }
                Ok(())
            })?;
            Ok(out)
        })
    }

    fn add_resource(
        &self,
        namespace: &str,
        lease: &str,
        resource: LeaseResource,
    ) -> Result<(), MetadataError> {
        change_resource(self, "add lease resource", namespace, lease, &resource, true)
    }

    fn delete_resource(
        &self,
        namespace: &str,
        lease: &str,
        resource: LeaseResource,
    ) -> Result<(), MetadataError> {
        change_resource(self, "delete lease resource", namespace, lease, &resource, false)
    }

    fn list_resources(&self, namespace: &str, lease: &str) -> Result<Vec<LeaseResource>, MetadataError> {
        validate_namespace(namespace)?;
        validate_lease_id(lease)?;
        let op = "list lease resources";
        self.read(op, |tx| {
            lease_exists(&tx.open_table(LEASES).ctx(op)?, namespace, lease)?;
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
                if still && delete_lease_tx(tx, &ns, &id)? {
                    removed.push((ns, id));
                }
            }
            Ok(removed)
        })
    }
}

/// Adds (`add`) or removes a resource of an existing lease.
fn change_resource(
    db: &Db,
    op: &'static str,
    namespace: &str,
    lease: &str,
    resource: &LeaseResource,
    add: bool,
) -> Result<(), MetadataError> {
    validate_namespace(namespace)?;
    validate_lease_id(lease)?;
    validate_resource(resource)?;
    db.write(op, |tx| {
        lease_exists(&tx.open_table(LEASES).ctx(op)?, namespace, lease)?;
        let mut t = tx.open_table(LEASE_RESOURCES).ctx(op)?;
        let key = (namespace, lease, resource.r#type.as_str(), resource.id.as_str());
        if add {
            t.insert(key, ()).ctx(op)?;
        } else {
            t.remove(key).ctx(op)?;
        }
        Ok(())
    })
}

//! The snapshots service (`containerd.services.snapshots.v1.Snapshots`): [`Local`] picks the
//! snapshotter named in each request, adds new snapshots to the request's lease and publishes
//! containerd's snapshot events; `grpc.rs` is the thin adapter.
//!
//! - The `snapshotter` field is required: empty is InvalidArgument "snapshotter argument
//!   missing", an unknown or skipped one "snapshotter not loaded: NAME" (as containerd).
//! - Lease (containerd's `containerd-lease` header): Prepare, View and Commit add the new
//!   snapshot as resource `snapshots/<snapshotter>` of that lease; an unknown lease fails the
//!   call before anything is created.
//! - Events after the change is durable: `/snapshot/prepare` (also for View, as containerd),
//!   `/snapshot/commit`, `/snapshot/remove`. A publish failure is logged.

pub mod grpc;
pub mod plugin;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use taskd_proto::containerd::events::{SnapshotCommit, SnapshotPrepare, SnapshotRemove};

use crate::events::{Publisher, topics};
use crate::metadata::{self, LeaseManager, LeaseResource};
use crate::snapshots::{Mount, SnapshotError, Snapshotter};

/// The snapshots service, in process.
#[async_trait]
pub trait Snapshots: Send + Sync {
    /// The snapshotter plugin called `name`.
    fn snapshotter(&self, name: &str) -> Result<Arc<dyn Snapshotter>, SnapshotError>;
    /// Names of the loaded snapshotters.
    fn names(&self) -> Vec<String>;
    #[allow(clippy::too_many_arguments)]
    async fn prepare(
        &self,
        namespace: &str,
        lease: Option<&str>,
        snapshotter: &str,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        readonly: bool,
    ) -> Result<Vec<Mount>, SnapshotError>;
    async fn commit(
        &self,
        namespace: &str,
        lease: Option<&str>,
        snapshotter: &str,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), SnapshotError>;
    async fn remove(&self, namespace: &str, snapshotter: &str, key: &str) -> Result<(), SnapshotError>;
}

/// [`Snapshots`] over the loaded snapshotter plugins.
pub struct Local {
    snapshotters: BTreeMap<String, Arc<dyn Snapshotter>>,
    leases: Arc<dyn LeaseManager>,
    publisher: Arc<dyn Publisher>,
}

impl Local {
    pub fn new(
        snapshotters: Vec<Arc<dyn Snapshotter>>,
        leases: Arc<dyn LeaseManager>,
        publisher: Arc<dyn Publisher>,
    ) -> Self {
        Local {
            snapshotters: snapshotters
                .into_iter()
                .map(|s| (s.name().to_owned(), s))
                .collect(),
            leases,
            publisher,
        }
    }

    async fn lease_add(
        &self,
        namespace: &str,
        lease: Option<&str>,
        sn: &str,
        key: &str,
    ) -> Result<(), SnapshotError> {
        let Some(lease) = lease else { return Ok(()) };
        let (m, ns, lease) = (self.leases.clone(), namespace.to_owned(), lease.to_owned());
        let resource = LeaseResource {
            id: key.to_owned(),
            r#type: format!("snapshots/{sn}"),
        };
        metadata::blocking("add lease resource", move || {
            m.add_resource(&ns, &lease, resource)
        })
        .await?;
        Ok(())
    }

    async fn lease_drop(&self, namespace: &str, lease: Option<&str>, sn: &str, key: &str) {
        let Some(lease) = lease else { return };
        let (m, ns, lease) = (self.leases.clone(), namespace.to_owned(), lease.to_owned());
        let resource = LeaseResource {
            id: key.to_owned(),
            r#type: format!("snapshots/{sn}"),
        };
        if let Err(error) = metadata::blocking("delete lease resource", move || {
            m.delete_resource(&ns, &lease, resource)
        })
        .await
        {
            tracing::warn!(%error, "remove snapshot from lease after a failed call");
        }
    }
}

#[async_trait]
impl Snapshots for Local {
    fn snapshotter(&self, name: &str) -> Result<Arc<dyn Snapshotter>, SnapshotError> {
        if name.is_empty() {
            return Err(SnapshotError::SnapshotterMissing);
        }
        self.snapshotters
            .get(name)
            .cloned()
            .ok_or_else(|| SnapshotError::SnapshotterNotLoaded(name.to_owned()))
    }

    fn names(&self) -> Vec<String> {
        self.snapshotters.keys().cloned().collect()
    }

    async fn prepare(
        &self,
        namespace: &str,
        lease: Option<&str>,
        snapshotter: &str,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        readonly: bool,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let sn = self.snapshotter(snapshotter)?;
        self.lease_add(namespace, lease, snapshotter, key).await?;
        let made = if readonly {
            sn.view(namespace, key, parent, labels).await
        } else {
            sn.prepare(namespace, key, parent, labels).await
        };
        match made {
            Ok(mounts) => {
                self.publisher.publish_logged(
                    namespace,
                    topics::SNAPSHOT_PREPARE,
                    &SnapshotPrepare {
                        key: key.to_owned(),
                        parent: parent.to_owned(),
                        snapshotter: snapshotter.to_owned(),
                    },
                );
                Ok(mounts)
            }
            Err(e) => {
                if !matches!(e, SnapshotError::AlreadyExists { .. }) {
                    self.lease_drop(namespace, lease, snapshotter, key).await;
                }
                Err(e)
            }
        }
    }

    async fn commit(
        &self,
        namespace: &str,
        lease: Option<&str>,
        snapshotter: &str,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), SnapshotError> {
        let sn = self.snapshotter(snapshotter)?;
        self.lease_add(namespace, lease, snapshotter, name).await?;
        if let Err(e) = sn.commit(namespace, name, key, labels).await {
            if !matches!(e, SnapshotError::AlreadyExists { .. }) {
                self.lease_drop(namespace, lease, snapshotter, name).await;
            }
            return Err(e);
        }
        self.publisher.publish_logged(
            namespace,
            topics::SNAPSHOT_COMMIT,
            &SnapshotCommit {
                key: key.to_owned(),
                name: name.to_owned(),
                snapshotter: snapshotter.to_owned(),
            },
        );
        Ok(())
    }

    async fn remove(&self, namespace: &str, snapshotter: &str, key: &str) -> Result<(), SnapshotError> {
        let sn = self.snapshotter(snapshotter)?;
        sn.remove(namespace, key).await?;
        self.publisher.publish_logged(
            namespace,
            topics::SNAPSHOT_REMOVE,
            &SnapshotRemove {
                key: key.to_owned(),
                snapshotter: snapshotter.to_owned(),
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::errdefs::{ErrorKind, Kind};
    use crate::events::EventError;
    use crate::metadata::Db;
    use crate::snapshots::{Backend, FsSnapshotter};

    #[derive(Default)]
    struct Collect(Mutex<Vec<(String, String)>>);

    impl Publisher for Collect {
        fn publish(&self, namespace: &str, topic: &str, _event: prost_types::Any) -> Result<(), EventError> {
            self.0
                .lock()
                .unwrap()
                .push((namespace.to_owned(), topic.to_owned()));
            Ok(())
        }
    }

    #[tokio::test]
    async fn events_leases_and_snapshotter_selection() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&tmp.path().join("meta.redb")).unwrap());
        let native: Arc<dyn Snapshotter> = Arc::new(
            FsSnapshotter::open("native", &tmp.path().join("n"), Backend::Native, db.clone()).unwrap(),
        );
        let events = Arc::new(Collect::default());
        let local = Local::new(vec![native], db.clone(), events.clone());
        assert_eq!(local.names(), vec!["native"]);
        assert_eq!(
            local.snapshotter("").err().unwrap().to_string(),
            "snapshotter argument missing"
        );
        assert_eq!(
            local.snapshotter("overlayfs").err().unwrap().to_string(),
            "snapshotter not loaded: overlayfs"
        );

        LeaseManager::create(&*db, "ns", "l", BTreeMap::new()).unwrap();
        local
            .prepare("ns", Some("l"), "native", "a", "", BTreeMap::new(), false)
            .await
            .unwrap();
        local
            .commit("ns", Some("l"), "native", "A", "a", BTreeMap::new())
            .await
            .unwrap();
        local
            .prepare("ns", None, "native", "v", "A", BTreeMap::new(), true)
            .await
            .unwrap();
        // A failed prepare leaves nothing in the lease.
        let e = local
            .prepare(
                "ns",
                Some("l"),
                "native",
                "bad",
                "missing",
                BTreeMap::new(),
                false,
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind(), Kind::NotFound);
        let res: Vec<String> = LeaseManager::list_resources(&*db, "ns", "l")
            .unwrap()
            .into_iter()
            .map(|r| format!("{}={}", r.r#type, r.id))
            .collect();
        assert_eq!(res, vec!["snapshots/native=A", "snapshots/native=a"]);
        local.remove("ns", "native", "v").await.unwrap();
        let topics: Vec<String> = events.0.lock().unwrap().iter().map(|(_, t)| t.clone()).collect();
        assert_eq!(
            topics,
            vec![
                "/snapshot/prepare",
                "/snapshot/commit",
                "/snapshot/prepare",
                "/snapshot/remove"
            ]
        );
    }
}

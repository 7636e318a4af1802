//! The leases service (`containerd.services.leases.v1.Leases`): [`Local`] over the metadata
//! [`LeaseManager`], and the thin gRPC adapter in `grpc.rs`.
//!
//! - Create without an id generates one the way containerd's `WithRandomID` does
//!   (`<nanoseconds>-<random>`); expiry is the `containerd.io/gc.expire` label (RFC 3339),
//!   enforced by the metadata plugin's expiry task.
//! - Delete asks the garbage collector (`crate::gc`) for a run: with `sync` it runs before
//!   Delete returns (containerd's `SynchronousDelete`), else it is scheduled.

pub mod grpc;
pub mod plugin;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::metadata::{self, Lease, LeaseManager, LeaseResource, MetadataError};

/// The leases service, in process.
#[async_trait]
pub trait Leases: Send + Sync {
    /// `id` empty = generate one.
    async fn create(
        &self,
        namespace: &str,
        id: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Lease, MetadataError>;
    /// `sync`: collect garbage before returning.
    async fn delete(&self, namespace: &str, id: &str, sync: bool) -> Result<(), MetadataError>;
    async fn list(&self, namespace: &str, filters: Vec<String>) -> Result<Vec<Lease>, MetadataError>;
    async fn add_resource(
        &self,
        namespace: &str,
        lease: &str,
        resource: LeaseResource,
    ) -> Result<(), MetadataError>;
    async fn delete_resource(
        &self,
        namespace: &str,
        lease: &str,
        resource: LeaseResource,
    ) -> Result<(), MetadataError>;
    async fn list_resources(&self, namespace: &str, lease: &str)
    -> Result<Vec<LeaseResource>, MetadataError>;
}

/// [`Leases`] over a [`LeaseManager`].
pub struct Local {
    manager: Arc<dyn LeaseManager>,
    gc: Option<Arc<crate::gc::Collector>>,
}

impl Local {
    pub fn new(manager: Arc<dyn LeaseManager>) -> Self {
        Local { manager, gc: None }
    }

    /// Runs (or schedules) a garbage collection after each delete.
    pub fn with_gc(mut self, gc: Option<Arc<crate::gc::Collector>>) -> Self {
        self.gc = gc;
        self
    }

    /// Adds or deletes (`change`) one resource of `lease`, off the async workers.
    async fn change_resource(
        &self,
        op: &'static str,
        namespace: &str,
        lease: &str,
        resource: LeaseResource,
        change: fn(&(dyn LeaseManager + 'static), &str, &str, LeaseResource) -> Result<(), MetadataError>,
    ) -> Result<(), MetadataError> {
        let (m, ns, lease) = (self.manager.clone(), namespace.to_owned(), lease.to_owned());
        metadata::blocking(op, move || change(m.as_ref(), &ns, &lease, resource)).await
    }
}

#[async_trait]
impl Leases for Local {
    async fn create(
        &self,
        namespace: &str,
        id: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Lease, MetadataError> {
        let generated = id.is_empty();
        // A generated id that collides is generated again (a few times).
        let mut attempts = if generated { 3 } else { 1 };
        loop {
            let (m, ns, labels) = (self.manager.clone(), namespace.to_owned(), labels.clone());
            let id = if generated {
                metadata::random_lease_id()
            } else {
                id.to_owned()
            };
            match metadata::blocking("create lease", move || m.create(&ns, &id, labels)).await {
                Err(MetadataError::AlreadyExists { .. }) if attempts > 1 => attempts -= 1,
                other => return other,
            }
        }
    }

    async fn delete(&self, namespace: &str, id: &str, sync: bool) -> Result<(), MetadataError> {
        let (m, ns, id) = (self.manager.clone(), namespace.to_owned(), id.to_owned());
        metadata::blocking("delete lease", move || m.delete(&ns, &id)).await?;
        if let Some(gc) = &self.gc {
            if sync {
                if let Err(error) = gc.collect_async().await {
                    tracing::warn!(%error, "garbage collection after lease delete failed");
                }
            } else {
                gc.schedule();
            }
        }
        Ok(())
    }

    async fn list(&self, namespace: &str, filters: Vec<String>) -> Result<Vec<Lease>, MetadataError> {
        let (m, ns) = (self.manager.clone(), namespace.to_owned());
        metadata::blocking("list leases", move || m.list(&ns, &filters)).await
    }

    async fn add_resource(
        &self,
        namespace: &str,
        lease: &str,
        resource: LeaseResource,
    ) -> Result<(), MetadataError> {
        let add = <dyn LeaseManager>::add_resource;
        self.change_resource("add lease resource", namespace, lease, resource, add)
            .await
    }

    async fn delete_resource(
        &self,
        namespace: &str,
        lease: &str,
        resource: LeaseResource,
    ) -> Result<(), MetadataError> {
        let delete = <dyn LeaseManager>::delete_resource;
        self.change_resource("delete lease resource", namespace, lease, resource, delete)
            .await
    }

    async fn list_resources(
        &self,
        namespace: &str,
        lease: &str,
    ) -> Result<Vec<LeaseResource>, MetadataError> {
        let (m, ns, lease) = (self.manager.clone(), namespace.to_owned(), lease.to_owned());
        metadata::blocking("list lease resources", move || m.list_resources(&ns, &lease)).await
    }
}

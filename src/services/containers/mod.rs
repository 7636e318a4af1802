//! The containers service (`containerd.services.containers.v1.Containers`): [`Local`] is the
//! in-process implementation over the metadata [`ContainerStore`]; `grpc.rs` is the thin
//! transport adapter.
//!
//! Every successful change publishes containerd's event after its transaction committed:
//! `/containers/create` (`ContainerCreate`), `/containers/update` (`ContainerUpdate`),
//! `/containers/delete` (`ContainerDelete`). A publish failure is logged, not returned: the
//! change is durable and the client must not retry it.
//!
//! Store calls are synchronous redb transactions; `Local` runs each on tokio's blocking pool
//! ([`metadata::blocking`]).

pub mod grpc;
pub mod plugin;

use std::sync::Arc;

use async_trait::async_trait;
use taskd_proto::containerd::events::{ContainerCreate, ContainerDelete, ContainerUpdate, container_create};

use crate::events::Publisher;
use crate::metadata::{self, Container, ContainerStore, MetadataError};

/// The containers service, in process (what CRI and other plugins use).
#[async_trait]
pub trait Containers: Send + Sync {
    async fn get(&self, namespace: &str, id: &str) -> Result<Container, MetadataError>;
    async fn list(&self, namespace: &str, filters: Vec<String>) -> Result<Vec<Container>, MetadataError>;
    async fn create(&self, namespace: &str, container: Container) -> Result<Container, MetadataError>;
    async fn update(
        &self,
        namespace: &str,
        container: Container,
        fieldpaths: Vec<String>,
    ) -> Result<Container, MetadataError>;
    async fn delete(&self, namespace: &str, id: &str) -> Result<(), MetadataError>;
}

/// [`Containers`] over a [`ContainerStore`], publishing events.
pub struct Local {
    store: Arc<dyn ContainerStore>,
    publisher: Arc<dyn Publisher>,
}

impl Local {
    pub fn new(store: Arc<dyn ContainerStore>, publisher: Arc<dyn Publisher>) -> Self {
        Local { store, publisher }
    }
}

#[async_trait]
impl Containers for Local {
    async fn get(&self, namespace: &str, id: &str) -> Result<Container, MetadataError> {
        let (store, ns, id) = (self.store.clone(), namespace.to_owned(), id.to_owned());
        metadata::blocking("get container", move || store.get(&ns, &id)).await
    }

    async fn list(&self, namespace: &str, filters: Vec<String>) -> Result<Vec<Container>, MetadataError> {
        let (store, ns) = (self.store.clone(), namespace.to_owned());
        metadata::blocking("list containers", move || store.list(&ns, &filters)).await
    }

    async fn create(&self, namespace: &str, container: Container) -> Result<Container, MetadataError> {
        let (store, ns) = (self.store.clone(), namespace.to_owned());
        let created = metadata::blocking("create container", move || store.create(&ns, container)).await?;
        self.publisher.publish_logged(
            namespace,
            "/containers/create",
            &ContainerCreate {
                id: created.id.clone(),
                image: created.image.clone(),
                runtime: Some(container_create::Runtime {
                    name: created.runtime.name.clone(),
                    options: created.runtime.options.clone(),
                }),
            },
        );
        Ok(created)
    }

    async fn update(
        &self,
        namespace: &str,
        container: Container,
        fieldpaths: Vec<String>,
    ) -> Result<Container, MetadataError> {
        let (store, ns) = (self.store.clone(), namespace.to_owned());
        let updated = metadata::blocking("update container", move || {
            store.update(&ns, container, &fieldpaths)
        })
        .await?;
        self.publisher.publish_logged(
            namespace,
            "/containers/update",
            &ContainerUpdate {
                id: updated.id.clone(),
                image: updated.image.clone(),
                labels: updated.labels.clone().into_iter().collect(),
                snapshot_key: updated.snapshot_key.clone(),
            },
        );
        Ok(updated)
    }

    async fn delete(&self, namespace: &str, id: &str) -> Result<(), MetadataError> {
        let (store, ns, owned) = (self.store.clone(), namespace.to_owned(), id.to_owned());
        metadata::blocking("delete container", move || store.delete(&ns, &owned)).await?;
        self.publisher.publish_logged(
            namespace,
            "/containers/delete",
            &ContainerDelete { id: id.to_owned() },
        );
        Ok(())
    }
}

//! The namespaces service (`containerd.services.namespaces.v1.Namespaces`): [`Local`] over
//! the metadata [`NamespaceStore`], and the thin gRPC adapter in `grpc.rs`.
//!
//! Events (published in the namespace concerned, after the commit): `/namespaces/create`
//! (`NamespaceCreate`), `/namespaces/update` (`NamespaceUpdate`), `/namespaces/delete`
//! (`NamespaceDelete`). List takes containerd's filter syntax over `name` and `labels.KEY`.

pub mod grpc;
pub mod plugin;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use taskd_proto::containerd::events::{NamespaceCreate, NamespaceDelete, NamespaceUpdate};

use crate::events::Publisher;
use crate::filters;
use crate::metadata::{self, MetadataError, Namespace, NamespaceFields, NamespaceStore};

/// The namespaces service, in process.
#[async_trait]
pub trait Namespaces: Send + Sync {
    async fn create(&self, name: &str, labels: BTreeMap<String, String>) -> Result<Namespace, MetadataError>;
    /// A namespace that does not exist yet is returned with no labels (containerd's `Get`
    /// reads the labels bucket and never answers NotFound; `ctr` asks for its namespace's
    /// `containerd.io/defaults/runtime` label before anything created it). Use
    /// [`NamespaceStore::get`] to tell the two apart.
    async fn get(&self, name: &str) -> Result<Namespace, MetadataError>;
    /// `filter`: one containerd filter string (empty = all).
    async fn list(&self, filter: &str) -> Result<Vec<Namespace>, MetadataError>;
    /// Update of a namespace that does not exist is NotFound (containerd would create it).
    async fn update(&self, namespace: Namespace, fieldpaths: Vec<String>)
    -> Result<Namespace, MetadataError>;
    async fn delete(&self, name: &str) -> Result<(), MetadataError>;
}

/// [`Namespaces`] over a [`NamespaceStore`], publishing events.
pub struct Local {
    store: Arc<dyn NamespaceStore>,
    publisher: Arc<dyn Publisher>,
}

impl Local {
    pub fn new(store: Arc<dyn NamespaceStore>, publisher: Arc<dyn Publisher>) -> Self {
        Local { store, publisher }
    }
}

#[async_trait]
impl Namespaces for Local {
    async fn create(&self, name: &str, labels: BTreeMap<String, String>) -> Result<Namespace, MetadataError> {
        let (store, owned) = (self.store.clone(), name.to_owned());
        let ns = metadata::blocking("create namespace", move || store.create(&owned, labels)).await?;
        self.publisher.publish_logged(
            &ns.name,
            "/namespaces/create",
            &NamespaceCreate {
                name: ns.name.clone(),
                labels: ns.labels.clone().into_iter().collect(),
            },
        );
        Ok(ns)
    }

    async fn get(&self, name: &str) -> Result<Namespace, MetadataError> {
        let (store, owned) = (self.store.clone(), name.to_owned());
        match metadata::blocking("get namespace", move || store.get(&owned)).await {
            Err(MetadataError::NotFound { .. }) => Ok(Namespace {
                name: name.to_owned(),
                labels: BTreeMap::new(),
            }),
            other => other,
        }
    }

    async fn list(&self, filter: &str) -> Result<Vec<Namespace>, MetadataError> {
        let filter = filters::parse(&[filter.to_owned()])?;
        let store = self.store.clone();
        let all = metadata::blocking("list namespaces", move || store.list()).await?;
        Ok(all
            .into_iter()
            .filter(|n| filter.matches(&NamespaceFields(n)))
            .collect())
    }

    async fn update(
        &self,
        namespace: Namespace,
        fieldpaths: Vec<String>,
    ) -> Result<Namespace, MetadataError> {
        let store = self.store.clone();
        let ns = metadata::blocking("update namespace", move || store.update(namespace, &fieldpaths)).await?;
        self.publisher.publish_logged(
            &ns.name,
            "/namespaces/update",
            &NamespaceUpdate {
                name: ns.name.clone(),
                labels: ns.labels.clone().into_iter().collect(),
            },
        );
        Ok(ns)
    }

    async fn delete(&self, name: &str) -> Result<(), MetadataError> {
        let (store, owned) = (self.store.clone(), name.to_owned());
        metadata::blocking("delete namespace", move || store.delete(&owned)).await?;
        self.publisher.publish_logged(
            name,
            "/namespaces/delete",
            &NamespaceDelete {
                name: name.to_owned(),
            },
        );
        Ok(())
    }
}

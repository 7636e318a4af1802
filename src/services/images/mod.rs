//! The images service (`containerd.services.images.v1.Images`): [`Local`] over the image
//! [`Store`](crate::images::Store), and the thin gRPC adapter in `grpc.rs`.
//!
//! Changes publish `/images/create`, `/images/update`, `/images/delete` after their
//! transaction committed (a publish failure is logged). Delete asks the garbage collector
//! for a run: at once and awaited with `sync` (containerd's `SynchronousDelete`), else
//! scheduled.
//!
//! The plugin also provides the server-side [`Puller`] (`crate::images::pull`, for the CRI
//! adapter), configured by its table: `max_concurrent_downloads`, `progress_timeout_ms`,
//! `registries."<host>"` (mirrors, plain_http, skip_verify, ca_file, username/password,
//! mirror_credentials), `config_path` (hosts.toml directories), `platforms`,
//! `max_manifest_bytes`, `max_config_bytes`. The registry part is replaceable while
//! running: `Puller::replace_hosts`.

pub mod grpc;
pub mod plugin;

use std::sync::Arc;

use async_trait::async_trait;
use taskd_proto::containerd::services::images::v1::{ImageCreate, ImageDelete, ImageUpdate};

use crate::events::{Publisher, topics};
use crate::gc::Collector;
use crate::images::{self, Image, ImageError, Store};

/// The images service, in process (what CRI and other plugins use).
#[async_trait]
pub trait Images: Send + Sync {
    async fn get(&self, namespace: &str, name: &str) -> Result<Image, ImageError>;
    async fn list(&self, namespace: &str, filters: Vec<String>) -> Result<Vec<Image>, ImageError>;
    async fn create(&self, namespace: &str, image: Image) -> Result<Image, ImageError>;
    async fn update(
        &self,
        namespace: &str,
        image: Image,
        fieldpaths: Vec<String>,
    ) -> Result<Image, ImageError>;
    /// `target`: delete only while the image points at this digest. `sync`: collect garbage
    /// before returning.
    async fn delete(
        &self,
        namespace: &str,
        name: &str,
        target: Option<String>,
        sync: bool,
    ) -> Result<(), ImageError>;
}

/// [`Images`] over the store, publishing events and triggering the garbage collector.
pub struct Local {
    store: Arc<Store>,
    publisher: Arc<dyn Publisher>,
    gc: Option<Arc<Collector>>,
}

impl Local {
    pub fn new(store: Arc<Store>, publisher: Arc<dyn Publisher>, gc: Option<Arc<Collector>>) -> Self {
        Local { store, publisher, gc }
    }
}

#[async_trait]
impl Images for Local {
    async fn get(&self, namespace: &str, name: &str) -> Result<Image, ImageError> {
        let (s, ns, name) = (self.store.clone(), namespace.to_owned(), name.to_owned());
        images::blocking("get image", move || s.get(&ns, &name)).await
    }

    async fn list(&self, namespace: &str, filters: Vec<String>) -> Result<Vec<Image>, ImageError> {
        let (s, ns) = (self.store.clone(), namespace.to_owned());
        images::blocking("list images", move || s.list(&ns, &filters)).await
    }

    async fn create(&self, namespace: &str, image: Image) -> Result<Image, ImageError> {
        let (s, ns) = (self.store.clone(), namespace.to_owned());
        let created = images::blocking("create image", move || s.create(&ns, image)).await?;
        self.publisher.publish_logged(
            namespace,
            topics::IMAGE_CREATE,
            &ImageCreate {
                name: created.name.clone(),
                labels: created.labels.clone().into_iter().collect(),
            },
        );
        Ok(created)
    }

    async fn update(
        &self,
        namespace: &str,
        image: Image,
        fieldpaths: Vec<String>,
    ) -> Result<Image, ImageError> {
        let (s, ns) = (self.store.clone(), namespace.to_owned());
        let updated = images::blocking("update image", move || s.update(&ns, image, &fieldpaths)).await?;
        self.publisher.publish_logged(
            namespace,
            topics::IMAGE_UPDATE,
            &ImageUpdate {
                name: updated.name.clone(),
                labels: updated.labels.clone().into_iter().collect(),
            },
        );
        Ok(updated)
    }

    async fn delete(
        &self,
        namespace: &str,
        name: &str,
        target: Option<String>,
        sync: bool,
    ) -> Result<(), ImageError> {
        let (s, ns, n) = (self.store.clone(), namespace.to_owned(), name.to_owned());
        images::blocking("delete image", move || s.delete(&ns, &n, target.as_deref())).await?;
        self.publisher.publish_logged(
            namespace,
            topics::IMAGE_DELETE,
            &ImageDelete {
                name: name.to_owned(),
            },
        );
        if let Some(gc) = &self.gc {
            if sync {
                if let Err(error) = gc.collect_async().await {
                    tracing::warn!(%error, "garbage collection after image delete failed");
                }
            } else {
                gc.schedule();
            }
        }
        Ok(())
    }
}

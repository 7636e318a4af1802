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

use std::sync::Arc;

use async_trait::async_trait;
use taskd_proto::containerd::services::images::v1::{ImageCreate, ImageDelete, ImageUpdate};

use crate::events::{self, Publisher, topics};
use crate::gc::Collector;
use crate::images::pull::{PullConfig, Puller};
use crate::images::{self, Image, ImageError, Store};
use crate::metadata::{Db, LeaseManager};
use crate::plugin::{Instance, PluginError, PluginType, Registration, ids};

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

    fn publish<M: prost::Name>(&self, namespace: &str, topic: &str, msg: &M) {
        if let Err(error) = self.publisher.publish(namespace, topic, events::any(msg)) {
            tracing::warn!(%error, namespace, topic, "publish event");
        }
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
        self.publish(
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
        self.publish(
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
        self.publish(
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

/// `io.containerd.service.v1.images-service`: provides `dyn Images` (and the store).
pub fn registration() -> Registration {
    Registration::new(PluginType::Service, ids::IMAGES_SERVICE, |cx| async move {
        let config: PullConfig = cx.config()?;
        let db = cx.get::<Db>()?;
        let publisher = cx.get::<dyn Publisher>()?;
        let gc = cx.get_optional::<Collector>();
        let content = cx.get::<crate::content::Store>()?;
        let leases = cx.get::<dyn LeaseManager>()?;
        let store = images::blocking("open", move || Store::open(db))
            .await
            .map_err(PluginError::init)?;
        let store = Arc::new(store);
        let unpacker = if config.snapshotter.is_empty() {
            None
        } else {
            let all = cx.get_all::<dyn crate::snapshots::Snapshotter>();
            let chosen = all
                .iter()
                .find(|(_, s)| s.name() == config.snapshotter)
                .or_else(|| all.first())
                .map(|(_, s)| s.clone());
            match (chosen, cx.get_optional::<dyn crate::diff::Differ>()) {
                (Some(snapshotter), Some(differ)) => Some(crate::images::unpack::Unpacker::new(
                    snapshotter,
                    differ,
                    leases.clone(),
                )),
                _ => None,
            }
        };
        let unpack_into = unpacker
            .as_ref()
            .map(|u| u.snapshotter.name().to_owned())
            .unwrap_or_default();
        let puller =
            Arc::new(Puller::new(content, store.clone(), leases, config.clone()).with_unpacker(unpacker));
        let local: Arc<dyn Images> = Arc::new(Local::new(store.clone(), publisher, gc));
        Ok(Instance::new()
            .with::<Store>(store)
            .with::<Puller>(puller.clone())
            .with::<dyn Images>(local)
            .export(
                "max_concurrent_downloads",
                config.max_concurrent_downloads.to_string(),
            )
            .export("unpack_snapshotter", unpack_into)
            .export("platforms", puller.matcher().describe())
            .export(
                "config_path",
                config
                    .config_path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            )
            .export(
                "registries",
                config.registries.keys().cloned().collect::<Vec<_>>().join(","),
            ))
    })
    .requires(&[
        PluginType::Metadata,
        PluginType::Event,
        PluginType::Internal,
        PluginType::Content,
        PluginType::Snapshotter,
        PluginType::Diff,
    ])
    .config::<PullConfig>()
}

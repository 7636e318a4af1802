//! Wiring of the images service: the in-process `Local` (with the image store and the
//! puller) and its gRPC face.

use std::sync::Arc;

use super::grpc::Service;
use super::{Images, Local};
use crate::events::Publisher;
use crate::gc::Collector;
use crate::images::pull::{PullConfig, Puller};
use crate::images::{self, Store};
use crate::metadata::{Db, LeaseManager};
use crate::plugin::{Instance, PluginError, PluginType, Registration, ids};

/// The plugins this module registers; `builtins.rs` lists them.
pub fn registrations() -> Vec<Registration> {
    vec![local(), grpc()]
}

/// `io.containerd.service.v1.images-service`: provides `dyn Images` (and the store).
fn local() -> Registration {
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

/// `io.containerd.grpc.v1.images`.
fn grpc() -> Registration {
    crate::server::adapter_registration::<dyn Images, _>(ids::IMAGES, Service::new)
}

//! Wiring of the `io.containerd.cri.v1.cri` plugin: builds the CRI service from the
//! services it finds loaded, recovers pods and containers, and starts the streaming server
//! and the event loop.

use std::sync::Arc;

use crate::cri::backend::contract::RootfsProvider;
use crate::cri::backend::images::ImageSide;
use crate::cri::backend::tasks::TaskRuntime;
use crate::cri::config::CriConfig;
use crate::cri::service::CriService;
use crate::cri::{container_events, events, features, instrument, recover, server, state_metrics, streaming};
use crate::plugin::{Instance, PluginError, PluginType, Registration, ids};

/// The plugins this module registers; `builtins.rs` lists them.
pub fn registrations() -> Vec<Registration> {
    vec![registration()]
}

/// `io.containerd.cri.v1.cri`: the CRI services on taskd's socket.
fn registration() -> Registration {
    Registration::new(PluginType::Cri, ids::CRI, |cx| async move {
        let config: CriConfig = cx.config::<CriConfig>()?.with_default_runtimes();
        config.validate().map_err(PluginError::init)?;
        let instrument = Arc::new(instrument::Instrument::register(cx.metrics()).map_err(PluginError::init)?);
        let events = container_events::ContainerEvents::new().map_err(PluginError::init)?;
        events.register(cx.metrics()).map_err(PluginError::init)?;
        let mut service = CriService::new(config.clone(), cx.root(), cx.state(), events);
        // Probed while recovery runs (a `runc features` per handler: a fork and exec).
        let probe = features::probe(&config);
        // The image side (images service + server-side pull + the snapshotter it unpacks
        // into + content): the image RPCs and the containers' root file systems.
        let image_side = match (
            cx.get_optional::<dyn crate::services::images::Images>(),
            cx.get_optional::<crate::images::pull::Puller>(),
            cx.get_optional::<crate::content::Store>(),
        ) {
            (Some(images), Some(puller), Some(content)) => {
                ImageSide::new(images, puller, content, cx.state().join("image-views"))
                    .map(Arc::new)
            }
            _ => None,
        };
        if let Some(side) = &image_side {
            service.image_backend = Some(side.clone());
        }
        // The pod/container runtime needs the tasks and containers services plus a rootfs
        // provider (images + snapshots); when one is missing the RPCs say so.
        let tasks = cx.get_optional::<dyn crate::services::tasks::Tasks>();
        let containers = cx.get_optional::<dyn crate::services::containers::Containers>();
        let rootfs = image_side.map(|s| s as Arc<dyn RootfsProvider>);
        let mut missing = Vec::new();
        match (tasks, containers, rootfs) {
            (Some(t), Some(c), Some(r)) => {
                let rt = Arc::new(TaskRuntime::new(t, c, r));
                service.controller = Some(rt.clone());
                service.runner = Some(rt);
            }
            (t, c, r) => {
                if t.is_none() {
                    missing.push("tasks");
                }
                if c.is_none() {
                    missing.push("containers");
                }
                if r.is_none() {
                    missing.push("images service with an unpack snapshotter (rootfs)");
                }
                tracing::info!(missing = %missing.join(", "), "CRI pods and containers unavailable");
            }
        }
        service.metrics.register(cx.metrics()).map_err(PluginError::init)?;
        // Bound before the service is shared, so the RPCs know its URL.
        let stream_server = streaming::StreamServer::bind(&config).map_err(PluginError::init)?;
        service.streaming = Some(stream_server.front());
        for s in service.open_stores().map_err(PluginError::init)? {
            tracing::error!(file = %s.path.display(), reason = %s.reason, "CRI record skipped: cannot be loaded");
        }
        let service = Arc::new(service);
        state_metrics::StateCollector::register(Arc::downgrade(&service), cx.metrics()).map_err(PluginError::init)?;
        let api = Arc::new(server::CriApi::new(service.clone(), instrument.clone()));
        let subscriber = cx.get::<dyn crate::events::Subscriber>()?;
        // Subscribed before recovery, so an exit during recovery is not missed.
        let event_loop = events::spawn(service.clone(), subscriber.as_ref()).map_err(PluginError::init)?;
        let (report, handler_features) = tokio::join!(recover::recover(&service), probe);
        let _ = service.handler_features.set(handler_features);
        let stream_url = stream_server.front().base_url.clone();
        let stream_server = stream_server.start(service.clone());
        let calls = service.clone();
        if report.sandboxes + report.containers > 0 {
            tracing::info!(?report, "CRI pods and containers recovered");
        }
        instrument.set_ready();
        Ok(Instance::new()
            .with::<dyn crate::server::GrpcService>(api)
            .with::<CriService>(service)
            .export("sandbox_image", config.sandbox_image.clone())
            .export("cni_conf_dir", config.cni.conf_dir.display().to_string())
            .export(
                "pods",
                if missing.is_empty() {
                    "ok".to_owned()
                } else {
                    format!("unavailable: needs {}", missing.join(", "))
                },
            )
            .export(
                "cgroup_driver",
                format!("{:?}", config.cgroup_driver).to_lowercase(),
            )
            .export("stream_server", stream_url)
            .on_shutdown(move || async move {
                stream_server.stop().await;
                // Calls still running (their callers gone with the gRPC server) end or roll
                // back; what outlives this is recovered at the next start.
                calls.detached.drain(std::time::Duration::from_secs(10)).await;
                event_loop.abort();
            }))
    })
    .requires(&[PluginType::Event, PluginType::Service, PluginType::Content])
    .config::<CriConfig>()
    .validate(CriConfig::check_table)
}

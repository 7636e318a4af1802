//! The CRI adapter: kubelet's RuntimeService and ImageService (`runtime.v1`) on taskd's
//! socket, served by the `io.containerd.cri.v1.cri` plugin.
//!
//! ```text
//! kubelet ──CRI gRPC──▶ server::{RuntimeApi, ImageApi}     (tonic traits; one line per RPC)
//!                          │ every RPC goes through instrument::Instrument::call:
//!                          │   init gate (Unavailable until the plugin is ready) → span →
//!                          │   log → metrics → error → Status (server::status::to_status)
//!                          ▼
//!                 server/<noun>/<rpc>.rs   one file per RPC, on CriService
//!                          │
//!      ┌───────────────────┼───────────────────────┬───────────────────┐
//!      ▼                   ▼                       ▼                   ▼
//!  store/ (pods,      network/ (CNI chains,   io/ (CRI log files)   in-process Locals
//!  containers,        pinned netns)                                  (tasks, containers,
//!  images: state                                                     images, snapshots;
//!  machines)                                                         namespace k8s.io)
//! ```
//!
//! The adapter never talks to shims: pods and containers become tasks through the tasks
//! service's `Local`, as containerd's CRI plugin does with in-memory services. Images and
//! root file systems come from `image_backend::ImageSide` (images service, server-side
//! pull, content store, the snapshotter pulls unpack into). When a service is not loaded,
//! the RPCs that need it answer Unimplemented naming what is missing.

pub mod config;
pub mod container_events;
pub mod controller;
pub mod detach;
pub mod events;
pub mod features;
pub mod image_backend;
pub mod instrument;
pub mod io;
pub mod metrics;
pub mod network;
pub mod podfiles;
pub mod podns;
pub mod recover;
pub mod reference;
pub mod remap;
pub mod server;
pub mod service;
pub mod spec;
pub mod stats;
pub mod store;
pub mod streaming;
pub mod task_runtime;
pub mod userns;

use std::sync::Arc;

use crate::errdefs::{ErrorKind, Kind};
use crate::plugin::{Instance, PluginError, PluginType, Registration, ids};

pub use config::CriConfig;
pub use service::CriService;

/// The containerd namespace every CRI object lives in.
pub const NAMESPACE: &str = "k8s.io";

/// Errors of the CRI adapter. Lower layers keep their kind through `#[from]`.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("the CRI plugin is not ready yet (still initializing)")]
    NotReady,
    #[error("{rpc} is not implemented yet: {missing}")]
    Unimplemented {
        rpc: &'static str,
        missing: &'static str,
    },
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("no runtime handler {handler:?} is configured (configured: {known})")]
    UnknownHandler { handler: String, known: String },
    #[error("{what}: {reason}")]
    FailedPrecondition { what: String, reason: String },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Cni(#[from] network::CniError),
    #[error(transparent)]
    Netns(#[from] network::NetnsError),
    #[error(transparent)]
    Log(#[from] io::LogError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error(transparent)]
    PodFiles(#[from] podfiles::PodFilesError),
    #[error(transparent)]
    PodNs(#[from] podns::PodNsError),
    #[error(transparent)]
    Reference(#[from] reference::ReferenceError),
    #[error(transparent)]
    Streaming(#[from] streaming::StreamingError),
    #[error(transparent)]
    Userns(#[from] userns::UsernsError),
    /// A failure of a service the adapter calls (tasks, containers, images, snapshots);
    /// keeps that service's kind.
    #[error("{op}: {cause}")]
    Backend {
        op: &'static str,
        cause: Box<dyn ErrorKind + Send + Sync>,
    },
    #[error("read the host's mount table (/proc/self/mountinfo): {0}")]
    HostMounts(#[source] procfs::ProcError),
    #[error("{what} timed out after {after:?}")]
    Timeout {
        what: String,
        after: std::time::Duration,
    },
    #[error("{error}; rollback also failed: {cleanup}")]
    Rollback {
        error: Box<CriError>,
        cleanup: Box<CriError>,
    },
}

/// Runs blocking work (mounts, namespaces, file trees) off the async workers; a panic in it
/// is a FailedPrecondition naming `what`.
pub async fn blocking<T, E>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, CriError>
where
    T: Send + 'static,
    E: Into<CriError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Into::into),
        Err(e) => Err(CriError::FailedPrecondition {
            what: what.into(),
            reason: e.to_string(),
        }),
    }
}

impl CriError {
    /// Wraps an error of another service, keeping its kind.
    pub fn backend(op: &'static str, e: impl ErrorKind + Send + Sync + 'static) -> CriError {
        CriError::Backend {
            op,
            cause: Box::new(e),
        }
    }
}

impl ErrorKind for CriError {
    fn kind(&self) -> Kind {
        match self {
            CriError::NotReady => Kind::Unavailable,
            CriError::Unimplemented { .. } => Kind::NotImplemented,
            CriError::InvalidArgument { .. } | CriError::UnknownHandler { .. } => Kind::InvalidArgument,
            CriError::FailedPrecondition { .. } => Kind::FailedPrecondition,
            CriError::Store(e) => e.kind(),
            CriError::Cni(e) => e.kind(),
            CriError::Netns(e) => e.kind(),
            CriError::Log(e) => e.kind(),
            CriError::Config(e) => e.kind(),
            CriError::Spec(e) => e.kind(),
            CriError::PodFiles(e) => e.kind(),
            CriError::PodNs(e) => e.kind(),
            CriError::Reference(e) => e.kind(),
            CriError::Streaming(e) => e.kind(),
            CriError::Userns(e) => e.kind(),
            CriError::Backend { cause, .. } => cause.kind(),
            CriError::Rollback { error, .. } => error.kind(),
            CriError::Timeout { .. } => Kind::DeadlineExceeded,
            CriError::HostMounts(_) => Kind::Internal,
        }
    }
}

/// `io.containerd.cri.v1.cri`: the CRI services on taskd's socket.
pub fn registration() -> Registration {
    Registration::new(PluginType::Cri, ids::CRI, |cx| async move {
        let config: CriConfig = cx.config::<CriConfig>()?.with_default_runtimes();
        config.validate().map_err(PluginError::init)?;
        let instrument = Arc::new(instrument::Instrument::register(cx.metrics()).map_err(PluginError::init)?);
        let events = container_events::ContainerEvents::new().map_err(PluginError::init)?;
        events.register(cx.metrics()).map_err(PluginError::init)?;
        let mut service = CriService::new(config.clone(), cx.root(), cx.state(), events);
        service.handler_features = features::probe(&config).await;
        // The image side (images service + server-side pull + the snapshotter it unpacks
        // into + content): the image RPCs and the containers' root file systems.
        let image_side = match (
            cx.get_optional::<dyn crate::services::images::Images>(),
            cx.get_optional::<crate::images::pull::Puller>(),
            cx.get_optional::<crate::content::Store>(),
        ) {
            (Some(images), Some(puller), Some(content)) => {
                image_backend::ImageSide::new(images, puller, content, cx.state().join("image-views"))
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
        let rootfs = image_side.map(|s| s as Arc<dyn task_runtime::RootfsProvider>);
        let mut missing = Vec::new();
        match (tasks, containers, rootfs) {
            (Some(t), Some(c), Some(r)) => {
                let rt = Arc::new(task_runtime::TaskRuntime::new(t, c, r));
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
        metrics::StateCollector::register(Arc::downgrade(&service), cx.metrics()).map_err(PluginError::init)?;
        let api = Arc::new(server::CriApi::new(service.clone(), instrument.clone()));
        let subscriber = cx.get::<dyn crate::events::Subscriber>()?;
        // Subscribed before recovery, so an exit during recovery is not missed.
        let event_loop = events::spawn(service.clone(), subscriber.as_ref()).map_err(PluginError::init)?;
        let report = recover::recover(&service).await;
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
                event_loop.abort()
            }))
    })
    .requires(&[PluginType::Event, PluginType::Service, PluginType::Content])
    .config::<CriConfig>()
    .validate(CriConfig::check_table)
}

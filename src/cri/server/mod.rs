//! The CRI gRPC surface: [`CriApi`] implements kubelet's `RuntimeService` and
//! `ImageService` (message limits from `[grpc]`). Each method is one line: `Instrument::call(operation, handler, the
//! handler in server/<noun>/<rpc>.rs)`; the calls that change state run through
//! `CriService::detached` or their `*_detached` twin (cri/detach.rs), in a task the caller
//! cannot cut short. Nothing else happens here: no conversion beyond
//! unwrapping the request, no error mapping (the instrument does it).
//!
//! ```text
//! server/
//!   runtime/    version, status, runtime_config, update_runtime_config
//!   sandbox/    run, stop, remove, status, list            (as the tasks service lands)
//!   container/  create, start, stop, remove, status, list  (as the tasks service lands)
//!   image/      pull, list, status, remove, fs_info        (as the images service lands)
//!   unimplemented.rs  every RPC not yet here, with the reason it answers
//! ```

pub mod container;
pub mod detached;
pub mod image;
pub mod runtime;
pub mod sandbox;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use taskd_proto::cri::v1 as cri;
use taskd_proto::cri::v1::image_service_server::{ImageService, ImageServiceServer};
use taskd_proto::cri::v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use tonic::{Request, Response, Status};

use super::instrument::Instrument;
use crate::cri::error::CriError;
use crate::cri::service::CriService;
use crate::cri::store::container::Container;
use crate::cri::store::sandbox::Sandbox;
use crate::server::{GrpcLimits, GrpcService, limited};

type Rpc<T> = Result<Response<T>, Status>;
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Items per message of the Stream* RPCs (each streams its List twin's answer in chunks).
pub const STREAM_CHUNK: usize = 100;

/// A List answer as a stream of messages of at most [`STREAM_CHUNK`] items each.
pub fn chunked<T: Clone, R: Send + 'static>(items: Vec<T>, wrap: impl Fn(Vec<T>) -> R) -> BoxStream<R> {
    let messages: Vec<Result<R, Status>> = items.chunks(STREAM_CHUNK).map(|c| Ok(wrap(c.to_vec()))).collect();
    Box::pin(futures::stream::iter(messages))
}

/// FailedPrecondition for a call that container `c`'s state does not allow: the reason reads
/// "is <STATE><rest>" (`rest` e.g. ", not running").
pub fn container_state_error(c: &Container, rest: &str) -> CriError {
    CriError::FailedPrecondition {
        what: format!("container {}", c.id),
        reason: format!("is {}{rest}", c.state.as_str()),
    }
}

/// Containers are created and started, and ports forwarded, only in a ready pod sandbox.
pub fn ensure_ready(s: &Sandbox) -> Result<(), CriError> {
    if s.state.is_ready() {
        return Ok(());
    }
    Err(CriError::FailedPrecondition {
        what: format!("pod sandbox {}", s.id),
        reason: format!("is {}, not ready", s.state.as_str()),
    })
}

/// The tonic face of the CRI plugin.
#[derive(Clone)]
pub struct CriApi {
    svc: Arc<CriService>,
    inst: Arc<Instrument>,
}

impl CriApi {
    pub fn new(svc: Arc<CriService>, inst: Arc<Instrument>) -> CriApi {
        CriApi { svc, inst }
    }
}

impl GrpcService for CriApi {
    fn register(&self, routes: &mut tonic::service::RoutesBuilder, limits: GrpcLimits) {
        routes.add_service(limited!(RuntimeServiceServer::new(self.clone()), limits));
        routes.add_service(limited!(ImageServiceServer::new(self.clone()), limits));
    }
}

impl CriApi {
    /// The runtime handler a pod was run with (as RunPodSandbox named it): the label of its
    /// containers' CreateContainer and StartContainer metrics. "" when the pod is unknown.
    fn pod_handler(&self, sandbox_id: &str) -> String {
        self.svc
            .sandboxes
            .find(sandbox_id)
            .ok()
            .flatten()
            .map(|s| s.runtime_handler)
            .unwrap_or_default()
    }
}

#[tonic::async_trait]
impl RuntimeService for CriApi {
    async fn version(&self, r: Request<cri::VersionRequest>) -> Rpc<cri::VersionResponse> {
        self.inst
            .call("Version", "", self.svc.version(r.into_inner()))
            .await
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<cri::RunPodSandboxRequest>,
    ) -> Rpc<cri::RunPodSandboxResponse> {
        let h = r.get_ref().runtime_handler.clone();
        self.inst
            .call(
                "RunPodSandbox",
                &h,
                self.svc.clone().run_pod_sandbox_detached(r.into_inner()),
            )
            .await
    }

    async fn stop_pod_sandbox(
        &self,
        r: Request<cri::StopPodSandboxRequest>,
    ) -> Rpc<cri::StopPodSandboxResponse> {
        self.inst
            .call(
                "StopPodSandbox",
                "",
                self.svc.clone().detached("StopPodSandbox", |s| async move {
                    s.stop_pod_sandbox(r.into_inner()).await
                }),
            )
            .await
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<cri::RemovePodSandboxRequest>,
    ) -> Rpc<cri::RemovePodSandboxResponse> {
        self.inst
            .call(
                "RemovePodSandbox",
                "",
                self.svc.clone().detached("RemovePodSandbox", |s| async move {
                    s.remove_pod_sandbox(r.into_inner()).await
                }),
            )
            .await
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<cri::PodSandboxStatusRequest>,
    ) -> Rpc<cri::PodSandboxStatusResponse> {
        self.inst
            .call(
                "PodSandboxStatus",
                "",
                self.svc.pod_sandbox_status(r.into_inner()),
            )
            .await
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<cri::ListPodSandboxRequest>,
    ) -> Rpc<cri::ListPodSandboxResponse> {
        self.inst
            .call("ListPodSandbox", "", self.svc.list_pod_sandbox(r.into_inner()))
            .await
    }

    type StreamPodSandboxesStream = BoxStream<cri::StreamPodSandboxesResponse>;
    async fn stream_pod_sandboxes(
        &self,
        r: Request<cri::StreamPodSandboxesRequest>,
    ) -> Rpc<Self::StreamPodSandboxesStream> {
        self.inst
            .call(
                "StreamPodSandboxes",
                "",
                self.svc.stream_pod_sandboxes(r.into_inner()),
            )
            .await
    }

    async fn create_container(
        &self,
        r: Request<cri::CreateContainerRequest>,
    ) -> Rpc<cri::CreateContainerResponse> {
        let h = self.pod_handler(&r.get_ref().pod_sandbox_id);
        self.inst
            .call(
                "CreateContainer",
                &h,
                self.svc.clone().create_container_detached(r.into_inner()),
            )
            .await
    }

    async fn start_container(
        &self,
        r: Request<cri::StartContainerRequest>,
    ) -> Rpc<cri::StartContainerResponse> {
        let h = self
            .svc
            .containers
            .find(&r.get_ref().container_id)
            .ok()
            .flatten()
            .map(|c| self.pod_handler(&c.sandbox_id))
            .unwrap_or_default();
        self.inst
            .call(
                "StartContainer",
                &h,
                self.svc.clone().start_container_detached(r.into_inner()),
            )
            .await
    }

    async fn stop_container(&self, r: Request<cri::StopContainerRequest>) -> Rpc<cri::StopContainerResponse> {
        self.inst
            .call(
                "StopContainer",
                "",
                self.svc.clone().detached("StopContainer", |s| async move {
                    s.stop_container(r.into_inner()).await
                }),
            )
            .await
    }

    async fn remove_container(
        &self,
        r: Request<cri::RemoveContainerRequest>,
    ) -> Rpc<cri::RemoveContainerResponse> {
        self.inst
            .call(
                "RemoveContainer",
                "",
                self.svc.clone().detached("RemoveContainer", |s| async move {
                    s.remove_container(r.into_inner()).await
                }),
            )
            .await
    }

    async fn list_containers(
        &self,
        r: Request<cri::ListContainersRequest>,
    ) -> Rpc<cri::ListContainersResponse> {
        self.inst
            .call("ListContainers", "", self.svc.list_containers(r.into_inner()))
            .await
    }

    type StreamContainersStream = BoxStream<cri::StreamContainersResponse>;
    async fn stream_containers(
        &self,
        r: Request<cri::StreamContainersRequest>,
    ) -> Rpc<Self::StreamContainersStream> {
        self.inst
            .call("StreamContainers", "", self.svc.stream_containers(r.into_inner()))
            .await
    }

    async fn container_status(
        &self,
        r: Request<cri::ContainerStatusRequest>,
    ) -> Rpc<cri::ContainerStatusResponse> {
        self.inst
            .call("ContainerStatus", "", self.svc.container_status(r.into_inner()))
            .await
    }

    async fn update_container_resources(
        &self,
        r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Rpc<cri::UpdateContainerResourcesResponse> {
        self.inst
            .call(
                "UpdateContainerResources",
                "",
                self.svc.update_container_resources(r.into_inner()),
            )
            .await
    }

    async fn reopen_container_log(
        &self,
        r: Request<cri::ReopenContainerLogRequest>,
    ) -> Rpc<cri::ReopenContainerLogResponse> {
        self.inst
            .call(
                "ReopenContainerLog",
                "",
                self.svc.reopen_container_log(r.into_inner()),
            )
            .await
    }

    async fn exec_sync(&self, r: Request<cri::ExecSyncRequest>) -> Rpc<cri::ExecSyncResponse> {
        self.inst
            .call(
                "ExecSync",
                "",
                self.svc.clone().exec_sync_detached(r.into_inner()),
            )
            .await
    }

    async fn exec(&self, r: Request<cri::ExecRequest>) -> Rpc<cri::ExecResponse> {
        self.inst.call("Exec", "", self.svc.exec(r.into_inner())).await
    }

    async fn attach(&self, r: Request<cri::AttachRequest>) -> Rpc<cri::AttachResponse> {
        self.inst
            .call("Attach", "", self.svc.attach(r.into_inner()))
            .await
    }

    async fn port_forward(&self, r: Request<cri::PortForwardRequest>) -> Rpc<cri::PortForwardResponse> {
        self.inst
            .call("PortForward", "", self.svc.port_forward(r.into_inner()))
            .await
    }

    async fn container_stats(
        &self,
        r: Request<cri::ContainerStatsRequest>,
    ) -> Rpc<cri::ContainerStatsResponse> {
        self.inst
            .call("ContainerStats", "", self.svc.container_stats(r.into_inner()))
            .await
    }

    async fn list_container_stats(
        &self,
        r: Request<cri::ListContainerStatsRequest>,
    ) -> Rpc<cri::ListContainerStatsResponse> {
        self.inst
            .call(
                "ListContainerStats",
                "",
                self.svc.list_container_stats(r.into_inner()),
            )
            .await
    }

    type StreamContainerStatsStream = BoxStream<cri::StreamContainerStatsResponse>;
    async fn stream_container_stats(
        &self,
        r: Request<cri::StreamContainerStatsRequest>,
    ) -> Rpc<Self::StreamContainerStatsStream> {
        self.inst
            .call(
                "StreamContainerStats",
                "",
                self.svc.stream_container_stats(r.into_inner()),
            )
            .await
    }

    async fn pod_sandbox_stats(
        &self,
        r: Request<cri::PodSandboxStatsRequest>,
    ) -> Rpc<cri::PodSandboxStatsResponse> {
        self.inst
            .call("PodSandboxStats", "", self.svc.pod_sandbox_stats(r.into_inner()))
            .await
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Rpc<cri::ListPodSandboxStatsResponse> {
        self.inst
            .call(
                "ListPodSandboxStats",
                "",
                self.svc.list_pod_sandbox_stats(r.into_inner()),
            )
            .await
    }

    type StreamPodSandboxStatsStream = BoxStream<cri::StreamPodSandboxStatsResponse>;
    async fn stream_pod_sandbox_stats(
        &self,
        r: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> Rpc<Self::StreamPodSandboxStatsStream> {
        self.inst
            .call(
                "StreamPodSandboxStats",
                "",
                self.svc.stream_pod_sandbox_stats(r.into_inner()),
            )
            .await
    }

    async fn update_runtime_config(
        &self,
        r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Rpc<cri::UpdateRuntimeConfigResponse> {
        self.inst
            .call(
                "UpdateRuntimeConfig",
                "",
                self.svc.update_runtime_config(r.into_inner()),
            )
            .await
    }

    async fn status(&self, r: Request<cri::StatusRequest>) -> Rpc<cri::StatusResponse> {
        self.inst
            .call("Status", "", self.svc.status(r.into_inner()))
            .await
    }

    async fn checkpoint_container(
        &self,
        r: Request<cri::CheckpointContainerRequest>,
    ) -> Rpc<cri::CheckpointContainerResponse> {
        self.inst
            .call(
                "CheckpointContainer",
                "",
                self.svc.checkpoint_container(r.into_inner()),
            )
            .await
    }

    type GetContainerEventsStream = BoxStream<cri::ContainerEventResponse>;
    async fn get_container_events(
        &self,
        r: Request<cri::GetEventsRequest>,
    ) -> Rpc<Self::GetContainerEventsStream> {
        self.inst
            .call(
                "GetContainerEvents",
                "",
                self.svc.get_container_events(r.into_inner()),
            )
            .await
    }

    async fn list_metric_descriptors(
        &self,
        r: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Rpc<cri::ListMetricDescriptorsResponse> {
        self.inst
            .call(
                "ListMetricDescriptors",
                "",
                self.svc.list_metric_descriptors(r.into_inner()),
            )
            .await
    }

    async fn list_pod_sandbox_metrics(
        &self,
        r: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Rpc<cri::ListPodSandboxMetricsResponse> {
        self.inst
            .call(
                "ListPodSandboxMetrics",
                "",
                self.svc.list_pod_sandbox_metrics(r.into_inner()),
            )
            .await
    }

    type StreamPodSandboxMetricsStream = BoxStream<cri::StreamPodSandboxMetricsResponse>;
    async fn stream_pod_sandbox_metrics(
        &self,
        r: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> Rpc<Self::StreamPodSandboxMetricsStream> {
        self.inst
            .call(
                "StreamPodSandboxMetrics",
                "",
                self.svc.stream_pod_sandbox_metrics(r.into_inner()),
            )
            .await
    }

    async fn runtime_config(&self, r: Request<cri::RuntimeConfigRequest>) -> Rpc<cri::RuntimeConfigResponse> {
        self.inst
            .call("RuntimeConfig", "", self.svc.runtime_config(r.into_inner()))
            .await
    }

    async fn update_pod_sandbox_resources(
        &self,
        r: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> Rpc<cri::UpdatePodSandboxResourcesResponse> {
        self.inst
            .call(
                "UpdatePodSandboxResources",
                "",
                self.svc.update_pod_sandbox_resources(r.into_inner()),
            )
            .await
    }
}

#[tonic::async_trait]
impl ImageService for CriApi {
    async fn list_images(&self, r: Request<cri::ListImagesRequest>) -> Rpc<cri::ListImagesResponse> {
        self.inst
            .call("ListImages", "", self.svc.list_images(r.into_inner()))
            .await
    }

    type StreamImagesStream = BoxStream<cri::StreamImagesResponse>;
    async fn stream_images(&self, r: Request<cri::StreamImagesRequest>) -> Rpc<Self::StreamImagesStream> {
        self.inst
            .call("StreamImages", "", self.svc.stream_images(r.into_inner()))
            .await
    }

    async fn image_status(&self, r: Request<cri::ImageStatusRequest>) -> Rpc<cri::ImageStatusResponse> {
        self.inst
            .call("ImageStatus", "", self.svc.image_status(r.into_inner()))
            .await
    }

    async fn pull_image(&self, r: Request<cri::PullImageRequest>) -> Rpc<cri::PullImageResponse> {
        self.inst
            .call(
                "PullImage",
                "",
                self.svc
                    .clone()
                    .detached("PullImage", |s| async move { s.pull_image(r.into_inner()).await }),
            )
            .await
    }

    async fn remove_image(&self, r: Request<cri::RemoveImageRequest>) -> Rpc<cri::RemoveImageResponse> {
        self.inst
            .call("RemoveImage", "", self.svc.remove_image(r.into_inner()))
            .await
    }

    async fn image_fs_info(&self, r: Request<cri::ImageFsInfoRequest>) -> Rpc<cri::ImageFsInfoResponse> {
        self.inst
            .call("ImageFsInfo", "", self.svc.image_fs_info(r.into_inner()))
            .await
    }
}

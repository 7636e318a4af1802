//! `StreamPodSandboxes`: ListPodSandbox's answer, in chunks of [`STREAM_CHUNK`](crate::cri::server::STREAM_CHUNK) pods.

use taskd_proto::cri::v1::{ListPodSandboxRequest, StreamPodSandboxesRequest, StreamPodSandboxesResponse};

use crate::cri::error::CriError;
use crate::cri::server::{BoxStream, chunked};
use crate::cri::service::CriService;

impl CriService {
    pub async fn stream_pod_sandboxes(
        &self,
        req: StreamPodSandboxesRequest,
    ) -> Result<BoxStream<StreamPodSandboxesResponse>, CriError> {
        let items = self
            .list_pod_sandbox(ListPodSandboxRequest { filter: req.filter })
            .await?
            .items;
        Ok(chunked(items, |pod_sandboxes| StreamPodSandboxesResponse {
            pod_sandboxes,
        }))
    }
}

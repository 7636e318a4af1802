//! `StreamPodSandboxes`: ListPodSandbox's answer, in chunks of [`CHUNK`] pods.

use taskd_proto::cri::v1::{ListPodSandboxRequest, StreamPodSandboxesRequest, StreamPodSandboxesResponse};

use crate::cri::server::BoxStream;
use crate::cri::{CriError, CriService};

/// Items per streamed message.
pub const CHUNK: usize = 100;

impl CriService {
    pub async fn stream_pod_sandboxes(
        &self,
        req: StreamPodSandboxesRequest,
    ) -> Result<BoxStream<StreamPodSandboxesResponse>, CriError> {
        let items = self
            .list_pod_sandbox(ListPodSandboxRequest { filter: req.filter })
            .await?
            .items;
        let chunks: Vec<_> = items
            .chunks(CHUNK)
            .map(|c| {
                Ok(StreamPodSandboxesResponse {
                    pod_sandboxes: c.to_vec(),
                })
            })
            .collect();
        Ok(Box::pin(futures::stream::iter(chunks)))
    }
}

//! `StreamContainers`: ListContainers' answer, in chunks of [`CHUNK`] containers.

use taskd_proto::cri::v1::{ListContainersRequest, StreamContainersRequest, StreamContainersResponse};

use crate::cri::server::BoxStream;
use crate::cri::{CriError, CriService};

/// Items per streamed message.
pub const CHUNK: usize = 100;

impl CriService {
    pub async fn stream_containers(
        &self,
        req: StreamContainersRequest,
    ) -> Result<BoxStream<StreamContainersResponse>, CriError> {
        let items = self
            .list_containers(ListContainersRequest { filter: req.filter })
            .await?
            .containers;
        let chunks: Vec<_> = items
            .chunks(CHUNK)
            .map(|c| {
                Ok(StreamContainersResponse {
                    containers: c.to_vec(),
                })
            })
            .collect();
        Ok(Box::pin(futures::stream::iter(chunks)))
    }
}

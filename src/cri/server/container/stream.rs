//! `StreamContainers`: ListContainers's answer, in chunks of [`STREAM_CHUNK`](crate::cri::server::STREAM_CHUNK) containers.

use taskd_proto::cri::v1::{ListContainersRequest, StreamContainersRequest, StreamContainersResponse};

use crate::cri::error::CriError;
use crate::cri::server::{BoxStream, chunked};
use crate::cri::service::CriService;

impl CriService {
    pub async fn stream_containers(
        &self,
        req: StreamContainersRequest,
    ) -> Result<BoxStream<StreamContainersResponse>, CriError> {
        let items = self
            .list_containers(ListContainersRequest { filter: req.filter })
            .await?
            .containers;
        Ok(chunked(items, |containers| StreamContainersResponse {
            containers,
        }))
    }
}

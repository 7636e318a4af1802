//! `StreamImages`: ListImages's answer, in chunks of [`STREAM_CHUNK`](crate::cri::server::STREAM_CHUNK) images.

use taskd_proto::cri::v1::{ListImagesRequest, StreamImagesRequest, StreamImagesResponse};

use crate::cri::error::CriError;
use crate::cri::server::{BoxStream, chunked};
use crate::cri::service::CriService;

impl CriService {
    pub async fn stream_images(
        &self,
        req: StreamImagesRequest,
    ) -> Result<BoxStream<StreamImagesResponse>, CriError> {
        let items = self
            .list_images(ListImagesRequest { filter: req.filter })
            .await?
            .images;
        Ok(chunked(items, |images| StreamImagesResponse { images }))
    }
}

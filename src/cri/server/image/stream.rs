//! `StreamImages`: ListImages' answer, in chunks of [`CHUNK`] images.

use taskd_proto::cri::v1::{ListImagesRequest, StreamImagesRequest, StreamImagesResponse};

use crate::cri::server::BoxStream;
use crate::cri::{CriError, CriService};

/// Items per streamed message.
pub const CHUNK: usize = 100;

impl CriService {
    pub async fn stream_images(
        &self,
        req: StreamImagesRequest,
    ) -> Result<BoxStream<StreamImagesResponse>, CriError> {
        let items = self
            .list_images(ListImagesRequest { filter: req.filter })
            .await?
            .images;
        let chunks: Vec<_> = items
            .chunks(CHUNK)
            .map(|c| Ok(StreamImagesResponse { images: c.to_vec() }))
            .collect();
        Ok(Box::pin(futures::stream::iter(chunks)))
    }
}

//! `ListImages`: every image, or the one the filter names.

use taskd_proto::cri::v1::{ListImagesRequest, ListImagesResponse};

use super::to_cri;
use crate::cri::error::CriError;
use crate::cri::service::CriService;

impl CriService {
    pub async fn list_images(&self, req: ListImagesRequest) -> Result<ListImagesResponse, CriError> {
        let wanted = req
            .filter
            .and_then(|f| f.image)
            .map(|i| i.image)
            .unwrap_or_default();
        let images = if wanted.is_empty() {
            self.all_images("ListImages").await?
        } else {
            self.find_image("ListImages", &wanted)
                .await?
                .into_iter()
                .collect()
        };
        Ok(ListImagesResponse {
            images: images.iter().map(to_cri).collect(),
        })
    }
}

//! `RemoveImage`: removes every name of the image's config digest (all tags, digests and
//! the id name). Absent is success (idempotent).

use taskd_proto::cri::v1::{RemoveImageRequest, RemoveImageResponse};

use crate::cri::error::CriError;
use crate::cri::service::CriService;

impl CriService {
    pub async fn remove_image(&self, req: RemoveImageRequest) -> Result<RemoveImageResponse, CriError> {
        let backend = self.image_backend("RemoveImage")?;
        let spec = req.image.map(|i| i.image).unwrap_or_default();
        let Some(img) = self.find_image("RemoveImage", &spec).await? else {
            return Ok(RemoveImageResponse {});
        };
        let names = backend.list().await?;
        for n in names.iter().filter(|n| n.config_digest == img.id) {
            backend.remove(&n.name).await?;
        }
        self.images.remove(&img.id);
        tracing::info!(image = %img.id, "image removed");
        Ok(RemoveImageResponse {})
    }
}

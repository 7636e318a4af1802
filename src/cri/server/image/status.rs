//! `ImageStatus`: the image, or no image (not an error) when it is not present; verbose
//! adds the image config as `info`.

use std::collections::HashMap;

use taskd_proto::cri::v1::{ImageStatusRequest, ImageStatusResponse};

use super::to_cri;
use crate::cri::error::CriError;
use crate::cri::service::CriService;

impl CriService {
    pub async fn image_status(&self, req: ImageStatusRequest) -> Result<ImageStatusResponse, CriError> {
        let spec = req.image.map(|i| i.image).unwrap_or_default();
        let img = self.find_image("ImageStatus", &spec).await?;
        let mut info = HashMap::new();
        if req.verbose
            && let Some(i) = &img
        {
            let c = &i.config;
            let v = serde_json::json!({
                "id": i.id,
                "size": i.size,
                "config": {
                    "User": c.user, "Entrypoint": c.entrypoint, "Cmd": c.cmd, "Env": c.env,
                    "WorkingDir": c.working_dir, "StopSignal": c.stop_signal,
                },
            });
            info.insert("info".to_owned(), v.to_string());
        }
        Ok(ImageStatusResponse {
            image: img.as_ref().map(to_cri),
            info,
        })
    }
}

//! `PullImage`: normalize the reference, pull through the backend (auth from the request;
//! registry hosts/mirrors are the backend's config), answer the image id.

use taskd_proto::cri::v1::{PullImageRequest, PullImageResponse};

use crate::cri::backend::contract::Auth;
use crate::cri::error::CriError;
use crate::cri::service::CriService;
use crate::images::reference;

impl CriService {
    pub async fn pull_image(&self, req: PullImageRequest) -> Result<PullImageResponse, CriError> {
        let backend = self.image_backend("PullImage")?;
        let spec = req.image.map(|i| i.image).unwrap_or_default();
        if spec.is_empty() {
            return Err(CriError::InvalidArgument {
                field: "image.image",
                reason: "must not be empty".into(),
            });
        }
        let r = reference::normalize(&spec)?;
        let auth = req.auth.map(|a| Auth {
            username: a.username,
            password: a.password,
            auth: a.auth,
            server_address: a.server_address,
            identity_token: a.identity_token,
            registry_token: a.registry_token,
        });
        let started = std::time::Instant::now();
        let pulled = match backend.pull(&r.to_string(), auth).await {
            Ok(p) => p,
            Err(e) => {
                self.metrics.image_pulls.with_label_values(&["failure"]).inc();
                return Err(e);
            }
        };
        self.metrics.image_pulls.with_label_values(&["success"]).inc();
        self.metrics.image_pull_bytes.inc_by(pulled.size);
        let secs = started.elapsed().as_secs_f64();
        if secs > 0.0 {
            self.metrics
                .image_pull_throughput
                .observe(pulled.size as f64 / secs);
        }
        tracing::info!(image = %r, id = %pulled.config_digest, "image pulled");
        self.all_images("PullImage").await?;
        Ok(PullImageResponse {
            image_ref: pulled.config_digest,
        })
    }
}

//! gRPC adapter for the images service: converts messages, maps errors with
//! `server::status::to_status`.

use taskd_proto::containerd::services::images::v1 as api;
use taskd_proto::containerd::types::Descriptor as ApiDescriptor;
use tonic::{Request, Response, Status};

use super::Images;
use crate::images::{Descriptor, Image, ImageError};
use crate::server::{namespace, status::to_status};

crate::server::grpc_adapter!(Service(dyn Images) => api::images_server::ImagesServer);

fn desc_from(d: Option<ApiDescriptor>) -> Descriptor {
    let d = d.unwrap_or_default();
    Descriptor {
        media_type: d.media_type,
        digest: d.digest,
        size: d.size,
        annotations: d.annotations.into_iter().collect(),
    }
}

fn desc_to(d: Descriptor) -> ApiDescriptor {
    ApiDescriptor {
        media_type: d.media_type,
        digest: d.digest,
        size: d.size,
        annotations: d.annotations.into_iter().collect(),
    }
}

fn image_from(i: Option<api::Image>) -> Result<Image, Status> {
    let i = i.ok_or_else(|| {
        to_status(&ImageError::InvalidArgument {
            field: "image",
            reason: "must be set".into(),
        })
    })?;
    Ok(Image {
        name: i.name,
        labels: i.labels.into_iter().collect(),
        target: desc_from(i.target),
        created_at: None,
        updated_at: None,
    })
}

fn image_to(i: Image) -> api::Image {
    api::Image {
        name: i.name,
        labels: i.labels.into_iter().collect(),
        target: Some(desc_to(i.target)),
        created_at: i.created_at.map(prost_types::Timestamp::from),
        updated_at: i.updated_at.map(prost_types::Timestamp::from),
    }
}

#[tonic::async_trait]
impl api::images_server::Images for Service {
    async fn get(
        &self,
        req: Request<api::GetImageRequest>,
    ) -> Result<Response<api::GetImageResponse>, Status> {
        let ns = namespace::required(&req)?;
        let i = self
            .local
            .get(&ns, &req.into_inner().name)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(api::GetImageResponse {
            image: Some(image_to(i)),
        }))
    }

    async fn list(
        &self,
        req: Request<api::ListImagesRequest>,
    ) -> Result<Response<api::ListImagesResponse>, Status> {
        let ns = namespace::required(&req)?;
        let all = self
            .local
            .list(&ns, req.into_inner().filters)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(api::ListImagesResponse {
            images: all.into_iter().map(image_to).collect(),
        }))
    }

    async fn create(
        &self,
        req: Request<api::CreateImageRequest>,
    ) -> Result<Response<api::CreateImageResponse>, Status> {
        let ns = namespace::required(&req)?;
        let image = image_from(req.into_inner().image)?;
        let i = self.local.create(&ns, image).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(api::CreateImageResponse {
            image: Some(image_to(i)),
        }))
    }

    async fn update(
        &self,
        req: Request<api::UpdateImageRequest>,
    ) -> Result<Response<api::UpdateImageResponse>, Status> {
        let ns = namespace::required(&req)?;
        let req = req.into_inner();
        let image = image_from(req.image)?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let i = self
            .local
            .update(&ns, image, paths)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(api::UpdateImageResponse {
            image: Some(image_to(i)),
        }))
    }

    async fn delete(&self, req: Request<api::DeleteImageRequest>) -> Result<Response<()>, Status> {
        let ns = namespace::required(&req)?;
        let req = req.into_inner();
        let target = req.target.map(|t| t.digest);
        self.local
            .delete(&ns, &req.name, target, req.sync)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(()))
    }
}

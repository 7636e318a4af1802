//! gRPC adapter for the containers service: converts messages, maps errors with
//! `server::status::to_status`, nothing else. `ListStream` sends one container per message.

use std::pin::Pin;
use std::time::SystemTime;

use taskd_proto::containerd::services::containers::v1 as api;
use tonic::{Request, Response, Status};

use super::Containers;
use crate::metadata::{Container, MetadataError, Runtime};
use crate::server::{namespace, status::to_status};

crate::server::grpc_adapter!(
    /// The tonic service; cheap to clone.
    Service(dyn Containers) => api::containers_server::ContainersServer
);

fn time_to_proto(t: Option<SystemTime>) -> Option<prost_types::Timestamp> {
    t.map(prost_types::Timestamp::from)
}

fn time_from_proto(t: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(t).ok())
}

pub fn to_proto(c: Container) -> api::Container {
    api::Container {
        id: c.id,
        labels: c.labels.into_iter().collect(),
        image: c.image,
        runtime: Some(api::container::Runtime {
            name: c.runtime.name,
            options: c.runtime.options,
        }),
        spec: c.spec,
        snapshotter: c.snapshotter,
        snapshot_key: c.snapshot_key,
        created_at: time_to_proto(c.created_at),
        updated_at: time_to_proto(c.updated_at),
        extensions: c.extensions.into_iter().collect(),
        sandbox: c.sandbox,
    }
}

pub fn from_proto(c: api::Container) -> Container {
    let runtime = c.runtime.unwrap_or_default();
    Container {
        id: c.id,
        labels: c.labels.into_iter().collect(),
        image: c.image,
        runtime: Runtime {
            name: runtime.name,
            options: runtime.options,
        },
        spec: c.spec,
        snapshotter: c.snapshotter,
        snapshot_key: c.snapshot_key,
        created_at: time_from_proto(c.created_at),
        updated_at: time_from_proto(c.updated_at),
        extensions: c.extensions.into_iter().collect(),
        sandbox: c.sandbox,
    }
}

fn required_container(c: Option<api::Container>) -> Result<api::Container, Status> {
    c.ok_or_else(|| to_status(&MetadataError::invalid("container", "must be set")))
}

impl Service {
    /// The containers List and ListStream answer.
    async fn list_all(&self, req: Request<api::ListContainersRequest>) -> Result<Vec<Container>, Status> {
        let ns = namespace::required(&req)?;
        self.local
            .list(&ns, req.into_inner().filters)
            .await
            .map_err(|e| to_status(&e))
    }
}

type ListStream = Pin<Box<dyn futures::Stream<Item = Result<api::ListContainerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl api::containers_server::Containers for Service {
    async fn get(
        &self,
        req: Request<api::GetContainerRequest>,
    ) -> Result<Response<api::GetContainerResponse>, Status> {
        let ns = namespace::required(&req)?;
        let c = self
            .local
            .get(&ns, &req.into_inner().id)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(api::GetContainerResponse {
            container: Some(to_proto(c)),
        }))
    }

    async fn list(
        &self,
        req: Request<api::ListContainersRequest>,
    ) -> Result<Response<api::ListContainersResponse>, Status> {
        let containers = self.list_all(req).await?.into_iter().map(to_proto).collect();
        Ok(Response::new(api::ListContainersResponse { containers }))
    }

    type ListStreamStream = ListStream;

    async fn list_stream(
        &self,
        req: Request<api::ListContainersRequest>,
    ) -> Result<Response<Self::ListStreamStream>, Status> {
        let stream = futures::stream::iter(self.list_all(req).await?.into_iter().map(|c| {
            Ok(api::ListContainerMessage {
                container: Some(to_proto(c)),
            })
        }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create(
        &self,
        req: Request<api::CreateContainerRequest>,
    ) -> Result<Response<api::CreateContainerResponse>, Status> {
        let ns = namespace::required(&req)?;
        let c = from_proto(required_container(req.into_inner().container)?);
        let created = self.local.create(&ns, c).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(api::CreateContainerResponse {
            container: Some(to_proto(created)),
        }))
    }

    async fn update(
        &self,
        req: Request<api::UpdateContainerRequest>,
    ) -> Result<Response<api::UpdateContainerResponse>, Status> {
        let ns = namespace::required(&req)?;
        let req = req.into_inner();
        let c = from_proto(required_container(req.container)?);
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let updated = self
            .local
            .update(&ns, c, paths)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(api::UpdateContainerResponse {
            container: Some(to_proto(updated)),
        }))
    }

    async fn delete(&self, req: Request<api::DeleteContainerRequest>) -> Result<Response<()>, Status> {
        let ns = namespace::required(&req)?;
        self.local
            .delete(&ns, &req.into_inner().id)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(()))
    }
}

//! gRPC adapter for the leases service: converts messages, maps errors with
//! `server::status::to_status`.

use taskd_proto::containerd::services::leases::v1 as api;
use tonic::{Request, Response, Status};

use super::Leases;
use crate::metadata::{Lease, LeaseResource, MetadataError};
use crate::server::{namespace, status::to_status};

crate::server::grpc_adapter!(Service(dyn Leases) => api::leases_server::LeasesServer);

fn to_proto(l: Lease) -> api::Lease {
    api::Lease {
        id: l.id,
        created_at: l.created_at.map(prost_types::Timestamp::from),
        labels: l.labels.into_iter().collect(),
    }
}

fn resource(r: Option<api::Resource>) -> Result<LeaseResource, Status> {
    let r = r.ok_or_else(|| to_status(&MetadataError::invalid("resource", "must be set")))?;
    Ok(LeaseResource {
        id: r.id,
        r#type: r.r#type,
    })
}

#[tonic::async_trait]
impl api::leases_server::Leases for Service {
    async fn create(
        &self,
        req: Request<api::CreateRequest>,
    ) -> Result<Response<api::CreateResponse>, Status> {
        let ns = namespace::required(&req)?;
        let req = req.into_inner();
        let l = self
            .local
            .create(&ns, &req.id, req.labels.into_iter().collect())
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(api::CreateResponse {
            lease: Some(to_proto(l)),
        }))
    }

    async fn delete(&self, req: Request<api::DeleteRequest>) -> Result<Response<()>, Status> {
        let ns = namespace::required(&req)?;
        let req = req.into_inner();
        self.local
            .delete(&ns, &req.id, req.sync)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(()))
    }

    async fn list(&self, req: Request<api::ListRequest>) -> Result<Response<api::ListResponse>, Status> {
        let ns = namespace::required(&req)?;
        let all = self
            .local
            .list(&ns, req.into_inner().filters)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(api::ListResponse {
            leases: all.into_iter().map(to_proto).collect(),
        }))
    }

    async fn add_resource(&self, req: Request<api::AddResourceRequest>) -> Result<Response<()>, Status> {
        let ns = namespace::required(&req)?;
        let req = req.into_inner();
        let r = resource(req.resource)?;
        self.local
            .add_resource(&ns, &req.id, r)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(()))
    }

    async fn delete_resource(
        &self,
        req: Request<api::DeleteResourceRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace::required(&req)?;
        let req = req.into_inner();
        let r = resource(req.resource)?;
        self.local
            .delete_resource(&ns, &req.id, r)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(()))
    }

    async fn list_resources(
        &self,
        req: Request<api::ListResourcesRequest>,
    ) -> Result<Response<api::ListResourcesResponse>, Status> {
        let ns = namespace::required(&req)?;
        let all = self
            .local
            .list_resources(&ns, &req.into_inner().id)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(api::ListResourcesResponse {
            resources: all
                .into_iter()
                .map(|r| api::Resource {
                    id: r.id,
                    r#type: r.r#type,
                })
                .collect(),
        }))
    }
}

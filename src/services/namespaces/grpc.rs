//! gRPC adapter for the namespaces service: converts messages, maps errors with
//! `server::status::to_status`. The namespace header is not used: the request names it.

use taskd_proto::containerd::services::namespaces::v1 as api;
use tonic::{Request, Response, Status};

use super::Namespaces;
use crate::metadata::{MetadataError, Namespace};
use crate::server::status::to_status;

crate::server::grpc_adapter!(Service(dyn Namespaces) => api::namespaces_server::NamespacesServer);

fn to_proto(n: Namespace) -> api::Namespace {
    api::Namespace {
        name: n.name,
        labels: n.labels.into_iter().collect(),
    }
}

fn required(n: Option<api::Namespace>) -> Result<Namespace, Status> {
    let n = n.ok_or_else(|| to_status(&MetadataError::invalid("namespace", "must be set")))?;
    Ok(Namespace {
        name: n.name,
        labels: n.labels.into_iter().collect(),
    })
}

#[tonic::async_trait]
impl api::namespaces_server::Namespaces for Service {
    async fn get(
        &self,
        req: Request<api::GetNamespaceRequest>,
    ) -> Result<Response<api::GetNamespaceResponse>, Status> {
        let n = self
            .local
            .get(&req.into_inner().name)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(api::GetNamespaceResponse {
            namespace: Some(to_proto(n)),
        }))
    }

    async fn list(
        &self,
        req: Request<api::ListNamespacesRequest>,
    ) -> Result<Response<api::ListNamespacesResponse>, Status> {
        let all = self
            .local
            .list(&req.into_inner().filter)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(api::ListNamespacesResponse {
            namespaces: all.into_iter().map(to_proto).collect(),
        }))
    }

    async fn create(
        &self,
        req: Request<api::CreateNamespaceRequest>,
    ) -> Result<Response<api::CreateNamespaceResponse>, Status> {
        let n = required(req.into_inner().namespace)?;
        let n = self
            .local
            .create(&n.name, n.labels)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(api::CreateNamespaceResponse {
            namespace: Some(to_proto(n)),
        }))
    }

    async fn update(
        &self,
        req: Request<api::UpdateNamespaceRequest>,
    ) -> Result<Response<api::UpdateNamespaceResponse>, Status> {
        let req = req.into_inner();
        let n = required(req.namespace)?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let n = self.local.update(n, paths).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(api::UpdateNamespaceResponse {
            namespace: Some(to_proto(n)),
        }))
    }

    async fn delete(&self, req: Request<api::DeleteNamespaceRequest>) -> Result<Response<()>, Status> {
        self.local
            .delete(&req.into_inner().name)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(()))
    }
}

//! gRPC adapter: `containerd.services.version.v1.Version`.

use taskd_proto::containerd::services::version::v1::VersionResponse;
use taskd_proto::containerd::services::version::v1::version_server::{Version, VersionServer};
use tonic::{Request, Response, Status};

use super::Local;

crate::server::grpc_adapter!(VersionService(Local) => VersionServer);

#[tonic::async_trait]
impl Version for VersionService {
    async fn version(&self, _request: Request<()>) -> Result<Response<VersionResponse>, Status> {
        let v = self.local.version();
        Ok(Response::new(VersionResponse {
            version: v.version,
            revision: v.revision,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn reports_crate_version_and_revision() {
        let svc = VersionService::new(Arc::new(Local));
        let v = svc.version(Request::new(())).await.unwrap().into_inner();
        assert_eq!(v.version, env!("CARGO_PKG_VERSION"));
        assert!(!v.revision.is_empty());
        assert!(
            v.revision == "unknown" || v.revision.chars().all(|c| c.is_ascii_hexdigit()),
            "{}",
            v.revision
        );
    }
}

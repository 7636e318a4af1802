//! gRPC adapter for the diff service: converts messages, maps errors with
//! `server::status::to_status`. `Diff` is the walking differ's Compare.

use taskd_proto::containerd::services::diff::v1 as api;
use taskd_proto::containerd::types as ctypes;
use tonic::{Request, Response, Status};

use crate::diff::{Descriptor, DiffError, Differ};
use crate::server::{namespace, status::to_status};
use crate::services::snapshots::grpc::mount_from_proto;

crate::server::grpc_adapter!(Service(dyn Differ) => api::diff_server::DiffServer);

#[tonic::async_trait]
impl api::diff_server::Diff for Service {
    async fn apply(&self, req: Request<api::ApplyRequest>) -> Result<Response<api::ApplyResponse>, Status> {
        let ns = namespace::required(&req)?;
        let r = req.into_inner();
        let d = r
            .diff
            .ok_or_else(|| to_status(&DiffError::InvalidMounts("diff: descriptor must be set".into())))?;
        let desc = Descriptor {
            media_type: d.media_type,
            digest: d.digest,
            size: d.size,
        };
        let applied = self
            .local
            .apply(&ns, desc, r.mounts.into_iter().map(mount_from_proto).collect())
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(api::ApplyResponse {
            applied: Some(ctypes::Descriptor {
                media_type: applied.media_type,
                digest: applied.digest,
                size: applied.size as i64,
                annotations: Default::default(),
            }),
        }))
    }

    async fn diff(&self, req: Request<api::DiffRequest>) -> Result<Response<api::DiffResponse>, Status> {
        let ns = namespace::required(&req)?;
        let r = req.into_inner();
        let desc = self
            .local
            .compare(
                &ns,
                r.left.into_iter().map(mount_from_proto).collect(),
                r.right.into_iter().map(mount_from_proto).collect(),
                &r.media_type,
                &r.r#ref,
                r.labels.into_iter().collect(),
            )
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(api::DiffResponse {
            diff: Some(ctypes::Descriptor {
                media_type: desc.media_type,
                digest: desc.digest,
                size: desc.size,
                annotations: Default::default(),
            }),
        }))
    }
}

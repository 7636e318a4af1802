//! gRPC adapter for the snapshots service: converts messages, reads the namespace and
//! `containerd-lease` headers, maps errors with `server::status::to_status`. List streams
//! the snapshots in batches of 100, as containerd does.

use std::pin::Pin;

use taskd_proto::containerd::services::snapshots::v1 as api;
use taskd_proto::containerd::types as ctypes;
use tonic::{Request, Response, Status};

use super::Snapshots;
use crate::server::{namespace, status::to_status};
use crate::snapshots::{Info, Kind, Mount, SnapshotError};

/// The gRPC metadata key carrying the lease of a request.
pub const LEASE_HEADER: &str = "containerd-lease";

/// How many snapshots one List message carries.
const LIST_BATCH: usize = 100;

crate::server::grpc_adapter!(Service(dyn Snapshots) => api::snapshots_server::SnapshotsServer);

/// The lease named by the request's `containerd-lease` header, if any.
pub fn lease<T>(req: &Request<T>) -> Result<Option<String>, Status> {
    match req.metadata().get(LEASE_HEADER) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.to_owned()))
            .map_err(|_| Status::invalid_argument(format!("{LEASE_HEADER} header is not valid ASCII"))),
    }
}

fn st(e: SnapshotError) -> Status {
    to_status(&e)
}

pub fn mount_to_proto(m: Mount) -> ctypes::Mount {
    ctypes::Mount {
        r#type: m.r#type,
        source: m.source,
        target: m.target,
        options: m.options,
    }
}

pub fn mount_from_proto(m: ctypes::Mount) -> Mount {
    Mount {
        r#type: m.r#type,
        source: m.source,
        target: m.target,
        options: m.options,
    }
}

fn kind_to_proto(k: Kind) -> api::Kind {
    match k {
        Kind::Unknown => api::Kind::Unknown,
        Kind::View => api::Kind::View,
        Kind::Active => api::Kind::Active,
        Kind::Committed => api::Kind::Committed,
    }
}

fn kind_from_proto(k: i32) -> Kind {
    match api::Kind::try_from(k) {
        Ok(api::Kind::View) => Kind::View,
        Ok(api::Kind::Active) => Kind::Active,
        Ok(api::Kind::Committed) => Kind::Committed,
        _ => Kind::Unknown,
    }
}

fn info_to_proto(i: Info) -> api::Info {
    api::Info {
        name: i.name,
        parent: i.parent,
        kind: kind_to_proto(i.kind) as i32,
        created_at: i.created_at.map(prost_types::Timestamp::from),
        updated_at: i.updated_at.map(prost_types::Timestamp::from),
        labels: i.labels.into_iter().collect(),
    }
}

fn info_from_proto(i: api::Info) -> Info {
    Info {
        name: i.name,
        parent: i.parent,
        kind: kind_from_proto(i.kind),
        labels: i.labels.into_iter().collect(),
        created_at: None,
        updated_at: None,
    }
}

impl Service {
    /// Prepare, or View when `readonly`: the new snapshot's mounts.
    async fn prepare_mounts(
        &self,
        req: Request<api::PrepareSnapshotRequest>,
        readonly: bool,
    ) -> Result<Vec<ctypes::Mount>, Status> {
        let ns = namespace::required(&req)?;
        let lease = lease(&req)?;
        let r = req.into_inner();
        let mounts = self
            .local
            .prepare(
                &ns,
                lease.as_deref(),
                &r.snapshotter,
                &r.key,
                &r.parent,
                r.labels.into_iter().collect(),
                readonly,
            )
            .await
            .map_err(st)?;
        Ok(mounts.into_iter().map(mount_to_proto).collect())
    }
}

type ListStream = Pin<Box<dyn futures::Stream<Item = Result<api::ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl api::snapshots_server::Snapshots for Service {
    async fn prepare(
        &self,
        req: Request<api::PrepareSnapshotRequest>,
    ) -> Result<Response<api::PrepareSnapshotResponse>, Status> {
        let mounts = self.prepare_mounts(req, false).await?;
        Ok(Response::new(api::PrepareSnapshotResponse { mounts }))
    }

    async fn view(
        &self,
        req: Request<api::ViewSnapshotRequest>,
    ) -> Result<Response<api::ViewSnapshotResponse>, Status> {
        // The same fields as Prepare's; the snapshot is read-only.
        let req = req.map(|r| api::PrepareSnapshotRequest {
            snapshotter: r.snapshotter,
            key: r.key,
            parent: r.parent,
            labels: r.labels,
        });
        let mounts = self.prepare_mounts(req, true).await?;
        Ok(Response::new(api::ViewSnapshotResponse { mounts }))
    }

    async fn mounts(
        &self,
        req: Request<api::MountsRequest>,
    ) -> Result<Response<api::MountsResponse>, Status> {
        let ns = namespace::required(&req)?;
        let r = req.into_inner();
        let mounts = self
            .local
            .snapshotter(&r.snapshotter)
            .map_err(st)?
            .mounts(&ns, &r.key)
            .await
            .map_err(st)?;
        Ok(Response::new(api::MountsResponse {
            mounts: mounts.into_iter().map(mount_to_proto).collect(),
        }))
    }

    async fn commit(&self, req: Request<api::CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let ns = namespace::required(&req)?;
        let lease = lease(&req)?;
        let r = req.into_inner();
        self.local
            .commit(
                &ns,
                lease.as_deref(),
                &r.snapshotter,
                &r.name,
                &r.key,
                r.labels.into_iter().collect(),
            )
            .await
            .map_err(st)?;
        Ok(Response::new(()))
    }

    async fn remove(&self, req: Request<api::RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let ns = namespace::required(&req)?;
        let r = req.into_inner();
        self.local.remove(&ns, &r.snapshotter, &r.key).await.map_err(st)?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<api::StatSnapshotRequest>,
    ) -> Result<Response<api::StatSnapshotResponse>, Status> {
        let ns = namespace::required(&req)?;
        let r = req.into_inner();
        let info = self
            .local
            .snapshotter(&r.snapshotter)
            .map_err(st)?
            .stat(&ns, &r.key)
            .await
            .map_err(st)?;
        Ok(Response::new(api::StatSnapshotResponse {
            info: Some(info_to_proto(info)),
        }))
    }

    async fn update(
        &self,
        req: Request<api::UpdateSnapshotRequest>,
    ) -> Result<Response<api::UpdateSnapshotResponse>, Status> {
        let ns = namespace::required(&req)?;
        let r = req.into_inner();
        let info = r.info.ok_or_else(|| {
            to_status(&SnapshotError::InvalidArgument {
                field: "info",
                reason: "must be set".into(),
            })
        })?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let info = self
            .local
            .snapshotter(&r.snapshotter)
            .map_err(st)?
            .update(&ns, info_from_proto(info), paths)
            .await
            .map_err(st)?;
        Ok(Response::new(api::UpdateSnapshotResponse {
            info: Some(info_to_proto(info)),
        }))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        req: Request<api::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let ns = namespace::required(&req)?;
        let r = req.into_inner();
        let all = self
            .local
            .snapshotter(&r.snapshotter)
            .map_err(st)?
            .walk(&ns, r.filters)
            .await
            .map_err(st)?;
        let mut batches = Vec::new();
        let mut it = all.into_iter().map(info_to_proto).peekable();
        while it.peek().is_some() {
            batches.push(Ok(api::ListSnapshotsResponse {
                info: it.by_ref().take(LIST_BATCH).collect(),
            }));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(batches))))
    }

    async fn usage(&self, req: Request<api::UsageRequest>) -> Result<Response<api::UsageResponse>, Status> {
        let ns = namespace::required(&req)?;
        let r = req.into_inner();
        let u = self
            .local
            .snapshotter(&r.snapshotter)
            .map_err(st)?
            .usage(&ns, &r.key)
            .await
            .map_err(st)?;
        Ok(Response::new(api::UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(&self, req: Request<api::CleanupRequest>) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        self.local
            .snapshotter(&r.snapshotter)
            .map_err(st)?
            .cleanup()
            .await
            .map_err(st)?;
        Ok(Response::new(()))
    }
}

//! gRPC adapter for the content service: converts messages, maps errors with
//! `server::status::to_status`, pumps the Read/List/Write streams.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use taskd_proto::containerd::services::content::v1 as api;
use tonic::{Request, Response, Status, Streaming};

use super::{Content, WriteAction, WriteRequest, WriteResponse, WriteSession};
use crate::content::{ContentError, Info};
use crate::server::{namespace, status::to_status};

/// The gRPC metadata key naming the lease a request works under.
pub const LEASE_HEADER: &str = "containerd-lease";

/// How many infos one List response message carries.
const LIST_BATCH: usize = 100;

crate::server::grpc_adapter!(Service(dyn Content) => api::content_server::ContentServer);

/// The lease named by the `containerd-lease` header, if any.
pub fn lease<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get(LEASE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

fn ts(t: Option<std::time::SystemTime>) -> Option<prost_types::Timestamp> {
    t.map(prost_types::Timestamp::from)
}

fn info_to_proto(i: Info) -> api::Info {
    api::Info {
        digest: i.digest,
        size: i.size,
        created_at: ts(i.created_at),
        updated_at: ts(i.updated_at),
        labels: i.labels.into_iter().collect(),
    }
}

fn status_to_proto(s: crate::content::Status) -> api::Status {
    api::Status {
        started_at: ts(s.started_at),
        updated_at: ts(s.updated_at),
        r#ref: s.r#ref,
        offset: s.offset,
        total: s.total,
        expected: s.expected,
    }
}

fn action_from(a: i32) -> Result<WriteAction, Status> {
    match api::WriteAction::try_from(a) {
        Ok(api::WriteAction::Stat) => Ok(WriteAction::Stat),
        Ok(api::WriteAction::Write) => Ok(WriteAction::Write),
        Ok(api::WriteAction::Commit) => Ok(WriteAction::Commit),
        Err(_) => Err(to_status(&ContentError::InvalidArgument {
            field: "action",
            reason: format!("unknown write action {a}"),
        })),
    }
}

fn action_to(a: WriteAction) -> i32 {
    match a {
        WriteAction::Stat => api::WriteAction::Stat as i32,
        WriteAction::Write => api::WriteAction::Write as i32,
        WriteAction::Commit => api::WriteAction::Commit as i32,
    }
}

fn write_req(r: api::WriteContentRequest) -> Result<WriteRequest, Status> {
    Ok(WriteRequest {
        action: action_from(r.action)?,
        r#ref: r.r#ref,
        total: r.total,
        expected: r.expected,
        offset: r.offset,
        data: r.data,
        labels: r.labels.into_iter().collect(),
    })
}

fn write_resp(r: WriteResponse) -> api::WriteContentResponse {
    api::WriteContentResponse {
        action: action_to(r.action),
        started_at: ts(r.started_at),
        updated_at: ts(r.updated_at),
        offset: r.offset,
        total: r.total,
        digest: r.digest,
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The state of one Write stream.
struct Pump {
    local: Arc<dyn Content>,
    namespace: String,
    lease: Option<String>,
    inbound: Streaming<api::WriteContentRequest>,
    session: Option<WriteSession>,
    done: bool,
}

impl Pump {
    async fn next(&mut self) -> Option<Result<api::WriteContentResponse, Status>> {
        if self.done {
            return None;
        }
        let msg = match self.inbound.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return None,
            Err(status) => {
                self.done = true;
                return Some(Err(status));
            }
        };
        let result = async {
            let req = write_req(msg)?;
            if self.session.is_none() {
                let s = self
                    .local
                    .write(&self.namespace, self.lease.clone(), &req)
                    .await
                    .map_err(|e| to_status(&e))?;
                self.session = Some(s);
            }
            match self.session.as_mut() {
                Some(s) => s.handle(req).await.map_err(|e| to_status(&e)),
                None => Err(Status::internal("write session missing")),
            }
        }
        .await;
        if result.is_err() {
            self.done = true;
            self.session = None;
        }
        Some(result.map(write_resp))
    }
}

#[tonic::async_trait]
impl api::content_server::Content for Service {
    async fn info(&self, req: Request<api::InfoRequest>) -> Result<Response<api::InfoResponse>, Status> {
        let ns = namespace::required(&req)?;
        let i = self
            .local
            .info(&ns, &req.into_inner().digest)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(api::InfoResponse {
            info: Some(info_to_proto(i)),
        }))
    }

    async fn update(
        &self,
        req: Request<api::UpdateRequest>,
    ) -> Result<Response<api::UpdateResponse>, Status> {
        let ns = namespace::required(&req)?;
        let req = req.into_inner();
        let info = req.info.ok_or_else(|| {
            to_status(&ContentError::InvalidArgument {
                field: "info",
                reason: "must be set".into(),
            })
        })?;
        let info = Info {
            digest: info.digest,
            size: info.size,
            created_at: None,
            updated_at: None,
            labels: info.labels.into_iter().collect(),
        };
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let i = self
            .local
            .update(&ns, info, paths)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(api::UpdateResponse {
            info: Some(info_to_proto(i)),
        }))
    }

    type ListStream = BoxStream<api::ListContentResponse>;

    async fn list(
        &self,
        req: Request<api::ListContentRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let ns = namespace::required(&req)?;
        let all = self
            .local
            .list(&ns, req.into_inner().filters)
            .await
            .map_err(|e| to_status(&e))?;
        let batches: Vec<Result<api::ListContentResponse, Status>> = all
            .chunks(LIST_BATCH)
            .map(|c| {
                Ok(api::ListContentResponse {
                    info: c.iter().cloned().map(info_to_proto).collect(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(batches))))
    }

    async fn delete(&self, req: Request<api::DeleteContentRequest>) -> Result<Response<()>, Status> {
        let ns = namespace::required(&req)?;
        self.local
            .delete(&ns, &req.into_inner().digest)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(()))
    }

    type ReadStream = BoxStream<api::ReadContentResponse>;

    async fn read(
        &self,
        req: Request<api::ReadContentRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let ns = namespace::required(&req)?;
        let req = req.into_inner();
        let stream = self
            .local
            .read(&ns, &req.digest, req.offset, req.size)
            .await
            .map_err(|e| to_status(&e))?;
        let out = stream.map(|r| {
            r.map(|(offset, data)| api::ReadContentResponse { offset, data })
                .map_err(|e| to_status(&e))
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn status(
        &self,
        req: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusResponse>, Status> {
        let ns = namespace::required(&req)?;
        let s = self
            .local
            .status(&ns, &req.into_inner().r#ref)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(api::StatusResponse {
            status: Some(status_to_proto(s)),
        }))
    }

    async fn list_statuses(
        &self,
        req: Request<api::ListStatusesRequest>,
    ) -> Result<Response<api::ListStatusesResponse>, Status> {
        let ns = namespace::required(&req)?;
        let all = self
            .local
            .list_statuses(&ns, req.into_inner().filters)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(api::ListStatusesResponse {
            statuses: all.into_iter().map(status_to_proto).collect(),
        }))
    }

    type WriteStream = BoxStream<api::WriteContentResponse>;

    async fn write(
        &self,
        req: Request<Streaming<api::WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, Status> {
        let ns = namespace::required(&req)?;
        let lease = lease(&req);
        let pump = Pump {
            local: self.local.clone(),
            namespace: ns,
            lease,
            inbound: req.into_inner(),
            session: None,
            done: false,
        };
        let out = futures::stream::unfold(pump, |mut p| async move { p.next().await.map(|r| (r, p)) });
        Ok(Response::new(Box::pin(out)))
    }

    async fn abort(&self, req: Request<api::AbortRequest>) -> Result<Response<()>, Status> {
        let ns = namespace::required(&req)?;
        self.local
            .abort(&ns, &req.into_inner().r#ref)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(()))
    }
}

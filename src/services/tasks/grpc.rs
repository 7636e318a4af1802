//! The `containerd.services.tasks.v1.Tasks` gRPC adapter: converts messages, forwards to
//! [`Tasks`], maps errors with `server::status::to_status`. Nothing else.

use std::time::SystemTime;

use taskd_proto::containerd::services::tasks::v1 as api;
use taskd_proto::containerd::services::tasks::v1::tasks_server::{self, TasksServer};
use taskd_proto::containerd::types as ctypes;
use taskd_proto::containerd::v1::types as v1types;
use tonic::{Request, Response, Status};

use super::{CreateTask, Descriptor, Tasks};
use crate::runtime::{self, ExecOpts, Exit, Mount, State, Stdio};
use crate::server::{namespace, status::to_status};

crate::server::grpc_adapter!(
    /// The adapter.
    Service(dyn Tasks) => TasksServer
);

fn ts(t: SystemTime) -> prost_types::Timestamp {
    t.into()
}

fn status_code(s: runtime::Status) -> i32 {
    use v1types::Status as S;
    (match s {
        runtime::Status::Unknown => S::Unknown,
        runtime::Status::Created => S::Created,
        runtime::Status::Running => S::Running,
        runtime::Status::Stopped => S::Stopped,
        runtime::Status::Paused => S::Paused,
        runtime::Status::Pausing => S::Pausing,
    }) as i32
}

fn process(s: State) -> v1types::Process {
    v1types::Process {
        container_id: String::new(),
        id: s.id,
        pid: s.pid,
        status: status_code(s.status),
        stdin: s.io.stdin,
        stdout: s.io.stdout,
        stderr: s.io.stderr,
        terminal: s.io.terminal,
        exit_status: s.exit_status,
        exited_at: s.exited_at.map(ts),
    }
}

fn delete_response(id: String, e: Exit) -> api::DeleteResponse {
    api::DeleteResponse {
        id,
        pid: e.pid,
        exit_status: e.status,
        exited_at: Some(ts(e.timestamp)),
    }
}

#[tonic::async_trait]
impl tasks_server::Tasks for Service {
    async fn create(
        &self,
        req: Request<api::CreateTaskRequest>,
    ) -> Result<Response<api::CreateTaskResponse>, Status> {
        let ns = namespace::required(&req)?;
        let r = req.into_inner();
        let create = CreateTask {
            container_id: r.container_id.clone(),
            rootfs: r
                .rootfs
                .into_iter()
                .map(|m| Mount {
                    r#type: m.r#type,
                    source: m.source,
                    target: m.target,
                    options: m.options,
                })
                .collect(),
            io: Stdio {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                terminal: r.terminal,
            },
            checkpoint: r.checkpoint.map(|d| Descriptor {
                media_type: d.media_type,
                digest: d.digest,
                size: d.size,
                annotations: d.annotations,
            }),
            options: r.options,
            runtime_path: r.runtime_path,
        };
        let pid = self.local.create(&ns, create).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(api::CreateTaskResponse {
            container_id: r.container_id,
            pid,
        }))
    }

    async fn start(&self, req: Request<api::StartRequest>) -> Result<Response<api::StartResponse>, Status> {
        let ns = namespace::required(&req)?;
        let r = req.into_inner();
        let pid = self
            .local
            .start(&ns, &r.container_id, &r.exec_id)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(api::StartResponse { pid }))
    }

    async fn delete(
        &self,
        req: Request<api::DeleteTaskRequest>,
    ) -> Result<Response<api::DeleteResponse>, Status> {
        let ns = namespace::required(&req)?;
        let r = req.into_inner();
        let exit = self
            .local
            .delete(&ns, &r.container_id)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(delete_response(r.container_id, exit)))
    }

    async fn delete_process(
        &self,
        req: Request<api::DeleteProcessRequest>,
    ) -> Result<Response<api::DeleteResponse>, Status> {
        let ns = namespace::required(&req)?;
        let r = req.into_inner();
        let exit = self
            .local
            .delete_process(&ns, &r.container_id, &r.exec_id)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(delete_response(r.exec_id, exit)))
    }

    async fn get(&self, req: Request<api::GetRequest>) -> Result<Response<api::GetResponse>, Status> {
        let ns = namespace::required(&req)?;
        let r = req.into_inner();
        let s = self
            .local
            .get(&ns, &r.container_id, &r.exec_id)
            .await
            .map_err(|e| to_status(&e))?;
        let mut p = process(s);
        p.container_id = r.container_id;
        Ok(Response::new(api::GetResponse { process: Some(p) }))
    }

    async fn list(
        &self,
        req: Request<api::ListTasksRequest>,
    ) -> Result<Response<api::ListTasksResponse>, Status> {
        let ns = namespace::required(&req)?;
        let r = req.into_inner();
        let states = self.local.list(&ns, &r.filter).await.map_err(|e| to_status(&e))?;
        let tasks = states
            .into_iter()
            .map(|s| {
                let mut p = process(s);
                p.container_id = p.id.clone();
                p
            })
            .collect();
        Ok(Response::new(api::ListTasksResponse { tasks }))
    }

    async fn kill(&self, req: Request<api::KillRequest>) -> Result<Response<()>, Status> {
        let ns = namespace::required(&req)?;
        let r = req.into_inner();
        self.local
            .kill(&ns, &r.container_id, &r.exec_id, r.signal, r.all)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(()))
    }

    async fn exec(&self, req: Request<api::ExecProcessRequest>) -> Result<Response<()>, Status> {
        let ns = namespace::required(&req)?;
        let r = req.into_inner();
        let spec = r.spec.ok_or_else(|| {
            to_status(&super::TasksError::InvalidArgument {
                field: "spec",
                reason: "an exec needs a process spec".into(),
            })
        })?;
        let opts = ExecOpts {
            spec,
            io: Stdio {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                terminal: r.terminal,
            },
        };
        self.local
            .exec(&ns, &r.container_id, &r.exec_id, opts)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(()))
    }

    async fn resize_pty(&self, req: Request<api::ResizePtyRequest>) -> Result<Response<()>, Status> {
        let ns = namespace::required(&req)?;
        let r = req.into_inner();
        self.local
            .resize_pty(&ns, &r.container_id, &r.exec_id, r.width, r.height)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(()))
    }

    async fn close_io(&self, req: Request<api::CloseIoRequest>) -> Result<Response<()>, Status> {
        let ns = namespace::required(&req)?;
        let r = req.into_inner();
        self.local
            .close_io(&ns, &r.container_id, &r.exec_id, r.stdin)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(()))
    }

    async fn pause(&self, req: Request<api::PauseTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace::required(&req)?;
        let r = req.into_inner();
        self.local
            .pause(&ns, &r.container_id)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(()))
    }

    async fn resume(&self, req: Request<api::ResumeTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace::required(&req)?;
        let r = req.into_inner();
        self.local
            .resume(&ns, &r.container_id)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(()))
    }

    async fn list_pids(
        &self,
        req: Request<api::ListPidsRequest>,
    ) -> Result<Response<api::ListPidsResponse>, Status> {
        let ns = namespace::required(&req)?;
        let r = req.into_inner();
        let pids = self
            .local
            .list_pids(&ns, &r.container_id)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(api::ListPidsResponse {
            processes: pids
                .into_iter()
                .map(|p| v1types::ProcessInfo {
                    pid: p.pid,
                    info: p.info,
                })
                .collect(),
        }))
    }

    async fn checkpoint(
        &self,
        req: Request<api::CheckpointTaskRequest>,
    ) -> Result<Response<api::CheckpointTaskResponse>, Status> {
        let ns = namespace::required(&req)?;
        let lease = crate::services::content::grpc::lease(&req);
        let r = req.into_inner();
        let descriptors = self
            .local
            .checkpoint(
                &ns,
                &r.container_id,
                &r.parent_checkpoint,
                r.options,
                lease.as_deref(),
            )
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(api::CheckpointTaskResponse {
            descriptors: descriptors
                .into_iter()
                .map(|d| ctypes::Descriptor {
                    media_type: d.media_type,
                    digest: d.digest,
                    size: d.size,
                    annotations: d.annotations,
                })
                .collect(),
        }))
    }

    async fn update(&self, req: Request<api::UpdateTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace::required(&req)?;
        let r = req.into_inner();
        self.local
            .update(&ns, &r.container_id, r.resources, r.annotations)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(()))
    }

    async fn metrics(
        &self,
        req: Request<api::MetricsRequest>,
    ) -> Result<Response<api::MetricsResponse>, Status> {
        let ns = namespace::required(&req)?;
        let r = req.into_inner();
        let metrics = self
            .local
            .metrics(&ns, &r.filters)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(api::MetricsResponse {
            metrics: metrics
                .into_iter()
                .map(|m| ctypes::Metric {
                    timestamp: Some(ts(m.timestamp)),
                    id: m.id,
                    data: m.data,
                })
                .collect(),
        }))
    }

    async fn wait(&self, req: Request<api::WaitRequest>) -> Result<Response<api::WaitResponse>, Status> {
        let ns = namespace::required(&req)?;
        let r = req.into_inner();
        let exit = self
            .local
            .wait(&ns, &r.container_id, &r.exec_id)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(api::WaitResponse {
            exit_status: exit.status,
            exited_at: Some(ts(exit.timestamp)),
        }))
    }
}

//! [`TaskRuntime`]: the `SandboxController` and `ContainerRuntime` over the in-process
//! services, in namespace `k8s.io` (containerd's CRI does the same through its in-memory
//! services; nothing here talks to a shim).
//!
//! ```text
//! create/start  rootfs.image(ref) ─▶ rootfs.prepare(id) = mounts
//!               Containers::create(record: spec Any, runtime type, image, sandbox id)
//!               Tasks::create(rootfs mounts, stdio fifos, runtime_path) ─▶ Tasks::start
//!               (any failure: what was created is deleted again)
//! kill/wait     Tasks::kill / Tasks::wait (init process)
//! update        Tasks::update(LinuxResources as JSON Any)
//! exec          the record's spec process with new args (and a terminal when asked) →
//!               Tasks::exec + start; wait, kill, resize_pty, close_io, delete_process
//! delete        Tasks::delete, Containers::delete, rootfs.remove — NotFound is fine
//! ```
//!
//! Every Tasks call that reaches a shim runs in a span `shim{op, id, exec_id}`
//! ([`shim_call`]; OpenTelemetry `shim.Create`, `shim.Start`, ... under the CRI call's span).
//!
//! Images and root file systems come from a [`RootfsProvider`] (the images + snapshots
//! services); without one the CRI plugin installs no controller.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tracing::Instrument as _;

use crate::cri::backend::contract::{
    ContainerRuntime, CreateContainer, ExitInfo, ImageInfo, RootfsProvider, SandboxController, StartSandbox,
};
use crate::cri::error::CriError;
use crate::cri::error::NAMESPACE;
use crate::cri::io::exec_output::ExecIo;
use crate::cri::spec;
use crate::cri::userns::PodUserns;
use crate::errdefs::{ErrorKind, Kind, not_found_ok};
use crate::metadata::{Container, Runtime};
use crate::rollback::Rollback;
use crate::runtime::Stdio;
use crate::services::containers::Containers;
use crate::services::tasks::{CreateTask, Tasks};

/// The `Any` type URL of an exec's OCI process spec.
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// The `Any` type URL runc's shim decodes task updates with.
const RESOURCES_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

/// The CRI's runtime over the tasks and containers services.
pub struct TaskRuntime {
    tasks: Arc<dyn Tasks>,
    containers: Arc<dyn Containers>,
    rootfs: Arc<dyn RootfsProvider>,
}

impl TaskRuntime {
    pub fn new(
        tasks: Arc<dyn Tasks>,
        containers: Arc<dyn Containers>,
        rootfs: Arc<dyn RootfsProvider>,
    ) -> Self {
        TaskRuntime {
            tasks,
            containers,
            rootfs,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_task(
        &self,
        id: &str,
        sandbox_id: &str,
        image: &ImageInfo,
        spec: &oci_spec::runtime::Spec,
        handler: &crate::cri::config::RuntimeHandler,
        io: Stdio,
        kind: &str,
    ) -> Result<(), CriError> {
        let mounts = match pod_userns(spec) {
            None => self.rootfs.prepare(id, image).await?,
            Some(map) => self.rootfs.prepare_remapped(id, image, sandbox_id, &map).await?,
        };
        let mut rollback = Rollback::new(format!("create {kind} {id}"));
        rollback.defer("remove the rootfs", || self.rootfs.remove(id));
        let record = Container {
            id: id.to_owned(),
            labels: BTreeMap::from([("io.cri-containerd.kind".to_owned(), kind.to_owned())]),
            image: image.reference.clone(),
            runtime: Runtime {
                name: handler.runtime_type.clone(),
                // Checked when the config was loaded; the handler's name only labels errors.
                options: handler.runtime_options("")?,
            },
            spec: Some(spec::to_any(spec)?),
            snapshotter: self.rootfs.snapshotter().to_owned(),
            snapshot_key: if self.rootfs.snapshotter().is_empty() {
                String::new()
            } else {
                id.to_owned()
            },
            sandbox: sandbox_id.to_owned(),
            ..Default::default()
        };
        if let Err(e) = self.containers.create(NAMESPACE, record).await {
            rollback.undo().await;
            return Err(CriError::backend("create container record", e));
        }
        rollback.defer("delete the container record", || async move {
            self.containers
                .delete(NAMESPACE, id)
                .await
                .map_err(|e| CriError::backend("delete container record", e))
        });
        let created = shim_call(
            "Create",
            id,
            "",
            self.tasks.create(
                NAMESPACE,
                CreateTask {
                    container_id: id.to_owned(),
                    rootfs: mounts,
                    io,
                    runtime_path: handler.runtime_path.clone(),
                    ..Default::default()
                },
            ),
        )
        .await;
        if let Err(e) = created {
            rollback.undo().await;
            return Err(CriError::backend("create task", e));
        }
        rollback.disarm();
        Ok(())
    }

    async fn remove_all(&self, id: &str) -> Result<(), CriError> {
        not_found_ok(
            shim_call("Delete", id, "", self.tasks.delete(NAMESPACE, id))
                .await
                .map(|_| ()),
        )
        .map_err(|e| CriError::backend("delete task", e))?;
        not_found_ok(self.containers.delete(NAMESPACE, id).await)
            .map_err(|e| CriError::backend("delete container record", e))?;
        self.rootfs.remove(id).await
    }
}

/// Runs one tasks-service call that reaches the container's shim in a span
/// `shim{op, id, exec_id}` (OpenTelemetry: `shim.<op>`, kind client), failed on an error
/// other than NotFound (which callers here take as done).
async fn shim_call<T, E>(
    op: &'static str,
    id: &str,
    exec_id: &str,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E>
where
    E: ErrorKind + std::fmt::Display,
{
    let span = tracing::info_span!(
        "shim",
        op,
        id,
        exec_id,
        otel.name = %format_args!("shim.{op}"),
        otel.kind = "client",
    );
    let result = call.instrument(span.clone()).await;
    if let Err(e) = &result
        && e.kind() != Kind::NotFound
    {
        crate::telemetry::set_error(&span, e.to_string());
    }
    result
}

#[async_trait]
impl SandboxController for TaskRuntime {
    async fn ensure_image(&self, image: &str) -> Result<ImageInfo, CriError> {
        self.rootfs.image(image).await
    }

    async fn start(&self, req: StartSandbox) -> Result<u32, CriError> {
        self.create_task(
            &req.id,
            &req.id,
            &req.image,
            &req.spec,
            &req.handler,
            Stdio::default(),
            "sandbox",
        )
        .await?;
        match shim_call("Start", &req.id, "", self.tasks.start(NAMESPACE, &req.id, "")).await {
            Ok(pid) => Ok(pid),
            Err(e) => {
                let _ = self.remove_all(&req.id).await;
                Err(CriError::backend("start pause task", e))
            }
        }
    }

    async fn stop(&self, id: &str) -> Result<(), CriError> {
        match shim_call(
            "Kill",
            id,
            "",
            self.tasks.kill(NAMESPACE, id, "", libc::SIGKILL as u32, true),
        )
        .await
        {
            Ok(()) => {}
            Err(e) if e.kind() == Kind::NotFound => return Ok(()),
            Err(e) => return Err(CriError::backend("kill pause task", e)),
        }
        not_found_ok(
            shim_call("Wait", id, "", self.tasks.wait(NAMESPACE, id, ""))
                .await
                .map(|_| ()),
        )
        .map_err(|e| CriError::backend("wait pause task", e))
    }

    async fn delete(&self, id: &str) -> Result<(), CriError> {
        self.remove_all(id).await
    }

    async fn remove_pod_rootfs(&self, sandbox_id: &str) -> Result<(), CriError> {
        self.rootfs.remove_pod(sandbox_id).await
    }
}

/// The user namespace mapping a spec asks for (its first uid and gid ranges).
fn pod_userns(spec: &oci_spec::runtime::Spec) -> Option<PodUserns> {
    let linux = spec.linux().as_ref()?;
    let one = |m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        m.as_ref()?.first().map(|m| crate::cri::userns::IdMap {
            container_id: m.container_id(),
            host_id: m.host_id(),
            length: m.size(),
        })
    };
    Some(PodUserns {
        uid: one(linux.uid_mappings())?,
        gid: one(linux.gid_mappings())?,
    })
}

#[async_trait]
impl ContainerRuntime for TaskRuntime {
    async fn image(&self, reference: &str) -> Result<ImageInfo, CriError> {
        self.rootfs.image(reference).await
    }

    async fn create(&self, req: CreateContainer) -> Result<(), CriError> {
        let io = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        self.create_task(
            &req.id,
            &req.sandbox_id,
            &req.image,
            &req.spec,
            &req.handler,
            io,
            "container",
        )
        .await
    }

    async fn start(&self, id: &str) -> Result<u32, CriError> {
        shim_call("Start", id, "", self.tasks.start(NAMESPACE, id, ""))
            .await
            .map_err(|e| CriError::backend("start task", e))
    }

    async fn checkpoint(&self, id: &str, image_dir: &std::path::Path) -> Result<(), CriError> {
        use prost::Message;
        let opts = taskd_proto::containerd::types::runc::options::CheckpointOptions {
            exit: false,
            image_path: image_dir.display().to_string(),
            ..Default::default()
        };
        let any = prost_types::Any {
            type_url: "containerd.runc.v1.CheckpointOptions".to_owned(),
            value: opts.encode_to_vec(),
        };
        shim_call(
            "Checkpoint",
            id,
            "",
            self.tasks.checkpoint(NAMESPACE, id, "", Some(any), None),
        )
        .await
        .map(|_| ())
        .map_err(|e| CriError::backend("checkpoint task", e))
    }

    async fn task_state(&self, id: &str) -> Result<Option<crate::runtime::State>, CriError> {
        match shim_call("State", id, "", self.tasks.get(NAMESPACE, id, "")).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == Kind::NotFound => Ok(None),
            Err(e) => Err(CriError::backend("get task", e)),
        }
    }

    async fn kill(&self, id: &str, signal: u32) -> Result<(), CriError> {
        not_found_ok(shim_call("Kill", id, "", self.tasks.kill(NAMESPACE, id, "", signal, false)).await)
            .map_err(|e| CriError::backend("kill task", e))
    }

    async fn wait(&self, id: &str) -> Result<ExitInfo, CriError> {
        let exit = shim_call("Wait", id, "", self.tasks.wait(NAMESPACE, id, ""))
            .await
            .map_err(|e| CriError::backend("wait task", e))?;
        Ok(ExitInfo {
            code: exit.status,
            at: exit.timestamp,
        })
    }

    async fn delete(&self, id: &str) -> Result<(), CriError> {
        self.remove_all(id).await
    }

    async fn exec(&self, id: &str, exec_id: &str, args: Vec<String>, io: ExecIo) -> Result<u32, CriError> {
        let record = self
            .containers
            .get(NAMESPACE, id)
            .await
            .map_err(|e| CriError::backend("get container record", e))?;
        let spec: oci_spec::runtime::Spec = record
            .spec
            .as_ref()
            .map(|a| serde_json::from_slice(&a.value))
            .transpose()
            .map_err(spec::SpecError::from)?
            .unwrap_or_default();
        let mut process = spec.process().clone().unwrap_or_default();
        process.set_args(Some(args)).set_terminal(Some(io.terminal));
        let opts = crate::runtime::ExecOpts {
            spec: prost_types::Any {
                type_url: PROCESS_TYPE_URL.to_owned(),
                value: serde_json::to_vec(&process).map_err(spec::SpecError::from)?,
            },
            io: Stdio {
                stdin: io.stdin,
                stdout: io.stdout,
                stderr: io.stderr,
                terminal: io.terminal,
            },
        };
        shim_call("Exec", id, exec_id, self.tasks.exec(NAMESPACE, id, exec_id, opts))
            .await
            .map_err(|e| CriError::backend("exec", e))?;
        match shim_call("Start", id, exec_id, self.tasks.start(NAMESPACE, id, exec_id)).await {
            Ok(pid) => Ok(pid),
            Err(e) => {
                let _ = shim_call(
                    "DeleteProcess",
                    id,
                    exec_id,
                    self.tasks.delete_process(NAMESPACE, id, exec_id),
                )
                .await;
                Err(CriError::backend("start exec", e))
            }
        }
    }

    async fn exec_wait(&self, id: &str, exec_id: &str) -> Result<ExitInfo, CriError> {
        let exit = shim_call("Wait", id, exec_id, self.tasks.wait(NAMESPACE, id, exec_id))
            .await
            .map_err(|e| CriError::backend("wait exec", e))?;
        Ok(ExitInfo {
            code: exit.status,
            at: exit.timestamp,
        })
    }

    async fn exec_kill(&self, id: &str, exec_id: &str, signal: u32) -> Result<(), CriError> {
        not_found_ok(
            shim_call(
                "Kill",
                id,
                exec_id,
                self.tasks.kill(NAMESPACE, id, exec_id, signal, false),
            )
            .await,
        )
        .map_err(|e| CriError::backend("kill exec", e))
    }

    async fn exec_delete(&self, id: &str, exec_id: &str) -> Result<(), CriError> {
        not_found_ok(
            shim_call(
                "DeleteProcess",
                id,
                exec_id,
                self.tasks.delete_process(NAMESPACE, id, exec_id),
            )
            .await
            .map(|_| ()),
        )
        .map_err(|e| CriError::backend("delete exec", e))
    }

    async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<(), CriError> {
        shim_call(
            "ResizePty",
            id,
            exec_id,
            self.tasks.resize_pty(NAMESPACE, id, exec_id, width, height),
        )
        .await
        .map_err(|e| CriError::backend("resize terminal", e))
    }

    async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), CriError> {
        not_found_ok(
            shim_call(
                "CloseIO",
                id,
                exec_id,
                self.tasks.close_io(NAMESPACE, id, exec_id, true),
            )
            .await,
        )
        .map_err(|e| CriError::backend("close stdin", e))
    }

    async fn stats(&self, ids: &[String]) -> Result<Vec<crate::cri::backend::contract::TaskStats>, CriError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One filter per id: containerd filter strings are OR'ed.
        let filters: Vec<String> = ids.iter().map(|id| format!("id=={id:?}")).collect();
        let metrics = self
            .tasks
            .metrics(NAMESPACE, &filters)
            .await
            .map_err(|e| CriError::backend("task metrics", e))?;
        Ok(metrics
            .into_iter()
            .map(|m| crate::cri::backend::contract::TaskStats {
                id: m.id,
                timestamp: m.timestamp,
                data: m.data,
            })
            .collect())
    }

    async fn update(&self, id: &str, resources: oci_spec::runtime::LinuxResources) -> Result<(), CriError> {
        let any = prost_types::Any {
            type_url: RESOURCES_TYPE_URL.to_owned(),
            value: serde_json::to_vec(&resources).map_err(spec::SpecError::from)?,
        };
        shim_call(
            "Update",
            id,
            "",
            self.tasks.update(NAMESPACE, id, Some(any), Default::default()),
        )
        .await
        .map_err(|e| CriError::backend("update task", e))
    }
}

//! The in-process tasks service (containerd's `plugins/services/tasks/local.go`): holds the
//! runtime, the container store and the task monitor.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;

use super::checkpoint::{self, Checkpoints};
use super::{CreateTask, Descriptor, Metric, Result, Tasks, TasksError};
use crate::errdefs::{ErrorKind, Kind};
use crate::filters::{self, Adaptor};
use crate::identifiers;
use crate::metadata::{Container, ContainerStore};
use crate::monitor::{MonitoredTask, TaskMonitor};
use crate::runtime::{
    CreateOpts, ExecOpts, Exit, PlatformRuntime, Process, ProcessInfo, State, Status, Task,
};

/// How many shims one call asks at once (a Metrics call's stats, recovery's states).
const SHIMS_AT_ONCE: usize = 16;

/// The plugin id (`io.containerd.service.v1.tasks-service`).
pub const ID: &str = "tasks-service";

/// How long Get/List wait for one shim's state before reporting it unknown.
const STATE_TIMEOUT: Duration = Duration::from_secs(2);

/// The tasks service.
pub struct Local {
    runtime: Arc<dyn PlatformRuntime>,
    containers: Arc<dyn ContainerStore>,
    monitor: Arc<dyn TaskMonitor>,
    /// Checkpoint/restore through the content store (absent: Unimplemented).
    checkpoints: Option<Checkpoints>,
}

fn label_map(runtime: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("runtime".to_owned(), runtime.to_owned())])
}

struct TaskFields<'a> {
    state: &'a State,
    runtime: &'a str,
}

impl Adaptor for TaskFields<'_> {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["id" | "container_id"] => Some(self.state.id.clone()),
            ["pid"] => Some(self.state.pid.to_string()),
            ["status"] => Some(self.state.status.as_str().to_owned()),
            ["runtime"] => Some(self.runtime.to_owned()),
            _ => None,
        }
    }
}

struct MetricFields<'a> {
    id: &'a str,
    namespace: &'a str,
    runtime: &'a str,
}

impl Adaptor for MetricFields<'_> {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["id"] => Some(self.id.to_owned()),
            ["namespace"] => Some(self.namespace.to_owned()),
            ["runtime"] => Some(self.runtime.to_owned()),
            _ => None,
        }
    }
}

impl Local {
    pub fn new(
        runtime: Arc<dyn PlatformRuntime>,
        containers: Arc<dyn ContainerStore>,
        monitor: Arc<dyn TaskMonitor>,
    ) -> Local {
        Local {
            runtime,
            containers,
            monitor,
            checkpoints: None,
        }
    }

    /// Enables Checkpoint and Create-from-checkpoint (content store + staging root).
    pub fn with_checkpoints(mut self, checkpoints: Checkpoints) -> Local {
        self.checkpoints = Some(checkpoints);
        self
    }

    fn checkpoints(&self, what: &'static str) -> Result<&Checkpoints> {
        self.checkpoints
            .as_ref()
            .ok_or(TasksError::CheckpointNotImplemented { what })
    }

    /// Removes checkpoint staging dirs a previous run left (restore dirs of live tasks stay).
    pub async fn clean_stale_checkpoints(&self) {
        let Some(cp) = &self.checkpoints else {
            return;
        };
        let alive: std::collections::HashSet<(String, String)> = self
            .runtime
            .tasks(None)
            .await
            .iter()
            .map(|t| (t.namespace().to_owned(), t.id().to_owned()))
            .collect();
        cp.clean_stale(|ns, id| alive.contains(&(ns.to_owned(), id.to_owned())));
    }

    /// Re-registers every task the runtime recovered with the monitor (with its `runtime`
    /// label, which containerd loses across a restart).
    pub async fn monitor_recovered(&self) {
        // Recovery asked every task's state just before: what it learned is used, not a
        // second round trip to each shim. A task that stopped since is monitored until its
        // delete, as any task that exits.
        for t in self.runtime.tasks(None).await {
            if t.last_status() == Status::Stopped {
                continue;
            }
            let mut runtime = t.runtime().to_owned();
            if runtime.is_empty()
                && let Ok(c) = self.containers.get(t.namespace(), t.id())
            {
                runtime = c.runtime.name;
            }
            self.monitor.monitor(MonitoredTask {
                namespace: t.namespace().to_owned(),
                id: t.id().to_owned(),
                pid: t.pid(),
                cgroups_path: t.cgroups_path(),
                labels: label_map(&runtime),
            });
        }
    }

    fn container(&self, ns: &str, id: &str) -> Result<Container> {
        identifiers::validate("container_id", id)?;
        Ok(self.containers.get(ns, id)?)
    }

    /// containerd's `getTask`: the container must exist, then its task.
    async fn task(&self, ns: &str, id: &str) -> Result<Arc<dyn Task>> {
        let c = self.container(ns, id)?;
        self.runtime
            .get(ns, &c.id)
            .await
            .map_err(|_| TasksError::NotFound { id: id.to_owned() })
    }

    async fn process(&self, ns: &str, id: &str, exec_id: &str) -> Result<Arc<dyn Process>> {
        let t = self.task(ns, id).await?;
        if exec_id.is_empty() {
            return Ok(t as Arc<dyn Process>);
        }
        Ok(t.process(exec_id).await?)
    }

    /// The state, bounded in time: a hung shim shows as `unknown` instead of hanging
    /// List.
    async fn state_of(p: &dyn Process, pid: u32) -> Result<State> {
        match tokio::time::timeout(STATE_TIMEOUT, p.state()).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) if e.kind() == Kind::NotFound => Err(e.into()),
            Ok(Err(e)) => {
                tracing::error!(id = p.id(), error = %e, "get task state");
                Ok(unknown_state(p.id(), pid))
            }
            Err(_) => {
                tracing::error!(id = p.id(), "get task state timed out");
                Ok(unknown_state(p.id(), pid))
            }
        }
    }
}

fn unknown_state(id: &str, pid: u32) -> State {
    State {
        id: id.to_owned(),
        pid,
        status: Status::Unknown,
        io: Default::default(),
        exit_status: 0,
        exited_at: None,
    }
}

#[async_trait::async_trait]
impl Tasks for Local {
    async fn create(&self, ns: &str, req: CreateTask) -> Result<u32> {
        let c = self.container(ns, &req.container_id)?;
        let mut restore = checkpoint::restore_path(req.options.as_ref())?;
        match self.runtime.get(ns, &c.id).await {
            Ok(_) => return Err(TasksError::AlreadyExists { id: c.id }),
            Err(e) if e.kind() == Kind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        // containerd: the runc options' criu_image_path wins over the descriptor.
        let mut unpacked = None;
        if restore.is_empty()
            && let Some(desc) = &req.checkpoint
        {
            let cp = self.checkpoints("create from checkpoint")?;
            checkpoint::check_media_type(&desc.media_type)?;
            let dir = cp.unpack(ns, &c.id, desc).await?;
            restore = dir.to_string_lossy().into_owned();
            unpacked = Some(dir);
        }
        let mut opts = CreateOpts {
            spec: c.spec.clone(),
            rootfs: req.rootfs,
            io: req.io,
            checkpoint: (!restore.is_empty()).then_some(restore),
            runtime: c.runtime.name.clone(),
            runtime_options: c.runtime.options.clone(),
            task_options: req.options,
        };
        if !req.runtime_path.is_empty() {
            opts.runtime = req.runtime_path;
        }
        let t = match self.runtime.create(ns, &c.id, opts).await {
            Ok(t) => t,
            Err(e) => {
                if let (Some(dir), Some(cp)) = (&unpacked, &self.checkpoints) {
                    cp.discard(ns, &c.id, dir);
                }
                return Err(e.into());
            }
        };
        self.monitor.monitor(MonitoredTask {
            namespace: ns.to_owned(),
            id: c.id.clone(),
            pid: t.pid(),
            cgroups_path: t.cgroups_path(),
            labels: label_map(&c.runtime.name),
        });
        Ok(t.pid())
    }

    async fn start(&self, ns: &str, id: &str, exec_id: &str) -> Result<u32> {
        let p = self.process(ns, id, exec_id).await?;
        p.start().await.map_err(|e| {
            let msg = e.to_string();
            if msg.contains("criu failed") || msg.contains("OCI runtime restore failed") {
                checkpoint::criu_failure(id, "restore", e)
            } else {
                e.into()
            }
        })
    }

    async fn delete(&self, ns: &str, id: &str) -> Result<Exit> {
        let t = self.task(ns, id).await?;
        self.monitor.stop(ns, t.id());
        let exit = self.runtime.delete(ns, t.id()).await?;
        if let Some(cp) = &self.checkpoints {
            cp.remove_restored(ns, t.id());
        }
        Ok(exit)
    }

    async fn delete_process(&self, ns: &str, id: &str, exec_id: &str) -> Result<Exit> {
        if exec_id.is_empty() {
            return Err(TasksError::InvalidArgument {
                field: "exec_id",
                reason: "must be set (delete the init process with Delete)".into(),
            });
        }
        let p = self.process(ns, id, exec_id).await?;
        Ok(p.delete().await?)
    }

    async fn get(&self, ns: &str, id: &str, exec_id: &str) -> Result<State> {
        let t = self.task(ns, id).await?;
        let pid = t.pid();
        if exec_id.is_empty() {
            return Local::state_of(t.as_ref(), pid).await;
        }
        let p = t.process(exec_id).await?;
        Local::state_of(p.as_ref(), 0).await
    }

    async fn list(&self, ns: &str, filter: &str) -> Result<Vec<State>> {
        let filter = if filter.is_empty() {
            filters::Filter::always()
        } else {
            filters::parse(&[filter.to_owned()])?
        };
        let mut out = Vec::new();
        for t in self.runtime.tasks(Some(ns)).await {
            let Ok(state) = Local::state_of(t.as_ref(), t.pid()).await else {
                continue; // deleted meanwhile
            };
            if filter.matches(&TaskFields {
                state: &state,
                runtime: t.runtime(),
            }) {
                out.push(state);
            }
        }
        Ok(out)
    }

    async fn kill(&self, ns: &str, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let p = self.process(ns, id, exec_id).await?;
        Ok(p.kill(signal, all).await?)
    }

    async fn exec(&self, ns: &str, id: &str, exec_id: &str, opts: ExecOpts) -> Result<()> {
        if exec_id.is_empty() {
            return Err(TasksError::InvalidArgument {
                field: "exec_id",
                reason: "exec id cannot be empty".into(),
            });
        }
        identifiers::validate("exec_id", exec_id)?;
        let t = self.task(ns, id).await?;
        t.exec(exec_id, opts).await?;
        Ok(())
    }

    async fn resize_pty(&self, ns: &str, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let p = self.process(ns, id, exec_id).await?;
        Ok(p.resize_pty(width, height).await?)
    }

    async fn close_io(&self, ns: &str, id: &str, exec_id: &str, stdin: bool) -> Result<()> {
        let p = self.process(ns, id, exec_id).await?;
        if stdin {
            p.close_io().await?;
        }
        Ok(())
    }

    async fn pause(&self, ns: &str, id: &str) -> Result<()> {
        Ok(self.task(ns, id).await?.pause().await?)
    }

    async fn resume(&self, ns: &str, id: &str) -> Result<()> {
        Ok(self.task(ns, id).await?.resume().await?)
    }

    async fn list_pids(&self, ns: &str, id: &str) -> Result<Vec<ProcessInfo>> {
        Ok(self.task(ns, id).await?.pids().await?)
    }

    async fn checkpoint(
        &self,
        ns: &str,
        id: &str,
        _parent: &str,
        options: Option<prost_types::Any>,
        lease: Option<&str>,
    ) -> Result<Vec<Descriptor>> {
        let c = self.container(ns, id)?;
        let t = self.task(ns, id).await?;
        // containerd: runc's own image_path means "dump there, store nothing".
        let own = checkpoint::checkpoint_path(options.as_ref())?;
        if !own.is_empty() {
            t.checkpoint(&own, options)
                .await
                .map_err(|e| checkpoint::criu_failure(id, "checkpoint", e))?;
            return Ok(Vec::new());
        }
        let cp = self.checkpoints("checkpoint")?;
        let dir = cp.dump_dir()?;
        t.checkpoint(&dir.path().to_string_lossy(), options)
            .await
            .map_err(|e| checkpoint::criu_failure(id, "checkpoint", e))?;
        cp.store(ns, c.spec.as_ref(), lease, &dir).await
    }

    async fn update(
        &self,
        ns: &str,
        id: &str,
        resources: Option<prost_types::Any>,
        annotations: HashMap<String, String>,
    ) -> Result<()> {
        Ok(self.task(ns, id).await?.update(resources, annotations).await?)
    }

    async fn metrics(&self, ns: &str, filters: &[String]) -> Result<Vec<Metric>> {
        let filter = filters::parse(filters)?;
        let tasks: Vec<_> = self
            .runtime
            .tasks(Some(ns))
            .await
            .into_iter()
            .filter(|t| {
                filter.matches(&MetricFields {
                    id: t.id(),
                    namespace: t.namespace(),
                    runtime: t.runtime(),
                })
            })
            .collect();
        // One Stats call per task, each to its own shim: up to SHIMS_AT_ONCE at once (a
        // full node's 220 tasks one after another took over a second), answered in order.
        // (The futures are made first: a closure inside the stream trips the Send check of
        // the async trait.)
        let calls: Vec<_> = tasks.into_iter().map(task_metric).collect();
        let samples: Vec<Option<Metric>> = futures::stream::iter(calls)
            .buffered(SHIMS_AT_ONCE)
            .collect()
            .await;
        Ok(samples.into_iter().flatten().collect())
    }

    async fn wait(&self, ns: &str, id: &str, exec_id: &str) -> Result<Exit> {
        let p = self.process(ns, id, exec_id).await?;
        Ok(p.wait().await?)
    }
}

/// One task's Stats answer as a Metric; None when the task is gone (or its shim failed,
/// logged).
async fn task_metric(t: Arc<dyn Task>) -> Option<Metric> {
    let timestamp = SystemTime::now();
    match t.stats().await {
        Ok(data) => Some(Metric {
            id: t.id().to_owned(),
            timestamp,
            data,
        }),
        Err(e) if e.kind() == Kind::NotFound => None,
        Err(e) => {
            tracing::error!(id = t.id(), error = %e, "collecting task metrics");
            None
        }
    }
}

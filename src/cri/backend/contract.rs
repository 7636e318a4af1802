//! The sandbox controller: what actually runs a pod's pause container (containerd 2's
//! `sandbox.Controller`, "podsandbox" flavour). RunPodSandbox/StopPodSandbox/
//! RemovePodSandbox own the pod's bookkeeping (store, netns, CNI, pod files) and call the
//! controller for the process; the controller is built over the in-process tasks,
//! containers, images and snapshots services (namespace `k8s.io`), never over shims.
//!
//! ```text
//!   ensure_image(ref) ─▶ image config        (pull when missing)
//!   start(StartSandbox) ─▶ pid               rootfs snapshot + container record + task
//!   stop(id)                                 SIGKILL the pause task, wait for its exit
//!   delete(id)                               task, container record, snapshot; idempotent
//! ```
//!
//! When the services it needs are not on this build, no controller is set and the pod
//! RPCs answer Unimplemented naming what is missing.

use async_trait::async_trait;

use crate::cri::config::RuntimeHandler;
use crate::cri::error::CriError;
use crate::cri::io::exec_output::ExecIo;
use crate::cri::store::image::ImageConfig;
use crate::cri::userns::PodUserns;
use crate::runtime::Mount;

/// Everything the controller needs to start a pause container.
#[derive(Debug, Clone)]
pub struct StartSandbox {
    pub id: String,
    /// The pause image, as `ensure_image` resolved it (resolved once per pod).
    pub image: ImageInfo,
    /// The OCI spec, built by RunPodSandbox (`cri::spec::sandbox`).
    pub spec: oci_spec::runtime::Spec,
    pub handler: RuntimeHandler,
}

/// Runs pause containers.
#[async_trait]
pub trait SandboxController: Send + Sync {
    /// The image `image` resolves to (config, id, reference), pulling it when it is not
    /// present; `start` takes what this returns.
    async fn ensure_image(&self, image: &str) -> Result<ImageInfo, CriError>;
    /// Creates and starts the pause container; returns its pid.
    async fn start(&self, req: StartSandbox) -> Result<u32, CriError>;
    /// Stops the pause container (no-op when it is not running).
    async fn stop(&self, id: &str) -> Result<(), CriError>;
    /// Removes everything `start` created (no-op for what is already gone).
    async fn delete(&self, id: &str) -> Result<(), CriError>;
    /// Removes what the pod's containers' root file systems shared (the image copies of a
    /// pod in a user namespace), once they are all removed; no-op when there is none.
    async fn remove_pod_rootfs(&self, _sandbox_id: &str) -> Result<(), CriError> {
        Ok(())
    }
}

/// What the image gives a container (config + the files user resolution reads).
#[derive(Debug, Clone, Default)]
pub struct ImageInfo {
    /// The config digest (CRI's image id / image_ref).
    pub id: String,
    /// The normalized reference the container was created from.
    pub reference: String,
    pub config: ImageConfig,
    /// The image's `/etc/passwd` and `/etc/group`, when present.
    pub passwd: Option<String>,
    pub group: Option<String>,
}

/// Creating a container's task.
#[derive(Debug, Clone)]
pub struct CreateContainer {
    pub id: String,
    pub sandbox_id: String,
    pub image: ImageInfo,
    pub spec: oci_spec::runtime::Spec,
    pub handler: RuntimeHandler,
    /// The stdin fifo the shim reads (empty: none).
    pub stdin: String,
    /// Fifo paths the shim writes (empty: discarded).
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// How a container's init process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: u32,
    pub at: std::time::SystemTime,
}

/// Runs app containers (tasks of the containers service records, namespace k8s.io).
#[async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// Resolves (pulls if needed) the image a container names.
    async fn image(&self, reference: &str) -> Result<ImageInfo, CriError>;
    /// Creates the container record, its rootfs and its task (not started).
    async fn create(&self, req: CreateContainer) -> Result<(), CriError>;
    /// Starts the task; returns the pid.
    async fn start(&self, id: &str) -> Result<u32, CriError>;
    /// CRIU-dumps the running task into `image_dir` (the process keeps running).
    async fn checkpoint(&self, id: &str, image_dir: &std::path::Path) -> Result<(), CriError>;
    /// The state of the task's init process; None when there is no task.
    async fn task_state(&self, id: &str) -> Result<Option<crate::runtime::State>, CriError>;
    /// Signals the init process.
    async fn kill(&self, id: &str, signal: u32) -> Result<(), CriError>;
    /// Waits for the init process to exit.
    async fn wait(&self, id: &str) -> Result<ExitInfo, CriError>;
    /// Removes the task, the record and the rootfs (no-op for what is gone).
    async fn delete(&self, id: &str) -> Result<(), CriError>;
    /// Applies new cgroup limits to the running task (and its stored spec).
    async fn update(&self, id: &str, resources: oci_spec::runtime::LinuxResources) -> Result<(), CriError>;
    /// Adds and starts an exec process running `args` with the container's process
    /// settings (env, cwd, user, capabilities); stdio through the fifos of `io`, a
    /// terminal when `io.terminal`. Returns its pid.
    async fn exec(&self, id: &str, exec_id: &str, args: Vec<String>, io: ExecIo) -> Result<u32, CriError>;
    async fn exec_wait(&self, id: &str, exec_id: &str) -> Result<ExitInfo, CriError>;
    async fn exec_kill(&self, id: &str, exec_id: &str, signal: u32) -> Result<(), CriError>;
    /// Forgets the exec process (absent is fine).
    async fn exec_delete(&self, id: &str, exec_id: &str) -> Result<(), CriError>;
    /// Resizes the terminal of a process (`exec_id` "" = the init process).
    async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<(), CriError>;
    /// Closes the stdin of a process (`exec_id` "" = the init process): the shim drops its
    /// own write end, so the process reads EOF once every writer closed.
    async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), CriError>;
    /// Cgroup stats of the given containers' tasks as the shim encodes them
    /// (`io.containerd.cgroups.v1.Metrics`, …), with the sampling time; a container without
    /// a task is absent from the answer.
    async fn stats(&self, ids: &[String]) -> Result<Vec<TaskStats>, CriError>;
}

/// One task's stats sample.
#[derive(Debug, Clone)]
pub struct TaskStats {
    pub id: String,
    pub timestamp: std::time::SystemTime,
    pub data: Option<prost_types::Any>,
}

/// Registry credentials from a PullImage request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    pub username: String,
    pub password: String,
    /// base64 `user:password`.
    pub auth: String,
    pub server_address: String,
    pub identity_token: String,
    pub registry_token: String,
}

/// One image name in the images service (namespace k8s.io), with what it points at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendImage {
    /// `docker.io/library/busybox:latest`, `…@sha256:…`, or the bare id.
    pub name: String,
    /// The config digest (CRI's image id).
    pub config_digest: String,
    /// Unpacked size in bytes.
    pub size: u64,
    pub config: ImageConfig,
}

/// Usage of the file system images (and container layers) live on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsUsage {
    pub mountpoint: String,
    pub used_bytes: u64,
    pub inodes_used: u64,
}

/// The image side: server-side pull, the k8s.io image names, snapshotter usage.
#[async_trait]
pub trait ImageBackend: Send + Sync {
    /// Pulls and unpacks `reference` (already normalized); returns the image it names.
    async fn pull(&self, reference: &str, auth: Option<Auth>) -> Result<BackendImage, CriError>;
    /// Every image name in the namespace.
    async fn list(&self) -> Result<Vec<BackendImage>, CriError>;
    /// Removes one image name (absent is fine).
    async fn remove(&self, name: &str) -> Result<(), CriError>;
    /// Usage of the snapshotter's file system.
    async fn fs_info(&self) -> Result<FsUsage, CriError>;
    /// Writes the container's writable layer (its changes to the image) as a tar to `dest`.
    async fn rootfs_diff(&self, container_id: &str, _dest: &std::path::Path) -> Result<(), CriError> {
        Err(CriError::FailedPrecondition {
            what: format!("container {container_id}"),
            reason: "this image backend cannot export a container's writable layer".into(),
        })
    }
    /// Usage of a container's writable layer (its active snapshot); None when it has none.
    async fn writable_layer(&self, _container_id: &str) -> Result<Option<FsUsage>, CriError> {
        Ok(None)
    }
}

/// Images and writable root file systems for containers (snapshot key = container id).
#[async_trait]
pub trait RootfsProvider: Send + Sync {
    /// The snapshotter the root file systems come from ("" when they are not snapshots).
    fn snapshotter(&self) -> &str;
    async fn image(&self, reference: &str) -> Result<ImageInfo, CriError>;
    async fn prepare(&self, id: &str, image: &ImageInfo) -> Result<Vec<Mount>, CriError>;
    /// A rootfs whose files belong to pod `pod`'s user namespace `map` (made from a copy of
    /// the image the pod keeps until [`RootfsProvider::remove_pod`]).
    async fn prepare_remapped(
        &self,
        id: &str,
        _image: &ImageInfo,
        _pod: &str,
        _map: &PodUserns,
    ) -> Result<Vec<Mount>, CriError> {
        Err(CriError::FailedPrecondition {
            what: format!("container {id}"),
            reason: "this rootfs provider cannot give a root file system to a user namespace".into(),
        })
    }
    /// Removes the container's rootfs (absent is fine).
    async fn remove(&self, id: &str) -> Result<(), CriError>;
    /// Removes what [`RootfsProvider::prepare_remapped`] keeps for pod `pod` (after its
    /// containers' rootfs; absent is fine).
    async fn remove_pod(&self, _pod: &str) -> Result<(), CriError> {
        Ok(())
    }
}

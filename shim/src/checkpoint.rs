//! Checkpoint: `runc checkpoint` with the request's `containerd.runc.v1.CheckpointOptions`.

use std::path::Path;

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::{CheckpointOptions, Options};
use runc::Spawner;

use crate::error::ServiceError;
use crate::runcx::ReaperSpawner;

pub async fn run(
    req: &containerd_shim_protos::api::CheckpointTaskRequest,
    bundle: &Path,
    namespace: &str,
    opts: &Options,
) -> Result<(), ServiceError> {
    let id = req.id.as_str();
    let co = match req.options.as_ref() {
        Some(a) if !a.value.is_empty() => {
            CheckpointOptions::parse_from_bytes(&a.value).map_err(|e| ServiceError::Invalid {
                id: id.to_owned(),
                reason: format!("checkpoint options: {e}"),
            })?
        }
        _ => CheckpointOptions::default(),
    };
    let image = if !co.image_path.is_empty() {
        co.image_path.clone()
    } else if !req.path.is_empty() {
        req.path.clone()
    } else if !opts.criu_image_path.is_empty() {
        opts.criu_image_path.clone()
    } else {
        return Err(ServiceError::Invalid {
            id: id.to_owned(),
            reason: "checkpoint needs an image path".into(),
        });
    };
    let work = if !co.work_path.is_empty() {
        co.work_path.clone()
    } else if !opts.criu_work_path.is_empty() {
        opts.criu_work_path.clone()
    } else {
        bundle.join("criu-work").to_string_lossy().into_owned()
    };
    let mut cmd = crate::runcx::command(namespace, bundle, opts);
    cmd.arg("checkpoint")
        .arg("--image-path")
        .arg(&image)
        .arg("--work-path")
        .arg(&work);
    if !co.exit {
        cmd.arg("--leave-running");
    }
    for (on, flag) in [
        (co.open_tcp, "--tcp-established"),
        (co.external_unix_sockets, "--ext-unix-sk"),
        (co.terminal, "--shell-job"),
        (co.file_locks, "--file-locks"),
    ] {
        if on {
            cmd.arg(flag);
        }
    }
    for ns in &co.empty_namespaces {
        cmd.arg("--empty-ns").arg(ns);
    }
    if !co.cgroups_mode.is_empty() {
        cmd.arg("--manage-cgroups-mode").arg(&co.cgroups_mode);
    }
    cmd.arg(id);
    let (status, _, out, err) = ReaperSpawner.execute(cmd).await.map_err(|e| ServiceError::Runc {
        op: "checkpoint",
        id: id.to_owned(),
        msg: e.to_string(),
    })?;
    if !status.success() {
        let e = runc::error::Error::CommandFailed {
            status,
            stdout: out,
            stderr: err,
        };
        return Err(ServiceError::Runc {
            op: "checkpoint",
            id: id.to_owned(),
            msg: crate::runcx::describe(&e, bundle),
        });
    }
    Ok(())
}

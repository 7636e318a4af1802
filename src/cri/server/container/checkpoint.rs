//! `CheckpointContainer`: a checkpoint archive of a running container at the location
//! kubelet asks for (containerd's format: what `crictl checkpoint` / kubelet's checkpoint
//! API produce and `podman container restore` reads).
//!
//! ```text
//! container RUNNING (else FailedPrecondition); location absolute, its directory existing,
//! the file itself not (InvalidArgument)
//! stage <state>/checkpoints/<uuid>/
//!   config.dump        the CRI container record (JSON)
//!   rootfs-diff.tar    the container's writable layer (overlayfs upper dir)
//!   checkpoint/        CRIU images: the tasks service's Checkpoint with runc's image_path
//!                      (the process keeps running)
//! tar the stage to <location>.tmp, fsync, rename to <location>; the stage always goes
//! ```
//!
//! The CRIU dump runs last, so everything else is checked even where CRIU cannot run; its
//! failure comes back with CRIU's own error (FailedPrecondition) and nothing is written.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use taskd_proto::cri::v1::{CheckpointContainerRequest, CheckpointContainerResponse};

use crate::cri::error::CriError;
use crate::cri::server::container_state_error;
use crate::cri::service::CriService;
use crate::cri::store::container::ContainerState;

fn invalid(reason: String) -> CriError {
    CriError::InvalidArgument {
        field: "location",
        reason,
    }
}

/// The checkpoint location: absolute, in an existing directory, not an existing file.
pub fn check_location(location: &str) -> Result<PathBuf, CriError> {
    let p = PathBuf::from(location);
    if location.is_empty() || !p.is_absolute() {
        return Err(invalid(format!("{location:?} must be an absolute path")));
    }
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(invalid(format!("{location:?} must not contain \"..\"")));
    }
    match p.parent() {
        Some(dir) if dir.is_dir() => {}
        _ => return Err(invalid(format!("the directory of {location:?} does not exist"))),
    }
    if p.symlink_metadata().is_ok() {
        return Err(invalid(format!("{location:?} exists already")));
    }
    Ok(p)
}

/// Tars `stage` into `location` (through a temp file renamed into place).
fn write_archive(stage: &Path, location: &Path) -> std::io::Result<()> {
    let mut tmp = location.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        // New (O_EXCL) and 0600: the archive holds the container's memory and files.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut b = tar::Builder::new(std::io::BufWriter::new(f));
        b.follow_symlinks(false);
        b.append_dir_all(".", stage)?;
        b.into_inner()?
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)?
            .sync_all()?;
        std::fs::rename(&tmp, location)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl CriService {
    pub async fn checkpoint_container(
        &self,
        req: CheckpointContainerRequest,
    ) -> Result<CheckpointContainerResponse, CriError> {
        let runner = self.container_runtime("CheckpointContainer")?;
        let c = self.containers.get(&req.container_id)?;
        if c.state != ContainerState::Running {
            return Err(container_state_error(
                &c,
                ", only a running container can be checkpointed",
            ));
        }
        let location = check_location(&req.location)?;
        let stage = self
            .state
            .join("checkpoints")
            .join(uuid::Uuid::new_v4().simple().to_string());
        let io = |what: &'static str| {
            move |e: std::io::Error| CriError::FailedPrecondition {
                what: what.into(),
                reason: e.to_string(),
            }
        };
        let result = async {
            std::fs::create_dir_all(stage.join("checkpoint")).map_err(io("checkpoint staging dir"))?;
            let config = serde_json::to_vec_pretty(&c).map_err(|e| CriError::FailedPrecondition {
                what: "config.dump".into(),
                reason: e.to_string(),
            })?;
            std::fs::write(stage.join("config.dump"), config).map_err(io("config.dump"))?;
            if let Some(backend) = &self.image_backend {
                backend.rootfs_diff(&c.id, &stage.join("rootfs-diff.tar")).await?;
            }
            runner.checkpoint(&c.id, &stage.join("checkpoint")).await?;
            let (stage, location) = (stage.clone(), location.clone());
            tokio::task::spawn_blocking(move || write_archive(&stage, &location))
                .await
                .map_err(|e| CriError::FailedPrecondition {
                    what: "checkpoint archive".into(),
                    reason: e.to_string(),
                })?
                .map_err(io("checkpoint archive"))
        }
        .await;
        let _ = std::fs::remove_dir_all(&stage);
        result?;
        tracing::info!(container = %c.id, location = %location.display(), "container checkpointed");
        Ok(CheckpointContainerResponse {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let ok = d.path().join("c.tar");
        assert_eq!(check_location(ok.to_str().unwrap()).unwrap(), ok);
        for bad in ["", "rel/c.tar", "/no/such/dir/c.tar", "/tmp/../etc/c.tar"] {
            assert!(
                matches!(check_location(bad), Err(CriError::InvalidArgument { .. })),
                "{bad}"
            );
        }
        std::fs::write(&ok, b"x").unwrap();
        assert!(
            check_location(ok.to_str().unwrap()).is_err(),
            "an existing file is not overwritten"
        );
    }

    #[test]
    fn the_archive_holds_the_stage() {
        let d = tempfile::tempdir().unwrap();
        let stage = d.path().join("stage");
        std::fs::create_dir_all(stage.join("checkpoint")).unwrap();
        std::fs::write(stage.join("config.dump"), b"{}").unwrap();
        std::fs::write(stage.join("checkpoint/pages-1.img"), b"pages").unwrap();
        let out = d.path().join("c.tar");
        write_archive(&stage, &out).unwrap();
        let mut names: Vec<String> = tar::Archive::new(std::fs::File::open(&out).unwrap())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert!(names.iter().any(|n| n.ends_with("config.dump")), "{names:?}");
        assert!(
            names.iter().any(|n| n.ends_with("checkpoint/pages-1.img")),
            "{names:?}"
        );
        assert!(!d.path().join("c.tar.tmp").exists());
    }
}

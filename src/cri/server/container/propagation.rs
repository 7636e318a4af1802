//! Mount propagation of CRI mounts: the host side (containerd's `ensureShared` /
//! `ensureSharedOrSlave`). The spec side (`rshared`/`rslave` on the bind, the rootfs
//! propagation) is in `spec::container`.
//!
//! ```text
//! PROPAGATION_BIDIRECTIONAL      the host mount holding host_path must be shared
//!                                (mountinfo "shared:N"): mounts made on either side show
//!                                on the other
//! PROPAGATION_HOST_TO_CONTAINER  shared or a slave ("master:N"): the host's later mounts
//!                                reach the container
//! PROPAGATION_PRIVATE            nothing to check
//! ```
//!
//! The mount holding a path is the mountinfo entry with the longest mount point that is a
//! prefix of the path with its symlinks resolved (the last such entry when mounts are stacked).
//! taskd only checks: making a host mount shared is the node's business (kubelet makes its
//! own directory rshared), and a silent `--make-rshared` would change what every other mount
//! under it does.

use std::path::{Path, PathBuf};

use procfs::process::{MountInfo, MountOptFields};
use taskd_proto::cri::v1::{Mount as CriMount, MountPropagation};

use crate::cri::error::CriError;

/// What a mount's propagation needs of the host mount holding its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Shared,
    SharedOrSlave,
}

fn need(m: &CriMount) -> Option<Need> {
    match MountPropagation::try_from(m.propagation).ok()? {
        MountPropagation::PropagationPrivate => None,
        MountPropagation::PropagationHostToContainer => Some(Need::SharedOrSlave),
        MountPropagation::PropagationBidirectional => Some(Need::Shared),
    }
}

/// The entry of `mounts` holding `path` (already canonical).
fn holding<'a>(mounts: &'a [MountInfo], path: &Path) -> Option<&'a MountInfo> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
        .and_then(|longest| mounts.iter().rfind(|m| m.mount_point == longest.mount_point))
}

/// Checks `host_path` (canonical) against the host's mount table.
fn check(mounts: &[MountInfo], host_path: &Path, need: Need) -> Result<(), CriError> {
    let Some(m) = holding(mounts, host_path) else {
        return Err(CriError::FailedPrecondition {
            what: format!("mount source {}", host_path.display()),
            reason: "no mount of the host holds it".into(),
        });
    };
    let shared = m
        .opt_fields
        .iter()
        .any(|f| matches!(f, MountOptFields::Shared(_)));
    let slave = m
        .opt_fields
        .iter()
        .any(|f| matches!(f, MountOptFields::Master(_)));
    let ok = match need {
        Need::Shared => shared,
        Need::SharedOrSlave => shared || slave,
    };
    if ok {
        return Ok(());
    }
    let wanted = match need {
        Need::Shared => "shared (mount --make-rshared), for PROPAGATION_BIDIRECTIONAL",
        Need::SharedOrSlave => "shared or slave, for PROPAGATION_HOST_TO_CONTAINER",
    };
    Err(CriError::FailedPrecondition {
        what: format!("mount source {}", host_path.display()),
        reason: format!(
            "is on the host mount {}, which is not {wanted}",
            m.mount_point.display()
        ),
    })
}

/// Checks every CRI mount that asks for propagation against taskd's mount namespace (the
/// host's). Reads `/proc/self/mountinfo` only when some mount needs it.
pub fn check_host_sources(mounts: &[CriMount]) -> Result<(), CriError> {
    let wanted: Vec<(&CriMount, Need)> = mounts.iter().filter_map(|m| Some((m, need(m)?))).collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let table = procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .map_err(CriError::HostMounts)?;
    for (m, need) in wanted {
        let path: PathBuf = std::fs::canonicalize(&m.host_path).map_err(|e| CriError::InvalidArgument {
            field: "mounts.host_path",
            reason: format!("{}: {e}", m.host_path),
        })?;
        check(&table.0, &path, need)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(lines: &str) -> Vec<MountInfo> {
        lines
            .lines()
            .map(|l| MountInfo::from_line(l.trim()).unwrap())
            .collect()
    }

    const TABLE: &str = "\
        22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
        30 22 0:26 / /var/lib/kubelet rw,relatime shared:7 - ext4 /dev/sda2 rw
        31 22 0:27 / /data rw,relatime - ext4 /dev/sda3 rw
        32 31 0:28 / /data/slave rw,relatime master:7 - tmpfs tmpfs rw
        33 31 0:29 / /data/stacked rw,relatime shared:9 - tmpfs tmpfs rw
        34 31 0:30 / /data/stacked rw,relatime - tmpfs tmpfs rw";

    fn run(path: &str, need: Need) -> Result<(), CriError> {
        check(&table(TABLE), Path::new(path), need)
    }

    #[test]
    fn bidirectional_needs_a_shared_host_mount() {
        assert!(run("/var/lib/kubelet/pods/x/volumes", Need::Shared).is_ok());
        assert!(run("/etc", Need::Shared).is_ok(), "under the shared root");
        let e = run("/data/dir", Need::Shared).unwrap_err();
        assert!(e.to_string().contains("/data"), "{e}");
        assert!(
            run("/data/slave/x", Need::Shared).is_err(),
            "a slave is not enough"
        );
    }

    #[test]
    fn host_to_container_takes_shared_or_slave() {
        assert!(run("/data/slave/x", Need::SharedOrSlave).is_ok());
        assert!(run("/var/lib/kubelet", Need::SharedOrSlave).is_ok());
        assert!(run("/data/x", Need::SharedOrSlave).is_err());
    }

    #[test]
    fn the_top_of_stacked_mounts_counts() {
        // /data/stacked: shared, then a private mount on top of it.
        assert!(run("/data/stacked/x", Need::SharedOrSlave).is_err());
        // /data/stackedness is not under /data/stacked.
        assert!(run("/data/stackedness", Need::SharedOrSlave).is_err());
    }

    #[test]
    fn private_mounts_need_nothing() {
        let m = CriMount {
            host_path: "/nonexistent".into(),
            propagation: MountPropagation::PropagationPrivate as i32,
            ..Default::default()
        };
        assert!(check_host_sources(&[m]).is_ok());
    }
}

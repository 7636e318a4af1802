//! A container's mounts: the defaults, the pod's `/dev/shm`, `/etc/hosts`,
//! `/etc/resolv.conf` and `/etc/hostname`, then the CRI mounts (rbind, ro, propagation;
//! selinux_relabel ignored). A CRI mount replaces a default or a pod file at the same
//! destination; the rootfs propagates as much as the most propagating CRI mount;
//! recursive_read_only adds runc's `rro`.

use std::collections::HashSet;
use std::path::PathBuf;

use oci_spec::runtime::Mount;
use taskd_proto::cri::v1::{
    LinuxContainerSecurityContext, Mount as CriMount, MountPropagation, NamespaceMode,
};

use super::{SpecError, invalid};

/// Files of the pod bind-mounted into every container (absent = not mounted).
#[derive(Debug, Clone, Default)]
pub struct PodFiles {
    pub hosts: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    pub hostname: Option<PathBuf>,
    /// The pod's `/dev/shm` tmpfs (None: the pod uses the host's IPC namespace).
    pub shm: Option<PathBuf>,
}

/// How far the container's rootfs propagates, ordered (containerd's rule: the most any CRI
/// mount needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RootfsPropagation {
    Private,
    Slave,
    Shared,
}

fn bind(dest: &str, src: &str, readonly: bool, propagation: Option<&str>) -> Mount {
    let mut opts = vec!["rbind".to_owned(), if readonly { "ro" } else { "rw" }.to_owned()];
    opts.extend(propagation.map(str::to_owned));
    let mut m = Mount::default();
    m.set_destination(dest.into())
        .set_typ(Some("bind".into()))
        .set_source(Some(src.into()))
        .set_options(Some(opts));
    m
}

/// The container's mounts (CRI mounts win over `defaults` and the pod files at the same
/// destination) and how far its rootfs must propagate. `ipc` is the container's IPC mode
/// (NODE: the host's `/dev/shm`).
pub fn container_mounts(
    defaults: Vec<Mount>,
    cri_mounts: &[CriMount],
    pod_files: &PodFiles,
    sec: &LinuxContainerSecurityContext,
    ipc: NamespaceMode,
    recursive_read_only_mounts: bool,
) -> Result<(Vec<Mount>, RootfsPropagation), SpecError> {
    let cri_dests: HashSet<&str> = cri_mounts.iter().map(|m| m.container_path.as_str()).collect();
    let mut mounts: Vec<Mount> = defaults
        .into_iter()
        .filter(|m| !cri_dests.contains(m.destination().to_string_lossy().as_ref()))
        .map(|mut m| {
            // Privileged containers get a writable sysfs and cgroupfs (containerd's
            // WithWriteableSysfs and WithWriteableCgroupfs).
            if sec.privileged && matches!(m.typ().as_deref(), Some("sysfs" | "cgroup")) {
                let mut opts: Vec<String> = m
                    .options()
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|o| o != "ro" && o != "rw")
                    .collect();
                opts.push("rw".into());
                m.set_options(Some(opts));
            }
            m
        })
        .collect();
    // /dev/shm as containerd gives it, unless the container mounts its own: the host's with
    // the host's IPC namespace, else the pod's tmpfs (shared by its containers).
    let shm = match ipc {
        NamespaceMode::Node => Some("/dev/shm".to_owned()),
        _ => pod_files.shm.as_ref().map(|p| p.display().to_string()),
    };
    if let Some(shm) = shm
        && !cri_dests.contains("/dev/shm")
    {
        mounts.retain(|m| m.destination().as_os_str() != "/dev/shm");
        mounts.push(bind("/dev/shm", &shm, false, None));
    }
    for (dest, file) in [
        ("/etc/hosts", &pod_files.hosts),
        ("/etc/resolv.conf", &pod_files.resolv_conf),
        ("/etc/hostname", &pod_files.hostname),
    ] {
        if let Some(f) = file
            && !cri_dests.contains(dest)
        {
            mounts.push(bind(dest, &f.display().to_string(), sec.readonly_rootfs, None));
        }
    }
    // The rootfs must propagate at least as much as its most propagating mount, or the
    // host's mounts never reach a bind below it (runc's default is rprivate).
    let mut rootfs_propagation = RootfsPropagation::Private;
    for m in cri_mounts {
        if m.container_path.is_empty() || !m.container_path.starts_with('/') {
            return Err(invalid(
                "mounts.container_path",
                format!("{:?} must be an absolute path", m.container_path),
            ));
        }
        if m.image.is_some() {
            return Err(invalid("mounts.image", "image volumes are not supported"));
        }
        if !m.host_path.starts_with('/') {
            return Err(invalid(
                "mounts.host_path",
                format!("{:?} must be an absolute path", m.host_path),
            ));
        }
        let prop =
            match MountPropagation::try_from(m.propagation).unwrap_or(MountPropagation::PropagationPrivate) {
                MountPropagation::PropagationPrivate => "rprivate",
                MountPropagation::PropagationHostToContainer => {
                    rootfs_propagation = rootfs_propagation.max(RootfsPropagation::Slave);
                    "rslave"
                }
                MountPropagation::PropagationBidirectional => {
                    rootfs_propagation = RootfsPropagation::Shared;
                    "rshared"
                }
            };
        // selinux_relabel is ignored: this host runs no SELinux policy taskd manages.
        let mut mount = bind(&m.container_path, &m.host_path, m.readonly, Some(prop));
        if m.recursive_read_only {
            // The CRI API's three refusals, then runc's `rro` (read-only all the way down,
            // through mount_setattr) beside the plain `ro` of the top mount.
            let refuse = |why: &str| {
                Err(invalid(
                    "mounts.recursive_read_only",
                    format!("{}: {why}", m.container_path),
                ))
            };
            if !m.readonly {
                return refuse("needs readonly as well");
            }
            if prop != "rprivate" {
                return refuse("needs propagation PROPAGATION_PRIVATE");
            }
            if !recursive_read_only_mounts {
                return refuse("the pod's runtime handler does not support recursive read-only mounts");
            }
            if let Some(o) = mount.options_mut() {
                o.push("rro".into());
            }
        }
        mounts.push(mount);
    }
    Ok((mounts, rootfs_propagation))
}

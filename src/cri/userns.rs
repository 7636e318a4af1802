//! Pods in a user namespace (`NamespaceOption.userns_options`, mode POD).
//!
//! ```text
//! from_options(pod)    NODE / unset → None; POD → the single uid and gid mapping
//!                      (container id 0 mapped); CONTAINER, TARGET, several mappings,
//!                      an empty or overflowing range → InvalidArgument
//! pin(pins, mapping)   fork a helper child (it only makes raw syscalls):
//!                        child:  unshare(CLONE_NEWUSER | NEWNET [| NEWIPC | NEWUTS]) — the
//!                                userns is created first, so it owns the others
//!                        parent: write /proc/<child>/{uid,gid}_map
//!                                mount --bind /proc/<child>/ns/{user,net,ipc,uts} <pins>
//!                        child exits (the namespaces live on through the mounts)
//!                      then lo is brought up in the new netns
//! probe()              the same with a throwaway mapping, nothing pinned: the kernel lets
//!                      root create a user namespace and write its maps
//! ```
//!
//! The pod's network (and, without a pause container, IPC and UTS) namespaces are created
//! inside its user namespace: runc joins the user namespace before any other, and a process
//! there can only join, or mount sysfs/mqueue for, namespaces its user namespace owns.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use taskd_proto::cri::v1::{IdMapping, NamespaceMode, NamespaceOption, PodSandboxConfig};

use crate::errdefs::{ErrorKind, Kind};

/// One id range: `container_id..container_id+length` inside is `host_id..` outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdMap {
    pub container_id: u32,
    pub host_id: u32,
    pub length: u32,
}

impl IdMap {
    /// The host id of container id `id`, if the range maps it.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        let off = id.checked_sub(self.container_id)?;
        (off < self.length).then(|| self.host_id + off)
    }

    /// The line of `/proc/<pid>/{uid,gid}_map`.
    fn map_line(&self) -> String {
        format!("{} {} {}\n", self.container_id, self.host_id, self.length)
    }

    pub fn to_oci(self) -> oci_spec::runtime::LinuxIdMapping {
        oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(self.container_id)
            .host_id(self.host_id)
            .size(self.length)
            .build()
            // Only a missing field fails, and every field is set.
            .unwrap_or_default()
    }
}

/// A pod's user namespace mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodUserns {
    pub uid: IdMap,
    pub gid: IdMap,
}

/// Errors of the pod user namespace; each names what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{op}: {source}")]
    Sys { op: &'static str, source: nix::Error },
    #[error("the user namespace helper process failed to unshare: {0}")]
    Unshare(nix::Error),
    #[error("pin the pod's {ns} namespace on {path}: {source}")]
    Pin {
        ns: &'static str,
        path: PathBuf,
        source: nix::Error,
    },
    #[error(transparent)]
    Netns(#[from] super::network::NetnsError),
}

impl ErrorKind for UsernsError {
    fn kind(&self) -> Kind {
        match self {
            UsernsError::Invalid { .. } => Kind::InvalidArgument,
            UsernsError::Io { .. }
            | UsernsError::Sys { .. }
            | UsernsError::Unshare(_)
            | UsernsError::Pin { .. }
            | UsernsError::Netns(_) => Kind::Internal,
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> UsernsError {
    UsernsError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn one_map(field: &'static str, maps: &[IdMapping]) -> Result<IdMap, UsernsError> {
    let [m] = maps else {
        return Err(invalid(
            field,
            format!("exactly one mapping is supported, got {}", maps.len()),
        ));
    };
    if m.length == 0 {
        return Err(invalid(field, "the mapping's length must not be 0"));
    }
    if m.container_id != 0 {
        return Err(invalid(
            field,
            format!(
                "container id 0 must be mapped (the mapping starts at container id {})",
                m.container_id
            ),
        ));
    }
    if m.host_id.checked_add(m.length - 1).is_none() {
        return Err(invalid(
            field,
            format!("host ids {}+{} overflow 32 bits", m.host_id, m.length),
        ));
    }
    Ok(IdMap {
        container_id: m.container_id,
        host_id: m.host_id,
        length: m.length,
    })
}

/// The user namespace a pod (or a container's) namespace options ask for: None for NODE or
/// no options; the mapping for POD. CONTAINER and TARGET are refused, as the CRI API says.
pub fn from_options(opts: Option<&NamespaceOption>) -> Result<Option<PodUserns>, UsernsError> {
    let Some(u) = opts.and_then(|o| o.userns_options.as_ref()) else {
        return Ok(None);
    };
    match NamespaceMode::try_from(u.mode) {
        Ok(NamespaceMode::Node) => Ok(None),
        Ok(NamespaceMode::Pod) => Ok(Some(PodUserns {
            uid: one_map("userns_options.uids", &u.uids)?,
            gid: one_map("userns_options.gids", &u.gids)?,
        })),
        Ok(m) => Err(invalid(
            "userns_options.mode",
            format!("{} is not supported (only POD and NODE)", m.as_str_name()),
        )),
        Err(_) => Err(invalid("userns_options.mode", format!("unknown mode {}", u.mode))),
    }
}

/// The user namespace of a pod's config ([`from_options`] of its namespace options).
pub fn of_pod(cfg: &PodSandboxConfig) -> Result<Option<PodUserns>, UsernsError> {
    from_options(
        cfg.linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref()),
    )
}

/// Where the namespaces of a pod in a user namespace are pinned (None: not created).
#[derive(Debug, Clone, Default)]
pub struct Pins {
    pub user: PathBuf,
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
}

impl Pins {
    fn all(&self) -> Vec<(&'static str, &Path)> {
        let mut v = vec![("user", self.user.as_path())];
        for (ns, p) in [("net", &self.net), ("ipc", &self.ipc), ("uts", &self.uts)] {
            if let Some(p) = p {
                v.push((ns, p.as_path()));
            }
        }
        v
    }
}

/// Creates the pod's user namespace with `map` and the namespaces it owns, pinned at
/// `pins` (files that must not exist; their parents are created), and brings `lo` up in
/// the network namespace. Blocking. On error nothing stays pinned.
pub fn pin(pins: &Pins, map: &PodUserns) -> Result<(), UsernsError> {
    let io = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| UsernsError::Io { op, path, source }
    };
    let mut created: Vec<&Path> = Vec::new();
    let result = (|| {
        for (_, p) in pins.all() {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).map_err(io("create", dir))?;
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p)
                .map_err(io("create", p))?;
            created.push(p);
        }
        let mut flags = libc::CLONE_NEWUSER;
        for (set, f) in [
            (pins.net.is_some(), libc::CLONE_NEWNET),
            (pins.ipc.is_some(), libc::CLONE_NEWIPC),
            (pins.uts.is_some(), libc::CLONE_NEWUTS),
        ] {
            if set {
                flags |= f;
            }
        }
        with_helper(flags, |pid| {
            write_maps(pid, map)?;
            for (ns, target) in pins.all() {
                let src = format!("/proc/{pid}/ns/{ns}");
                nix::mount::mount(
                    Some(src.as_str()),
                    target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|source| UsernsError::Pin {
                    ns,
                    path: target.to_owned(),
                    source,
                })?;
            }
            Ok(())
        })?;
        if let Some(net) = &pins.net {
            super::network::netns::loopback_up_in(net)?;
        }
        Ok(())
    })();
    if result.is_err() {
        for p in created {
            let _ = super::network::netns::remove(p);
        }
    }
    result
}

/// Whether root may create a user namespace and give it a mapping here (no pin is left).
pub fn probe() -> Result<(), UsernsError> {
    let map = IdMap {
        container_id: 0,
        host_id: 1 << 30,
        length: 65536,
    };
    with_helper(libc::CLONE_NEWUSER | libc::CLONE_NEWNET, |pid| {
        write_maps(pid, &PodUserns { uid: map, gid: map })
    })
}

fn write_maps(pid: i32, map: &PodUserns) -> Result<(), UsernsError> {
    for (file, m) in [("uid_map", map.uid), ("gid_map", map.gid)] {
        let p = PathBuf::from(format!("/proc/{pid}/{file}"));
        std::fs::write(&p, m.map_line()).map_err(|source| UsernsError::Io {
            op: "write",
            path: p.clone(),
            source,
        })?;
    }
    Ok(())
}

fn pipe() -> Result<(OwnedFd, OwnedFd), UsernsError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|source| UsernsError::Sys { op: "pipe", source })
}

/// Forks a child that unshares `flags` and waits; runs `f(child pid)` once it has, then lets
/// the child exit and reaps it.
fn with_helper(
    flags: libc::c_int,
    f: impl FnOnce(i32) -> Result<(), UsernsError>,
) -> Result<(), UsernsError> {
    let (ready_r, ready_w) = pipe()?;
    let (done_r, done_w) = pipe()?;
    // SAFETY: the child only makes async-signal-safe raw syscalls (prctl, unshare, write,
    // read, _exit) on fds made before the fork, and never returns.
    let fork = unsafe { nix::unistd::fork() };
    let child = match fork.map_err(|source| UsernsError::Sys { op: "fork", source })? {
        nix::unistd::ForkResult::Child => unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let status: i32 = if libc::unshare(flags) == 0 {
                0
            } else {
                *libc::__errno_location()
            };
            libc::write(ready_w.as_raw_fd(), (&status as *const i32).cast(), 4);
            // Returns when the parent writes its byte (or, gone, closes its end; not EOF
            // alone: a helper forked meanwhile by another thread holds copies of our fds).
            let mut b = 0u8;
            libc::read(done_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
            libc::_exit(0);
        },
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop((ready_w, done_r));
    let mut status = [0u8; 4];
    let ready = nix::unistd::read(&ready_r, &mut status).map_err(|source| UsernsError::Sys {
        op: "wait for the user namespace helper",
        source,
    });
    let result = match ready {
        Ok(4) => match i32::from_ne_bytes(status) {
            0 => f(child.as_raw()),
            errno => Err(UsernsError::Unshare(nix::Error::from_raw(errno))),
        },
        Ok(_) => Err(UsernsError::Unshare(nix::Error::EPIPE)),
        Err(e) => Err(e),
    };
    let _ = nix::unistd::write(&done_w, &[1]);
    drop(done_w);
    let _ = nix::sys::wait::waitpid(child, None);
    result
}

/// The pinned user namespace of pod `id` under the podns dir.
pub fn pin_path(podns_dir: &Path) -> PathBuf {
    podns_dir.join("user")
}

#[cfg(test)]
mod tests {
    use std::os::fd::FromRawFd;

    use super::*;
    use taskd_proto::cri::v1::UserNamespace;

    fn opts(mode: NamespaceMode, uids: Vec<IdMapping>, gids: Vec<IdMapping>) -> NamespaceOption {
        NamespaceOption {
            userns_options: Some(UserNamespace {
                mode: mode as i32,
                uids,
                gids,
            }),
            ..Default::default()
        }
    }

    fn m(container_id: u32, host_id: u32, length: u32) -> IdMapping {
        IdMapping {
            host_id,
            container_id,
            length,
        }
    }

    #[test]
    fn pod_mode_takes_one_mapping_with_root() {
        assert_eq!(from_options(None).unwrap(), None);
        assert_eq!(from_options(Some(&NamespaceOption::default())).unwrap(), None);
        assert_eq!(
            from_options(Some(&opts(NamespaceMode::Node, vec![], vec![]))).unwrap(),
            None
        );
        let u = from_options(Some(&opts(
            NamespaceMode::Pod,
            vec![m(0, 65536, 65536)],
            vec![m(0, 131072, 65536)],
        )))
        .unwrap()
        .unwrap();
        assert_eq!(u.uid.to_host(0), Some(65536));
        assert_eq!(u.uid.to_host(1000), Some(66536));
        assert_eq!(u.uid.to_host(65536), None);
        assert_eq!(u.gid.host_id, 131072);
        for (o, why) in [
            (opts(NamespaceMode::Container, vec![], vec![]), "CONTAINER"),
            (opts(NamespaceMode::Target, vec![], vec![]), "TARGET"),
            (
                opts(
                    NamespaceMode::Pod,
                    vec![m(0, 1, 5), m(5, 10, 5)],
                    vec![m(0, 1, 5)],
                ),
                "exactly one",
            ),
            (opts(NamespaceMode::Pod, vec![m(0, 1, 5)], vec![]), "got 0"),
            (
                opts(NamespaceMode::Pod, vec![m(1, 1, 5)], vec![m(0, 1, 5)]),
                "container id 0",
            ),
            (
                opts(NamespaceMode::Pod, vec![m(0, 1, 0)], vec![m(0, 1, 5)]),
                "length",
            ),
            (
                opts(NamespaceMode::Pod, vec![m(0, u32::MAX, 2)], vec![m(0, 1, 5)]),
                "overflow",
            ),
        ] {
            let e = from_options(Some(&o)).unwrap_err();
            assert_eq!(e.kind(), Kind::InvalidArgument);
            assert!(e.to_string().contains(why), "{why}: {e}");
        }
    }

    #[test]
    #[ignore = "e2e: needs root (user and network namespaces)"]
    fn pinned_namespaces_carry_the_mapping_and_own_the_netns() {
        crate::e2e_guard::require(&[crate::e2e_guard::Need::Root]);
        let tmp = tempfile::tempdir().unwrap();
        let map = IdMap {
            container_id: 0,
            host_id: 300_000,
            length: 65536,
        };
        let pins = Pins {
            user: tmp.path().join("user"),
            net: Some(tmp.path().join("net")),
            ipc: None,
            uts: Some(tmp.path().join("uts")),
        };
        pin(&pins, &PodUserns { uid: map, gid: map }).unwrap();
        for (_, p) in pins.all() {
            assert!(super::super::network::netns::is_pinned(p), "{}", p.display());
        }
        // The netns and the UTS namespace are owned by the pinned user namespace.
        let ns_id = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                .unwrap()
        };
        let owner = |p: &Path| {
            let f = std::fs::File::open(p).unwrap();
            // NS_GET_USERNS
            let fd = unsafe { libc::ioctl(f.as_raw_fd(), 0xb701) };
            assert!(fd >= 0);
            let f = unsafe { std::fs::File::from_raw_fd(fd) };
            std::os::unix::fs::MetadataExt::ino(&f.metadata().unwrap())
        };
        assert_eq!(owner(pins.net.as_ref().unwrap()), ns_id(&pins.user));
        assert_eq!(owner(pins.uts.as_ref().unwrap()), ns_id(&pins.user));
        // A pin that exists already fails the whole call and leaves the first pins alone.
        let again = pin(&pins, &PodUserns { uid: map, gid: map }).unwrap_err();
        assert!(again.to_string().contains("create"), "{again}");
        for (_, p) in pins.all() {
            super::super::network::netns::remove(p).unwrap();
        }
        probe().unwrap();
    }
}

//! A pod's shared namespaces without a pause process (`drop_infra_container`, CRI-O's
//! `drop_infra_ctr`): the IPC and UTS namespaces are pinned by bind mounts, as the network
//! namespace always is, and the pod's containers join the pinned files.
//!
//! ```text
//!  pin(dir, req):  mkdir <dir>                  (<state>/podns/<sandbox id>)
//!                  dedicated OS thread:  setns(<pod netns>)            (not host networking)
//!                                        unshare(CLONE_NEWIPC | CLONE_NEWUTS)   (as asked)
//!                                        sethostname(<pod hostname>)
//!                                        write each sysctl under /proc/sys  (in these namespaces)
//!                                        mount --bind /proc/self/task/<tid>/ns/{ipc,uts} <dir>/{ipc,uts}
//!                  thread exits (the namespaces live on through the mounts)
//!  unpin(dir):     umount + unlink each pin, rmdir <dir>     (idempotent)
//! ```
//!
//! Sysctls are checked first ([`sysctl_path`]): only namespaced ones, only in a namespace the
//! pod owns (a pod on the host network cannot set `net.*`), never a path outside `/proc/sys`.
//! As in [`super::network::netns`], the namespace changes happen on a thread made for them
//! and never reused.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;

use super::network::netns;
use crate::errdefs::{ErrorKind, Kind, absent_ok};

/// The IPC sysctls that live in an IPC namespace (runc's list).
const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// Errors pinning or unpinning a pod's namespaces; each names what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum PodNsError {
    #[error("sysctl {key:?}: {reason}")]
    Sysctl { key: String, reason: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{op}: {source}")]
    Sys { op: &'static str, source: nix::Error },
    #[error("set sysctl {key}: {source}")]
    SysctlWrite { key: String, source: std::io::Error },
    #[error("pod namespace thread panicked")]
    Thread,
    #[error(transparent)]
    Unpin(#[from] netns::NetnsError),
}

impl ErrorKind for PodNsError {
    fn kind(&self) -> Kind {
        match self {
            PodNsError::Sysctl { .. } => Kind::InvalidArgument,
            PodNsError::Io { .. }
            | PodNsError::Sys { .. }
            | PodNsError::SysctlWrite { .. }
            | PodNsError::Thread
            | PodNsError::Unpin(_) => Kind::Internal,
        }
    }
}

/// What to pin for a pod.
pub struct PinRequest<'a> {
    /// The pod's pinned network namespace (None: host networking).
    pub netns: Option<&'a Path>,
    /// A new IPC namespace (not with host IPC).
    pub ipc: bool,
    /// A new UTS namespace with `hostname` (not with host networking).
    pub uts: bool,
    pub hostname: &'a str,
    pub sysctls: &'a HashMap<String, String>,
    /// The IPC/UTS namespaces are pinned already under the dir (made inside the pod's user
    /// namespace, [`super::userns::pin`]): join them instead of making new ones.
    pub joined: bool,
}

/// Paths of the pinned namespaces (None: not pinned, the host's is used).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pinned {
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
}

/// The file under `/proc/sys` for a namespaced sysctl the pod may set, relative to it.
/// Keys are dotted (`net.ipv4.ip_forward`) or slashed (`net/ipv4/conf/eth0.100/rp_filter`).
pub fn sysctl_path(key: &str, host_net: bool, host_ipc: bool) -> Result<PathBuf, PodNsError> {
    let bad = |reason: &str| PodNsError::Sysctl {
        key: key.to_owned(),
        reason: reason.to_owned(),
    };
    let parts: Vec<&str> = if key.contains('/') {
        key.split('/').collect()
    } else {
        key.split('.').collect()
    };
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('\0'))
    {
        return Err(bad("is not a sysctl name"));
    }
    let dotted = parts.join(".");
    if dotted.starts_with("net.") {
        if host_net {
            return Err(bad("cannot be set for a pod on the host network"));
        }
    } else if IPC_SYSCTLS.contains(&dotted.as_str()) || dotted.starts_with("fs.mqueue.") {
        if host_ipc {
            return Err(bad("cannot be set for a pod in the host IPC namespace"));
        }
    } else {
        return Err(bad("is not in a namespace of the pod"));
    }
    Ok(parts.iter().collect())
}

/// Pins the pod's IPC and UTS namespaces (as asked) under `dir`, with its hostname and
/// sysctls set inside. Blocking: call it from `spawn_blocking`. On an error nothing stays
/// pinned.
pub fn pin(dir: &Path, req: &PinRequest<'_>) -> Result<Pinned, PodNsError> {
    let sysctls = req
        .sysctls
        .iter()
        .map(|(k, v)| {
            Ok((
                k.clone(),
                sysctl_path(k, req.netns.is_none(), !req.ipc)?,
                v.clone(),
            ))
        })
        .collect::<Result<Vec<_>, PodNsError>>()?;
    let io = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| PodNsError::Io { op, path, source }
    };
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let mut out = Pinned::default();
    for (want, name, slot) in [(req.ipc, "ipc", &mut out.ipc), (req.uts, "uts", &mut out.uts)] {
        if want {
            let p = dir.join(name);
            if !req.joined {
                std::fs::File::create(&p).map_err(io("create", &p))?;
            }
            *slot = Some(p);
        }
    }
    let netns_file = match req.netns {
        Some(p) => Some(std::fs::File::open(p).map_err(io("open", p))?),
        None => None,
    };
    let hostname = req.hostname.to_owned();
    let targets = out.clone();
    let joined = req.joined;
    let result = std::thread::Builder::new()
        .name("podns-pin".into())
        .spawn(move || pin_in_thread(netns_file.as_ref(), &targets, joined, &hostname, &sysctls))
        .map_err(io("spawn a thread for", dir))?
        .join()
        .unwrap_or(Err(PodNsError::Thread));
    if let Err(e) = result {
        let _ = unpin(dir);
        return Err(e);
    }
    Ok(out)
}

fn pin_in_thread(
    netns_file: Option<&std::fs::File>,
    targets: &Pinned,
    joined: bool,
    hostname: &str,
    sysctls: &[(String, PathBuf, String)],
) -> Result<(), PodNsError> {
    let sys = |op: &'static str| move |source| PodNsError::Sys { op, source };
    if let Some(f) = netns_file {
        nix::sched::setns(f.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(sys("join the pod network namespace"))?;
    }
    let mut flags = CloneFlags::empty();
    for (target, flag) in [
        (&targets.ipc, CloneFlags::CLONE_NEWIPC),
        (&targets.uts, CloneFlags::CLONE_NEWUTS),
    ] {
        match target {
            Some(p) if joined => {
                let f = std::fs::File::open(p).map_err(|source| PodNsError::Io {
                    op: "open",
                    path: p.clone(),
                    source,
                })?;
                nix::sched::setns(f.as_fd(), flag).map_err(sys("join a pinned pod namespace"))?;
            }
            Some(_) => flags |= flag,
            None => {}
        }
    }
    if !flags.is_empty() {
        nix::sched::unshare(flags).map_err(sys("unshare the pod's IPC/UTS namespaces"))?;
    }
    if targets.uts.is_some() && !hostname.is_empty() {
        nix::unistd::sethostname(hostname).map_err(sys("set the pod hostname"))?;
    }
    for (key, rel, value) in sysctls {
        std::fs::write(Path::new("/proc/sys").join(rel), value.as_bytes()).map_err(|source| {
            PodNsError::SysctlWrite {
                key: key.clone(),
                source,
            }
        })?;
    }
    for (name, target) in [("ipc", &targets.ipc), ("uts", &targets.uts)] {
        if let Some(target) = target
            && !joined
        {
            netns::pin_own(name, target).map_err(sys("bind mount a pod namespace"))?;
        }
    }
    Ok(())
}

/// Unpins and removes every namespace pinned under `dir` (the pod's user namespace too),
/// then `dir`; idempotent.
pub fn unpin(dir: &Path) -> Result<(), PodNsError> {
    for name in ["ipc", "uts", "user"] {
        netns::remove(&dir.join(name))?;
    }
    absent_ok(std::fs::remove_dir(dir)).map_err(|source| PodNsError::Io {
        op: "remove",
        path: dir.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pods_own_namespaced_sysctls_pass() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward", false, false).unwrap(),
            PathBuf::from("net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/rp_filter", false, false).unwrap(),
            PathBuf::from("net/ipv4/conf/eth0.100/rp_filter")
        );
        assert_eq!(
            sysctl_path("kernel.shm_rmid_forced", false, false).unwrap(),
            PathBuf::from("kernel/shm_rmid_forced")
        );
        assert!(sysctl_path("fs.mqueue.msg_max", true, false).is_ok());
        for (key, net, ipc) in [
            ("net.ipv4.ip_forward", true, false),
            ("kernel.shmmax", false, true),
            ("vm.swappiness", false, false),
            ("kernel.hostname", false, false),
            ("net..ipv4", false, false),
            ("net/../../etc", false, false),
            ("net.ipv4/../x", false, false),
            ("", false, false),
        ] {
            let e = sysctl_path(key, net, ipc).unwrap_err();
            assert_eq!(e.kind(), Kind::InvalidArgument, "{key}: {e}");
        }
    }

    #[test]
    #[ignore = "e2e: needs root (namespaces)"]
    fn pin_makes_namespaces_with_hostname_and_sysctls_and_unpin_is_idempotent() {
        crate::e2e_guard::require(&[crate::e2e_guard::Need::Root]);
        let tmp = tempfile::tempdir().unwrap();
        let netns_path = netns::create(&tmp.path().join("netns")).unwrap();
        let dir = tmp.path().join("podns").join("pod1");
        let sysctls = HashMap::from([
            ("net.ipv4.ip_unprivileged_port_start".to_owned(), "80".to_owned()),
            ("kernel.shm_rmid_forced".to_owned(), "1".to_owned()),
        ]);
        let pinned = pin(
            &dir,
            &PinRequest {
                netns: Some(&netns_path),
                ipc: true,
                uts: true,
                hostname: "pod-one",
                sysctls: &sysctls,
                joined: false,
            },
        )
        .unwrap();
        let (ipc, uts) = (pinned.ipc.clone().unwrap(), pinned.uts.clone().unwrap());
        let ns = netns_path.clone();
        assert!(netns::is_pinned(&ipc) && netns::is_pinned(&uts));
        // Look from inside (a thread of its own), and check the host is untouched.
        let seen = std::thread::spawn(move || {
            let f = |p: &Path| std::fs::File::open(p).unwrap();
            nix::sched::setns(f(&ns).as_fd(), CloneFlags::CLONE_NEWNET).unwrap();
            nix::sched::setns(f(&ipc).as_fd(), CloneFlags::CLONE_NEWIPC).unwrap();
            nix::sched::setns(f(&uts).as_fd(), CloneFlags::CLONE_NEWUTS).unwrap();
            let read = |p: &str| std::fs::read_to_string(p).unwrap().trim().to_owned();
            (
                nix::unistd::gethostname().unwrap().into_string().unwrap(),
                read("/proc/sys/net/ipv4/ip_unprivileged_port_start"),
                read("/proc/sys/kernel/shm_rmid_forced"),
                // lo is up (netns::create brings it up): a connection over it works.
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| std::net::TcpStream::connect(l.local_addr()?))
                    .is_ok(),
            )
        })
        .join()
        .unwrap();
        assert_eq!(seen.0, "pod-one");
        assert_eq!(seen.1, "80");
        assert_eq!(seen.2, "1");
        assert!(seen.3, "lo is not up in the pod's netns");
        assert_ne!(nix::unistd::gethostname().unwrap(), "pod-one");
        unpin(&dir).unwrap();
        assert!(!dir.exists());
        unpin(&dir).unwrap();
        netns::remove(&netns_path).unwrap();
    }

    #[test]
    fn a_refused_sysctl_pins_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pod2");
        let sysctls = HashMap::from([("vm.swappiness".to_owned(), "1".to_owned())]);
        let e = pin(
            &dir,
            &PinRequest {
                netns: None,
                ipc: true,
                uts: false,
                hostname: "",
                sysctls: &sysctls,
                joined: false,
            },
        )
        .unwrap_err();
        assert_eq!(e.kind(), Kind::InvalidArgument);
        assert!(!dir.exists());
    }
}

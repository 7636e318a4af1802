//! Pod network namespaces, pinned by a bind mount so they outlive any process.
//!
//! ```text
//!  create(dir):  touch <dir>/cni-<uuid>
//!                dedicated OS thread: unshare(CLONE_NEWNET), lo up
//!                                     mount --bind /proc/self/task/<tid>/ns/net <dir>/cni-<uuid>
//!                thread exits (its netns lives on through the mount)
//!  remove(path): umount2(path, MNT_DETACH)   (not mounted → fine)
//!                unlink(path)                (absent → fine)
//! ```
//!
//! The unshare happens on a thread created for it and never reused (never a tokio worker
//! or blocking-pool thread), so no other code ever runs inside a pod's namespace.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::errdefs::{ErrorKind, Kind, absent_ok};

/// Errors creating or removing a pinned network namespace; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("create netns dir {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("create netns file {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("unshare a network namespace for {path}: {source}")]
    Unshare { path: PathBuf, source: nix::Error },
    #[error("bring up lo in the network namespace for {path}: {source}")]
    Loopback { path: PathBuf, source: nix::Error },
    #[error("bind mount the network namespace on {path}: {source}")]
    Mount { path: PathBuf, source: nix::Error },
    #[error("unmount netns {path}: {source}")]
    Unmount { path: PathBuf, source: nix::Error },
    #[error("remove netns file {path}: {source}")]
    Remove { path: PathBuf, source: std::io::Error },
    #[error("netns thread for {path} panicked")]
    Thread { path: PathBuf },
}

impl ErrorKind for NetnsError {
    fn kind(&self) -> Kind {
        match self {
            NetnsError::Dir { .. }
            | NetnsError::File { .. }
            | NetnsError::Unshare { .. }
            | NetnsError::Loopback { .. }
            | NetnsError::Mount { .. }
            | NetnsError::Unmount { .. }
            | NetnsError::Remove { .. }
            | NetnsError::Thread { .. } => Kind::Internal,
        }
    }
}

/// Creates a new network namespace pinned at `<dir>/cni-<uuid>`; returns the path.
/// Blocking (a thread is created and joined): call it from `spawn_blocking`.
pub fn create(dir: &Path) -> Result<PathBuf, NetnsError> {
    let path = dir.join(format!("cni-{}", uuid::Uuid::new_v4()));
    create_at(&path)?;
    Ok(path)
}

/// Creates a new network namespace pinned at `path` (which must not exist; its parent is
/// created). Blocking, as [`create`].
pub fn create_at(path: &Path) -> Result<(), NetnsError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|source| NetnsError::Dir {
        path: dir.to_owned(),
        source,
    })?;
    let path = path.to_owned();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|source| NetnsError::File {
            path: path.clone(),
            source,
        })?;
    let target = path.clone();
    let pinned = std::thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || pin_new_netns(&target))
        .map_err(|source| NetnsError::File {
            path: path.clone(),
            source,
        })?
        .join()
        .unwrap_or_else(|_| Err(NetnsError::Thread { path: path.clone() }));
    if let Err(e) = pinned {
        // Roll back the empty file; the mount never happened.
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(())
}

fn pin_new_netns(path: &Path) -> Result<(), NetnsError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Unshare {
        path: path.to_owned(),
        source,
    })?;
    // What the CNI loopback plugin would do, without starting it.
    loopback_up().map_err(|source| NetnsError::Loopback {
        path: path.to_owned(),
        source,
    })?;
    pin_own("net", path).map_err(|source| NetnsError::Mount {
        path: path.to_owned(),
        source,
    })
}

/// Bind-mounts the calling thread's namespace `kind` (`net`, `ipc`, `uts`) onto `target`.
pub fn pin_own(kind: &str, target: &Path) -> Result<(), nix::Error> {
    let ns = format!("/proc/self/task/{}/ns/{kind}", nix::unistd::gettid());
    nix::mount::mount(
        Some(ns.as_str()),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
}

/// Brings up `lo` in the network namespace pinned at `path` (on a thread made for it).
/// Blocking.
pub fn loopback_up_in(path: &Path) -> Result<(), NetnsError> {
    use std::os::fd::AsFd;
    let file = std::fs::File::open(path).map_err(|source| NetnsError::File {
        path: path.to_owned(),
        source,
    })?;
    let err = |source| NetnsError::Loopback {
        path: path.to_owned(),
        source,
    };
    std::thread::Builder::new()
        .name("netns-lo".into())
        .spawn(move || {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
            loopback_up()
        })
        .map_err(|source| NetnsError::File {
            path: path.to_owned(),
            source,
        })?
        .join()
        .unwrap_or(Err(nix::Error::EIO))
        .map_err(err)
}

/// Brings up `lo` in the calling thread's network namespace (what the CNI loopback plugin
/// does, without a process).
fn loopback_up() -> Result<(), nix::Error> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket(2) returns a new fd or -1; a new fd is owned here and closed on drop.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(nix::Error::last());
    }
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; the name is NUL-terminated and shorter than IFNAMSIZ;
    // both ioctls read/write only that struct.
    unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            return Err(nix::Error::last());
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) < 0 {
            return Err(nix::Error::last());
        }
    }
    Ok(())
}

/// Whether `path` is a pinned namespace (a bind mount of the nsfs file system).
pub fn is_pinned(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

/// Unpins and removes the namespace file; idempotent (not mounted, or gone, is success).
pub fn remove(path: &Path) -> Result<(), NetnsError> {
    if is_pinned(path) {
        match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL | nix::Error::ENOENT) => {}
            Err(source) => {
                return Err(NetnsError::Unmount {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
    absent_ok(std::fs::remove_file(path)).map_err(|source| NetnsError::Remove {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "e2e: needs root (network namespaces)"]
    fn create_pins_a_distinct_namespace_and_remove_is_idempotent() {
        crate::e2e_guard::require(&[crate::e2e_guard::Need::Root]);
        let dir = tempfile::tempdir().unwrap();
        let p = create(&dir.path().join("netns")).unwrap();
        assert!(is_pinned(&p));
        let ours = std::fs::metadata("/proc/self/ns/net").unwrap();
        let pinned = std::fs::metadata(&p).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(ours.ino(), pinned.ino(), "a new namespace, not ours");
        remove(&p).unwrap();
        assert!(!p.exists());
        remove(&p).unwrap();
        // Our own namespace is untouched.
        assert_eq!(std::fs::metadata("/proc/self/ns/net").unwrap().ino(), ours.ino());
    }
}

//! A sealed in-memory copy of runc for taskd's own shim (`containerd-shim-taskd-v2`).
//!
//! runc 1.1 guards its binary against a container that would overwrite it through
//! `/proc/self/exe` (CVE-2019-5736) at every `runc init`, that is at every container
//! create and every exec: it bind-mounts itself read-only, remounts, unmounts and
//! re-executes itself from that mount. Those are three mount events in the host's mount
//! namespace per container start and per exec; systemd re-reads `/proc/self/mountinfo` at
//! each one (runc issues 2532 and 3925: exec probes at scale keep systemd busy, and the
//! mounts contend on the kernel's namespace lock), and the re-exec costs a few ms. runc
//! skips all of it when it already runs from a memfd sealed against writes, which is the
//! set-up of runc's own `memfd-bind` tool: this module makes it once per taskd.
//!
//! ```text
//! start: detach what an earlier run left at <state>/.sealed-runc (its holder is gone:
//!        the mount answers EINVAL)
//!   ─▶ runc on PATH, opened ─▶ memfd ─▶ copy ─▶ seals SEAL|SHRINK|GROW|WRITE
//!   ─▶ the memfd's /proc/self/fd link bind-mounted onto <state>/.sealed-runc (it resolves
//!      while taskd holds the memfd: one copy per node, whatever the number of shims)
//! every shim command: TASKD_SEALED_RUNC (the mount) and TASKD_SEALED_RUNC_ID (the
//!   identity of the file copied); the shim runs the mount instead of a runc command's
//!   program only while that program is still this file (an upgraded runc, or another
//!   BinaryName, runs from its own file)
//! stop: the mount is detached
//! ```

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::runtime::RuntimeError;

/// Where the copy is mounted, in the runtime's state dir (not a namespace name: those
/// start with a letter or digit).
pub const FILE: &str = ".sealed-runc";
/// The environment a shim gets (read by `shim/src/runcx.rs`).
pub const ENV_PATH: &str = "TASKD_SEALED_RUNC";
pub const ENV_ID: &str = "TASKD_SEALED_RUNC_ID";
/// The seals runc 1.1 checks for (`RUNC_MEMFD_SEALS`): exactly these.
const SEALS: libc::c_int = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// The sealed copy, mounted while this value lives.
#[derive(Debug)]
pub struct SealedRunc {
    path: PathBuf,
    source: PathBuf,
    id: String,
    /// Held: the mount resolves through this process's fd.
    _memfd: File,
}

/// The identity of a file's content as a shim checks it: device, inode, size, mtime and
/// ctime (any write or replacement changes one of them).
pub fn identity(m: &std::fs::Metadata) -> String {
    format!(
        "{}:{}:{}:{}.{}:{}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    )
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RuntimeError + 'a {
    move |source| RuntimeError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl SealedRunc {
    /// Seals runc into `<state>/.sealed-runc`, after detaching what an earlier run left
    /// there. None (logged) when it cannot: shims then run runc from its file, as before.
    pub fn install(state: &Path) -> Option<SealedRunc> {
        let path = state.join(FILE);
        detach(&path);
        match seal(&path) {
            Ok(s) => {
                tracing::info!(path = %s.path.display(), source = %s.source.display(), "runc sealed in memory for taskd's shim");
                Some(s)
            }
            Err(e) => {
                detach(&path);
                tracing::warn!(error = %e, "runc not sealed in memory: shims run it from its file");
                None
            }
        }
    }

    /// What every shim command gets in its environment.
    pub fn env(&self) -> [(&'static str, OsString); 2] {
        [
            (ENV_PATH, self.path.clone().into_os_string()),
            (ENV_ID, OsString::from(&self.id)),
        ]
    }
}

impl Drop for SealedRunc {
    fn drop(&mut self) {
        detach(&self.path);
    }
}

/// Unmounts every mount stacked on `path` (through an O_PATH handle: a stale one cannot
/// be resolved) and removes the file.
fn detach(path: &Path) {
    while let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(path)
    {
        let handle = format!("/proc/self/fd/{}", f.as_raw_fd());
        if nix::mount::umount2(handle.as_str(), nix::mount::MntFlags::MNT_DETACH).is_err() {
            break;
        }
    }
    let _ = std::fs::remove_file(path);
}

/// The first `runc` on PATH, as the shim's command finds it.
fn runc_on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("runc"))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn memfd() -> std::io::Result<File> {
    let name = c"taskd-sealed-runc";
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // MFD_EXEC (Linux 6.3) keeps the copy executable under vm.memfd_noexec=1; older
    // kernels refuse the flag and make every memfd executable.
    // SAFETY: a NUL-terminated name and plain flags; the fd is owned right away.
    let mut fd = unsafe { libc::memfd_create(name.as_ptr(), flags | libc::MFD_EXEC) };
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    }
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new fd nobody else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn seal(path: &Path) -> Result<SealedRunc, RuntimeError> {
    let source = runc_on_path().ok_or_else(|| RuntimeError::Io {
        op: "find runc on PATH",
        path: PathBuf::from("runc"),
        source: std::io::ErrorKind::NotFound.into(),
    })?;
    let mut from = File::open(&source).map_err(io("open", &source))?;
    // The identity of the file copied, not of what the path names a moment later.
    let meta = from.metadata().map_err(io("stat", &source))?;
    let mut copy = memfd().map_err(io("memfd_create for", &source))?;
    let n = std::io::copy(&mut from, &mut copy).map_err(io("copy", &source))?;
    if n != meta.len() {
        return Err(RuntimeError::Io {
            op: "copy (short)",
            path: source,
            source: std::io::ErrorKind::UnexpectedEof.into(),
        });
    }
    copy.set_permissions(std::fs::Permissions::from_mode(0o700))
        .map_err(io("chmod copy of", &source))?;
    // SAFETY: fcntl on an fd we own, with plain int arguments.
    let sealed = unsafe {
        libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, SEALS);
        libc::fcntl(copy.as_raw_fd(), libc::F_GET_SEALS)
    };
    if sealed != SEALS {
        return Err(RuntimeError::Io {
            op: "seal the copy of",
            path: source,
            source: std::io::Error::other(format!("seals {sealed:#x}, wanted {SEALS:#x}")),
        });
    }
    // The memfd lives in the kernel's internal mount: what can be bound is this process's
    // /proc/self/fd link to it, opened as a link.
    let link = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(format!("/proc/self/fd/{}", copy.as_raw_fd()))
        .map_err(io("open the fd link of", &source))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(path)
        .map_err(io("create", path))?;
    nix::mount::mount(
        Some(format!("/proc/self/fd/{}", link.as_raw_fd()).as_str()),
        path,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| RuntimeError::Io {
        op: "bind the sealed copy onto",
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    drop(link);
    let seen = std::fs::metadata(path).map_err(io("stat", path))?;
    if seen.len() != meta.len() {
        return Err(RuntimeError::Io {
            op: "check the mount at",
            path: path.to_path_buf(),
            source: std::io::Error::other(format!("{} bytes, wanted {}", seen.len(), meta.len())),
        });
    }
    Ok(SealedRunc {
        path: path.to_path_buf(),
        source,
        id: identity(&meta),
        _memfd: copy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_changes_with_the_content_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("runc");
        std::fs::write(&p, b"one").unwrap();
        let a = identity(&std::fs::metadata(&p).unwrap());
        assert_eq!(a, identity(&std::fs::metadata(&p).unwrap()));
        std::fs::write(dir.path().join("new"), b"two").unwrap();
        std::fs::rename(dir.path().join("new"), &p).unwrap();
        assert_ne!(a, identity(&std::fs::metadata(&p).unwrap()), "a replaced file");
    }

    /// Needs root (mount) and runc on PATH.
    #[test]
    #[ignore = "e2e: root, runc on PATH"]
    fn the_copy_is_sealed_mounted_runnable_and_gone_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let s = SealedRunc::install(dir.path()).expect("sealed");
        let path = dir.path().join(FILE);
        let f = File::open(&path).unwrap();
        // SAFETY: fcntl F_GET_SEALS on an fd we own.
        let seals = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) };
        assert_eq!(seals, SEALS, "the mount is the sealed memfd");
        let out = std::process::Command::new(&path)
            .arg("--version")
            .output()
            .unwrap();
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("runc version"));
        let env = s.env();
        assert_eq!(
            env[1].1,
            OsString::from(identity(&std::fs::metadata(runc_on_path().unwrap()).unwrap()))
        );
        // A second install (as a restart finds the first one's mount) replaces it.
        drop(f);
        std::mem::forget(s);
        let again = SealedRunc::install(dir.path()).expect("sealed again");
        drop(again);
        assert!(
            std::fs::symlink_metadata(&path).is_err(),
            "nothing left at {path:?}"
        );
    }
}

//! Unix sockets the daemon listens on, and the root lock.
//!
//! ```text
//! bind(path)
//!   ├─ path longer than sun_path (107 bytes + NUL) ─▶ TooLong
//!   ├─ parent missing ─▶ created with mode 0711
//!   ├─ something at path
//!   │    ├─ not a socket ─▶ NotASocket (never removed)
//!   │    ├─ a socket someone answers on ─▶ InUse (never stolen)
//!   │    └─ a socket nobody answers on (stale) ─▶ unlinked
//!   └─ bind, chmod 0660 ─▶ BoundSocket (remembers dev/inode: `remove` only unlinks our own file)
//! ```
//!
//! The root lock (`<root>/taskd.lock`, `flock(LOCK_EX|LOCK_NB)`) makes a second daemon on the
//! same root refuse to start; the socket check above makes a daemon on another root refuse a
//! socket that a live daemon serves.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::errdefs::{ErrorKind, Kind};

/// `sizeof(sockaddr_un.sun_path) - 1` on Linux.
pub const MAX_SOCKET_PATH: usize = 107;

/// Why a socket could not be bound or the root could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "socket path {path} is {len} bytes long; a unix socket path must be at most {MAX_SOCKET_PATH} bytes: choose a shorter path"
    )]
    TooLong { path: PathBuf, len: usize },
    #[error("socket path {path} must be absolute")]
    NotAbsolute { path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("socket {path} is in use by another live process (is another taskd running?)")]
    InUse { path: PathBuf },
    #[error("another taskd already runs on this root: {path} is locked{}", holder.map(|p| format!(" by pid {p}")).unwrap_or_default())]
    Locked { path: PathBuf, holder: Option<u32> },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl ErrorKind for SocketError {
    fn kind(&self) -> Kind {
        match self {
            SocketError::TooLong { .. } | SocketError::NotAbsolute { .. } => Kind::InvalidArgument,
            SocketError::NotASocket { .. } | SocketError::InUse { .. } | SocketError::Locked { .. } => {
                Kind::FailedPrecondition
            }
            SocketError::Io { .. } => Kind::Unknown,
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |source| SocketError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Checks what `bind` would refuse without touching the file system (used by config validation).
pub fn check_path(path: &Path) -> Result<(), SocketError> {
    if !path.is_absolute() {
        return Err(SocketError::NotAbsolute {
            path: path.to_owned(),
        });
    }
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(SocketError::TooLong {
            path: path.to_owned(),
            len,
        });
    }
    Ok(())
}

/// Creates `dir` (and missing parents) with mode 0711.
pub fn create_dir_0711(dir: &Path) -> Result<(), SocketError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(dir)
        .map_err(io_err("create directory", dir))
}

/// Ensures one of taskd's own directories exists with mode 0711.
pub fn own_dir_0711(dir: &Path) -> Result<(), SocketError> {
    create_dir_0711(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o711)).map_err(io_err("chmod 0711", dir))
}

/// A socket file this process bound.
#[derive(Debug)]
pub struct BoundSocket {
    pub path: PathBuf,
    /// Identity of the file we created: (dev, inode, ctime). Inode numbers are reused, so
    /// the creation time disambiguates.
    id: (u64, u64, i64, i64),
}

fn file_id(m: &fs::Metadata) -> (u64, u64, i64, i64) {
    (m.dev(), m.ino(), m.ctime(), m.ctime_nsec())
}

impl BoundSocket {
    /// Unlinks the socket file if it is still the one this process created.
    pub fn remove(&self) {
        match fs::symlink_metadata(&self.path) {
            Ok(m) if file_id(&m) == self.id => {
                if let Err(e) = fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "remove socket");
                }
            }
            Ok(_) => {
                tracing::warn!(path = %self.path.display(), "socket was replaced by someone else; left alone");
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %self.path.display(), error = %e, "stat socket"),
        }
    }
}

/// Binds a listening unix socket at `path` (see the module docs for the rules).
pub fn bind(path: &Path) -> Result<(tokio::net::UnixListener, BoundSocket), SocketError> {
    check_path(path)?;
    if let Some(parent) = path.parent() {
        create_dir_0711(parent)?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                return Err(SocketError::NotASocket {
                    path: path.to_owned(),
                });
            }
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(SocketError::InUse {
                        path: path.to_owned(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "replacing stale socket");
                    fs::remove_file(path).map_err(io_err("remove stale socket", path))?;
                }
                Err(e) => return Err(io_err("probe existing socket", path)(e)),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("stat", path)(e)),
    }
    let std_listener = std::os::unix::net::UnixListener::bind(path).map_err(io_err("bind", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660)).map_err(io_err("chmod 0660", path))?;
    std_listener
        .set_nonblocking(true)
        .map_err(io_err("set nonblocking", path))?;
    let meta = fs::symlink_metadata(path).map_err(io_err("stat", path))?;
    let listener = tokio::net::UnixListener::from_std(std_listener).map_err(io_err("register", path))?;
    Ok((
        listener,
        BoundSocket {
            path: path.to_owned(),
            id: file_id(&meta),
        },
    ))
}

/// An exclusive `flock` on `<root>/taskd.lock`, held for the life of the daemon. The file
/// holds the pid of its holder; it is never deleted (deleting lock files races).
pub struct RootLock {
    _lock: nix::fcntl::Flock<File>,
    pub path: PathBuf,
}

/// Takes the root lock, or says which pid holds it.
pub fn lock_root(root: &Path) -> Result<RootLock, SocketError> {
    let path = root.join("taskd.lock");
    // 0600: nothing under root is for other users (an older taskd's 0644 file is fixed too).
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_err("open lock file", &path))?;
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io_err("chmod 0600", &path))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            let pid = std::process::id().to_string();
            lock.set_len(0).map_err(io_err("truncate lock file", &path))?;
            lock.rewind().map_err(io_err("rewind lock file", &path))?;
            lock.write_all(pid.as_bytes())
                .map_err(io_err("write lock file", &path))?;
            Ok(RootLock { _lock: lock, path })
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let holder = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            Err(SocketError::Locked { path, holder })
        }
        Err((_, errno)) => Err(io_err("flock", &path)(io::Error::from(errno))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_long_path_is_refused_with_its_length() {
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
        let err = check_path(&long).unwrap_err();
        assert!(matches!(err, SocketError::TooLong { len: 125, .. }), "{err}");
        assert!(err.to_string().contains("at most 107 bytes"));
        assert!(check_path(Path::new("relative.sock")).is_err());
        assert!(check_path(Path::new("/run/taskd/taskd.sock")).is_ok());
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_and_live_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s/taskd.sock");
        let (live, bound) = bind(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let dmode = fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode, 0o711);
        assert!(matches!(bind(&path), Err(SocketError::InUse { .. })));
        drop(live);
        // The file stays after the listener closes: stale.
        assert!(path.exists());
        std::thread::sleep(std::time::Duration::from_millis(10));
        let (_l2, bound2) = bind(&path).unwrap();
        bound.remove(); // not ours any more: left alone
        assert!(path.exists());
        bound2.remove();
        assert!(!path.exists());
    }

    #[test]
    fn a_regular_file_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("taskd.sock");
        fs::write(&path, "x").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        assert!(matches!(bind(&path), Err(SocketError::NotASocket { .. })));
    }

    #[test]
    fn root_lock_is_exclusive_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_root(dir.path()).unwrap();
        let err = lock_root(dir.path()).err().unwrap();
        assert!(
            err.to_string().contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        lock_root(dir.path()).unwrap();
    }
}

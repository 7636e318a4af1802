//! OOM notification for a container's cgroup: cgroup v1 through an eventfd registered on
//! `memory.oom_control`, cgroup v2 by watching `memory.events` (inotify) for `oom_kill` to
//! grow. Armed after `runc create`, before `runc start`.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum OomError {
    #[error("cgroup of pid {pid}: {source}")]
    Cgroup { pid: u32, source: std::io::Error },
    #[error("pid {pid} has no memory cgroup")]
    NoMemoryCgroup { pid: u32 },
    #[error("arm OOM notification on {path}: {source}")]
    Arm { path: PathBuf, source: std::io::Error },
}

fn arm_err(path: &Path) -> impl FnOnce(nix::Error) -> OomError + '_ {
    move |e| OomError::Arm {
        path: path.to_owned(),
        source: e.into(),
    }
}

/// The memory cgroup dir of `pid` and whether it is cgroup v2.
fn memory_cgroup(pid: u32) -> Result<(PathBuf, bool), OomError> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|source| OomError::Cgroup { pid, source })?;
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next(), parts.next(), parts.next());
        let (Some(ctrls), Some(path)) = (ctrls, path) else {
            continue;
        };
        let path = path.trim_start_matches('/');
        if ctrls.split(',').any(|c| c == "memory") {
            return Ok((Path::new("/sys/fs/cgroup/memory").join(path), false));
        }
        if ctrls.is_empty() {
            v2 = Some(path.to_owned());
        }
    }
    // Pure v2 (not the hybrid's unified dir, which has no memory controller).
    match v2 {
        Some(p) if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() => {
            Ok((Path::new("/sys/fs/cgroup").join(p), true))
        }
        _ => Err(OomError::NoMemoryCgroup { pid }),
    }
}

/// Sends `id` on `tx` for every OOM kill in `pid`'s memory cgroup until the cgroup goes away
/// or the returned task is aborted.
pub fn watch(pid: u32, id: String, tx: mpsc::UnboundedSender<String>) -> Result<JoinHandle<()>, OomError> {
    let (dir, v2) = memory_cgroup(pid)?;
    if v2 {
        watch_v2(dir, id, tx)
    } else {
        watch_v1(dir, id, tx)
    }
}

fn watch_v1(dir: PathBuf, id: String, tx: mpsc::UnboundedSender<String>) -> Result<JoinHandle<()>, OomError> {
    let control = dir.join("memory.oom_control");
    let oom = fs::File::open(&control).map_err(|source| OomError::Arm {
        path: control.clone(),
        source,
    })?;
    let efd =
        EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).map_err(arm_err(&control))?;
    let reg = dir.join("cgroup.event_control");
    fs::write(&reg, format!("{} {}", efd.as_fd().as_raw_fd(), oom.as_raw_fd()))
        .map_err(|source| OomError::Arm { path: reg, source })?;
    let efd: OwnedFd = efd.into();
    // SAFETY: the AsyncFd owns the eventfd, so the descriptor stays open while registered.
    let afd = unsafe { AsyncFd::register(efd) }
        .map_err(std::io::Error::from)
        .map_err(|source| OomError::Arm {
            path: control.clone(),
            source,
        })?;
    Ok(tokio::spawn(async move {
        let _oom = oom;
        loop {
            let Ok(mut guard) = afd.readable().await else {
                return;
            };
            let mut buf = [0u8; 8];
            match nix::unistd::read(afd.get_ref(), &mut buf) {
                Ok(8) => {
                    // Removing the cgroup signals the eventfd as well.
                    if !control.exists() {
                        return;
                    }
                    if tx.send(id.clone()).is_err() {
                        return;
                    }
                }
                Err(nix::Error::EAGAIN) => guard.clear_ready(),
                _ => return,
            }
        }
    }))
}

fn oom_kills(events: &Path) -> Option<u64> {
    let text = fs::read_to_string(events).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok()))
}

fn watch_v2(dir: PathBuf, id: String, tx: mpsc::UnboundedSender<String>) -> Result<JoinHandle<()>, OomError> {
    let events = dir.join("memory.events");
    let ino = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).map_err(arm_err(&events))?;
    ino.add_watch(&events, AddWatchFlags::IN_MODIFY)
        .map_err(arm_err(&events))?;
    let mut seen = oom_kills(&events).unwrap_or(0);
    let ino: OwnedFd = ino.into();
    // SAFETY: the AsyncFd owns the inotify fd, so the descriptor stays open while registered.
    let afd = unsafe { AsyncFd::register(ino) }
        .map_err(std::io::Error::from)
        .map_err(|source| OomError::Arm {
            path: events.clone(),
            source,
        })?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = afd.readable().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            match nix::unistd::read(afd.get_ref(), &mut buf) {
                Ok(n) if n > 0 => {
                    let Some(now) = oom_kills(&events) else {
                        return; // the cgroup is gone
                    };
                    if now > seen {
                        seen = now;
                        if tx.send(id.clone()).is_err() {
                            return;
                        }
                    }
                }
                Err(nix::Error::EAGAIN) => guard.clear_ready(),
                _ => return,
            }
        }
    }))
}

//! Teardown that runs after a test daemon is gone and before its directories are removed.
//!
//! The tasks helper fills [`after_daemon`]: kill the shims started under `state` (by the pids
//! recorded in their bundles, never by process name) and unmount everything under `state`,
//! so removing the temp dirs never crosses a mount.

use std::path::Path;

/// Called by `Daemon`'s `Drop` after the daemon process was killed and reaped.
///
/// For every bundle under `<state>/io.containerd.runtime.v2.task/<ns>/<id>`: run
/// `<shim> delete` in it (runc kills and deletes the container, the rootfs is unmounted),
/// SIGKILL the pids recorded in `init.pid` and `shim.pid`, and unmount whatever is still
/// mounted on its rootfs.
pub fn after_daemon(state: &Path) {
    kill_shims(state);
    // Whatever a failed test left mounted under the state dir (pod netns / IPC / UTS pins,
    // pod /dev/shm tmpfs, rootfs): unmounted, so removing the dir never stops at a mount.
    unmount_under(state);
}

/// Unmounts every mount point under `dir` (deepest first, lazily), found by path in
/// /proc/self/mountinfo.
fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<std::path::PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| std::path::PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn kill_shims(state: &Path) {
    let runtime = state.join("io.containerd.runtime.v2.task");
    let Ok(namespaces) = std::fs::read_dir(&runtime) else {
        return;
    };
    for ns in namespaces.flatten() {
        let Ok(bundles) = std::fs::read_dir(ns.path()) else {
            continue;
        };
        let ns_name = ns.file_name().to_string_lossy().into_owned();
        if ns_name == ".pool" {
            // Warm pool shims: `.pool/<ns>/<pool id>/{shim.pid,address}`; they serve no task.
            for pool_ns in bundles.flatten() {
                for d in std::fs::read_dir(pool_ns.path()).into_iter().flatten().flatten() {
                    kill_recorded(&d.path(), &["shim.pid"]);
                }
            }
            continue;
        }
        for b in bundles.flatten() {
            let dir = b.path();
            let id = b.file_name().to_string_lossy().into_owned();
            if let Ok(bin) = std::fs::read_to_string(dir.join("shim-binary-path")) {
                shim_delete(bin.trim(), &ns_name, &id, &dir, &state.join("taskd.sock"));
            }
            // (What is still mounted on its rootfs goes with `unmount_under(state)`.)
            kill_recorded(&dir, &["init.pid", "shim.pid"]);
        }
        // runc's per-namespace state dir (the runc shim's default root), once empty.
        let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(&ns_name));
        // The namespace's parent cgroup (ctr's default cgroups path is /<ns>/<id>), once
        // empty: every v1 controller, and the v2 root.
        if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in controllers.flatten() {
                let _ = std::fs::remove_dir(c.path().join(&ns_name));
            }
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(&ns_name));
    }
}

/// SIGKILLs the pids recorded in `dir`'s `pid_files`, then removes the socket its `address`
/// file names once nobody listens there.
fn kill_recorded(dir: &Path, pid_files: &[&str]) {
    for f in pid_files {
        let pid = std::fs::read_to_string(dir.join(f))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if let Some(pid) = pid.filter(|p| *p > 1) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
    if let Ok(address) = std::fs::read_to_string(dir.join("address")) {
        remove_stale_socket(address.trim());
    }
}

/// Removes `unix:///path` when it is a socket nobody listens on (waits briefly for a just
/// killed shim to be gone).
fn remove_stale_socket(address: &str) {
    use std::os::unix::fs::FileTypeExt;
    let Some(path) = address.strip_prefix("unix://").filter(|p| p.starts_with('/')) else {
        return;
    };
    for _ in 0..50 {
        let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
        if !is_socket {
            return;
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                let _ = std::fs::remove_file(path);
                return;
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
}

/// `<shim> delete` for one bundle, bounded to 10 s.
fn shim_delete(bin: &str, ns: &str, id: &str, bundle: &Path, address: &Path) {
    let child = std::process::Command::new(bin)
        .arg("-namespace")
        .arg(ns)
        .arg("-address")
        .arg(address)
        .args(["-publish-binary", "/bin/true", "-id", id, "-bundle"])
        .arg(bundle)
        .arg("delete")
        .current_dir(bundle)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Removes the pods' parent cgroup `parent` (a cgroupfs path like `/taskd-test-…`) under
/// every mounted controller, once empty: the kernel releases a dead container's cgroup
/// shortly after its last process, so this retries for a few seconds.
pub fn remove_cgroup_parent(parent: &str) {
    for _ in 0..100 {
        let mut left = 0;
        if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in controllers.flatten() {
                let p = c.path().join(parent.trim_start_matches('/'));
                if p.exists() && std::fs::remove_dir(&p).is_err() {
                    left += 1;
                }
            }
        }
        if left == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

//! runc, driven through the `runc` crate with a spawner that fits a subreaper: the shim's
//! SIGCHLD handler reaps every child (`waitpid(-1)`), so a runc command's exit status comes
//! from that reaper's exit events, never from a `wait` of our own (which would race it).

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use async_trait::async_trait;
use containerd_shim::monitor::{Subject, Topic, monitor_subscribe, monitor_unsubscribe};
use containerd_shim_protos::shim::oci::Options;
use runc::{Runc, Spawner};
use tokio::io::AsyncReadExt;

/// The runc root when the options name none, as the stock shim's.
pub const DEFAULT_ROOT: &str = "/run/containerd/runc";

/// Pids of the runc commands running now: their exits are theirs, not a container
/// process's (the task service drops them, see [`forget`]).
static COMMANDS: std::sync::Mutex<std::collections::BTreeSet<u32>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Whether `pid` was one of our runc commands (forgetting it): its exit is not a process's.
pub fn forget(pid: u32) -> bool {
    COMMANDS.lock().map(|mut c| c.remove(&pid)).unwrap_or(false)
}

/// Runs runc commands and takes their exit status from the shim's reaper.
#[derive(Debug)]
pub struct ReaperSpawner;

async fn read_all<R: Into<std::os::fd::OwnedFd>>(r: Option<R>) -> String {
    let Some(r) = r else {
        return String::new();
    };
    let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(r.into()) else {
        return String::new();
    };
    let mut buf = Vec::new();
    let _ = rx.read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[async_trait]
impl Spawner for ReaperSpawner {
    async fn execute(&self, cmd: runc::Command) -> runc::Result<(ExitStatus, u32, String, String)> {
        // Subscribed before the spawn, so the exit cannot be missed.
        let mut sub = monitor_subscribe(Topic::Pid)
            .await
            .map_err(|e| runc::error::Error::Other(Box::new(e)))?;
        let mut cmd = cmd.into_std();
        let spawned = cmd.spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = monitor_unsubscribe(sub.id).await;
                return Err(runc::error::Error::ProcessSpawnFailed(e));
            }
        };
        let pid = child.id();
        if let Ok(mut c) = COMMANDS.lock() {
            c.insert(pid);
        }
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        drop(cmd);
        let outputs = async { tokio::join!(read_all(stdout), read_all(stderr)) };
        let exit = async {
            while let Some(e) = sub.rx.recv().await {
                if let Subject::Pid(p) = e.subject
                    && p as u32 == pid
                {
                    return e.exit_code;
                }
            }
            -1
        };
        let ((out, err), code) = tokio::join!(outputs, exit);
        let _ = monitor_unsubscribe(sub.id).await;
        // std's Child never reaps on drop; the reaper already did.
        drop(child);
        Ok((ExitStatus::from_raw((code & 0xff) << 8), pid, out, err))
    }
}

/// A runc client for a container in `namespace` with the runtime options of its task, for
/// the serving shim (whose reaper reaps runc).
pub fn client(namespace: &str, bundle: &Path, opts: &Options) -> runc::Result<Runc> {
    client_with(namespace, bundle, opts, true)
}

/// As [`client`]; `reaped` false for a process without a reaper (the `delete` action),
/// which waits for runc itself.
pub fn client_with(namespace: &str, bundle: &Path, opts: &Options, reaped: bool) -> runc::Result<Runc> {
    let root = if opts.root.is_empty() {
        DEFAULT_ROOT
    } else {
        opts.root.as_str()
    };
    let binary = if opts.binary_name.is_empty() {
        "runc"
    } else {
        opts.binary_name.as_str()
    };
    let mut g = runc::options::GlobalOpts::new()
        .command(binary)
        .root(Path::new(root).join(namespace))
        .systemd_cgroup(opts.systemd_cgroup)
        .log(bundle.join("log.json"))
        .log_json();
    if reaped {
        g.custom_spawner(std::sync::Arc::new(ReaperSpawner));
    }
    g.build()
}

/// The most useful message of a failed runc command: runc's last logged error (log.json in
/// the bundle) or the command's own output.
pub fn describe(err: &runc::error::Error, bundle: &Path) -> String {
    let logged = std::fs::read_to_string(bundle.join("log.json"))
        .ok()
        .and_then(|log| {
            log.lines().rev().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v.get("level")?.as_str()? == "error")
                    .then(|| v.get("msg")?.as_str().map(str::to_owned))
                    .flatten()
            })
        });
    match logged {
        Some(m) => format!("{err}: {m}"),
        None => err.to_string(),
    }
}

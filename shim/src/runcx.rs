//! runc, driven through the `runc` crate with a spawner that fits a subreaper: the shim's
//! SIGCHLD handler reaps every child (`waitpid(-1)`), so a runc command's exit status comes
//! from that reaper's exit events, never from a `wait` of our own (which would race it).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::monitor::{Subject, Topic, monitor_subscribe, monitor_unsubscribe};
use containerd_shim_protos::shim::oci::Options;
use runc::io::Io;
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

/// The runc binary and runc root (under `Root`, default [`DEFAULT_ROOT`], per namespace) of
/// the task's runtime options.
fn binary_and_root<'a>(namespace: &str, opts: &'a Options) -> (&'a str, PathBuf) {
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
    (binary, Path::new(root).join(namespace))
}

/// A runc client for a container in `namespace` with the runtime options of its task, for
/// the serving shim (whose reaper reaps runc).
pub fn client(namespace: &str, bundle: &Path, opts: &Options) -> runc::Result<Runc> {
    client_with(namespace, bundle, opts, true)
}

/// As [`client`]; `reaped` false for a process without a reaper (the `delete` action),
/// which waits for runc itself.
pub fn client_with(namespace: &str, bundle: &Path, opts: &Options, reaped: bool) -> runc::Result<Runc> {
    let (binary, root) = binary_and_root(namespace, opts);
    let mut g = runc::options::GlobalOpts::new()
        .command(binary)
        .root(root)
        .systemd_cgroup(opts.systemd_cgroup)
        .log(bundle.join("log.json"))
        .log_json();
    if reaped {
        g.custom_spawner(std::sync::Arc::new(ReaperSpawner));
    }
    g.build()
}

/// `runc` with the global options of a container in `namespace` (as [`client`] sets them),
/// for the commands the shim runs itself rather than through the `runc` crate.
pub fn command(namespace: &str, bundle: &Path, opts: &Options) -> runc::Command {
    let (binary, root) = binary_and_root(namespace, opts);
    let mut cmd = runc::Command::new(binary);
    cmd.arg("--root")
        .arg(root)
        .arg("--log")
        .arg(bundle.join("log.json"))
        .arg("--log-format")
        .arg("json");
    if opts.systemd_cgroup {
        cmd.arg("--systemd-cgroup");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("NOTIFY_SOCKET");
    cmd
}

/// `runc exec --detach --process FILE`, the process spec written as the Exec request had it.
/// Ours rather than the `runc` crate's `exec`, which takes an `oci_spec` `Process`: parsing
/// one links oci-spec's `execCPUAffinity` check and with it `regex` (about 400 KiB of the
/// shim's 2.4 MB of code), and a shim's RSS follows its code size (the kernel maps code in
/// 64 KiB chunks around each page it runs).
pub struct Exec<'a> {
    pub id: &'a str,
    pub spec: &'a [u8],
    pub spec_file: &'a Path,
    pub pid_file: &'a Path,
    pub console: Option<&'a Path>,
    pub io: Option<&'a Arc<dyn Io>>,
}

impl Exec<'_> {
    pub async fn run(&self, namespace: &str, bundle: &Path, opts: &Options) -> runc::Result<()> {
        std::fs::write(self.spec_file, self.spec).map_err(runc::error::Error::SpecFileCreationFailed)?;
        let mut cmd = command(namespace, bundle, opts);
        cmd.arg("exec")
            .arg("--process")
            .arg(self.spec_file)
            .arg("--detach")
            .arg("--pid-file")
            .arg(self.pid_file);
        if let Some(console) = self.console {
            cmd.arg("--console-socket").arg(console);
        }
        cmd.arg(self.id);
        let ran = self.launch(cmd).await;
        let _ = std::fs::remove_file(self.spec_file);
        let (status, _, stdout, stderr) = ran?;
        if !status.success() {
            return Err(runc::error::Error::CommandFailed {
                status,
                stdout,
                stderr,
            });
        }
        Ok(())
    }

    async fn launch(&self, mut cmd: runc::Command) -> runc::Result<(ExitStatus, u32, String, String)> {
        if let Some(io) = self.io {
            io.set(&mut cmd)
                .await
                .map_err(|e| runc::error::Error::IoSet(e.to_string()))?;
        }
        let ran = ReaperSpawner.execute(cmd).await;
        // runc has the pipes' write ends (or failed): the shim's copies close, so the
        // readers see EOF when the process ends.
        if let Some(io) = self.io {
            io.close_after_start().await;
        }
        ran
    }
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

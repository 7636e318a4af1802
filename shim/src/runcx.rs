//! runc, driven through the `runc` crate with a spawner that fits a subreaper: the shim's
//! SIGCHLD handler reaps every child (`waitpid(-1)`), so a runc command's exit status comes
//! from that reaper's exit events, never from a `wait` of our own (which would race it).

use std::ffi::{CStr, CString, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, OnceLock};

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
        if let Some(sealed) = sealed_for(&cmd) {
            run_sealed_first(&mut cmd, sealed);
        }
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

/// taskd's sealed in-memory copy of runc (the daemon's `runtime/v2/sealed_runc.rs`), as
/// its environment names it: the mount and the identity of the file it copied.
struct Sealed {
    path: CString,
    id: String,
}

fn sealed() -> Option<&'static Sealed> {
    static SEALED: OnceLock<Option<Sealed>> = OnceLock::new();
    SEALED
        .get_or_init(|| {
            let path = std::env::var_os("TASKD_SEALED_RUNC")?;
            Some(Sealed {
                path: CString::new(path.into_vec()).ok()?,
                id: std::env::var("TASKD_SEALED_RUNC_ID").ok()?,
            })
        })
        .as_ref()
}

/// A file's identity as taskd recorded it (`sealed_runc::identity`: device, inode, size,
/// mtime, ctime).
fn identity(m: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
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

/// The file `name` in the dirs of `path` (the first executable one), as `execvp` finds it.
fn on_path_in(path: &std::ffi::OsStr, name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .map(|d| d.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// The file a command's `program` runs: a path as it is, a bare name through PATH.
fn resolve(program: &std::ffi::OsStr, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        Some(PathBuf::from(program))
    } else {
        on_path_in(path?, &program.to_string_lossy())
    }
}

/// The sealed copy to run instead of `file`: only when `file` is the very file taskd copied
/// (the same device, inode, size, mtime and ctime through any symlink), so a runc upgraded
/// since, or another BinaryName, runs from its own file.
fn choose<'a>(s: &'a Sealed, file: Option<&Path>) -> Option<&'a CStr> {
    let m = std::fs::metadata(file?).ok()?;
    (identity(&m) == s.id).then_some(s.path.as_c_str())
}

fn sealed_for(cmd: &std::process::Command) -> Option<&'static CStr> {
    let s = sealed()?;
    let path = std::env::var_os("PATH");
    choose(s, resolve(cmd.get_program(), path.as_deref()).as_deref())
}

/// `execve` arguments built before the fork (the child may not allocate).
struct SealedExec {
    path: &'static CStr,
    _strings: (Vec<CString>, Vec<CString>),
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

// SAFETY: the pointers point into the CStrings this value owns (their buffers never move)
// and are only read, in the forked child.
unsafe impl Send for SealedExec {}
unsafe impl Sync for SealedExec {}

impl SealedExec {
    /// Returns only when the exec failed.
    fn exec(&self) {
        // SAFETY: NUL-terminated path, NULL-terminated arrays of live C strings.
        unsafe {
            libc::execve(self.path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr());
        }
    }
}

/// Makes the child exec `sealed` with `cmd`'s arguments and environment; when that fails
/// (taskd stopped, and the mount with it), `cmd` runs its own `runc` as before.
fn run_sealed_first(cmd: &mut std::process::Command, sealed: &'static CStr) {
    use std::os::unix::process::CommandExt;
    let cstr = |b: Vec<u8>| CString::new(b).ok();
    let argv: Option<Vec<CString>> = std::iter::once(std::ffi::OsStr::new("runc"))
        .chain(cmd.get_args())
        .map(|a| cstr(a.as_bytes().to_vec()))
        .collect();
    // The environment std gives the command: this process's, with the command's changes.
    let mut env: std::collections::BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => env.insert(k.to_owned(), v.to_owned()),
            None => env.remove(k),
        };
    }
    let envp: Option<Vec<CString>> = env
        .into_iter()
        .map(|(k, v)| {
            let mut b = k.into_vec();
            b.push(b'=');
            b.extend(v.into_vec());
            cstr(b)
        })
        .collect();
    let (Some(argv), Some(envp)) = (argv, envp) else {
        return;
    };
    let ptrs = |v: &[CString]| {
        v.iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect::<Vec<_>>()
    };
    let exec = SealedExec {
        path: sealed,
        argv: ptrs(&argv),
        envp: ptrs(&envp),
        _strings: (argv, envp),
    };
    // SAFETY: the closure only calls execve(2), async-signal-safe, with arrays built above;
    // when it returns (it failed), std goes on to exec the command's own program.
    unsafe {
        cmd.pre_exec(move || {
            exec.exec();
            Ok(())
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn output(mut cmd: std::process::Command) -> String {
        let out = cmd.output().expect("run");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn the_sealed_copy_runs_with_the_commands_arguments_and_environment() {
        let mut cmd = std::process::Command::new("true");
        cmd.args([
            "-c",
            "head -c 5 /proc/$$/cmdline | tr '\\0' '|'; echo \" $0 $SEALED_TEST\"",
            "arg",
        ])
        .env("SEALED_TEST", "env");
        // /bin/sh stands in for the sealed runc: it gets argv[0] `runc` and the arguments.
        run_sealed_first(&mut cmd, c"/bin/sh");
        assert_eq!(output(cmd), "runc| arg env\n");
    }

    #[test]
    fn without_the_sealed_copy_the_commands_own_program_runs() {
        let mut cmd = std::process::Command::new("echo");
        cmd.arg("own");
        run_sealed_first(&mut cmd, c"/nonexistent/.sealed-runc");
        assert_eq!(output(cmd), "own\n");
    }

    #[test]
    fn only_an_unchanged_runc_on_path_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runc = dir.path().join("runc");
        std::fs::write(&runc, b"#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&runc, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let id = identity(&std::fs::metadata(&runc).expect("stat"));
        let sealed = Sealed {
            path: CString::new("/sealed").expect("path"),
            id,
        };
        let path = std::env::join_paths([dir.path()]).expect("PATH");
        let pick = |program: &str| {
            let file = resolve(std::ffi::OsStr::new(program), Some(&path));
            choose(&sealed, file.as_deref())
        };
        assert!(pick("runc").is_some(), "the unchanged file, found on PATH");
        assert!(
            pick(runc.to_str().expect("utf-8")).is_some(),
            "the same file by its path"
        );
        assert!(pick("/bin/sh").is_none(), "a BinaryName of its own");
        std::fs::write(dir.path().join("new"), b"#!/bin/sh\n# upgraded\n").expect("write");
        std::fs::rename(dir.path().join("new"), &runc).expect("replace");
        assert!(pick("runc").is_none(), "an upgraded runc runs from its file");
    }
}

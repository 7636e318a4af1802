//! The integration-test harness: a real `taskd` process on temporary directories, and the
//! real `ctr` pointed at it. Every `tests/*.rs` uses it with `mod support;`.
//!
//! ```ignore
//! let mut d = support::Daemon::start();
//! let out = d.ctr_ok(&["namespaces", "ls"]);
//! d.stop();
//! ```
//!
//! Layout of one daemon's temp dir (removed on drop, never crossing a mount):
//! ```text
//! /tmp/taskd-test-XXXX/
//!   root/            --root
//!   state/           --state
//!     taskd.sock     --address (ttrpc: taskd.sock.ttrpc)
//!   taskd.toml       --config (generated: metrics on a free loopback port + extra toml)
//!   daemon.log       stderr of every run (RUST_LOG=debug), appended across restarts
//! ```
#![allow(dead_code)]

pub mod cleanup;
pub mod cri_client;
pub mod observe;
pub mod procs;
pub mod registry;

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a daemon may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a daemon may take to exit after SIGTERM before the harness gives up.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

// The one end-to-end guard, shared with the unit tests: see its module doc.
#[path = "../../src/e2e_guard.rs"]
mod e2e_guard;
#[allow(unused_imports)] // CNI_PLUGINS: only the CNI tests use it
pub use e2e_guard::{CNI_PLUGINS, Need, require};

/// taskd's own shim (`containerd-shim-taskd-v2`, runtime `io.containerd.taskd.v2`, the CRI's
/// default handler), next to the tests' taskd, where taskd finds it: `cargo test --workspace`
/// builds it (shim/tests needs it); `cargo test -p taskd` alone does not.
pub fn taskd_shim() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_taskd")).with_file_name("containerd-shim-taskd-v2");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo test --workspace` (scripts/test.sh) or `cargo build -p containerd-shim-taskd-v2` first",
        p.display()
    );
    p
}

/// Where `bin` is on PATH, if anywhere.
pub fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// A free loopback TCP port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A plain HTTP/1.1 GET; returns (status code, body).
pub fn http_get(addr: &str, path: &str, bearer: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.to_ascii_lowercase().contains("transfer-encoding: chunked") => {
            dechunk(body)
        }
        Some((_, body)) => body.to_owned(),
        None => String::new(),
    };
    Ok((code, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// One `taskd` process on its own temp dirs.
pub struct Daemon {
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub ttrpc_socket: PathBuf,
    /// `127.0.0.1:PORT` of the HTTP endpoint (metrics, healthz, readyz).
    pub metrics_addr: String,
    /// The temp dir holding everything above.
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// A daemon on the default generated config.
    pub fn start() -> Daemon {
        Daemon::start_with("")
    }

    /// A daemon whose config is `extra_config_toml` (any keys or tables) plus, unless it
    /// sets them, `[metrics] address` on a free loopback port.
    pub fn start_with(extra_config_toml: &str) -> Daemon {
        taskd_shim();
        let dir = tempfile::Builder::new()
            .prefix("taskd-test-")
            .tempdir()
            .expect("create temp dir")
            .keep();
        let mut cfg: toml::Table = toml::from_str(extra_config_toml)
            .unwrap_or_else(|e| panic!("extra config for the test daemon is not valid TOML: {e}"));
        cfg.entry("version").or_insert(toml::Value::Integer(1));
        let metrics = cfg
            .entry("metrics")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("[metrics] must be a table");
        let pick_port = !metrics.contains_key("address");
        let state = dir.join("state");
        let mut d = Daemon {
            root: dir.join("root"),
            socket: state.join("taskd.sock"),
            ttrpc_socket: state.join("taskd.sock.ttrpc"),
            state,
            metrics_addr: String::new(),
            log_path: dir.join("daemon.log"),
            config_path: dir.join("taskd.toml"),
            dir,
            child: None,
        };
        // A port picked here can be taken by someone else before taskd binds it: retry then.
        for attempt in 1..=3 {
            if pick_port {
                let a = format!("127.0.0.1:{}", free_port());
                cfg["metrics"]
                    .as_table_mut()
                    .expect("[metrics] is a table")
                    .insert("address".into(), toml::Value::String(a));
            }
            d.metrics_addr = cfg["metrics"]
                .get("address")
                .and_then(|a| a.as_str())
                .unwrap_or_default()
                .to_owned();
            let text = toml::to_string(&cfg).expect("render config");
            std::fs::write(&d.config_path, text).expect("write config");
            d.spawn();
            match d.wait_ready() {
                Ok(()) => return d,
                Err(e) if pick_port && attempt < 3 && d.log().contains("bind metrics address") => {
                    eprintln!("retrying daemon start with another metrics port: {e}");
                }
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// The command that starts this daemon (same flags); for tests that start a second
    /// instance on the same dirs by hand.
    pub fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_taskd"));
        c.arg("--config")
            .arg(&self.config_path)
            .arg("--root")
            .arg(&self.root)
            .arg("--state")
            .arg(&self.state)
            .arg("--address")
            .arg(&self.socket)
            .env("RUST_LOG", "debug,h2=info,hyper=info,hyper_util=info,tower=info")
            .env_remove("TASKD_CONFIG")
            .stdin(Stdio::null());
        c
    }

    fn spawn_and_wait(&mut self) {
        self.spawn();
        if let Err(e) = self.wait_ready() {
            panic!("{e}");
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open daemon log");
        let child = self
            .command()
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn taskd");
        self.child = Some(child);
    }

    /// Waits until the socket accepts and `/readyz` answers 200 (bounded).
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                panic!(
                    "taskd exited during startup ({status})\n--- daemon log ---\n{}",
                    self.log()
                );
            }
            let socket_ok = std::os::unix::net::UnixStream::connect(&self.socket).is_ok();
            // With the HTTP endpoint disabled (`[metrics] address = ""`), the socket is all we have.
            let ready = socket_ok
                && (self.metrics_addr.is_empty()
                    || matches!(http_get(&self.metrics_addr, "/readyz", None), Ok((200, _))));
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "taskd did not become ready within {START_TIMEOUT:?} (socket accepts: {socket_ok})\n--- daemon log ---\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many pids `ctr tasks ps` lists for CRI container `id` (namespace k8s.io): its
    /// init and everything running in it.
    pub fn task_pids(&self, id: &str) -> usize {
        self.ctr_ok(&["-n", "k8s.io", "tasks", "ps", id])
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .count()
    }

    /// Runs `ctr --address <socket> ARGS`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        require(&[Need::Bin("ctr", "containerd")]);
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .env_remove("CONTAINERD_ADDRESS")
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// Runs ctr, asserts success (showing stderr and the daemon log otherwise), returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        if !out.status.success() {
            panic!(
                "ctr {args:?} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- daemon log ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The daemon's pid (panics when it is not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("taskd is not running").id()
    }

    /// Whether the daemon process is still running.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL the daemon and reap it (shims stay alive).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM the daemon and wait for it to exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("taskd is not running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "taskd did not exit within {STOP_TIMEOUT:?} of SIGTERM\n--- daemon log ---\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal to the running daemon.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).expect("signal taskd");
    }

    /// Edits the config file (as a TOML table), sends SIGHUP and waits until the daemon logged
    /// the reload's outcome (`SIGHUP: config reloaded` or `SIGHUP: config rejected`); the
    /// log lines of this reload.
    pub fn reload_with(&self, edit: impl FnOnce(&mut toml::Table)) -> String {
        let text = std::fs::read_to_string(&self.config_path).expect("read config");
        let mut cfg: toml::Table = text.parse().expect("config is TOML");
        edit(&mut cfg);
        std::fs::write(&self.config_path, toml::to_string(&cfg).expect("render config"))
            .expect("write config");
        self.sighup_and_wait()
    }

    /// Sends SIGHUP and waits for the reload's outcome line; the log lines of this reload.
    pub fn sighup_and_wait(&self) -> String {
        let done = |log: &str| {
            log.matches("SIGHUP: config reloaded").count() + log.matches("SIGHUP: config rejected").count()
        };
        let before = self.log();
        self.signal(nix::sys::signal::Signal::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = self.log();
            if done(&now) > done(&before) {
                return now.get(before.len()..).unwrap_or_default().to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no reload outcome logged after SIGHUP:\n{now}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the daemon again on the same dirs and config (stopping it first if it runs).
    pub fn restart(&mut self) {
        if self.running() {
            self.stop();
        }
        self.child = None;
        self.spawn_and_wait();
    }

    /// Everything the daemon logged so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// GET on the daemon's HTTP endpoint.
    pub fn http(&self, path: &str, bearer: Option<&str>) -> (u16, String) {
        http_get(&self.metrics_addr, path, bearer).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// A tonic channel over the daemon's unix socket, for generated clients.
    pub async fn channel(&self) -> tonic::transport::Channel {
        unix_channel(&self.socket).await
    }
}

/// A tonic channel over the unix socket `socket` (taskd's or another daemon's).
pub async fn unix_channel(socket: &Path) -> tonic::transport::Channel {
    let path = socket.to_path_buf();
    tonic::transport::Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        // A failing test keeps the daemon's debug log (its dir goes below).
        if std::thread::panicking() {
            let name = self
                .dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let kept = std::env::temp_dir().join(format!("{name}-daemon.log"));
            if std::fs::copy(&self.log_path, &kept).is_ok() {
                eprintln!("the failed test's daemon log: {}", kept.display());
            }
        }
        cleanup::after_daemon(&self.state);
        remove_tree(&self.dir);
    }
}

/// Removes `dir` recursively without crossing into other file systems (mounts left behind
/// by a failed test stay, and so do their parents); errors are skipped.
pub fn remove_tree(dir: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    remove_within(dir, meta.dev());
}

fn remove_within(path: &Path, dev: u64) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        if meta.dev() != dev {
            return;
        }
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                remove_within(&e.path(), dev);
            }
        }
        let _ = std::fs::remove_dir(path);
    } else {
        let _ = std::fs::remove_file(path);
    }
}

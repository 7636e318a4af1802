//! Shared by taskd-node's integration tests: the real binaries (taskd-node under test, the
//! workspace's taskd), a stand-in for systemctl, free ports.
#![allow(dead_code)]

pub mod apiserver;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The taskd-node binary under test.
pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_taskd-node"))
}

/// The workspace's real taskd binary, built into the same target dir (a no-op when
/// `cargo test --workspace` built it already).
///
/// It is built by `cargo test --workspace --no-run --test daemon`: the features of
/// `cargo test --workspace` (every member, dev-dependencies on), so under scripts/test.sh the
/// binary that command just built is fresh and nothing compiles. A plain
/// `cargo build -p taskd` resolves features for taskd alone (tonic, tower, nix, log, uuid...
/// differ) and rebuilt ~40 crates and taskd itself, minutes on CI's 2 cores.
pub fn taskd_bin() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let taskd = agent_bin().parent().expect("target dir").join("taskd");
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["test", "--workspace", "--no-run", "--test", "daemon"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("run cargo test --workspace --no-run");
        assert!(
            status.success(),
            "building taskd (cargo test --workspace --no-run --test daemon) failed"
        );
    });
    assert!(taskd.is_file(), "no taskd binary at {}", taskd.display());
    taskd
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Writes an executable `systemctl` stand-in into `dir` and returns its path. This machine's
/// PID 1 is not systemd, so the test host has no service manager: the script logs every call
/// to `<dir>/systemctl.log` and, for the taskd unit, starts the unit's ExecStart (its absolute
/// paths moved under the host root) as a real process, stops it with SIGTERM, and answers
/// is-active from that process. kubelet's restart is only logged.
pub fn fake_systemctl(dir: &Path, host_root: &Path) -> PathBuf {
    let script = dir.join("systemctl");
    let body = format!(
        r#"#!/bin/sh
# systemctl stand-in for taskd-node's tests (see tests/support/mod.rs).
host='{host}'
run='{dir}'
echo "$*" >> "$run/systemctl.log"
pidf="$run/taskd.pid"
stop() {{
    [ -f "$pidf" ] || return 0
    pid=$(cat "$pidf")
    kill -TERM "$pid" 2>/dev/null
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
    kill -KILL "$pid" 2>/dev/null
    rm -f "$pidf"
}}
start() {{
    unit="$host/etc/systemd/system/$1"
    [ -f "$unit" ] || {{ echo "Unit $1 not found." >&2; exit 5; }}
    cmd=$(sed -n 's/^ExecStart=//p' "$unit" | sed "s# /# $host/#g; s#^/#$host/#")
    setsid $cmd >> "$run/taskd.log" 2>&1 < /dev/null &
    echo $! > "$pidf"
}}
case "$1" in
    daemon-reload|enable|disable) exit 0 ;;
    is-active)
        [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null
        exit $? ;;
    restart)
        [ "$2" = kubelet.service ] && exit 0
        stop; start "$2" ;;
    start) start "$2" ;;
    stop) stop ;;
    *) echo "unknown systemctl call: $*" >&2; exit 1 ;;
esac
"#,
        host = host_root.display(),
        dir = dir.display()
    );
    std::fs::write(&script, body).expect("write systemctl stand-in");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

/// The pid of the taskd the stand-in started, if it runs.
pub fn taskd_pid(run_dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(run_dir.join("taskd.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// GET http://addr/path → status code (None: no answer).
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

/// Runs taskd-node with `args`, KUBECONFIG and NODE_NAME set.
pub fn agent(kubeconfig: &Path, node: &str, args: &[&str]) -> Output {
    let out = Command::new(agent_bin())
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("NODE_NAME", node)
        .env("RUST_LOG", "info")
        .output()
        .expect("run taskd-node");
    eprintln!(
        "taskd-node {args:?}: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Kills the taskd the stand-in started when the test ends (pass or fail).
pub struct KillOnDrop(pub PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = taskd_pid(&self.0) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

//! The shim binary: name resolution and the `start` / `delete` subcommands, with
//! containerd's flags and environment (containerd 1.6 `runtime/v2/binary.go` and
//! `shim/util.go`):
//!
//! ```text
//! <shim> -namespace NS -address GRPC -publish-binary TASKD -id ID start        (cwd = bundle, stdin = options Any)
//! <shim> -namespace NS -address GRPC -publish-binary TASKD -id ID -bundle B delete   (stdout = DeleteResponse)
//! env: TTRPC_ADDRESS, GRPC_ADDRESS, NAMESPACE, GOMAXPROCS=2
//! ```
//!
//! `start` prints the shim's ttrpc address, either plain (`unix:///run/containerd/s/…`)
//! or as bootstrap JSON (`{"version":2,"address":"…","protocol":"ttrpc"}`). The `start`
//! process runs in its own process group, so the shim it daemonizes is never in taskd's
//! group and survives a `kill -9` of taskd.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use protobuf::Message as _;
use tokio::io::AsyncWriteExt;

use super::bundle::Bundle;
use super::sealed_runc::SealedRunc;
use crate::runtime::{Exit, Result, RuntimeError};

/// How long `<shim> start` and `<shim> delete` may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Runtime names of runtime v1, refused.
const RUNTIME_V1: &[&str] = &["io.containerd.runtime.v1.linux", "io.containerd.runc.v1"];

/// Where taskd's servers are, for the shim's flags and environment.
#[derive(Debug, Clone)]
pub struct DaemonAddresses {
    pub grpc: PathBuf,
    pub ttrpc: PathBuf,
    /// The taskd executable (`-publish-binary`).
    pub exe: PathBuf,
    /// The sealed runc copy every shim is told about (taskd's own shim runs it).
    pub sealed_runc: Option<Arc<SealedRunc>>,
}

/// Resolves a runtime name to a shim binary path: the plugin config's explicit path, an
/// absolute path given as the name, or `containerd-shim-<a>-<b>` for `….<a>.<b>` on PATH
/// or next to the taskd binary.
pub fn resolve(runtime: &str, configured: &BTreeMap<String, PathBuf>) -> Result<PathBuf> {
    if RUNTIME_V1.contains(&runtime) || runtime.starts_with("io.containerd.runtime.v1.") {
        return Err(RuntimeError::RuntimeV1 {
            name: runtime.to_owned(),
        });
    }
    if let Some(path) = configured.get(runtime) {
        return Ok(path.clone());
    }
    if runtime.starts_with('/') {
        let path = PathBuf::from(runtime);
        if path.is_file() {
            return Ok(path);
        }
        return Err(RuntimeError::ShimNotFound {
            runtime: runtime.to_owned(),
            binary: runtime.to_owned(),
        });
    }
    let binary = binary_name(runtime)?;
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(dir);
    }
    dirs.into_iter()
        .map(|d| d.join(&binary))
        .find(|p| p.is_file())
        .ok_or(RuntimeError::ShimNotFound {
            runtime: runtime.to_owned(),
            binary,
        })
}

/// `io.containerd.runc.v2` → `containerd-shim-runc-v2`.
pub fn binary_name(runtime: &str) -> Result<String> {
    let invalid = |reason| RuntimeError::InvalidRuntime {
        name: runtime.to_owned(),
        reason,
    };
    if runtime.is_empty() {
        return Err(invalid("empty"));
    }
    let parts: Vec<&str> = runtime.split('.').collect();
    if parts.len() < 2 {
        return Err(invalid(
            "expected <domain>.<name>.<version>, such as io.containerd.runc.v2",
        ));
    }
    if parts.iter().any(|p| p.is_empty()) {
        return Err(invalid("empty component"));
    }
    let ok = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    let (name, version) = (parts[parts.len() - 2], parts[parts.len() - 1]);
    if !ok(name) || !ok(version) {
        return Err(invalid("name and version may only hold [A-Za-z0-9_-]"));
    }
    Ok(format!("containerd-shim-{name}-{version}"))
}

fn command(
    binary: &Path,
    bundle: &Bundle,
    addrs: &DaemonAddresses,
    extra: &[&str],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("-namespace")
        .arg(&bundle.namespace)
        .arg("-address")
        .arg(&addrs.grpc)
        .arg("-publish-binary")
        .arg(&addrs.exe)
        .args(extra)
        .current_dir(&bundle.path)
        .env("TTRPC_ADDRESS", &addrs.ttrpc)
        .env("GRPC_ADDRESS", &addrs.grpc)
        .env("NAMESPACE", &bundle.namespace)
        .env("GOMAXPROCS", "2")
        .envs(addrs.sealed_runc.iter().flat_map(|s| s.env()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Own process group: the daemonized shim must not share taskd's group.
        .process_group(0);
    // The shim, and runc below it, get the usual umask 0022 rather than taskd's 0077: runc
    // creates what the container's own users must reach (the cgroup v1 directories bound at
    // /sys/fs/cgroup, mount points and the working directory in the rootfs). The shim's own
    // files are in the bundle, below the 0700 plugin directory.
    // SAFETY: umask(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
            Ok(())
        });
    }
    cmd
}

async fn run(
    mut cmd: tokio::process::Command,
    binary: &Path,
    subcommand: &'static str,
    stdin: Vec<u8>,
) -> Result<std::process::Output> {
    let fail = |reason: String| RuntimeError::ShimCommand {
        binary: binary.to_path_buf(),
        subcommand,
        reason,
    };
    let mut child = cmd.spawn().map_err(|e| fail(format!("spawn: {e}")))?;
    if let Some(mut input) = child.stdin.take() {
        // A shim that ignores stdin may close it early: a write error is not fatal.
        let _ = input.write_all(&stdin).await;
        drop(input);
    }
    match tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(fail(format!("wait: {e}"))),
        // Dropping the future dropped the child: kill_on_drop kills it.
        Err(_) => Err(fail(format!("timed out after {COMMAND_TIMEOUT:?}"))),
    }
}

/// Runs `<shim> start` in the bundle and returns the ttrpc address it printed.
pub async fn start(
    binary: &Path,
    bundle: &Bundle,
    addrs: &DaemonAddresses,
    options: Option<&prost_types::Any>,
) -> Result<String> {
    let cmd = command(binary, bundle, addrs, &["-id", &bundle.id, "start"]);
    let stdin = options.map(prost::Message::encode_to_vec).unwrap_or_default();
    let out = run(cmd, binary, "start", stdin).await?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if !out.status.success() {
        return Err(RuntimeError::ShimCommand {
            binary: binary.to_path_buf(),
            subcommand: "start",
            reason: format!("{}: {} {}", out.status, stdout, stderr),
        });
    }
    if !stderr.is_empty() {
        tracing::debug!(shim = %binary.display(), id = %bundle.id, %stderr, "shim start stderr");
    }
    parse_address(&stdout).ok_or_else(|| RuntimeError::ShimAddress {
        binary: binary.to_path_buf(),
        output: stdout,
    })
}

/// The address from `start`'s output: plain `unix://…` or bootstrap JSON (version 2 or 3,
/// protocol ttrpc).
pub fn parse_address(output: &str) -> Option<String> {
    let output = output.trim();
    if output.starts_with('{') {
        #[derive(serde::Deserialize)]
        struct Bootstrap {
            version: u32,
            address: String,
            #[serde(default)]
            protocol: String,
        }
        let b: Bootstrap = serde_json::from_str(output).ok()?;
        let protocol_ok = b.protocol.is_empty() || b.protocol == "ttrpc";
        if !(2..=3).contains(&b.version) || !protocol_ok {
            return None;
        }
        return valid_address(&b.address).then_some(b.address);
    }
    valid_address(output).then(|| output.to_owned())
}

fn valid_address(a: &str) -> bool {
    a.strip_prefix("unix://").is_some_and(|p| !p.is_empty())
}

/// Runs `<shim> delete` for a task whose shim is gone and decodes the exit it reports.
pub async fn delete(binary: &Path, bundle: &Bundle, addrs: &DaemonAddresses) -> Result<Exit> {
    let path = bundle.path.to_string_lossy().into_owned();
    let cmd = command(
        binary,
        bundle,
        addrs,
        &["-id", &bundle.id, "-bundle", &path, "delete"],
    );
    let out = run(cmd, binary, "delete", Vec::new()).await?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if !out.status.success() {
        return Err(RuntimeError::ShimCommand {
            binary: binary.to_path_buf(),
            subcommand: "delete",
            reason: format!("{}: {stderr}", out.status),
        });
    }
    if !stderr.is_empty() {
        tracing::warn!(id = %bundle.id, %stderr, "shim delete warnings");
    }
    let resp = taskd_proto::ttrpc::v2::shim::DeleteResponse::parse_from_bytes(&out.stdout).map_err(|e| {
        RuntimeError::Decode {
            what: "shim delete response",
            reason: e.to_string(),
        }
    })?;
    Ok(Exit {
        pid: resp.pid,
        status: resp.exit_status,
        timestamp: resp
            .exited_at
            .as_ref()
            .map(super::shim::from_pb_timestamp)
            .unwrap_or_else(SystemTime::now),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_names() {
        assert_eq!(
            binary_name("io.containerd.runc.v2").unwrap(),
            "containerd-shim-runc-v2"
        );
        assert_eq!(binary_name("runc.v2").unwrap(), "containerd-shim-runc-v2");
        assert!(binary_name("runc").is_err());
        assert!(binary_name("io..v2").is_err());
        assert!(binary_name("io.x/y.v2").is_err());
    }

    #[test]
    fn runtime_v1_is_refused_naming_v2() {
        for name in ["io.containerd.runtime.v1.linux", "io.containerd.runc.v1"] {
            let err = resolve(name, &BTreeMap::new()).unwrap_err();
            assert_eq!(
                crate::errdefs::ErrorKind::kind(&err),
                crate::errdefs::Kind::FailedPrecondition
            );
            assert!(err.to_string().contains("io.containerd.runc.v2"), "{err}");
        }
    }

    #[test]
    fn addresses_plain_and_bootstrap() {
        assert_eq!(
            parse_address("unix:///run/containerd/s/abc\n").as_deref(),
            Some("unix:///run/containerd/s/abc")
        );
        assert_eq!(
            parse_address(r#"{"version":2,"address":"unix:///s/x","protocol":"ttrpc"}"#).as_deref(),
            Some("unix:///s/x")
        );
        assert_eq!(
            parse_address(r#"{"version":3,"address":"unix:///s/x","protocol":"grpc"}"#),
            None
        );
        assert_eq!(parse_address("garbage"), None);
        assert_eq!(parse_address(""), None);
    }
}

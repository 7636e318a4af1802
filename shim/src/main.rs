//! containerd-shim-taskd-v2: taskd's runtime v2 shim (runtime type `io.containerd.taskd.v2`).
//!
//! The actions (`start`, `delete`, `-info`, serving) are ours ([`serve`]), built on the
//! `containerd-shim` crate's pieces (spawn and socket rules, exit monitor, stdio copies,
//! mounts, cgroup metrics, fifo logger); the task service ([`service`]), runc driving ([`runcx`]), stdio
//! ([`stdio`]), OOM ([`oom`]) and the event queue ([`events`]) are ours. One process per pod
//! (grouped by the sandbox id), one thread: a current-thread tokio runtime.

mod checkpoint;
mod error;
mod events;
mod oom;
mod runcx;
mod serve;
mod service;
mod stats;
mod stdio;

use std::path::{Path, PathBuf};

use containerd_shim::asynchronous::spawn;
use containerd_shim::util::timestamp;
use containerd_shim::{Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::{Message, MessageField};
use runc::options::DeleteOpts;

pub const RUNTIME_ID: &str = "io.containerd.taskd.v2";

/// Annotations that put a container into its pod's shim, as the stock runc shim reads them.
const GROUP_ANNOTATIONS: [&str; 2] = ["io.kubernetes.cri.sandbox-id", "io.containerd.runc.v2.group"];

/// The shim group of the bundle in `dir` (its config.json's annotations), else `id`.
fn grouping(dir: &Path, id: &str) -> String {
    std::fs::read(dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            let a = v.get("annotations")?;
            GROUP_ANNOTATIONS
                .iter()
                .find_map(|k| a.get(*k)?.as_str().map(str::to_owned))
        })
        .filter(|g| !g.is_empty())
        .unwrap_or_else(|| id.to_owned())
}

/// `delete`, run by the daemon after the shim died: force-deletes the container and
/// unmounts its rootfs; replies with a DeleteResponse (exit 137).
async fn delete(flags: &Flags, bundle: &Path) -> containerd_shim::Result<Vec<u8>> {
    let opts = containerd_shim::util::read_options(bundle)
        .await
        .unwrap_or_default();
    if let Ok(runc) = runcx::client_with(&flags.namespace, bundle, &opts, false)
        && let Err(e) = runc.delete(&flags.id, Some(&DeleteOpts::new().force(true))).await
    {
        eprintln!("delete {}: {e}", flags.id);
    }
    if let Some(t) = bundle.join("rootfs").to_str()
        && let Err(e) = containerd_shim::mount::umount_recursive(Some(t), libc::MNT_DETACH)
    {
        eprintln!("unmount {t}: {e}");
    }
    let r = DeleteResponse {
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: MessageField::some(timestamp()?),
        ..Default::default()
    };
    Ok(r.write_to_bytes()?)
}

/// The bundle: `-bundle`, else the working dir (where the daemon runs the shim).
fn bundle_of(flags: &Flags) -> PathBuf {
    if flags.bundle.is_empty() {
        std::env::current_dir().unwrap_or_default()
    } else {
        PathBuf::from(&flags.bundle)
    }
}

/// Starts (or finds) the shim of the bundle's group and returns its address.
async fn start_in(bundle: &Path, opts: StartOpts) -> containerd_shim::Result<String> {
    let group = grouping(bundle, &opts.id);
    let address = spawn(opts, &group, Vec::new()).await?;
    containerd_shim::util::write_str_to_file(bundle.join("address"), &address).await?;
    Ok(address)
}

/// `start`: daemonizes the shim server (one per group, the stock shim's socket rules) and
/// prints its address as a plain string, which every containerd (1.6 included) and taskd
/// read. Runtime options come on stdin as a protobuf `Any`, as containerd sends them.
async fn start(flags: Flags) -> containerd_shim::Result<()> {
    use std::io::{IsTerminal, Read};
    let mut input = Vec::new();
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let _ = stdin.lock().take(1 << 20).read_to_end(&mut input);
    }
    let mut opts = StartOpts {
        id: flags.id.clone(),
        publish_binary: flags.publish_binary.clone(),
        address: flags.address.clone(),
        ttrpc_address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        namespace: flags.namespace.clone(),
        debug: flags.debug,
        ..Default::default()
    };
    if let Ok(any) = containerd_shim_protos::protobuf::well_known_types::any::Any::parse_from_bytes(&input)
        && !any.type_url.is_empty()
    {
        opts.extensions.push(any);
    }
    let bundle = bundle_of(&flags);
    let address = start_in(&bundle, opts).await?;
    print!("{address}");
    Ok(())
}

fn main() {
    // One malloc arena: the shim has one thread (plus at most two short-lived blocking
    // ones), and every extra arena is resident memory.
    // SAFETY: mallopt before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let args: Vec<_> = std::env::args_os().collect();
    let flags = containerd_shim::parse(&args[1..]).ok();
    if flags.as_ref().is_some_and(|f| f.version) {
        println!(
            "containerd-shim-taskd-v2:\n  Version:  {}\n  Runtime:  {RUNTIME_ID}",
            env!("CARGO_PKG_VERSION")
        );
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(2)
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    match flags {
        Some(f) if f.info => {
            let info = containerd_shim_protos::types::introspection::RuntimeInfo {
                name: RUNTIME_ID.to_owned(),
                ..Default::default()
            };
            use std::io::Write;
            let bytes = info.write_to_bytes().unwrap_or_default();
            let _ = std::io::stdout().write_all(&bytes);
        }
        Some(f) if f.action == "start" => {
            if let Err(e) = rt.block_on(start(f)) {
                eprintln!("{RUNTIME_ID}: start: {e}");
                std::process::exit(1);
            }
        }
        Some(f) if f.action == "delete" => {
            let bundle = bundle_of(&f);
            match rt.block_on(delete(&f, &bundle)) {
                Ok(bytes) => {
                    use std::io::Write;
                    let _ = std::io::stdout().write_all(&bytes);
                }
                Err(e) => {
                    eprintln!("{RUNTIME_ID}: delete: {e}");
                    std::process::exit(1);
                }
            }
        }
        Some(f) if !f.socket.is_empty() => {
            if let Err(e) = rt.block_on(serve::serve(f)) {
                eprintln!("{RUNTIME_ID}: {e}");
                std::process::exit(1);
            }
        }
        _ => {
            eprintln!(
                "{RUNTIME_ID}: usage: -namespace NS -id ID -address ADDR start|delete, or -socket ADDR to serve; -info; --version"
            );
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_sandbox_then_runc_group_then_id() {
        let d = std::env::temp_dir().join(format!("shim-group-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let w = |s: &str| std::fs::write(d.join("config.json"), s).unwrap();
        w(r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod1"}}"#);
        assert_eq!(grouping(&d, "c1"), "pod1");
        w(r#"{"annotations":{"io.containerd.runc.v2.group":"g"}}"#);
        assert_eq!(grouping(&d, "c1"), "g");
        w("{}");
        assert_eq!(grouping(&d, "c1"), "c1");
        std::fs::remove_dir_all(&d).unwrap();
    }
}

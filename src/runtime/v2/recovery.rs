//! Recovery ([`TaskManager::load`]): every bundle dir of an earlier run is visited; a live
//! shim is reconnected, a dead one is cleaned up as a shim death is (`<shim> delete`, bundle
//! removed, `/tasks/exit` published, the task kept as stopped until its delete). A broken
//! bundle is logged and skipped. Bundles are recovered in parallel (up to
//! [`RECOVERY_PARALLEL`] at once; tasks of one shim share one connection, see
//! [`super::conns`]). Then the warm pool recovers its own dirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use taskd_proto::ttrpc::v2::shim as pb;

use super::bundle;
use super::conns::CONNECT_TIMEOUT;
use super::manager::{Inner, TaskManager};
use super::pool;
use super::shim::{self, ShimConn, ShimTask, TaskHandle, TaskSource, lock};
use crate::runtime::{Result, RuntimeError, Status};

/// How many bundles recovery works on at once: each is a connect and a State call to its
/// shim (or a `<shim> delete` for a dead one), so a node's worth of pods comes back in a few
/// round trips rather than one after another.
const RECOVERY_PARALLEL: usize = 64;

impl TaskManager {
    /// Recovery: reconnects to every live shim and cleans up after dead ones. Never fails.
    pub async fn load(&self) {
        let started = std::time::Instant::now();
        let inner = &self.inner;
        let found = bundles(inner.state_dir());
        let total = found.len();
        futures::stream::iter(found)
            .map(|(ns, id)| async move {
                if let Err(e) = load_one(inner, &ns, &id).await {
                    tracing::warn!(
                        namespace = %ns, id = %id, error = %e,
                        "broken bundle skipped during recovery"
                    );
                }
            })
            .buffer_unordered(RECOVERY_PARALLEL)
            .collect::<()>()
            .await;
        // After the tasks: a pool shim that serves a recovered task is known by now.
        inner.pool.recover().await;
        let n = lock(&inner.tasks).len();
        tracing::info!(
            bundles = total,
            tasks = n,
            ms = started.elapsed().as_millis() as u64,
            "runtime recovery done"
        );
    }
}

/// Every `(namespace, id)` bundle dir under the state dir, the pool's own dir aside.
fn bundles(state: &Path) -> Vec<(String, String)> {
    let namespaces = match std::fs::read_dir(state) {
        Ok(rd) => rd,
        Err(e) => {
            tracing::warn!(path = %state.display(), error = %e, "read runtime state dir");
            return Vec::new();
        }
    };
    let mut found = Vec::new();
    for ns in namespaces.flatten() {
        let ns_name = ns.file_name().to_string_lossy().into_owned();
        if !ns.path().is_dir() || ns_name == pool::POOL_DIR {
            continue;
        }
        let Ok(bundles) = std::fs::read_dir(ns.path()) else {
            tracing::warn!(path = %ns.path().display(), "unreadable namespace dir, skipped");
            continue;
        };
        for b in bundles.flatten() {
            found.push((ns_name.clone(), b.file_name().to_string_lossy().into_owned()));
        }
    }
    found
}

async fn load_one(inner: &Arc<Inner>, ns: &str, id: &str) -> Result<()> {
    let b = inner.bundle(ns, id)?;
    let empty = std::fs::read_dir(&b.path)
        .map(|mut rd| rd.next().is_none())
        .map_err(|source| RuntimeError::Io {
            op: "read",
            path: b.path.clone(),
            source,
        })?;
    if empty {
        return b.delete();
    }
    // `shim-binary-path` is written before any shim starts and removed last by a delete: a
    // bundle without it is a create or delete cut short with no shim behind it.
    let Some(binary) = b.read(bundle::SHIM_BINARY_PATH)?.map(PathBuf::from) else {
        tracing::info!(
            namespace = ns,
            id,
            "bundle without a shim (cut create or delete), removed"
        );
        return b.delete();
    };
    let runtime = b.read(bundle::RUNTIME)?.unwrap_or_default();
    let facts = b.spec_facts();
    let address = b.read(bundle::ADDRESS)?;
    let connected = match &address {
        None => None,
        Some(address) => match inner.conns.connect(address, ns, id).await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::debug!(namespace = ns, id, error = %e, "shim unreachable");
                shim::remove_stale_socket(address);
                None
            }
        },
    };
    let live = match connected {
        Some((conn, 0)) => match settled_pid(&conn, ns, id).await {
            Some(pid) => Some((conn, pid)),
            None => {
                // The shim lives but has no such task (a create cut before the shim made
                // it): clean up as for a dead shim, then ask the shim to exit, which it
                // does when it serves nothing else (a pool shim or the pod's own).
                cleanup_lost(inner, &binary, b, runtime, facts).await;
                shim::shutdown_idle(&conn, ns).await;
                return Ok(());
            }
        },
        other => other,
    };
    let Some((conn, pid)) = live else {
        tracing::warn!(namespace = ns, id, "shim is gone, cleaning up its task");
        cleanup_lost(inner, &binary, b, runtime, facts).await;
        return Ok(());
    };
    let log = shim::forward_log(&b);
    let src = TaskSource {
        bundle: b,
        runtime,
        binary,
        facts,
    };
    let t = Arc::new(ShimTask::live(src, conn, pid, Status::Unknown, log));
    // Learn the real status (created / running / paused) once; a slow shim must not
    // hold up the daemon's start.
    let handle = TaskHandle(t.clone());
    let _ = tokio::time::timeout(CONNECT_TIMEOUT, crate::runtime::Process::state(&handle)).await;
    lock(&inner.tasks).insert((ns.to_owned(), id.to_owned()), t);
    tracing::info!(namespace = ns, id, pid, "reconnected to shim");
    Ok(())
}

/// How long recovery waits for a live shim to finish a create that taskd's crash cut short
/// (the shim runs a create to its end on its own; its Connect reports no task until then).
const CREATE_SETTLE: Duration = Duration::from_secs(3);

/// The pid of task `id` once its shim reports one, polling Connect while a create may still
/// be running in the shim; None when the shim does not have the task after
/// [`CREATE_SETTLE`].
async fn settled_pid(conn: &ShimConn, ns: &str, id: &str) -> Option<u32> {
    let deadline = tokio::time::Instant::now() + CREATE_SETTLE;
    let req = pb::ConnectRequest {
        id: id.to_owned(),
        ..Default::default()
    };
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        match conn
            .client
            .connect(shim::context(ns, Some(CONNECT_TIMEOUT)), &req)
            .await
        {
            Ok(r) if r.task_pid != 0 => return Some(r.task_pid),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(namespace = ns, id, error = %e, "connect while a create settles");
                return None;
            }
        }
    }
    None
}

/// The task's shim is gone, or does not have the task: `<shim> delete` in its bundle, and
/// the task kept as stopped until its delete (as after a shim's death).
async fn cleanup_lost(
    inner: &Arc<Inner>,
    binary: &Path,
    b: bundle::Bundle,
    runtime: String,
    facts: bundle::SpecFacts,
) {
    let pid = b
        .read("init.pid")
        .ok()
        .flatten()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let exit = inner.cleanup_dead(binary, &b, pid, None).await;
    let key = (b.namespace.clone(), b.id.clone());
    let src = TaskSource {
        bundle: b,
        runtime,
        binary: binary.to_path_buf(),
        facts,
    };
    lock(&inner.tasks).insert(key, Arc::new(ShimTask::dead(src, exit)));
}

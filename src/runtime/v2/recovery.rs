//! Recovery ([`TaskManager::load`]): every bundle dir of an earlier run is visited; a live
//! shim is reconnected, a dead one is cleaned up as a shim death is (`<shim> delete`, bundle
//! removed, `/tasks/exit` published, the task kept as stopped until its delete). A broken
//! bundle is logged and skipped. Then the warm pool recovers its own dirs.

use std::path::PathBuf;
use std::sync::Arc;

use super::bundle;
use super::conns::CONNECT_TIMEOUT;
use super::manager::{Inner, TaskManager};
use super::pool;
use super::shim::{self, ShimTask, TaskHandle, TaskSource, lock};
use crate::runtime::{Result, RuntimeError, Status};

impl TaskManager {
    /// Recovery: reconnects to every live shim and cleans up after dead ones. Never fails.
    pub async fn load(&self) {
        let inner = &self.inner;
        let state = inner.state_dir();
        let namespaces = match std::fs::read_dir(state) {
            Ok(rd) => rd,
            Err(e) => {
                tracing::warn!(path = %state.display(), error = %e, "read runtime state dir");
                return;
            }
        };
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
                let id = b.file_name().to_string_lossy().into_owned();
                if let Err(e) = load_one(inner, &ns_name, &id).await {
                    tracing::warn!(
                        namespace = %ns_name, id = %id, error = %e,
                        "broken bundle skipped during recovery"
                    );
                }
            }
        }
        // After the tasks: a pool shim that serves a recovered task is known by now.
        inner.pool.recover().await;
        let n = lock(&inner.tasks).len();
        tracing::info!(tasks = n, "runtime recovery done");
    }
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
    let live = match &address {
        None => Err(RuntimeError::ShimConnect {
            address: String::new(),
            reason: "no address file".into(),
        }),
        Some(address) => inner.conns.connect(address, ns, id).await,
    };
    if live.is_err()
        && let Some(address) = &address
    {
        shim::remove_stale_socket(address);
    }
    let (conn, pid) = match live {
        Ok((conn, pid)) if pid != 0 => (conn, pid),
        Ok(_) | Err(_) => {
            let pid = b
                .read("init.pid")
                .ok()
                .flatten()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            tracing::warn!(namespace = ns, id, "shim is gone, cleaning up its task");
            let exit = inner.cleanup_dead(&binary, &b, pid, None).await;
            let src = TaskSource {
                bundle: b,
                runtime,
                binary,
                facts,
            };
            let t = Arc::new(ShimTask::dead(src, exit));
            lock(&inner.tasks).insert((ns.to_owned(), id.to_owned()), t);
            return Ok(());
        }
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

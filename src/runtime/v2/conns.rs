//! The shim connections: one [`ShimConn`] per shim address, shared by every task the shim
//! serves (the containers of one pod) and by the warm pool.
//!
//! Each new connection gets a watcher on the shim's pidfd. When the shim exits, the watcher
//! tells the [`ShimDeaths`] the table was made with (the manager, which cleans up the tasks
//! the shim served and lets the pool forget it). The table holds only weak references: a
//! connection lives as long as a task or the pool holds it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use taskd_proto::ttrpc::v2::{shim as pb, shim_ttrpc::TaskClient};

use super::binary::{self, DaemonAddresses};
use super::bundle::{self, Bundle};
use super::shim::{self, ShimConn, lock};
use crate::runtime::{Result, RuntimeError};

/// How long connecting to a shim (and its Connect call) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Who hears of a shim's exit.
#[async_trait::async_trait]
pub trait ShimDeaths: Send + Sync + 'static {
    /// The shim `shim_pid` behind `address` exited.
    async fn shim_died(&self, address: &str, shim_pid: u32);
}

/// The live shim connections, by address.
pub struct Connections {
    by_address: Mutex<HashMap<String, Weak<ShimConn>>>,
    /// One gate per address being dialled: tasks of one shim that connect at once (recovery
    /// runs bundles in parallel; a pod's containers share its shim) make one connection and
    /// one watcher, not one each.
    dialing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    deaths: Weak<dyn ShimDeaths>,
}

impl Connections {
    pub fn new(deaths: Weak<dyn ShimDeaths>) -> Connections {
        Connections {
            by_address: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashMap::new()),
            deaths,
        }
    }

    /// The live connection to `address`, if any.
    pub fn get(&self, address: &str) -> Option<Arc<ShimConn>> {
        lock(&self.by_address).get(address).and_then(Weak::upgrade)
    }

    /// Whether a live connection talks to shim process `pid` (a shared shim, never to be
    /// killed for one task's sake).
    pub fn serves_pid(&self, pid: u32) -> bool {
        lock(&self.by_address)
            .values()
            .filter_map(Weak::upgrade)
            .any(|c| c.shim_pid == pid)
    }

    /// How many connected shims are alive (for the `taskd_shims_running` gauge).
    pub fn live_shims(&self) -> usize {
        lock(&self.by_address)
            .values()
            .filter_map(Weak::upgrade)
            .filter(|c| shim::pid_alive(c.shim_pid))
            .count()
    }

    /// Forgets the connection to `address` when it is still the one to `shim_pid` (a new
    /// shim may have taken the address since).
    pub fn forget(&self, address: &str, shim_pid: u32) {
        let mut map = lock(&self.by_address);
        let same = map
            .get(address)
            .and_then(Weak::upgrade)
            .is_none_or(|c| c.shim_pid == shim_pid);
        if same {
            map.remove(address);
        }
    }

    /// Connects task `ns/id` to the shim at `address`: through the existing connection
    /// (grouped shims) or a new one with a watcher on the shim's pid. Returns the connection
    /// and the task's pid as the shim's Connect reports it.
    pub async fn connect(&self, address: &str, ns: &str, id: &str) -> Result<(Arc<ShimConn>, u32)> {
        let gate = lock(&self.dialing).entry(address.to_owned()).or_default().clone();
        // Held while this address is dialled, so a second task of the same shim waits and
        // then shares the connection; other addresses are not held up.
        let dialled = {
            let _one_at_a_time = gate.lock().await;
            self.dial(address, ns, id).await
        };
        let mut dialing = lock(&self.dialing);
        // The map's reference and ours: nobody else waits on this gate.
        if Arc::strong_count(&gate) <= 2 {
            dialing.remove(address);
        }
        dialled
    }

    async fn dial(&self, address: &str, ns: &str, id: &str) -> Result<(Arc<ShimConn>, u32)> {
        let existing = self.get(address);
        let fail = |reason: String| RuntimeError::ShimConnect {
            address: address.to_owned(),
            reason,
        };
        let client = match &existing {
            Some(c) => c.client.clone(),
            None => {
                let c = tokio::time::timeout(CONNECT_TIMEOUT, ttrpc::r#async::Client::connect(address))
                    .await
                    .map_err(|_| fail("timed out".into()))?
                    .map_err(|e| fail(e.to_string()))?;
                TaskClient::new(c)
            }
        };
        let req = pb::ConnectRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        let resp = client
            .connect(shim::context(ns, Some(CONNECT_TIMEOUT)), &req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if let Some(c) = existing {
            return Ok((c, resp.task_pid));
        }
        let shim_pid = resp.shim_pid;
        let deaths = self.deaths.clone();
        let addr = address.to_owned();
        let watcher = tokio::spawn(async move {
            if let Err(e) = shim::wait_pid_exit(shim_pid).await {
                tracing::warn!(pid = shim_pid, error = %e, "cannot watch shim pid");
                return;
            }
            if let Some(deaths) = deaths.upgrade() {
                deaths.shim_died(&addr, shim_pid).await;
            }
        });
        let conn = Arc::new(ShimConn {
            address: address.to_owned(),
            client,
            shim_pid,
            _watcher: watcher,
        });
        lock(&self.by_address).insert(address.to_owned(), Arc::downgrade(&conn));
        Ok((conn, resp.task_pid))
    }

    /// `<shim> start` succeeded but the shim cannot be reached (connect or Connect failed):
    /// kill the shim process it left, run `<shim> delete` in the bundle and remove its
    /// socket, so nothing outlives the failed create. The shim is found by what `start`
    /// gave it (cwd = this bundle, `-namespace NS -id ID`) plus the bundle's `shim.pid` if
    /// the shim wrote one; a pid that a known connection uses (a shared shim) is never
    /// killed.
    pub async fn abandon(&self, addrs: &DaemonAddresses, binary: &Path, b: &Bundle, address: &str) {
        let mut pids = shim::shim_pids_in(&b.path, &b.namespace, &b.id);
        if let Some(pid) = b
            .read(bundle::SHIM_PID)
            .ok()
            .flatten()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .filter(|p| *p > 1 && !pids.contains(p))
        {
            pids.push(pid);
        }
        for pid in pids {
            if self.serves_pid(pid) {
                tracing::warn!(id = %b.id, pid, "unreachable shim pid belongs to a live connection, not killed");
                continue;
            }
            tracing::warn!(namespace = %b.namespace, id = %b.id, pid, "shim unreachable after start, killing it");
            if let Err(e) = shim::kill_pid(pid, CONNECT_TIMEOUT).await {
                tracing::warn!(id = %b.id, pid, error = %e, "kill unreachable shim");
            }
        }
        if let Err(e) = binary::delete(binary, b, addrs).await {
            tracing::debug!(id = %b.id, error = %e, "shim delete after failed connect");
        }
        shim::remove_stale_socket(address);
        if let Ok(Some(written)) = b.read(bundle::ADDRESS)
            && written != address
        {
            shim::remove_stale_socket(&written);
        }
    }
}

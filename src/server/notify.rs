//! systemd readiness: the `sd_notify(3)` protocol, for `Type=notify` units.
//!
//! ```text
//! main, before any thread: Notifier::take_env()   NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID
//!                                                  are read and removed from the environment,
//!                                                  so no shim, runc or CNI plugin inherits them
//!                                                  (runc would otherwise set up a notify socket
//!                                                  for every container)
//! every socket serves ──▶ ready()      "READY=1\nSTATUS=serving\nMAINPID=<pid>"
//! WATCHDOG_USEC set   ──▶ watchdog()   "WATCHDOG=1" every half period, until dropped
//! SIGTERM/SIGINT      ──▶ stopping()   "STOPPING=1"
//! ```
//!
//! Without `NOTIFY_SOCKET` (not under systemd) every call does nothing. A send that fails is
//! logged, never fatal. The message is one datagram to the socket, a path or an abstract
//! name (`@name`). The sd-notify crate reads the variables from the environment at each call;
//! taskd must remove them before its first thread, so it keeps them itself and sends the
//! datagram itself (a dozen lines).

use std::ffi::OsString;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where and how often to tell systemd.
#[derive(Debug, Default)]
pub struct Notifier {
    socket: Option<OsString>,
    watchdog: Option<Duration>,
}

/// The watchdog pinger; stops when dropped.
pub struct Watchdog(tokio::task::JoinHandle<()>);

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` and removes them from the
    /// environment.
    ///
    /// # Safety
    /// Changes the process environment: call it before any other thread exists (first thing
    /// in `main`).
    pub unsafe fn take_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty());
        let for_us = std::env::var("WATCHDOG_PID")
            .map(|p| p.trim() == std::process::id().to_string())
            .unwrap_or(true);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|u| *u > 0 && for_us)
            .map(Duration::from_micros);
        for v in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            // SAFETY: the caller guarantees no other thread reads or writes the environment.
            unsafe { std::env::remove_var(v) };
        }
        Notifier { socket, watchdog }
    }

    fn send(&self, state: &str) {
        let Some(socket) = &self.socket else { return };
        let sent = (|| {
            let addr = match socket.as_bytes().strip_prefix(b"@") {
                Some(name) => SocketAddr::from_abstract_name(name)?,
                None => SocketAddr::from_pathname(socket)?,
            };
            UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)
        })();
        if let Err(e) = sent {
            tracing::warn!(socket = ?socket, state, error = %e, "sd_notify");
        }
    }

    /// Every socket serves.
    pub fn ready(&self) {
        self.send(&format!(
            "READY=1\nSTATUS=serving\nMAINPID={}",
            std::process::id()
        ));
    }

    /// The drain has begun.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=draining");
    }

    /// Pings the watchdog every half period while the returned guard lives (None: systemd
    /// asked for no watchdog).
    pub fn watchdog(self: &std::sync::Arc<Self>) -> Option<Watchdog> {
        let period = self.watchdog?;
        let me = self.clone();
        Some(Watchdog(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period / 2);
            loop {
                tick.tick().await;
                me.send("WATCHDOG=1");
            }
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Blocking reads below: the pinger needs a worker of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn datagrams_reach_a_path_socket_and_nothing_happens_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = std::sync::Arc::new(Notifier {
            socket: Some(path.into_os_string()),
            watchdog: Some(Duration::from_millis(20)),
        });
        let recv = || {
            let mut buf = [0u8; 256];
            let len = rx.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..len]).into_owned()
        };
        n.ready();
        assert!(recv().starts_with("READY=1\n"));
        let guard = n.watchdog().expect("a watchdog period was given");
        assert_eq!(recv(), "WATCHDOG=1");
        drop(guard);
        n.stopping();
        // Pings sent before the guard went may still be queued; STOPPING=1 follows them.
        let mut last = recv();
        while last == "WATCHDOG=1" {
            last = recv();
        }
        assert!(last.starts_with("STOPPING=1"), "{last}");

        let quiet = Notifier::default();
        quiet.ready();
        assert!(std::sync::Arc::new(quiet).watchdog().is_none());
    }

    #[tokio::test]
    async fn abstract_sockets_are_addressed_by_name() {
        let name = format!("taskd-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Notifier {
            socket: Some(format!("@{name}").into()),
            watchdog: None,
        }
        .ready();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert!(buf[..len].starts_with(b"READY=1"));
    }
}

//! Port forwarding: one TCP connection to `127.0.0.1:PORT` (then `[::1]:PORT`) inside the
//! pod's network namespace per forward, copied both ways with the client's data stream.
//!
//! ```text
//! pod READY? netns pinned? (host-network pod: the host's namespace)
//! connect on a throwaway OS thread that setns()es into the pod netns (the socket stays in
//!   that namespace; no tokio worker ever changes namespace), ≤ CONNECT_TIMEOUT
//!   failure ─▶ the error text on the error stream/channel
//! client data ─▶ TCP (client EOF: shutdown(WR));  TCP ─▶ client (TCP EOF: close the stream)
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::conn::Sink;
use crate::cri::service::CriService;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a pod's ports are reached.
#[derive(Debug, Clone)]
pub struct Target {
    pub sandbox_id: String,
    /// None: the host's network namespace.
    pub netns: Option<PathBuf>,
}

/// The forwarding target of a pod that must still be ready.
pub fn target(svc: &CriService, sandbox_id: &str) -> Result<Target, String> {
    let s = svc.sandboxes.get(sandbox_id).map_err(|e| e.to_string())?;
    if !s.state.is_ready() {
        return Err(format!(
            "pod sandbox {sandbox_id} is {}, not ready",
            s.state.as_str()
        ));
    }
    let netns = if s.host.network || s.netns_path.is_empty() {
        None
    } else {
        Some(PathBuf::from(&s.netns_path))
    };
    Ok(Target {
        sandbox_id: s.id,
        netns,
    })
}

fn connect_blocking(netns: Option<PathBuf>, port: u16) -> std::io::Result<std::net::TcpStream> {
    if let Some(ns) = netns {
        let f = std::fs::File::open(&ns)?;
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
    }
    let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    match std::net::TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Ok(s) => Ok(s),
        Err(e) => {
            let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port);
            std::net::TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| e)
        }
    }
}

/// Connects to `port` on the pod's loopback.
pub async fn connect(target: &Target, port: u16) -> Result<TcpStream, String> {
    let netns = target.netns.clone();
    let what = || format!("connect to localhost:{port} in pod sandbox {}", target.sandbox_id);
    let joined = tokio::task::spawn_blocking(move || {
        // A thread of its own: it may enter the pod's namespace and then dies with it.
        std::thread::Builder::new()
            .name("portforward".into())
            .spawn(move || connect_blocking(netns, port))
            .map(std::thread::JoinHandle::join)
    })
    .await;
    let stream = match joined {
        Ok(Ok(Ok(Ok(s)))) => s,
        Ok(Ok(Ok(Err(e)))) => return Err(format!("{}: {e}", what())),
        Ok(Err(e)) => return Err(format!("{}: cannot start a thread: {e}", what())),
        _ => return Err(format!("{}: the connecting thread failed", what())),
    };
    stream
        .set_nonblocking(true)
        .and_then(|()| TcpStream::from_std(stream))
        .map_err(|e| format!("{}: {e}", what()))
}

/// Copies between the client's stream (`rx` in, `data` out) and `tcp` until the pod side
/// reached EOF and the client finished (or is gone). Returns a text for the error stream
/// when the copy failed.
pub async fn pipe(tcp: TcpStream, mut rx: mpsc::Receiver<Bytes>, data: &Sink) -> Option<String> {
    let (mut r, mut w) = tcp.into_split();
    let up = async {
        while let Some(b) = rx.recv().await {
            if let Err(e) = w.write_all(&b).await {
                return Some(format!("write to the pod: {e}"));
            }
        }
        let _ = w.shutdown().await;
        None
    };
    // The pod side ending ends the forward (as kubelet does): the client learns it from
    // the data stream's close. The client finishing its side first still gets the answer.
    let down = copy_down(&mut r, data);
    tokio::pin!(up);
    tokio::pin!(down);
    let first = tokio::select! {
        e = &mut down => return e,
        e = &mut up => e,
    };
    match first {
        Some(e) => Some(e),
        None => down.await,
    }
}

async fn copy_down(r: &mut tokio::net::tcp::OwnedReadHalf, data: &Sink) -> Option<String> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => return None,
            Ok(n) => {
                if !data.send(&buf[..n]).await {
                    return None;
                }
            }
            Err(e) => return Some(format!("read from the pod: {e}")),
        }
    }
}

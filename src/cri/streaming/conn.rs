//! What both transports share: the outbound queue of a connection ([`Out`] through a
//! bounded channel to one writer), the [`Sink`] a session writes one stream or channel
//! with, and the activity clock of the idle timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::spdy::DATA_CHUNK;

/// Messages queued per connection before writers wait (with [`DATA_CHUNK`] pieces: a
/// bounded amount of memory per connection).
pub const OUT_QUEUE: usize = 64;
/// Pieces queued per inbound stream before the connection's reader waits.
pub const IN_QUEUE: usize = 16;

/// What a session asks the connection's writer to send. `key` is the SPDY stream id or the
/// WebSocket channel.
#[derive(Debug)]
pub enum Out {
    Data(u32, Bytes),
    /// This side is done with the stream (SPDY FIN; nothing on WebSocket v4).
    Close(u32),
    /// SPDY RST_STREAM with a status.
    Reset(u32, u32),
    /// SPDY SYN_REPLY.
    Reply(u32),
    /// SPDY PING echo.
    Ping(u32),
}

/// One outbound stream (or channel) of a connection.
#[derive(Clone, Debug)]
pub struct Sink {
    pub key: u32,
    tx: mpsc::Sender<Out>,
}

impl Sink {
    pub fn new(key: u32, tx: mpsc::Sender<Out>) -> Sink {
        Sink { key, tx }
    }

    /// Sends `data` in pieces of at most [`DATA_CHUNK`]; false once the connection is gone.
    pub async fn send(&self, data: &[u8]) -> bool {
        for piece in data.chunks(DATA_CHUNK) {
            if self
                .tx
                .send(Out::Data(self.key, Bytes::copy_from_slice(piece)))
                .await
                .is_err()
            {
                return false;
            }
        }
        true
    }

    pub async fn close(&self) {
        let _ = self.tx.send(Out::Close(self.key)).await;
    }
}

/// When the connection last moved a byte (either way).
#[derive(Clone)]
pub struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Activity {
    pub fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.start + last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_waits_for_a_quiet_period() {
        let a = Activity::default();
        let t0 = Instant::now();
        let b = a.clone();
        let toucher = async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            b.touch();
            futures::future::pending::<()>().await;
        };
        tokio::select! {
            () = a.idle(Duration::from_millis(300)) => {}
            () = toucher => unreachable!(),
        }
        assert!(t0.elapsed() >= Duration::from_millis(450), "{:?}", t0.elapsed());
    }

    #[tokio::test]
    async fn sink_splits_into_pieces() {
        let (tx, mut rx) = mpsc::channel(8);
        let s = Sink::new(3, tx);
        assert!(s.send(&vec![1u8; DATA_CHUNK + 1]).await);
        let a = rx.recv().await.unwrap();
        let b = rx.recv().await.unwrap();
        assert!(matches!(a, Out::Data(3, d) if d.len() == DATA_CHUNK));
        assert!(matches!(b, Out::Data(3, d) if d.len() == 1));
        drop(rx);
        assert!(!s.send(b"x").await);
    }
}

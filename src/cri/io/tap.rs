//! Attached clients of a container's output stream. The log copier publishes every chunk
//! it reads to each subscriber's bounded queue without ever waiting: a subscriber whose
//! queue is full is dropped (its session ends), the log never is.

use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::mpsc;

/// Chunks (of up to 32 KiB) queued per attached client.
pub const TAP_QUEUE: usize = 64;

#[derive(Default)]
pub struct Tap {
    state: Mutex<TapState>,
}

#[derive(Default)]
struct TapState {
    subs: Vec<mpsc::Sender<Bytes>>,
    /// The stream ended: new subscribers get an ended queue.
    closed: bool,
}

impl Tap {
    fn lock(&self) -> std::sync::MutexGuard<'_, TapState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A queue of what the stream carries from now on; it ends with the stream (or when
    /// the subscriber falls [`TAP_QUEUE`] chunks behind).
    pub fn subscribe(&self) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(TAP_QUEUE);
        let mut s = self.lock();
        if !s.closed {
            s.subs.push(tx);
        }
        rx
    }

    /// Hands `data` to every subscriber that has room; drops the others.
    pub fn publish(&self, data: &[u8]) {
        let mut s = self.lock();
        if s.subs.is_empty() {
            return;
        }
        let b = Bytes::copy_from_slice(data);
        s.subs.retain(|tx| match tx.try_send(b.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::info!("attached client too slow: detached (the log keeps everything)");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// The stream ended: every subscriber's queue ends after what it holds.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.subs.clear();
    }

    pub fn subscribers(&self) -> usize {
        self.lock().subs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slow_subscriber_is_dropped_and_others_keep_going() {
        let t = Tap::default();
        let mut fast = t.subscribe();
        let mut slow = t.subscribe();
        for i in 0..TAP_QUEUE {
            t.publish(&[i as u8]);
            assert_eq!(fast.recv().await.unwrap()[0], i as u8);
        }
        assert_eq!(t.subscribers(), 2);
        t.publish(b"x");
        assert_eq!(t.subscribers(), 1, "the full one is gone");
        assert_eq!(fast.recv().await.unwrap(), Bytes::from_static(b"x"));
        let mut n = 0;
        while slow.recv().await.is_some() {
            n += 1;
        }
        assert_eq!(n, TAP_QUEUE, "it still gets what was queued, then the end");
        t.close();
        assert!(fast.recv().await.is_none());
        assert!(
            t.subscribe().recv().await.is_none(),
            "after the end: an ended queue"
        );
    }
}

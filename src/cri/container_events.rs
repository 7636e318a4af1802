//! The GetContainerEvents feed (evented PLEG): one broadcast channel, any number of
//! subscribers.
//!
//! ```text
//! lifecycle RPCs / event loop ──emit(container, type)──▶ broadcast (capacity 1024)
//!                                                          ├──▶ subscriber 1 (gRPC stream)
//!                                                          └──▶ subscriber 2 ...
//! ```
//!
//! A subscriber that keeps up sees every event in order. One that falls more than the
//! capacity behind loses the oldest events; the loss is counted in
//! `taskd_cri_container_events_dropped_total` and its stream continues with the newest.
//! `close()` (when the events exchange closes at shutdown) ends every stream.
//!
//! Events found at recovery (a container that exited while taskd was down) happen before
//! kubelet can have reconnected: they are also kept as a backlog that every subscriber
//! arriving within [`REPLAY_WINDOW`] of the recovery gets first.

use prometheus::{IntCounter, Registry};
use taskd_proto::cri::v1::ContainerEventResponse;
use tokio::sync::{broadcast, watch};

/// Events kept for a slow subscriber before it starts losing them.
pub const CAPACITY: usize = 1024;
/// How long recovery events are replayed to new subscribers.
pub const REPLAY_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// The broadcaster and its drop counter.
pub struct ContainerEvents {
    tx: broadcast::Sender<ContainerEventResponse>,
    dropped: IntCounter,
    closed: watch::Sender<bool>,
    /// Recovery events and when they were found.
    backlog: std::sync::Mutex<(Option<std::time::Instant>, Vec<ContainerEventResponse>)>,
}

impl ContainerEvents {
    pub fn new() -> Result<ContainerEvents, prometheus::Error> {
        let (tx, _) = broadcast::channel(CAPACITY);
        Ok(ContainerEvents {
            tx,
            closed: watch::Sender::new(false),
            backlog: std::sync::Mutex::new((None, Vec::new())),
            dropped: IntCounter::new(
                "taskd_cri_container_events_dropped_total",
                "GetContainerEvents events a slow subscriber lost",
            )?,
        })
    }

    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.dropped.clone()))
    }

    /// Sends to every current subscriber (none: the event is simply not observed).
    pub fn emit(&self, ev: ContainerEventResponse) {
        let _ = self.tx.send(ev);
    }

    /// A new subscriber; it sees events emitted from now on.
    /// Emits an event found at recovery and keeps it for subscribers yet to come.
    pub fn emit_recovered(&self, ev: ContainerEventResponse) {
        {
            let mut b = self
                .backlog
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            b.0 = Some(std::time::Instant::now());
            b.1.push(ev.clone());
        }
        self.emit(ev);
    }

    pub fn subscribe(&self) -> Receiver {
        let backlog = {
            let b = self
                .backlog
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match b.0 {
                Some(at) if at.elapsed() < REPLAY_WINDOW => b.1.iter().cloned().collect(),
                _ => std::collections::VecDeque::new(),
            }
        };
        Receiver {
            backlog,
            rx: self.tx.subscribe(),
            dropped: self.dropped.clone(),
            closed: self.closed.subscribe(),
        }
    }

    /// Ends every subscriber's stream (daemon shutdown: lets the gRPC server drain).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// One subscriber.
pub struct Receiver {
    backlog: std::collections::VecDeque<ContainerEventResponse>,
    rx: broadcast::Receiver<ContainerEventResponse>,
    dropped: IntCounter,
    closed: watch::Receiver<bool>,
}

impl Receiver {
    /// The next event; None once closed. Lost events are counted.
    pub async fn recv(&mut self) -> Option<ContainerEventResponse> {
        if let Some(ev) = self.backlog.pop_front() {
            return Some(ev);
        }
        loop {
            let next = tokio::select! {
                // Events already queued are delivered before the close is noticed.
                biased;
                r = self.rx.recv() => r,
                _ = self.closed.wait_for(|c| *c) => return None,
            };
            match next {
                Ok(ev) => return Some(ev),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.dropped.inc_by(n);
                    tracing::warn!(lost = n, "GetContainerEvents subscriber too slow: events dropped");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str) -> ContainerEventResponse {
        ContainerEventResponse {
            container_id: id.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn every_subscriber_gets_everything_in_order() {
        let e = ContainerEvents::new().unwrap();
        let mut a = e.subscribe();
        let mut b = e.subscribe();
        for i in 0..100 {
            e.emit(ev(&i.to_string()));
        }
        for r in [&mut a, &mut b] {
            for i in 0..100 {
                assert_eq!(r.recv().await.unwrap().container_id, i.to_string());
            }
        }
        assert_eq!(e.dropped.get(), 0);
        e.close();
        assert!(a.recv().await.is_none());
        assert!(
            e.subscribe().recv().await.is_none(),
            "a subscriber after close ends at once"
        );
    }

    #[tokio::test]
    async fn recovery_events_reach_later_subscribers() {
        let e = ContainerEvents::new().unwrap();
        e.emit_recovered(ev("gone-while-down"));
        let mut late = e.subscribe();
        e.emit(ev("after"));
        assert_eq!(late.recv().await.unwrap().container_id, "gone-while-down");
        assert_eq!(late.recv().await.unwrap().container_id, "after");
    }

    #[tokio::test]
    async fn a_slow_subscriber_loses_the_oldest_and_it_is_counted() {
        let e = ContainerEvents::new().unwrap();
        let mut slow = e.subscribe();
        let extra = 10;
        for i in 0..CAPACITY + extra {
            e.emit(ev(&i.to_string()));
        }
        assert_eq!(slow.recv().await.unwrap().container_id, extra.to_string());
        assert_eq!(e.dropped.get(), extra as u64);
    }
}

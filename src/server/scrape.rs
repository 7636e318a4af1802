//! Bounded metrics collection: a scrape flood cannot starve the blocking pool.
//!
//! Collecting reads cgroupfs and /proc for every task, on tokio's blocking pool, which the
//! CRI calls use too (netns, mounts, files). Unbounded, 500 parallel scrapes would be 500
//! collections queued there. So:
//!
//! ```text
//! scrape ──▶ waiting < MAX_WAITING?           no → 503 (counted: busy)
//!        ──▶ one collection at a time; a scrape that waited takes the text of a collection
//!            that started after the scrape arrived (concurrent scrapes share one, and no
//!            scrape gets data from before it arrived)
//!        ──▶ the whole scrape ≤ SCRAPE_TIMEOUT  else → 503 (counted: timeout); a timed-out
//!            collection keeps its permit until it really ends, so none pile up behind it
//! ```
//!
//! `taskd_metrics_collections_total` counts collections, `taskd_metrics_scrapes_refused_total
//! {reason}` the 503s.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, Opts};
use tokio::sync::Semaphore;

/// Scrapes waiting for a collection at once; more are answered 503 at once.
pub const MAX_WAITING: usize = 64;
/// The longest a scrape waits for its text.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a scrape got no text.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// [`MAX_WAITING`] scrapes wait already.
    Busy,
    /// No text within [`SCRAPE_TIMEOUT`] (or an earlier collection has not ended yet).
    Timeout,
    /// The collection failed (encoding, or its task panicked).
    Failed(String),
}

pub struct Scrapes {
    registry: prometheus::Registry,
    waiting: Arc<Semaphore>,
    /// One collection at a time; its permit moves into the blocking task.
    collecting: Arc<Semaphore>,
    /// The last collection: when it started, its text.
    last: Mutex<Option<(Instant, Arc<String>)>>,
    collections: IntCounter,
    refused: IntCounterVec,
}

impl Scrapes {
    /// Bounded scrapes of `registry`; their own counters are registered there.
    #[expect(
        clippy::expect_used,
        reason = "static metric definitions: valid or a bug caught by every test"
    )]
    pub fn new(registry: prometheus::Registry) -> Scrapes {
        let collections = IntCounter::new(
            "taskd_metrics_collections_total",
            "Metrics collections run (concurrent scrapes share one)",
        )
        .expect("static metric definition is valid");
        let refused = IntCounterVec::new(
            Opts::new(
                "taskd_metrics_scrapes_refused_total",
                "Scrapes answered 503, by reason (busy: too many waiting; timeout)",
            ),
            &["reason"],
        )
        .expect("static metric definition is valid");
        // Both reasons are served from the start, at 0.
        for reason in ["busy", "timeout"] {
            refused.with_label_values(&[reason]);
        }
        for c in [
            Box::new(collections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(refused.clone()),
        ] {
            if let Err(e) = registry.register(c) {
                tracing::warn!(error = %e, "register scrape metrics");
            }
        }
        Scrapes {
            registry,
            waiting: Arc::new(Semaphore::new(MAX_WAITING)),
            collecting: Arc::new(Semaphore::new(1)),
            last: Mutex::new(None),
            collections,
            refused,
        }
    }

    /// The registry's text, within the bounds above.
    pub async fn text(&self) -> Result<Arc<String>, Refused> {
        let Ok(_waiting) = self.waiting.clone().try_acquire_owned() else {
            self.refused.with_label_values(&["busy"]).inc();
            return Err(Refused::Busy);
        };
        let began = Instant::now();
        match tokio::time::timeout(SCRAPE_TIMEOUT, self.collect(began)).await {
            Ok(r) => r,
            Err(_) => {
                self.refused.with_label_values(&["timeout"]).inc();
                Err(Refused::Timeout)
            }
        }
    }

    async fn collect(&self, began: Instant) -> Result<Arc<String>, Refused> {
        let permit = self
            .collecting
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Refused::Failed(e.to_string()))?;
        // A collection that ended while this scrape waited answers it too.
        if let Some(text) = self.recent(began) {
            return Ok(text);
        }
        let registry = self.registry.clone();
        let started = Instant::now();
        self.collections.inc();
        let encoded = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            prometheus::TextEncoder::new().encode_to_string(&registry.gather())
        })
        .await
        .map_err(|e| Refused::Failed(format!("collection task: {e}")))?
        .map_err(|e| Refused::Failed(format!("encode: {e}")))?;
        let text = Arc::new(encoded);
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((started, text.clone()));
        Ok(text)
    }

    /// The last text, when its collection started after `since` (the scrape's arrival).
    fn recent(&self, since: Instant) -> Option<Arc<String>> {
        let last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        last.as_ref()
            .filter(|(started, _)| *started >= since)
            .map(|(_, t)| t.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parallel_scrapes_share_collections_and_excess_is_refused() {
        let registry = prometheus::Registry::new();
        let s = Arc::new(Scrapes::new(registry));
        let all: Vec<_> = (0..500)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.text().await })
            })
            .collect();
        let mut ok = 0;
        let mut busy = 0;
        for h in all {
            match h.await.unwrap() {
                Ok(t) => {
                    assert!(t.contains("taskd_metrics_collections_total"));
                    ok += 1;
                }
                Err(Refused::Busy) => busy += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!(ok + busy, 500);
        assert!(ok >= 1);
        assert!(
            s.collections.get() < ok as u64 || ok == 1,
            "scrapes share collections: {} for {ok}",
            s.collections.get()
        );
        assert_eq!(s.refused.with_label_values(&["busy"]).get(), busy as u64);
    }
}

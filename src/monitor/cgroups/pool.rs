//! Bounded parallel work with a per-item timeout, for a synchronous caller.
//!
//! `prometheus::core::Collector::collect` is synchronous and runs on the scraping thread,
//! so the monitor cannot await anything. [`run`] starts at most `parallelism` plain OS
//! threads that pull items from a shared index and report `Started`/`Done` over a channel.
//! The caller waits on that channel and gives up on an item `timeout` after a worker started
//! it: the item is reported [`Outcome::TimedOut`], and a replacement worker is started so
//! the remaining items still run (at most `parallelism` replacements per call; after that,
//! items nobody picked up are [`Outcome::NotStarted`]). A stuck worker is never joined: it
//! ends by itself when its read returns, and its late result is dropped.
//!
//! So one call takes at most about `timeout × (1 + stuck items / parallelism)` plus the
//! honest work, whatever the files do. Plain threads rather than tokio's blocking pool: the
//! scrape may run on a runtime thread or not at all inside tokio, and a hung read must not
//! occupy a slot of a pool that other plugins share.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// What happened to one item.
#[derive(Debug)]
pub enum Outcome<R> {
    Done(R),
    /// A worker started it and did not finish within the timeout.
    TimedOut,
    /// No worker was left to start it (all stuck, or threads could not be spawned).
    NotStarted,
}

enum Msg<R> {
    Started(usize),
    Done(usize, R),
    Exited,
}

const RUNNING: u8 = 0;
const FINISHED: u8 = 1;
const ABANDONED: u8 = 2;

struct Shared<T, F> {
    items: Vec<T>,
    /// Per item: RUNNING until the worker finishes it (FINISHED) or the caller gives up on
    /// it (ABANDONED); whoever moves it first decides, so a worker that finished just as
    /// the caller gave up is never counted twice.
    state: Vec<AtomicU8>,
    next: AtomicUsize,
    work: F,
}

/// Runs `work` on every item, at most `parallelism` at a time, each bounded by `timeout`.
/// Returns one outcome per item, in item order.
pub fn run<T, R, F>(items: Vec<T>, parallelism: usize, timeout: Duration, work: F) -> Vec<Outcome<R>>
where
    T: Send + Sync + 'static,
    R: Send + 'static,
    F: Fn(&T) -> R + Send + Sync + 'static,
{
    let n = items.len();
    let mut outcomes: Vec<Outcome<R>> = (0..n).map(|_| Outcome::NotStarted).collect();
    if n == 0 {
        return outcomes;
    }
    let shared = Arc::new(Shared {
        items,
        state: (0..n).map(|_| AtomicU8::new(RUNNING)).collect(),
        next: AtomicUsize::new(0),
        work,
    });
    let (tx, rx) = mpsc::channel::<Msg<R>>();
    let parallelism = parallelism.clamp(1, n);
    let max_workers = parallelism * 2;

    let spawn = |tx: mpsc::Sender<Msg<R>>| {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("taskd-cgstats".into())
            .spawn(move || {
                loop {
                    let i = shared.next.fetch_add(1, Ordering::Relaxed);
                    if i >= shared.items.len() || tx.send(Msg::Started(i)).is_err() {
                        break;
                    }
                    let r = (shared.work)(&shared.items[i]);
                    let finished = shared.state[i]
                        .compare_exchange(RUNNING, FINISHED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok();
                    // Given up on: the caller already counts this worker as gone.
                    if !finished || tx.send(Msg::Done(i, r)).is_err() {
                        return;
                    }
                }
                let _ = tx.send(Msg::Exited);
            })
            .map_err(|e| tracing::warn!(error = %e, "cgroups monitor: cannot start a stats thread"))
            .is_ok()
    };

    let mut spawned = 0usize;
    let mut live = 0usize;
    for _ in 0..parallelism {
        spawned += 1;
        if spawn(tx.clone()) {
            live += 1;
        }
    }
    let mut in_flight: Vec<(usize, Instant)> = Vec::new();
    let mut settled = 0usize;
    while settled < n && live > 0 {
        let wait = in_flight
            .iter()
            .map(|(_, started)| (*started + timeout).saturating_duration_since(Instant::now()))
            .min()
            .unwrap_or(timeout);
        match rx.recv_timeout(wait) {
            Ok(Msg::Started(i)) => in_flight.push((i, Instant::now())),
            Ok(Msg::Done(i, r)) => {
                if let Some(pos) = in_flight.iter().position(|(j, _)| *j == i) {
                    in_flight.swap_remove(pos);
                }
                outcomes[i] = Outcome::Done(r);
                settled += 1;
            }
            Ok(Msg::Exited) => live = live.saturating_sub(1),
            Err(RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                let mut k = 0;
                while k < in_flight.len() {
                    let (i, started) = in_flight[k];
                    let abandoned = now >= started + timeout
                        && shared.state[i]
                            .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok();
                    if abandoned {
                        in_flight.swap_remove(k);
                        outcomes[i] = Outcome::TimedOut;
                        settled += 1;
                        // Its worker is stuck: replace it while the budget lasts.
                        live = live.saturating_sub(1);
                        if spawned < max_workers {
                            spawned += 1;
                            if spawn(tx.clone()) {
                                live += 1;
                            }
                        }
                    } else {
                        k += 1;
                    }
                }
            }
            // Unreachable while `tx` lives; treat as "no worker left".
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn every_item_done_in_order() {
        let out = run((0..50u32).collect(), 4, Duration::from_secs(5), |i| i * 2);
        for (i, o) in out.into_iter().enumerate() {
            match o {
                Outcome::Done(v) => assert_eq!(v, i as u32 * 2),
                other => panic!("item {i}: {other:?}"),
            }
        }
    }

    #[test]
    fn stuck_item_times_out_and_the_rest_still_run() {
        // Item 3 blocks until the test releases it; everything else must complete.
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let out = run((0..20u32).collect(), 2, Duration::from_millis(200), move |i| {
            if *i == 3 {
                let _ = release_rx.lock().map(|rx| rx.recv());
            }
            *i
        });
        let _ = release_tx.send(());
        for (i, o) in out.iter().enumerate() {
            match (i, o) {
                (3, Outcome::TimedOut) => {}
                (3, other) => panic!("stuck item: {other:?}"),
                (_, Outcome::Done(v)) => assert_eq!(*v as usize, i),
                (_, other) => panic!("item {i}: {other:?}"),
            }
        }
    }

    #[test]
    fn all_workers_stuck_leaves_rest_not_started() {
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        // Every item blocks: 1 worker + 1 replacement get stuck, the rest are not started.
        let out = run((0..5u32).collect(), 1, Duration::from_millis(100), move |_| {
            let _ = release_rx
                .lock()
                .map(|rx| rx.recv_timeout(Duration::from_secs(30)));
        });
        drop(release_tx);
        let timed_out = out.iter().filter(|o| matches!(o, Outcome::TimedOut)).count();
        let not_started = out.iter().filter(|o| matches!(o, Outcome::NotStarted)).count();
        assert_eq!(timed_out, 2, "{out:?}");
        assert_eq!(not_started, 3, "{out:?}");
    }
}

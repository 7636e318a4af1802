//! CRI calls that must not be cut short by their caller.
//!
//! kubelet gives each call a deadline and gives up on it when the deadline passes (or its
//! connection drops): tonic then drops the handler's future at whatever await it was on.
//! A RunPodSandbox dropped between its CNI ADD and its pause container would leave a netns,
//! an IP lease and a half-made record behind. So the calls that change state run in a task
//! of their own ([`Detached::run`]): the caller waits for it, and when the caller goes away
//! the task still finishes, or rolls back completely through its own error path.
//!
//! ```text
//! caller ──▶ Detached::run(key, op) ──spawn (tracked)──▶ op to the end (success or rollback)
//!   │  waits for the task's answer                            │
//!   ╳  caller gone: the entry for `key` is marked abandoned   ▼
//! retry with the same key ──▶ the abandoned entry's outcome:
//!     success (and still there) → the retry answers it (the same id)
//!     failure (rolled back)     → the retry runs afresh
//! ```
//!
//! Keys: RunPodSandbox by the pod's sandbox name, CreateContainer by the container's name,
//! StartContainer by its id. An entry whose caller stayed is removed when it answers; an
//! abandoned one waits for its retry at most [`ABANDONED_TTL`]. A second call with the key
//! of a call whose caller is still there is not joined to it: it runs and meets the store's
//! own rule (a name in use → AlreadyExists), as containerd answers.
//!
//! The tasks are tracked: at shutdown [`Detached::drain`] waits for them (bounded).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::cri::error::CriError;

/// How long an abandoned call's outcome waits for its retry.
pub const ABANDONED_TTL: Duration = Duration::from_secs(600);

/// The outcome of a finished call: its value, or None when it failed (and rolled back).
type Outcome = Option<Option<Answer>>;

/// What a keyed call answers: an id (RunPodSandbox, CreateContainer) or nothing (Start).
pub type Answer = String;

struct Entry {
    abandoned: Arc<AtomicBool>,
    done: watch::Receiver<Outcome>,
    since: Instant,
}

/// The tracked tasks of the detached calls and the outcomes their retries may claim.
#[derive(Default)]
pub struct Detached {
    tasks: TaskTracker,
    entries: Mutex<HashMap<String, Entry>>,
}

/// Marks the call abandoned when the caller's future is dropped before the answer.
struct CallerGuard(Option<Arc<AtomicBool>>);

impl Drop for CallerGuard {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

impl Detached {
    /// Runs `op` in a tracked task of its own and answers its result. Without a key, a
    /// caller that goes away leaves the task running to its end. With one, see the module
    /// doc: `still_valid` checks that an abandoned success is still there to be answered.
    pub async fn run<F>(
        &self,
        what: &'static str,
        key: Option<String>,
        still_valid: impl Fn(&Answer) -> bool,
        op: F,
    ) -> Result<Answer, CriError>
    where
        F: Future<Output = Result<Answer, CriError>> + Send + 'static,
    {
        let Some(key) = key else {
            return self.spawn_and_wait(what, op).await;
        };
        if let Some(mut earlier) = self.abandoned(&key) {
            let outcome = earlier
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|o| o.clone())
                .flatten();
            self.remove_if_done(&key);
            if let Some(answer) = outcome.filter(|a| still_valid(a)) {
                tracing::info!(
                    what,
                    key,
                    "a retry takes the answer of a call whose caller went away"
                );
                return Ok(answer);
            }
        }
        let (tx, rx) = watch::channel(None);
        let flag = Arc::new(AtomicBool::new(false));
        let owned = {
            let mut entries = self.lock();
            if entries.contains_key(&key) {
                false
            } else {
                entries.insert(
                    key.clone(),
                    Entry {
                        abandoned: flag.clone(),
                        done: rx,
                        since: Instant::now(),
                    },
                );
                true
            }
        };
        let mut guard = CallerGuard(owned.then(|| flag.clone()));
        let result = self
            .spawn_and_wait(what, async move {
                let r = op.await;
                tx.send_replace(Some(r.as_ref().ok().cloned()));
                r
            })
            .await;
        guard.0 = None;
        if owned {
            let mut entries = self.lock();
            if entries
                .get(&key)
                .is_some_and(|e| Arc::ptr_eq(&e.abandoned, &flag))
            {
                entries.remove(&key);
            }
        }
        result
    }

    /// Runs `op` in a tracked task of its own; a caller that goes away leaves it running.
    /// The task stays in the caller's span (its CNI and shim spans are the call's children).
    pub async fn spawn_and_wait<T: Send + 'static>(
        &self,
        what: &'static str,
        op: impl Future<Output = Result<T, CriError>> + Send + 'static,
    ) -> Result<T, CriError> {
        self.tasks.spawn(op.in_current_span()).await.unwrap_or_else(|e| {
            Err(CriError::FailedPrecondition {
                what: what.into(),
                reason: format!("its task ended: {e}"),
            })
        })
    }

    /// The outcome channel of an abandoned call with this key (pruning expired entries).
    fn abandoned(&self, key: &str) -> Option<watch::Receiver<Outcome>> {
        let mut entries = self.lock();
        entries.retain(|_, e| !(e.abandoned.load(Ordering::SeqCst) && e.since.elapsed() > ABANDONED_TTL));
        entries
            .get(key)
            .filter(|e| e.abandoned.load(Ordering::SeqCst))
            .map(|e| e.done.clone())
    }

    fn remove_if_done(&self, key: &str) {
        let mut entries = self.lock();
        if entries.get(key).is_some_and(|e| e.done.borrow().is_some()) {
            entries.remove(key);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent (single ops).
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Shutdown: no new tasks; waits up to `grace` for the running ones.
    pub async fn drain(&self, grace: Duration) {
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_err() {
            tracing::warn!(
                running = self.tasks.len(),
                "CRI calls still running at shutdown; their state is recovered at the next start"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_after(ms: u64, id: &str) -> impl Future<Output = Result<Answer, CriError>> + Send + 'static {
        let id = id.to_owned();
        async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(id)
        }
    }

    #[tokio::test]
    async fn a_dropped_caller_does_not_stop_the_call_and_its_retry_gets_the_answer() {
        let d = Arc::new(Detached::default());
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let first = tokio::time::timeout(
            Duration::from_millis(20),
            d.run("T", Some("k".into()), |_| true, async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                r.store(true, Ordering::SeqCst);
                Ok("id-1".to_owned())
            }),
        )
        .await;
        assert!(first.is_err(), "the caller gave up");
        // The retry joins the abandoned call and answers its id; the op ran once.
        let again = d.run("T", Some("k".into()), |_| true, ok_after(0, "id-2")).await;
        assert_eq!(again.unwrap(), "id-1");
        assert!(ran.load(Ordering::SeqCst));
        assert!(d.lock().is_empty());
    }

    #[tokio::test]
    async fn an_abandoned_failure_lets_the_retry_run_afresh() {
        let d = Detached::default();
        let first = tokio::time::timeout(
            Duration::from_millis(10),
            d.run("T", Some("k".into()), |_| true, async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err(CriError::FailedPrecondition {
                    what: "x".into(),
                    reason: "y".into(),
                })
            }),
        )
        .await;
        assert!(first.is_err());
        let again = d.run("T", Some("k".into()), |_| true, ok_after(0, "id-2")).await;
        assert_eq!(again.unwrap(), "id-2");
    }

    #[tokio::test]
    async fn a_gone_answer_is_not_handed_out() {
        let d = Detached::default();
        let _ = tokio::time::timeout(
            Duration::from_millis(5),
            d.run("T", Some("k".into()), |_| true, ok_after(30, "old")),
        )
        .await;
        let again = d
            .run("T", Some("k".into()), |a| a != "old", ok_after(0, "new"))
            .await;
        assert_eq!(again.unwrap(), "new");
    }

    #[tokio::test]
    async fn callers_that_stay_are_not_joined_and_leave_no_entry() {
        let d = Arc::new(Detached::default());
        let (a, b) = tokio::join!(
            d.run("T", Some("k".into()), |_| true, ok_after(30, "a")),
            d.run("T", Some("k".into()), |_| true, ok_after(10, "b")),
        );
        assert_eq!((a.unwrap(), b.unwrap()), ("a".to_owned(), "b".to_owned()));
        assert!(d.lock().is_empty());
        d.drain(Duration::from_secs(1)).await;
    }
}

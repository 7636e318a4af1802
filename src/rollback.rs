//! Undoing what a failed operation of several steps set up: one guard, armed until the
//! operation succeeds.
//!
//! ```text
//! let mut rollback = Rollback::new(format!("create container {id}"));
//! step 1 ─▶ rollback.defer("remove rootfs", || undo 1)
//! step 2 ─▶ rollback.defer("delete record", || undo 2)
//! success ─▶ rollback.disarm()          nothing is undone
//! failure ─▶ rollback.run().await       undo 2, then undo 1; every undo runs; a failed one
//!                                       is logged (warn, with its error) and the first
//!                                       failure is returned for the caller to report
//! ```
//!
//! A step whose place in the undo order is known before its undo is (the undo needs a value
//! made later, or the steps are done in another order than they are undone) `reserve`s its
//! place first and `fill`s it once done; a place never filled undoes nothing.
//!
//! The undo steps are async, so they cannot run in `Drop`: a guard dropped while armed (its
//! operation cut short) logs the steps that did not run.

use std::fmt::Display;
use std::future::Future;

use futures::future::BoxFuture;

type Undo<'a, E> = Box<dyn FnOnce() -> BoxFuture<'a, Result<(), E>> + Send + 'a>;

/// The undo steps of an operation in progress, run last first on failure.
#[must_use = "a rollback guard must end with disarm() or run()"]
pub struct Rollback<'a, E> {
    what: String,
    steps: Vec<(&'static str, Option<Undo<'a, E>>)>,
}

/// A place in a guard's undo order, kept by [`Rollback::reserve`] for an undo known later.
pub struct Slot(usize);

impl<'a, E: Display> Rollback<'a, E> {
    /// A guard for `what` (named in its log lines), with nothing to undo yet.
    pub fn new(what: impl Into<String>) -> Self {
        Rollback {
            what: what.into(),
            steps: Vec::new(),
        }
    }

    /// Records how to undo a step that has just been done; `step` names it in the logs.
    pub fn defer<F, Fut>(&mut self, step: &'static str, undo: F)
    where
        F: FnOnce() -> Fut + Send + 'a,
        Fut: Future<Output = Result<(), E>> + Send + 'a,
    {
        self.steps.push((step, Some(Box::new(move || Box::pin(undo())))));
    }

    /// Keeps the next place in the undo order for step `step`, which undoes nothing until
    /// [`Rollback::fill`]ed.
    pub fn reserve(&mut self, step: &'static str) -> Slot {
        self.steps.push((step, None));
        Slot(self.steps.len() - 1)
    }

    /// Records how to undo the step of `slot` (reserved on this guard), replacing what it
    /// held; it runs in the place the slot was reserved at.
    pub fn fill<F, Fut>(&mut self, slot: &Slot, undo: F)
    where
        F: FnOnce() -> Fut + Send + 'a,
        Fut: Future<Output = Result<(), E>> + Send + 'a,
    {
        if let Some((_, place)) = self.steps.get_mut(slot.0) {
            *place = Some(Box::new(move || Box::pin(undo())));
        }
    }

    /// The operation succeeded: nothing is undone.
    pub fn disarm(mut self) {
        self.steps.clear();
    }

    /// The operation failed: runs every undo step, last first. Each failure is logged with
    /// its error; the first one is returned.
    pub async fn run(mut self) -> Result<(), E> {
        let mut first = None;
        while let Some((step, undo)) = self.steps.pop() {
            let Some(undo) = undo else { continue };
            if let Err(e) = undo().await {
                tracing::warn!(what = %self.what, step, error = %e, "rollback step failed");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The operation failed and its own error is what the caller reports: runs every undo
    /// step as [`Rollback::run`] does; the failures are in the log.
    pub async fn undo(self) {
        // Each failure was logged with its error by `run`.
        let _logged = self.run().await;
    }
}

impl<E> Drop for Rollback<'_, E> {
    fn drop(&mut self) {
        let steps: Vec<&str> = self
            .steps
            .iter()
            .filter(|(_, undo)| undo.is_some())
            .map(|(s, _)| *s)
            .collect();
        if !steps.is_empty() {
            tracing::warn!(what = %self.what, ?steps, "rollback dropped while armed: these steps did not run");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn log_step(
        log: &Arc<Mutex<Vec<&'static str>>>,
        name: &'static str,
        ok: bool,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<(), String>> + Send + 'static {
        let log = log.clone();
        move || {
            Box::pin(async move {
                log.lock().unwrap().push(name);
                if ok { Ok(()) } else { Err(format!("{name} failed")) }
            })
        }
    }

    #[tokio::test]
    async fn run_undoes_every_step_last_first_and_returns_the_first_failure() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut rollback = Rollback::new("test");
        rollback.defer("one", log_step(&log, "one", false));
        rollback.defer("two", log_step(&log, "two", true));
        rollback.defer("three", log_step(&log, "three", false));
        assert_eq!(rollback.run().await, Err("three failed".to_owned()));
        assert_eq!(*log.lock().unwrap(), ["three", "two", "one"]);
    }

    #[tokio::test]
    async fn a_reserved_step_runs_in_its_place_and_an_unfilled_one_is_skipped() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut rollback = Rollback::new("test");
        let early = rollback.reserve("early");
        let _never = rollback.reserve("never");
        rollback.defer("later", log_step(&log, "later", false));
        rollback.fill(&early, log_step(&log, "replaced", true));
        rollback.fill(&early, log_step(&log, "early", false));
        assert_eq!(rollback.run().await, Err("later failed".to_owned()));
        assert_eq!(*log.lock().unwrap(), ["later", "early"]);
    }

    #[tokio::test]
    async fn disarm_undoes_nothing() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut rollback = Rollback::<String>::new("test");
        rollback.defer("one", log_step(&log, "one", true));
        rollback.disarm();
        assert!(log.lock().unwrap().is_empty());
    }
}

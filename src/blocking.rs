//! Blocking work (files, redb, tar streams, mounts) on tokio's blocking pool, one way for every
//! module: a call whose thread never answers (it panicked, or the runtime shut down first) is
//! the module error's `Interrupted { op, reason }`.

/// A module error that can say a blocking call never answered. [`interrupted!`] implements it
/// for an error enum with an `Interrupted { op: &'static str, reason: String }` variant.
pub trait Interrupted {
    fn interrupted(op: &'static str, reason: String) -> Self;
}

/// `impl Interrupted` for error enums whose `Interrupted { op, reason }` variant says it.
macro_rules! interrupted {
    ($($error:ty),+ $(,)?) => {
        $(impl $crate::blocking::Interrupted for $error {
            fn interrupted(op: &'static str, reason: String) -> Self {
                Self::Interrupted { op, reason }
            }
        })+
    };
}
pub(crate) use interrupted;

/// Runs `f` on tokio's blocking pool and hands back what it returned.
pub async fn run<T, E>(op: &'static str, f: impl FnOnce() -> T + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: Interrupted,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| E::interrupted(op, e.to_string()))
}

/// [`run`] for a fallible call: its error, or `Interrupted`, in one `Result`.
pub async fn try_run<T, E>(
    op: &'static str,
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: Interrupted + Send + 'static,
{
    run(op, f).await?
}

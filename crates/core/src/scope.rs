//! What an operation leaves to undo when it is stopped before it ends.
//!
//! Dropping an operation's future stops its async work. What a drop cannot do
//! synchronously belongs to the operation's [`Scope`] while it exists: the child
//! programs it runs (killed at once when the scope is cancelled), the databases it
//! created and has not yet handed over (dropped by [`Scope::clean_up`]), and the
//! background cleanups a drop started (aborting a multipart upload, awaited by
//! [`Scope::clean_up`]). Scopes are independent: cancelling one stops nothing of
//! another operation in the same program.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::{Error, ErrorKind, Result};

/// How long [`Scope::run`] waits for cleanups after a cancellation.
const CLEAN_UP_WAIT: Duration = Duration::from_secs(20);

type Stopper = Box<dyn Fn() -> Option<String> + Send + Sync>;
type Undo = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Option<String>> + Send>> + Send>;

tokio::task_local! {
    static CURRENT: Scope;
}

/// The cancellation and cleanup of one operation (or of several that a caller
/// groups, such as the steps of one command). Cloning it shares it.
///
/// An operation belongs to the scope its builder was given, else to the one it was
/// created within ([`Scope::run`]), else to a scope of its own.
#[derive(Clone, Default)]
pub struct Scope {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    token: CancellationToken,
    next: AtomicU64,
    stoppers: Mutex<Vec<(u64, Stopper)>>,
    undos: Mutex<Vec<(u64, Undo)>>,
    cleanups: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("cancelled", &self.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Scope {
    /// A scope of its own.
    pub fn new() -> Self {
        Self::default()
    }

    /// The scope the current task runs within ([`Scope::run`]), or a new one.
    pub fn current_or_new() -> Self {
        CURRENT.try_with(Clone::clone).unwrap_or_default()
    }

    /// Stops the operations of this scope: their child programs are killed now, and
    /// every [`run`](Self::run) of it returns an [`ErrorKind::Cancelled`] error after
    /// cleaning up. Returns what was stopped.
    pub fn cancel(&self) -> Vec<String> {
        self.inner.token.cancel();
        let stoppers: Vec<(u64, Stopper)> = locked(&self.inner.stoppers).drain(..).collect();
        stoppers
            .into_iter()
            .filter_map(|(_, stop)| stop())
            .collect()
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.token.is_cancelled()
    }

    /// Waits until the scope is cancelled.
    pub async fn cancelled(&self) {
        self.inner.token.cancelled().await;
    }

    /// Cancels the scope, waits (up to `wait` each) for the cleanups its dropped
    /// operations started, and undoes what they left (drops the databases they
    /// created and had not handed over). Returns one phrase per thing done. Call it
    /// after the operations' futures are dropped or have returned.
    pub async fn clean_up(&self, wait: Duration) -> Vec<String> {
        let mut done: Vec<String> = self
            .cancel()
            .into_iter()
            .map(|p| format!("stopped {p}"))
            .collect();
        // A cleanup may start others (a cancelled upload task, once it is dropped,
        // starts the sink's abort): wait until none is left, within `wait`.
        let deadline = tokio::time::Instant::now() + wait;
        let mut finished = 0;
        loop {
            let pending: Vec<_> = locked(&self.inner.cleanups).drain(..).collect();
            if pending.is_empty() {
                break;
            }
            finished += pending.len();
            if tokio::time::timeout_at(deadline, futures::future::join_all(pending))
                .await
                .is_err()
            {
                done.push(format!(
                    "cleanups (upload aborts) did not finish within {}s",
                    wait.as_secs()
                ));
                break;
            }
        }
        if finished > 0 {
            done.push(format!("finished {finished} cleanup(s) (aborting uploads)"));
        }
        let undos: Vec<(u64, Undo)> = locked(&self.inner.undos).drain(..).collect();
        for (_, undo) in undos {
            match tokio::time::timeout(wait, undo()).await {
                Ok(Some(what)) => done.push(what),
                Ok(None) => {}
                Err(_) => done.push("an undo did not finish in time".to_owned()),
            }
        }
        done
    }

    /// Runs `body` as an operation of this scope: code it runs finds the scope
    /// ([`current_or_new`](Self::current_or_new), [`spawn_cleanup`]); when the scope
    /// is cancelled, `body` is dropped, the scope cleaned up, and an
    /// [`ErrorKind::Cancelled`] error returned.
    pub async fn run<T>(&self, body: impl Future<Output = Result<T>>) -> Result<T> {
        let body = CURRENT.scope(self.clone(), body);
        tokio::select! {
            biased;
            () = self.cancelled() => {
                let done = self.clean_up(CLEAN_UP_WAIT).await;
                Err(Error::new(
                    ErrorKind::Cancelled,
                    if done.is_empty() {
                        "the operation was cancelled".to_owned()
                    } else {
                        format!("the operation was cancelled; {}", done.join(", "))
                    },
                ))
            }
            result = body => result,
        }
    }

    /// Registers `stop`, run once when the scope is cancelled (killing a child
    /// program); it returns what it stopped. Dropping the registration forgets it.
    pub(crate) fn on_cancel(
        &self,
        stop: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) -> Registration {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        locked(&self.inner.stoppers).push((id, Box::new(stop)));
        if self.is_cancelled() {
            // Cancelled before it was registered: it stops at once.
            self.cancel();
        }
        Registration {
            scope: self.clone(),
            id,
        }
    }

    /// Registers `undo`, run by [`clean_up`](Self::clean_up) unless the returned
    /// guard is [`kept`](UndoGuard::keep) first. Dropping the guard does not forget
    /// it: a dropped (cancelled) operation is exactly when it must run.
    pub(crate) fn undo_unless_kept<F>(&self, undo: impl FnOnce() -> F + Send + 'static) -> UndoGuard
    where
        F: Future<Output = Option<String>> + Send + 'static,
    {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        locked(&self.inner.undos).push((id, Box::new(move || Box::pin(undo()))));
        UndoGuard {
            scope: self.clone(),
            id,
        }
    }

    /// Runs `cleanup` (an abort of a cancelled upload) on the current runtime, where
    /// [`clean_up`](Self::clean_up) waits for it.
    pub fn spawn_cleanup(&self, cleanup: impl Future<Output = ()> + Send + 'static) {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let mut pending = locked(&self.inner.cleanups);
                pending.retain(|h| !h.is_finished());
                pending.push(runtime.spawn(cleanup));
            }
            Err(_) => tracing::warn!("a cleanup could not run: no async runtime"),
        }
    }

    /// Spawns `task` on the current runtime within this scope.
    pub(crate) fn spawn<T: Send + 'static>(
        &self,
        task: impl Future<Output = T> + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        tokio::spawn(CURRENT.scope(self.clone(), task))
    }
}

/// Runs `cleanup` within the scope of the operation that runs the current task, so
/// that its [`clean_up`](Scope::clean_up) waits for it (a [`Sink`](crate::Sink)'s
/// abort of an upload dropped mid-way); outside any, it runs detached.
pub fn spawn_cleanup(cleanup: impl Future<Output = ()> + Send + 'static) {
    match CURRENT.try_with(Clone::clone) {
        Ok(scope) => scope.spawn_cleanup(cleanup),
        Err(_) => match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(cleanup)),
            Err(_) => tracing::warn!("a cleanup could not run: no async runtime"),
        },
    }
}

/// A [`Scope::on_cancel`] registration, forgotten when dropped.
pub(crate) struct Registration {
    scope: Scope,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        locked(&self.scope.inner.stoppers).retain(|(id, _)| *id != self.id);
    }
}

/// How a piece of work started by [`Scope::run_undoable`] ended, for its undo.
pub(crate) struct WorkEnded {
    outcome: tokio::sync::oneshot::Receiver<bool>,
    /// The outcome once [`running`](Self::running) has taken it from the channel.
    seen: Option<bool>,
}

impl WorkEnded {
    /// Whether the work is still under way.
    pub(crate) fn running(&mut self) -> bool {
        if self.seen.is_some() {
            return false;
        }
        match self.outcome.try_recv() {
            Ok(succeeded) => {
                self.seen = Some(succeeded);
                false
            }
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => true,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                self.seen = Some(false);
                false
            }
        }
    }

    /// Waits for the work to end: whether it succeeded (`false` also when it was
    /// stopped unfinished, with the runtime).
    pub(crate) async fn succeeded(self) -> bool {
        match self.seen {
            Some(succeeded) => succeeded,
            None => self.outcome.await.unwrap_or(false),
        }
    }
}

impl Scope {
    /// Runs `work` as a task of its own, with `undo` registered (as
    /// [`undo_unless_kept`](Self::undo_unless_kept)) before it starts. For work whose
    /// effect lands even when nobody waits for it any more (a request already sent,
    /// a statement the server runs to its end): a cancellation that drops the caller
    /// leaves the work running, and the undo can wait for it ([`WorkEnded`]) before
    /// undoing it, rather than undo first and see the effect land afterwards. The
    /// guard is returned with the work's result, success or not: what to keep is the
    /// caller's call.
    pub(crate) async fn run_undoable<T, F>(
        &self,
        work: impl Future<Output = Result<T>> + Send + 'static,
        undo: impl FnOnce(WorkEnded) -> F + Send + 'static,
    ) -> (Result<T>, UndoGuard)
    where
        T: Send + 'static,
        F: Future<Output = Option<String>> + Send + 'static,
    {
        let (tell, outcome) = tokio::sync::oneshot::channel();
        let guard = self.undo_unless_kept(move || {
            undo(WorkEnded {
                outcome,
                seen: None,
            })
        });
        let done = self
            .spawn(async move {
                let result = work.await;
                let _ = tell.send(result.is_ok());
                result
            })
            .await;
        let result = done
            .unwrap_or_else(|e| Err(Error::tool(format!("a task of the operation failed: {e}"))));
        (result, guard)
    }
}

/// A [`Scope::undo_unless_kept`] registration.
#[must_use = "keep() the guard once what it undoes is handed over or undone"]
pub(crate) struct UndoGuard {
    scope: Scope,
    id: u64,
}

impl UndoGuard {
    /// What it would undo is handed over or undone already: a cancellation no longer
    /// concerns it.
    pub(crate) fn keep(self) {
        locked(&self.scope.inner.undos).retain(|(id, _)| *id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancelling_one_scope_leaves_another_alone() {
        let (a, b) = (Scope::new(), Scope::new());
        let stopped = Arc::new(AtomicU64::new(0));
        let _ra = a.on_cancel({
            let stopped = stopped.clone();
            move || {
                stopped.fetch_add(1, Ordering::SeqCst);
                Some("a's program".into())
            }
        });
        let _rb = b.on_cancel(|| Some("b's program".into()));
        let a_run = a.run(async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(())
        });
        let b_run = b.run(async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(7)
        });
        let cancel = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            a.cancel()
        };
        let (a_out, b_out, said) = tokio::join!(a_run, b_run, cancel);
        assert_eq!(a_out.unwrap_err().kind(), ErrorKind::Cancelled);
        assert_eq!(b_out.unwrap(), 7);
        assert_eq!(said, ["a's program"]);
        assert_eq!(stopped.load(Ordering::SeqCst), 1);
        assert!(!b.is_cancelled());
    }

    /// The undo of work run as its own task learns how it ended, whether the work
    /// is still running when the scope is cleaned up or ended before.
    #[tokio::test]
    async fn an_undoable_works_undo_learns_its_outcome() {
        for (succeeds, ended_first) in [(true, true), (false, true), (true, false), (false, false)]
        {
            let scope = Scope::new();
            let (go, wait) = tokio::sync::oneshot::channel::<()>();
            let work = async move {
                if !ended_first {
                    let _ = wait.await;
                }
                if succeeds {
                    Ok(())
                } else {
                    Err(Error::tool("failed"))
                }
            };
            let undo = |mut ended: WorkEnded| async move {
                let running = ended.running();
                let succeeded = ended.succeeded().await;
                Some(format!("running {running}, succeeded {succeeded}"))
            };
            let (said, result) = if ended_first {
                let (result, _guard) = scope.run_undoable(work, undo).await;
                (scope.clean_up(Duration::from_secs(5)).await, result)
            } else {
                // Cleaned up while the work runs: the caller's wait is dropped, the
                // work goes on and ends while the undo waits for it.
                let run = scope.run(async {
                    let (result, _guard) = scope.run_undoable(work, undo).await;
                    result
                });
                let cancel = async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    scope.cancel();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = go.send(());
                };
                let (result, ()) = tokio::join!(run, cancel);
                assert_eq!(result.as_ref().unwrap_err().kind(), ErrorKind::Cancelled);
                let said = result.unwrap_err().to_string();
                (vec![said], Ok(()))
            };
            let expected = format!("running {}, succeeded {succeeds}", !ended_first);
            assert!(
                said.iter().any(|s| s.contains(&expected)),
                "{succeeds} {ended_first}: {said:?}"
            );
            if ended_first {
                assert_eq!(result.is_ok(), succeeds);
            }
        }
    }

    #[tokio::test]
    async fn clean_up_runs_undos_not_kept_and_waits_for_cleanups() {
        let scope = Scope::new();
        let kept = scope.undo_unless_kept(|| async { Some("kept".to_owned()) });
        let _dropped = scope.undo_unless_kept(|| async { Some("undone".to_owned()) });
        kept.keep();
        let finished = Arc::new(AtomicU64::new(0));
        scope
            .run(async {
                let finished = finished.clone();
                spawn_cleanup(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    finished.store(1, Ordering::SeqCst);
                });
                Ok(())
            })
            .await
            .unwrap();
        let done = scope.clean_up(Duration::from_secs(5)).await;
        assert_eq!(finished.load(Ordering::SeqCst), 1, "{done:?}");
        assert!(done.contains(&"undone".to_owned()), "{done:?}");
        assert!(!done.contains(&"kept".to_owned()), "{done:?}");
    }
}

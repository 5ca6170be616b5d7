//! Cleaning up after an interrupted operation (SIGINT, SIGTERM, SIGHUP).
//!
//! Dropping an operation's future stops its async work; what a drop cannot do
//! synchronously is registered here while it exists: the databases pgproof created
//! and has not yet handed over or dropped, and background cleanups (aborting a
//! multipart upload) that a drop started. A front end that catches a signal drops the
//! operation, then calls [`clean_up`], which also kills every child program
//! ([`kill_all`](crate::pg::process::kill_all)).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::pg::ConnParams;
use crate::pg::admin::drop_database;
use crate::pg::process::kill_all;

static DATABASES: Mutex<Vec<(u64, ConnParams)>> = Mutex::new(Vec::new());
static CLEANUPS: Mutex<Vec<tokio::task::JoinHandle<()>>> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(0);

fn databases() -> MutexGuard<'static, Vec<(u64, ConnParams)>> {
    DATABASES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn cleanups() -> MutexGuard<'static, Vec<tokio::task::JoinHandle<()>>> {
    CLEANUPS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A database pgproof created and must drop if the run is interrupted before it is
/// [`kept`](CreatedDatabase::keep) or dropped. Deliberately not released on `Drop`:
/// a dropped (cancelled) operation is exactly when it must stay registered.
#[derive(Debug)]
#[must_use = "keep() or forget the database once it is handed over or dropped"]
pub struct CreatedDatabase {
    id: u64,
}

impl CreatedDatabase {
    /// Registers `target`'s database.
    pub fn register(target: &ConnParams) -> Self {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        databases().push((id, target.clone()));
        Self { id }
    }

    /// The database is handed over (a finished restore) or already dropped: an
    /// interruption no longer concerns it.
    pub fn keep(self) {
        databases().retain(|(id, _)| *id != self.id);
    }
}

/// Runs `cleanup` (an abort of a cancelled upload) on the current runtime, where
/// [`clean_up`] waits for it.
pub fn spawn_cleanup(cleanup: impl Future<Output = ()> + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            let mut pending = cleanups();
            pending.retain(|h| !h.is_finished());
            pending.push(runtime.spawn(cleanup));
        }
        Err(_) => tracing::warn!("a cleanup could not run: no async runtime"),
    }
}

/// Kills child programs, waits (up to `wait`) for the cleanups dropped operations
/// started, and drops the databases pgproof created and had not handed over. Returns
/// one phrase per thing done, for the line a front end prints.
pub async fn clean_up(wait: Duration) -> Vec<String> {
    let mut done: Vec<String> = kill_all()
        .into_iter()
        .map(|p| format!("stopped {p}"))
        .collect();
    // A cleanup may start others (a cancelled upload task, once it is dropped, starts
    // the sink's abort): wait until none is left, within `wait`.
    let deadline = tokio::time::Instant::now() + wait;
    let mut finished = 0;
    loop {
        let pending: Vec<_> = cleanups().drain(..).collect();
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
    let targets: Vec<ConnParams> = databases().drain(..).map(|(_, t)| t).collect();
    for target in targets {
        match tokio::time::timeout(wait, drop_database(&target)).await {
            Ok(Ok(())) => done.push(format!("dropped database {}", target.dbname())),
            // An ephemeral cluster that was already stopped took its databases along.
            Ok(Err(e)) => tracing::debug!(database = %target.dbname(), error = %e, "not dropped"),
            Err(_) => done.push(format!(
                "could not drop database {} in time",
                target.dbname()
            )),
        }
    }
    done
}

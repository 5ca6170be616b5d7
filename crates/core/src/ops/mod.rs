//! The operations a program calls: short orchestrations of the engines.
//!
//! Each is a builder: construct it with what it cannot do without, set options with
//! its methods (every option has a sane default), then `run().await`.
//!
//! | operation | returns |
//! |---|---|
//! | [`Backup`] | the committed [`Manifest`](crate::catalog::Manifest) |
//! | [`Restore`] | a [`RestoreOutcome`] |
//! | [`Verify`] | the recorded [`Report`](crate::verify::Report) |
//! | [`VerifyQueue`] | [`VerifyJob`]s: claimed backups for one of N verify workers |
//! | [`Drill`] | a [`DrillOutcome`] |
//! | [`Prune`] | every retention [`Decision`] |
//! | [`CatalogCheck`] | a [`CheckOutcome`] with every [`Finding`] |
//! | [`NightlyRun`] | a [`RunOutcome`]: hooks, backups, verification, replicas, retention |
//! | [`ClusterRestore`] | a [`ClusterRestoreOutcome`]: a whole server recreated from one run, proven |
//! | [`Status`] | a [`StatusReport`]: each database's ages, restore time and [`Breach`]es, and a verdict |
//! | [`certificate::issue`] / [`certificate::verify`] | a signed proof certificate / what one proves |
//!
//! Listing is [`catalog::list_backups`](crate::catalog::list_backups) and
//! [`catalog::load_manifest`](crate::catalog::load_manifest); the whole catalog in one
//! pass is [`catalog::Inventory`](crate::catalog::Inventory).

mod backup;
pub mod certificate;
mod check;
mod cluster;
mod copy;
pub mod coverage;
mod drill;
pub mod duration;
mod nightly;
pub mod prune;
mod queue;
mod restore;
mod status;
mod verify;

pub use backup::{Backup, DEFAULT_LOCK_WAIT, DEFAULT_STATEMENT_TIMEOUT};
pub use check::{CatalogCheck, CheckOutcome, Finding};
pub use cluster::{ClusterCapture, ClusterRestore, ClusterRestoreOutcome, DatabaseProof};
pub use copy::{CopyBackups, CopyOutcome};
pub use drill::{DRILL_DATABASE, Drill, DrillOutcome};
pub use nightly::{NightlyRun, RunEvent, RunHooks, RunOutcome};
pub use prune::{Action, Decision, KeepReason, PRUNED_BY_POLICY, Prune, RetentionPolicy};
pub use queue::{DEFAULT_CLAIM_TTL, VerifyJob, VerifyQueue};
pub use restore::{LeftOut, PartialProof, Restore, RestoreOutcome, drop_restored, restore_files};
pub use status::{
    Breach, DatabaseStatus, ReplicaStatus, Status, StatusPolicy, StatusReport, short_age,
};
pub use verify::{RecordGate, Verify, record_unfinished, scratch_database};

/// Registers `target`'s database, which the operation created, to be dropped if
/// the operation's scope is cleaned up before the guard is kept (the database
/// handed over, or dropped by the operation itself).
fn drop_on_cancel(
    scope: &crate::scope::Scope,
    target: &crate::pg::ConnParams,
) -> crate::scope::UndoGuard {
    let target = target.clone();
    scope.undo_unless_kept(move || async move { drop_as_undo(&target).await })
}

async fn drop_as_undo(target: &crate::pg::ConnParams) -> Option<String> {
    match crate::pg::admin::drop_database(target).await {
        Ok(()) => Some(format!("dropped database {}", target.dbname())),
        // An ephemeral cluster that was already stopped took its databases along.
        Err(e) => {
            tracing::debug!(database = %target.dbname(), error = %e, "not dropped");
            None
        }
    }
}

/// Runs `create`, which creates `target`'s database for the operation on the
/// session `canceller` cancels, with the database registered as [`drop_on_cancel`]
/// does. The server runs a CREATE DATABASE to its end even when pgproof stops
/// waiting (a cancellation drops the operation), so `create` runs as a task of its
/// own: a cancellation that finds it running cancels it on the server (it may still
/// commit), waits for it, and drops the database only if the CREATE succeeded,
/// never one that was there before it (a CREATE that failed because the name was
/// taken).
async fn create_dropped_on_cancel(
    scope: &crate::scope::Scope,
    target: &crate::pg::ConnParams,
    canceller: crate::pg::Canceller,
    create: impl std::future::Future<Output = crate::Result<()>> + Send + 'static,
) -> crate::Result<crate::scope::UndoGuard> {
    let undo_target = target.clone();
    let (created, registered) = scope
        .run_undoable(create, move |mut ended| async move {
            if ended.running()
                && let Err(e) = canceller.cancel().await
            {
                tracing::warn!(database = %undo_target.dbname(), error = %e, "could not cancel a CREATE DATABASE under way; waiting for it");
            }
            if ended.succeeded().await {
                drop_as_undo(&undo_target).await
            } else {
                None
            }
        })
        .await;
    match created {
        Ok(()) => Ok(registered),
        Err(e) => {
            registered.keep();
            Err(e)
        }
    }
}

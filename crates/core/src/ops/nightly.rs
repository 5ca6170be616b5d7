//! The nightly run: the steps an unattended backup job takes, in the order and with
//! the rules that keep good backups safe from a bad night.
//!
//! 1. The caller's `before` hook; its failure stops the run before anything starts.
//! 2. A backup of each database; one that fails does not stop the others. A run over
//!    a whole server ([`cluster`](NightlyRun::cluster)) stores the server's globals
//!    first and, once the backups are done, the signed record that ties them to the
//!    run's backups ([`crate::catalog::cluster`]).
//! 3. Verification of what was committed, when asked.
//! 4. A copy of every committed backup to each replica, even after a partly failed
//!    run (what was committed is worth having twice).
//! 5. Retention, only after a run in which everything succeeded: a failing run must
//!    never be the reason good backups go.
//! 6. The caller's `after` hook with the run's outcome, whatever it was; its own
//!    failure never changes the result.

use std::sync::Arc;

use async_trait::async_trait;
use jiff::Timestamp;

use crate::catalog::cluster::ClusterRun;
use crate::catalog::{BackupRef, Manifest};
use crate::error::{Error, Result};
use crate::ops::{Backup, ClusterCapture, CopyBackups, Prune, RetentionPolicy, Verify};
use crate::pg::ConnParams;
use crate::scope::Scope;
use crate::sink::Sink;
use crate::verify::Report;

/// What runs around a nightly run: commands, notifications.
#[async_trait]
pub trait RunHooks: Send + Sync {
    /// Runs before anything is backed up. An implementation MUST return an error
    /// when what must precede the backups did not happen: the run then stops.
    async fn before(&self) -> Result<()>;

    /// Runs once the run is over, whatever its outcome, with the outcome and the
    /// run's result. An implementation MUST NOT fail the run: it reports its own
    /// failures itself.
    async fn after(&self, outcome: &RunOutcome, result: &Result<()>);
}

/// What happened, as it happens, for a front end to show.
#[derive(Debug)]
#[non_exhaustive]
pub enum RunEvent<'a> {
    /// The databases were listed: this many will be backed up.
    Listed(usize),
    /// A backup of this database starts.
    BackupStarted(&'a str),
    /// A backup was committed.
    Committed(&'a Manifest),
    /// The backup of a database failed.
    BackupFailed {
        /// The database.
        database: &'a str,
        /// Why.
        error: &'a Error,
    },
    /// A verification of this backup starts.
    VerifyStarted(&'a BackupRef),
    /// A committed backup was verified (passed or not).
    Verified(&'a Report),
    /// A copy to a replica failed (the backups are committed all the same).
    ReplicaFailed {
        /// The replica, as it describes itself.
        replica: String,
        /// Why.
        error: &'a Error,
    },
    /// The run's cluster record was written: the globals and every committed backup.
    ClusterRecorded(&'a ClusterRun),
    /// The cluster's globals or the run's record could not be stored (the backups
    /// are committed all the same).
    ClusterFailed(&'a Error),
    /// Retention ran after a wholly successful run: backups deleted and kept.
    Pruned {
        /// Deleted (backups and leftovers).
        pruned: usize,
        /// Kept.
        kept: usize,
    },
}

/// What a run did.
#[derive(Debug)]
pub struct RunOutcome {
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Timestamp,
    /// The backups committed.
    pub committed: Vec<Manifest>,
    /// The databases whose backup failed, with why.
    pub failed: Vec<(String, Error)>,
    /// The verifications of committed backups.
    pub reports: Vec<Report>,
    /// The run's cluster record, for a run over a whole server.
    pub cluster: Option<ClusterRun>,
}

impl Default for RunOutcome {
    /// A run that did nothing, now.
    fn default() -> Self {
        let now = Timestamp::now();
        Self {
            started_at: now,
            finished_at: now,
            committed: Vec::new(),
            failed: Vec::new(),
            reports: Vec::new(),
            cluster: None,
        }
    }
}

type BackupFor = Box<dyn Fn(ConnParams) -> Backup + Send + Sync>;
type VerifyFor = Box<dyn Fn(BackupRef) -> Result<Verify> + Send + Sync>;
type OnEvent = Box<dyn Fn(RunEvent<'_>) + Send + Sync>;
type DatabaseList =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<ConnParams>>> + Send>>;

/// The nightly run over a list of databases, configured by its builder methods and
/// done by [`run`](NightlyRun::run).
///
/// # Example: a nightly run into a sink of your own
///
/// ```no_run
/// use std::sync::Arc;
/// use pgproof_core::ops::{Backup, NightlyRun, RetentionPolicy};
/// use pgproof_core::{Sink, pg::ConnParams, codec::Recipients};
///
/// async fn nightly(sink: Arc<dyn Sink>, recipients: Recipients) -> pgproof_core::Result<()> {
///     let databases = vec![ConnParams::parse("postgres://backup@db.internal/app")?];
///     let keep = RetentionPolicy { keep_daily: Some(7), ..RetentionPolicy::default() };
///     let (_outcome, result) = NightlyRun::new(sink.clone(), move |source| {
///         Backup::new(source, sink.clone()).recipients(recipients.clone())
///     })
///     .databases(databases)
///     .prune(keep)
///     .run()
///     .await;
///     result
/// }
/// ```
#[must_use = "a NightlyRun does nothing until run"]
pub struct NightlyRun {
    sink: Arc<dyn Sink>,
    databases: Option<DatabaseList>,
    backup: BackupFor,
    verify: Option<VerifyFor>,
    replicas: Vec<Arc<dyn Sink>>,
    retention: Option<RetentionPolicy>,
    cluster: Option<ClusterCapture>,
    now: Option<Timestamp>,
    hooks: Option<Arc<dyn RunHooks>>,
    on_event: OnEvent,
    scope: Scope,
}

impl NightlyRun {
    /// Backs up each database (see [`databases`](Self::databases)) into `sink` with
    /// the [`Backup`] that `backup` configures for it.
    pub fn new(
        sink: Arc<dyn Sink>,
        backup: impl Fn(ConnParams) -> Backup + Send + Sync + 'static,
    ) -> Self {
        Self {
            sink,
            databases: None,
            backup: Box::new(backup),
            verify: None,
            replicas: Vec::new(),
            retention: None,
            cluster: None,
            now: None,
            hooks: None,
            on_event: Box::new(|_| {}),
            scope: Scope::current_or_new(),
        }
    }

    /// The databases to back up.
    pub fn databases(self, databases: Vec<ConnParams>) -> Self {
        self.list_databases(async move { Ok(databases) })
    }

    /// The databases to back up, as `list` finds them once the `before` hook has run
    /// (it may be what makes the server reachable); its failure fails the run.
    pub fn list_databases(
        mut self,
        list: impl std::future::Future<Output = Result<Vec<ConnParams>>> + Send + 'static,
    ) -> Self {
        self.databases = Some(Box::pin(list));
        self
    }

    /// Verifies each committed backup with the [`Verify`] that `verify` configures
    /// for it (an error there is the environment's, and ends the run).
    pub fn verify(
        mut self,
        verify: impl Fn(BackupRef) -> Result<Verify> + Send + Sync + 'static,
    ) -> Self {
        self.verify = Some(Box::new(verify));
        self
    }

    /// Copies every committed backup to `replica` after the backups.
    pub fn replica(mut self, replica: Arc<dyn Sink>) -> Self {
        self.replicas.push(replica);
        self
    }

    /// Prunes by `policy` after a run in which everything succeeded.
    pub fn prune(mut self, policy: RetentionPolicy) -> Self {
        self.retention = Some(policy);
        self
    }

    /// Also stores the server's globals and a cluster record of the run, so the
    /// whole server can be recreated from it ([`ClusterRestore`](crate::ops::ClusterRestore)).
    /// For a run over every database of the server.
    pub fn cluster(mut self, capture: ClusterCapture) -> Self {
        self.cluster = Some(capture);
        self
    }

    /// The time retention goes by; default now.
    pub fn now(mut self, now: Option<Timestamp>) -> Self {
        self.now = now;
        self
    }

    /// What runs before and after.
    pub fn hooks(mut self, hooks: Arc<dyn RunHooks>) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// Called with every [`RunEvent`], as it happens.
    pub fn on_event(mut self, on_event: impl Fn(RunEvent<'_>) + Send + Sync + 'static) -> Self {
        self.on_event = Box::new(on_event);
        self
    }

    /// The scope its operations belong to (see [`Backup::scope`]).
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Runs every step. Returns what was done and the run's result: the error of a
    /// failed step (several failed backups are summed up in one), or of a failed
    /// verification, or `Ok`.
    pub async fn run(self) -> (RunOutcome, Result<()>) {
        let scope = self.scope.clone();
        let mut outcome = RunOutcome::default();
        let result = match &self.hooks {
            Some(hooks) => hooks.before().await,
            None => Ok(()),
        };
        let mut this = self;
        let result = match result {
            Ok(()) => {
                let databases = this.databases.take();
                scope.run(this.steps(databases, &mut outcome)).await
            }
            Err(e) => Err(e),
        };
        outcome.finished_at = Timestamp::now();
        if let Some(hooks) = &this.hooks {
            hooks.after(&outcome, &result).await;
        }
        (outcome, result)
    }

    async fn steps(&self, databases: Option<DatabaseList>, outcome: &mut RunOutcome) -> Result<()> {
        let databases = match databases {
            Some(list) => list.await?,
            None => Vec::new(),
        };
        (self.on_event)(RunEvent::Listed(databases.len()));
        let globals = match &self.cluster {
            Some(capture) => Some(capture.store(&*self.sink).await),
            None => None,
        };
        for source in &databases {
            let database = source.dbname().to_owned();
            (self.on_event)(RunEvent::BackupStarted(&database));
            match (self.backup)(source.clone()).run().await {
                Ok(manifest) => {
                    (self.on_event)(RunEvent::Committed(&manifest));
                    outcome.committed.push(manifest);
                }
                Err(error) => {
                    (self.on_event)(RunEvent::BackupFailed {
                        database: &database,
                        error: &error,
                    });
                    outcome.failed.push((database, error));
                }
            }
        }
        let backed_up = summarize(&outcome.failed, databases.len());
        let clustered = match globals {
            Some(stored) => self.record_cluster(stored, outcome).await,
            None => Ok(()),
        };
        let verified = self.verify_committed(outcome).await;
        let replicated = self.replicate().await;
        match backed_up.and(clustered).and(verified).and(replicated) {
            Ok(()) => self.retain().await,
            failed => failed,
        }
    }

    /// Writes the run's cluster record once its backups are done (the record names the
    /// databases that failed, and `latest` passes over such a run).
    async fn record_cluster(
        &self,
        stored: Result<super::cluster::StoredGlobals>,
        outcome: &mut RunOutcome,
    ) -> Result<()> {
        let failed: Vec<String> = outcome.failed.iter().map(|(db, _)| db.clone()).collect();
        let recorded = match stored {
            Ok(stored) => {
                stored
                    .record(&*self.sink, &outcome.committed, &failed)
                    .await
            }
            Err(e) => Err(e),
        };
        match recorded {
            Ok(run) => {
                (self.on_event)(RunEvent::ClusterRecorded(&run));
                outcome.cluster = Some(run);
                Ok(())
            }
            Err(error) => {
                (self.on_event)(RunEvent::ClusterFailed(&error));
                Err(Error::new(
                    error.kind(),
                    format!(
                        "the cluster's globals were not stored, so this run cannot recreate the whole server (each database's backup is committed all the same): {error}"
                    ),
                ))
            }
        }
    }

    /// Verifies what was committed: an environment error stops at once (and is the
    /// result); otherwise the verdict on every report.
    async fn verify_committed(&self, outcome: &mut RunOutcome) -> Result<()> {
        let Some(verify) = &self.verify else {
            return Ok(());
        };
        for manifest in &outcome.committed {
            let target = BackupRef::of(manifest);
            (self.on_event)(RunEvent::VerifyStarted(&target));
            let report = verify(target)?.run().await?;
            (self.on_event)(RunEvent::Verified(&report));
            outcome.reports.push(report);
        }
        crate::verify::verdict(&outcome.reports)
    }

    /// Copies every committed backup to each replica; the first failure is returned
    /// after all were tried.
    async fn replicate(&self) -> Result<()> {
        let mut first: Option<Error> = None;
        for replica in &self.replicas {
            let copied = CopyBackups::new(self.sink.clone(), replica.clone())
                .run()
                .await
                .and_then(|outcome| outcome.into_result().map(|_| ()));
            if let Err(error) = copied {
                (self.on_event)(RunEvent::ReplicaFailed {
                    replica: replica.describe(),
                    error: &error,
                });
                first.get_or_insert(Error::new(
                    error.kind(),
                    format!(
                        "the backups are committed, but copying them to the replica {} failed: {error}",
                        replica.describe()
                    ),
                ));
            }
        }
        first.map_or(Ok(()), Err)
    }

    async fn retain(&self) -> Result<()> {
        let Some(policy) = &self.retention else {
            return Ok(());
        };
        let mut prune = Prune::new(self.sink.clone(), policy.clone());
        if let Some(now) = self.now {
            prune = prune.now(now);
        }
        let decisions = prune.run().await?;
        let kept = decisions
            .iter()
            .filter(|d| matches!(d.action, crate::ops::Action::Keep(_)))
            .count();
        (self.on_event)(RunEvent::Pruned {
            pruned: decisions.len() - kept,
            kept,
        });
        Ok(())
    }
}

/// One database's error as it is, or for several, which failed and the first error.
fn summarize(failed: &[(String, Error)], attempted: usize) -> Result<()> {
    let Some((_, first)) = failed.first() else {
        return Ok(());
    };
    // One database: its error as it is, with what would fix it.
    if attempted == 1 {
        return Err(first.clone());
    }
    let names: Vec<&str> = failed.iter().map(|(db, _)| db.as_str()).collect();
    Err(Error::tool(format!(
        "{} of {attempted} backups failed ({}); first: {}",
        failed.len(),
        names.join(", "),
        first
    )))
}

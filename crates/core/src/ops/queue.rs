//! The verify work queue: N workers on one catalog, each taking the least recently
//! attempted backup nobody holds, claiming it ([`VerifyClaim`]), verifying it and
//! giving it back, until every backup of the round was attempted.
//!
//! A round is the window `max_age`: a backup is due when no verification attempted
//! it within that window (passed or failed). After a worker claims a backup it reads
//! the backup's newest record again — another worker may have verified it between
//! the catalog read and the claim — so each backup is verified once per round
//! whatever the number of workers. A worker that finds only backups other workers
//! hold waits for them: a holder that finishes leaves a record (nothing left to do),
//! one that was killed leaves a claim that expires and is taken over.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::catalog::{self, BackupRef, Finding, Inventory, Taken, VerifyClaim};
use crate::error::{Error, ErrorKind, Result};
use crate::ops::verify::Verify;
use crate::scope::Scope;
use crate::sink::Sink;
use crate::verify::Report;

/// The claim lifetime by default: a killed worker's backup is taken over this long
/// after it died.
pub const DEFAULT_CLAIM_TTL: Duration = Duration::from_secs(300);

/// How long a claim must still have to run when a worker records its verdict: the
/// record is written well within it, so nobody can have taken the backup over.
fn record_margin(ttl: Duration) -> Duration {
    ttl / 6
}

/// The work queue of one verify worker, configured by its builder methods; take
/// jobs with [`next`](VerifyQueue::next) until it returns `None`.
#[must_use = "a VerifyQueue does nothing until next() is called"]
pub struct VerifyQueue {
    sink: Arc<dyn Sink>,
    max_age: SignedDuration,
    database: Option<String>,
    claim_ttl: Duration,
    holder: String,
    poll: Option<Duration>,
    now: Option<Timestamp>,
    handled: HashSet<(String, String)>,
    pending: VecDeque<BackupRef>,
    untrusted: Vec<Error>,
    findings: Vec<Finding>,
}

impl VerifyQueue {
    /// The queue of the backups in `sink` no verification attempted within `max_age`.
    pub fn new(sink: Arc<dyn Sink>, max_age: SignedDuration) -> Self {
        Self {
            sink,
            max_age,
            database: None,
            claim_ttl: DEFAULT_CLAIM_TTL,
            holder: default_holder(),
            poll: None,
            now: None,
            handled: HashSet::new(),
            pending: VecDeque::new(),
            untrusted: Vec::new(),
            findings: Vec::new(),
        }
    }

    /// Only this database's backups.
    pub fn database(mut self, database: Option<String>) -> Self {
        self.database = database;
        self
    }

    /// How long a claim lives unless renewed (default [`DEFAULT_CLAIM_TTL`]).
    pub fn claim_ttl(mut self, ttl: Duration) -> Self {
        self.claim_ttl = ttl;
        self
    }

    /// Who the claims name (default: `verify worker on HOST, pid N`).
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = holder.into();
        self
    }

    /// How long to wait before looking again at the due backups other workers hold,
    /// when no other is left (default: a quarter of the claim lifetime, at most 1 s:
    /// one listing and one small read per such backup).
    pub fn poll(mut self, every: Duration) -> Self {
        self.poll = Some(every);
        self
    }

    /// The time the round's window ends at (default: the clock at each look).
    pub fn now(mut self, now: Option<Timestamp>) -> Self {
        self.now = now;
        self
    }

    /// The catalog objects that were not believed: those of the latest catalog read,
    /// then every claim met so far (each was treated as expired), once each.
    pub fn findings(&self) -> Vec<Finding> {
        let mut out = self.findings.clone();
        for e in &self.untrusted {
            let key = e.object().unwrap_or_default().to_owned();
            if !out.iter().any(|f| f.key == key) {
                out.push(Finding {
                    key,
                    problem: e.to_string(),
                });
            }
        }
        out
    }

    /// `Ok` when every catalog object this worker read was believed; otherwise an
    /// [`Integrity`](crate::ErrorKind::Integrity) error naming the first of them.
    pub fn untrusted_verdict(&self) -> Result<()> {
        let findings = self.findings();
        match findings.first() {
            None => Ok(()),
            Some(first) => Err(Error::integrity(format!(
                "{} catalog object(s) not trusted and left out, first {}; a trusted key did not sign them: find who wrote them (bucket access logs) before deleting them",
                findings.len(),
                first.key
            ))
            .with_object(first.key.clone())),
        }
    }

    /// The next backup to verify, claimed; `None` when no backup of the round is left
    /// (every one attempted within the window, or handled by this worker already).
    pub async fn next(&mut self) -> Result<Option<VerifyJob>> {
        catalog::check_claim_ttl(self.claim_ttl)?;
        loop {
            // One catalog read per pass over the due backups, not per job: the claim
            // and the fresh look at the backup's records after it decide.
            let now = self.now.unwrap_or_else(Timestamp::now);
            if self.pending.is_empty() {
                let inventory = Inventory::load(&*self.sink, self.database.as_deref()).await?;
                self.findings = inventory.findings().cloned().collect();
                self.pending = inventory
                    .unattempted(now, self.max_age, None)
                    .into_iter()
                    .filter(|b| !self.handled.contains(&handled_key(b)))
                    .collect();
                if self.pending.is_empty() {
                    return Ok(None);
                }
            }
            let mut busy: Vec<BackupRef> = Vec::new();
            while let Some(backup) = self.pending.pop_front() {
                let taken = match VerifyClaim::take(
                    &*self.sink,
                    &backup.database,
                    &backup.backup_id,
                    &self.holder,
                    self.claim_ttl,
                    &mut self.untrusted,
                )
                .await
                {
                    Ok(taken) => taken,
                    // Claims planted to jam one backup (a generation no claim can
                    // follow) are that backup's finding; the pool goes on with the rest.
                    Err(e) if e.kind() == ErrorKind::Integrity => {
                        tracing::warn!(database = %backup.database, backup_id = %backup.backup_id, problem = %e, "cannot claim this backup; skipped");
                        self.handled.insert(handled_key(&backup));
                        self.untrusted.push(e);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                match taken {
                    Taken::Busy { holder, expires_at } => {
                        tracing::debug!(database = %backup.database, backup_id = %backup.backup_id, %holder, %expires_at, "held by another worker");
                        busy.push(backup);
                    }
                    Taken::Claimed(claim) => {
                        self.handled.insert(handled_key(&backup));
                        if self.still_due(&backup, now).await? {
                            tracing::info!(database = %backup.database, backup_id = %backup.backup_id, generation = claim.generation(), "claimed a backup to verify");
                            // Those found busy are tried again after this job.
                            self.pending.extend(busy);
                            return Ok(Some(VerifyJob {
                                sink: self.sink.clone(),
                                backup,
                                claim,
                            }));
                        }
                        tracing::debug!(database = %backup.database, backup_id = %backup.backup_id, "verified by another worker meanwhile");
                        claim.release(&*self.sink).await;
                    }
                }
            }
            if !busy.is_empty() {
                // Held by others: they finish (a record: nothing left) or die (their
                // claims expire and are taken over). Look at those again, and only
                // those (the catalog is read again once none is left), after a while.
                let poll = self
                    .poll
                    .unwrap_or_else(|| (self.claim_ttl / 4).min(Duration::from_secs(1)));
                tracing::debug!(
                    busy = busy.len(),
                    "every other due backup is held by another worker; looking again in {poll:?}"
                );
                tokio::time::sleep(poll).await;
                self.pending.extend(busy);
            }
        }
    }

    /// Whether `backup`, now claimed, still has no attempt within the window, by its
    /// newest record read afresh; a backup pruned meanwhile is not due.
    async fn still_due(&self, backup: &BackupRef, now: Timestamp) -> Result<bool> {
        let sha = match catalog::load_manifest(&*self.sink, backup).await {
            Ok((_, sha)) => sha,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let newest = catalog::newest_verification(&*self.sink, backup, &sha).await?;
        Ok(newest.is_none_or(|v| now.duration_since(v.verified_at) > self.max_age))
    }
}

fn handled_key(backup: &BackupRef) -> (String, String) {
    (backup.database.clone(), backup.backup_id.to_string())
}

/// `verify worker on HOST, pid N`: a pod's host name is its name.
fn default_holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    format!("verify worker on {host}, pid {}", std::process::id())
}

/// One claimed backup: [`run`](VerifyJob::run) verifies it while renewing the claim,
/// then gives the claim back. Dropped without running, the claim expires.
#[derive(Debug)]
pub struct VerifyJob {
    sink: Arc<dyn Sink>,
    backup: BackupRef,
    claim: VerifyClaim,
}

impl VerifyJob {
    /// The claimed backup.
    pub fn backup(&self) -> &BackupRef {
        &self.backup
    }

    /// The claim's current generation.
    pub fn generation(&self) -> u64 {
        self.claim.generation()
    }

    /// Runs `verify` (built for [`backup`](Self::backup)) while the claim is renewed.
    /// `Ok(None)`: the claim was taken over (this worker was too slow to renew it),
    /// so the verification was stopped and nothing recorded; the backup is the other
    /// worker's now. Any other error is the verification's own.
    pub async fn run(self, verify: Verify) -> Result<Option<Report>> {
        let Self {
            sink,
            backup,
            claim,
        } = self;
        let every = claim.renew_every();
        let margin = record_margin(claim.ttl());
        let claim = Arc::new(tokio::sync::Mutex::new(Some(claim)));
        let lost = Arc::new(AtomicBool::new(false));
        // A scope of its own, so losing the claim stops this verification alone;
        // cleaned up with the caller's if that is cancelled first (a signal).
        let parent = Scope::current_or_new();
        let scope = Scope::new();
        let undo = parent.undo_unless_kept({
            let scope = scope.clone();
            move || async move {
                let done = scope.clean_up(Duration::from_secs(20)).await;
                (!done.is_empty()).then(|| done.join(", "))
            }
        });
        let gate: crate::ops::verify::RecordGate = Box::new({
            let claim = claim.clone();
            let sink = sink.clone();
            let lost = lost.clone();
            move || {
                Box::pin(async move {
                    if let Some(held) = claim.lock().await.as_ref()
                        && held.holds(&*sink, margin).await?
                    {
                        return Ok(());
                    }
                    lost.store(true, Ordering::SeqCst);
                    Err(Error::new(
                        ErrorKind::Cancelled,
                        "the claim on this backup was taken over; not recorded",
                    ))
                })
            }
        });
        let run = verify.scope(scope.clone()).record_gate(gate).run();
        tokio::pin!(run);
        let result = loop {
            tokio::select! {
                result = &mut run => break result,
                () = tokio::time::sleep(every) => {
                    let mut held = claim.lock().await;
                    let renewed = match held.as_mut() {
                        Some(held) => held.renew(&*sink).await,
                        None => Ok(true),
                    };
                    drop(held);
                    match renewed {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(database = %backup.database, backup_id = %backup.backup_id, "another worker took this backup over; stopping its verification");
                            lost.store(true, Ordering::SeqCst);
                            scope.cancel();
                        }
                        // Tried again next time; the gate refuses to record if
                        // the claim ran out meanwhile.
                        Err(e) => tracing::warn!(database = %backup.database, backup_id = %backup.backup_id, error = %e, "could not renew a verify claim"),
                    }
                }
                () = parent.cancelled() => {
                    scope.cancel();
                    // The verification returns Cancelled once cleaned up.
                    break run.await;
                }
            }
        };
        undo.keep();
        let lost = lost.load(Ordering::SeqCst);
        let held = claim.lock().await.take();
        if !lost && let Some(held) = held {
            held.release(&*sink).await;
        }
        match result {
            Ok(report) => Ok(Some(report)),
            Err(_) if lost => Ok(None),
            Err(e) => Err(e),
        }
    }
}

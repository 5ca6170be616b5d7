//! Verify: restore into a scratch database, run the verifiers, record the report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use jiff::Timestamp;

use crate::catalog::trust::Signer;
use crate::catalog::{self, BackupLease, BackupRef, Manifest, TableProof, ToolInfo, Verification};
use crate::codec::{Identities, Progress};
use crate::dump::Dumper;
use crate::dump::toc::Filter;
use crate::error::{Error, ErrorKind, Result};
use crate::evidence::fingerprint::{self, Hashing, Method, TableFingerprint, hashing_connections};
use crate::ops::drop_on_cancel;
use crate::ops::restore::{Restore, drop_restored};
use crate::pg::ConnParams;
use crate::scope::Scope;
use crate::sink::{Sink, SinkExt};
use crate::verify::{Check, Report, Restored, Verifier, standard_verifiers};

/// How long a verification's lease protects its backup from prune if the run dies
/// without giving it back.
const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A verification of one backup, configured by its builder methods and done by
/// [`run`](Verify::run).
///
/// The backup is restored into a database pgproof creates on the scratch server
/// (`pgproof_verify_<id>`), the verifiers run against it, the report is written next
/// to the manifest (`<db>/<id>/verify/<time>_<verdict>_r<restore ms>.json`, append-only) and the scratch
/// database is dropped unless [`keep`](Self::keep) says otherwise.
///
/// Failed checks are in the report, not an `Err`. An `Err` means verification could
/// not run (a missing tool, an unreachable server, a wrong key): that says nothing
/// about the backup, and no report is written.
#[must_use = "a Verify does nothing until run"]
pub struct Verify {
    scope: Scope,
    sink: Arc<dyn Sink>,
    backup: BackupRef,
    scratch: ConnParams,
    identities: Option<Identities>,
    dumper: Option<Arc<dyn Dumper>>,
    verifiers: Vec<Box<dyn Verifier>>,
    pg_bin_dir: Option<PathBuf>,
    keep: bool,
    progress: Option<Progress>,
    ephemeral_scratch: bool,
    verified_by: Option<Signer>,
    tables: Option<Filter>,
    record_gate: Option<RecordGate>,
}

/// Asked just before a verification's record is written; an `Err` stops the
/// verification there, without a record (a verify worker whose claim on the backup
/// was taken over: another worker records it).
pub type RecordGate =
    Box<dyn FnOnce() -> futures::future::BoxFuture<'static, Result<()>> + Send + Sync>;

impl Verify {
    /// Verifies `backup` from `sink` on the server `scratch` points at, with the
    /// [standard verifiers](standard_verifiers).
    pub fn new(sink: Arc<dyn Sink>, backup: BackupRef, scratch: ConnParams) -> Self {
        Self {
            scope: Scope::current_or_new(),
            sink,
            backup,
            scratch,
            identities: None,
            dumper: None,
            verifiers: standard_verifiers(),
            pg_bin_dir: None,
            keep: false,
            progress: None,
            ephemeral_scratch: false,
            verified_by: None,
            tables: None,
            record_gate: None,
        }
    }

    /// The age identities that open an encrypted backup.
    pub fn identities(mut self, identities: Option<Identities>) -> Self {
        self.identities = identities;
        self
    }

    /// The dumper whose restore program applies the archive; default: the built-in
    /// one the manifest's format names.
    pub fn dumper(mut self, dumper: Arc<dyn Dumper>) -> Self {
        self.dumper = Some(dumper);
        self
    }

    /// Adds a verifier after the standard ones (an application invariant, …).
    pub fn verifier(mut self, verifier: Box<dyn Verifier>) -> Self {
        self.verifiers.push(verifier);
        self
    }

    /// Replaces the whole list of verifiers.
    pub fn verifiers(mut self, verifiers: Vec<Box<dyn Verifier>>) -> Self {
        self.verifiers = verifiers;
        self
    }

    /// The directory of PostgreSQL programs.
    pub fn pg_bin_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.pg_bin_dir = dir;
        self
    }

    /// Says the scratch server is an ephemeral cluster that lives for this run alone:
    /// only there are roles with SUPERUSER, REPLICATION or BYPASSRLS created when a
    /// backup needs them (on a shared scratch server such a backup is refused, as an
    /// error of the environment, not a verdict).
    pub fn ephemeral_scratch(mut self, ephemeral: bool) -> Self {
        self.ephemeral_scratch = ephemeral;
        self
    }

    /// Who verifies: the signing key the record will be signed with, named in it.
    pub fn verified_by(mut self, signer: Option<Signer>) -> Self {
        self.verified_by = signer;
        self
    }

    /// Asks `gate` just before the record is written: an `Err` from it is this
    /// operation's result, and nothing is recorded.
    pub fn record_gate(mut self, gate: RecordGate) -> Self {
        self.record_gate = Some(gate);
        self
    }

    /// Keeps the scratch database for inspection.
    pub fn keep(mut self, keep: bool) -> Self {
        self.keep = keep;
        self
    }

    /// Called with the dump bytes restored so far.
    pub fn progress(mut self, progress: Option<Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// The scope this operation belongs to: cancelling it stops the operation
    /// (its programs are killed, what it created is dropped) and makes
    /// [`run`](Self::run) return an [`ErrorKind::Cancelled`](crate::ErrorKind::Cancelled)
    /// error. By default, the scope it was created within, else one of its own.
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Proves only the tables `filter` selects (a rolling verification's share of
    /// a database too big to restore whole): they are restored with what they need
    /// into the scratch database and each is compared with the backup's fingerprint;
    /// the whole-database verifiers do not run. The report is recorded as a table
    /// proof (`<db>/<id>/tables/…`), which never counts as a verification of the
    /// whole backup.
    pub fn tables(mut self, filter: Filter) -> Self {
        self.tables = Some(filter);
        self
    }

    /// Verifies and records the report.
    pub async fn run(self) -> Result<Report> {
        let scope = self.scope.clone();
        scope.run(self.execute()).await
    }

    async fn execute(self) -> Result<Report> {
        // A manifest no trusted key signed (or one that names another backup's
        // objects) is refused before anything is restored, and nothing is recorded
        // beside it: it was not written by pgproof, so there is no backup to judge.
        let (manifest, manifest_sha256) = catalog::load_manifest(&*self.sink, &self.backup).await?;
        // The verifiers judge the settings too: they come out of their sealed object.
        let mut manifest = manifest;
        catalog::unseal(&mut manifest, &*self.sink, self.identities.as_ref()).await?;
        // A lease keeps prune away while this backup is restored and judged. It is
        // given back if the operation is cancelled too (a signal, a verify worker
        // whose claim was taken over), rather than left to protect the backup for a
        // day: even while it is being written, since a put whose caller was dropped
        // still lands (its request sent, its file linked), the release waits for it.
        let lease = BackupLease::new(
            &manifest.database,
            &manifest.backup_id,
            &format!("verify, pid {}", std::process::id()),
            LEASE_TTL,
        );
        let (taken, lease_undo) = self
            .scope
            .run_undoable(
                {
                    let (lease, sink) = (lease.clone(), self.sink.clone());
                    async move { lease.take(&*sink).await }
                },
                {
                    let (lease, sink) = (lease.clone(), self.sink.clone());
                    move |ended| async move {
                        ended.succeeded().await;
                        lease.release(&*sink).await;
                        Some("released the verification's lease".to_owned())
                    }
                },
            )
            .await;
        if let Err(e) = taken {
            // A write that failed may still have landed (its answer lost).
            lease.release(&*self.sink).await;
            lease_undo.keep();
            return Err(e);
        }
        // A rolling verification's scratch database is its own: a whole one of the
        // same backup may run beside it on a shared scratch server.
        let name = match &self.tables {
            None => scratch_database(&manifest.backup_id),
            Some(_) => format!(
                "{}_t{}",
                scratch_database(&manifest.backup_id),
                std::process::id()
            ),
        };
        let target = self.scratch.with_dbname(&name);
        let identities = self.identities.clone();
        let partial = self.tables.is_some();
        if partial {
            // A partial restore never replaces: a scratch database a dead run left
            // goes first.
            if let Err(e) = drop_restored(&target).await {
                lease.release(&*self.sink).await;
                lease_undo.keep();
                return Err(e);
            }
        }
        let mut restore = Restore::new(self.sink.clone(), manifest.clone(), target.clone())
            .identities(self.identities)
            .clean(!partial)
            .tables(self.tables.unwrap_or_default())
            // A scratch server is pgproof's own: it gets the roles the backup needs;
            // privileged ones only in a cluster that lives for this run alone.
            .create_roles(true)
            .create_privileged_roles(self.ephemeral_scratch)
            .pg_bin_dir(self.pg_bin_dir)
            .progress(self.progress);
        if let Some(dumper) = self.dumper {
            restore = restore.dumper(dumper);
        }
        let proven = Proof {
            sink: &*self.sink,
            manifest: &manifest,
            manifest_sha256: &manifest_sha256,
            verifiers: &self.verifiers,
        };
        // Registered for the whole verification: an interruption while the verifiers
        // run must drop it too.
        let scratch = drop_on_cancel(&self.scope, &target);
        let proven = proven
            .restore_and_verify(restore, &target, !self.keep)
            .await;
        scratch.keep();
        lease_undo.keep();
        lease.release(&*self.sink).await;
        let (checks, restore_ms) = proven?;
        // A backup pruned under a verification that started before its lease was
        // seen is gone, not damaged: that is no verdict.
        if checks.iter().any(|c| c.name == "archive" && !c.passed)
            && catalog::tombstone(&*self.sink, &manifest.database, &manifest.backup_id)
                .await?
                .is_some()
        {
            return Err(Error::not_found(format!(
                "backup {} was pruned while it was being verified; verify another one",
                manifest.backup_id
            )));
        }
        let mut checks = checks;
        if !partial {
            checks.extend(file_checks(&*self.sink, &manifest, identities.as_ref()).await?);
        }
        for check in checks
            .iter_mut()
            .filter(|c| partial && c.name == "archive" && c.passed)
        {
            check.detail = "every byte the selected tables needed was checked against the manifest's hashes before pg_restore read it; the rest was not read".into();
        }
        let mut report = new_report(&manifest, &manifest_sha256, &target, checks, restore_ms);
        report.verified_by = self.verified_by;
        if let Some(gate) = self.record_gate {
            gate().await?;
        }
        if partial {
            write_table_proof(&*self.sink, &report).await?;
        } else {
            write_report(&*self.sink, &report).await?;
        }
        Ok(report)
    }
}

/// One check per file set, `files:<name>`: the archive is what the manifest recorded
/// and every entry has its recorded content and mode.
async fn file_checks(
    sink: &dyn Sink,
    manifest: &Manifest,
    identities: Option<&Identities>,
) -> Result<Vec<Check>> {
    let mut checks = Vec::new();
    for set in &manifest.files {
        let name = format!("files:{}", set.name);
        let tar = match set.fetch(sink, identities).await {
            Ok(tar) => tar,
            Err(e) if e.about_backup() || e.kind() == ErrorKind::NotFound => {
                checks.push(Check::fail(name, e.to_string()));
                continue;
            }
            Err(e) => return Err(e),
        };
        let differences = set.differences(&tar)?;
        checks.push(Check::judge(
            name,
            differences.is_empty(),
            if differences.is_empty() {
                format!(
                    "{} entries with their recorded content and modes (archive sha256 {})",
                    set.entries.len(),
                    set.object.stored_sha256
                )
            } else {
                differences.join("; ")
            },
        ));
    }
    Ok(checks)
}

/// The scratch database name for a backup: `pgproof_verify_<id>`, lowercased, with
/// every character other than a letter or digit replaced by `_`.
pub fn scratch_database(backup_id: &str) -> String {
    let id: String = backup_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("pgproof_verify_{id}")
}

/// What a restored database is judged against, and by whom.
pub(crate) struct Proof<'a> {
    pub(crate) sink: &'a dyn Sink,
    pub(crate) manifest: &'a Manifest,
    pub(crate) manifest_sha256: &'a str,
    pub(crate) verifiers: &'a [Box<dyn Verifier>],
}

impl Proof<'_> {
    /// Runs `restore` (whose target is `target`), records the `archive` and `restore`
    /// checks it decides, runs the verifiers on the result and drops the target
    /// afterwards if asked. A verdict on the backup (a damaged object, a restore
    /// program that rejects an intact one) becomes a failed check; anything else is
    /// an `Err`.
    pub(crate) async fn restore_and_verify(
        &self,
        restore: Restore,
        target: &ConnParams,
        drop_after: bool,
    ) -> Result<(Vec<Check>, Option<u64>)> {
        let o = &self.manifest.object;
        let archive_ok = Check::pass(
            "archive",
            if let Some(c) = &self.manifest.chunks {
                format!(
                    "{} objects and {} files in {} shared chunks ({} stored bytes, {} dump bytes), each object's and chunk's sha256 as its manifest and chunk list (sha256 {}) recorded",
                    self.manifest.parts.len() + 1,
                    c.files,
                    c.chunks,
                    self.manifest.dump_stored_bytes(),
                    self.manifest.dump_raw_bytes(),
                    c.list.stored_sha256
                )
            } else if self.manifest.parts.is_empty() {
                format!(
                    "{} stored bytes (sha256 {}) and {} dump bytes (sha256 {}) as recorded",
                    o.stored_bytes, o.stored_sha256, o.raw_bytes, o.raw_sha256
                )
            } else {
                format!(
                    "{} objects, {} stored bytes and {} dump bytes, each object's sha256 as recorded",
                    self.manifest.parts.len() + 1,
                    self.manifest.dump_stored_bytes(),
                    self.manifest.dump_raw_bytes()
                )
            },
        );
        // Tables are fingerprinted as their data commits where the restore shows
        // them before it ends; kept only if it then succeeds.
        let restored = AtomicBool::new(false);
        let restore_ended = tokio::sync::Notify::new();
        let (loading_tx, loading_rx) = tokio::sync::oneshot::channel();
        let early = async {
            let method = self
                .manifest
                .fingerprint
                .as_ref()
                .and_then(|f| Method::parse(&f.method));
            // Never waits past the restore, whatever became of the signal.
            let started = tokio::select! {
                biased;
                started = loading_rx => started.ok(),
                () = restore_ended.notified() => None,
            };
            match (method, started) {
                (Some(method), Some(restore_connections)) => {
                    let hashing = Hashing {
                        method,
                        workers: hashing_connections(),
                        beside: restore_connections,
                    };
                    fingerprint::while_restoring(target, hashing, &restored).await
                }
                _ => BTreeMap::new(),
            }
        };
        let restoring = async {
            let outcome = restore.scratch(loading_tx).run().await;
            restored.store(true, Ordering::Release);
            restore_ended.notify_one();
            outcome
        };
        let (outcome, hashed_while_restoring) = futures::future::join(restoring, early).await;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) if e.kind() == ErrorKind::Integrity => {
                return Ok((vec![Check::fail("archive", e.to_string())], None));
            }
            Err(e) if e.kind() == ErrorKind::Rejected => {
                return Ok((
                    vec![archive_ok, Check::fail("restore", e.to_string())],
                    None,
                ));
            }
            Err(e) => return Err(e),
        };
        let hashed_while_restoring = fingerprint::untouched(target, hashed_while_restoring).await;
        let mut checks = vec![
            archive_ok,
            Check::pass(
                "restore",
                format!(
                    "restored into {} in {:.2}s{}",
                    target.describe(),
                    outcome.duration.as_secs_f64(),
                    match hashed_while_restoring.len() {
                        0 => String::new(),
                        n => format!("; {n} table(s) fingerprinted while it ran"),
                    }
                ),
            ),
        ];
        // A partial restore was proven table by table as it ran; the verifiers judge
        // whole databases only.
        let ran = match &outcome.proof {
            Some(proof) => Ok(proof.checks.clone()),
            None => self.run_verifiers(target, &hashed_while_restoring).await,
        };
        if drop_after && let Err(e) = drop_restored(target).await {
            tracing::error!(error = %e, database = %target.dbname(), "could not drop the scratch database; drop it by hand");
        }
        checks.extend(ran?);
        Ok((checks, Some(outcome.duration.as_millis() as u64)))
    }

    pub(crate) async fn run_verifiers(
        &self,
        target: &ConnParams,
        hashed_while_restoring: &BTreeMap<String, TableFingerprint>,
    ) -> Result<Vec<Check>> {
        let client = target.connect().await?;
        let restored = Restored {
            target: Some(target),
            manifest: self.manifest,
            manifest_sha256: self.manifest_sha256,
            sink: self.sink,
            client: &client,
            hashed_while_restoring,
        };
        let mut checks = Vec::new();
        for verifier in self.verifiers {
            match verifier.verify(&restored).await {
                Ok(found) => checks.extend(found),
                Err(e) => {
                    return Err(Error::new(
                        e.kind(),
                        format!("verifier {} could not run: {e}", verifier.name()),
                    )
                    .with_operation("verify"));
                }
            }
        }
        Ok(checks)
    }
}

pub(crate) fn new_report(
    manifest: &Manifest,
    manifest_sha256: &str,
    target: &ConnParams,
    checks: Vec<Check>,
    restore_ms: Option<u64>,
) -> Report {
    Report {
        backup_id: manifest.backup_id.clone(),
        database: manifest.database.clone(),
        manifest_sha256: manifest_sha256.to_owned(),
        verified_at: Timestamp::now(),
        passed: checks.iter().all(|c| c.passed),
        restore_ms,
        restored_into: target.describe(),
        tool: ToolInfo::current(),
        checks,
        verified_by: None,
    }
}

/// Records that `tables` of `backup` were attempted by a rolling verification but
/// not proven, and `why` (its budget ran out; they cannot be restored in part): the
/// next run takes other tables first, and these keep whatever result they had. No
/// verdict on the backup.
pub async fn record_unfinished(
    sink: &dyn Sink,
    backup: &BackupRef,
    tables: &[String],
    why: &str,
    verified_by: Option<Signer>,
) -> Result<()> {
    let (manifest, manifest_sha256) = catalog::load_manifest(sink, backup).await?;
    let checks = tables
        .iter()
        .map(|t| {
            Check::fail(
                format!("{}{t}", TableProof::UNFINISHED_CHECK),
                format!("not proven: {why}"),
            )
        })
        .collect();
    let mut report = Report {
        backup_id: manifest.backup_id.clone(),
        database: manifest.database.clone(),
        manifest_sha256,
        verified_at: Timestamp::now(),
        passed: false,
        restore_ms: None,
        restored_into: String::new(),
        tool: ToolInfo::current(),
        checks,
        verified_by: None,
    };
    report.verified_by = verified_by;
    write_proof(sink, &report, TableProof::UNFINISHED).await
}

/// Records a partial verification's report as a table proof.
async fn write_table_proof(sink: &dyn Sink, report: &Report) -> Result<()> {
    write_proof(
        sink,
        report,
        if report.passed { "passed" } else { "failed" },
    )
    .await
}

async fn write_proof(sink: &dyn Sink, report: &Report, verdict: &str) -> Result<()> {
    let name = TableProof::record_name(report.verified_at, verdict);
    let key = catalog::layout::table_proof(&report.database, &report.backup_id, &name);
    let mut body = serde_json::to_vec_pretty(report)
        .map_err(|e| Error::tool(format!("cannot serialize the table proof: {e}")))?;
    body.push(b'\n');
    sink.put_bytes(&key, Bytes::from(body)).await?;
    Ok(())
}

pub(crate) async fn write_report(sink: &dyn Sink, report: &Report) -> Result<()> {
    let summary = Verification {
        verified_at: report.verified_at,
        passed: report.passed,
        restore_ms: report.restore_ms,
    };
    let key = catalog::layout::record(&report.database, &report.backup_id, &summary.record_name());
    let mut body = serde_json::to_vec_pretty(report)
        .map_err(|e| Error::tool(format!("cannot serialize the verification record: {e}")))?;
    body.push(b'\n');
    sink.put_bytes(&key, Bytes::from(body)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_names_are_safe_identifiers() {
        assert_eq!(
            scratch_database("20261123T063151.042Z-3fa9"),
            "pgproof_verify_20261123t063151_042z_3fa9"
        );
    }
}

//! Proof: the [`Verifier`] trait, its implementations, and verification reports.
//!
//! A verifier looks at a database restored from a backup and at the backup's
//! manifest, and reports checks with figures. The standard set: archive integrity
//! (hashes and sizes, checked while streaming the restore), fingerprint comparison
//! (table by table, sequences, large objects) and the audit chain.

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::audit;
use crate::error::Result;
use crate::fingerprint::{self, Fingerprint};
use crate::manifest::{Manifest, ToolInfo};
use crate::pipeline::RestoreOutcome;

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Short name, e.g. `fingerprint:public.orders`.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// Figures or the precise difference (expected vs found).
    pub detail: String,
}

impl Check {
    /// A passed check.
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            passed: true,
            detail: detail.into(),
        }
    }

    /// A failed check.
    pub fn fail(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            passed: false,
            detail: detail.into(),
        }
    }
}

/// A database restored from a backup, as verifiers see it.
pub struct Restored<'a> {
    /// The backup's manifest.
    pub manifest: &'a Manifest,
    /// A connection to the restored database.
    pub client: &'a Client,
    /// How the restore went.
    pub restore: &'a RestoreOutcome,
}

/// Checks a restored database against what the manifest promises.
///
/// An implementation:
/// - MUST return one [`Check`] per thing it examined, passed or not, with figures, so a
///   report shows what was proven and not only what failed;
/// - MUST describe a failure precisely (which table or row, expected vs found);
/// - MUST NOT modify the restored database;
/// - MUST return `Err` only when it could not run (connection lost, …), never for a
///   failed check.
#[async_trait]
pub trait Verifier: Send + Sync {
    /// Name for reports, e.g. `fingerprint`.
    fn name(&self) -> &'static str;

    /// Runs the checks.
    async fn verify(&self, restored: &Restored<'_>) -> Result<Vec<Check>>;
}

/// The verifiers `verify` and `drill` run, in order.
pub fn standard_verifiers() -> Vec<Box<dyn Verifier>> {
    vec![
        Box::new(ArchiveIntegrity),
        Box::new(FingerprintMatch),
        Box::new(AuditChain),
    ]
}

/// Stored and dump hashes and sizes. The restore pipeline checks them while
/// streaming and refuses to commit on a mismatch; this verifier reports the figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct ArchiveIntegrity;

#[async_trait]
impl Verifier for ArchiveIntegrity {
    fn name(&self) -> &'static str {
        "archive"
    }

    async fn verify(&self, r: &Restored<'_>) -> Result<Vec<Check>> {
        let o = &r.manifest.object;
        let stored = Check::pass(
            "archive:stored",
            format!(
                "{} bytes, sha256 {} as recorded",
                o.stored_bytes, o.stored_sha256
            ),
        );
        let dump = if r.restore.raw_bytes == o.raw_bytes {
            Check::pass(
                "archive:dump",
                format!("{} bytes, sha256 {} as recorded", o.raw_bytes, o.raw_sha256),
            )
        } else {
            Check::fail(
                "archive:dump",
                format!(
                    "{} bytes recorded, {} restored",
                    o.raw_bytes, r.restore.raw_bytes
                ),
            )
        };
        Ok(vec![stored, dump])
    }
}

/// Recomputes the fingerprint on the restored database and compares it with the
/// one taken in the dump's snapshot.
#[derive(Clone, Copy, Debug, Default)]
pub struct FingerprintMatch;

#[async_trait]
impl Verifier for FingerprintMatch {
    fn name(&self) -> &'static str {
        "fingerprint"
    }

    async fn verify(&self, r: &Restored<'_>) -> Result<Vec<Check>> {
        let Some(expected) = &r.manifest.fingerprint else {
            return Ok(vec![Check::fail(
                "fingerprint",
                "the manifest holds no fingerprint, so the restore cannot be compared",
            )]);
        };
        if expected.method != fingerprint::METHOD {
            return Ok(vec![Check::fail(
                "fingerprint",
                format!(
                    "the manifest's fingerprint method {} is not {}; verify with the pgproof version that wrote it",
                    expected.method,
                    fingerprint::METHOD
                ),
            )]);
        }
        let found = Fingerprint::compute(r.client).await?;
        let differences = expected.differences(&found);
        let mut checks = Vec::new();
        for (name, table) in &expected.tables {
            if !differences.iter().any(|d| &d.subject == name) {
                checks.push(Check::pass(
                    format!("fingerprint:{name}"),
                    format!("{} rows, hash {}", table.rows, table.hash),
                ));
            }
        }
        for d in &differences {
            checks.push(Check::fail(
                format!("fingerprint:{}", d.subject),
                format!("expected {}, found {}", d.expected, d.found),
            ));
        }
        if !differences
            .iter()
            .any(|d| d.subject.starts_with("sequence "))
        {
            checks.push(Check::pass(
                "fingerprint:sequences",
                format!(
                    "{} sequences at their recorded values",
                    expected.sequences.len()
                ),
            ));
        }
        if expected.large_objects == found.large_objects {
            checks.push(Check::pass(
                "fingerprint:large-objects",
                format!("{} large objects", found.large_objects),
            ));
        }
        Ok(checks)
    }
}

/// The audit chain: row count and head hash equal to the dump's snapshot, the
/// chain's own verify function clean, every row walked.
#[derive(Clone, Copy, Debug, Default)]
pub struct AuditChain;

#[async_trait]
impl Verifier for AuditChain {
    fn name(&self) -> &'static str {
        "audit-chain"
    }

    async fn verify(&self, r: &Restored<'_>) -> Result<Vec<Check>> {
        let Some(expected) = r
            .manifest
            .fingerprint
            .as_ref()
            .and_then(|f| f.audit_chain.as_ref())
        else {
            return Ok(Vec::new());
        };
        let Some(report) = audit::verify_chain(r.client).await? else {
            return Ok(vec![Check::fail(
                "audit-chain",
                "the backup had an audit chain but the restored database has none",
            )]);
        };
        let found = audit::chain_state(r.client).await?;
        let mut checks = Vec::new();
        let (rows, head) = found
            .as_ref()
            .map_or((-1, String::new()), |c| (c.rows, c.head_hash.clone()));
        checks.push(if rows == expected.rows {
            Check::pass("audit-chain:rows", format!("{rows} rows"))
        } else {
            Check::fail(
                "audit-chain:rows",
                format!("expected {} rows, found {rows}", expected.rows),
            )
        });
        checks.push(if head == expected.head_hash {
            Check::pass(
                "audit-chain:head",
                format!("head {head} at seq {}", expected.last_seq),
            )
        } else {
            Check::fail(
                "audit-chain:head",
                format!("expected head {}, found {head}", expected.head_hash),
            )
        });
        checks.push(match &report.first_break {
            None if report.head_matches => Check::pass(
                "audit-chain:verify",
                format!("chain intact through seq {}", report.last_seq),
            ),
            None => Check::fail(
                "audit-chain:verify",
                format!(
                    "chain ends at seq {} but its head says seq {}: rows were cut from the tail",
                    report.last_seq, report.head_seq
                ),
            ),
            Some(b) => Check::fail(
                "audit-chain:verify",
                format!("first break at seq {} (id {}): {}", b.seq, b.id, b.reason),
            ),
        });
        checks.push(if report.rows_walked == expected.rows {
            Check::pass(
                "audit-chain:walked",
                format!("{} rows walked", report.rows_walked),
            )
        } else {
            Check::fail(
                "audit-chain:walked",
                format!(
                    "walked {} rows, expected {}",
                    report.rows_walked, expected.rows
                ),
            )
        });
        Ok(checks)
    }
}

/// The verification record written next to a manifest: append-only, one per run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The backup verified.
    pub backup_id: String,
    /// Its database.
    pub database: String,
    /// When verification finished.
    pub verified_at: Timestamp,
    /// Every check passed.
    pub passed: bool,
    /// How long the restore took: the recovery time actually measured.
    pub restore_ms: Option<u64>,
    /// Where it was restored (no credentials).
    pub restored_into: String,
    /// The program that verified.
    pub tool: ToolInfo,
    /// Every check, passed or failed.
    pub checks: Vec<Check>,
}

impl Report {
    /// Failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.passed)
    }
}

//! Proof: the [`Verifier`] trait, the built-in verifiers and verification reports.
//!
//! A verifier looks at a database restored from a backup, at the backup's manifest and
//! at the sink's catalog, and reports named [`Check`]s with figures. Each built-in
//! verifier proves one thing: [`TableFingerprints`], [`Sequences`], [`LargeObjects`],
//! [`AuditChain`], [`ManifestChain`], [`DatabaseProperties`], [`Roles`],
//! [`Invariants`]. The integrity of the stored object and whether it
//! restores at all are decided by the restore itself (a damaged object never reaches
//! the restore program) and are recorded as the `archive` and `restore` checks by
//! [`ops::Verify`](crate::ops::Verify). A library user adds an application-level check
//! by implementing [`Verifier`] and passing it to
//! [`Verify::verifier`](crate::ops::Verify::verifier); the conformance suite is
//! `testkit::check_contract` (feature `testkit`).

pub mod amcheck;
mod audit_chain;
mod contents;
mod manifest_chain;
mod properties;
#[cfg(feature = "testkit")]
pub mod testkit;

use std::collections::BTreeMap;

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

pub use amcheck::Amcheck;
pub use audit_chain::AuditChain;
pub(crate) use contents::compare_relations;
pub use contents::{LargeObjects, Sequences, TableFingerprints};
pub use manifest_chain::ManifestChain;
pub use properties::{DatabaseProperties, Invariants, Roles};

use crate::catalog::{Manifest, ToolInfo};
use crate::error::Result;
use crate::evidence::fingerprint::TableFingerprint;
use crate::evidence::invariant::Invariant;
use crate::pg::ConnParams;
use crate::sink::Sink;

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

    /// A check that passes when `passed`, with the detail for either case.
    pub fn judge(name: impl Into<String>, passed: bool, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            passed,
            detail: detail.into(),
        }
    }
}

/// A database restored from a backup, with the evidence it is judged against.
pub struct Restored<'a> {
    /// The backup's manifest, as stored.
    pub manifest: &'a Manifest,
    /// sha256 of the manifest's stored bytes.
    pub manifest_sha256: &'a str,
    /// The sink the backup came from (for catalog-level evidence).
    pub sink: &'a dyn Sink,
    /// A connection to the restored database.
    pub client: &'a Client,
    /// Where the restored database is, for verifiers that open connections of their
    /// own (the table fingerprints, in parallel); `None`: `client` only.
    pub target: Option<&'a ConnParams>,
    /// Tables already fingerprinted while the restore ran, each in a snapshot that saw
    /// its data committed (a restore in several transactions); empty otherwise.
    pub hashed_while_restoring: &'a BTreeMap<String, TableFingerprint>,
}

/// Checks a restored database against what a backup's evidence promises.
///
/// An implementation:
/// - MUST return at least one [`Check`] each time it examined something, passed or
///   not, with figures, so a report shows what was proven and not only what failed;
///   it MAY return none when the backup holds nothing it can judge (no audit chain);
/// - MUST name every check `name()` or `name():<subject>`, each name once per run;
/// - MUST describe a failure precisely (which table or row, expected vs found);
/// - MUST NOT modify the restored database, and MUST give the same checks when run
///   twice on the same database;
/// - MUST return `Err` only when it could not run (connection lost, …), never for a
///   failed check: an `Err` is about the environment, a failed check is a verdict;
/// - MUST NOT contain a check that cannot fail (a value compared with itself).
#[async_trait]
pub trait Verifier: Send + Sync {
    /// Name for reports, e.g. `fingerprint`.
    fn name(&self) -> &str;

    /// Runs the checks.
    async fn verify(&self, restored: &Restored<'_>) -> Result<Vec<Check>>;
}

/// The verifiers `verify` and `drill` run, in order.
pub fn standard_verifiers() -> Vec<Box<dyn Verifier>> {
    standard_verifiers_with(Vec::new())
}

/// [`standard_verifiers`], with invariants configured now run beside those the
/// backup recorded.
pub fn standard_verifiers_with(invariants: Vec<Invariant>) -> Vec<Box<dyn Verifier>> {
    standard_verifiers_sharing(&ManifestChain::default(), invariants)
}

/// [`standard_verifiers_with`], the manifest chain checked by a clone of `chain`: one
/// instance shared by the verifications of a run reads each manifest once.
pub fn standard_verifiers_sharing(
    chain: &ManifestChain,
    invariants: Vec<Invariant>,
) -> Vec<Box<dyn Verifier>> {
    vec![
        Box::new(chain.clone()),
        Box::new(TableFingerprints),
        Box::new(Sequences),
        Box::new(LargeObjects),
        Box::new(AuditChain),
        Box::new(DatabaseProperties),
        Box::new(Roles),
        Box::new(Invariants::new(invariants)),
    ]
}

/// The verification record written next to a manifest: append-only, one per run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The backup verified.
    pub backup_id: crate::catalog::BackupId,
    /// Its database.
    pub database: String,
    /// sha256 of the manifest's signed content this verification read: the record
    /// is about that manifest and no other (an edited or replaced one is not proven
    /// by it).
    #[serde(default)]
    pub manifest_sha256: String,
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
    /// The key the verifying host signs its records with (the record's signature is
    /// the proof; this says it in the content too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_by: Option<crate::catalog::trust::Signer>,
}

impl Report {
    /// Failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.passed)
    }
}

/// `Ok` only if every report passed; otherwise an [`Integrity`](crate::ErrorKind::Integrity)
/// error naming the backups (and, for one, the checks) that failed.
pub fn verdict(reports: &[Report]) -> Result<()> {
    let failed: Vec<&Report> = reports.iter().filter(|r| !r.passed).collect();
    match failed.as_slice() {
        [] => Ok(()),
        [one] => Err(crate::Error::integrity(format!(
            "backup {} failed verification: {}",
            one.backup_id,
            one.failures()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        many => Err(crate::Error::integrity(format!(
            "{} of {} backups failed verification: {}",
            many.len(),
            reports.len(),
            many.iter()
                .map(|r| r.backup_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

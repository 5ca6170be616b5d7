//! `pgproof verify`: restore into a scratch database, compare, record.

use std::sync::Arc;

use pgproof_core::catalog::{BackupRef, Inventory};
use pgproof_core::ops::Verify;
use pgproof_core::verify::{Amcheck, ManifestChain, Report, standard_verifiers_sharing};
use pgproof_core::{Error, Result, Sink};

use crate::args::Annotations;
use crate::config::{Config, parse_duration};
use crate::engines::{identities, scratch_server};
use crate::render::{ProgressOutput, print_report};

pub async fn verify_all(
    config: &Config,
    sink: Arc<dyn Sink>,
    targets: &[BackupRef],
    keep: bool,
    json: bool,
    progress: &ProgressOutput,
) -> Result<Vec<Report>> {
    if targets.is_empty() {
        return Err(Error::not_found(format!(
            "no backup to verify in {}",
            sink.describe()
        )));
    }
    let identities = identities(config)?;
    let (scratch, _cluster) = scratch_server(config, keep)?;
    let mut reports: Vec<Report> = Vec::new();
    // One chain checker for the run: each manifest is read once, however many backups.
    let chain = ManifestChain::default();
    for target in targets {
        let (bar, callback) = progress.start(format!("verify {}", target.backup_id));
        let report = Verify::new(sink.clone(), target.clone(), scratch.clone())
            .identities(identities.clone())
            .pg_bin_dir(config.source.pg_bin_dir.clone())
            .verifiers({
                let mut verifiers =
                    standard_verifiers_sharing(&chain, config.verify.invariants.clone());
                if config.verify.amcheck {
                    verifiers.push(Box::new(Amcheck));
                }
                verifiers
            })
            .keep(keep)
            .progress(callback)
            .run()
            .await;
        bar.finish_and_clear();
        let report = report?;
        if !json {
            print_report(&report, Annotations::None);
        }
        reports.push(report);
    }
    Ok(reports)
}

/// Success only if every report passed.
pub fn verification_outcome(reports: &[Report]) -> Result<()> {
    let failed: Vec<&Report> = reports.iter().filter(|r| !r.passed).collect();
    match failed.as_slice() {
        [] => Ok(()),
        [one] => Err(Error::integrity(format!(
            "backup {} failed verification: {}",
            one.backup_id,
            one.failures()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        many => Err(Error::integrity(format!(
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

/// The backups whose newest passing verification is older than `age` (or that never
/// passed one), least recently proven first, at most `limit`.
pub async fn stale_backups(
    sink: &dyn Sink,
    database: Option<&str>,
    age: &str,
    limit: Option<usize>,
) -> Result<Vec<BackupRef>> {
    let age = parse_duration("--stale", age)?;
    let now = crate::commands::upkeep::now()?;
    let inventory = Inventory::load(sink, database).await?;
    let mut stale: Vec<(Option<jiff::Timestamp>, BackupRef)> = Vec::new();
    for (db, part) in &inventory.databases {
        for entry in part.backups.iter().filter(|b| b.manifest.is_ok()) {
            let proven = entry.proven().map(|v| v.verified_at);
            // Rotation goes by the latest attempt, so backups that keep failing do
            // not crowd out the rest.
            let attempted = entry.verifications.last().map(|v| v.verified_at);
            if proven.is_none_or(|at| now.duration_since(at) > age) {
                stale.push((
                    attempted,
                    BackupRef {
                        database: db.clone(),
                        backup_id: entry.backup_id.clone(),
                    },
                ));
            }
        }
    }
    // Never attempted first (None sorts first), then the oldest attempt, then the
    // oldest backup.
    stale.sort_by(|a, b| (a.0, &a.1.backup_id).cmp(&(b.0, &b.1.backup_id)));
    Ok(stale
        .into_iter()
        .map(|(_, b)| b)
        .take(limit.unwrap_or(usize::MAX))
        .collect())
}

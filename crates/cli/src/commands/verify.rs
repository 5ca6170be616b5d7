//! `pgproof verify`: restore into a scratch database, compare, record.

use std::sync::Arc;

use pgproof_core::catalog::BackupRef;
use pgproof_core::ops::Verify;
use pgproof_core::verify::{Report, standard_verifiers_with};
use pgproof_core::{Error, Result, Sink};

use crate::args::Annotations;
use crate::config::Config;
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
    for target in targets {
        let (bar, callback) = progress.start(format!("verify {}", target.backup_id));
        let report = Verify::new(sink.clone(), target.clone(), scratch.clone())
            .identities(identities.clone())
            .pg_bin_dir(config.source.pg_bin_dir.clone())
            .verifiers(standard_verifiers_with(config.verify.invariants.clone()))
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

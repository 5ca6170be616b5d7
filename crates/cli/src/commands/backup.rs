//! `pgproof backup`: one backup per configured database, optionally verified.

use std::time::Duration;

use pgproof_core::catalog::{BackupRef, Manifest};
use pgproof_core::ops::Backup;
use pgproof_core::{Error, Result};

use crate::commands::verify::verify_all;
use crate::config::Config;
use crate::engines::{open_sink, recipients, source_databases};
use crate::hooks::{BackupSummary, FailedSummary};
use crate::render::{ProgressOutput, error_line, human_bytes, outln, print_json};
use pgproof_core::verify::verdict;

/// What a run committed and what failed, as it goes (for hooks and notifications).
#[derive(Debug, Default)]
pub struct RunLog {
    /// Committed backups.
    pub backups: Vec<BackupSummary>,
    /// Failed databases.
    pub failed: Vec<FailedSummary>,
}

/// How a backup run goes, from its flags.
pub struct Options {
    /// Print JSON.
    pub json: bool,
    /// Verify each backup after taking it.
    pub then_verify: bool,
    /// amcheck the source first.
    pub amcheck: bool,
}

pub async fn backup(
    config: &Config,
    options: Options,
    progress: &ProgressOutput,
    log: &mut RunLog,
) -> Result<()> {
    let Options {
        json,
        then_verify,
        amcheck,
    } = options;
    let sink = open_sink(config)?;
    let recipients = recipients(config)?;
    let (params, databases) = source_databases(config).await?;
    let mut committed: Vec<Manifest> = Vec::new();
    let mut failed: Vec<(String, Error)> = Vec::new();
    for database in &databases {
        let (bar, callback) = progress.start(format!("backup {database}"));
        let mut backup = Backup::new(params.with_dbname(database), sink.clone())
            .dumper(config.dump.dumper())
            .pg_bin_dir(config.source.pg_bin_dir.clone())
            .lock_wait(Duration::from_secs(config.dump.lock_wait_timeout_secs))
            .statement_timeout(Duration::from_secs(config.dump.statement_timeout_secs))
            .invariants(config.verify.invariants.clone())
            .files(config.files.clone())
            .amcheck(amcheck)
            .stage_dir(config.dump.stage_dir.clone())
            .alert_policy(config.alerts)
            .started_at(crate::commands::upkeep::injected_now()?)
            .progress(callback);
        backup = match &recipients {
            Some(r) => backup.recipients(r.clone()),
            None => backup.unencrypted(),
        };
        let result = backup.run().await;
        bar.finish_and_clear();
        match result {
            Ok(m) => {
                if !json {
                    outln!(
                        "{}  {}  {}  {} -> {} stored in {:.1}s",
                        m.backup_id,
                        m.database,
                        m.format,
                        human_bytes(m.dump_raw_bytes()),
                        human_bytes(m.dump_stored_bytes()),
                        m.duration_ms as f64 / 1000.0
                    );
                    for alert in &m.alerts {
                        outln!("{}  ALERT  {}", m.database, alert.detail);
                    }
                }
                log.backups.push(BackupSummary {
                    database: m.database.clone(),
                    backup_id: m.backup_id.clone(),
                    stored_bytes: m.dump_stored_bytes(),
                });
                committed.push(m);
            }
            Err(e) => {
                // With one database the closing error line says it all; with several,
                // each failure is logged as it happens and summed up at the end.
                if databases.len() > 1 {
                    tracing::error!(database = %database, error = %error_line(&e), "backup failed");
                }
                if !json {
                    outln!("{database}  FAILED  {}", error_line(&e));
                }
                log.failed.push(FailedSummary {
                    database: database.clone(),
                    error: error_line(&e),
                });
                failed.push((database.clone(), e));
            }
        }
    }
    // Failed databases are listed beside the committed manifests, so a script sees
    // what failed without parsing stderr.
    let failures: Vec<serde_json::Value> = failed
        .iter()
        .map(|(database, e)| {
            serde_json::json!({
                "database": database,
                "status": "failed",
                "kind": e.kind().as_str(),
                "error": error_line(e),
            })
        })
        .collect();
    let outcome = summarize(failed, databases.len());
    if then_verify && !committed.is_empty() {
        let targets: Vec<BackupRef> = committed.iter().map(BackupRef::of).collect();
        let reports = verify_all(config, sink, &targets, false, json, progress).await?;
        if json {
            print_json(&serde_json::json!({
                "backups": committed,
                "failed": failures,
                "reports": reports
            }))?;
        }
        return outcome.and_then(|()| verdict(&reports));
    }
    if json {
        let mut entries: Vec<serde_json::Value> = committed
            .iter()
            .map(serde_json::to_value)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::tool(format!("cannot render the manifests as JSON: {e}")))?;
        entries.extend(failures);
        print_json(&entries)?;
    }
    outcome
}

/// One database's error as it is, or for several, which failed and the first error.
fn summarize(mut failed: Vec<(String, Error)>, attempted: usize) -> Result<()> {
    if failed.is_empty() {
        return Ok(());
    }
    if attempted == 1 {
        return Err(failed.remove(0).1);
    }
    let names: Vec<&str> = failed.iter().map(|(db, _)| db.as_str()).collect();
    let (_, first) = &failed[0];
    Err(Error::tool(format!(
        "{} of {attempted} backups failed ({}); first: {}",
        failed.len(),
        names.join(", "),
        error_line(first)
    )))
}

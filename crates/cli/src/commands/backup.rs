//! `pgproof backup`: the library's nightly run over the configured databases, with
//! the config's hooks, replicas and retention; this file maps flags and renders.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use indicatif::ProgressBar;
use pgproof_core::catalog::BackupRef;
use pgproof_core::ops::{
    Backup, ClusterCapture, NightlyRun, RunEvent, RunHooks, RunOutcome, Verify,
};
use pgproof_core::scratch::EphemeralCluster;
use pgproof_core::verify::{Amcheck, ManifestChain, standard_verifiers_sharing};
use pgproof_core::{Error, Result};

use crate::args::Annotations;
use crate::config::{Config, Databases};
use crate::engines::{
    identities, keyring, open_sink, open_sink_with, recipients, scratch_server, source_databases,
    source_params,
};
use crate::hooks::{self, BackupSummary, FailedSummary, RunSummary};
use crate::render::{ProgressOutput, error_line, human_bytes, outln, print_json, print_report};

/// How a backup run goes, from its flags.
pub struct Options {
    /// Print JSON.
    pub json: bool,
    /// Verify each backup after taking it.
    pub then_verify: bool,
    /// amcheck the source first.
    pub amcheck: bool,
    /// Prune by `[retention]` after a run in which everything succeeded.
    pub prune: bool,
}

pub async fn backup(config: &Config, options: Options, progress: ProgressOutput) -> Result<()> {
    let hooks = Arc::new(ConfigHooks::new(config));
    let run = match nightly_run(config, &options, progress) {
        Ok(run) => run,
        // The run cannot even be set up (a key file missing): the after hook and the
        // webhook still hear of it.
        Err(e) => {
            let result = Err(e);
            hooks.after(&RunOutcome::default(), &result).await;
            return result;
        }
    };
    let (outcome, result) = run.hooks(hooks).run().await;
    if options.json {
        print_outcome_json(&outcome, options.then_verify)?;
    }
    result
}

fn nightly_run(config: &Config, options: &Options, progress: ProgressOutput) -> Result<NightlyRun> {
    let sink = open_sink(config)?;
    let recipients = recipients(config)?;
    // A run over every database also stores the server's globals.
    let cluster = match config.source.databases {
        Databases::All(_) => {
            let mut params = source_params(config)?;
            if let Some(secs) = config.source.connect_timeout_secs {
                params = params.with_connect_timeout(Duration::from_secs(secs));
            }
            Some(
                ClusterCapture::new(params)
                    .recipients(recipients.clone())
                    .passwords(config.globals.passwords),
            )
        }
        _ => None,
    };
    let bar: Arc<Mutex<Option<ProgressBar>>> = Arc::default();
    let progress = Arc::new(progress);
    let backup_for = {
        let (config, sink, bar, progress) =
            (config.clone(), sink.clone(), bar.clone(), progress.clone());
        let started_at = crate::commands::upkeep::injected_now()?;
        let amcheck = options.amcheck;
        let dumper = crate::engines::dumper(&config, false)?;
        move |source: pgproof_core::pg::ConnParams| {
            let (shown, callback) = progress.start(format!("backup {}", source.dbname()));
            *bar.lock().unwrap_or_else(PoisonError::into_inner) = Some(shown);
            let backup = Backup::new(source, sink.clone())
                .dumper(dumper.clone())
                .pg_bin_dir(config.source.pg_bin_dir.clone())
                .lock_wait(Duration::from_secs(config.dump.lock_wait_timeout_secs))
                .statement_timeout(Duration::from_secs(config.dump.statement_timeout_secs))
                .invariants(config.verify.invariants.clone())
                .files(config.files.clone())
                .amcheck(amcheck)
                .stage_dir(config.dump.stage_dir.clone())
                .alert_policy(config.alerts)
                .started_at(started_at)
                .progress(callback);
            match &recipients {
                Some(r) => backup.recipients(r.clone()),
                None => backup.unencrypted(),
            }
        }
    };
    let listing = {
        let config = config.clone();
        async move {
            let (params, databases) = source_databases(&config).await?;
            Ok(databases.iter().map(|d| params.with_dbname(d)).collect())
        }
    };
    let mut run = NightlyRun::new(sink.clone(), backup_for)
        .list_databases(listing)
        .now(crate::commands::upkeep::injected_now()?)
        .on_event(show_events(options.json, bar.clone()));
    if let Some(capture) = cluster {
        run = run.cluster(capture);
    }
    if options.then_verify {
        run = run.verify(verify_each(config, sink, progress, bar)?);
    }
    for replica in &config.replicas {
        run = run.replica(open_sink_with(config, replica)?);
    }
    if options.prune {
        run = run.prune(config.retention.clone());
    }
    Ok(run)
}

/// A [`Verify`] per committed backup, on one scratch server for the run (an
/// ephemeral cluster started at the first), with one manifest-chain checker.
fn verify_each(
    config: &Config,
    sink: Arc<dyn pgproof_core::Sink>,
    progress: Arc<ProgressOutput>,
    bar: Arc<Mutex<Option<ProgressBar>>>,
) -> Result<impl Fn(BackupRef) -> Result<Verify> + Send + Sync + 'static> {
    let identities = identities(config)?;
    let verifier = keyring(config)?.signer();
    let config = config.clone();
    let chain = ManifestChain::default();
    type Scratch = (
        pgproof_core::pg::ConnParams,
        bool,
        Option<Arc<EphemeralCluster>>,
    );
    let scratch: Mutex<Option<Scratch>> = Mutex::new(None);
    Ok(move |target: BackupRef| {
        let mut server = scratch.lock().unwrap_or_else(PoisonError::into_inner);
        if server.is_none() {
            let (params, cluster) = scratch_server(&config, false)?;
            *server = Some((params, cluster.is_some(), cluster.map(Arc::new)));
        }
        let Some((params, ephemeral, _cluster)) = server.as_ref() else {
            return Err(Error::tool("no scratch server"));
        };
        let (shown, callback) = progress.start(format!("verify {}", target.backup_id));
        *bar.lock().unwrap_or_else(PoisonError::into_inner) = Some(shown);
        let mut verifiers = standard_verifiers_sharing(&chain, config.verify.invariants.clone());
        if config.verify.amcheck {
            verifiers.push(Box::new(Amcheck));
        }
        Ok(Verify::new(sink.clone(), target, params.clone())
            .identities(identities.clone())
            .pg_bin_dir(config.source.pg_bin_dir.clone())
            .ephemeral_scratch(*ephemeral)
            .verified_by(verifier.clone())
            .verifiers(verifiers)
            .progress(callback))
    })
}

/// Prints each backup (or failure) and each report as the run goes, clearing the
/// progress bar of the step that ended.
fn show_events(
    json: bool,
    bar: Arc<Mutex<Option<ProgressBar>>>,
) -> impl Fn(RunEvent<'_>) + Send + Sync + 'static {
    let several = std::sync::atomic::AtomicBool::new(false);
    move |event| {
        let clear = || {
            if let Some(b) = bar.lock().unwrap_or_else(PoisonError::into_inner).take() {
                b.finish_and_clear();
            }
        };
        match event {
            RunEvent::Listed(n) => several.store(n > 1, std::sync::atomic::Ordering::Relaxed),
            RunEvent::Committed(m) => {
                clear();
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
            }
            RunEvent::BackupFailed { database, error } => {
                clear();
                // With one database the closing error line says it all; with
                // several, each failure is logged as it happens.
                if several.load(std::sync::atomic::Ordering::Relaxed) {
                    tracing::error!(database = %database, error = %error_line(error), "backup failed");
                }
                if !json {
                    outln!("{database}  FAILED  {}", error_line(error));
                }
            }
            RunEvent::Verified(report) => {
                clear();
                if !json {
                    print_report(report, Annotations::None);
                }
            }
            RunEvent::ClusterRecorded(run) if !json => {
                outln!(
                    "{}  cluster run: the server's globals and {} databases (restore --cluster {})",
                    run.run_id,
                    run.databases.len(),
                    run.run_id
                );
            }
            RunEvent::ClusterFailed(error) => {
                tracing::error!(error = %error_line(error), "the cluster's globals were not stored");
            }
            RunEvent::ReplicaFailed { replica, error } => {
                tracing::error!(replica = %replica, error = %error_line(error), "copy to a replica failed");
            }
            RunEvent::Pruned { pruned, kept } => {
                tracing::info!(pruned, kept, "pruned by [retention]");
            }
            _ => {}
        }
    }
}

/// The committed manifests and the failed databases (with `--verify`, and the
/// reports), so a script sees what failed without parsing stderr.
fn print_outcome_json(outcome: &RunOutcome, verified: bool) -> Result<()> {
    let failures: Vec<serde_json::Value> = outcome
        .failed
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
    if verified {
        return print_json(&serde_json::json!({
            "backups": outcome.committed,
            "failed": failures,
            "reports": outcome.reports,
            "cluster": outcome.cluster,
        }));
    }
    let mut entries: Vec<serde_json::Value> = outcome
        .committed
        .iter()
        .map(serde_json::to_value)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::tool(format!("cannot render the manifests as JSON: {e}")))?;
    entries.extend(failures);
    print_json(&entries)
}

/// `[hooks]` and `[notify]` around the run.
struct ConfigHooks {
    hooks: hooks::HooksConfig,
    notify: hooks::NotifyConfig,
}

impl ConfigHooks {
    fn new(config: &Config) -> Self {
        Self {
            hooks: config.hooks.clone(),
            notify: config.notify.clone(),
        }
    }
}

#[async_trait]
impl RunHooks for ConfigHooks {
    async fn before(&self) -> Result<()> {
        hooks::before(&self.hooks).await
    }

    async fn after(&self, outcome: &RunOutcome, result: &Result<()>) {
        let summary = RunSummary {
            tool: "pgproof",
            version: env!("CARGO_PKG_VERSION"),
            command: "backup",
            outcome: if result.is_ok() { "success" } else { "failure" },
            exit_code: result.as_ref().err().map_or(0, crate::exit_code),
            started_at: outcome.started_at,
            finished_at: outcome.finished_at,
            backups: outcome
                .committed
                .iter()
                .map(|m| BackupSummary {
                    database: m.database.clone(),
                    backup_id: m.backup_id.to_string(),
                    stored_bytes: m.dump_stored_bytes(),
                })
                .collect(),
            failed: outcome
                .failed
                .iter()
                .map(|(database, e)| FailedSummary {
                    database: database.clone(),
                    error: error_line(e),
                })
                .collect(),
            error: result.as_ref().err().map(error_line),
        };
        hooks::after(&self.hooks, &summary).await;
        hooks::notify(&self.notify, &summary).await;
    }
}

//! `pgproof verify --tables-per-run N` / `--budget DURATION`: rolling verification of
//! databases too big to restore whole. Each run proves the least recently proven
//! tables of each database's newest backup, with what they need, in the scratch
//! database, and records a table proof; `status` then tells how many tables were
//! proven within `status.max_table_unproven_age`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pgproof_core::catalog::Inventory;
use pgproof_core::catalog::trust::Signer;
use pgproof_core::codec::Identities;
use pgproof_core::dump::toc::{Filter, TablePattern, unquote_qualified};
use pgproof_core::ops::coverage::TableLedger;
use pgproof_core::ops::{Verify, record_unfinished};
use pgproof_core::pg::ConnParams;
use pgproof_core::scope::Scope;
use pgproof_core::verify::Report;
use pgproof_core::{Error, ErrorKind, Result, Sink};

use crate::args::Annotations;
use crate::config::{Config, parse_duration};
use crate::engines::{identities, open_signed, scratch_server};
use crate::render::{ProgressOutput, outln, print_json, print_report};

/// How much one run proves.
pub struct Share<'a> {
    /// Tables per batch (one batch per database without a budget).
    pub tables_per_run: Option<usize>,
    /// Batches until the next would not fit, across all databases.
    pub budget: Option<&'a str>,
}

pub async fn rolling(
    config: &Config,
    database: Option<&str>,
    share: Share<'_>,
    keep: bool,
    json: bool,
    progress: &ProgressOutput,
) -> Result<()> {
    let budget = share
        .budget
        .map(|b| parse_duration("--budget", b))
        .transpose()?
        .map(|b| Duration::from_secs(b.as_secs().max(0) as u64));
    if share.tables_per_run == Some(0) {
        return Err(Error::config(
            "--tables-per-run 0 proves nothing; give 1 or more",
        ));
    }
    let sink: Arc<dyn Sink> = open_signed(config)?;
    let inventory = Inventory::load(&*sink, database).await?;
    let untrusted = crate::commands::list::untrusted(&inventory).err();
    let (scratch, cluster) = scratch_server(config, keep)?;
    let runner = Runner {
        config,
        identities: identities(config)?,
        verifier: crate::engines::keyring(config)?.signer(),
        scratch,
        ephemeral: cluster.is_some(),
        keep,
        sink,
        progress,
        started: Instant::now(),
    };
    let mut reports: Vec<Report> = Vec::new();
    let mut out_of_time = false;
    'databases: for (name, part) in &inventory.databases {
        let Some(ledger) = TableLedger::of(name, part) else {
            continue;
        };
        let size = share
            .tables_per_run
            .unwrap_or_else(|| ledger.tables.len().div_ceil(10).max(1));
        // Seconds per row of the batches done, to tell whether the next one fits.
        let mut pace: Option<f64> = None;
        for batch in ledger.batches(size) {
            let rows: i64 = batch.iter().filter_map(|t| ledger.rows.get(t)).sum();
            let left = match budget {
                None => None,
                Some(budget) => {
                    let left = budget.saturating_sub(runner.started.elapsed());
                    if left.is_zero() {
                        out_of_time = true;
                        break 'databases;
                    }
                    // One that would not fit is left for the next run, which takes
                    // it first; a smaller one after it may still fit.
                    let needs = pace.map(|p| Duration::from_secs_f64(p * rows.max(1) as f64));
                    if needs.is_some_and(|n| n > left) {
                        out_of_time = true;
                        continue;
                    }
                    Some(left)
                }
            };
            let clock = Instant::now();
            let report = match runner.prove(&ledger, &batch, left).await? {
                Batch::Proven(report) => *report,
                Batch::Unrestorable => continue,
                Batch::OutOfTime => {
                    out_of_time = true;
                    break 'databases;
                }
            };
            pace = Some(clock.elapsed().as_secs_f64() / rows.max(1) as f64);
            if !json {
                print_report(&report, Annotations::None);
            }
            reports.push(report);
            if budget.is_none() {
                break;
            }
        }
    }
    if json {
        print_json(&reports)?;
    } else if out_of_time {
        outln!(
            "budget of {} used: {} batches proven in {:.1}s",
            share.budget.unwrap_or("-"),
            reports.len(),
            runner.started.elapsed().as_secs_f64()
        );
    }
    drop(cluster);
    pgproof_core::verify::verdict(&reports)?;
    untrusted.map_or(Ok(()), Err)
}

/// What every batch of a run shares.
struct Runner<'a> {
    config: &'a Config,
    identities: Option<Identities>,
    verifier: Option<Signer>,
    scratch: ConnParams,
    ephemeral: bool,
    keep: bool,
    sink: Arc<dyn Sink>,
    progress: &'a ProgressOutput,
    started: Instant,
}

/// How a batch ended.
enum Batch {
    /// Restored and compared (passed or failed).
    Proven(Box<Report>),
    /// Not restorable in part (recorded as unfinished, with the reason).
    Unrestorable,
    /// Stopped by the budget (recorded as unfinished).
    OutOfTime,
}

impl Runner<'_> {
    /// Proves `batch` of `ledger`'s newest backup within `left`. Tables attempted
    /// and not proven (the budget stopped them, they cannot be restored in part, the
    /// archive does not list them) are recorded as unfinished, so the next run takes
    /// others first and no table holds up the rest.
    async fn prove(
        &self,
        ledger: &TableLedger,
        batch: &[String],
        left: Option<Duration>,
    ) -> Result<Batch> {
        let (bar, callback) = self.progress.start(format!(
            "verify {} tables of {}",
            batch.len(),
            ledger.newest.backup_id
        ));
        let clock = Instant::now();
        let scope = Scope::new();
        let verify = Verify::new(
            self.sink.clone(),
            ledger.newest.clone(),
            self.scratch.clone(),
        )
        .identities(self.identities.clone())
        .pg_bin_dir(self.config.source.pg_bin_dir.clone())
        .ephemeral_scratch(self.ephemeral)
        .verified_by(self.verifier.clone())
        .tables(filter(batch)?)
        .keep(self.keep)
        .progress(callback)
        .scope(scope.clone());
        let (report, budget_ran_out) = within(&scope, left, verify.run()).await;
        bar.finish_and_clear();
        let unfinished = |tables: Vec<String>, why: String| async move {
            record_unfinished(
                &*self.sink,
                &ledger.newest,
                &tables,
                &why,
                self.verifier.clone(),
            )
            .await
        };
        match report {
            Err(e) if e.kind() == ErrorKind::Cancelled && budget_ran_out => {
                let why = format!(
                    "the budget ran out after {:.1}s, before the batch holding it was proven",
                    clock.elapsed().as_secs_f64()
                );
                unfinished(batch.to_vec(), why).await?;
                outln!(
                    "budget reached while proving {} of {}; recorded as unfinished{}",
                    describe(batch),
                    ledger.newest.backup_id,
                    if batch.len() == 1 {
                        ": a table that takes longer than the budget is never proven by a rolling run; raise --budget, or verify the backup whole"
                    } else {
                        ""
                    }
                );
                Ok(Batch::OutOfTime)
            }
            Err(e) if matches!(e.kind(), ErrorKind::Config | ErrorKind::NotFound) => {
                let why = format!("it cannot be restored in part: {}", e.message());
                outln!(
                    "{} of {} cannot be restored in part, recorded as unfinished: {}",
                    describe(batch),
                    ledger.newest.backup_id,
                    e.message()
                );
                unfinished(batch.to_vec(), why).await?;
                Ok(Batch::Unrestorable)
            }
            Err(e) => Err(e),
            Ok(report) => {
                let compared: Vec<&str> = report
                    .checks
                    .iter()
                    .filter_map(|c| c.name.strip_prefix("fingerprint:"))
                    .collect();
                let missing: Vec<String> = batch
                    .iter()
                    .filter(|t| !compared.contains(&t.as_str()))
                    .cloned()
                    .collect();
                if !missing.is_empty() && report.checks.iter().all(|c| c.passed) {
                    outln!(
                        "{} of {} not found in the archive's table of contents, recorded as unfinished",
                        describe(&missing),
                        ledger.newest.backup_id
                    );
                    let why =
                        "the archive's table of contents does not name it as the fingerprint does"
                            .to_owned();
                    unfinished(missing, why).await?;
                }
                Ok(Batch::Proven(Box::new(report)))
            }
        }
    }
}

/// Runs `body` in `scope`, cancelling it after `limit` (or when the scope the
/// command runs in is cancelled); also says whether `limit` was what stopped it.
async fn within<T>(
    scope: &Scope,
    limit: Option<Duration>,
    body: impl Future<Output = Result<T>>,
) -> (Result<T>, bool) {
    let outer = Scope::current_or_new();
    let ran_out = Arc::new(AtomicBool::new(false));
    let watch = {
        let (scope, ran_out) = (scope.clone(), ran_out.clone());
        tokio::spawn(async move {
            match limit {
                Some(limit) => tokio::select! {
                    () = outer.cancelled() => {}
                    () = tokio::time::sleep(limit) => ran_out.store(true, Ordering::SeqCst),
                },
                None => outer.cancelled().await,
            }
            scope.cancel();
        })
    };
    let result = body.await;
    watch.abort();
    (result, ran_out.load(Ordering::SeqCst))
}

fn describe(batch: &[String]) -> String {
    match batch {
        [one] => one.clone(),
        many => format!("{} tables", many.len()),
    }
}

/// Exactly the tables `keys` (as fingerprints name them); never an empty filter,
/// which would restore everything.
fn filter(keys: &[String]) -> Result<Filter> {
    let tables = keys
        .iter()
        .filter_map(|k| unquote_qualified(k))
        .map(|(schema, table)| {
            let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
            TablePattern::parse("--table", &format!("{}.{}", quote(&schema), quote(&table)))
        })
        .collect::<Result<Vec<_>>>()?;
    if tables.is_empty() {
        return Err(Error::config(format!(
            "the tables {} are named in no way pgproof can select",
            keys.join(", ")
        )));
    }
    Ok(Filter {
        tables,
        ..Filter::default()
    })
}

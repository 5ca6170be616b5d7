//! Upkeep of the catalog: `pgproof prune`, `check` and `status`: the catalog as a whole, read once per call.

use jiff::Timestamp;
use pgproof_core::ops::{Action, CatalogCheck, CopyBackups, Decision, PRUNED_BY_POLICY, Prune};
use pgproof_core::{Error, Result};

use crate::config::Config;
use crate::engines::{open_sink, replica_sink};
use crate::render::{human_bytes, outln, print_json};

/// The clock backup, prune and status go by: now, or `PGPROOF_NOW` (RFC 3339), which
/// tests use to run a simulated calendar.
pub fn now() -> Result<Timestamp> {
    Ok(injected_now()?.unwrap_or_else(Timestamp::now))
}

/// `PGPROOF_NOW`, if set.
pub fn injected_now() -> Result<Option<Timestamp>> {
    match std::env::var("PGPROOF_NOW") {
        Ok(text) => text.parse().map(Some).map_err(|e| {
            Error::config(format!(
                "PGPROOF_NOW={text:?} is not an RFC 3339 time ({e}); unset it to use the clock"
            ))
        }),
        Err(_) => Ok(None),
    }
}

pub async fn prune(
    config: &Config,
    database: Option<&str>,
    dry_run: bool,
    json: bool,
) -> Result<()> {
    let sink = open_sink(config)?;
    let decisions = Prune::new(sink, config.retention.clone())
        .database(database.map(str::to_owned))
        .dry_run(dry_run)
        .now(now()?)
        .run()
        .await?;
    if json {
        let rows: Vec<serde_json::Value> = decisions.iter().map(decision_json).collect();
        return print_json(&serde_json::json!({ "dry_run": dry_run, "decisions": rows }));
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    for d in &decisions {
        let what = match &d.action {
            Action::Keep(reasons) => {
                let reasons: Vec<String> = reasons.iter().map(ToString::to_string).collect();
                format!("keep          {}", reasons.join("; "))
            }
            Action::Delete => format!("{verb:<13} {PRUNED_BY_POLICY}"),
            Action::DeleteOrphan(n) => {
                format!("{verb:<13} {n} objects of a run that never committed")
            }
            Action::FinishPrune(n) => {
                format!("{verb:<13} {n} objects left by an interrupted prune")
            }
            Action::DeleteChunks(n) => {
                format!("{verb:<13} {n} chunks no backup uses")
            }
            Action::KeepChunks(why) => format!("keep chunks   {why}"),
        };
        outln!("{}  {}  {what}", d.database, d.backup_id);
    }
    let count = |f: fn(&Action) -> bool| decisions.iter().filter(|d| f(&d.action)).count();
    let gone = count(|a| matches!(a, Action::Delete));
    let kept = count(|a| matches!(a, Action::Keep(_)));
    outln!(
        "{} backups kept, {gone} {}",
        kept,
        if dry_run { "would be pruned" } else { "pruned" }
    );
    Ok(())
}

fn decision_json(d: &Decision) -> serde_json::Value {
    let (action, detail) = match &d.action {
        Action::Keep(reasons) => ("keep", serde_json::json!(reasons)),
        Action::Delete => ("delete", serde_json::json!(PRUNED_BY_POLICY)),
        Action::DeleteOrphan(n) => ("delete-orphan", serde_json::json!(n)),
        Action::FinishPrune(n) => ("finish-prune", serde_json::json!(n)),
        Action::DeleteChunks(n) => ("delete-chunks", serde_json::json!(n)),
        Action::KeepChunks(why) => ("keep-chunks", serde_json::json!(why)),
    };
    serde_json::json!({
        "database": d.database,
        "backup_id": d.backup_id,
        "action": action,
        "detail": detail,
    })
}

pub async fn copy(
    config: &Config,
    to: &str,
    backup: Option<String>,
    database: Option<String>,
    json: bool,
) -> Result<()> {
    let from = open_sink(config)?;
    let dest = replica_sink(config, to)?;
    let outcome = CopyBackups::new(from, dest.clone())
        .database(database)
        .backup(backup)
        .run()
        .await?;
    if json {
        print_json(&outcome)?;
        return outcome.into_result().map(|_| ());
    }
    for b in &outcome.copied {
        outln!("copied    {b}");
    }
    outln!(
        "{} backups copied to {} ({}), {} already there",
        outcome.copied.len(),
        dest.describe(),
        human_bytes(outcome.bytes),
        outcome.already_there.len()
    );
    outcome.into_result().map(|_| ())
}

pub async fn check(
    config: &Config,
    database: Option<&str>,
    read_data: bool,
    json: bool,
) -> Result<()> {
    let sink = open_sink(config)?;
    let outcome = CatalogCheck::new(sink.clone())
        .database(database.map(str::to_owned))
        .read_data(read_data)
        .run()
        .await?;
    if json {
        print_json(&outcome)?;
    } else {
        for f in &outcome.findings {
            outln!("FINDING  {}  {}  {}", f.database, f.backup_id, f.problem);
        }
        outln!(
            "{} backups checked{}, {} pruned (tombstones), {} findings",
            outcome.backups,
            if read_data {
                format!(" ({} read)", human_bytes(outcome.bytes_read))
            } else {
                String::new()
            },
            outcome.pruned,
            outcome.findings.len()
        );
    }
    if outcome.findings.is_empty() {
        Ok(())
    } else {
        Err(Error::integrity(format!(
            "check found {} problems in {}",
            outcome.findings.len(),
            sink.describe()
        )))
    }
}

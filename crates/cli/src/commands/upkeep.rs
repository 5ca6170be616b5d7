//! Upkeep of the catalog: `pgproof prune`, `check` and `status`: the catalog as a whole, read once per call.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use jiff::{SignedDuration, Timestamp};
use pgproof_core::catalog::Inventory;
use pgproof_core::ops::{Action, CatalogCheck, Copy, Decision, Prune, RetentionPolicy};
use pgproof_core::{Error, Result};
use serde::Serialize;

use crate::config::{Config, Databases, parse_duration};
use crate::engines::{open_sink, open_sink_with, replica_sink};
use crate::render::{human_bytes, outln, print_json};

/// The `[retention]` rules as the engine's policy.
pub fn retention_policy(config: &Config) -> Result<(RetentionPolicy, Option<SignedDuration>)> {
    let r = &config.retention;
    let policy = RetentionPolicy {
        keep_last: r.keep_last,
        keep_daily: r.keep_daily,
        keep_weekly: r.keep_weekly,
        keep_monthly: r.keep_monthly,
        keep_within: r
            .keep_within
            .as_deref()
            .map(|t| parse_duration("retention.keep_within", t))
            .transpose()?,
    };
    let grace = r
        .orphan_grace
        .as_deref()
        .map(|t| parse_duration("retention.orphan_grace", t))
        .transpose()?;
    Ok((policy, grace))
}

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
    let (policy, grace) = retention_policy(config)?;
    let mut prune = Prune::new(sink, policy)
        .database(database.map(str::to_owned))
        .dry_run(dry_run)
        .now(now()?);
    if let Some(grace) = grace {
        prune = prune.orphan_grace(grace);
    }
    let decisions = prune.run().await?;
    if json {
        let rows: Vec<serde_json::Value> = decisions.iter().map(decision_json).collect();
        return print_json(&serde_json::json!({ "dry_run": dry_run, "decisions": rows }));
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    for d in &decisions {
        let what = match &d.action {
            Action::Keep(reasons) => format!("keep          {}", reasons.join("; ")),
            Action::Delete(reason) => format!("{verb:<13} {reason}"),
            Action::DeleteOrphan(n) => {
                format!("{verb:<13} {n} objects of a run that never committed")
            }
            Action::FinishPrune(n) => {
                format!("{verb:<13} {n} objects left by an interrupted prune")
            }
        };
        outln!("{}  {}  {what}", d.database, d.backup_id);
    }
    let count = |f: fn(&Action) -> bool| decisions.iter().filter(|d| f(&d.action)).count();
    let gone = count(|a| matches!(a, Action::Delete(_)));
    let kept = count(|a| matches!(a, Action::Keep(_)));
    outln!(
        "{} backups kept, {gone} {}",
        kept,
        if dry_run { "would be pruned" } else { "pruned" }
    );
    Ok(())
}

/// `backup --prune`: the decisions go to the log (stdout holds the backup's output).
pub async fn prune_after_backup(config: &Config) -> Result<()> {
    let sink = open_sink(config)?;
    let (policy, grace) = retention_policy(config)?;
    let mut prune = Prune::new(sink, policy).now(now()?);
    if let Some(grace) = grace {
        prune = prune.orphan_grace(grace);
    }
    let decisions = prune.run().await?;
    let pruned = decisions
        .iter()
        .filter(|d| !matches!(d.action, Action::Keep(_)))
        .count();
    tracing::info!(
        pruned,
        kept = decisions.len() - pruned,
        "pruned by [retention]"
    );
    Ok(())
}

fn decision_json(d: &Decision) -> serde_json::Value {
    let (action, detail) = match &d.action {
        Action::Keep(reasons) => ("keep", serde_json::json!(reasons)),
        Action::Delete(reason) => ("delete", serde_json::json!(reason)),
        Action::DeleteOrphan(n) => ("delete-orphan", serde_json::json!(n)),
        Action::FinishPrune(n) => ("finish-prune", serde_json::json!(n)),
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
    let outcome = Copy::new(from, dest.clone())
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

/// Copies every committed backup to each `[[replicas]]` entry; the first failure is
/// returned after all were tried.
pub async fn replicate(config: &Config) -> Result<()> {
    let mut first: Option<Error> = None;
    for replica in &config.replicas {
        let result = async {
            let dest = open_sink_with(config, replica)?;
            let outcome = Copy::new(open_sink(config)?, dest.clone())
                .run()
                .await?
                .into_result()?;
            tracing::info!(replica = %dest.describe(), copied = outcome.copied.len(), "replicated");
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = result {
            let url = replica
                .url
                .as_deref()
                .map(crate::settings::redact_url)
                .unwrap_or_default();
            tracing::error!(replica = %url, error = %e, "copy to a replica failed");
            first.get_or_insert(Error::new(
                e.kind(),
                format!(
                    "the backups are committed, but copying them to the replica {url} failed: {e}"
                ),
            ));
        }
    }
    first.map_or(Ok(()), Err)
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

/// One database's status.
#[derive(Debug, Serialize)]
struct DatabaseStatus {
    database: String,
    backups: usize,
    newest_backup: Option<String>,
    newest_backup_at: Option<Timestamp>,
    newest_backup_age_secs: Option<i64>,
    newest_backup_stored_bytes: Option<u64>,
    total_stored_bytes: u64,
    newest_verified_backup: Option<String>,
    newest_verified_backup_at: Option<Timestamp>,
    newest_verified_backup_age_secs: Option<i64>,
    last_verification_at: Option<Timestamp>,
    last_restore_secs: Option<f64>,
    /// Backups not proven within `max_unproven_age` (with the threshold set).
    unproven_backups: Option<usize>,
    oldest_unproven_backup: Option<String>,
    oldest_unproven_backup_at: Option<Timestamp>,
    /// The newest backup's anomalies against the one before it.
    alerts: Vec<String>,
    /// Catalog objects no trusted key signed (each left out of every figure here).
    untrusted_objects: Vec<String>,
    /// Each `[[replicas]]` entry's newest copy of this database.
    replicas: Vec<ReplicaStatus>,
    breaches: Vec<String>,
}

/// One replica's newest backup of a database.
#[derive(Debug, Serialize)]
struct ReplicaStatus {
    url: String,
    newest_backup: Option<String>,
    newest_backup_at: Option<Timestamp>,
}

pub async fn status(config: &Config, json: bool, prometheus: Option<&Path>) -> Result<()> {
    let sink = open_sink(config)?;
    let now = now()?;
    let limit = |key: &str, value: &Option<String>| {
        value.as_deref().map(|t| parse_duration(key, t)).transpose()
    };
    let max_age = limit("status.max_age", &config.status.max_age)?;
    let max_unverified = limit(
        "status.max_unverified_age",
        &config.status.max_unverified_age,
    )?;
    let max_restore = limit("status.max_restore_time", &config.status.max_restore_time)?;
    let max_unproven = limit("status.max_unproven_age", &config.status.max_unproven_age)?;
    let inventory = Inventory::load(&*sink, None).await?;
    let mut replicas = Vec::new();
    for replica in &config.replicas {
        let url = replica
            .url
            .as_deref()
            .map(crate::settings::redact_url)
            .unwrap_or_default();
        replicas.push((
            url,
            Inventory::load(&*open_sink_with(config, replica)?, None).await?,
        ));
    }
    let mut names: Vec<String> = inventory.databases.keys().cloned().collect();
    if let Databases::Named(configured) = &config.source.databases {
        names.extend(configured.iter().cloned());
    }
    names.sort();
    names.dedup();

    let mut statuses = Vec::new();
    for name in names {
        let empty = Default::default();
        let part = inventory.databases.get(&name).unwrap_or(&empty);
        let readable: Vec<_> = part
            .backups
            .iter()
            .filter_map(|b| b.manifest.as_ref().ok().map(|m| (b, m)))
            .collect();
        let newest = readable.iter().max_by_key(|(_, m)| m.started_at);
        let newest_verified = readable
            .iter()
            .filter(|(b, _)| b.proven().is_some())
            .max_by_key(|(_, m)| m.started_at);
        let last_verification = readable
            .iter()
            .filter_map(|(b, _)| b.proven())
            .max_by_key(|v| v.verified_at);
        let age = |at: Timestamp| now.duration_since(at);
        let mut s = DatabaseStatus {
            database: name.clone(),
            backups: readable.len(),
            newest_backup: newest.map(|(b, _)| b.backup_id.clone()),
            newest_backup_at: newest.map(|(_, m)| m.started_at),
            newest_backup_age_secs: newest.map(|(_, m)| age(m.started_at).as_secs()),
            newest_backup_stored_bytes: newest.map(|(_, m)| m.dump_stored_bytes()),
            total_stored_bytes: readable.iter().map(|(_, m)| m.dump_stored_bytes()).sum(),
            newest_verified_backup: newest_verified.map(|(b, _)| b.backup_id.clone()),
            newest_verified_backup_at: newest_verified.map(|(_, m)| m.started_at),
            newest_verified_backup_age_secs: newest_verified
                .map(|(_, m)| age(m.started_at).as_secs()),
            last_verification_at: last_verification.map(|v| v.verified_at),
            last_restore_secs: last_verification
                .and_then(|v| v.restore_ms)
                .map(|ms| ms as f64 / 1000.0),
            unproven_backups: None,
            oldest_unproven_backup: None,
            oldest_unproven_backup_at: None,
            alerts: newest
                .map(|(_, m)| m.alerts.iter().map(|a| a.detail.clone()).collect())
                .unwrap_or_default(),
            untrusted_objects: part.findings.iter().map(|f| f.key.clone()).collect(),
            replicas: replicas
                .iter()
                .map(|(url, inv)| {
                    let newest = inv.databases.get(&name).and_then(|p| {
                        p.backups
                            .iter()
                            .filter_map(|b| b.manifest.as_ref().ok())
                            .max_by_key(|m| m.started_at)
                    });
                    ReplicaStatus {
                        url: url.clone(),
                        newest_backup: newest.map(|m| m.backup_id.clone()),
                        newest_backup_at: newest.map(|m| m.started_at),
                    }
                })
                .collect(),
            breaches: Vec::new(),
        };
        if let Some(first) = part.findings.first() {
            s.breaches.push(format!(
                "{} catalog objects are not trusted and were left out: {}{}",
                part.findings.len(),
                first.problem,
                if part.findings.len() > 1 {
                    " (and more: pgproof check lists them)"
                } else {
                    ""
                }
            ));
        }
        if config.alerts.fail_status && !s.alerts.is_empty() {
            s.breaches.push(format!(
                "the newest backup carries {} alerts (alerts.fail_status)",
                s.alerts.len()
            ));
        }
        if let Some(max) = max_unproven {
            let mut unproven: Vec<_> = readable
                .iter()
                .filter(|(b, _)| {
                    b.proven()
                        .is_none_or(|v| now.duration_since(v.verified_at) > max)
                })
                .collect();
            unproven.sort_by_key(|(_, m)| m.started_at);
            s.unproven_backups = Some(unproven.len());
            s.oldest_unproven_backup = unproven.first().map(|(b, _)| b.backup_id.clone());
            s.oldest_unproven_backup_at = unproven.first().map(|(_, m)| m.started_at);
            if !unproven.is_empty() {
                s.breaches.push(format!(
                    "{} backups not proven within status.max_unproven_age {max:#} (oldest {})",
                    unproven.len(),
                    unproven[0].0.backup_id
                ));
            }
        }
        if newest.is_none() {
            s.breaches.push("no backup".into());
        }
        let failing: Vec<&str> = readable
            .iter()
            .filter(|(b, _)| b.failed_latest())
            .map(|(b, _)| b.backup_id.as_str())
            .collect();
        if !failing.is_empty() {
            s.breaches.push(format!(
                "the latest verification of {} failed",
                failing.join(", ")
            ));
        }
        if let (Some(max), Some((_, m))) = (max_age, newest)
            && age(m.started_at) > max
        {
            s.breaches.push(format!(
                "newest backup is {} old, more than status.max_age {max:#}",
                hours(age(m.started_at))
            ));
        }
        if let Some(max) = max_unverified {
            match newest_verified {
                None => s.breaches.push("no verified backup".into()),
                Some((_, m)) if age(m.started_at) > max => s.breaches.push(format!(
                    "newest verified backup is {} old, more than status.max_unverified_age {max:#}",
                    hours(age(m.started_at))
                )),
                Some(_) => {}
            }
        }
        if let Some(max) = max_restore {
            match s.last_restore_secs {
                None => s.breaches.push("no measured restore time".into()),
                Some(secs) if secs > max.as_secs_f64() => s.breaches.push(format!(
                    "last measured restore took {secs:.1}s, more than status.max_restore_time {max:#}"
                )),
                Some(_) => {}
            }
        }
        statuses.push(s);
    }
    if let Some(file) = prometheus {
        write_textfile(file, &statuses)?;
    }
    if json {
        print_json(&statuses)?;
    } else {
        for s in &statuses {
            let state = if s.breaches.is_empty() {
                "OK"
            } else {
                "BREACH"
            };
            outln!(
                "{state:<7} {}  {} backups  newest {}  verified {}  restore {}  {}{}",
                s.database,
                s.backups,
                s.newest_backup_age_secs.map_or("-".into(), |a| format!(
                    "{} ago",
                    hours(SignedDuration::from_secs(a))
                )),
                s.newest_verified_backup_age_secs
                    .map_or("-".into(), |a| format!(
                        "{} ago",
                        hours(SignedDuration::from_secs(a))
                    )),
                s.last_restore_secs
                    .map_or("-".into(), |r| format!("{r:.1}s")),
                human_bytes(s.newest_backup_stored_bytes.unwrap_or(0)),
                if s.breaches.is_empty() {
                    String::new()
                } else {
                    format!("  ({})", s.breaches.join("; "))
                }
            );
            for alert in &s.alerts {
                outln!("        {}  ALERT  {alert}", s.database);
            }
            for r in &s.replicas {
                outln!(
                    "        {}  replica {}: newest {}",
                    s.database,
                    r.url,
                    r.newest_backup.as_deref().unwrap_or("none")
                );
            }
        }
    }
    let breached: Vec<&str> = statuses
        .iter()
        .filter(|s| !s.breaches.is_empty())
        .map(|s| s.database.as_str())
        .collect();
    if statuses.is_empty() {
        return Err(Error::integrity(format!(
            "no backup in {}; take a backup first",
            sink.describe()
        )));
    }
    if breached.is_empty() {
        Ok(())
    } else {
        Err(Error::integrity(format!(
            "status thresholds breached for {}",
            breached.join(", ")
        )))
    }
}

fn hours(d: SignedDuration) -> String {
    let secs = d.as_secs();
    if secs >= 2 * 86_400 {
        format!("{:.1}d", secs as f64 / 86_400.0)
    } else if secs >= 3600 {
        format!("{:.1}h", secs as f64 / 3600.0)
    } else {
        format!("{}m", secs / 60)
    }
}

/// A metric's help text and its value per database.
type Metric = (&'static str, Vec<(String, f64)>);

/// node_exporter's textfile collector reads whole files only: written beside the
/// target and renamed over it.
fn write_textfile(file: &Path, statuses: &[DatabaseStatus]) -> Result<()> {
    let mut metrics: BTreeMap<&str, Metric> = BTreeMap::new();
    let mut add = |name: &'static str, help: &'static str, db: &str, value: Option<f64>| {
        if let Some(v) = value {
            metrics
                .entry(name)
                .or_insert((help, Vec::new()))
                .1
                .push((db.to_owned(), v));
        }
    };
    for s in statuses {
        let db = s.database.as_str();
        let ts = |t: Option<Timestamp>| t.map(|t| t.as_millisecond() as f64 / 1000.0);
        add(
            "pgproof_last_backup_timestamp_seconds",
            "Start of the newest committed backup, Unix time.",
            db,
            ts(s.newest_backup_at),
        );
        add(
            "pgproof_last_verified_backup_timestamp_seconds",
            "Start of the newest backup that passed verification, Unix time.",
            db,
            ts(s.newest_verified_backup_at),
        );
        add(
            "pgproof_last_verification_timestamp_seconds",
            "End of the newest passing verification, Unix time.",
            db,
            ts(s.last_verification_at),
        );
        add(
            "pgproof_restore_seconds",
            "Restore time measured by the newest passing verification.",
            db,
            s.last_restore_secs,
        );
        add(
            "pgproof_backup_bytes",
            "Stored size of the newest backup.",
            db,
            s.newest_backup_stored_bytes.map(|b| b as f64),
        );
        add(
            "pgproof_backups",
            "Committed backups in the sink.",
            db,
            Some(s.backups as f64),
        );
        add(
            "pgproof_unproven_backups",
            "Backups not proven within status.max_unproven_age.",
            db,
            s.unproven_backups.map(|n| n as f64),
        );
        add(
            "pgproof_oldest_unproven_backup_timestamp_seconds",
            "Start of the oldest backup not proven within status.max_unproven_age, Unix time.",
            db,
            ts(s.oldest_unproven_backup_at),
        );
        add(
            "pgproof_backup_alerts",
            "Anomalies of the newest backup against the previous one.",
            db,
            Some(s.alerts.len() as f64),
        );
        add(
            "pgproof_untrusted_objects",
            "Catalog objects (manifests, records, pins, leases, tombstones) no trusted key signed.",
            db,
            Some(s.untrusted_objects.len() as f64),
        );
        add(
            "pgproof_status_breached",
            "1 when a [status] threshold is breached or there is no backup.",
            db,
            Some(if s.breaches.is_empty() { 0.0 } else { 1.0 }),
        );
    }
    let mut text = String::new();
    for (name, (help, values)) in &metrics {
        text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (db, v) in values {
            text.push_str(&format!("{name}{{database=\"{}\"}} {v}\n", label(db)));
        }
    }
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| {
        Error::io(
            format!("cannot write the Prometheus textfile in {}", dir.display()),
            e,
        )
    })?;
    tmp.write_all(text.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| Error::io("cannot write the Prometheus textfile", e))?;
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .map_err(|e| Error::io("cannot set the Prometheus textfile's mode", e))?;
    tmp.persist(file).map_err(|e| {
        Error::io(
            format!(
                "cannot move the Prometheus textfile into {}",
                file.display()
            ),
            e.error,
        )
    })?;
    Ok(())
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

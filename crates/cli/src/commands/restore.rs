//! `pgproof restore`: one backup into one database.

use jiff::Timestamp;
use pgproof_core::catalog::{self, BackupRef, Inventory};
use pgproof_core::dump::toc::{Filter, SchemaPattern, TablePattern};
use pgproof_core::{Error, Result, Sink};
use std::path::Path;

use pgproof_core::ops::{PartialProof, Restore, restore_files};
use pgproof_core::pg::ConnParams;

use crate::config::{Config, parse_duration};
use crate::engines::{identities, open_sink};
use crate::render::{ProgressOutput, outln, print_json};

/// What the operator allowed a restore to do beyond filling a new database.
pub struct Allow {
    /// Replace an existing database.
    pub clean: bool,
    /// Restore into an existing database whose locale differs.
    pub force: bool,
    /// Create missing roles.
    pub create_roles: bool,
    /// Create missing roles with SUPERUSER, REPLICATION or BYPASSRLS too.
    pub create_privileged_roles: bool,
}

/// Where a restore goes: a database, a directory for the file sets, or both.
pub struct Destination<'a> {
    /// The database (libpq URI).
    pub target: Option<&'a str>,
    /// The directory for file sets.
    pub files: Option<&'a Path>,
    /// The tables to restore (all when empty).
    pub filter: Filter,
    /// The new name of the one table restored beside the live one.
    pub rename_to: Option<String>,
}

/// Which backup to restore.
pub enum Which<'a> {
    /// An id, a prefix or `latest`.
    Backup(&'a str),
    /// The newest whose snapshot was taken at or before a time (or an age ago).
    AsOf(&'a str),
}

/// The `--table`, `--schema` and `--exclude-table` patterns.
pub fn filter(tables: &[String], schemas: &[String], exclude: &[String]) -> Result<Filter> {
    Ok(Filter {
        tables: tables
            .iter()
            .map(|p| TablePattern::parse("--table", p))
            .collect::<Result<_>>()?,
        schemas: schemas
            .iter()
            .map(|p| SchemaPattern::parse("--schema", p))
            .collect::<Result<_>>()?,
        exclude: exclude
            .iter()
            .map(|p| TablePattern::parse("--exclude-table", p))
            .collect::<Result<_>>()?,
    })
}

/// `--as-of`: an RFC 3339 time, or an age before now.
fn as_of_time(text: &str) -> Result<Timestamp> {
    if let Ok(at) = text.parse::<Timestamp>() {
        return Ok(at);
    }
    let age = parse_duration("--as-of", text).map_err(|_| {
        Error::config(format!(
            "--as-of {text}: give a time (2026-12-01T06:00:00Z) or an age such as 36h or 7d"
        ))
    })?;
    crate::commands::upkeep::now()?
        .checked_sub(age)
        .map_err(|e| Error::config(format!("--as-of {text}: {e}")))
}

async fn find(sink: &dyn Sink, which: Which<'_>, database: Option<&str>) -> Result<BackupRef> {
    match which {
        Which::Backup(backup) => catalog::resolve(sink, backup, database).await,
        Which::AsOf(time) => {
            let at = as_of_time(time)?;
            Inventory::load(sink, database).await?.as_of(at)
        }
    }
}

pub async fn restore(
    config: &Config,
    which: Which<'_>,
    into: Destination<'_>,
    database: Option<&str>,
    allow: Allow,
    json: bool,
    progress: &ProgressOutput,
) -> Result<()> {
    let sink = open_sink(config)?;
    // Configuration first: a missing key file or a bad URL is reported as such, before
    // the sink is read.
    let identities = identities(config)?;
    // The parser's message speaks of "the connection URL"; with the source URL and
    // the scratch URL also in play, say which one.
    let target = into
        .target
        .map(|url| {
            ConnParams::parse(url)
                .map_err(|e| Error::new(e.kind(), format!("--target: {}", e.message())))
        })
        .transpose()?;
    if !into.filter.is_empty() && target.is_none() {
        return Err(Error::config(
            "--table, --schema and --exclude-table restore into a database: give --target",
        ));
    }
    let found = find(&*sink, which, database).await?;
    let (m, _) = catalog::load_manifest(&*sink, &found).await?;
    let mut report = serde_json::json!({
        "backup_id": m.backup_id,
        "source_database": m.database,
    });
    if let Some(dir) = into.files {
        let written = restore_files(&*sink, &m, identities.as_ref(), dir).await?;
        for w in &written {
            if !json {
                outln!("wrote file set into {}", w.display());
            }
        }
        report["files"] = serde_json::json!(written);
    }
    let Some(target) = target else {
        return if json { print_json(&report) } else { Ok(()) };
    };
    let (bar, callback) = progress.start(format!("restore {}", m.backup_id));
    let partial = !into.filter.is_empty();
    let outcome = Restore::new(sink, m.clone(), target)
        .tables(into.filter)
        .rename_to(into.rename_to)
        .identities(identities)
        .clean(allow.clean)
        .force(allow.force)
        .create_roles(allow.create_roles)
        .create_privileged_roles(allow.create_privileged_roles)
        .pg_bin_dir(config.source.pg_bin_dir.clone())
        .progress(callback)
        .run()
        .await;
    bar.finish_and_clear();
    let outcome = outcome?;
    if json {
        report["target_database"] = serde_json::json!(outcome.database);
        report["created"] = serde_json::json!(outcome.created);
        report["raw_bytes"] = serde_json::json!(outcome.raw_bytes);
        report["duration_ms"] = serde_json::json!(outcome.duration.as_millis() as u64);
        if let Some(proof) = &outcome.proof {
            report["partial"] = serde_json::json!(proof);
        }
        print_json(&report)?;
    } else {
        if let Some(proof) = &outcome.proof {
            print_proof(proof);
        }
        outln!(
            "restored {}{} ({}) into {} in {:.1}s",
            if partial { "part of " } else { "" },
            m.backup_id,
            m.database,
            outcome.database,
            outcome.duration.as_secs_f64()
        );
    }
    match &outcome.proof {
        Some(proof) if !proof.passed => Err(Error::integrity(format!(
            "the tables restored from {} into {} differ from what the backup recorded: {}; they stay there for inspection (drop them when done)",
            m.backup_id,
            outcome.database,
            proof
                .checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        _ => Ok(()),
    }
}

fn print_proof(proof: &PartialProof) {
    for created in &proof.created {
        outln!("  made  {created}");
    }
    for present in &proof.present {
        outln!("  kept  {present} (the target's own, used as it is)");
    }
    for left in &proof.left_out {
        outln!("  left out {}: {}", left.entry, left.reason);
    }
    if let Some(landed) = &proof.restored_as {
        outln!("  as    {landed}");
    }
    for check in &proof.checks {
        if check.passed {
            outln!("  ok    {:<40} {}", check.name, check.detail);
        } else {
            outln!("  FAIL  {:<40} {}", check.name, check.detail);
        }
    }
    let passed = proof.checks.iter().filter(|c| c.passed).count();
    outln!(
        "{}: {passed}/{} proven as the backup recorded them",
        if proof.passed { "PASS" } else { "FAIL" },
        proof.checks.len()
    );
}

//! `pgproof restore`: one backup into one database.

use pgproof_core::catalog;
use pgproof_core::{Error, Result};
use std::path::Path;

use pgproof_core::ops::{Restore, restore_files};
use pgproof_core::pg::ConnParams;

use crate::config::Config;
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
}

pub async fn restore(
    config: &Config,
    which: &str,
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
    let found = catalog::resolve(&*sink, which, database).await?;
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
    let outcome = Restore::new(sink, m.clone(), target)
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
        print_json(&report)
    } else {
        outln!(
            "restored {} ({}) into {} in {:.1}s",
            m.backup_id,
            m.database,
            outcome.database,
            outcome.duration.as_secs_f64()
        );
        Ok(())
    }
}

//! `pgproof restore`: one backup into one database.

use pgproof_core::Result;
use pgproof_core::catalog;
use pgproof_core::ops::Restore;
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
}

pub async fn restore(
    config: &Config,
    which: &str,
    target: &str,
    database: Option<&str>,
    allow: Allow,
    json: bool,
    progress: &ProgressOutput,
) -> Result<()> {
    let sink = open_sink(config)?;
    // Configuration first: a missing key file or a bad URL is reported as such, before
    // the sink is read.
    let identities = identities(config)?;
    let target = ConnParams::parse(target)?;
    let found = catalog::resolve(&*sink, which, database).await?;
    let (m, _) = catalog::load_manifest(&*sink, &found).await?;
    let (bar, callback) = progress.start(format!("restore {}", m.backup_id));
    let outcome = Restore::new(sink, m.clone(), target)
        .identities(identities)
        .clean(allow.clean)
        .force(allow.force)
        .create_roles(allow.create_roles)
        .pg_bin_dir(config.source.pg_bin_dir.clone())
        .progress(callback)
        .run()
        .await;
    bar.finish_and_clear();
    let outcome = outcome?;
    if json {
        print_json(&serde_json::json!({
            "backup_id": m.backup_id,
            "source_database": m.database,
            "target_database": outcome.database,
            "created": outcome.created,
            "raw_bytes": outcome.raw_bytes,
            "duration_ms": outcome.duration.as_millis() as u64,
        }))
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

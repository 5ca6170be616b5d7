//! `pgproof restore --cluster` (a whole server from one `databases = "all"` run) and
//! `pgproof list --clusters`.

use pgproof_core::catalog::cluster;
use pgproof_core::ops::ClusterRestore;
use pgproof_core::pg::ConnParams;
use pgproof_core::{Error, ErrorKind, Result, Setting};

use crate::config::Config;
use crate::engines::{identities, open_sink};
use crate::render::{outln, print_json};

/// Recreates the server of cluster run `which` on `target` and proves it.
pub async fn restore(
    config: &Config,
    which: &str,
    target: Option<&str>,
    tablespace_dirs: &[String],
    json: bool,
) -> Result<()> {
    let sink = open_sink(config)?;
    let identities = identities(config)?;
    let Some(target) = target else {
        return Err(Error::config(
            "restore --cluster needs --target: the server to recreate (a superuser's URL)",
        ));
    };
    let target = ConnParams::parse(target)
        .map_err(|e| Error::new(e.kind(), format!("--target: {}", e.message())))?;
    let mut restore = ClusterRestore::new(sink, which, target)
        .identities(identities)
        .pg_bin_dir(config.source.pg_bin_dir.clone());
    for entry in tablespace_dirs {
        let Some((name, dir)) = entry
            .split_once('=')
            .filter(|(n, d)| !n.is_empty() && d.starts_with('/'))
        else {
            return Err(Error::config(format!(
                "--tablespace-dir {:?} is not NAME=DIR with an absolute DIR",
                pgproof_core::error::printable(entry)
            ))
            .with_setting(Setting::TablespaceDir));
        };
        restore = restore.tablespace_dir(name, dir);
    }
    let outcome = restore.run().await?;
    if json {
        print_json(&outcome)?;
    } else {
        outln!(
            "cluster run {} onto {}: {} roles created ({} kept as found), {} tablespaces, {} databases",
            outcome.run.run_id,
            outcome.target,
            outcome.roles_created.len(),
            outcome.roles_kept.join(", "),
            outcome.tablespaces.len(),
            outcome.databases.len()
        );
        for (name, dir) in &outcome.tablespaces {
            outln!("  tablespace {name} at {dir}");
        }
        for db in &outcome.databases {
            for check in db.checks.iter().filter(|c| !c.passed) {
                outln!(
                    "  FAIL  {}  {:<36} {}",
                    db.database,
                    check.name,
                    check.detail
                );
            }
            let passed = db.checks.iter().filter(|c| c.passed).count();
            outln!(
                "{} {} ({}): {passed}/{} checks passed, restore {:.2}s",
                if db.passed { "PASS" } else { "FAIL" },
                db.database,
                db.backup_id,
                db.checks.len(),
                db.restore_ms as f64 / 1000.0
            );
        }
        for check in &outcome.globals {
            let verdict = if check.passed { "PASS" } else { "FAIL" };
            outln!("{verdict} {:<22} {}", check.name, check.detail);
        }
        outln!(
            "{} cluster run {} in {:.1}s",
            if outcome.passed {
                "PROVEN"
            } else {
                "NOT PROVEN"
            },
            outcome.run.run_id,
            outcome.duration_ms as f64 / 1000.0
        );
    }
    outcome.verdict()
}

/// Every cluster run, oldest first; a record that is not trusted is shown as such
/// and makes the command exit 3.
pub async fn list(config: &Config, json: bool) -> Result<()> {
    let sink = open_sink(config)?;
    let mut entries = Vec::new();
    let mut untrusted = None;
    for id in cluster::list_runs(&*sink).await? {
        match cluster::load_run(&*sink, &id).await {
            Ok(run) => {
                if !json {
                    let databases: Vec<String> =
                        run.databases.iter().map(|d| d.database.clone()).collect();
                    outln!(
                        "{}  {}  {} databases ({}){}{}",
                        run.run_id,
                        run.server_version,
                        databases.len(),
                        databases.join(", "),
                        if run.failed.is_empty() {
                            String::new()
                        } else {
                            format!("  INCOMPLETE: {} failed", run.failed.join(", "))
                        },
                        if run.passwords {
                            "  with passwords"
                        } else {
                            ""
                        }
                    );
                }
                entries.push(serde_json::to_value(&run).map_err(|e| {
                    Error::tool(format!("cannot render a cluster run as JSON: {e}"))
                })?);
            }
            Err(e) if e.kind() == ErrorKind::Integrity => {
                if !json {
                    outln!("{id}  NOT TRUSTED  {}", e.message());
                }
                entries.push(serde_json::json!({
                    "run_id": id,
                    "untrusted": e.message(),
                }));
                untrusted.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    if json {
        print_json(&entries)?;
    }
    untrusted.map_or(Ok(()), Err)
}

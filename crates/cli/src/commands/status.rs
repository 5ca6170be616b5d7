//! `pgproof status`: the library's status evaluation, rendered as lines, JSON or a
//! Prometheus textfile.

use std::io::Write;
use std::path::Path;

use jiff::SignedDuration;
use pgproof_core::ops::{Status, StatusReport, short_age};
use pgproof_core::{Error, Result};

use crate::commands::upkeep::now;
use crate::config::{Config, Databases};
use crate::engines::{open_signed, open_sink_with};
use crate::render::{human_bytes, outln, print_json};

pub async fn status(config: &Config, json: bool, prometheus: Option<&Path>) -> Result<()> {
    let mut status = Status::indexed(open_signed(config)?, config.status.clone())
        .alert_policy(config.alerts)
        .now(now()?);
    if let Databases::Named(configured) = &config.source.databases {
        status = status.expect_databases(configured.clone());
    }
    for replica in &config.replicas {
        let label = replica
            .url
            .as_deref()
            .map(crate::settings::redact_url)
            .unwrap_or_default();
        status = status.replica(label, open_sink_with(config, replica)?);
    }
    let report = status.run().await?;
    if let Some(file) = prometheus {
        write_textfile(file, &report)?;
    }
    if json {
        print_json(&report.databases)?;
    } else {
        print_lines(&report);
    }
    report.verdict()
}

fn print_lines(report: &StatusReport) {
    let ago = |secs: Option<i64>| {
        secs.map_or("-".into(), |a| {
            format!("{} ago", short_age(SignedDuration::from_secs(a)))
        })
    };
    for s in &report.databases {
        let state = if s.healthy() { "OK" } else { "BREACH" };
        let breaches: Vec<String> = s.breaches.iter().map(ToString::to_string).collect();
        outln!(
            "{state:<7} {}  {} backups  newest {}  verified {}  restore {}  {}{}",
            s.database,
            s.backups,
            ago(s.newest_backup_age_secs),
            ago(s.newest_verified_backup_age_secs),
            s.last_restore_secs
                .map_or("-".into(), |r| format!("{r:.1}s")),
            human_bytes(s.newest_backup_stored_bytes.unwrap_or(0)),
            if breaches.is_empty() {
                String::new()
            } else {
                format!("  ({})", breaches.join("; "))
            }
        );
        if let (Some(all), Some(proven)) = (s.tables, s.tables_proven) {
            outln!(
                "        {}  tables proven within status.max_table_unproven_age: {proven}/{all}",
                s.database
            );
        }
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

/// node_exporter's textfile collector reads whole files only: written beside the
/// target and renamed over it.
fn write_textfile(file: &Path, report: &StatusReport) -> Result<()> {
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
    tmp.write_all(report.prometheus_text().as_bytes())
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

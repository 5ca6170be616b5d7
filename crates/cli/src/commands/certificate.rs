//! `pgproof certificate`: export a proof certificate, and check one offline.

use std::io::Write;
use std::path::Path;

use pgproof_core::catalog::{self, Keyring, TrustedKey};
use pgproof_core::ops::certificate::{self, Checked};
use pgproof_core::{Error, Result};

use crate::config::Config;
use crate::engines::open_signed;
use crate::render::{outln, print_json};

pub async fn issue(
    config: &Config,
    which: &str,
    database: Option<&str>,
    since: Option<&str>,
    out: Option<&Path>,
) -> Result<()> {
    let sink = open_signed(config)?;
    let (database, ids, since) = match since {
        Some(text) => {
            let Some(database) = database else {
                return Err(Error::config(
                    "--since makes a bundle of one database's backups: name it with --database",
                ));
            };
            (
                database.to_owned(),
                Vec::new(),
                Some(crate::config::parse_time("--since", text)?),
            )
        }
        None => {
            let found = catalog::resolve(&*sink, which, database).await?;
            (found.database, vec![found.backup_id], None)
        }
    };
    let signed = certificate::issue(&sink, &database, &ids, since).await?;
    match out {
        Some(path) => {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
            file.write_all(&signed)
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
            eprintln!("wrote the certificate to {}", path.display());
            Ok(())
        }
        None => std::io::stdout()
            .write_all(&signed)
            .map_err(|e| Error::io("cannot write the certificate to stdout", e)),
    }
}

pub fn verify(file: &Path, keys: &[String], json: bool) -> Result<()> {
    let mut trusted = Vec::new();
    for key in keys {
        let path = Path::new(key);
        let text = if path.is_file() {
            std::fs::read_to_string(path)
                .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?
        } else {
            key.clone()
        };
        for line in text.lines().map(str::trim) {
            if !line.is_empty() && !line.starts_with('#') {
                trusted.push(TrustedKey::parse(line)?);
            }
        }
    }
    let stored =
        std::fs::read(file).map_err(|e| Error::io(format!("cannot read {}", file.display()), e))?;
    let Checked {
        certificate,
        issuer,
        backups,
    } = certificate::verify(&stored, &Keyring::new(None, trusted))?;
    let rows: Vec<serde_json::Value> = certificate
        .backups
        .iter()
        .zip(&backups)
        .map(|(b, (manifest, report))| {
            serde_json::json!({
                "backup_id": b.backup_id,
                "started_at": manifest.started_at,
                "server_version": manifest.source.server_version,
                "pg_dump_version": manifest.pg_dump_version,
                "tables": manifest.fingerprint.as_ref().map_or(0, |f| f.tables.len()),
                "manifest_sha256": b.manifest_sha256,
                "manifest_signed_by": b.manifest.signer,
                "verified": report.as_ref().map(|r| serde_json::json!({
                    "passed": r.passed,
                    "verified_at": r.verified_at,
                    "restore_ms": r.restore_ms,
                    "checks": r.checks.len(),
                    "failed": r.failures().map(|c| c.name.clone()).collect::<Vec<_>>(),
                    "tool": r.tool,
                    "verified_by": r.verified_by.as_ref().map(|s| &s.fingerprint),
                })),
                "verified_by": b.verification.as_ref().map(|v| &v.signer),
            })
        })
        .collect();
    if json {
        print_json(&serde_json::json!({
            "valid": true,
            "database": certificate.database,
            "issued_at": certificate.issued_at,
            "issued_by": issuer,
            "since": certificate.since,
            "backups": rows,
        }))?;
    } else {
        outln!(
            "certificate of {} issued {} by {} ({}): every signature valid",
            certificate.database,
            certificate.issued_at,
            issuer.fingerprint,
            issuer.comment
        );
        for (b, (manifest, report)) in certificate.backups.iter().zip(&backups) {
            let verdict = match report {
                Some(r) => format!(
                    "{} {} ({}/{} checks, restore {})",
                    if r.passed { "PASS" } else { "FAIL" },
                    r.verified_at.strftime("%Y-%m-%d %H:%M"),
                    r.checks.iter().filter(|c| c.passed).count(),
                    r.checks.len(),
                    r.restore_ms.map_or("not measured".into(), |ms| format!(
                        "{:.1}s",
                        ms as f64 / 1000.0
                    ))
                ),
                None => "never verified".into(),
            };
            outln!(
                "  {}  {} tables  PostgreSQL {}  {verdict}",
                b.backup_id,
                manifest.fingerprint.as_ref().map_or(0, |f| f.tables.len()),
                manifest.source.server_version
            );
        }
    }
    Ok(())
}

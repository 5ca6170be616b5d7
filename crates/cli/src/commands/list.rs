//! `pgproof list` and `pgproof show`: the committed backups, read from their manifests.

use pgproof_core::catalog;
use pgproof_core::{Error, ErrorKind, Result};

use crate::config::Config;
use crate::engines::open_sink;
use crate::render::{human_bytes, outln, print_json};

pub async fn list(config: &Config, database: Option<&str>, json: bool) -> Result<()> {
    let sink = open_sink(config)?;
    let mut manifests = Vec::new();
    let mut damaged = Vec::new();
    for found in catalog::list_backups(&*sink, database).await? {
        match catalog::load_manifest(&*sink, &found).await {
            Ok((manifest, _)) => manifests.push(manifest),
            // One damaged manifest must not hide the good backups: it is reported
            // beside them.
            Err(e) if e.kind() == ErrorKind::Integrity => {
                tracing::warn!(backup = %found.backup_id, database = %found.database, error = %e, "damaged manifest");
                damaged.push((found, e.to_string()));
            }
            Err(e) => return Err(e),
        }
    }
    if json {
        let mut entries: Vec<serde_json::Value> = manifests
            .iter()
            .map(serde_json::to_value)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::tool(format!("cannot render JSON: {e}")))?;
        entries.extend(damaged.iter().map(|(found, error)| {
            serde_json::json!({
                "backup_id": found.backup_id,
                "database": found.database,
                "status": "damaged",
                "error": error,
            })
        }));
        return print_json(&entries);
    }
    if manifests.is_empty() && damaged.is_empty() {
        eprintln!("no backups in {}", sink.describe());
        return Ok(());
    }
    outln!(
        "{:<25}  {:<16}  {:<6}  {:>10}  {:>10}  STARTED (UTC)",
        "BACKUP ID",
        "DATABASE",
        "FORMAT",
        "DUMP",
        "STORED"
    );
    for m in &manifests {
        outln!(
            "{:<25}  {:<16}  {:<6}  {:>10}  {:>10}  {}",
            m.backup_id,
            m.database,
            m.format,
            human_bytes(m.object.raw_bytes),
            human_bytes(m.object.stored_bytes),
            m.started_at.strftime("%Y-%m-%d %H:%M:%S")
        );
    }
    for (found, _) in &damaged {
        outln!(
            "{:<25}  {:<16}  DAMAGED manifest: `pgproof show {}` says why",
            found.backup_id,
            found.database,
            found.backup_id
        );
    }
    Ok(())
}

pub async fn show(config: &Config, which: &str, database: Option<&str>, json: bool) -> Result<()> {
    let sink = open_sink(config)?;
    let found = catalog::resolve(&*sink, which, database).await?;
    let (m, sha256) = catalog::load_manifest(&*sink, &found).await?;
    if json {
        return print_json(&m);
    }
    let encryption = m.encryption.as_ref().map_or("none".to_owned(), |e| {
        format!("{} to {}", e.scheme, e.recipients.join(", "))
    });
    let previous = m
        .previous
        .as_ref()
        .map_or("none (first backup)".to_owned(), |p| {
            format!("{} (manifest sha256 {})", p.backup_id, p.manifest_sha256)
        });
    outln!("backup      {}", m.backup_id);
    outln!(
        "database    {} ({}, server {})",
        m.database,
        m.source.encoding,
        m.source.server_version
    );
    outln!(
        "format      {} via pg_dump {}; codecs: {}",
        m.format,
        m.pg_dump_version,
        m.codecs.join(" -> ")
    );
    outln!("encryption  {encryption}");
    outln!("object      {}", m.object.key);
    outln!(
        "  dump      {} bytes, sha256 {}",
        m.object.raw_bytes,
        m.object.raw_sha256
    );
    outln!(
        "  stored    {} bytes, sha256 {}",
        m.object.stored_bytes,
        m.object.stored_sha256
    );
    outln!("started     {}", m.started_at);
    outln!("took        {:.1}s", m.duration_ms as f64 / 1000.0);
    outln!("previous    {previous}");
    outln!("manifest    sha256 {sha256}");
    Ok(())
}

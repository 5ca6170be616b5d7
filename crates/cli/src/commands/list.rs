//! `pgproof list` and `pgproof show`: the committed backups, read from their manifests.

use pgproof_core::catalog::{self, CatalogEntry, Inventory};
use pgproof_core::{Error, Result, Sink};

use crate::config::Config;
use crate::engines::{open_signed, open_sink};
use crate::render::{human_bytes, outln, print_json};

pub async fn list(config: &Config, database: Option<&str>, json: bool) -> Result<()> {
    let sink = open_signed(config)?;
    let now = crate::commands::upkeep::now()?;
    // One pass over the catalog: each manifest and record read once, or taken from the
    // catalog index where it covers them as listed.
    let inventory = Inventory::load_indexed(&sink, database).await?;
    let mut entries: Vec<(&CatalogEntry, &str)> = inventory
        .databases
        .iter()
        .flat_map(|(db, part)| part.backups.iter().map(move |b| (b, db.as_str())))
        .collect();
    entries.sort_by(|a, b| (&a.0.backup_id, a.1).cmp(&(&b.0.backup_id, b.1)));
    if json {
        let mut out = Vec::new();
        for (entry, db) in &entries {
            out.push(match &entry.manifest {
                Ok(m) => {
                    let mut v = serde_json::to_value(m)
                        .map_err(|e| Error::tool(format!("cannot render JSON: {e}")))?;
                    v["last_verification"] =
                        serde_json::json!(entry.verifications.last().map(|r| {
                            serde_json::json!({
                                "verified_at": r.verified_at,
                                "passed": r.passed,
                                "restore_ms": r.restore_ms,
                            })
                        }));
                    v["pins"] = serde_json::json!(entry.pins);
                    v
                }
                // One damaged manifest must not hide the good backups: it is
                // reported beside them.
                Err(error) => serde_json::json!({
                    "backup_id": entry.backup_id,
                    "database": db,
                    "status": "damaged",
                    "error": error,
                }),
            });
        }
        print_json(&out)?;
        return untrusted(&inventory);
    }
    if entries.is_empty() {
        eprintln!("no backups in {}", sink.describe());
        return untrusted(&inventory);
    }
    outln!(
        "{:<25}  {:<16}  {:<6}  {:>10}  {:>10}  {:<19}  {:<24}  PIN",
        "BACKUP ID",
        "DATABASE",
        "FORMAT",
        "DUMP",
        "STORED",
        "STARTED (UTC)",
        "LAST VERIFIED"
    );
    for (entry, db) in &entries {
        let m = match &entry.manifest {
            Ok(m) => m,
            Err(_) => {
                tracing::warn!(backup = %entry.backup_id, database = %db, "damaged manifest");
                outln!(
                    "{:<25}  {:<16}  DAMAGED manifest: `pgproof show {} --database {db}` says why",
                    entry.backup_id,
                    db,
                    entry.backup_id
                );
                continue;
            }
        };
        let verified = entry.verifications.last().map_or("never".to_owned(), |v| {
            format!(
                "{} {}{}",
                if v.passed { "PASS" } else { "FAIL" },
                v.verified_at.strftime("%Y-%m-%d %H:%M"),
                v.restore_ms
                    .map(|ms| format!(" {:.0}s", ms as f64 / 1000.0))
                    .unwrap_or_default()
            )
        });
        outln!(
            "{:<25}  {:<16}  {:<6}  {:>10}  {:>10}  {:<19}  {:<24}  {}",
            m.backup_id,
            m.database,
            m.format,
            human_bytes(m.dump_raw_bytes()),
            human_bytes(m.dump_stored_bytes()),
            m.started_at.strftime("%Y-%m-%d %H:%M:%S"),
            verified,
            entry.pinned(now).map(|p| p.describe()).unwrap_or_default()
        );
    }
    untrusted(&inventory)
}

/// Names every catalog object no trusted key signed, one line each on stderr, and
/// makes the command exit 3: they were left out, and someone wrote them.
pub fn untrusted(inventory: &Inventory) -> Result<()> {
    for f in inventory.findings() {
        eprintln!(
            "pgproof: not trusted: {}",
            pgproof_core::error::printable(&f.problem)
        );
    }
    inventory.untrusted_verdict()
}

pub async fn pin(
    config: &Config,
    which: &str,
    database: Option<&str>,
    until: Option<&str>,
    note: Option<String>,
) -> Result<()> {
    let until = until
        .map(|text| crate::config::parse_time("--until", text))
        .transpose()?;
    let sink = open_sink(config)?;
    let found = catalog::resolve(&*sink, which, database).await?;
    let pinned = catalog::pin(&*sink, &found.database, &found.backup_id, until, note).await?;
    outln!(
        "{} ({}) {}",
        found.backup_id,
        found.database,
        pinned.describe()
    );
    Ok(())
}

pub async fn unpin(config: &Config, which: &str, database: Option<&str>) -> Result<()> {
    let sink = open_sink(config)?;
    let found = catalog::resolve(&*sink, which, database).await?;
    let removed = catalog::unpin(&*sink, &found.database, &found.backup_id).await?;
    outln!(
        "{} ({}): {removed} pin{} removed",
        found.backup_id,
        found.database,
        if removed == 1 { "" } else { "s" }
    );
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
    if !m.parts.is_empty() {
        outln!(
            "  and       {} more files of the archive, {} bytes stored",
            m.parts.len(),
            m.parts.iter().map(|p| p.stored_bytes).sum::<u64>()
        );
    }
    if let Some(c) = &m.chunks {
        outln!(
            "  chunks    {} files of the archive, {} bytes, in {} shared chunks of {} bytes stored; {} of them ({} bytes) stored by this backup",
            c.files,
            c.raw_bytes,
            c.chunks,
            c.stored_bytes,
            c.new_chunks,
            c.new_bytes
        );
        outln!("  list      {}", c.list.key);
    }
    outln!("started     {}", m.started_at);
    outln!("took        {:.1}s", m.duration_ms as f64 / 1000.0);
    outln!("previous    {previous}");
    outln!("manifest    sha256 {sha256}");
    // Pins and verifications live beside the manifest.
    let inventory = Inventory::load(&*sink, Some(&m.database)).await?;
    let entry = inventory
        .databases
        .get(&m.database)
        .and_then(|p| p.backups.iter().find(|b| b.backup_id == m.backup_id));
    if let Some(entry) = entry {
        for p in &entry.pins {
            outln!("pin         {} (set {})", p.describe(), p.pinned_at);
        }
        for v in &entry.verifications {
            outln!(
                "verified    {} {}{}",
                v.verified_at,
                if v.passed { "PASS" } else { "FAIL" },
                v.restore_ms
                    .map(|ms| format!(", restore {:.1}s", ms as f64 / 1000.0))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Backups whose manifest is hidden behind a delete marker (S3 with versioning).
pub async fn hidden(config: &Config, database: Option<&str>, json: bool) -> Result<()> {
    let (bucket, prefix) = crate::engines::s3_bucket(&config.sink)?;
    let root = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    let scope = format!(
        "{root}{}",
        database.map(catalog::layout::database).unwrap_or_default()
    );
    let mut found = Vec::new();
    for h in bucket.hidden(&scope).await? {
        let Some(rest) = h.key.strip_prefix(&root) else {
            continue;
        };
        if catalog::layout::Kind::of(rest) == Some(catalog::layout::Kind::Manifest) {
            let parts: Vec<&str> = rest.split('/').collect();
            let (db, id) = (parts[0], parts[1]);
            found.push(serde_json::json!({ "database": db, "backup_id": id }));
        }
    }
    if json {
        return print_json(&found);
    }
    if found.is_empty() {
        outln!("no hidden backups");
    }
    for f in &found {
        outln!(
            "HIDDEN  {}  {}  (pgproof undelete {} --database {})",
            f["backup_id"].as_str().unwrap_or(""),
            f["database"].as_str().unwrap_or(""),
            f["backup_id"].as_str().unwrap_or(""),
            f["database"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// Removes the delete markers over a hidden backup's objects.
pub async fn undelete(config: &Config, backup_id: &str, database: &str) -> Result<()> {
    let (bucket, prefix) = crate::engines::s3_bucket(&config.sink)?;
    let root = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    let markers = bucket
        .hidden(&format!(
            "{root}{}/",
            catalog::layout::backup_dir(database, backup_id)
        ))
        .await?;
    if markers.is_empty() {
        return Err(Error::not_found(format!(
            "no hidden object of backup {backup_id} ({database}); `pgproof list --hidden` shows what can be brought back"
        )));
    }
    for m in &markers {
        bucket.remove_marker(m).await?;
    }
    outln!(
        "{backup_id} ({database}): {} objects brought back; `pgproof check` and `verify {backup_id}` prove it again",
        markers.len()
    );
    Ok(())
}

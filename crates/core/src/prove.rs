//! Proving backups: restore into a scratch database, run the verifiers, record the
//! result next to the manifest; and the drill, the whole loop on a database pgproof
//! creates for the purpose.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use jiff::Timestamp;

use crate::audit;
use crate::crypto::{Identities, Recipients};
use crate::dump::Format;
use crate::error::{Error, Result};
use crate::hashing::sha256_hex;
use crate::manifest::{self, BackupRef, MANIFEST_LIMIT, Manifest, ToolInfo};
use crate::pg::{ConnParams, db_err};
use crate::pipeline::{self, BackupRequest, Progress, RestoreOutcome, RestoreRequest};
use crate::sink::{self, Sink};
use crate::verify::{Check, Report, Restored, standard_verifiers};

/// Where and how to verify.
pub struct VerifyRequest {
    /// A server to restore into; pgproof creates (and drops) its own database there.
    pub scratch: ConnParams,
    /// Identities for encrypted backups.
    pub identities: Option<Identities>,
    /// `source.pg_bin_dir`.
    pub pg_bin_dir: Option<PathBuf>,
    /// Keep the scratch database for inspection.
    pub keep: bool,
    /// Progress callback for the restore.
    pub progress: Option<Progress>,
}

/// The scratch database name for a backup.
pub fn scratch_database(backup_id: &str) -> String {
    let id: String = backup_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("pgproof_verify_{id}")
}

/// Restores `backup` into a scratch database, runs the standard verifiers, writes the
/// verification record (`<db>/<id>/verify/<time>.json`) and drops the scratch
/// database unless asked to keep it. Failed checks are in the report, not an `Err`;
/// `Err` means verification could not run or its record could not be written.
pub async fn verify_backup(
    sink: Arc<dyn Sink>,
    backup: &BackupRef,
    req: VerifyRequest,
) -> Result<Report> {
    let (manifest, manifest_sha) = manifest::load_manifest(&*sink, backup).await?;
    let mut checks = manifest_chain_checks(&*sink, &manifest, &manifest_sha).await?;
    let target = req
        .scratch
        .with_dbname(&scratch_database(&manifest.backup_id));
    let request = RestoreRequest {
        target: target.clone(),
        identities: req.identities.clone(),
        clean: true,
        pg_bin_dir: req.pg_bin_dir.clone(),
        progress: req.progress.clone(),
    };
    let (proven, restore_ms) =
        restore_and_verify(sink.clone(), &manifest, request, !req.keep).await?;
    checks.extend(proven);
    let report = new_report(&manifest, &target, checks, restore_ms);
    write_report(&*sink, &report).await?;
    Ok(report)
}

/// Restores into `request.target`, runs the standard verifiers there, and drops the
/// target afterwards if asked. A failed restore is a failed check, named `archive`
/// when the object could not be trusted or opened.
async fn restore_and_verify(
    sink: Arc<dyn Sink>,
    manifest: &Manifest,
    request: RestoreRequest,
    drop_after: bool,
) -> Result<(Vec<Check>, Option<u64>)> {
    let target = request.target.clone();
    let outcome = match pipeline::restore(sink, manifest, request).await {
        Ok(outcome) => outcome,
        // The backup itself failed: its object is damaged, missing or unopenable, or
        // the restore program rejected it.
        Err(e @ (Error::Integrity(_) | Error::Key(_) | Error::NotFound(_))) => {
            return Ok((vec![Check::fail("archive", e.to_string())], None));
        }
        Err(e @ Error::Tool(_)) => return Ok((vec![Check::fail("restore", e.to_string())], None)),
        // The scratch server, credentials or config: verification could not run,
        // which says nothing about the backup.
        Err(e) => return Err(e),
    };
    let mut checks = vec![Check::pass(
        "restore",
        format!(
            "restored into {} in {:.2}s",
            target.describe(),
            outcome.duration.as_secs_f64()
        ),
    )];
    let ran = run_verifiers(manifest, &target, &outcome).await;
    if drop_after && let Err(e) = pipeline::drop_target(&target).await {
        tracing::error!(error = %e, database = %target.dbname(), "could not drop the scratch database; drop it by hand");
    }
    checks.extend(ran?);
    Ok((checks, Some(outcome.duration.as_millis() as u64)))
}

fn new_report(
    manifest: &Manifest,
    target: &ConnParams,
    checks: Vec<Check>,
    restore_ms: Option<u64>,
) -> Report {
    Report {
        backup_id: manifest.backup_id.clone(),
        database: manifest.database.clone(),
        verified_at: Timestamp::now(),
        passed: checks.iter().all(|c| c.passed),
        restore_ms,
        restored_into: target.describe(),
        tool: ToolInfo::current(),
        checks,
    }
}

async fn run_verifiers(
    manifest: &Manifest,
    target: &ConnParams,
    outcome: &RestoreOutcome,
) -> Result<Vec<Check>> {
    let client = target.connect().await?;
    let restored = Restored {
        manifest,
        client: &client,
        restore: outcome,
    };
    let mut checks = Vec::new();
    for verifier in standard_verifiers() {
        match verifier.verify(&restored).await {
            Ok(found) => checks.extend(found),
            Err(e) => checks.push(Check::fail(verifier.name(), format!("could not run: {e}"))),
        }
    }
    Ok(checks)
}

/// The manifest chain around one backup: its link to the previous manifest, and the
/// next manifest's link to it, each by sha256 of the stored bytes.
async fn manifest_chain_checks(
    sink: &dyn Sink,
    manifest: &Manifest,
    sha: &str,
) -> Result<Vec<Check>> {
    let all = manifest::list_backups(sink, Some(&manifest.database)).await?;
    let mut checks = Vec::new();
    checks.push(match &manifest.previous {
        None => Check::pass("manifest:previous", "first backup of its database"),
        Some(prev) => {
            let key = manifest::manifest_key(&manifest.database, &prev.backup_id);
            match sink::get_bytes(sink, &key, MANIFEST_LIMIT).await {
                Ok(bytes) if sha256_hex(&bytes) == prev.manifest_sha256 => Check::pass(
                    "manifest:previous",
                    format!(
                        "{} unchanged (sha256 {})",
                        prev.backup_id, prev.manifest_sha256
                    ),
                ),
                Ok(bytes) => Check::fail(
                    "manifest:previous",
                    format!(
                        "manifest of {} was edited: sha256 {} recorded, {} found",
                        prev.backup_id,
                        prev.manifest_sha256,
                        sha256_hex(&bytes)
                    ),
                ),
                Err(Error::NotFound(_)) => Check::fail(
                    "manifest:previous",
                    format!(
                        "manifest of the previous backup {} is missing",
                        prev.backup_id
                    ),
                ),
                Err(e) => return Err(e),
            }
        }
    });
    // The successor is whichever manifest links to this one (links are made at commit
    // time, so it need not be the next id); failing that, any manifest committed later
    // shows the link is missing.
    let mut successor = None;
    let mut committed_later = None;
    for other in all.iter().filter(|b| b.backup_id != manifest.backup_id) {
        let bytes = sink::get_bytes(sink, &other.manifest_key(), MANIFEST_LIMIT).await?;
        // A damaged manifest gets its own failed checks when it is verified.
        let Ok(other) = serde_json::from_slice::<Manifest>(&bytes) else {
            continue;
        };
        match other.previous {
            Some(p) if p.backup_id == manifest.backup_id => {
                successor = Some((other.backup_id, p.manifest_sha256));
            }
            _ if other.finished_at > manifest.finished_at && committed_later.is_none() => {
                committed_later = Some(other.backup_id);
            }
            _ => {}
        }
    }
    match (successor, committed_later) {
        (Some((next, recorded)), _) if recorded == sha => checks.push(Check::pass(
            "manifest:next",
            format!("{next} links to this manifest's sha256 {sha}"),
        )),
        (Some((next, recorded)), _) => checks.push(Check::fail(
            "manifest:next",
            format!(
                "this manifest was edited after {next} recorded it: sha256 {recorded} recorded, {sha} now"
            ),
        )),
        (None, Some(later)) => checks.push(Check::fail(
            "manifest:next",
            format!(
                "{later} was committed after this backup but no manifest links to it: a manifest in between was deleted"
            ),
        )),
        (None, None) => {}
    }
    Ok(checks)
}

async fn write_report(sink: &dyn Sink, report: &Report) -> Result<()> {
    let key = format!(
        "{}/{}/verify/{}.json",
        report.database,
        report.backup_id,
        report.verified_at.strftime("%Y%m%dT%H%M%S%.6fZ")
    );
    let mut body = serde_json::to_vec_pretty(report)
        .map_err(|e| Error::Tool(format!("cannot serialize the verification record: {e}")))?;
    body.push(b'\n');
    sink::put_bytes(sink, &key, Bytes::from(body)).await?;
    Ok(())
}

/// What a drill runs.
pub struct DrillRequest {
    /// A server where pgproof may create (and drop) the database `pgproof_drill`.
    pub server: ConnParams,
    /// Archive format.
    pub format: Format,
    /// gzip level (plain).
    pub gzip_level: u32,
    /// Encryption recipients (`None`: unencrypted).
    pub recipients: Option<Recipients>,
    /// The matching identities.
    pub identities: Option<Identities>,
    /// Audit events to write.
    pub audit_rows: i64,
    /// `source.pg_bin_dir`.
    pub pg_bin_dir: Option<PathBuf>,
}

/// What a drill did.
#[derive(Debug)]
pub struct DrillOutcome {
    /// The backup taken.
    pub manifest: Manifest,
    /// The verification of its restore.
    pub report: Report,
    /// Audit events written.
    pub audit_rows: i64,
    /// Rows in the edge-value table.
    pub edge_values: i64,
    /// Wall time of the whole drill.
    pub duration: Duration,
}

/// The database a drill creates.
pub const DRILL_DATABASE: &str = "pgproof_drill";

/// Values at the edges of what PostgreSQL and its dump formats handle.
const EDGE_VALUES: &str = r#"
CREATE TABLE drill_edge_values (
  id serial PRIMARY KEY, label text NOT NULL,
  ts timestamptz, ts_local timestamp, d date, f8 float8, f4 real, n numeric,
  txt text, j jsonb, b bytea, iv interval, arr text[]
);
INSERT INTO drill_edge_values (label, ts, ts_local, d, f8, f4, n, txt, j, b, iv, arr) VALUES
 ('min', '4714-11-24 00:00:00+00 BC', '4714-11-24 00:00:00 BC', '4714-11-24 BC', '-1.7976931348623157e308', '-3.4028235e38', '-1e-130', '', '{}', '', '-178000000 years', '{}'),
 ('max', '294276-12-31 23:59:59.999999+00', '294276-12-31 23:59:59.999999', '5874897-12-31', '1.7976931348623157e308', '3.4028235e38', '1e130', 'end', '[]', '\xff', '178000000 years', '{z}'),
 ('infinity', 'infinity', 'infinity', 'infinity', 'Infinity', 'Infinity', 'NaN', NULL, 'null', NULL, NULL, NULL),
 ('-infinity', '-infinity', '-infinity', '-infinity', '-Infinity', '-Infinity', '-0', NULL, NULL, NULL, NULL, NULL),
 ('negative zero', '2000-01-01 00:00:00+00', '2000-01-01 00:00:00', '2000-01-01', '-0', '-0', '0.000', '-0', '{"n": -0}', '\x00', '0', '{-0}'),
 ('nan', '1970-01-01 00:00:00+00', '1970-01-01 00:00:00', '1970-01-01', 'NaN', 'NaN', 'NaN', 'NaN', '{"n": 1e400}', '\x4e614e', '1 microsecond', '{NaN}'),
 ('subnormal', '2038-01-19 03:14:07+00', '2038-01-19 03:14:08', '2000-02-29', '4.9e-324', '1.4e-45', '0.30000000000000004', 'tiny', '{"f": 5e-324}', NULL, '-1 microsecond', NULL),
 ('44 BC', '0044-03-15 12:00:00+00 BC', '0044-03-15 12:00:00 BC', '0044-03-15 BC', '0.1', '0.1', '44', 'Ides of March', '{"era": "BC"}', '\x2c', '1 day -1 second', '{BC}'),
 ('44 AD', '0044-03-15 12:00:00+00', '0044-03-15 12:00:00', '0044-03-15', '0.1', '0.1', '44', 'Ides of March', '{"era": "AD"}', '\x2c', '1 day -1 second', '{AD}'),
 ('1 BC / 1 AD', '0001-12-31 23:59:59.999999+00 BC', '0001-01-01 00:00:00', '0001-01-01 BC', '1', '1', '1', 'turn', NULL, NULL, NULL, NULL),
 ('dst gap', '2026-03-08 02:30:00 America/New_York', '2026-03-08 02:30:00', '2026-03-08', '2', '2', '2', 'gap', NULL, NULL, NULL, NULL),
 ('lmt', '1850-06-01 12:00:00 Europe/Paris', '1850-06-01 12:00:00', '1850-06-01', '3', '3', '3', 'local mean time', NULL, NULL, NULL, NULL),
 ('unicode', '2026-11-23 06:31:51.123456+00', NULL, NULL, NULL, NULL, NULL, E'😀 ünïcödé 中文 \u0001', '{"😀": "ü", "dup": 1, "dup": 2}', convert_to('😀', 'UTF8'), NULL, '{"a,b","c\"d",NULL,"😀"}'),
 ('delimiters', NULL, NULL, NULL, NULL, NULL, NULL, E'tab\there\nnew line\\backslash|pipe,comma"quote''apos', '{"s": "\t\n\\"}', '\x5c5c', NULL, '{"\t","\n","\\"}');
"#;

/// Runs the full prove loop on `req.server`: creates `pgproof_drill` (replacing a
/// leftover one), migrates the audit chain, writes a workload and edge values, backs
/// up into `sink`, wipes the database and confirms it is empty, restores into it,
/// runs the verifiers and records the verification. The database is dropped at the
/// end. Failed checks are in the report.
pub async fn drill(sink: Arc<dyn Sink>, req: DrillRequest) -> Result<DrillOutcome> {
    let started = Instant::now();
    let target = req.server.with_dbname(DRILL_DATABASE);
    let _ = pipeline::drop_target(&target).await;
    req.server
        .connect()
        .await?
        .batch_execute(&format!(
            "CREATE DATABASE {DRILL_DATABASE} TEMPLATE template0 ENCODING 'UTF8'"
        ))
        .await
        .map_err(db_err("creating the drill database"))?;
    let result = drill_in(sink, &target, &req).await;
    let dropped = pipeline::drop_target(&target).await;
    let mut outcome = result?;
    dropped?;
    outcome.duration = started.elapsed();
    Ok(outcome)
}

async fn drill_in(
    sink: Arc<dyn Sink>,
    target: &ConnParams,
    req: &DrillRequest,
) -> Result<DrillOutcome> {
    let mut client = target.connect().await?;
    audit::migrate(&mut client).await?;
    client
        .execute(
            "INSERT INTO pgproof.audit_events (actor, action, subject, occurred_at, details) \
             SELECT 'user-' || (g % 17), (ARRAY['issue','renew','revoke','login'])[1 + g % 4], \
                    'cert-' || (g / 4), timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second', \
                    jsonb_build_object('n', g, 'note', repeat('x', (g % 7)::int)) \
             FROM generate_series(1, $1::int8) g",
            &[&req.audit_rows],
        )
        .await
        .map_err(db_err("writing audit events"))?;
    client
        .batch_execute(
            "INSERT INTO pgproof.audit_events (actor, action, subject, occurred_at) VALUES \
             ('edge', 'login', 'bc', '0044-03-15 12:00:00+00 BC'), \
             ('edge', 'login', 'ad', '0044-03-15 12:00:00+00'), \
             ('edge', 'login', 'far', '294276-12-31 23:59:59.999999+00'), \
             ('edge', 'login', 'inf', 'infinity')",
        )
        .await
        .map_err(db_err("writing edge audit events"))?;
    client
        .batch_execute(EDGE_VALUES)
        .await
        .map_err(db_err("writing edge values"))?;
    let edge_values: i64 = client
        .query_one("SELECT count(*) FROM drill_edge_values", &[])
        .await
        .map_err(db_err("counting edge values"))?
        .get(0);
    let audit_rows = req.audit_rows + 4;
    drop(client);

    let backup = pipeline::backup(
        sink.clone(),
        BackupRequest {
            source: target.clone(),
            format: req.format,
            gzip_level: req.gzip_level,
            recipients: req.recipients.clone(),
            pg_bin_dir: req.pg_bin_dir.clone(),
            lock_wait: Duration::from_secs(60),
            progress: None,
        },
    )
    .await?;
    let manifest = backup.manifest;

    let mut checks = vec![wipe(target).await?];
    let request = RestoreRequest {
        target: target.clone(),
        identities: req.identities.clone(),
        clean: false,
        pg_bin_dir: req.pg_bin_dir.clone(),
        progress: None,
    };
    // The caller drops the drill database once the drill is over.
    let (proven, restore_ms) = restore_and_verify(sink.clone(), &manifest, request, false).await?;
    checks.extend(proven);
    let report = new_report(&manifest, target, checks, restore_ms);
    write_report(&*sink, &report).await?;
    Ok(DrillOutcome {
        manifest,
        report,
        audit_rows,
        edge_values,
        duration: Duration::ZERO,
    })
}

/// Drops everything the drill created and proves the database is empty: a wipe that
/// did nothing would let the drill pass on the original data.
async fn wipe(target: &ConnParams) -> Result<Check> {
    let client = target.connect().await?;
    client
        .batch_execute(
            "DROP SCHEMA pgproof CASCADE; DROP TABLE drill_edge_values; \
             DROP TABLE refinery_schema_history; \
             SELECT lo_unlink(oid) FROM pg_largeobject_metadata",
        )
        .await
        .map_err(db_err("wiping the drill database"))?;
    let left: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
               WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
                 AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%') \
             + (SELECT count(*) FROM pg_namespace WHERE nspname = 'pgproof') \
             + (SELECT count(*) FROM pg_largeobject_metadata)",
            &[],
        )
        .await
        .map_err(db_err("checking the wipe"))?
        .get(0);
    Ok(if left == 0 {
        Check::pass("wipe", "schema dropped; no relation or large object left")
    } else {
        Check::fail("wipe", format!("{left} objects survived the wipe"))
    })
}

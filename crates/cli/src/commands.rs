//! What each subcommand does, composed from the engines.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pgproof_core::cluster::EphemeralCluster;
use pgproof_core::config::Config;
use pgproof_core::crypto::{Identities, KeyPair, Recipients};
use pgproof_core::manifest::{self, BackupRef, Manifest};
use pgproof_core::pg::ConnParams;
use pgproof_core::pipeline::{self, BackupRequest, Progress, RestoreRequest};
use pgproof_core::prove::{self, DrillRequest, VerifyRequest};
use pgproof_core::verify::Report;
use pgproof_core::{Error, Format, Result, Sink};
use pgproof_sink_fs::FsSink;

use crate::settings::{self, FlagOverrides};
use crate::{Annotations, Cli, Command, ConfigCommand, LogFormat};

pub async fn run(cli: Cli) -> Result<()> {
    let mut flags = FlagOverrides {
        sink_url: cli.sink.clone(),
        ..FlagOverrides::default()
    };
    match &cli.command {
        Command::Backup { format, source, .. } => {
            flags.format = format.clone();
            flags.source_url = source.clone();
        }
        Command::Restore { identity, .. } | Command::Verify { identity, .. } => {
            flags.identity_file = identity.clone();
        }
        Command::Drill { format, .. } => flags.format = format.clone(),
        Command::Keygen { output } => return keygen(output),
        Command::Migrate { url } => return migrate(url).await,
        _ => {}
    }
    let (config, file) = settings::load(cli.config.as_deref(), &flags)?;
    if let Some(file) = &file {
        tracing::debug!(file = %file.display(), "configuration file read");
    }
    let progress = ProgressOutput::new(&cli);
    match cli.command {
        Command::Backup { json, verify, .. } => {
            backup(
                &config,
                json,
                verify || config.verify.after_backup,
                &progress,
            )
            .await
        }
        Command::Verify {
            backup,
            all,
            database,
            keep,
            json,
            ..
        } => {
            let sink = open_sink(&config)?;
            let targets = if all {
                manifest::list_backups(&*sink, database.as_deref()).await?
            } else {
                vec![manifest::resolve(&*sink, &backup, database.as_deref()).await?]
            };
            let reports = verify(&config, sink, &targets, keep, json, &progress).await?;
            if json {
                print_json(&reports)?;
            }
            verification_outcome(&reports)
        }
        Command::Drill {
            rows,
            server,
            annotations,
            json,
            ..
        } => drill(&config, rows, server.as_deref(), annotations, json).await,
        Command::Restore {
            backup,
            target,
            database,
            clean,
            json,
            ..
        } => {
            restore(
                &config,
                &backup,
                &target,
                database.as_deref(),
                clean,
                json,
                &progress,
            )
            .await
        }
        Command::List { database, json } => list(&config, database.as_deref(), json).await,
        Command::Show {
            backup,
            database,
            json,
        } => show(&config, &backup, database.as_deref(), json).await,
        Command::Config {
            command: ConfigCommand::Check { json },
        } => config_check(&config, file.as_deref(), json),
        Command::Keygen { .. } | Command::Migrate { .. } => Ok(()),
    }
}

/// Progress bars on stderr when it is a terminal and logs are for humans; nothing
/// otherwise.
struct ProgressOutput {
    enabled: bool,
}

impl ProgressOutput {
    fn new(cli: &Cli) -> Self {
        Self {
            enabled: std::io::stderr().is_terminal()
                && cli.quiet == 0
                && cli.log_format == LogFormat::Text,
        }
    }

    fn start(&self, label: String) -> (ProgressBar, Option<Progress>) {
        if !self.enabled {
            return (ProgressBar::hidden(), None);
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} {prefix} {bytes} at {binary_bytes_per_sec}, {elapsed}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_prefix(label);
        bar.enable_steady_tick(Duration::from_millis(200));
        let handle = bar.clone();
        let callback: Progress = Arc::new(move |bytes| handle.set_position(bytes));
        (bar, Some(callback))
    }
}

/// The one place that knows every sink engine: picks it by `sink.url`'s scheme. Builds
/// the client only; no request is sent.
fn open_sink(config: &Config) -> Result<Arc<dyn Sink>> {
    let Some(url) = config.sink.url.as_deref() else {
        return Err(Error::Config(
            "sink.url is not set; set it in the config file, PGPROOF_SINK__URL or --sink (e.g. file:///var/backups/pgproof, s3://bucket/prefix, gs://bucket/prefix)".into(),
        ));
    };
    match url.split_once("://").map(|(scheme, _)| scheme) {
        Some("s3") => Ok(Arc::new(pgproof_sink_s3::from_config(&config.sink)?)),
        Some("gs") => Ok(Arc::new(pgproof_sink_gcs::from_config(&config.sink)?)),
        Some("file") | None => {
            let s = &config.sink;
            if s.endpoint.is_some() || s.region.is_some() || s.service_account_file.is_some() {
                return Err(Error::Config(
                    "sink.endpoint, sink.region and sink.service_account_file apply to s3:// and gs:// sinks only; remove them for a local directory".into(),
                ));
            }
            Ok(Arc::new(FsSink::from_url(url)?))
        }
        Some(other) => Err(Error::Config(format!(
            "sink.url has the unsupported scheme {other:?}; use file:///path, s3://bucket/prefix or gs://bucket/prefix"
        ))),
    }
}

fn recipients(config: &Config) -> Result<Option<Recipients>> {
    let enc = &config.encryption;
    if !enc.enabled {
        tracing::warn!("encryption.enabled = false: backups are stored unencrypted");
        return Ok(None);
    }
    Recipients::load(&enc.recipients, enc.recipients_file.as_deref()).map(Some)
}

/// Databases to back up: `source.databases`, else the URL's database.
fn source_databases(config: &Config) -> Result<(ConnParams, Vec<String>)> {
    let params = ConnParams::parse(config.source_url())?;
    let databases = if config.source.databases.is_empty() {
        vec![params.dbname().to_owned()]
    } else {
        config.source.databases.clone()
    };
    Ok((params, databases))
}

async fn backup(
    config: &Config,
    json: bool,
    then_verify: bool,
    progress: &ProgressOutput,
) -> Result<()> {
    let sink = open_sink(config)?;
    let recipients = recipients(config)?;
    let (params, databases) = source_databases(config)?;
    let mut committed: Vec<Manifest> = Vec::new();
    let mut first_error: Option<Error> = None;
    for database in &databases {
        let (bar, callback) = progress.start(format!("backup {database}"));
        let request = BackupRequest {
            source: params.with_dbname(database),
            format: config.dump.format,
            gzip_level: config.dump.gzip_level,
            recipients: recipients.clone(),
            pg_bin_dir: config.source.pg_bin_dir.clone(),
            lock_wait: Duration::from_secs(config.dump.lock_wait_timeout_secs),
            progress: callback,
        };
        let result = pipeline::backup(sink.clone(), request).await;
        bar.finish_and_clear();
        match result {
            Ok(outcome) => {
                let m = outcome.manifest;
                if !json {
                    println!(
                        "{}  {}  {}  {} -> {} stored in {:.1}s",
                        m.backup_id,
                        m.database,
                        m.format,
                        human_bytes(m.object.raw_bytes),
                        human_bytes(m.object.stored_bytes),
                        m.duration_ms as f64 / 1000.0
                    );
                }
                committed.push(m);
            }
            Err(e) => {
                tracing::error!(database = %database, error = %e, "backup failed");
                first_error.get_or_insert(e);
            }
        }
    }
    if then_verify && !committed.is_empty() {
        let targets: Vec<BackupRef> = committed
            .iter()
            .map(|m| BackupRef {
                database: m.database.clone(),
                backup_id: m.backup_id.clone(),
            })
            .collect();
        let reports = verify(config, sink, &targets, false, json, progress).await?;
        if json {
            print_json(&serde_json::json!({ "backups": committed, "reports": reports }))?;
        }
        return match first_error {
            Some(e) => Err(e),
            None => verification_outcome(&reports),
        };
    }
    if json {
        print_json(&committed)?;
    }
    match first_error {
        Some(e) if databases.len() > 1 => Err(Error::Tool(format!(
            "{} of {} backups failed; first: {e}",
            databases.len() - committed.len(),
            databases.len()
        ))),
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn restore(
    config: &Config,
    which: &str,
    target: &str,
    database: Option<&str>,
    clean: bool,
    json: bool,
    progress: &ProgressOutput,
) -> Result<()> {
    let sink = open_sink(config)?;
    let found = manifest::resolve(&*sink, which, database).await?;
    let (m, _) = manifest::load_manifest(&*sink, &found).await?;
    let identities = match (&m.encryption, &config.encryption.identity_file) {
        (Some(_), Some(path)) => Some(Identities::load(path)?),
        _ => None,
    };
    let target = ConnParams::parse(target)?;
    let (bar, callback) = progress.start(format!("restore {}", m.backup_id));
    let outcome = pipeline::restore(
        sink,
        &m,
        RestoreRequest {
            target,
            identities,
            clean,
            pg_bin_dir: config.source.pg_bin_dir.clone(),
            progress: callback,
        },
    )
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
        println!(
            "restored {} ({}) into {} in {:.1}s",
            m.backup_id,
            m.database,
            outcome.database,
            outcome.duration.as_secs_f64()
        );
        Ok(())
    }
}

async fn list(config: &Config, database: Option<&str>, json: bool) -> Result<()> {
    let sink = open_sink(config)?;
    let mut manifests = Vec::new();
    for found in manifest::list_backups(&*sink, database).await? {
        manifests.push(manifest::load_manifest(&*sink, &found).await?.0);
    }
    if json {
        return print_json(&manifests);
    }
    if manifests.is_empty() {
        eprintln!("no backups in {}", sink.describe());
        return Ok(());
    }
    println!(
        "{:<25}  {:<16}  {:<6}  {:>10}  {:>10}  STARTED (UTC)",
        "BACKUP ID", "DATABASE", "FORMAT", "DUMP", "STORED"
    );
    for m in &manifests {
        println!(
            "{:<25}  {:<16}  {:<6}  {:>10}  {:>10}  {}",
            m.backup_id,
            m.database,
            m.format.to_string(),
            human_bytes(m.object.raw_bytes),
            human_bytes(m.object.stored_bytes),
            m.started_at.strftime("%Y-%m-%d %H:%M:%S")
        );
    }
    Ok(())
}

async fn show(config: &Config, which: &str, database: Option<&str>, json: bool) -> Result<()> {
    let sink = open_sink(config)?;
    let found = manifest::resolve(&*sink, which, database).await?;
    let (m, sha256) = manifest::load_manifest(&*sink, &found).await?;
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
    println!("backup      {}", m.backup_id);
    println!(
        "database    {} ({}, server {})",
        m.database, m.source.encoding, m.source.server_version
    );
    println!(
        "format      {} via pg_dump {}; codecs: {}",
        m.format,
        m.pg_dump_version,
        m.codecs.join(" -> ")
    );
    println!("encryption  {encryption}");
    println!("object      {}", m.object.key);
    println!(
        "  dump      {} bytes, sha256 {}",
        m.object.raw_bytes, m.object.raw_sha256
    );
    println!(
        "  stored    {} bytes, sha256 {}",
        m.object.stored_bytes, m.object.stored_sha256
    );
    println!("started     {}", m.started_at);
    println!("took        {:.1}s", m.duration_ms as f64 / 1000.0);
    println!("previous    {previous}");
    println!("manifest    sha256 {sha256}");
    Ok(())
}

/// Where verification restores: `verify.scratch_url`, or an ephemeral cluster that
/// lives as long as the returned guard.
fn scratch_server(config: &Config, keep: bool) -> Result<(ConnParams, Option<EphemeralCluster>)> {
    match &config.verify.scratch_url {
        Some(url) => Ok((ConnParams::parse(url)?, None)),
        None if keep => Err(Error::Config(
            "--keep needs verify.scratch_url: an ephemeral cluster is removed when pgproof exits"
                .into(),
        )),
        None => {
            let cluster = EphemeralCluster::start(None)?;
            tracing::info!(version = %cluster.tools().version(), "started an ephemeral cluster to verify in");
            Ok((cluster.params("postgres")?, Some(cluster)))
        }
    }
}

fn identities(config: &Config) -> Result<Option<Identities>> {
    config
        .encryption
        .identity_file
        .as_deref()
        .map(Identities::load)
        .transpose()
}

async fn verify(
    config: &Config,
    sink: Arc<dyn Sink>,
    targets: &[BackupRef],
    keep: bool,
    json: bool,
    progress: &ProgressOutput,
) -> Result<Vec<Report>> {
    if targets.is_empty() {
        return Err(Error::NotFound(format!(
            "no backup to verify in {}",
            sink.describe()
        )));
    }
    let (scratch, _cluster) = scratch_server(config, keep)?;
    let identities = identities(config)?;
    let mut reports: Vec<Report> = Vec::new();
    for target in targets {
        let (bar, callback) = progress.start(format!("verify {}", target.backup_id));
        let report = prove::verify_backup(
            sink.clone(),
            target,
            VerifyRequest {
                scratch: scratch.clone(),
                identities: identities.clone(),
                pg_bin_dir: config.source.pg_bin_dir.clone(),
                keep,
                progress: callback,
            },
        )
        .await;
        bar.finish_and_clear();
        let report = report?;
        if !json {
            print_report(&report, Annotations::None);
        }
        reports.push(report);
    }
    Ok(reports)
}

/// Success only if every report passed.
fn verification_outcome(reports: &[Report]) -> Result<()> {
    let failed: Vec<&Report> = reports.iter().filter(|r| !r.passed).collect();
    match failed.as_slice() {
        [] => Ok(()),
        [one] => Err(Error::Integrity(format!(
            "backup {} failed verification: {}",
            one.backup_id,
            one.failures()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        many => Err(Error::Integrity(format!(
            "{} of {} backups failed verification: {}",
            many.len(),
            reports.len(),
            many.iter()
                .map(|r| r.backup_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn print_report(report: &Report, annotations: Annotations) {
    for check in &report.checks {
        match (check.passed, annotations) {
            (true, _) => println!("  ok    {:<40} {}", check.name, check.detail),
            (false, Annotations::Github) => println!(
                "::error title=pgproof {}::{}: {}",
                check.name,
                report.backup_id,
                check.detail.replace('\n', " ")
            ),
            (false, Annotations::None) => println!("  FAIL  {:<40} {}", check.name, check.detail),
        }
    }
    let passed = report.checks.iter().filter(|c| c.passed).count();
    let rto = report.restore_ms.map_or("restore failed".to_owned(), |ms| {
        format!("restore {:.2}s", ms as f64 / 1000.0)
    });
    println!(
        "{} {} ({}): {passed}/{} checks passed, {rto}",
        if report.passed { "PASS" } else { "FAIL" },
        report.backup_id,
        report.database,
        report.checks.len()
    );
}

async fn drill(
    config: &Config,
    rows: i64,
    server: Option<&str>,
    annotations: Annotations,
    json: bool,
) -> Result<()> {
    let (server, _cluster) = match server {
        Some(url) => (ConnParams::parse(url)?, None),
        None => {
            let cluster = EphemeralCluster::start(None)?;
            (cluster.params("postgres")?, Some(cluster))
        }
    };
    // The configured sink if there is one; otherwise a directory that lives as long
    // as the drill.
    let scratch_dir;
    let sink: Arc<dyn Sink> = if config.sink.url.is_some() {
        open_sink(config)?
    } else {
        scratch_dir = tempfile_dir()?;
        Arc::new(FsSink::new(scratch_dir.path().join("sink")))
    };
    let enc = &config.encryption;
    let configured = !enc.recipients.is_empty() || enc.recipients_file.is_some();
    let (recipients, identities) = if !enc.enabled {
        (recipients(config)?, None)
    } else if configured {
        if enc.identity_file.is_none() {
            return Err(Error::Config(
                "the drill restores what it encrypts: set encryption.identity_file for the configured recipients".into(),
            ));
        }
        (recipients(config)?, identities(config)?)
    } else {
        tracing::info!(
            "no age recipient configured: the drill encrypts to a key generated for this run"
        );
        let pair = KeyPair::generate();
        (Some(pair.recipients()), Some(pair.identities()))
    };
    let format: Format = config.dump.format;
    let outcome = prove::drill(
        sink.clone(),
        DrillRequest {
            server,
            format,
            gzip_level: config.dump.gzip_level,
            recipients,
            identities,
            audit_rows: rows,
            pg_bin_dir: config.source.pg_bin_dir.clone(),
        },
    )
    .await?;
    let report = &outcome.report;
    if json {
        print_json(report)?;
    } else if !report.passed {
        print_report(report, annotations);
    }
    let m = &outcome.manifest;
    let passed = report.checks.iter().filter(|c| c.passed).count();
    if report.passed {
        println!(
            "PASS drill ({format}, {}): {} audit rows + {} edge values; backup {} -> {} stored in {:.2}s (fingerprint {:.2}s); wipe confirmed; restore (RTO) {:.2}s; {passed}/{} checks passed; {:.1}s in all",
            sink.describe(),
            outcome.audit_rows,
            outcome.edge_values,
            human_bytes(m.object.raw_bytes),
            human_bytes(m.object.stored_bytes),
            m.duration_ms as f64 / 1000.0,
            m.fingerprint_ms as f64 / 1000.0,
            report.restore_ms.unwrap_or(0) as f64 / 1000.0,
            report.checks.len(),
            outcome.duration.as_secs_f64()
        );
        Ok(())
    } else {
        // A failed drill exits 1, as CI steps expect; its checks were printed above.
        Err(Error::Tool(format!(
            "drill failed: {} of {} checks failed ({})",
            report.checks.len() - passed,
            report.checks.len(),
            report
                .failures()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

fn tempfile_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("pgproof-drill-")
        .tempdir()
        .map_err(|e| Error::io("cannot create a temporary sink directory for the drill", e))
}

async fn migrate(url: &str) -> Result<()> {
    let params = ConnParams::parse(url)?;
    let mut client = params.connect().await?;
    let applied = pgproof_core::audit::migrate(&mut client).await?;
    if applied.is_empty() {
        println!("{}: audit chain up to date", params.describe());
    } else {
        println!("{}: applied {}", params.describe(), applied.join(", "));
    }
    Ok(())
}

fn keygen(output: &Path) -> Result<()> {
    let pair = KeyPair::generate();
    pair.write_identity_file(output)?;
    eprintln!(
        "wrote age identity to {} (keep it secret, keep it off the database host); its public key:",
        output.display()
    );
    println!("{}", pair.public_key());
    Ok(())
}

fn config_check(config: &Config, file: Option<&Path>, json: bool) -> Result<()> {
    let mut shown = config.clone();
    shown.source.url = shown.source.url.as_deref().map(settings::redact_url);
    shown.verify.scratch_url = shown
        .verify
        .scratch_url
        .as_deref()
        .map(settings::redact_url);
    shown.sink.url = shown.sink.url.as_deref().map(settings::redact_url);
    shown.sink.endpoint = shown.sink.endpoint.as_deref().map(settings::redact_url);
    let mut problems: Vec<String> = Vec::new();
    if let Err(e) = ConnParams::parse(config.source_url()) {
        problems.push(e.to_string());
    }
    if let Err(e) = open_sink(config) {
        problems.push(e.to_string());
    }
    if config.encryption.enabled
        && let Err(e) = Recipients::load(
            &config.encryption.recipients,
            config.encryption.recipients_file.as_deref(),
        )
    {
        problems.push(e.to_string());
    }
    if let Some(path) = &config.encryption.identity_file
        && let Err(e) = Identities::load(path)
    {
        problems.push(e.to_string());
    }
    if let Some(dir) = &config.source.pg_bin_dir
        && !dir.join("pg_dump").is_file()
    {
        problems.push(format!(
            "source.pg_bin_dir {} holds no pg_dump",
            dir.display()
        ));
    }
    if json {
        print_json(&serde_json::json!({
            "file": file.map(|f| f.display().to_string()),
            "config": shown,
            "problems": problems,
        }))?;
    } else {
        match file {
            Some(f) => println!("# read from {} and PGPROOF_* environment", f.display()),
            None => println!("# no config file; defaults and PGPROOF_* environment"),
        }
        let text = toml::to_string_pretty(&shown)
            .map_err(|e| Error::Config(format!("cannot render the configuration: {e}")))?;
        print!("{text}");
        for p in &problems {
            println!("# problem: {p}");
        }
    }
    match problems.len() {
        0 => Ok(()),
        1 => Err(Error::Config(problems.remove(0))),
        n => Err(Error::Config(format!(
            "{n} problems: {}",
            problems.join("; ")
        ))),
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Tool(format!("cannot render JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

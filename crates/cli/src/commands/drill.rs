//! `pgproof drill`: the whole prove loop on a database pgproof creates.

use std::sync::Arc;

use pgproof_core::catalog::{Keyring, SignedSink, SigningKey};
use pgproof_core::codec::KeyPair;
use pgproof_core::ops::Drill;
use pgproof_core::pg::ConnParams;
use pgproof_core::{Error, Result, Sink};
use pgproof_sink_fs::FsSink;

use crate::args::Annotations;
use crate::config::Config;
use crate::engines::{identities, keyring, open_sink, recipients, start_ephemeral};
use crate::render::{human_bytes, outln, print_json, print_report};

pub async fn drill(
    config: &Config,
    rows: i64,
    server: Option<&str>,
    annotations: Annotations,
    json: bool,
) -> Result<()> {
    let (server, _cluster) = match server {
        Some(url) => (ConnParams::parse(url)?, None),
        None => {
            let cluster = start_ephemeral(config)?;
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
        // Signed like every catalog: with the configured key, or one made for this
        // run (the drill's sink lives as long as the drill).
        let keys = match &config.signing.key_file {
            Some(_) => keyring(config)?,
            None => Keyring::new(Some(SigningKey::generate("pgproof drill")?), Vec::new()),
        };
        Arc::new(SignedSink::new(
            Arc::new(FsSink::new(scratch_dir.path().join("sink"))),
            keys,
        ))
    };
    let enc = &config.encryption;
    let configured = !enc.recipients.is_empty() || enc.recipients_file.is_some();
    let (recipients, identities) = if !enc.enabled {
        (recipients(config)?, None)
    } else if configured {
        if enc.identity_file.is_none() {
            return Err(Error::config(
                "the drill restores what it encrypts: set encryption.identity_file for the configured recipients",
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
    let format = config.dump.format;
    let mut drill = Drill::new(server, sink.clone())
        // A random chunk-id secret only for the drill's own sink, never a configured one.
        .dumper(crate::engines::dumper(config, config.sink.url.is_none())?)
        .audit_rows(rows)
        .pg_bin_dir(config.source.pg_bin_dir.clone());
    match (recipients, identities) {
        (Some(r), Some(ids)) => drill = drill.keys(r, ids),
        (None, _) => {}
        (Some(_), None) => {
            return Err(Error::config(
                "the drill restores what it encrypts: set encryption.identity_file for the configured recipients",
            ));
        }
    }
    let outcome = drill.run().await?;
    let report = &outcome.report;
    if json {
        print_json(report)?;
    } else if !report.passed {
        print_report(report, annotations);
    }
    let m = &outcome.manifest;
    let passed = report.checks.iter().filter(|c| c.passed).count();
    if report.passed {
        outln!(
            "PASS drill ({format}, {}): {} audit rows + {} edge values; backup {} -> {} stored in {:.2}s (fingerprint {:.2}s); wipe confirmed; restore (RTO) {:.2}s; {passed}/{} checks passed; {:.1}s in all",
            sink.describe(),
            outcome.audit_rows,
            outcome.edge_values,
            human_bytes(m.dump_raw_bytes()),
            human_bytes(m.dump_stored_bytes()),
            m.duration_ms as f64 / 1000.0,
            m.fingerprint_ms as f64 / 1000.0,
            report.restore_ms.unwrap_or(0) as f64 / 1000.0,
            report.checks.len(),
            outcome.duration.as_secs_f64()
        );
        Ok(())
    } else {
        // A failed drill exits 1, as CI steps expect; its checks were printed above.
        Err(Error::tool(format!(
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

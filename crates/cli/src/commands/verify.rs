//! `pgproof verify`: restore into a scratch database, compare, record.

use std::sync::Arc;

use pgproof_core::catalog::{
    self, BackupRef, Inventory, MANIFEST_LIMIT, SignedSink, Verification, trust,
};
use pgproof_core::codec::sha256_hex;
use pgproof_core::error::ErrorKind;
use pgproof_core::ops::{Verify, VerifyQueue};
use pgproof_core::pg::ConnParams;
use pgproof_core::scratch::EphemeralCluster;
use pgproof_core::sink::SinkExt;
use pgproof_core::verify::{Amcheck, ManifestChain, Report, Verifier, standard_verifiers_sharing};
use pgproof_core::{Error, Result, Sink};

use crate::args::Annotations;
use crate::config::{Config, parse_duration};
use crate::engines::{identities, open_signed, scratch_server};
use crate::render::{ProgressOutput, outln, print_json, print_report};

/// Which backups `pgproof verify` takes.
pub struct Which<'a> {
    /// One backup (an id, a prefix or `latest`), unless `all` or `stale`.
    pub backup: &'a str,
    /// Every trusted backup.
    pub all: bool,
    /// The backups not proven within this age.
    pub stale: Option<&'a str>,
    /// At most this many of the stale ones.
    pub limit: Option<usize>,
    /// As one of N workers on the catalog (with `stale`).
    pub worker: bool,
    /// Only this database's.
    pub database: Option<&'a str>,
}

/// `pgproof verify`: the backups `which` names, verified (or adopted), with a verdict
/// on them all; catalog objects that were not trusted fail the command at the end.
pub async fn verify(
    config: &Config,
    which: Which<'_>,
    adopt: bool,
    keep: bool,
    json: bool,
    progress: &ProgressOutput,
) -> Result<()> {
    if which.worker
        && let Some(age) = which.stale
    {
        return work(config, age, &which, keep, json, progress).await;
    }
    let signed = open_signed(config)?;
    let sink: Arc<dyn Sink> = signed.clone();
    let mut untrusted = None;
    let targets = if which.all {
        // The trusted backups only; the rest are named at the end.
        let inventory = Inventory::load(&*sink, which.database).await?;
        untrusted = crate::commands::list::untrusted(&inventory).err();
        if adopt {
            catalog::list_backups(&*sink, which.database).await?
        } else {
            inventory.trusted_backups()
        }
    } else if let Some(age) = which.stale {
        let (targets, flagged) = stale_backups(&*sink, which.database, age, which.limit).await?;
        untrusted = flagged;
        if targets.is_empty() {
            if json {
                print_json(&Vec::<()>::new())?;
            } else {
                outln!("every backup was proven within {age}");
            }
            return untrusted.map_or(Ok(()), Err);
        }
        targets
    } else {
        vec![catalog::resolve(&*sink, which.backup, which.database).await?]
    };
    let reports = if adopt {
        adopt_all(config, &signed, &targets, keep, json, progress).await?
    } else {
        verify_all(config, sink, &targets, keep, json, progress).await?
    };
    if json {
        print_json(&reports)?;
    }
    pgproof_core::verify::verdict(&reports)?;
    untrusted.map_or(Ok(()), Err)
}

pub async fn verify_all(
    config: &Config,
    sink: Arc<dyn Sink>,
    targets: &[BackupRef],
    keep: bool,
    json: bool,
    progress: &ProgressOutput,
) -> Result<Vec<Report>> {
    if targets.is_empty() {
        return Err(Error::not_found(format!(
            "no backup to verify in {}",
            sink.describe()
        )));
    }
    let identities = identities(config)?;
    let (scratch, cluster) = scratch_server(config, keep)?;
    let ephemeral = cluster.is_some();
    let verifier = crate::engines::keyring(config)?.signer();
    let mut reports: Vec<Report> = Vec::new();
    // One chain checker for the run: each manifest is read once, however many backups.
    let chain = ManifestChain::default();
    for target in targets {
        let (bar, callback) = progress.start(format!("verify {}", target.backup_id));
        let report = Verify::new(sink.clone(), target.clone(), scratch.clone())
            .identities(identities.clone())
            .pg_bin_dir(config.source.pg_bin_dir.clone())
            .ephemeral_scratch(ephemeral)
            .verified_by(verifier.clone())
            .verifiers(verifiers(config, &chain))
            .keep(keep)
            .progress(callback)
            .run()
            .await;
        bar.finish_and_clear();
        let report = report.map_err(|e| name_backup(e, target))?;
        if !json {
            print_report(&report, Annotations::None);
        }
        reports.push(report);
    }
    Ok(reports)
}

/// The verifiers of one verification: the standard ones sharing `chain`, the
/// configured invariants, amcheck when configured.
fn verifiers(config: &Config, chain: &ManifestChain) -> Vec<Box<dyn Verifier>> {
    let mut verifiers = standard_verifiers_sharing(chain, config.verify.invariants.clone());
    if config.verify.amcheck {
        verifiers.push(Box::new(Amcheck));
    }
    verifiers
}

/// Identities that cannot open one backup among several (`verify --all`, a key
/// rotated since) must say which backup: the library's message names the keys.
fn name_backup(e: Error, target: &BackupRef) -> Error {
    match e.kind() {
        ErrorKind::Key => {
            let named = Error::new(
                e.kind(),
                format!(
                    "backup {} ({}): {}",
                    target.backup_id,
                    target.database,
                    e.message()
                ),
            )
            .with_object(target.backup_id.to_string());
            match e.setting() {
                Some(setting) => named.with_setting(setting),
                None => named,
            }
        }
        _ => e,
    }
}

/// `verify --stale AGE --worker`: one of N workers on the catalog
/// ([`VerifyQueue`]): claimed backups verified one after another until none of the
/// round is left; then the verdict on them all, and catalog objects that were not
/// trusted fail the command at the end.
async fn work(
    config: &Config,
    age: &str,
    which: &Which<'_>,
    keep: bool,
    json: bool,
    progress: &ProgressOutput,
) -> Result<()> {
    let max_age = parse_duration("--stale", age)?;
    let ttl = config.verify.claim_ttl()?;
    let sink: Arc<dyn Sink> = open_signed(config)?;
    let identities = identities(config)?;
    let verifier = crate::engines::keyring(config)?.signer();
    let mut queue = VerifyQueue::new(sink.clone(), max_age)
        .database(which.database.map(str::to_owned))
        .claim_ttl(ttl)
        .now(crate::commands::upkeep::injected_now()?);
    let chain = ManifestChain::default();
    // Started with the first job: a worker with nothing to do starts no cluster.
    let mut scratch: Option<(ConnParams, Option<EphemeralCluster>)> = None;
    let mut reports: Vec<Report> = Vec::new();
    let mut taken_over = 0usize;
    let mut limited = false;
    let mut unverifiable: Vec<Error> = Vec::new();
    while let Some(job) = queue.next().await? {
        let target = job.backup().clone();
        let (server, cluster) = match &scratch {
            Some(s) => s,
            None => scratch.insert(scratch_server(config, keep)?),
        };
        let (bar, callback) = progress.start(format!("verify {}", target.backup_id));
        let verify = Verify::new(sink.clone(), target.clone(), server.clone())
            .identities(identities.clone())
            .pg_bin_dir(config.source.pg_bin_dir.clone())
            .ephemeral_scratch(cluster.is_some())
            .verified_by(verifier.clone())
            .verifiers(verifiers(config, &chain))
            .keep(keep)
            .progress(callback);
        let outcome = job.run(verify).await;
        bar.finish_and_clear();
        let outcome = match outcome {
            // A backup whose objects are not what the catalog says (a damaged sealed
            // settings object, say) is that backup's failure; the pool goes on.
            Err(e) if e.kind() == ErrorKind::Integrity => {
                let e = name_backup(e, &target);
                eprintln!("pgproof: {}", pgproof_core::error::printable(e.message()));
                unverifiable.push(e);
                continue;
            }
            other => other,
        };
        match outcome.map_err(|e| name_backup(e, &target))? {
            Some(report) => {
                if !json {
                    print_report(&report, Annotations::None);
                }
                reports.push(report);
            }
            None => {
                taken_over += 1;
                tracing::warn!(database = %target.database, backup_id = %target.backup_id, "its claim was taken over by another worker, which verifies it; nothing recorded here");
            }
        }
        if which.limit.is_some_and(|n| reports.len() + taken_over >= n) {
            limited = true;
            break;
        }
    }
    if json {
        print_json(&reports)?;
    } else {
        outln!(
            "worker: {} verified{}; {}",
            reports.len(),
            if taken_over > 0 {
                format!(", {taken_over} taken over by other workers")
            } else {
                String::new()
            },
            if limited {
                "stopped at --limit".to_owned()
            } else {
                format!("no backup of the round (attempted within {age}) is left to take")
            }
        );
    }
    for f in queue.findings() {
        eprintln!(
            "pgproof: not trusted: {}",
            pgproof_core::error::printable(&f.problem)
        );
    }
    pgproof_core::verify::verdict(&reports)?;
    if let Some(first) = unverifiable.into_iter().next() {
        return Err(first);
    }
    queue.untrusted_verdict()
}

/// `verify --adopt`: each target whose manifest is unsigned is verified as it is and,
/// if every check passed, adopted (a signed record of its manifest's sha256); a
/// signed one is verified as usual. Oldest first, so each adoption's predecessor is
/// trusted by the time `manifest:previous` reads it.
pub async fn adopt_all(
    config: &Config,
    signed: &Arc<SignedSink>,
    targets: &[BackupRef],
    keep: bool,
    json: bool,
    progress: &ProgressOutput,
) -> Result<Vec<Report>> {
    let mut reports = Vec::new();
    for target in targets {
        let key = target.manifest_key();
        let stored = signed.inner().get_bytes(&key, MANIFEST_LIMIT).await?;
        let trusted = signed.get_signed(&key).await.is_ok();
        let sink: Arc<dyn Sink> = if trusted {
            signed.clone()
        } else {
            Arc::new(signed.adopting(&target.database, &target.backup_id))
        };
        let mut report = verify_all(
            config,
            sink,
            std::slice::from_ref(target),
            keep,
            json,
            progress,
        )
        .await?;
        let Some(report) = report.pop() else {
            continue;
        };
        if !trusted && report.passed {
            // Adopted: exactly the manifest the verification read, which must also be
            // the one stored before and after it.
            let now = signed.inner().get_bytes(&key, MANIFEST_LIMIT).await?;
            if now != stored || report.manifest_sha256 != sha256_hex(&stored) {
                return Err(Error::integrity(format!(
                    "manifest {key} changed while it was verified; not adopted"
                ))
                .with_object(key));
            }
            let record = Verification {
                verified_at: report.verified_at,
                passed: report.passed,
                restore_ms: report.restore_ms,
            }
            .record_name();
            trust::adopt(
                &**signed,
                &target.database,
                &target.backup_id,
                &sha256_hex(&stored),
                &record,
            )
            .await?;
            if !json {
                outln!(
                    "adopted {} ({}): its unsigned manifest (sha256 {}) is trusted from now on",
                    target.backup_id,
                    target.database,
                    sha256_hex(&stored)
                );
            }
        }
        reports.push(report);
    }
    Ok(reports)
}

/// The backups whose newest passing verification is older than `age` (or that never
/// passed one), least recently proven first, at most `limit`; and the error naming
/// catalog objects that were not trusted, if any.
pub async fn stale_backups(
    sink: &dyn Sink,
    database: Option<&str>,
    age: &str,
    limit: Option<usize>,
) -> Result<(Vec<BackupRef>, Option<Error>)> {
    let age = parse_duration("--stale", age)?;
    let inventory = Inventory::load(sink, database).await?;
    let targets = inventory.stale(crate::commands::upkeep::now()?, age, limit);
    Ok((targets, crate::commands::list::untrusted(&inventory).err()))
}

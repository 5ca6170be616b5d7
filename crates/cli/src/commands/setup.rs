//! Setting up: `pgproof migrate`, `pgproof keygen`, `pgproof config check`.

use std::path::Path;

use pgproof_core::catalog::SigningKey;
use pgproof_core::codec::{Identities, KeyPair, Recipients};
use pgproof_core::pg::ConnParams;
use pgproof_core::{Error, Result};

use crate::config::Config;
use crate::engines::open_sink;
use crate::render::{error_line, outln, print_json};
use crate::settings;

pub async fn migrate(url: &str) -> Result<()> {
    let params = ConnParams::parse(url)?;
    let mut client = params.connect().await?;
    let applied = pgproof_core::evidence::audit::migrate(&mut client).await?;
    if applied.is_empty() {
        outln!("{}: audit chain up to date", params.describe());
    } else {
        outln!("{}: applied {}", params.describe(), applied.join(", "));
    }
    Ok(())
}

pub fn keygen(output: &Path, signing: bool, comment: Option<&str>) -> Result<()> {
    if signing {
        let comment = comment.map_or_else(|| format!("pgproof@{}", hostname()), str::to_owned);
        let key = SigningKey::generate(&comment)?;
        key.write_file(output)?;
        let public = key.public_key();
        eprintln!(
            "wrote the signing key {} to {} (keep it secret, on this host only); its public key, for trust.keys on every host that reads this sink:",
            public.fingerprint(),
            output.display()
        );
        outln!("{}", public.to_openssh());
        return Ok(());
    }
    let pair = KeyPair::generate();
    pair.write_identity_file(output)?;
    eprintln!(
        "wrote age identity to {} (keep it secret, keep it off the database host); its public key:",
        output.display()
    );
    outln!("{}", pair.public_key());
    Ok(())
}

/// This host's name, for a signing key's comment.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The config as `config check` shows it: URLs without credentials, a webhook as its
/// host, a secret key pasted among the recipients never shown.
fn redacted(config: &Config) -> Config {
    let mut shown = config.clone();
    shown.source.url = shown.source.url.as_deref().map(settings::redact_url);
    shown.verify.scratch_url = shown
        .verify
        .scratch_url
        .as_deref()
        .map(settings::redact_url);
    shown.sink.url = shown.sink.url.as_deref().map(settings::redact_url);
    // A secret key pasted among the recipients is refused below; it is never shown.
    for r in &mut shown.encryption.recipients {
        if r.trim().to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
            *r = "**** (an age secret key, not a public key)".into();
        }
    }
    shown.sink.endpoint = shown.sink.endpoint.as_deref().map(settings::redact_url);
    shown.notify.url = shown
        .notify
        .url
        .as_deref()
        .map(crate::hooks::redact_webhook);
    shown
}

/// With `sink.object_lock` set, what the bucket says of versioning and Object Lock
/// (a promise about the bucket is checked against the bucket); each problem found is
/// added to `problems`.
async fn bucket_lock_state(
    config: &Config,
    problems: &mut Vec<String>,
) -> Option<pgproof_sink_s3::versions::LockConfiguration> {
    config.sink.object_lock.as_ref()?;
    match crate::engines::s3_bucket(&config.sink) {
        Ok((bucket, _)) => match bucket.lock_configuration().await {
            Ok(state) => {
                if !state.versioning || !state.object_lock {
                    problems.push(format!(
                        "sink.object_lock is set, but the bucket has versioning {} and Object Lock {}: objects will be refused or not locked; create the bucket with Object Lock enabled",
                        if state.versioning { "on" } else { "off" },
                        if state.object_lock { "on" } else { "off" }
                    ));
                }
                Some(state)
            }
            Err(e) => {
                problems.push(error_line(&e));
                None
            }
        },
        Err(e) => {
            problems.push(error_line(&e));
            None
        }
    }
}

pub async fn config_check(config: &Config, file: Option<&Path>, json: bool) -> Result<()> {
    let shown = redacted(config);
    let mut problems: Vec<String> = Vec::new();
    if let Err(e) = crate::engines::source_params(config) {
        problems.push(error_line(&e));
    }
    if let Err(e) = open_sink(config) {
        problems.push(error_line(&e));
    }
    if let Err(e) = config.verify.claim_ttl() {
        problems.push(error_line(&e));
    }
    // Keys by fingerprint, as `ssh-keygen -l` shows them: enough to compare with
    // the hosts that hold them, nothing secret.
    let keyring = crate::engines::keyring(config).ok();
    let signing_key = keyring.as_ref().and_then(|k| k.signer());
    let trusted_keys: Vec<pgproof_core::catalog::trust::Signer> = keyring
        .as_ref()
        .map(|k| {
            k.trusted()
                .iter()
                .map(|t| pgproof_core::catalog::trust::Signer {
                    fingerprint: t.fingerprint(),
                    comment: t.comment().to_owned(),
                })
                .collect()
        })
        .unwrap_or_default();
    if config.encryption.enabled
        && let Err(e) = Recipients::load(
            &config.encryption.recipients,
            "encryption.recipients",
            config.encryption.recipients_file.as_deref(),
        )
    {
        problems.push(error_line(&e));
    }
    if let Some(path) = &config.encryption.identity_file
        && let Err(e) = Identities::load(path)
    {
        problems.push(error_line(&e));
    }
    let lock_state = bucket_lock_state(config, &mut problems).await;
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
            "bucket": lock_state.as_ref().map(|s| serde_json::json!({
                "versioning": s.versioning,
                "object_lock": s.object_lock,
                "default_retention": s.default_retention,
            })),
            "signing_key": signing_key,
            "trusted_keys": trusted_keys,
            "problems": problems,
        }))?;
    } else {
        match file {
            Some(f) => outln!("# read from {} and PGPROOF_* environment", f.display()),
            None => outln!("# no config file; defaults and PGPROOF_* environment"),
        }
        let text = toml::to_string_pretty(&shown)
            .map_err(|e| Error::config(format!("cannot render the configuration: {e}")))?;
        outln!("{}", text.trim_end());
        if let Some(s) = &lock_state {
            outln!(
                "# bucket: versioning {}, Object Lock {}, default retention {}",
                if s.versioning { "on" } else { "off" },
                if s.object_lock { "on" } else { "off" },
                s.default_retention.as_deref().unwrap_or("none")
            );
        }
        if let Some(s) = &signing_key {
            outln!("# signs as: {} {}", s.fingerprint, s.comment);
        }
        for t in &trusted_keys {
            outln!("# trusts: {} {}", t.fingerprint, t.comment);
        }
        for p in &problems {
            outln!("# problem: {p}");
        }
    }
    match problems.len() {
        0 => Ok(()),
        1 => Err(Error::config(problems.remove(0))),
        n => Err(Error::config(format!(
            "{n} problems: {}",
            problems.join("; ")
        ))),
    }
}

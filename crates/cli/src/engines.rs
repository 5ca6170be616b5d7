//! The one place that knows every engine: turns the configuration into a sink, keys,
//! connection parameters and a scratch server.

use std::sync::Arc;

use pgproof_core::catalog::{Keyring, SignedSink, SigningKey, TrustedKey};
use pgproof_core::codec::{Identities, Recipients};
use pgproof_core::pg::{ConnParams, connectable_databases};
use pgproof_core::scratch::EphemeralCluster;
use pgproof_core::{Error, Result, Sink};
use pgproof_sink_fs::FsSink;
use pgproof_sink_object_store::SinkConfig;

use crate::config::{Config, Databases, wildcard_match};

/// The sink `sink.url`'s scheme names, behind the catalog's signature gate. Builds the
/// client only; no request is sent.
pub fn open_sink(config: &Config) -> Result<Arc<dyn Sink>> {
    Ok(open_signed(config)?)
}

/// [`open_sink`] as the gate itself, for what needs its keys or the store beneath.
pub fn open_signed(config: &Config) -> Result<Arc<SignedSink>> {
    Ok(Arc::new(SignedSink::new(
        open_store(&config.sink)?,
        keyring(config)?,
    )))
}

/// `store` behind the signature gate: what this host writes is signed with
/// `signing.key_file`, what it reads must be signed by a key in `[trust]` (or its own).
fn signed(config: &Config, store: Arc<dyn Sink>) -> Result<Arc<dyn Sink>> {
    Ok(Arc::new(SignedSink::new(store, keyring(config)?)))
}

/// The signing key and the trusted keys the config names.
pub fn keyring(config: &Config) -> Result<Keyring> {
    let signer = config
        .signing
        .key_file
        .as_deref()
        .map(SigningKey::load)
        .transpose()?;
    let mut trusted = Vec::new();
    for line in &config.trust.keys {
        trusted.push(
            TrustedKey::parse(line)
                .map_err(|e| Error::config(format!("trust.keys: {}", e.message())))?,
        );
    }
    if let Some(path) = &config.trust.keys_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("cannot read trust.keys_file {}", path.display()), e))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            trusted.push(TrustedKey::parse(line).map_err(|e| {
                Error::config(format!(
                    "trust.keys_file {} line {}: {}",
                    path.display(),
                    n + 1,
                    e.message()
                ))
            })?);
        }
    }
    if signer.is_none() && trusted.is_empty() {
        return Err(Error::config(
            "no signing key and no trusted key: pgproof believes nothing in a sink that a trusted key did not sign; on a host that takes backups set signing.key_file (pgproof keygen --signing --output FILE), on one that only reads them set trust.keys to the backup hosts' public keys",
        ));
    }
    Ok(Keyring::new(signer, trusted))
}

/// The dumper `[dump]` describes. A deduplicating one keys its chunk ids with a
/// secret derived from `signing.key_file`; with `throwaway` (a drill's own sink) and
/// no key file, with a random one.
pub fn dumper(config: &Config, throwaway: bool) -> Result<Arc<dyn pgproof_core::dump::Dumper>> {
    use pgproof_core::dump::{ChunkIds, Chunking};
    if !config.dump.dedup {
        return Ok(config.dump.dumper(None));
    }
    let ids = match config.signing.key_file.as_deref() {
        Some(path) => ChunkIds::from_signing_key(&SigningKey::load(path)?)?,
        None if throwaway => ChunkIds::from_signing_key(&SigningKey::generate("pgproof drill")?)?,
        None => {
            return Err(Error::config(
                "dump.dedup keys its chunk ids with a secret derived from the signing key: set signing.key_file (pgproof keygen --signing --output FILE)",
            ));
        }
    };
    let chunking = Chunking::new(
        config.dump.dedup_chunk_kib.saturating_mul(1024),
        Arc::new(ids),
    )?;
    Ok(config.dump.dumper(Some(chunking)))
}

/// The sink a `[sink]`-shaped section describes (the primary, or a replica), behind
/// the signature gate.
pub fn open_sink_with(config: &Config, sink: &SinkConfig) -> Result<Arc<dyn Sink>> {
    signed(config, open_store(sink)?)
}

/// The storage a `[sink]`-shaped section describes, as it is: only what copies stored
/// bytes unchanged or checks them itself may use it.
fn open_store(sink: &SinkConfig) -> Result<Arc<dyn Sink>> {
    let Some(url) = sink.url.as_deref() else {
        return Err(Error::config(
            "sink.url is not set; set it in the config file, PGPROOF_SINK__URL or --sink (e.g. file:///var/backups/pgproof, s3://bucket/prefix, gs://bucket/prefix, az://container/prefix)",
        ));
    };
    match url.split_once("://").map(|(scheme, _)| scheme) {
        Some("s3") => Ok(Arc::new(pgproof_sink_s3::from_config(sink)?)),
        Some("gs") => Ok(Arc::new(pgproof_sink_gcs::from_config(sink)?)),
        Some("az" | "azure") => Ok(Arc::new(pgproof_sink_azure::from_config(sink)?)),
        Some("file") | None => {
            let s = sink;
            if s.endpoint.is_some()
                || s.region.is_some()
                || s.service_account_file.is_some()
                || s.account.is_some()
                || s.use_emulator
            {
                return Err(Error::config(
                    "sink.endpoint, sink.region, sink.service_account_file, sink.account and sink.use_emulator apply to s3://, gs:// and az:// sinks only; remove them for a local directory",
                ));
            }
            Ok(Arc::new(FsSink::from_url(url)?))
        }
        Some(other) => Err(Error::config(format!(
            "sink.url has the unsupported scheme {other:?}; use file:///path, s3://bucket/prefix, gs://bucket/prefix or az://container/prefix"
        ))),
    }
}

/// The bucket-level client and key prefix of an s3:// sink.
pub fn s3_bucket(sink: &SinkConfig) -> Result<(pgproof_sink_s3::versions::Bucket, String)> {
    let url = sink.url.as_deref().unwrap_or("");
    if !url.starts_with("s3://") {
        return Err(Error::config(format!(
            "hidden backups and bucket lock settings are S3 features; sink.url is {}",
            crate::settings::redact_url(url)
        )));
    }
    let location =
        pgproof_sink_object_store::Location::parse(pgproof_sink_object_store::Service::S3, url)?;
    // The sink's own settings and credential chain: what can write the bucket can read
    // its lock settings.
    let bucket = pgproof_sink_s3::versions::Bucket::from_config(sink)?;
    Ok((bucket, location.prefix))
}

/// The sink copies go to: a `[[replicas]]` entry whose URL is `to`, or `to` itself
/// with default settings (credentials from the environment).
pub fn replica_sink(config: &Config, to: &str) -> Result<Arc<dyn Sink>> {
    match config
        .replicas
        .iter()
        .find(|r| r.url.as_deref() == Some(to))
    {
        Some(replica) => open_sink_with(config, replica),
        None => open_sink_with(
            config,
            &SinkConfig {
                url: Some(to.to_owned()),
                ..SinkConfig::default()
            },
        ),
    }
}

/// The recipients backups are encrypted to; `None` when encryption is explicitly off.
pub fn recipients(config: &Config) -> Result<Option<Recipients>> {
    let enc = &config.encryption;
    if !enc.enabled {
        tracing::warn!("encryption.enabled = false: backups are stored unencrypted");
        return Ok(None);
    }
    Recipients::load(
        &enc.recipients,
        "encryption.recipients",
        enc.recipients_file.as_deref(),
    )
    .map(Some)
}

/// The identities in `encryption.identity_file`, if set.
pub fn identities(config: &Config) -> Result<Option<Identities>> {
    config
        .encryption
        .identity_file
        .as_deref()
        .map(Identities::load)
        .transpose()
}

/// The source's connection parameters: the URL first, then `[source]`'s TLS keys, then
/// the `PG*` environment.
pub fn source_params(config: &Config) -> Result<ConnParams> {
    let s = &config.source;
    ConnParams::parse_with_env(config.source_url(), |name| {
        let configured = match name {
            "PGSSLMODE" => s.sslmode.clone(),
            "PGSSLROOTCERT" => s.sslrootcert.clone(),
            "PGSSLCERT" => s.sslcert.as_ref().map(|p| p.display().to_string()),
            "PGSSLKEY" => s.sslkey.as_ref().map(|p| p.display().to_string()),
            _ => None,
        };
        configured.or_else(|| std::env::var(name).ok())
    })
}

/// Databases to back up: `source.databases` (a list, or every connectable one for
/// `"all"`, minus `source.exclude`), else the URL's database.
pub async fn source_databases(config: &Config) -> Result<(ConnParams, Vec<String>)> {
    let mut params = source_params(config)?;
    if let Some(secs) = config.source.connect_timeout_secs {
        params = params.with_connect_timeout(std::time::Duration::from_secs(secs));
    }
    let databases = match &config.source.databases {
        Databases::UrlDatabase => vec![params.dbname().to_owned()],
        Databases::Named(names) => names.clone(),
        Databases::All(_) => {
            let all = connectable_databases(&params).await?;
            let kept: Vec<String> = all
                .into_iter()
                .filter(|db| !config.source.exclude.iter().any(|p| wildcard_match(p, db)))
                .collect();
            if kept.is_empty() {
                return Err(Error::config(format!(
                    "source.databases = \"all\" found no database to back up on {} (after source.exclude)",
                    params.describe()
                )));
            }
            kept
        }
    };
    Ok((params, databases))
}

/// Where verification restores: `verify.scratch_url`, or an ephemeral cluster that
/// lives as long as the returned guard.
pub fn scratch_server(
    config: &Config,
    keep: bool,
) -> Result<(ConnParams, Option<EphemeralCluster>)> {
    match &config.verify.scratch_url {
        Some(url) => Ok((ConnParams::parse(url)?, None)),
        None if keep => Err(Error::config(
            "--keep needs verify.scratch_url: an ephemeral cluster is removed when pgproof exits",
        )),
        None => {
            let cluster = start_ephemeral(config)?;
            tracing::info!(version = %cluster.tools().version(), "started an ephemeral cluster to verify in");
            Ok((cluster.params("postgres")?, Some(cluster)))
        }
    }
}

/// Starts an ephemeral cluster of the install `source.pg_bin_dir` names when it holds
/// the server programs, else of the newest one found. pgproof restores into it with the
/// programs of `source.pg_bin_dir`, which must be at least as new as the server: a
/// newer server found elsewhere (Debian's 17 beside a configured 15) would make every
/// verification fail for want of a new enough pg_restore.
pub fn start_ephemeral(config: &Config) -> Result<EphemeralCluster> {
    let own = config.source.pg_bin_dir.as_deref().filter(|dir| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|p| dir.join(p).is_file())
    });
    EphemeralCluster::start(own)
}

//! The configuration file's shape: one section per concern, each mapped onto the
//! engines' own options by `engines`. `[sink]` is the sink crates' own
//! [`SinkConfig`]; the rest is the CLI's.

use std::path::PathBuf;

use pgproof_core::dump::Format;
use pgproof_core::error::{Error, Result};
use pgproof_core::evidence::invariant::Invariant;
use pgproof_sink_object_store::SinkConfig;
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// What to back up.
    pub source: SourceConfig,
    /// How to dump.
    pub dump: DumpConfig,
    /// How to encrypt.
    pub encryption: EncryptionConfig,
    /// Where backups go.
    pub sink: SinkConfig,
    /// How backups are proven.
    pub verify: VerifyConfig,
}

/// `[verify]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// A server to restore into for verification (pgproof creates and drops its own
    /// database there); default: an ephemeral local cluster.
    pub scratch_url: Option<String>,
    /// Verify every backup right after taking it.
    pub after_backup: bool,
    /// The application's invariant queries (`[[verify.invariants]]` with `name`,
    /// `sql` and optionally `expect`): run in the dump's snapshot at backup time and
    /// again on every restore, which must give the same result.
    pub invariants: Vec<Invariant>,
}

/// `[source]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// libpq URI; `PG*` variables fill the gaps.
    pub url: Option<String>,
    /// Databases to back up; empty means the URL's database.
    pub databases: Vec<String>,
    /// Directory holding pg_dump/pg_restore/psql; default: the newest found whose
    /// major is at least the server's.
    pub pg_bin_dir: Option<PathBuf>,
    /// How long connecting may take, handshake included, for pgproof and the programs
    /// it runs; default: the URL's `connect_timeout`, else `PGCONNECT_TIMEOUT`, else 30.
    pub connect_timeout_secs: Option<u64>,
    /// libpq's sslmode (disable, allow, prefer, require, verify-ca, verify-full) when
    /// the URL does not say; default `PGSSLMODE`, else prefer.
    pub sslmode: Option<String>,
    /// The CA certificate file that signed the server's (or `system`).
    pub sslrootcert: Option<String>,
    /// A client certificate (PEM).
    pub sslcert: Option<PathBuf>,
    /// Its unencrypted private key (PEM).
    pub sslkey: Option<PathBuf>,
}

/// `[dump]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DumpConfig {
    /// `custom` or `plain`.
    pub format: Format,
    /// gzip level for plain dumps, 0–9.
    pub gzip_level: u32,
    /// How long pg_dump (and the fingerprint) wait for a table lock before the backup
    /// fails, in seconds.
    pub lock_wait_timeout_secs: u64,
    /// How long one of pgproof's own statements in the dump's snapshot (a catalog
    /// query, one table's fingerprint) may run, in seconds; 0 = no limit. The dump
    /// itself is bounded by the lock wait only.
    pub statement_timeout_secs: u64,
}

impl Default for DumpConfig {
    fn default() -> Self {
        Self {
            format: Format::Custom,
            gzip_level: 6,
            lock_wait_timeout_secs: 300,
            statement_timeout_secs: 6 * 3600,
        }
    }
}

/// `[encryption]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionConfig {
    /// Encrypt backups (default true). Turning it off must be explicit.
    pub enabled: bool,
    /// age public keys (`age1…`).
    pub recipients: Vec<String>,
    /// File of age public keys, one a line.
    pub recipients_file: Option<PathBuf>,
    /// age identity file for restore.
    pub identity_file: Option<PathBuf>,
}

impl Default for EncryptionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            recipients: Vec::new(),
            recipients_file: None,
            identity_file: None,
        }
    }
}

impl Config {
    /// Checks values serde cannot: ranges and required combinations.
    pub fn validate(&self) -> Result<()> {
        if self.dump.gzip_level > 9 {
            return Err(Error::config(format!(
                "dump.gzip_level = {} is out of range; use 0 (store) to 9 (smallest)",
                self.dump.gzip_level
            )));
        }
        self.sink.validate()?;
        for (i, invariant) in self.verify.invariants.iter().enumerate() {
            if invariant.name.trim().is_empty() || invariant.sql.trim().is_empty() {
                return Err(Error::config(format!(
                    "verify.invariants[{i}] needs a name and an sql query"
                )));
            }
            if self.verify.invariants[..i]
                .iter()
                .any(|other| other.name == invariant.name)
            {
                return Err(Error::config(format!(
                    "verify.invariants[{i}]: the name {:?} is used twice; give each invariant its own",
                    invariant.name
                )));
            }
        }
        Ok(())
    }

    /// The configured source URL, or the empty string (all from `PG*` variables).
    pub fn source_url(&self) -> &str {
        self.source.url.as_deref().unwrap_or("")
    }
}

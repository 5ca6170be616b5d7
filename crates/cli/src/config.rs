//! The configuration file's shape: one section per concern, each mapped onto the
//! engines' own options by `engines`. `[sink]` is the sink crates' own
//! [`SinkConfig`]; the rest is the CLI's.

use std::path::PathBuf;

use pgproof_core::dump::Format;
use pgproof_core::error::{Error, Result};
use pgproof_core::evidence::alerts::AlertPolicy;
use pgproof_core::evidence::invariant::Invariant;
use pgproof_core::ops::duration;
use pgproof_core::ops::{RetentionPolicy, StatusPolicy};

use crate::hooks::{HooksConfig, NotifyConfig};
use pgproof_core::catalog::files::FileSet;
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
    /// Which backups prune keeps.
    pub retention: RetentionPolicy,
    /// What status holds the catalog to.
    pub status: StatusPolicy,
    /// Commands around a backup run.
    pub hooks: HooksConfig,
    /// A webhook told of a run's outcome.
    pub notify: NotifyConfig,
    /// When a backup's comparison with the previous one raises an alert.
    pub alerts: AlertPolicy,
    /// Second destinations (`[[replicas]]`, each shaped like `[sink]`): `backup`
    /// copies each run's backups there; `status` reports them.
    pub replicas: Vec<SinkConfig>,
    /// File material stored with every backup (`[[files]]` with `name`, `paths`,
    /// `secret`).
    pub files: Vec<FileSet>,
    /// The key this host signs what it writes to a sink with.
    pub signing: SigningConfig,
    /// The public keys whose signatures this host believes.
    pub trust: TrustConfig,
    /// What a run over every database (`source.databases = "all"`) stores of the
    /// server's globals.
    pub globals: GlobalsConfig,
}

/// `[globals]`: a run with `source.databases = "all"` also stores the server's roles
/// (attributes, memberships, settings) and tablespaces, so `restore --cluster` can
/// recreate the whole server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GlobalsConfig {
    /// Also store the roles' password verifiers (SCRAM or md5 hashes, read from
    /// pg_authid: the backup role must be a superuser), inside the encrypted globals
    /// object only. Default false: restored roles then have no password.
    pub passwords: bool,
}

/// `[signing]`: every manifest, verification record, pin, lease, tombstone and lock
/// pgproof writes is signed with this key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    /// An OpenSSH Ed25519 private key, unencrypted (`pgproof keygen --signing`).
    pub key_file: Option<PathBuf>,
}

/// `[trust]`: nothing read from a sink is believed unless one of these keys (or this
/// host's own signing key) signed it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConfig {
    /// OpenSSH public key lines (`ssh-ed25519 AAAA… backup@db1`).
    pub keys: Vec<String>,
    /// A file of such lines (`#` comments and blank lines skipped), like
    /// `authorized_keys`.
    pub keys_file: Option<PathBuf>,
}

/// A date (midnight UTC, `2027-01-31`) or an RFC 3339 time, as a flag gives it.
pub fn parse_time(flag: &str, text: &str) -> Result<jiff::Timestamp> {
    text.parse::<jiff::Timestamp>()
        .or_else(|_| {
            text.parse::<jiff::civil::Date>()
                .map_err(|e| e.to_string())
                .and_then(|d| {
                    d.to_zoned(jiff::tz::TimeZone::UTC)
                        .map(|z| z.timestamp())
                        .map_err(|e| e.to_string())
                })
        })
        .map_err(|e| {
            Error::config(format!(
                "{flag} {text:?} is neither an RFC 3339 time nor a date like 2027-01-31 ({e})"
            ))
        })
}

/// The longest timeout a setting may name, in seconds: 30 days (a dump that takes
/// longer needs no timeout at all, which 0 says where a setting allows it).
const MAX_TIMEOUT_SECS: u64 = 30 * 86_400;

/// Parses a duration a flag or variable gives (`90s`, `15m`, `36h`, `14d`, `2w`,
/// `1d12h`); `key` names it in the error.
pub fn parse_duration(key: &str, text: &str) -> Result<jiff::SignedDuration> {
    duration::parse(text)
        .ok_or_else(|| Error::config(format!("{key} = {text:?} is not {}", duration::EXPECTED)))
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
    /// Also run amcheck on every B-tree index of the restored database.
    pub amcheck: bool,
    /// The application's invariant queries (`[[verify.invariants]]` with `name`,
    /// `sql` and optionally `expect`): run in the dump's snapshot at backup time and
    /// again on every restore, which must give the same result.
    pub invariants: Vec<Invariant>,
    /// `verify --worker`: how long a worker's claim on a backup lives unless renewed
    /// (renewed every third of it); a killed worker's backup is taken over this long
    /// after it died. Default 5m, from 3s to 24h.
    #[serde(with = "pgproof_core::ops::duration::option")]
    pub claim_ttl: Option<jiff::SignedDuration>,
}

impl VerifyConfig {
    /// `claim_ttl`, or the default; an error naming the key when out of bounds.
    pub fn claim_ttl(&self) -> Result<std::time::Duration> {
        let Some(ttl) = self.claim_ttl else {
            return Ok(pgproof_core::ops::DEFAULT_CLAIM_TTL);
        };
        std::time::Duration::try_from(ttl)
            .map_err(|e| e.to_string())
            .and_then(|d| {
                pgproof_core::catalog::check_claim_ttl(d)
                    .map(|()| d)
                    .map_err(|e| e.message().to_owned())
            })
            .map_err(|e| Error::config(format!("verify.claim_ttl: {e}")))
    }
}

/// `[source]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// libpq URI; `PG*` variables fill the gaps.
    pub url: Option<String>,
    /// Databases to back up: a list, or `"all"` (every database the role may connect
    /// to, templates aside); empty means the URL's database.
    pub databases: Databases,
    /// With `databases = "all"`: names to leave out, `*` and `?` wildcards allowed.
    pub exclude: Vec<String>,
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

/// `source.databases`: named ones, or every one the server has.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Databases {
    /// The URL's database (an empty list).
    #[default]
    UrlDatabase,
    /// Every connectable, non-template database, minus `exclude`.
    All(AllKeyword),
    /// These, in this order.
    Named(Vec<String>),
}

/// The word `all`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllKeyword;

impl Serialize for Databases {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Databases::UrlDatabase => Vec::<String>::new().serialize(s),
            Databases::All(_) => s.serialize_str("all"),
            Databases::Named(names) => names.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Databases {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            List(Vec<String>),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected \"all\" or a list of database names"))?
        {
            Raw::Word(word) if word == "all" => Ok(Databases::All(AllKeyword)),
            Raw::Word(other) => Err(serde::de::Error::custom(format!(
                "expected \"all\" or a list of database names, not {other:?} (write [{other:?}] for one database)"
            ))),
            Raw::List(list) if list.is_empty() => Ok(Databases::UrlDatabase),
            Raw::List(list) => Ok(Databases::Named(list)),
        }
    }
}

/// Whether `name` matches a shell-style pattern of `*` and `?`.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic two-pointer glob with backtracking to the last `*`.
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// `[dump]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DumpConfig {
    /// `custom`, `plain` or `directory` (`pg_dump -Fd --jobs`, one object per file,
    /// restored with `pg_restore --jobs` into a database pgproof creates: for databases
    /// too big for one core).
    pub format: Format,
    /// Tables a directory dump dumps at once; default one per core.
    pub jobs: Option<u32>,
    /// gzip level for plain dumps, 0–9.
    pub gzip_level: u32,
    /// Custom and directory dumps: `zstd` (the default: `--compress=0`, then zstd by pgproof on the
    /// other cores; recorded as a codec, so restore and verify invert it and
    /// `age -d | zstd -d | pg_restore` works by hand) or `pg-dump` (its own zlib, one
    /// core). Plain dumps are gzipped either way.
    pub compression: DumpCompression,
    /// zstd level, 1–19 (with compression = "zstd").
    pub zstd_level: i32,
    /// How long pg_dump (and the fingerprint) wait for a table lock before the backup
    /// fails, in seconds.
    pub lock_wait_timeout_secs: u64,
    /// How long one of pgproof's own statements in the dump's snapshot (a catalog
    /// query, one table's fingerprint) may run, in seconds; 0 = no limit. The dump
    /// itself is bounded by the lock wait only.
    pub statement_timeout_secs: u64,
    /// Directory format: where pg_dump's private stage goes (default: the temporary
    /// directory). It holds at most a window of plaintext table data at a time.
    pub stage_dir: Option<PathBuf>,
    /// Directory format: deduplicate. Each data file is cut into chunks by content,
    /// each chunk compressed and encrypted alone and stored once under
    /// `.chunks/<database>/`, shared by every backup that uses it: a nightly full
    /// backup stores about what changed. Chunk ids are keyed with a secret derived
    /// from `signing.key_file`.
    pub dedup: bool,
    /// The average chunk of a deduplicated dump, in KiB (4 to 4096; chunks run from a
    /// quarter of it to four times it). Smaller chunks find more of what did not
    /// change, at more objects and requests.
    pub dedup_chunk_kib: u32,
}

impl Default for DumpConfig {
    fn default() -> Self {
        Self {
            format: Format::Custom,
            jobs: None,
            gzip_level: 6,
            compression: DumpCompression::Zstd,
            zstd_level: 3,
            lock_wait_timeout_secs: 300,
            statement_timeout_secs: 6 * 3600,
            stage_dir: None,
            dedup: false,
            dedup_chunk_kib: pgproof_core::dump::DEFAULT_AVERAGE_CHUNK >> 10,
        }
    }
}

/// `dump.compression`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DumpCompression {
    /// pg_dump compresses custom archives itself (zlib, one core).
    PgDump,
    /// pgproof compresses custom archives with zstd (the default: on the benchmark it
    /// made a proven backup faster than a bare `pg_dump -Fc`, and smaller).
    #[default]
    Zstd,
}

impl DumpConfig {
    /// The dumper these settings choose, deduplicating with `chunking` when given.
    /// Plain dumps are always gzipped (`dump.gzip_level`).
    pub fn dumper(
        &self,
        chunking: Option<pgproof_core::dump::Chunking>,
    ) -> std::sync::Arc<dyn pgproof_core::dump::Dumper> {
        let zstd = (self.compression == DumpCompression::Zstd).then_some(self.zstd_level);
        self.format
            .dumper_with(self.gzip_level, zstd, self.jobs, chunking)
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
        self.validate_dump()?;
        self.validate_destinations()?;
        self.validate_files_and_notify()?;
        self.validate_retention()?;
        self.validate_timeouts()?;
        self.validate_source_and_verify()?;
        Ok(())
    }

    /// Checks dump levels and jobs.
    fn validate_dump(&self) -> Result<()> {
        if self.dump.dedup {
            if self.dump.format != Format::Directory {
                return Err(Error::config(format!(
                    "dump.dedup = true needs dump.format = \"directory\" (its data files are what is cut into chunks), not {:?}",
                    self.dump.format.to_string()
                )));
            }
            let bytes = self.dump.dedup_chunk_kib.saturating_mul(1024);
            if !pgproof_core::dump::AVERAGE_CHUNK_RANGE.contains(&bytes) {
                return Err(Error::config(format!(
                    "dump.dedup_chunk_kib = {} is out of range; use 4 to 4096 (default 1024)",
                    self.dump.dedup_chunk_kib
                )));
            }
            if !self.encryption.enabled {
                return Err(Error::config(
                    "dump.dedup needs encryption (unencrypted, a chunk is the same bytes under the same key each time it is stored, so one planted there ahead of it would pass for it): set encryption.enabled = true with recipients, or dump.dedup = false",
                ));
            }
            if self.dump.compression != DumpCompression::Zstd {
                return Err(Error::config(
                    "dump.dedup needs dump.compression = \"zstd\": pg_dump's own compression would change every chunk of a file that changed anywhere",
                ));
            }
        }
        if self.dump.jobs == Some(0) {
            return Err(Error::config(
                "dump.jobs = 0 dumps nothing; use 1 or more, or leave it out for one per core",
            ));
        }
        if !(1..=19).contains(&self.dump.zstd_level) {
            return Err(Error::config(format!(
                "dump.zstd_level = {} is out of range; use 1 (fastest) to 19 (smallest)",
                self.dump.zstd_level
            )));
        }

        if self.dump.gzip_level > 9 {
            return Err(Error::config(format!(
                "dump.gzip_level = {} is out of range; use 0 (store) to 9 (smallest)",
                self.dump.gzip_level
            )));
        }
        Ok(())
    }

    /// Checks the sink, replicas, hooks and alert shares.
    fn validate_destinations(&self) -> Result<()> {
        self.sink.validate()?;
        for (i, replica) in self.replicas.iter().enumerate() {
            if replica.url.is_none() {
                return Err(Error::config(format!("replicas[{i}] needs a url")));
            }
            replica
                .validate()
                .map_err(|e| Error::config(format!("replicas[{i}]: {e}")))?;
        }
        for (key, argv) in [
            ("hooks.before", &self.hooks.before),
            ("hooks.after", &self.hooks.after),
        ] {
            if argv.first().is_some_and(|p| p.trim().is_empty()) {
                return Err(Error::config(format!(
                    "{key} starts with an empty program; give the program's path, then its arguments"
                )));
            }
        }
        for (key, share) in [
            ("alerts.max_row_drop", self.alerts.max_row_drop),
            ("alerts.max_size_drop", self.alerts.max_size_drop),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(Error::config(format!(
                    "{key} = {share} is a share between 0 and 1 (0.5 = half)"
                )));
            }
        }
        Ok(())
    }

    /// Checks file sets and the webhook.
    fn validate_files_and_notify(&self) -> Result<()> {
        for (i, set) in self.files.iter().enumerate() {
            set.validate(self.encryption.enabled)
                .map_err(|e| Error::config(format!("files[{i}]: {e}")))?;
        }
        if let Some(url) = &self.notify.url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(Error::config(
                "notify.url must be an http:// or https:// URL",
            ));
        }
        Ok(())
    }

    /// Checks retention rules that keep something.
    fn validate_retention(&self) -> Result<()> {
        for (key, value) in [
            ("retention.keep_last", self.retention.keep_last),
            ("retention.keep_daily", self.retention.keep_daily),
            ("retention.keep_weekly", self.retention.keep_weekly),
            ("retention.keep_monthly", self.retention.keep_monthly),
        ] {
            if value == Some(0) {
                return Err(Error::config(format!(
                    "{key} = 0 keeps nothing; use 1 or more, or leave the rule out"
                )));
            }
        }
        if self.retention.keep_within.is_some_and(|d| d.is_zero()) {
            return Err(Error::config(
                "retention.keep_within = 0 keeps nothing; use a positive duration, or leave the rule out",
            ));
        }
        Ok(())
    }

    /// Checks timeouts within range.
    fn validate_timeouts(&self) -> Result<()> {
        for (key, secs) in [
            ("hooks.timeout_secs", Some(self.hooks.timeout_secs)),
            ("notify.timeout_secs", Some(self.notify.timeout_secs)),
            (
                "dump.lock_wait_timeout_secs",
                Some(self.dump.lock_wait_timeout_secs),
            ),
            (
                "dump.statement_timeout_secs",
                Some(self.dump.statement_timeout_secs),
            ),
            (
                "source.connect_timeout_secs",
                self.source.connect_timeout_secs,
            ),
            (
                "sink.retry_timeout_secs",
                Some(self.sink.retry_timeout_secs),
            ),
            (
                "sink.request_timeout_secs",
                Some(self.sink.request_timeout_secs),
            ),
            (
                "sink.connect_timeout_secs",
                Some(self.sink.connect_timeout_secs),
            ),
        ] {
            if secs.is_some_and(|s| s > MAX_TIMEOUT_SECS) {
                return Err(Error::config(format!(
                    "{key} = {} is more than 30 days ({MAX_TIMEOUT_SECS}); use a smaller number of seconds",
                    secs.unwrap_or_default()
                )));
            }
        }
        Ok(())
    }

    /// Checks database selection and invariants.
    fn validate_source_and_verify(&self) -> Result<()> {
        if self.globals.passwords && !matches!(self.source.databases, Databases::All(_)) {
            return Err(Error::config(
                "globals.passwords applies only to source.databases = \"all\" (the runs that store the server's globals); set that, or remove globals.passwords",
            ));
        }
        if self.globals.passwords && !self.encryption.enabled {
            return Err(Error::config(
                "globals.passwords = true needs encryption: password verifiers are stored only inside the encrypted globals object, and encryption.enabled = false; turn encryption on, or set globals.passwords = false",
            ));
        }
        if !self.source.exclude.is_empty() && !matches!(self.source.databases, Databases::All(_)) {
            return Err(Error::config(
                "source.exclude applies only to source.databases = \"all\"; list the databases you want instead",
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_an_operator_writes_them() {
        let secs = |t: &str| parse_duration("k", t).map(|d| d.as_secs());
        assert_eq!(secs("90s").unwrap(), 90);
        assert_eq!(secs("36h").unwrap(), 36 * 3600);
        assert_eq!(secs("1d12h").unwrap(), 36 * 3600);
        assert_eq!(secs("2w").unwrap(), 14 * 86_400);
        for bad in ["", "12", "h", "3 days", "1.5h", "99999999999w", "36700d"] {
            let e = parse_duration("status.max_age", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("status.max_age"), "{bad}: {e}");
        }
    }

    #[test]
    fn wildcards_match_like_a_shell() {
        assert!(wildcard_match("skip_*", "skip_me"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("a?c", "abc"));
        assert!(wildcard_match("*_tmp_*", "x_tmp_y"));
        assert!(!wildcard_match("skip_*", "keep"));
        assert!(!wildcard_match("a?c", "ac"));
    }

    #[test]
    fn databases_are_all_or_a_list() {
        let parse = |text: &str| toml_databases(text);
        assert_eq!(parse("databases = \"all\""), Ok(Databases::All(AllKeyword)));
        assert_eq!(
            parse("databases = [\"a\", \"b\"]"),
            Ok(Databases::Named(vec!["a".into(), "b".into()]))
        );
        assert_eq!(parse("databases = []"), Ok(Databases::UrlDatabase));
        assert!(
            parse("databases = \"app\"")
                .unwrap_err()
                .contains("[\"app\"]")
        );
    }

    fn toml_databases(text: &str) -> std::result::Result<Databases, String> {
        #[derive(Deserialize)]
        struct Source {
            databases: Databases,
        }
        toml::from_str::<Source>(text)
            .map(|s| s.databases)
            .map_err(|e| e.to_string())
    }
}

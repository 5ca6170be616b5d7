//! The command line: every subcommand and flag, documented once.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Logical PostgreSQL backups, streamed, encrypted and committed by manifest.
///
/// Configuration is layered: built-in defaults < TOML file (--config, PGPROOF_CONFIG,
/// ./pgproof.toml or /etc/pgproof/pgproof.toml) < PGPROOF_* environment variables
/// (`__` nests: PGPROOF_SINK__URL sets sink.url) < flags. PG* variables fill gaps in
/// source.url as libpq does.
///
/// Exit codes: 0 success; 1 operation failed; 2 bad usage or configuration;
/// 3 integrity failure (hash mismatch, corrupted object, wrong age identity, a
/// verification check failed, a `check` finding, a `status` threshold breached);
/// 129/130/143 interrupted by SIGHUP/SIGINT/SIGTERM
/// after stopping child programs, aborting uploads and dropping the databases the run
/// created.
#[derive(Debug, Parser)]
#[command(name = "pgproof", version, max_term_width = 100)]
pub struct Cli {
    /// Config file (TOML).
    #[arg(long, global = true, env = "PGPROOF_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Sink URL, overriding sink.url: file:///path (or a directory), s3://bucket/prefix,
    /// gs://bucket/prefix or az://container/prefix. Object-store credentials come from
    /// the environment (AWS_*, GOOGLE_*, AZURE_*) or sink.service_account_file, never
    /// from the URL.
    #[arg(long, global = true, value_name = "URL")]
    pub sink: Option<String>,

    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,

    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Annotations {
    None,
    Github,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Dump each configured database in an exported snapshot, stream it through
    /// gzip (plain) and age into the sink, then commit its manifest.
    Backup {
        /// Archive format, overriding dump.format.
        #[arg(long, value_parser = ["custom", "plain"])]
        format: Option<String>,
        /// Source URL, overriding source.url.
        #[arg(long, value_name = "URL")]
        source: Option<String>,
        /// Verify each backup right after taking it (also: verify.after_backup).
        #[arg(long)]
        verify: bool,
        /// Print the committed manifests (and reports, with --verify) as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// After a run in which every backup succeeded, prune by [retention].
        #[arg(long)]
        prune: bool,
        /// Check every B-tree index of the source with amcheck first (when the
        /// extension is installed there); a corrupt index fails the backup.
        #[arg(long)]
        amcheck: bool,
    },
    /// Delete backups no [retention] rule keeps, leaving a tombstone for each so the
    /// manifest chain stays checkable; delete objects of runs that never committed once
    /// older than retention.orphan_grace. Never deletes the newest verified backup,
    /// the chain's head, a backup being verified, or one whose manifest is damaged.
    Prune {
        /// Print what would go and which rule keeps each survivor; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Only this database.
        #[arg(long)]
        database: Option<String>,
        /// The decisions as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Check the catalog without restoring: every manifest chain (a manifest deleted
    /// other than by prune, or edited), every dump object present with its recorded
    /// size. Exit 3 on any finding.
    Check {
        /// Also read every dump object and compare its sha256 with the manifest's.
        #[arg(long)]
        read_data: bool,
        /// Only this database.
        #[arg(long)]
        database: Option<String>,
        /// Findings as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Per database: age of the newest backup and of the newest verified one, the last
    /// measured restore time and sizes, against [status] thresholds. Exit 3 when a
    /// threshold is breached or a database has no backup.
    Status {
        /// Status as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Also write the metrics as a Prometheus node_exporter textfile (atomically).
        #[arg(long, value_name = "FILE")]
        prometheus: Option<PathBuf>,
    },
    /// Prove backups: restore each into a scratch database (verify.scratch_url, or an
    /// ephemeral local cluster), compare fingerprints and the audit chain, write a
    /// verification record next to the manifest. Exits 0 only if every check passed.
    Verify {
        /// Backup id, or `latest` (default).
        #[arg(default_value = "latest", conflicts_with_all = ["all", "stale"])]
        backup: String,
        /// Verify every committed backup (of --database, if given).
        #[arg(long, conflicts_with = "stale")]
        all: bool,
        /// Rolling re-verification: the backups whose newest passing verification is
        /// older than this (`7d`, `36h`) or that never passed one, least recently
        /// proven first.
        #[arg(long, value_name = "AGE")]
        stale: Option<String>,
        /// With --stale: at most this many per run.
        #[arg(long, value_name = "N", requires = "stale")]
        limit: Option<usize>,
        /// Rolling verification of tables, for databases too big to restore whole:
        /// prove N tables of each database's newest backup (the least recently proven
        /// first, with what they need) instead of the whole backup, and record a
        /// table proof. status.max_table_unproven_age tells whether every table
        /// is proven within a window.
        #[arg(long, value_name = "N", conflicts_with_all = ["backup", "all", "stale", "adopt"])]
        tables_per_run: Option<usize>,
        /// Rolling verification of tables within a time budget (`2h`): batches of the
        /// least recently proven tables (of --tables-per-run, or a tenth of the tables;
        /// a table bigger than a batch's share alone) while the next one fits; a batch
        /// still running when it ends is stopped and recorded as unfinished (attempted,
        /// not proven), so the next run takes the others first.
        #[arg(long, value_name = "DURATION", conflicts_with_all = ["backup", "all", "stale", "adopt"])]
        budget: Option<String>,
        /// With --stale: be one of N workers on this catalog (processes, or pods of a
        /// Job with `parallelism: N`). Takes the least recently attempted backup no
        /// other worker holds, claims it (verify.claim_ttl, renewed while it works),
        /// checks it is still due, verifies it, and goes on until every backup was
        /// attempted within AGE, passed or failed; waits for backups other workers
        /// hold (a killed worker's claim expires and is taken over). No two workers
        /// verify one backup at once, and each backup once per round.
        #[arg(long, requires = "stale")]
        worker: bool,
        /// Database whose backups to verify.
        #[arg(long)]
        database: Option<String>,
        /// Keep the scratch database for inspection (needs verify.scratch_url).
        #[arg(long)]
        keep: bool,
        /// Adopt a backup taken before pgproof signed its catalog: verify it although its
        /// manifest is unsigned and, if every check passes, sign an adoption of exactly
        /// the manifest that was verified, so it is trusted from then on. One named
        /// backup at a time, oldest first: an unsigned manifest could have been written
        /// by anyone with access to the sink, so adopt only ids your own backup logs
        /// show this host took.
        #[arg(long, conflicts_with_all = ["stale", "all"])]
        adopt: bool,
        /// age identity file, overriding encryption.identity_file.
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// Print the verification reports as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// The whole prove loop on a database pgproof creates: migrate the audit chain,
    /// write a workload and edge values, back up through the configured pipeline and
    /// sink (a temporary one if none), wipe, restore, verify. Needs no config: by
    /// default it runs on an ephemeral local cluster. Exits 1 if anything failed.
    Drill {
        /// Archive format, overriding dump.format.
        #[arg(long, value_parser = ["custom", "plain"])]
        format: Option<String>,
        /// Audit events to write.
        #[arg(long, default_value_t = 1000)]
        rows: i64,
        /// Server to drill on instead of an ephemeral cluster (pgproof creates and
        /// drops the database pgproof_drill there).
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        /// Failure lines as GitHub Actions annotations (::error ...).
        #[arg(long, value_enum, default_value_t = Annotations::None)]
        annotations: Annotations,
        /// Print the drill's report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Install or upgrade the tamper-evident audit chain (migrations/) in a database.
    Migrate {
        /// The database (libpq URI).
        #[arg(long, value_name = "URL")]
        url: String,
    },
    /// Restore a backup into a database: by default a new one that pgproof creates,
    /// and drops again if anything fails. With --cluster, a whole server: the globals
    /// and every database of one `databases = "all"` run, onto an empty cluster,
    /// each database proven after.
    Restore {
        /// Backup id, or `latest` (or --as-of, or --cluster).
        #[arg(required_unless_present_any = ["as_of", "cluster"])]
        backup: Option<String>,
        /// Instead of BACKUP: the newest trusted backup whose snapshot was taken at or
        /// before TIME (RFC 3339, e.g. 2026-12-01T06:00:00Z, or an age such as 36h).
        #[arg(long, value_name = "TIME", conflicts_with = "backup")]
        as_of: Option<String>,
        /// Restore only the tables matching PATTERN, with what they need, in one
        /// transaction, and prove each against the backup's fingerprint (pg_dump's
        /// -t patterns: [schema.]table, * and ?, "Quoted" keeps case; no schema means
        /// public). Repeatable. Custom and directory backups.
        #[arg(long = "table", short = 't', value_name = "PATTERN")]
        tables: Vec<String>,
        /// Restore only the tables of the schemas matching PATTERN (as --table).
        #[arg(long = "schema", short = 'n', value_name = "PATTERN")]
        schemas: Vec<String>,
        /// Leave out the tables matching PATTERN (with --table or --schema, or alone:
        /// every other table).
        #[arg(long = "exclude-table", short = 'T', value_name = "PATTERN")]
        exclude_tables: Vec<String>,
        /// With --table selecting one table: restore it into the existing --target
        /// database beside the live one, as NAME in the same schema (its indexes and
        /// owned sequences named after it), proven where it lands.
        #[arg(long, value_name = "NAME", requires = "tables")]
        rename_to: Option<String>,
        /// Recreate a whole server from the cluster run RUN (its id, or `latest`: the
        /// newest run in which every database was backed up) on --target, an empty
        /// cluster (its database only reaches the server; connect as a superuser):
        /// the roles with their attributes, memberships and settings, the
        /// tablespaces, then every database of the run, then each database proven
        /// (fingerprints, properties) and the globals read back and compared. If a
        /// step before the proofs fails, what it created is dropped again. Exit 3 if
        /// a check failed.
        #[arg(long, value_name = "RUN", conflicts_with_all = ["backup", "as_of", "tables", "schemas", "exclude_tables", "files", "database", "clean", "force", "create_roles"])]
        cluster: Option<String>,
        /// With --cluster: create tablespace NAME in DIR (an empty directory the
        /// server's user owns) instead of its recorded location; repeatable.
        #[arg(long = "tablespace-dir", value_name = "NAME=DIR", requires = "cluster")]
        tablespace_dirs: Vec<String>,
        /// Database to restore into (libpq URI); must not exist, or be empty,
        /// unless --clean (with --table, it may hold other tables, never touched).
        #[arg(long, value_name = "URL", required_unless_present = "files")]
        target: Option<String>,
        /// Also (or, without --target, only) write the backup's file sets under
        /// DIR/<set>/<path as backed up>, with their modes; never overwrites.
        #[arg(long, value_name = "DIR")]
        files: Option<PathBuf>,
        /// Which database's backups `latest` refers to.
        #[arg(long)]
        database: Option<String>,
        /// Replace the target database if it exists: the backup is restored beside
        /// it and swapped in only once the restore succeeded.
        #[arg(long)]
        clean: bool,
        /// Restore into an existing empty database even if its encoding or locale
        /// differs from the backup's (text may change or sort differently).
        #[arg(long)]
        force: bool,
        /// Create the roles the backup's objects belong or are granted to when the
        /// target server lacks them (as recorded, without passwords).
        #[arg(long)]
        create_roles: bool,
        /// With --create-roles, also create roles with SUPERUSER, REPLICATION or
        /// BYPASSRLS (never created otherwise).
        #[arg(long, requires = "create_roles")]
        create_privileged_roles: bool,
        /// age identity file, overriding encryption.identity_file.
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// Print the outcome as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List committed backups (those with a manifest), oldest first.
    List {
        /// Only this database.
        #[arg(long)]
        database: Option<String>,
        /// List the cluster runs instead (runs with source.databases = "all", which
        /// `restore --cluster` recreates a whole server from).
        #[arg(long, conflicts_with_all = ["database", "hidden"])]
        clusters: bool,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
        /// S3 with versioning: the backups hidden behind a delete marker (deleted
        /// while their versions, locked or not, are still stored); undelete brings
        /// one back.
        #[arg(long)]
        hidden: bool,
    },
    /// S3 with versioning: bring a hidden backup back by removing the delete markers
    /// over its objects.
    Undelete {
        /// The backup id (as `list --hidden` shows it).
        backup: String,
        /// Its database.
        #[arg(long)]
        database: String,
    },
    /// Copy committed backups, as stored (no decryption), to a second sink: objects
    /// streamed with their sha256 checked, the manifest last, verification records
    /// and tombstones along; already copied backups are skipped.
    Copy {
        /// Destination: a [[replicas]] entry's url (its settings apply), or any sink URL.
        #[arg(long, value_name = "URL")]
        to: String,
        /// One backup id, with the older backups of its chain (default: every committed
        /// backup).
        #[arg(conflicts_with = "all")]
        backup: Option<String>,
        /// Every committed backup (the default).
        #[arg(long)]
        all: bool,
        /// Only this database.
        #[arg(long)]
        database: Option<String>,
        /// The outcome as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Pin a backup: retention never deletes it while the pin holds.
    Pin {
        /// Backup id, or `latest`.
        backup: String,
        /// Database, where the id alone is ambiguous.
        #[arg(long)]
        database: Option<String>,
        /// Until when (RFC 3339, or a date: 2027-01-31); default: until unpinned.
        #[arg(long, value_name = "DATE")]
        until: Option<String>,
        /// Why (shown by list and show).
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
    },
    /// Remove a backup's pins.
    Unpin {
        /// Backup id, or `latest`.
        backup: String,
        /// Database, where the id alone is ambiguous.
        #[arg(long)]
        database: Option<String>,
    },
    /// Show one backup's manifest.
    Show {
        /// Backup id, or `latest`.
        backup: String,
        /// Database, where the id alone is ambiguous.
        #[arg(long)]
        database: Option<String>,
        /// The manifest as stored (JSON).
        #[arg(long)]
        json: bool,
    },
    /// Generate a key: an age identity (default: encrypts and decrypts dumps) or, with
    /// --signing, an Ed25519 signing key (signs every catalog object this host
    /// writes). Writes the private key (mode 0600, never overwriting) and prints the
    /// public key: for encryption.recipients, or for trust.keys on every reader.
    Keygen {
        /// Where to write the private key.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Make a signing key (OpenSSH Ed25519) instead of an age identity.
        #[arg(long)]
        signing: bool,
        /// The signing key's comment: who holds it (default: pgproof@HOSTNAME).
        #[arg(long, requires = "signing")]
        comment: Option<String>,
    },
    /// Export a proof certificate: the backup's signed manifest (versions, sizes,
    /// sha256s, per-table fingerprints) and its newest signed verification record
    /// (every check, the measured restore time, the verifier), signed again by this
    /// host. Nothing secret; an auditor checks it offline with `pgproof certificate
    /// verify`, or each signature with ssh-keygen -Y verify (docs/security.md).
    #[command(args_conflicts_with_subcommands = true)]
    Certificate {
        #[command(subcommand)]
        command: Option<CertificateCommand>,
        /// Backup id, or `latest`.
        #[arg(default_value = "latest")]
        backup: String,
        /// Database, where the id alone is ambiguous (needed with --since).
        #[arg(long)]
        database: Option<String>,
        /// A period bundle: every backup of the database that started at or after
        /// this date or time (2026-10-01, or RFC 3339).
        #[arg(long, value_name = "DATE")]
        since: Option<String>,
        /// Write it here (created, never overwritten) instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertificateCommand {
    /// Check a certificate offline: its signature and every signature inside it,
    /// against the keys given; prints what it proves. Exit 3 if anything fails.
    Verify {
        /// The certificate file.
        file: PathBuf,
        /// A trusted public key (OpenSSH line) or a file of them; repeatable.
        #[arg(long = "key", value_name = "KEY", required = true)]
        keys: Vec<String>,
        /// Print what it proves as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (secrets redacted) and check it: URLs
    /// parse, keys and files exist.
    Check {
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

//! Dump formats: how a database becomes a byte stream and a byte stream a database.

use std::fmt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pg::{ConnParams, PgTools};

/// The archive format pg_dump writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `pg_dump -Fc`, restored with `pg_restore`; compressed by pg_dump itself.
    #[default]
    Custom,
    /// `pg_dump -Fp` SQL script, gzipped by pgproof, restored with `psql`.
    Plain,
}

impl Format {
    /// Whether pgproof gzips the dump (custom archives are already compressed).
    pub fn gzipped(self) -> bool {
        matches!(self, Format::Plain)
    }

    /// The stored object's file name for this format.
    pub fn object_name(self, encrypted: bool) -> &'static str {
        match (self, encrypted) {
            (Format::Custom, true) => "dump.pgc.age",
            (Format::Custom, false) => "dump.pgc",
            (Format::Plain, true) => "dump.sql.gz.age",
            (Format::Plain, false) => "dump.sql.gz",
        }
    }

    /// The [`Dumper`] for this format.
    pub fn dumper(self) -> Box<dyn Dumper> {
        match self {
            Format::Custom => Box::new(CustomFormat),
            Format::Plain => Box::new(PlainFormat),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Custom => "custom",
            Format::Plain => "plain",
        })
    }
}

/// One dump format: starts the program that writes an archive and the one that
/// restores it.
///
/// An implementation:
/// - MUST have [`spawn_dump`](Dumper::spawn_dump) start a child that writes the whole
///   archive of `source`'s database, exactly as of the exported `snapshot`, to its
///   piped stdout, with stderr piped, and exits non-zero on any failure;
/// - MUST have [`spawn_restore`](Dumper::spawn_restore) start a child that reads an
///   archive from its piped stdin and applies it to `target`'s database in a single
///   transaction, stopping at the first error, so a failed or interrupted restore leaves
///   the database as it was; stdout is discarded, stderr piped;
/// - MUST pass connection parameters through the environment ([`ConnParams::child_env`]),
///   never a password in argv;
/// - MUST NOT prompt for anything (no terminal is assumed).
pub trait Dumper: Send + Sync {
    /// The format this dumper writes and reads.
    fn format(&self) -> Format;

    /// Program that [`spawn_restore`](Dumper::spawn_restore) runs.
    fn restore_program(&self) -> &'static str;

    /// Starts dumping `source` as of `snapshot`, giving up on any table lock not
    /// granted within `lock_wait`. Every format is `pg_dump --format=<format>`.
    fn spawn_dump(
        &self,
        tools: &PgTools,
        source: &ConnParams,
        snapshot: &str,
        lock_wait: Duration,
    ) -> Result<Child> {
        let mut cmd = client_command(tools, "pg_dump", source);
        cmd.arg(format!("--format={}", self.format()))
            .arg("--no-password")
            .arg(format!("--snapshot={snapshot}"))
            // Without it pg_dump waits for a lock forever, holding pgproof's snapshot
            // open while a queued ACCESS EXCLUSIVE blocks everyone else on that table.
            .arg(format!(
                "--lock-wait-timeout={}ms",
                lock_wait.as_millis().max(1)
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        spawn(cmd, "pg_dump")
    }

    /// Starts restoring into `target`.
    fn spawn_restore(&self, tools: &PgTools, target: &ConnParams) -> Result<Child>;
}

/// `pg_dump -Fc` / `pg_restore`.
#[derive(Clone, Copy, Debug, Default)]
pub struct CustomFormat;

/// `pg_dump -Fp` / `psql -v ON_ERROR_STOP=1 --single-transaction`.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainFormat;

impl Dumper for CustomFormat {
    fn format(&self) -> Format {
        Format::Custom
    }

    fn restore_program(&self) -> &'static str {
        "pg_restore"
    }

    fn spawn_restore(&self, tools: &PgTools, target: &ConnParams) -> Result<Child> {
        let mut cmd = client_command(tools, "pg_restore", target);
        cmd.args([
            "--exit-on-error",
            "--single-transaction",
            "--no-password",
            "--dbname",
            target.dbname(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
        spawn(cmd, "pg_restore")
    }
}

impl Dumper for PlainFormat {
    fn format(&self) -> Format {
        Format::Plain
    }

    fn restore_program(&self) -> &'static str {
        "psql"
    }

    fn spawn_restore(&self, tools: &PgTools, target: &ConnParams) -> Result<Child> {
        let mut cmd = client_command(tools, "psql", target);
        cmd.args([
            "--no-psqlrc",
            "--quiet",
            "--no-password",
            "--set=ON_ERROR_STOP=1",
            "--single-transaction",
            "--file=-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
        spawn(cmd, "psql")
    }
}

fn client_command(tools: &PgTools, program: &str, conn: &ConnParams) -> Command {
    let mut cmd = Command::new(tools.bin(program));
    cmd.envs(conn.child_env()).stderr(Stdio::piped());
    cmd
}

fn spawn(mut cmd: Command, program: &str) -> Result<Child> {
    cmd.spawn().map_err(|e| {
        Error::Tool(format!(
            "cannot start {program} ({}): {e}; check source.pg_bin_dir",
            cmd.get_program().to_string_lossy()
        ))
    })
}

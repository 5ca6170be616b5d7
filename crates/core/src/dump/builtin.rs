//! The built-in dumpers: pg_dump's custom and plain formats.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::codec::Compress;
use crate::dump::{Dumper, pg_dump_command, scratch_env};
use crate::pg::process::client_command;
use crate::pg::{ConnParams, PgTools};

/// `pg_dump -Fc`, restored with `pg_restore --single-transaction --exit-on-error`;
/// the archive compresses itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct CustomDumper;

/// `pg_dump -Fp`, gzipped by pgproof at `gzip_level`, restored with
/// `psql -v ON_ERROR_STOP=1 --single-transaction`.
#[derive(Clone, Copy, Debug)]
pub struct PlainDumper {
    /// gzip level, 0 (store) to 9 (smallest).
    pub gzip_level: u32,
}

impl Default for PlainDumper {
    fn default() -> Self {
        Self { gzip_level: 6 }
    }
}

impl Dumper for CustomDumper {
    fn format(&self) -> &str {
        "custom"
    }

    fn file_name(&self) -> &str {
        "dump.pgc"
    }

    fn compression(&self) -> Option<Compress> {
        None
    }

    fn restore_program(&self) -> &'static str {
        "pg_restore"
    }

    fn dump_command(
        &self,
        tools: &PgTools,
        source: &ConnParams,
        snapshot: &str,
        lock_wait: Duration,
    ) -> Command {
        pg_dump_command(tools, source, "custom", snapshot, lock_wait)
    }

    fn restore_command(&self, tools: &PgTools, target: &ConnParams) -> Command {
        let mut cmd = pg_restore_command(tools, target);
        cmd.arg("--single-transaction");
        cmd
    }

    fn scratch_restore_command(&self, tools: &PgTools, target: &ConnParams) -> Command {
        let mut cmd = pg_restore_command(tools, target);
        cmd.envs(scratch_env());
        cmd
    }
}

/// `pg_restore --exit-on-error` into `target`, the archive on stdin.
fn pg_restore_command(tools: &PgTools, target: &ConnParams) -> Command {
    let mut cmd = client_command(tools, "pg_restore", target);
    cmd.args([
        "--exit-on-error",
        "--no-password",
        "--dbname",
        target.dbname(),
    ])
    .stdout(Stdio::null());
    cmd
}

/// `pg_dump -Fc --compress=0`, compressed by pgproof with zstd (multithreaded) instead
/// of pg_dump's single-core zlib; restored like [`CustomDumper`] after the codec chain
/// decompressed it (`age -d | zstd -d | pg_restore` by hand).
#[derive(Clone, Copy, Debug)]
pub struct ZstdCustomDumper {
    /// zstd level, 1–19.
    pub level: i32,
    /// zstd worker threads.
    pub workers: u32,
}

impl Dumper for ZstdCustomDumper {
    fn format(&self) -> &str {
        "custom"
    }

    fn file_name(&self) -> &str {
        "dump.pgc"
    }

    fn compression(&self) -> Option<Compress> {
        Some(Compress::Zstd {
            level: self.level,
            workers: self.workers,
        })
    }

    fn restore_program(&self) -> &'static str {
        CustomDumper.restore_program()
    }

    fn dump_command(
        &self,
        tools: &PgTools,
        source: &ConnParams,
        snapshot: &str,
        lock_wait: Duration,
    ) -> Command {
        let mut cmd = pg_dump_command(tools, source, "custom", snapshot, lock_wait);
        cmd.arg("--compress=0");
        cmd
    }

    fn restore_command(&self, tools: &PgTools, target: &ConnParams) -> Command {
        CustomDumper.restore_command(tools, target)
    }

    fn scratch_restore_command(&self, tools: &PgTools, target: &ConnParams) -> Command {
        CustomDumper.scratch_restore_command(tools, target)
    }
}

impl Dumper for PlainDumper {
    fn format(&self) -> &str {
        "plain"
    }

    fn file_name(&self) -> &str {
        "dump.sql"
    }

    fn compression(&self) -> Option<Compress> {
        Some(Compress::Gzip {
            level: self.gzip_level,
        })
    }

    fn restore_program(&self) -> &'static str {
        "psql"
    }

    fn dump_command(
        &self,
        tools: &PgTools,
        source: &ConnParams,
        snapshot: &str,
        lock_wait: Duration,
    ) -> Command {
        pg_dump_command(tools, source, "plain", snapshot, lock_wait)
    }

    fn restore_command(&self, tools: &PgTools, target: &ConnParams) -> Command {
        let mut cmd = psql_command(tools, target);
        cmd.arg("--single-transaction");
        cmd
    }

    fn scratch_restore_command(&self, tools: &PgTools, target: &ConnParams) -> Command {
        let mut cmd = psql_command(tools, target);
        cmd.envs(scratch_env());
        cmd
    }
}

/// `psql` stopping at the first error, the script on stdin.
fn psql_command(tools: &PgTools, target: &ConnParams) -> Command {
    let mut cmd = client_command(tools, "psql", target);
    cmd.args([
        "--no-psqlrc",
        "--quiet",
        "--no-password",
        "--set=ON_ERROR_STOP=1",
        "--file=-",
    ])
    .stdout(Stdio::null());
    cmd
}

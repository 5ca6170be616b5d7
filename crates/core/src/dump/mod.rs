//! Dumpers: how a database becomes a byte stream and a byte stream a database.
//!
//! A [`Dumper`] names the programs and their arguments; pgproof runs them, feeds them
//! and watches them (the `run` module). The built-in ones are [`CustomDumper`] (`pg_dump -Fc`,
//! `pg_restore`), [`ZstdCustomDumper`] (the same, compressed by pgproof),
//! [`PlainDumper`] (`pg_dump -Fp`, gzipped by pgproof, `psql`) and [`DirectoryDumper`]
//! (`pg_dump -Fd --jobs`, one object per file, `pg_restore --jobs`). A
//! library user adds a format by implementing the trait and passing it to
//! [`Backup::dumper`](crate::ops::Backup::dumper) and
//! [`Restore::dumper`](crate::ops::Restore::dumper); the conformance suite
//! `testkit::run_all` (feature `testkit`) checks an implementation against a real
//! server.

mod archive;
mod builtin;
mod directory;
pub(crate) mod run;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod toc;

use std::fmt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use archive::{
    ArchiveIo, ArchiveLayout, ArchiveSource, ArchiveTarget, OpenedArchive, Reading, StoredArchive,
    Storing, StoringArchive, StreamLayout,
};
pub use builtin::{CustomDumper, PlainDumper, ZstdCustomDumper};
pub use directory::{
    AVERAGE_CHUNK_RANGE, ChunkIds, Chunking, DEFAULT_AVERAGE_CHUNK, DirectoryDumper,
    DirectoryLayout,
};

use crate::codec::Compress;
use crate::pg::process::client_command;
use crate::pg::{ConnParams, PgTools};

/// One archive format: the program that writes an archive of a snapshot, and the one
/// that applies an archive to a database.
///
/// An implementation:
/// - MUST make [`dump_command`](Dumper::dump_command) a command that writes the whole
///   archive of `source`'s database, exactly as of the exported `snapshot`, to stdout,
///   and exits non-zero on any failure, giving up on a table lock not granted within
///   `lock_wait`;
/// - MUST make [`restore_command`](Dumper::restore_command) a command that reads an
///   archive from stdin and applies it to `target`'s database in a single transaction,
///   stopping at the first error, so a failed or interrupted restore leaves the
///   database as it was;
/// - MUST pass connection parameters through the environment
///   ([`client_command`] does), never a password
///   in argv, and MUST NOT prompt for anything;
/// - MUST keep [`format`](Dumper::format) stable across versions: it is recorded in
///   every manifest and is how a restore finds the dumper again;
/// - SHOULD return from [`compression`](Dumper::compression) the stage pgproof must
///   add, or `None` when the archive compresses itself.
///
/// A dumper whose [`layout`](Dumper::layout) exchanges the archive as
/// [`ArchiveIo::Directory`] instead:
/// - MUST keep at most two files open per job it declares;
/// - MUST make the dump command write the archive as files into the directory
///   pgproof appends as `--file=DIR`, each file written front to back and closed
///   when complete (pgproof stores each as it is written, then deletes it);
/// - MUST make the restore command read the directory pgproof appends as its last
///   argument, where the files its layout reads whole (a [`DirectoryLayout`]: the
///   tables of contents) are plain files and every other file is a named pipe;
/// - MAY restore in several transactions: pgproof then restores only into a
///   database it created, and drops it when the restore fails.
///
/// pgproof sets stdin, stdout and stderr of both commands itself.
pub trait Dumper: Send + Sync + fmt::Debug {
    /// The name recorded in manifests (`custom`, `plain`, …).
    fn format(&self) -> &str;

    /// The stored object's base name, before codec suffixes (`dump.pgc`).
    fn file_name(&self) -> &str;

    /// The compression pgproof applies to the archive, if any.
    fn compression(&self) -> Option<Compress>;

    /// The program [`restore_command`](Dumper::restore_command) runs, for tool
    /// discovery and messages.
    fn restore_program(&self) -> &'static str;

    /// The command that dumps `source` as of `snapshot`.
    fn dump_command(
        &self,
        tools: &PgTools,
        source: &ConnParams,
        snapshot: &str,
        lock_wait: Duration,
    ) -> Command;

    /// The command that restores into `target`.
    fn restore_command(&self, tools: &PgTools, target: &ConnParams) -> Command;

    /// The command that restores into a scratch database pgproof created and drops
    /// after judging it (verify). It MAY commit as it goes, and SHOULD where the
    /// restore program can: each table committed on its own is fingerprinted while
    /// the rest restores. A failure is judged like one of
    /// [`restore_command`](Dumper::restore_command)'s, and the database dropped.
    fn scratch_restore_command(&self, tools: &PgTools, target: &ConnParams) -> Command {
        self.restore_command(tools, target)
    }

    /// How many tables the dump program reads at once (its jobs): the source's
    /// fingerprint reads beside each.
    fn readers(&self) -> usize {
        1
    }

    /// How the archive travels; one stream ([`StreamLayout`]) unless said otherwise.
    fn layout(&self) -> Arc<dyn ArchiveLayout> {
        Arc::new(StreamLayout)
    }
}

/// `pg_dump --format=<format> --snapshot=<snapshot>` with a lock timeout: the dump
/// command of every pg_dump-based format.
pub fn pg_dump_command(
    tools: &PgTools,
    source: &ConnParams,
    format: &str,
    snapshot: &str,
    lock_wait: Duration,
) -> Command {
    let mut cmd = client_command(tools, "pg_dump", source);
    cmd.arg(format!("--format={format}"))
        .arg("--no-password")
        .arg(format!("--snapshot={snapshot}"))
        // Without it pg_dump waits for a lock forever, holding pgproof's snapshot
        // open while a queued ACCESS EXCLUSIVE blocks everyone else on that table.
        .arg(format!(
            "--lock-wait-timeout={}ms",
            lock_wait.as_millis().max(1)
        ))
        .stdin(Stdio::null());
    cmd
}

/// The connections the dump or restore program of `dumper` may open: one per table it
/// reads at once, and with `--jobs` a leader beside its workers.
pub(crate) fn program_connections(dumper: &dyn Dumper) -> usize {
    match dumper.readers() {
        jobs if jobs > 1 => jobs + 1,
        _ => 1,
    }
}

/// A scratch restore commits statement by statement: none of them need wait for its
/// WAL to reach disk, the database is thrown away (a crash loses nothing kept).
pub(crate) fn scratch_env() -> [(&'static str, String); 1] {
    let inherited = std::env::var("PGOPTIONS").unwrap_or_default();
    [(
        "PGOPTIONS",
        format!("{inherited} -c synchronous_commit=off")
            .trim_start()
            .to_owned(),
    )]
}

/// The built-in formats, by the name a config file uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// [`CustomDumper`].
    #[default]
    Custom,
    /// [`PlainDumper`].
    Plain,
    /// [`DirectoryDumper`].
    Directory,
}

impl Format {
    /// The dumper for this format; `gzip_level` applies to plain dumps, and a
    /// directory dump runs one job per core with pg_dump's own compression.
    pub fn dumper(self, gzip_level: u32) -> Arc<dyn Dumper> {
        match self {
            Format::Custom => Arc::new(CustomDumper),
            Format::Plain => Arc::new(PlainDumper { gzip_level }),
            Format::Directory => Arc::new(DirectoryDumper {
                jobs: cores(),
                compression: None,
                chunking: None,
            }),
        }
    }

    /// [`dumper`](Self::dumper), with custom and directory dumps compressed by pgproof
    /// with zstd at `zstd_level` when given: a custom dump's on every core but the one
    /// pg_dump uses, each file of a directory dump's on the thread that stores it.
    /// `jobs` sets a directory dump's parallelism (default: one per core), `chunking`
    /// deduplicates its data files (other formats have no data files to cut).
    pub fn dumper_with(
        self,
        gzip_level: u32,
        zstd_level: Option<i32>,
        jobs: Option<u32>,
        chunking: Option<Chunking>,
    ) -> Arc<dyn Dumper> {
        match (self, zstd_level) {
            (Format::Custom, Some(level)) => Arc::new(ZstdCustomDumper {
                level,
                workers: cores().saturating_sub(1).max(1),
            }),
            (Format::Directory, level) => Arc::new(DirectoryDumper {
                jobs: jobs.unwrap_or_else(cores).max(1),
                compression: level.map(|level| Compress::Zstd { level, workers: 0 }),
                chunking,
            }),
            _ => self.dumper(gzip_level),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Custom => "custom",
            Format::Plain => "plain",
            Format::Directory => "directory",
        })
    }
}

/// The built-in dumper that wrote `format`, as recorded in a manifest.
pub fn builtin(format: &str) -> Option<Arc<dyn Dumper>> {
    match format {
        "custom" => Some(Format::Custom.dumper(6)),
        "plain" => Some(Format::Plain.dumper(6)),
        "directory" => Some(Format::Directory.dumper(6)),
        _ => None,
    }
}

fn cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_found_by_their_recorded_names() {
        for format in [Format::Custom, Format::Plain, Format::Directory] {
            let dumper = format.dumper(6);
            assert_eq!(dumper.format(), format.to_string());
            let again = builtin(dumper.format()).unwrap();
            assert_eq!(again.file_name(), dumper.file_name());
        }
        assert!(builtin("tar").is_none());
    }
}

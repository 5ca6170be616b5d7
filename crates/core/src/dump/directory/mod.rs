//! pg_dump's directory format with parallel jobs, for databases too big for one core.
//!
//! pg_dump writes the archive as files in a directory, several tables at once. Each
//! file becomes an object of its own: pgproof reads it while pg_dump is still writing
//! it (inotify says when a file appears, grows and is closed), pushes it through the
//! codec chain into the sink and frees the disk blocks behind what it has read. A file
//! cannot make pg_dump wait the way a pipe does, so pgproof pauses pg_dump (SIGSTOP to
//! its process group) while it is more than [`DISK_WINDOW`] ahead of the sink: local
//! disk holds that window of the archive, never the whole. A restore gives pg_restore a directory of
//! named pipes, one per data file, and streams each object into its pipe when
//! pg_restore opens it.
//!
//! The trade-off: pg_restore with several jobs cannot restore in one transaction, so
//! pgproof restores such an archive only into a database it creates, and drops it if
//! the restore fails.

mod dedup;
mod feed;
mod follow;

pub use dedup::{AVERAGE_CHUNK_RANGE, ChunkIds, Chunking, DEFAULT_AVERAGE_CHUNK};

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use crate::catalog::ObjectInfo;
use crate::catalog::chunks::{ChunkedFile, load_chunk_list, missing_chunk, stored_chunks};
use crate::codec::{CodecChain, Identities};
use crate::codec::{Compress, Progress};
use crate::dump::archive::{
    ArchiveIo, ArchiveLayout, ArchiveSource, ArchiveTarget, OpenedArchive, Reading, StoredArchive,
    Storing, StoringArchive, get_listed,
};
use crate::dump::{Dumper, pg_dump_command};
use crate::error::{Error, Result};
use crate::pg::process::client_command;
use crate::pg::{ConnParams, PgTools};
use crate::scope::Scope;
use crate::sink::Sink;

/// `pg_dump -Fd --jobs=N`, each file stored as its own object (compressed by pgproof
/// when `compression` is set, by pg_dump's zlib otherwise), restored with
/// `pg_restore --jobs=N` into a database pgproof creates. With `chunking`, each data
/// file is stored as chunks shared with the database's other backups instead.
#[derive(Clone, Debug)]
pub struct DirectoryDumper {
    /// Tables dumped (and restored) at once.
    pub jobs: u32,
    /// pgproof's compression of each file; `None` leaves it to pg_dump.
    pub compression: Option<Compress>,
    /// Deduplication: data files cut into chunks by content, each stored once.
    pub chunking: Option<Chunking>,
}

impl Dumper for DirectoryDumper {
    fn format(&self) -> &str {
        "directory"
    }

    fn file_name(&self) -> &str {
        "dump"
    }

    fn compression(&self) -> Option<Compress> {
        self.compression
    }

    fn restore_program(&self) -> &'static str {
        "pg_restore"
    }

    fn readers(&self) -> usize {
        self.jobs as usize
    }

    fn layout(&self) -> Arc<dyn ArchiveLayout> {
        Arc::new(DirectoryLayout {
            jobs: self.jobs,
            chunking: self.chunking.clone(),
        })
    }

    fn dump_command(
        &self,
        tools: &PgTools,
        source: &ConnParams,
        snapshot: &str,
        lock_wait: Duration,
    ) -> Command {
        let mut cmd = pg_dump_command(tools, source, "directory", snapshot, lock_wait);
        // Each file is read and deleted as it is written: syncing it would only cost.
        cmd.arg(format!("--jobs={}", self.jobs.max(1)))
            .arg("--no-sync");
        if self.compression.is_some() {
            cmd.arg("--compress=0");
        }
        cmd.stdout(Stdio::null());
        cmd
    }

    fn restore_command(&self, tools: &PgTools, target: &ConnParams) -> Command {
        let mut cmd = client_command(tools, "pg_restore", target);
        cmd.args(["--exit-on-error", "--no-password"])
            .arg(format!("--jobs={}", self.jobs.max(1)))
            .args(["--dbname", target.dbname()])
            .stdout(Stdio::null());
        cmd
    }

    fn scratch_restore_command(&self, tools: &PgTools, target: &ConnParams) -> Command {
        let mut cmd = self.restore_command(tools, target);
        cmd.envs(crate::dump::scratch_env());
        cmd
    }
}

/// A directory of files, each its own object (`<backup>/<file_name>/<file>`), or with
/// `chunking` each data file as shared chunks (`.chunks/<db>/…`, listed in the
/// backup's chunk list). The tables of contents (`toc.dat`, `*.toc`) are written to
/// the restore directory whole; every other file reaches the restore program through
/// a named pipe. A restore reads chunked backups whatever `chunking` says.
#[derive(Clone, Debug)]
pub struct DirectoryLayout {
    /// The dump program's parallel jobs: each keeps at most two files open at once (a
    /// table's data, or a large object's and its table of contents), and pgproof reads
    /// every open file at once, or a paused dump could wait on a file nobody reads.
    pub jobs: u32,
    /// Deduplication of what is stored.
    pub chunking: Option<Chunking>,
}

#[async_trait]
impl ArchiveLayout for DirectoryLayout {
    fn io(&self) -> ArchiveIo {
        ArchiveIo::Directory
    }

    fn store(&self, cmd: Command, target: ArchiveTarget) -> Storing {
        let stop = Arc::new(AtomicBool::new(false));
        let suffix = target.chain.suffix();
        let archive_dir = target.key.strip_suffix(&suffix).unwrap_or(&target.key);
        let dedup = self.chunking.clone().map(|chunking| {
            Arc::new(dedup::ChunkStore::new(
                target.sink.clone(),
                target.backup.clone(),
                archive_dir,
                chunking,
                tokio::runtime::Handle::current(),
            ))
        });
        let store = follow::PartStore {
            sink: target.sink.clone(),
            dedup: dedup.clone(),
            prefix: format!(
                "{}/",
                target.key.strip_suffix(&suffix).unwrap_or(&target.key)
            ),
            suffix,
            runtime: tokio::runtime::Handle::current(),
            stored: Arc::default(),
            stage_dir: target.stage_dir.clone(),
            scope: target.scope.clone(),
        };
        let stored = store.stored.clone();
        // Every file the dump may hold open has a reader, and the table of contents
        // one more.
        let parallel = 2 * self.jobs.max(1) as usize + 2;
        let program = {
            let stop = stop.clone();
            tokio::task::spawn_blocking(move || {
                if let Some(dedup) = &store.dedup {
                    store
                        .runtime
                        .block_on(dedup.begin(&target.chain, target.recipients.as_ref()))?;
                }
                follow::dump(
                    cmd,
                    &store,
                    &target.chain,
                    target.recipients.as_ref(),
                    target.progress.as_ref(),
                    stop,
                    parallel,
                )
            })
        };
        // Stopped before it commits (SIGTERM), the dump takes what it stored along.
        let undo = {
            let (sink, stored, dedup) = (target.sink.clone(), stored.clone(), dedup.clone());
            target.scope.undo_unless_kept(move || async move {
                let parts =
                    std::mem::take(&mut *stored.lock().unwrap_or_else(PoisonError::into_inner));
                for part in &parts {
                    let _ = sink.delete(&part.object.key).await;
                }
                if let Some(dedup) = &dedup {
                    dedup.abort().await;
                }
                Some("deleted what the stopped dump stored".to_owned())
            })
        };
        Storing {
            program,
            archive: Box::new(DirectoryStoring {
                sink: target.sink,
                stop,
                stored,
                dedup,
                undo: Mutex::new(Some(undo)),
            }),
        }
    }

    async fn open(&self, source: ArchiveSource<'_>) -> Result<Box<dyn OpenedArchive>> {
        // Every file present before any database is touched: one listing of the
        // archive's directory, and the table of contents opened.
        let manifest = source.manifest;
        let toc = &manifest.object.key;
        let dir = toc.rsplit_once('/').map_or("", |(dir, _)| dir);
        let listed: std::collections::HashSet<String> = source
            .sink
            .list(&format!("{dir}/"))
            .await?
            .into_iter()
            .map(|meta| meta.key)
            .collect();
        if let Some(missing) = manifest.parts.iter().find(|p| !listed.contains(&p.key)) {
            return Err(Error::integrity(format!(
                "the object {} that the manifest of {} lists is missing from {}; the backup cannot be restored",
                missing.key,
                manifest.backup_id,
                source.sink.describe()
            ))
            .with_object(missing.key.clone()));
        }
        drop(get_listed(&**source.sink, manifest, &manifest.object).await?);
        let chunked = match load_chunk_list(&**source.sink, manifest).await? {
            Some(list) => {
                let stored = stored_chunks(&**source.sink, &manifest.database).await?;
                if let Some(missing) = missing_chunk(&list, &stored) {
                    return Err(missing);
                }
                list.files
            }
            None => Vec::new(),
        };
        Ok(Box::new(OpenedDirectory {
            database: manifest.database.clone(),
            chunked,
            sink: source.sink.clone(),
            chain: source.chain.clone(),
            identities: source.identities.cloned(),
            objects: source.manifest.dump_objects().cloned().collect(),
            progress: source.progress.cloned(),
            scope: source.scope.clone(),
        }))
    }
}

/// A directory archive's files are committed as they are complete: the stop flag, and
/// the files stored so far (and the chunks, when deduplicated).
struct DirectoryStoring {
    sink: Arc<dyn Sink>,
    stop: Arc<AtomicBool>,
    stored: Arc<Mutex<Vec<follow::StoredPart>>>,
    dedup: Option<Arc<dedup::ChunkStore>>,
    /// What a cancellation deletes, until commit or abort has dealt with it.
    undo: Mutex<Option<crate::scope::UndoGuard>>,
}

impl DirectoryStoring {
    fn take(&self) -> Vec<follow::StoredPart> {
        std::mem::take(&mut *self.stored.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Commit or abort has dealt with what was stored.
    fn dealt_with(&self) {
        if let Some(undo) = self
            .undo
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            undo.keep();
        }
    }
}

#[async_trait]
impl StoringArchive for DirectoryStoring {
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    async fn commit(self: Box<Self>) -> Result<StoredArchive> {
        // Left in place until dealt with: stopped while the chunk list is written,
        // the undo still finds every file.
        let mut stored = self
            .stored
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        stored.sort_by(|a, b| a.name.cmp(&b.name));
        let outcome = match stored.iter().position(|p| p.name == "toc.dat") {
            None => Err(Error::tool(
                "pg_dump finished without writing the archive's toc.dat",
            )),
            Some(toc) => match &self.dedup {
                Some(dedup) => dedup.commit().await.map(|chunks| (toc, Some(chunks))),
                None => Ok((toc, None)),
            },
        };
        self.dealt_with();
        self.take();
        match outcome {
            Ok((toc, chunks)) => {
                let object = stored.remove(toc).object;
                Ok(StoredArchive {
                    object,
                    parts: stored.into_iter().map(|p| p.object).collect(),
                    chunks,
                })
            }
            Err(e) => {
                for part in &stored {
                    let _ = self.sink.delete(&part.object.key).await;
                }
                if let Some(dedup) = &self.dedup {
                    dedup.abort().await;
                }
                Err(e)
            }
        }
    }

    async fn abort(self: Box<Self>, cause: Error) -> Error {
        self.stop();
        self.dealt_with();
        for part in self.take() {
            let _ = self.sink.delete(&part.object.key).await;
        }
        if let Some(dedup) = &self.dedup {
            dedup.abort().await;
        }
        cause
    }
}

struct OpenedDirectory {
    sink: Arc<dyn Sink>,
    /// The database, whose chunk area the chunked files are read from.
    database: String,
    /// The files stored as chunks.
    chunked: Vec<ChunkedFile>,
    chain: CodecChain,
    identities: Option<Identities>,
    objects: Vec<ObjectInfo>,
    progress: Option<Progress>,
    scope: Scope,
}

#[async_trait]
impl OpenedArchive for OpenedDirectory {
    async fn feed(self: Box<Self>, cmd: Command, program: &str) -> Result<u64> {
        feed::restore(cmd, program, &self, Reading::Whole).await
    }

    async fn feed_part(self: Box<Self>, cmd: Command, program: &str) -> Result<u64> {
        feed::restore(cmd, program, &self, Reading::Part).await
    }
}

/// Whether pg_restore reads this archive file whole before anything else (the tables
/// of contents) rather than as one table's data.
fn is_table_of_contents(name: &str) -> bool {
    name == "toc.dat" || name.ends_with(".toc")
}

/// The archive file an object of a directory backup holds: its key without the
/// backup's prefix and the codec suffix.
pub(crate) fn part_name<'k>(key: &'k str, suffix: &str) -> &'k str {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.strip_suffix(suffix).unwrap_or(name)
}

/// A private directory for pg_dump's or pg_restore's files (0700, and the programs
/// run with umask 077), named with this process's id, in `parent` or the temporary
/// directory. Stages that a dead pgproof left there (SIGKILL gives no chance to clean
/// up) are removed first: a dump's stage holds plaintext of the database.
fn private_stage(parent: Option<&std::path::Path>, kind: &str) -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let parent = parent.map_or_else(std::env::temp_dir, std::path::Path::to_path_buf);
    reap_stages(&parent);
    tempfile::Builder::new()
        .prefix(&format!("{STAGE_PREFIX}{kind}-{}-", std::process::id()))
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(&parent)
        .map_err(|e| {
            Error::io(
                format!(
                    "creating a directory for pg_{kind}'s files in {}",
                    parent.display()
                ),
                e,
            )
        })
}

/// The names of stage directories begin with this, then `dump-` or `restore-`, the
/// owner's pid and `-`.
const STAGE_PREFIX: &str = "pgproof-";

/// Removes the stages in `parent` of pgproof processes that are gone (only this
/// user's, only directories, never through a link).
fn reap_stages(parent: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(STAGE_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest
            .strip_prefix("dump-")
            .or_else(|| rest.strip_prefix("restore-"))
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != me || crate::pg::process::is_running(pid) {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => {
                tracing::warn!(stage = %entry.path().display(), pid, "removed the stage a killed pgproof left")
            }
            Err(e) => {
                tracing::warn!(stage = %entry.path().display(), error = %e, "cannot remove the stage a killed pgproof left")
            }
        }
    }
}

/// A progress callback for one file of several: reports to `progress` the bytes of
/// all of them, counted in `total`.
fn share_of(progress: &Progress, total: &Arc<AtomicU64>) -> Progress {
    let (progress, total) = (progress.clone(), total.clone());
    let last = AtomicU64::new(0);
    Arc::new(move |bytes: u64| {
        let delta = bytes - last.swap(bytes, Ordering::Relaxed);
        progress(total.fetch_add(delta, Ordering::Relaxed) + delta);
    })
}

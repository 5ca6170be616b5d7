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

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::Signal;
use std::thread::ScopedJoinHandle;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::catalog::ObjectInfo;
use crate::codec::{CodecChain, Compress, Identities, Progress, PumpError, Recipients, Tallies};
use crate::dump::{Dumper, Layout, pg_dump_command};
use crate::error::{Error, ErrorKind, Result};
use crate::pg::process::{ChildProgram, client_command, one_line};
use crate::pg::{ConnParams, PgTools};
use crate::sink::Sink;
use crate::sink::stream::Upload;

/// `pg_dump -Fd --jobs=N`, each file stored as its own object (compressed by pgproof
/// when `compression` is set, by pg_dump's zlib otherwise), restored with
/// `pg_restore --jobs=N` into a database pgproof creates.
#[derive(Clone, Copy, Debug)]
pub struct DirectoryDumper {
    /// Tables dumped (and restored) at once.
    pub jobs: u32,
    /// pgproof's compression of each file; `None` leaves it to pg_dump.
    pub compression: Option<Compress>,
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

    fn layout(&self) -> Layout {
        Layout::Directory { jobs: self.jobs }
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

/// Where the objects of one directory archive go.
pub(crate) struct PartStore {
    /// The sink.
    pub sink: Arc<dyn Sink>,
    /// Keys are `<prefix><file name><suffix>`.
    pub prefix: String,
    /// The codec chain's suffix.
    pub suffix: String,
    /// The runtime the uploads run on.
    pub runtime: tokio::runtime::Handle,
    /// The files stored so far; whoever abandons the dump deletes them.
    pub stored: Arc<Mutex<Vec<StoredPart>>>,
    /// Where pg_dump's stage directory goes (default: the temporary directory).
    pub stage_dir: Option<std::path::PathBuf>,
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

/// One file of the archive, stored.
#[derive(Debug)]
pub(crate) struct StoredPart {
    /// The file's name in the archive directory.
    pub name: String,
    /// The object.
    pub object: ObjectInfo,
}

/// A file some program is writing: whether it has closed it, and a bell rung at every
/// change.
#[derive(Default)]
struct Growing {
    closed: AtomicBool,
    changed: (Mutex<u64>, Condvar),
    /// Bytes read from it so far.
    read: AtomicU64,
    /// Whether it is stored whole.
    stored: AtomicBool,
}

impl Growing {
    fn ring(&self) {
        let (count, bell) = &self.changed;
        *count.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        bell.notify_all();
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.ring();
    }

    /// Waits for the file to close, or a short while for it to grow.
    fn wait(&self, seen: &mut u64) {
        let (count, bell) = &self.changed;
        let guard = count.lock().unwrap_or_else(PoisonError::into_inner);
        let (guard, _) = bell
            .wait_timeout_while(guard, Duration::from_millis(10), |c| *c == *seen)
            .unwrap_or_else(PoisonError::into_inner);
        *seen = *guard;
    }
}

/// The files of the stage: those not yet stored whole, by name, the names ever seen,
/// and those waiting for a thread to store them.
#[derive(Default)]
struct Found {
    files: HashMap<String, Arc<Growing>>,
    seen: HashSet<String>,
    waiting: VecDeque<String>,
}

impl Found {
    /// The file named `name`, queued if it is new; `None` once it is stored.
    fn discover(&mut self, name: String) -> Option<Arc<Growing>> {
        if self.seen.insert(name.clone()) {
            self.waiting.push_back(name.clone());
            self.files.insert(name.clone(), Arc::default());
        }
        self.files.get(&name).cloned()
    }

    fn next_waiting(&mut self) -> Option<(String, Arc<Growing>)> {
        let name = self.waiting.pop_front()?;
        let growing = self.files.get(&name)?.clone();
        Some((name, growing))
    }
}

/// Reads a file while another program appends to it, to its end once that program
/// has closed it; punches out the blocks already read so the disk holds only what
/// has not been read yet.
struct FollowReader<'g> {
    file: File,
    growing: &'g Growing,
    seen: u64,
    read: u64,
    freed: u64,
    stop: Arc<AtomicBool>,
}

/// Blocks are given back to the file system in steps of this many bytes.
const FREE_STEP: u64 = 4 << 20;

/// How far pg_dump may write ahead of the sink (all files together) before it is
/// paused; it resumes at half of it.
const DISK_WINDOW: u64 = 32 << 20;

/// How long a paused pg_dump waits for its files to be read before it resumes anyway.
const STALL: Duration = Duration::from_secs(10);

impl Read for FollowReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Err(io::Error::other("the dump was stopped"));
            }
            // Closed before this read: what the read finds is all there is.
            let closed = self.growing.closed.load(Ordering::SeqCst);
            let n = self.file.read(buf)?;
            if n > 0 {
                self.read += n as u64;
                self.growing.read.store(self.read, Ordering::SeqCst);
                if self.read - self.freed >= FREE_STEP {
                    // Best effort: a file system without hole punching keeps the
                    // blocks until the file is deleted.
                    let _ = nix::fcntl::fallocate(
                        &self.file,
                        nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                            | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                        0,
                        self.read as i64,
                    );
                    self.freed = self.read;
                }
                return Ok(n);
            }
            if closed {
                return Ok(0);
            }
            self.growing.wait(&mut self.seen);
        }
    }
}

/// Runs `cmd` (a directory-format dump program; `--file=<stage>` is appended) and
/// stores every file it writes as an object through `chain`, at most `parallel` at
/// once, each listed in `store.stored` once committed. On any failure, or when `stop`
/// is raised, the program is killed and the error returned; the objects stored so far
/// are the caller's to delete.
#[allow(clippy::too_many_arguments)]
pub(crate) fn dump(
    mut cmd: Command,
    store: &PartStore,
    chain: &CodecChain,
    recipients: Option<&Recipients>,
    progress: Option<&Progress>,
    stop: Arc<AtomicBool>,
    parallel: usize,
) -> Result<()> {
    let stage = private_stage(store.stage_dir.as_deref(), "dump")?;
    let watch = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .map_err(|e| Error::io("watching pg_dump's files", e.into()))?;
    watch
        .add_watch(
            stage.path(),
            // No IN_MODIFY: a flood of them could overflow the queue and lose a close;
            // readers at the end of a file look again every few milliseconds instead.
            AddWatchFlags::IN_CREATE | AddWatchFlags::IN_CLOSE_WRITE,
        )
        .map_err(|e| Error::io("watching pg_dump's files", e.into()))?;
    let mut file_arg = OsString::from("--file=");
    file_arg.push(stage.path());
    cmd.arg(file_arg);
    let program = "pg_dump";
    let child = ChildProgram::spawn_group(cmd, program)?;
    let total = Arc::new(AtomicU64::new(0));

    let stored = &*store.stored;
    let outcome = std::thread::scope(|scope| -> Result<()> {
        let mut found = Found::default();
        let mut running: Vec<ScopedJoinHandle<'_, Result<()>>> = Vec::new();
        let mut failure: Option<Error> = None;
        let mut exited = false;
        let (mut paused, mut windowed) = (false, true);
        let (mut last_read, mut progress_at) = (0u64, Instant::now());
        loop {
            let mut quiet = true;
            match watch.read_events() {
                Ok(events) => {
                    for event in events {
                        quiet = false;
                        let Some(name) = event.name.and_then(|n| n.into_string().ok()) else {
                            continue;
                        };
                        let Some(growing) = found.discover(name) else {
                            continue;
                        };
                        if event.mask.contains(AddWatchFlags::IN_CLOSE_WRITE) {
                            growing.close();
                        } else {
                            growing.ring();
                        }
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => {}
                Err(e) => {
                    failure.get_or_insert(Error::io("watching pg_dump's files", e.into()));
                }
            }
            if exited {
                // pg_dump is gone: every file it wrote is complete, including any
                // whose events were not read.
                match std::fs::read_dir(stage.path()) {
                    Ok(entries) => {
                        for entry in entries.flatten() {
                            if let Ok(name) = entry.file_name().into_string() {
                                found.discover(name);
                            }
                        }
                    }
                    Err(e) => {
                        failure.get_or_insert(Error::io("listing pg_dump's files", e));
                    }
                }
                found.files.values().for_each(|g| g.close());
            }
            let (finished, still): (Vec<_>, Vec<_>) =
                running.drain(..).partition(|h| h.is_finished());
            running = still;
            for handle in finished {
                join_storing(handle, &mut failure);
            }
            found.files.retain(|_, g| !g.stored.load(Ordering::SeqCst));
            if failure.is_none() {
                while running.len() < parallel.max(1)
                    && let Some((name, growing)) = found.next_waiting()
                {
                    let path = stage.path().join(&name);
                    let (stop, total) = (stop.clone(), total.clone());
                    running.push(scope.spawn(move || {
                        let part = store_part(
                            store, &name, &path, &growing, chain, recipients, progress, stop,
                            &total,
                        )?;
                        stored
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(part);
                        growing.stored.store(true, Ordering::SeqCst);
                        Ok(())
                    }));
                }
            }
            if stop.load(Ordering::SeqCst) && failure.is_none() {
                failure = Some(Error::tool("the backup was stopped"));
            }
            if failure.is_some() {
                stop.store(true, Ordering::SeqCst);
                break;
            }
            if exited && found.waiting.is_empty() && running.is_empty() {
                break;
            }
            if !exited {
                // Back-pressure: pg_dump writes files, which cannot block it, so it is
                // paused while the sink is more than a window behind.
                let behind: u64 = found
                    .files
                    .iter()
                    .map(|(name, g)| {
                        std::fs::metadata(stage.path().join(name))
                            .map_or(0, |m| m.len().saturating_sub(g.read.load(Ordering::SeqCst)))
                    })
                    .sum();
                let read: u64 = found
                    .files
                    .values()
                    .map(|g| g.read.load(Ordering::SeqCst))
                    .sum::<u64>()
                    + found.seen.len() as u64;
                if read != last_read {
                    (last_read, progress_at) = (read, Instant::now());
                }
                tracing::trace!(behind, paused, "pg_dump ahead of the sink");
                if paused && progress_at.elapsed() > STALL {
                    // Whatever holds the readers up, a paused pg_dump must not wait
                    // for them forever: the window gives way, the dump goes on.
                    tracing::warn!(
                        behind,
                        "no file of the dump was read for {STALL:?}; pg_dump resumes without a disk window"
                    );
                    child.signal_group(Signal::SIGCONT);
                    (paused, windowed) = (false, false);
                } else if windowed && !paused && behind > DISK_WINDOW {
                    paused = child.signal_group(Signal::SIGSTOP);
                    progress_at = Instant::now();
                } else if paused && behind < DISK_WINDOW / 2 {
                    child.signal_group(Signal::SIGCONT);
                    paused = false;
                }
                match child.has_exited() {
                    Ok(true) => {
                        exited = true;
                        continue; // one more look at the directory before reading files as whole
                    }
                    Ok(false) => {}
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                }
            }
            if quiet {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if paused {
            child.signal_group(Signal::SIGCONT);
        }
        for handle in running {
            join_storing(handle, &mut failure);
        }
        failure.map_or(Ok(()), Err)
    });
    match outcome {
        Ok(()) => match child.wait(ErrorKind::Tool) {
            Ok(said) => {
                if !said.trim().is_empty() {
                    tracing::warn!(program, stderr = %one_line(&said), "the dump program succeeded with messages");
                }
                Ok(())
            }
            Err(e) => Err(e),
        },
        Err(e) => {
            child.kill();
            Err(e)
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

/// Waits for a thread storing a file; its failure (or panic) becomes `failure`
/// unless one came first.
fn join_storing(handle: ScopedJoinHandle<'_, Result<()>>, failure: &mut Option<Error>) {
    let outcome = handle
        .join()
        .unwrap_or_else(|_| Err(Error::tool("a thread storing the dump panicked")));
    if let Err(e) = outcome {
        failure.get_or_insert(e);
    }
}

/// Streams one file of the archive into its object and deletes the file.
#[allow(clippy::too_many_arguments)]
fn store_part(
    store: &PartStore,
    name: &str,
    path: &Path,
    growing: &Growing,
    chain: &CodecChain,
    recipients: Option<&Recipients>,
    progress: Option<&Progress>,
    stop: Arc<AtomicBool>,
    total: &Arc<AtomicU64>,
) -> Result<StoredPart> {
    // Writable too: punching out the blocks already read needs it.
    let file = File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(format!("reading {name} of the dump"), e))?;
    let reader = FollowReader {
        file,
        growing,
        seen: 0,
        read: 0,
        freed: 0,
        stop,
    };
    let key = format!("{}{name}{}", store.prefix, store.suffix);
    let (writer, upload) = {
        let _entered = store.runtime.enter();
        Upload::start(store.sink.clone(), key.clone())
    };
    let part_progress = progress.map(|p| share_of(p, total));
    let encoded = chain.encode(reader, writer, recipients, part_progress.as_ref());
    let tallies: Tallies = match encoded {
        Ok((writer, tallies)) => {
            drop(writer);
            tallies
        }
        Err(e) => {
            let e = e.into_error();
            return Err(store.runtime.block_on(upload.abort(e)));
        }
    };
    let stored_bytes = store.runtime.block_on(upload.commit())?;
    if stored_bytes != tallies.stored.bytes {
        // Committed, yet listed nowhere: it goes now.
        let _ = store.runtime.block_on(store.sink.delete(&key));
        return Err(Error::integrity(format!(
            "the sink stored {stored_bytes} bytes for {key} but {} were sent",
            tallies.stored.bytes
        ))
        .with_object(key));
    }
    let _ = std::fs::remove_file(path);
    Ok(StoredPart {
        name: name.to_owned(),
        object: ObjectInfo::new(key, tallies),
    })
}

/// Runs `cmd` (a directory-format restore program; the archive directory is appended)
/// on a directory holding the tables of contents as files and every other file of
/// the archive as a named pipe, and streams each object into its pipe once the
/// program opens it. Each object's tallies are checked before its pipe closes; a
/// damaged object kills the program before it sees the end of that file. A program
/// that fails on sound objects, or succeeds without reading one, has rejected the
/// backup ([`ErrorKind::Rejected`]).
pub(crate) async fn restore(
    mut cmd: Command,
    program: &str,
    sink: Arc<dyn Sink>,
    chain: &CodecChain,
    identities: Option<&Identities>,
    objects: &[ObjectInfo],
    progress: Option<&Progress>,
) -> Result<u64> {
    let stage = private_stage(None, "restore")?;
    let suffix = chain.suffix();
    let mut pipes = Vec::new();
    let mut raw_bytes = 0;
    for object in objects {
        let name = part_name(&object.key, &suffix);
        if name.is_empty()
            || name.starts_with('.')
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        {
            return Err(Error::integrity(format!(
                "the manifest lists {}, which is no file of a directory archive",
                object.key
            )));
        }
        let path = stage.path().join(name);
        if is_table_of_contents(name) {
            let file = File::create(&path)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            raw_bytes += fetch_into(&*sink, chain, identities, object, file, None)
                .await
                .map_err(|e| e.error)?;
        } else {
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).map_err(|e| {
                Error::io(format!("creating the pipe {}", path.display()), e.into())
            })?;
            pipes.push((name.to_owned(), path, object.clone()));
        }
    }

    cmd.arg(stage.path());
    let child = ChildProgram::spawn_group(cmd, program)?;
    let finished = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let mut feeders = futures::stream::FuturesUnordered::new();
    for (name, path, object) in pipes {
        let (sink, chain, identities) = (sink.clone(), chain.clone(), identities.cloned());
        let finished = finished.clone();
        let progress = progress.map(|p| share_of(p, &total));
        feeders.push(tokio::spawn(async move {
            let Some(pipe) = open_when_read(&path, &finished).await? else {
                return Ok(Fed::Unread(name));
            };
            fetch_into(
                &*sink,
                &chain,
                identities.as_ref(),
                &object,
                pipe,
                progress.as_ref(),
            )
            .await
            .map(Fed::Bytes)
        }));
    }

    let mut unread = Vec::new();
    let mut broken_pipe = None;
    let mut held_open: Option<File> = None;
    let mut exited = false;
    let outcome: Result<()> = loop {
        tokio::select! {
            joined = futures::StreamExt::next(&mut feeders), if !feeders.is_empty() => {
                match joined.map(|j| j.unwrap_or_else(|e| Err(FeedError::input(Error::tool(format!("a restore feeder failed: {e}")))))) {
                    Some(Ok(Fed::Bytes(n))) => raw_bytes += n,
                    Some(Ok(Fed::Unread(name))) => unread.push(name),
                    // The program went away while reading: its own failure says why.
                    Some(Err(FeedError { error, output_side: true, .. })) => { broken_pipe.get_or_insert(error); }
                    // A damaged object or a failed read of it: the program must not see
                    // the end of that pipe, which stays open until it is killed.
                    Some(Err(FeedError { error, pipe, .. })) => { held_open = pipe; break Err(error) }
                    None => {}
                }
            }
            () = tokio::time::sleep(Duration::from_millis(10)), if !exited => {
                match child.has_exited() {
                    Ok(done) => exited = done,
                    Err(e) => break Err(e),
                }
                finished.store(exited, Ordering::SeqCst);
            }
        }
        if exited && feeders.is_empty() {
            break Ok(());
        }
    };
    if let Err(e) = outcome {
        finished.store(true, Ordering::SeqCst);
        child.kill();
        drop(held_open);
        return Err(e);
    }
    tokio::task::spawn_blocking(move || child.wait(ErrorKind::Rejected))
        .await
        .unwrap_or_else(|e| Err(Error::tool(format!("waiting for the restore failed: {e}"))))?;
    if let Some(e) = broken_pipe {
        return Err(e);
    }
    if !unread.is_empty() {
        unread.sort();
        return Err(Error::rejected(format!(
            "{program} exited without reading {} of the archive",
            unread.join(", ")
        )));
    }
    Ok(raw_bytes)
}

enum Fed {
    Bytes(u64),
    Unread(String),
}

/// Why an object did not reach its pipe whole.
struct FeedError {
    error: Error,
    /// Writing to the pipe failed (the restore program went away), not reading or
    /// decoding the object.
    output_side: bool,
    /// The pipe, still open, so the program sees no end of file before it is killed.
    pipe: Option<File>,
}

impl FeedError {
    fn input(error: Error) -> Self {
        Self {
            error,
            output_side: false,
            pipe: None,
        }
    }
}

/// Opens the pipe for writing as soon as a reader has opened it; `None` once
/// `finished` says no reader will come.
async fn open_when_read(
    path: &Path,
    finished: &AtomicBool,
) -> std::result::Result<Option<File>, FeedError> {
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(path)
        {
            Ok(pipe) => {
                // Writes block from here on: the reader's pace is the stream's pace.
                nix::fcntl::fcntl(
                    &pipe,
                    nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
                )
                .map_err(|e| {
                    FeedError::input(Error::io("opening a pipe to pg_restore", e.into()))
                })?;
                return Ok(Some(pipe));
            }
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENXIO as i32) => {
                if finished.load(Ordering::SeqCst) {
                    return Ok(None);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                return Err(FeedError::input(Error::io(
                    format!("opening {}", path.display()),
                    e,
                )));
            }
        }
    }
}

/// Decodes `object` into `output` and checks its tallies against the manifest; on
/// any failure the error comes back with a handle that keeps `output` open.
async fn fetch_into(
    sink: &dyn Sink,
    chain: &CodecChain,
    identities: Option<&Identities>,
    object: &ObjectInfo,
    output: File,
    progress: Option<&Progress>,
) -> std::result::Result<u64, FeedError> {
    let kept = output.try_clone().ok();
    let body = match sink.get(&object.key).await {
        Ok(body) => body,
        Err(e) => {
            let error = if e.kind() == ErrorKind::NotFound {
                Error::integrity(format!(
                    "the dump object {} that the manifest lists is missing; the backup cannot be restored",
                    object.key
                ))
                .with_object(object.key.clone())
            } else {
                e
            };
            return Err(FeedError {
                error,
                output_side: false,
                pipe: kept,
            });
        }
    };
    let reader = SyncIoBridge::new(StreamReader::new(body.map_err(io::Error::from)));
    let (chain, identities, object, progress) = (
        chain.clone(),
        identities.cloned(),
        object.clone(),
        progress.cloned(),
    );
    tokio::task::spawn_blocking(move || {
        let failed = |error, output_side| FeedError {
            error,
            output_side,
            pipe: kept,
        };
        // No byte of the file reaches its pipe before its chunk is checked.
        let reader = object.checked_reader(reader);
        match chain.decode(reader, output, identities.as_ref(), progress.as_ref()) {
            Ok((_output, tallies)) => match object.check(&tallies) {
                Ok(()) => Ok(tallies.raw.bytes),
                Err(e) => Err(failed(e, false)),
            },
            Err(e @ PumpError::Output(_)) => Err(failed(e.into_error(), true)),
            Err(e) => Err(failed(e.into_error(), false)),
        }
    })
    .await
    .unwrap_or_else(|e| {
        Err(FeedError::input(Error::tool(format!(
            "the restore thread failed: {e}"
        ))))
    })
}

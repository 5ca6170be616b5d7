//! The dump side of a directory archive: every file pg_dump writes followed while it
//! grows, stored as its own object, its blocks punched out behind the reader, pg_dump
//! paused while it is too far ahead of the sink.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::ScopedJoinHandle;
use std::time::{Duration, Instant};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::Signal;

use super::dedup::ChunkStore;
use super::{is_table_of_contents, private_stage, share_of};
use crate::catalog::ObjectInfo;
use crate::codec::{CodecChain, Progress, Recipients, Tallies};
use crate::error::{Error, ErrorKind, Result};
use crate::pg::process::{ChildProgram, one_line};
use crate::scope::Scope;
use crate::sink::Sink;
use crate::sink::stream::Upload;

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
    /// The scope pg_dump and the uploads belong to.
    pub scope: Scope,
    /// Where data files go when the dump is deduplicated.
    pub dedup: Option<Arc<ChunkStore>>,
}

/// One file of the archive, stored.
#[derive(Clone, Debug)]
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
    let child = ChildProgram::spawn_group(cmd, program, &store.scope)?;
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
                        if let Some(part) = part {
                            stored
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push(part);
                        }
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

/// Streams one file of the archive into its object (or, deduplicated, its chunks:
/// then `None`, the file being listed by the chunk store) and deletes the file.
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
) -> Result<Option<StoredPart>> {
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
    let part_progress = progress.map(|p| share_of(p, total));
    if let Some(dedup) = &store.dedup
        && !is_table_of_contents(name)
    {
        dedup.store_file(name, reader, chain, recipients, part_progress.as_ref())?;
        let _ = std::fs::remove_file(path);
        return Ok(None);
    }
    let key = format!("{}{name}{}", store.prefix, store.suffix);
    let (writer, upload) = {
        let _entered = store.runtime.enter();
        Upload::start(store.sink.clone(), key.clone(), &store.scope)
    };
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
    Ok(Some(StoredPart {
        name: name.to_owned(),
        object: ObjectInfo::new(key, tallies),
    }))
}

//! Archive layouts: how a dump travels from the dump program into the sink, and from
//! the sink back into the restore program. A backup and a restore hand the layout the
//! program and the sink, and never look at which layout it is.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::catalog::chunks::ChunkedDump;
use crate::catalog::{BackupRef, Manifest, ObjectInfo};
use crate::codec::{CodecChain, Identities, Progress, Recipients, Tallies};
use crate::error::{Error, ErrorKind, Result};
use crate::scope::Scope;
use crate::sink::stream::Upload;
use crate::sink::{ByteStream, Sink};

/// How the dump and restore programs hand pgproof the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArchiveIo {
    /// The dump program writes the archive to stdout; the restore program reads it
    /// from stdin and applies it in one transaction.
    Pipe,
    /// The dump program writes files into the directory pgproof appends as
    /// `--file=DIR`; the restore program reads the directory appended as its last
    /// argument, possibly in several transactions.
    Directory,
}

/// Where a dump goes: the sink, the archive's key, and how its bytes are encoded.
#[derive(Clone)]
pub struct ArchiveTarget {
    /// The sink.
    pub sink: Arc<dyn Sink>,
    /// The backup being taken (a layout that shares objects between backups of one
    /// database keeps them by database).
    pub backup: BackupRef,
    /// The archive's key (a layout of several objects stores them under it).
    pub key: String,
    /// The codec chain every object goes through.
    pub chain: CodecChain,
    /// Who can decrypt it; `None` for an unencrypted backup.
    pub recipients: Option<Recipients>,
    /// Progress of the dump's raw bytes.
    pub progress: Option<Progress>,
    /// Where a layout that stages files on disk stages them (default: the temporary
    /// directory).
    pub stage_dir: Option<PathBuf>,
    /// The scope the programs and uploads belong to: cancelling it stops them.
    pub scope: Scope,
}

/// Where a restore reads from: the sink and the manifest listing the archive's
/// objects with their hashes.
#[derive(Clone, Copy)]
pub struct ArchiveSource<'a> {
    /// The sink.
    pub sink: &'a Arc<dyn Sink>,
    /// The backup's manifest: its dump object and parts, each with the hashes every
    /// byte is checked against before the restore program sees it.
    pub manifest: &'a Manifest,
    /// The codec chain to decode with.
    pub chain: &'a CodecChain,
    /// The age identities of an encrypted backup.
    pub identities: Option<&'a Identities>,
    /// Progress of the raw bytes fed.
    pub progress: Option<&'a Progress>,
    /// The scope the restore program belongs to: cancelling it kills the program.
    pub scope: &'a Scope,
}

/// The objects a finished dump stored: the one the manifest names first (the whole
/// archive, or its table of contents) and the rest.
#[derive(Debug)]
pub struct StoredArchive {
    /// The manifest's `object`.
    pub object: ObjectInfo,
    /// The manifest's `parts`.
    pub parts: Vec<ObjectInfo>,
    /// The manifest's `chunks` (a deduplicated archive's).
    pub chunks: Option<ChunkedDump>,
}

/// A dump under way: the dump program's thread, and what it has stored.
pub struct Storing {
    /// Ends when the dump program has ended and everything it wrote is stored (not
    /// yet committed).
    pub program: tokio::task::JoinHandle<Result<()>>,
    /// Commits or abandons what was stored.
    pub archive: Box<dyn StoringArchive>,
}

/// What a dump under way has stored so far.
#[async_trait]
pub trait StoringArchive: Send + Sync {
    /// Makes the dump program stop soon (another part of the backup failed).
    fn stop(&self);

    /// Called once the program's thread ended well: commits what it stored and
    /// returns the objects, or fails leaving none of them behind.
    async fn commit(self: Box<Self>) -> Result<StoredArchive>;

    /// Removes whatever was stored (aborts uploads, deletes objects); returns the
    /// error to report: the sink's own when the sink failed first, `cause` otherwise.
    async fn abort(self: Box<Self>, cause: Error) -> Error;
}

impl Reading {
    /// The kind of error a failure of the program is: reading the whole archive into
    /// a database of its own, the backup's fault ([`ErrorKind::Rejected`]); reading
    /// part of it, often into a database others shaped (an object there differs, a
    /// privilege is missing), the program's ([`ErrorKind::Tool`]), never a verdict.
    pub fn failure_kind(self) -> ErrorKind {
        match self {
            Reading::Whole => ErrorKind::Rejected,
            Reading::Part => ErrorKind::Tool,
        }
    }
}

/// How much of an archive the restore program reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reading {
    /// All of it: a program that stops early, or leaves an object unread, has
    /// rejected the backup.
    Whole,
    /// What it asks for (a listing of its table of contents, a restore of some of
    /// its entries): stopping early or leaving objects unread is no failure, and
    /// every byte it does read is still checked before it sees it.
    Part,
}

/// A stored archive opened for a restore: every object it needs exists.
#[async_trait]
pub trait OpenedArchive: Send {
    /// Runs `cmd` (the restore program, named `program`) and feeds it the archive,
    /// every byte checked against the manifest before the program sees it. Returns
    /// the raw bytes fed. A program that fails on sound input has rejected the
    /// backup ([`ErrorKind::Rejected`]); a damaged object is
    /// [`ErrorKind::Integrity`] and the program is killed before it sees its end.
    async fn feed(self: Box<Self>, cmd: Command, program: &str) -> Result<u64>;

    /// [`feed`](Self::feed) to a program reading only [`Reading::Part`] of the
    /// archive; the raw bytes fed are then a lower bound, or 0. A layout that cannot
    /// serve part of an archive keeps this default, which refuses.
    async fn feed_part(self: Box<Self>, cmd: Command, program: &str) -> Result<u64> {
        drop(cmd);
        Err(Error::config(format!(
            "this backup's archive layout cannot give {program} part of an archive; restore it whole"
        )))
    }
}

/// How an archive travels between the dump program, the sink and the restore program.
///
/// An implementation:
/// - MUST store every byte the dump program writes through the target's codec chain,
///   under keys at or below the target's key (or, shared between backups, as chunks
///   under [`layout::chunks`](crate::catalog::layout::chunks) of the database, listed
///   in a chunk list), and MUST report in [`StoredArchive`] each object's tallies as
///   stored, so that the manifest holds their hashes;
/// - MUST leave nothing it stored in the sink once [`StoringArchive::abort`] returns
///   (shared chunks that other backups stored stay), and MUST commit nothing that
///   [`StoringArchive::commit`] does not return;
/// - MUST, when restoring, check every byte against the manifest's hashes before the
///   restore program sees it (a damaged object kills the program: it must never
///   commit what it read), and fail [`open`](ArchiveLayout::open) with
///   [`ErrorKind::Integrity`] naming the object when one the manifest lists is
///   missing, before any database is touched;
/// - MUST keep memory bounded whatever the archive's size.
#[async_trait]
pub trait ArchiveLayout: Send + Sync + fmt::Debug {
    /// How the programs exchange the archive with pgproof; it also tells whether
    /// a restore is one transaction.
    fn io(&self) -> ArchiveIo;

    /// Starts the dump program `cmd` on a blocking thread and stores what it writes.
    fn store(&self, cmd: Command, target: ArchiveTarget) -> Storing;

    /// Opens the stored archive for a restore, failing before any database is
    /// touched when it is incomplete.
    async fn open(&self, source: ArchiveSource<'_>) -> Result<Box<dyn OpenedArchive>>;
}

/// One stream: the dump program's stdout is one object, which becomes the restore
/// program's stdin.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamLayout;

#[async_trait]
impl ArchiveLayout for StreamLayout {
    fn io(&self) -> ArchiveIo {
        ArchiveIo::Pipe
    }

    fn store(&self, cmd: Command, target: ArchiveTarget) -> Storing {
        let (writer, upload) =
            Upload::start(target.sink.clone(), target.key.clone(), &target.scope);
        let tallies = Arc::new(std::sync::Mutex::new(None));
        let program = {
            let tallies = tallies.clone();
            tokio::task::spawn_blocking(move || {
                let t = super::run::dump(
                    cmd,
                    &target.chain,
                    target.recipients.as_ref(),
                    writer,
                    target.progress.as_ref(),
                    &target.scope,
                )?;
                *lock(&tallies) = Some(t);
                Ok(())
            })
        };
        let archive = StreamStoring {
            upload,
            tallies,
            sink: target.sink,
            key: target.key,
        };
        Storing {
            program,
            archive: Box::new(archive),
        }
    }

    async fn open(&self, source: ArchiveSource<'_>) -> Result<Box<dyn OpenedArchive>> {
        let object = &source.manifest.object;
        let body = get_listed(&**source.sink, source.manifest, object).await?;
        Ok(Box::new(OpenedObject {
            reader: SyncIoBridge::new(StreamReader::new(body.map_err(io::Error::from))),
            chain: source.chain.clone(),
            identities: source.identities.cloned(),
            object: object.clone(),
            progress: source.progress.cloned(),
            scope: source.scope.clone(),
        }))
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct StreamStoring {
    upload: Upload,
    tallies: Arc<std::sync::Mutex<Option<Tallies>>>,
    sink: Arc<dyn Sink>,
    key: String,
}

#[async_trait]
impl StoringArchive for StreamStoring {
    fn stop(&self) {
        self.upload.stop_writer();
    }

    async fn commit(self: Box<Self>) -> Result<StoredArchive> {
        let Some(tallies) = lock(&self.tallies).take() else {
            return Err(self
                .upload
                .abort(Error::tool("the dump ended without its tallies"))
                .await);
        };
        let stored_bytes = self.upload.commit().await?;
        if stored_bytes != tallies.stored.bytes {
            return Err(Error::integrity(format!(
                "sink {} stored {stored_bytes} bytes for {} but {} were sent",
                self.sink.describe(),
                self.key,
                tallies.stored.bytes
            ))
            .with_object(self.key));
        }
        Ok(StoredArchive {
            object: ObjectInfo::new(self.key, tallies),
            parts: Vec::new(),
            chunks: None,
        })
    }

    async fn abort(self: Box<Self>, cause: Error) -> Error {
        self.upload.abort(cause).await
    }
}

/// One stored object opened for a restore: `reader` yields its stored bytes.
pub(crate) struct OpenedObject<R> {
    pub reader: R,
    pub chain: CodecChain,
    pub identities: Option<Identities>,
    pub object: ObjectInfo,
    pub progress: Option<Progress>,
    pub scope: Scope,
}

#[async_trait]
impl<R: io::Read + Send + 'static> OpenedArchive for OpenedObject<R> {
    async fn feed(self: Box<Self>, cmd: Command, program: &str) -> Result<u64> {
        self.feed_reading(cmd, program, Reading::Whole).await
    }

    async fn feed_part(self: Box<Self>, cmd: Command, program: &str) -> Result<u64> {
        self.feed_reading(cmd, program, Reading::Part).await
    }
}

impl<R: io::Read + Send + 'static> OpenedObject<R> {
    async fn feed_reading(
        self: Box<Self>,
        cmd: Command,
        program: &str,
        reading: Reading,
    ) -> Result<u64> {
        let this = *self;
        let program = program.to_owned();
        tokio::task::spawn_blocking(move || {
            super::run::restore(
                cmd,
                &program,
                &this.chain,
                this.identities.as_ref(),
                this.reader,
                &this.object,
                this.progress.as_ref(),
                &this.scope,
                reading,
            )
        })
        .await
        .unwrap_or_else(|e| Err(Error::tool(format!("the restore thread failed: {e}"))))
    }
}

/// Opens `object`, one the manifest lists: a missing one is the backup's fault
/// (Integrity), named.
pub(crate) async fn get_listed(
    sink: &dyn Sink,
    manifest: &Manifest,
    object: &ObjectInfo,
) -> Result<ByteStream> {
    sink.get(&object.key).await.map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            Error::integrity(format!(
                "the object {} that the manifest of {} lists is missing from {}; the backup cannot be restored",
                object.key,
                manifest.backup_id,
                sink.describe()
            ))
            .with_object(object.key.clone())
        } else {
            e
        }
    })
}

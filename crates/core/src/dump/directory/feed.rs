//! The restore side of a directory archive: pg_restore reads a directory of the
//! tables of contents as files and every data file as a named pipe, each fed from its
//! object when pg_restore opens it.

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::TryStreamExt;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::{OpenedDirectory, is_table_of_contents, part_name, private_stage, share_of};
use crate::catalog::ObjectInfo;
use crate::catalog::chunks::{ChunkRef, ChunkedFile};
use crate::codec::{CodecChain, Identities, Progress, PumpError};
use crate::dump::archive::Reading;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::process::ChildProgram;
use crate::sink::{Sink, SinkExt};
use sha2::{Digest, Sha256};

/// Runs `cmd` (a directory-format restore program; the archive directory is appended)
/// on a directory holding the tables of contents as files and every other file of
/// the archive as a named pipe, and streams each object into its pipe once the
/// program opens it. Each object's tallies are checked before its pipe closes; a
/// damaged object kills the program before it sees the end of that file. A program
/// that fails on sound objects, or succeeds without reading one, has rejected the
/// backup ([`ErrorKind::Rejected`]), unless it reads only [`Reading::Part`] (then
/// [`Reading::failure_kind`]).
pub(super) async fn restore(
    mut cmd: Command,
    program: &str,
    archive: &OpenedDirectory,
    reading: Reading,
) -> Result<u64> {
    let OpenedDirectory {
        sink,
        database,
        chunked,
        chain,
        identities,
        objects,
        progress,
        scope,
    } = archive;
    let (identities, progress) = (identities.as_ref(), progress.as_ref());
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
            raw_bytes += fetch_into(&**sink, chain, identities, object, file, None)
                .await
                .map_err(|e| e.error)?;
        } else {
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).map_err(|e| {
                Error::io(format!("creating the pipe {}", path.display()), e.into())
            })?;
            pipes.push((name.to_owned(), path, Source::Object(object.clone())));
        }
    }
    for file in chunked {
        // The chunk list was checked: a data file's name, each once.
        let path = stage.path().join(&file.name);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU)
            .map_err(|e| Error::io(format!("creating the pipe {}", path.display()), e.into()))?;
        pipes.push((file.name.clone(), path, Source::Chunks(file.clone())));
    }

    cmd.arg(stage.path());
    let child = ChildProgram::spawn_group(cmd, program, scope)?;
    let finished = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let mut feeders = futures::stream::FuturesUnordered::new();
    for (name, path, source) in pipes {
        let (sink, chain, identities) = (sink.clone(), chain.clone(), identities.cloned());
        let finished = finished.clone();
        let progress = progress.map(|p| share_of(p, &total));
        let database = database.clone();
        feeders.push(tokio::spawn(async move {
            let Some(pipe) = open_when_read(&path, &finished).await? else {
                return Ok(Fed::Unread(name));
            };
            match source {
                Source::Object(object) => fetch_into(
                    &*sink,
                    &chain,
                    identities.as_ref(),
                    &object,
                    pipe,
                    progress.as_ref(),
                )
                .await
                .map(Fed::Bytes),
                Source::Chunks(file) => {
                    let from = Chunks {
                        sink: &sink,
                        chain: &chain,
                        identities: identities.as_ref(),
                        database: &database,
                    };
                    from.feed(&file, pipe, progress.as_ref())
                        .await
                        .map(Fed::Bytes)
                }
            }
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
    tokio::task::spawn_blocking(move || child.wait(reading.failure_kind()))
        .await
        .unwrap_or_else(|e| Err(Error::tool(format!("waiting for the restore failed: {e}"))))?;
    if let Some(e) = broken_pipe {
        return Err(e);
    }
    if !unread.is_empty() && reading == Reading::Whole {
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

/// Where a pipe's bytes come from.
enum Source {
    /// One object of the backup.
    Object(ObjectInfo),
    /// Chunks shared with other backups.
    Chunks(ChunkedFile),
}

/// Chunks fetched ahead of the one being fed, per file: each at most four times the
/// average chunk, so a few MiB per pipe.
const CHUNKS_AHEAD: usize = 3;

/// The chunks of one database, decoded with the backup's codec chain.
struct Chunks<'a> {
    sink: &'a Arc<dyn Sink>,
    chain: &'a CodecChain,
    identities: Option<&'a Identities>,
    database: &'a str,
}

impl Chunks<'_> {
    /// Feeds `file` into `output` chunk by chunk, each checked against the chunk
    /// list's size and sha256 before a byte of it is decoded, the whole file against
    /// its size and sha256 before the pipe closes; on any failure the error comes back
    /// with a handle that keeps `output` open.
    async fn feed(
        &self,
        file: &ChunkedFile,
        output: File,
        progress: Option<&Progress>,
    ) -> std::result::Result<u64, FeedError> {
        use futures::StreamExt;
        let kept = output.try_clone().ok();
        let failed = |error: Error, output_side: bool, kept: &Option<File>| FeedError {
            error,
            output_side,
            pipe: kept.as_ref().and_then(|f| f.try_clone().ok()),
        };
        let mut fetched = futures::stream::iter(file.chunks.iter().cloned())
            .map(|chunk| {
                let key = chunk.key(self.database);
                let sink = self.sink.clone();
                async move {
                    let limit = usize::try_from(chunk.stored_bytes).unwrap_or(usize::MAX);
                    let got = sink.get_bytes(&key, limit.saturating_add(1)).await;
                    (chunk, key, got)
                }
            })
            .buffered(CHUNKS_AHEAD);
        let mut state = Some((output, Sha256::new(), 0u64));
        while let Some((chunk, key, got)) = fetched.next().await {
            let bytes = match got {
                Ok(bytes) => bytes,
                Err(e) => {
                    let e = if e.kind() == ErrorKind::NotFound {
                        Error::integrity(format!(
                            "the chunk {key} that {} of the backup uses is missing; the backup cannot be restored",
                            file.name
                        ))
                        .with_object(key)
                    } else {
                        e
                    };
                    return Err(failed(e, false, &kept));
                }
            };
            let sha256 = crate::codec::sha256_hex(&bytes);
            if bytes.len() as u64 != chunk.stored_bytes || sha256 != chunk.stored_sha256 {
                let e = Error::integrity(format!(
                    "the chunk {key} (in {}) does not match the chunk list: {} bytes sha256 {sha256} found, {} bytes sha256 {} listed; the backup was altered or damaged",
                    file.name,
                    bytes.len(),
                    chunk.stored_bytes,
                    chunk.stored_sha256
                ))
                .with_object(key);
                return Err(failed(e, false, &kept));
            }
            let (chain, identities) = (self.chain.clone(), self.identities.cloned());
            let Some((output, whole, written)) = state.take() else {
                break;
            };
            let step = tokio::task::spawn_blocking(move || {
                decode_chunk(
                    &chain,
                    identities.as_ref(),
                    &bytes,
                    &chunk,
                    &key,
                    output,
                    whole,
                    written,
                )
            })
            .await
            .unwrap_or_else(|e| {
                Err((
                    Error::tool(format!("the restore thread failed: {e}")),
                    false,
                ))
            });
            match step {
                Ok(next) => {
                    if let Some(progress) = progress {
                        progress(next.2);
                    }
                    state = Some(next);
                }
                Err((e, output_side)) => return Err(failed(e, output_side, &kept)),
            }
        }
        let Some((_output, whole, written)) = state else {
            return Err(failed(
                Error::tool("a chunk feeder lost its pipe"),
                false,
                &kept,
            ));
        };
        let sha256 = hex::encode(whole.finalize());
        if written != file.raw_bytes || sha256 != file.raw_sha256 {
            let e = Error::integrity(format!(
                "{} of the backup does not match its chunk list once put together: {written} bytes sha256 {sha256}, {} bytes sha256 {} listed; the backup was altered or damaged",
                file.name, file.raw_bytes, file.raw_sha256
            ))
            .with_object(file.name.clone());
            return Err(failed(e, false, &kept));
        }
        Ok(written)
    }
}

/// Decodes one checked chunk and writes it to `output`; returns the pipe, the file's
/// hash and bytes so far, or the error and whether writing failed.
#[allow(clippy::too_many_arguments)]
fn decode_chunk(
    chain: &CodecChain,
    identities: Option<&Identities>,
    stored: &[u8],
    chunk: &ChunkRef,
    key: &str,
    mut output: File,
    mut whole: Sha256,
    written: u64,
) -> std::result::Result<(File, Sha256, u64), (Error, bool)> {
    use std::io::Write;
    let capacity = usize::try_from(chunk.raw_bytes).unwrap_or(0);
    let (plain, _) = chain
        .decode(stored, Vec::with_capacity(capacity), identities, None)
        .map_err(|e| (e.into_error(), false))?;
    if plain.len() as u64 != chunk.raw_bytes {
        return Err((
            Error::integrity(format!(
                "the chunk {key} decodes to {} bytes, not the {} listed",
                plain.len(),
                chunk.raw_bytes
            ))
            .with_object(key),
            false,
        ));
    }
    whole.update(&plain);
    output
        .write_all(&plain)
        .map_err(|e| (Error::io("writing to pg_restore", e), true))?;
    Ok((output, whole, written + plain.len() as u64))
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

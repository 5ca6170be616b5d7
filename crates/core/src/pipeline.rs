//! The streaming backup and restore pipelines.
//!
//! Backup: `pg_dump --snapshot` → sha256(raw) → [gzip] → [age] → sha256(stored) →
//! bounded channel → [`Sink::put`]; then the manifest, create-only, last.
//! Restore: [`Sink::get`] → sha256(stored) → [age] → [gunzip] → sha256(raw) →
//! pg_restore/psql in one transaction, into a database pgproof created itself.
//!
//! The byte work runs on a blocking thread (pg_dump's pipe, flate2 and age are
//! synchronous); the sink runs on the async runtime; a channel of at most
//! [`CHANNEL_CHUNKS`] chunks of [`CHUNK_SIZE`] bytes joins them, which bounds memory.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStderr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use futures::StreamExt;
use futures::TryStreamExt;
use jiff::Timestamp;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::cluster::one_line;
use crate::crypto::{Identities, Recipients};
use crate::dump::{Dumper, Format};
use crate::error::{Error, Result};
use crate::hashing::{HashingReader, HashingWriter, Tally};
use crate::manifest::{
    self, EncryptionInfo, Manifest, ObjectInfo, PreviousManifest, SourceInfo, ToolInfo,
};
use crate::pg::{ConnParams, PgTools, ServerInfo, SnapshotSession, db_err, quote_ident};
use crate::sink::{ByteStream, Sink};

/// Size of the chunks handed to a sink.
pub const CHUNK_SIZE: usize = 1 << 20;
/// Chunks that may wait between the dump and the sink.
pub const CHANNEL_CHUNKS: usize = 4;
/// Read size from pg_dump and towards pg_restore.
const PIPE_BUFFER: usize = 256 << 10;
/// How much of a child's stderr is kept for the error message.
const STDERR_KEEP: usize = 16 << 10;

/// Called with the running total of dump bytes processed, for progress display.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// What to back up and how.
pub struct BackupRequest {
    /// Connection to the database to dump.
    pub source: ConnParams,
    /// Archive format.
    pub format: Format,
    /// gzip level (plain format only).
    pub gzip_level: u32,
    /// Recipients; `None` stores the dump unencrypted (must be an explicit choice).
    pub recipients: Option<Recipients>,
    /// `source.pg_bin_dir`.
    pub pg_bin_dir: Option<PathBuf>,
    /// How long to wait for a table lock before failing.
    pub lock_wait: Duration,
    /// Progress callback.
    pub progress: Option<Progress>,
}

/// A committed backup.
#[derive(Clone, Debug)]
pub struct BackupOutcome {
    /// Its manifest, as stored.
    pub manifest: Manifest,
}

/// Backs up one database: dumps it in an exported snapshot, streams it through the
/// codecs into `sink`, then commits the manifest. On any failure nothing is committed
/// under a manifest and the dump object is aborted.
pub async fn backup(sink: Arc<dyn Sink>, req: BackupRequest) -> Result<BackupOutcome> {
    let database = req.source.dbname().to_owned();
    manifest::check_database_name(&database)?;
    let started_at = Timestamp::now();
    let clock = Instant::now();

    let session = SnapshotSession::open(&req.source, req.lock_wait).await?;
    let plan = session.prepare_fingerprint().await?;
    let tools = PgTools::find(
        req.pg_bin_dir.as_deref(),
        session.server().major(),
        &["pg_dump"],
    )?;

    let backup_id = manifest::new_backup_id(started_at);
    let object_key = format!(
        "{database}/{backup_id}/{}",
        req.format.object_name(req.recipients.is_some())
    );
    tracing::info!(
        database = %database,
        backup_id = %backup_id,
        pg_dump = %tools.version(),
        server = %session.server().version,
        sink = %sink.describe(),
        "backup started"
    );

    let server = session.server().clone();
    let encoding = session.encoding().to_owned();
    let snapshot_id = session.snapshot_id().to_owned();
    let dumper = req.format.dumper();
    let child = dumper.spawn_dump(&tools, &req.source, session.snapshot_id(), req.lock_wait)?;

    let (tx, rx) = mpsc::channel::<Result<Bytes>>(CHANNEL_CHUNKS);
    let upload = AbortOnDrop(tokio::spawn({
        let sink = sink.clone();
        let key = object_key.clone();
        let body: ByteStream = receiver_stream(rx);
        async move { sink.put(&key, body).await }
    }));

    let sink_gone = Arc::new(AtomicBool::new(false));
    let abort = Arc::new(AtomicBool::new(false));
    let job = {
        let writer = ChunkSender::new(tx.clone(), sink_gone.clone(), abort.clone());
        let recipients = req.recipients.clone();
        let format = req.format;
        let level = req.gzip_level;
        let progress = req.progress.clone();
        tokio::task::spawn_blocking(move || {
            run_dump(child, writer, format, level, recipients.as_ref(), progress)
        })
    };
    // The fingerprint runs on the snapshot's own connection while pg_dump streams on
    // another core: same snapshot, no table data sent to the client.
    let cancel = session.client().cancel_token();
    // Its own duration, not the wait for pg_dump: that is the cost the bench reports.
    let fingerprint_ms = std::sync::atomic::AtomicU64::new(0);
    let mut job = job;
    let outcome = {
        let fingerprint = async {
            let clock = Instant::now();
            let result = session.fingerprint(plan).await;
            fingerprint_ms.store(clock.elapsed().as_millis() as u64, Ordering::Relaxed);
            result
        };
        tokio::pin!(fingerprint);
        tokio::select! {
        joined = &mut job => {
            let dumped = flatten_join(joined, "dump");
            if dumped.is_err() {
                // pg_dump is gone; a fingerprint query waiting on a lock would wait forever.
                let _ = cancel.cancel_query(tokio_postgres::NoTls).await;
            }
            let fingerprinted = fingerprint.await;
            dumped.and_then(|stats| fingerprinted.map(|fp| (stats, fp)))
        }
        fingerprinted = &mut fingerprint => {
            // A failed fingerprint ends the backup: stop pg_dump at its next chunk
            // rather than upload a dump that will be thrown away.
            let fp = fingerprinted;
            if fp.is_err() {
                abort.store(true, Ordering::SeqCst);
            }
            let dumped = flatten_join(job.await, "dump");
            fp.and_then(|fp| dumped.map(|stats| (stats, fp)))
        }
        }
    };
    let fingerprint_ms = fingerprint_ms.into_inner();
    // The snapshot must outlive pg_dump; it is released only now.
    let closed = session.close().await;

    let (stats, fingerprint) = match outcome.and_then(|s| closed.map(|()| s)) {
        Ok(done) => {
            drop(tx);
            done
        }
        Err(e) => {
            // An Err item tells the sink to abort instead of committing what it has.
            let _ = tx
                .send(Err(Error::Tool("backup aborted upstream".into())))
                .await;
            drop(tx);
            let uploaded = upload.join().await;
            return Err(match uploaded {
                Err(sink_err) if sink_gone.load(Ordering::SeqCst) => sink_err,
                _ => e,
            });
        }
    };
    let stored_bytes = upload.join().await?;
    if stored_bytes != stats.stored.bytes {
        return Err(Error::Integrity(format!(
            "sink {} stored {stored_bytes} bytes for {object_key} but {} were sent",
            sink.describe(),
            stats.stored.bytes
        )));
    }

    let finished_at = Timestamp::now();
    // Linked at commit time, so backups that overlap chain in the order they commit.
    let previous = previous_manifest(&*sink, &database).await?;
    let mut codecs = Vec::new();
    if req.format.gzipped() {
        codecs.push("gzip".to_owned());
    }
    if req.recipients.is_some() {
        codecs.push("age".to_owned());
    }
    let manifest = Manifest {
        manifest_version: manifest::MANIFEST_VERSION,
        backup_id,
        database,
        tool: ToolInfo::current(),
        source: SourceInfo {
            server_version: server.version,
            server_version_num: server.version_num,
            encoding,
        },
        pg_dump_version: tools.version().to_owned(),
        format: req.format,
        codecs,
        encryption: req.recipients.as_ref().map(|r| EncryptionInfo {
            scheme: "age-x25519".into(),
            recipients: r.public_keys(),
        }),
        object: ObjectInfo {
            key: object_key,
            raw_bytes: stats.raw.bytes,
            raw_sha256: stats.raw.sha256,
            stored_bytes: stats.stored.bytes,
            stored_sha256: stats.stored.sha256,
        },
        snapshot_id,
        started_at,
        finished_at,
        duration_ms: clock.elapsed().as_millis() as u64,
        fingerprint_ms,
        fingerprint: Some(fingerprint),
        previous,
    };
    crate::sink::put_bytes(&*sink, &manifest.key(), manifest.to_bytes()?).await?;
    tracing::info!(
        backup_id = %manifest.backup_id,
        raw_bytes = manifest.object.raw_bytes,
        stored_bytes = manifest.object.stored_bytes,
        seconds = clock.elapsed().as_secs_f64(),
        "backup committed"
    );
    Ok(BackupOutcome { manifest })
}

/// The newest committed manifest of `database`, as the link for the next one. Its bytes
/// are hashed as stored, not parsed: a damaged predecessor must not stop new backups,
/// and its hash is what makes the damage visible later.
async fn previous_manifest(sink: &dyn Sink, database: &str) -> Result<Option<PreviousManifest>> {
    let Some(last) = manifest::list_backups(sink, Some(database)).await?.pop() else {
        return Ok(None);
    };
    let bytes =
        crate::sink::get_bytes(sink, &last.manifest_key(), manifest::MANIFEST_LIMIT).await?;
    Ok(Some(PreviousManifest {
        backup_id: last.backup_id,
        manifest_sha256: crate::hashing::sha256_hex(&bytes),
    }))
}

fn flatten_join<T>(
    joined: std::result::Result<Result<T>, tokio::task::JoinError>,
    what: &str,
) -> Result<T> {
    joined.unwrap_or_else(|e| Err(Error::Tool(format!("the {what} thread failed: {e}"))))
}

fn receiver_stream(rx: mpsc::Receiver<Result<Bytes>>) -> ByteStream {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed()
}

/// Aborts a spawned task if the pipeline is dropped before joining it, so a cancelled
/// backup does not keep uploading.
struct AbortOnDrop<T>(tokio::task::JoinHandle<Result<T>>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T> {
        let handle = &mut self.0;
        match handle.await {
            Ok(result) => result,
            Err(e) => Err(Error::Tool(format!("the upload task failed: {e}"))),
        }
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sizes and hashes on both sides of the codecs.
struct DumpStats {
    raw: Tally,
    stored: Tally,
}

/// Gathers written bytes into [`CHUNK_SIZE`] chunks and sends them to the sink,
/// blocking while the channel is full: that back-pressure bounds memory.
struct ChunkSender {
    tx: mpsc::Sender<Result<Bytes>>,
    buf: BytesMut,
    sink_gone: Arc<AtomicBool>,
    abort: Arc<AtomicBool>,
}

impl ChunkSender {
    fn new(
        tx: mpsc::Sender<Result<Bytes>>,
        sink_gone: Arc<AtomicBool>,
        abort: Arc<AtomicBool>,
    ) -> Self {
        Self {
            tx,
            buf: BytesMut::with_capacity(CHUNK_SIZE),
            sink_gone,
            abort,
        }
    }

    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.abort.load(Ordering::SeqCst) {
            return Err(io::Error::other("backup aborted"));
        }
        let chunk = self.buf.split().freeze();
        self.buf.reserve(CHUNK_SIZE);
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            self.sink_gone.store(true, Ordering::SeqCst);
            io::Error::new(io::ErrorKind::BrokenPipe, "the sink stopped accepting data")
        })
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK_SIZE - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK_SIZE {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffered()
    }
}

/// The optional gzip stage.
enum Compress<W: Write> {
    Off(W),
    Gzip(Box<GzEncoder<W>>),
}

impl<W: Write> Compress<W> {
    fn new(inner: W, gzip_level: Option<u32>) -> Self {
        match gzip_level {
            Some(level) => Compress::Gzip(Box::new(GzEncoder::new(inner, Compression::new(level)))),
            None => Compress::Off(inner),
        }
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Compress::Off(w) => Ok(w),
            Compress::Gzip(gz) => gz.finish(),
        }
    }
}

impl<W: Write> Write for Compress<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Compress::Off(w) => w.write(data),
            Compress::Gzip(gz) => gz.write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compress::Off(w) => w.flush(),
            Compress::Gzip(gz) => gz.flush(),
        }
    }
}

/// The optional age stage.
enum Encrypt<W: Write> {
    Off(W),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Encrypt<W> {
    fn finish(self) -> io::Result<W> {
        match self {
            Encrypt::Off(w) => Ok(w),
            Encrypt::Age(a) => a.finish(),
        }
    }
}

impl<W: Write> Write for Encrypt<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Encrypt::Off(w) => w.write(data),
            Encrypt::Age(a) => a.write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encrypt::Off(w) => w.flush(),
            Encrypt::Age(a) => a.flush(),
        }
    }
}

/// Keeps the tail of a child's stderr on a thread of its own, so a chatty child can
/// never block on a full pipe.
fn collect_stderr(stderr: Option<ChildStderr>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(mut err) = stderr {
            let mut buf = [0u8; 8192];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > STDERR_KEEP {
                    kept.drain(..kept.len() - STDERR_KEEP);
                }
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

fn child_failure(program: &str, status: std::process::ExitStatus, stderr: &str) -> Error {
    let said = one_line(stderr);
    let said = if said.is_empty() {
        "it printed nothing".to_owned()
    } else {
        said
    };
    Error::Tool(format!("{program} failed ({status}): {said}"))
}

fn run_dump(
    mut child: Child,
    sender: ChunkSender,
    format: Format,
    gzip_level: u32,
    recipients: Option<&Recipients>,
    progress: Option<Progress>,
) -> Result<DumpStats> {
    let stderr = collect_stderr(child.stderr.take());
    let streamed = match child.stdout.take() {
        Some(stdout) => stream_dump(stdout, sender, format, gzip_level, recipients, progress),
        None => Err(Error::Tool("pg_dump's output was not piped".into())),
    };
    if streamed.is_err() {
        let _ = child.kill();
    }
    let status = child
        .wait()
        .map_err(|e| Error::io("waiting for pg_dump", e));
    let said = stderr.join().unwrap_or_default();
    let stats = streamed?;
    let status = status?;
    if !status.success() {
        return Err(child_failure("pg_dump", status, &said));
    }
    if !said.trim().is_empty() {
        tracing::warn!(stderr = %one_line(&said), "pg_dump succeeded with messages");
    }
    Ok(stats)
}

fn stream_dump(
    mut stdout: impl Read,
    sender: ChunkSender,
    format: Format,
    gzip_level: u32,
    recipients: Option<&Recipients>,
    progress: Option<Progress>,
) -> Result<DumpStats> {
    let write_err = |e: io::Error| Error::io("streaming the dump to the sink", e);
    let stored = HashingWriter::new(sender);
    let encrypted = match recipients {
        Some(r) => Encrypt::Age(r.encrypt(stored)?),
        None => Encrypt::Off(stored),
    };
    let compressed = Compress::new(encrypted, format.gzipped().then_some(gzip_level));
    let mut raw = HashingWriter::new(compressed);

    let mut buf = vec![0u8; PIPE_BUFFER];
    let mut total = 0u64;
    loop {
        let n = match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("reading pg_dump's output", e)),
        };
        raw.write_all(&buf[..n]).map_err(write_err)?;
        total += n as u64;
        if let Some(p) = &progress {
            p(total);
        }
    }
    let (compressed, raw) = raw.finish();
    let encrypted = compressed.finish().map_err(write_err)?;
    let stored = encrypted.finish().map_err(write_err)?;
    let (mut sender, stored) = stored.finish();
    sender.flush().map_err(write_err)?;
    Ok(DumpStats { raw, stored })
}

/// Where and how to restore.
pub struct RestoreRequest {
    /// The database to restore into (created by pgproof unless it exists and is empty).
    pub target: ConnParams,
    /// Identities for encrypted backups.
    pub identities: Option<Identities>,
    /// Drop and recreate the target database if it exists.
    pub clean: bool,
    /// `source.pg_bin_dir`.
    pub pg_bin_dir: Option<PathBuf>,
    /// Progress callback (dump bytes restored so far).
    pub progress: Option<Progress>,
}

/// A finished restore.
#[derive(Clone, Debug)]
pub struct RestoreOutcome {
    /// The database restored into.
    pub database: String,
    /// Whether pgproof created it.
    pub created: bool,
    /// Dump bytes fed to the restore program.
    pub raw_bytes: u64,
    /// Wall time of the restore (the recovery time actually measured).
    pub duration: Duration,
}

/// Restores the backup described by `manifest` into `req.target`. Hashes and sizes are
/// checked against the manifest while streaming; on any failure the transaction is
/// rolled back and a database pgproof created is dropped again.
pub async fn restore(
    sink: Arc<dyn Sink>,
    manifest: &Manifest,
    req: RestoreRequest,
) -> Result<RestoreOutcome> {
    let clock = Instant::now();
    if manifest.encryption.is_some() && req.identities.is_none() {
        return Err(Error::Config(format!(
            "backup {} is encrypted: set encryption.identity_file (or --identity) to the age key for {}",
            manifest.backup_id,
            manifest
                .encryption
                .as_ref()
                .map(|e| e.recipients.join(", "))
                .unwrap_or_default()
        )));
    }
    let database = req.target.dbname().to_owned();
    let dumper = manifest.format.dumper();
    // Open the object first: a missing object must not cost a database.
    let body = sink.get(&manifest.object.key).await?;

    let admin = admin_connection(&req.target).await?;
    let server = ServerInfo::query(&admin).await?;
    let min_major = server.major().max(leading_major(&manifest.pg_dump_version));
    let tools = PgTools::find(
        req.pg_bin_dir.as_deref(),
        min_major,
        &[dumper.restore_program()],
    )?;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await
        .map_err(db_err("looking up the target database"))?
        .is_some();
    // --clean restores beside the old database and swaps only on success: a damaged
    // backup or a wrong key must not cost the database it was meant to replace.
    let replace = exists && req.clean;
    let load = if replace {
        req.target.with_dbname(&format!(
            "pgproof_restore_{}",
            &crate::hashing::sha256_hex(database.as_bytes())[..12]
        ))
    } else {
        req.target.clone()
    };
    let created = prepare_target(&admin, &load, &manifest.source.encoding, replace).await?;

    let mut result = feed_restore(body, &*dumper, &tools, manifest, &load, &req).await;
    if replace && result.is_ok() {
        let swapped = async {
            drop_database(&admin, &server, &database).await?;
            admin
                .batch_execute(&format!(
                    "ALTER DATABASE {} RENAME TO {}",
                    quote_ident(load.dbname()),
                    quote_ident(&database)
                ))
                .await
                .map_err(db_err("renaming the restored database into place"))
        };
        if let Err(e) = swapped.await {
            result = Err(e);
        }
    }
    match result {
        Ok(raw_bytes) => Ok(RestoreOutcome {
            database,
            created: created || replace,
            raw_bytes,
            duration: clock.elapsed(),
        }),
        Err(e) => {
            if created && let Err(drop_err) = drop_database(&admin, &server, load.dbname()).await {
                tracing::error!(database = %load.dbname(), error = %drop_err, "could not drop the half-restored database; drop it by hand");
            }
            Err(e)
        }
    }
}

async fn feed_restore(
    body: ByteStream,
    dumper: &dyn Dumper,
    tools: &PgTools,
    manifest: &Manifest,
    target: &ConnParams,
    req: &RestoreRequest,
) -> Result<u64> {
    let child = dumper.spawn_restore(tools, target)?;
    let program = dumper.restore_program();
    let reader = SyncIoBridge::new(StreamReader::new(body.map_err(io::Error::from)));
    let manifest = manifest.clone();
    let identities = req.identities.clone();
    let progress = req.progress.clone();
    match tokio::task::spawn_blocking(move || {
        run_restore(
            child,
            program,
            reader,
            &manifest,
            identities.as_ref(),
            progress,
        )
    })
    .await
    {
        Ok(result) => result,
        Err(e) => Err(Error::Tool(format!("the restore thread failed: {e}"))),
    }
}

fn run_restore(
    mut child: Child,
    program: &str,
    object: impl Read,
    manifest: &Manifest,
    identities: Option<&Identities>,
    progress: Option<Progress>,
) -> Result<u64> {
    let stderr = collect_stderr(child.stderr.take());
    let fed = match child.stdin.take() {
        Some(stdin) => feed(stdin, object, manifest, identities, progress),
        None => Err(FeedError::Failed(Error::Tool(format!(
            "{program}'s input was not piped"
        )))),
    };
    match fed {
        Ok((stdin, raw_bytes)) => {
            drop(stdin); // end of input: the restore program commits now
            let status = child
                .wait()
                .map_err(|e| Error::io(format!("waiting for {program}"), e))?;
            let said = stderr.join().unwrap_or_default();
            if status.success() {
                Ok(raw_bytes)
            } else {
                Err(child_failure(program, status, &said))
            }
        }
        Err(FeedError::ChildGone) => {
            let status = child
                .wait()
                .map_err(|e| Error::io(format!("waiting for {program}"), e))?;
            let said = stderr.join().unwrap_or_default();
            Err(child_failure(program, status, &said))
        }
        Err(FeedError::Failed(e)) => {
            // Killed before its input ended, the program never commits.
            let _ = child.kill();
            let _ = child.wait();
            let _ = stderr.join();
            Err(e)
        }
    }
}

enum FeedError {
    /// The restore program exited early; its stderr says why.
    ChildGone,
    Failed(Error),
}

impl From<Error> for FeedError {
    fn from(e: Error) -> Self {
        FeedError::Failed(e)
    }
}

fn feed<W: Write>(
    mut stdin: W,
    object: impl Read,
    manifest: &Manifest,
    identities: Option<&Identities>,
    progress: Option<Progress>,
) -> std::result::Result<(W, u64), FeedError> {
    let key = &manifest.object.key;
    let read_err = |e: io::Error| match Error::unwrap_io(e) {
        Ok(inner) => inner,
        Err(e) => Error::Integrity(format!(
            "backup object {key} is corrupted or truncated ({e}); it cannot be restored"
        )),
    };
    let mut stored = HashingReader::new(object);
    let raw_tally = {
        let decrypted: Box<dyn Read + '_> = match identities {
            Some(ids) => Box::new(ids.decrypt(&mut stored)?),
            None => Box::new(&mut stored),
        };
        let decompressed: Box<dyn Read + '_> = if manifest.format.gzipped() {
            Box::new(GzDecoder::new(decrypted))
        } else {
            decrypted
        };
        let mut raw = HashingReader::new(decompressed);
        let mut buf = vec![0u8; PIPE_BUFFER];
        let mut total = 0u64;
        loop {
            let n = match raw.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_err(e).into()),
            };
            if let Err(e) = stdin.write_all(&buf[..n]) {
                return Err(if e.kind() == io::ErrorKind::BrokenPipe {
                    FeedError::ChildGone
                } else {
                    Error::io("writing to the restore program", e).into()
                });
            }
            total += n as u64;
            if let Some(p) = &progress {
                p(total);
            }
        }
        raw.finish()
    };
    // Anything after the end of the payload is tampering too: hash it in.
    io::copy(&mut stored, &mut io::sink()).map_err(read_err)?;
    let stored_tally = stored.finish();
    check_tally(
        "stored object",
        key,
        &stored_tally,
        manifest.object.stored_bytes,
        &manifest.object.stored_sha256,
    )?;
    check_tally(
        "dump",
        key,
        &raw_tally,
        manifest.object.raw_bytes,
        &manifest.object.raw_sha256,
    )?;
    stdin
        .flush()
        .map_err(|e| Error::io("writing to the restore program", e))?;
    Ok((stdin, raw_tally.bytes))
}

fn check_tally(what: &str, key: &str, got: &Tally, bytes: u64, sha256: &str) -> Result<()> {
    if got.bytes != bytes || got.sha256 != sha256 {
        return Err(Error::Integrity(format!(
            "{what} of {key} does not match its manifest: {} bytes sha256 {} found, {bytes} bytes sha256 {sha256} recorded; the backup was altered or damaged",
            got.bytes, got.sha256
        )));
    }
    Ok(())
}

fn leading_major(version: &str) -> u32 {
    version
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or(0)
}

/// A connection to the target's server through a database other than the target.
async fn admin_connection(target: &ConnParams) -> Result<tokio_postgres::Client> {
    let admin_db = if target.dbname() == "postgres" {
        "template1"
    } else {
        "postgres"
    };
    target.with_dbname(admin_db).connect().await
}

/// Makes sure the target database exists and is empty; returns whether pgproof created it.
async fn prepare_target(
    admin: &tokio_postgres::Client,
    target: &ConnParams,
    encoding: &str,
    clean: bool,
) -> Result<bool> {
    let database = target.dbname();
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await
        .map_err(db_err("looking up the target database"))?
        .is_some();
    if exists && !clean {
        let client = target.connect().await?;
        let objects: i64 = client
            .query_one(
                "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
                     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%') \
                 + (SELECT count(*) FROM pg_largeobject_metadata)",
                &[],
            )
            .await
            .map_err(db_err("checking whether the target database is empty"))?
            .get(0);
        if objects > 0 {
            return Err(Error::AlreadyExists(format!(
                "target database {database} already holds {objects} objects; restore into a new database name, or pass --clean to drop and recreate it"
            )));
        }
        return Ok(false);
    }
    if exists {
        let server = ServerInfo::query(admin).await?;
        drop_database(admin, &server, database).await?;
    }
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE template0 ENCODING '{}'",
            quote_ident(database),
            encoding.replace('\'', "")
        ))
        .await
        .map_err(db_err("creating the target database"))?;
    tracing::info!(database = %database, "created target database");
    Ok(true)
}

async fn drop_database(
    admin: &tokio_postgres::Client,
    server: &ServerInfo,
    database: &str,
) -> Result<()> {
    let force = if server.version_num >= 130000 {
        " WITH (FORCE)"
    } else {
        ""
    };
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {}{force}",
            quote_ident(database)
        ))
        .await
        .map_err(db_err("dropping the target database"))?;
    tracing::debug!(database = %database, "dropped database if it existed");
    Ok(())
}

/// Drops `target`'s database (used for scratch databases pgproof created).
pub async fn drop_target(target: &ConnParams) -> Result<()> {
    let admin = admin_connection(target).await?;
    let server = ServerInfo::query(&admin).await?;
    drop_database(&admin, &server, target.dbname()).await
}

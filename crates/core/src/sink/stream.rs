//! Bounded streaming of a byte stream into a [`Sink`]: a blocking writer on one side
//! (the codec pump), the sink's async `put` on the other, and a channel of at most
//! [`CHANNEL_CHUNKS`] chunks of [`CHUNK_SIZE`] bytes between them, which bounds memory.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::scope::Scope;
use crate::sink::{ByteStream, Sink};

/// Size of the chunks handed to a sink.
pub const CHUNK_SIZE: usize = 1 << 20;
/// Chunks that may wait between the writer and the sink.
pub const CHANNEL_CHUNKS: usize = 4;

/// An upload in progress: `put` runs on a task of its own, fed by the [`ChunkWriter`]
/// that [`start`](Upload::start) returned. Dropped without
/// [`commit`](Upload::commit), the put is aborted.
pub(crate) struct Upload {
    task: Option<tokio::task::JoinHandle<Result<u64>>>,
    tx: mpsc::Sender<Result<Bytes>>,
    sink_gone: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    scope: Scope,
}

impl Upload {
    /// Starts `sink.put(key, …)` within `scope` and returns the writer that feeds it.
    pub(crate) fn start(sink: Arc<dyn Sink>, key: String, scope: &Scope) -> (ChunkWriter, Upload) {
        let (tx, rx) = mpsc::channel::<Result<Bytes>>(CHANNEL_CHUNKS);
        let body: ByteStream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .boxed();
        let task = scope.spawn(async move { sink.put(&key, body).await });
        let sink_gone = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = ChunkWriter {
            tx: tx.clone(),
            buf: BytesMut::with_capacity(CHUNK_SIZE),
            sink_gone: sink_gone.clone(),
            stop: stop.clone(),
        };
        let upload = Upload {
            task: Some(task),
            tx,
            sink_gone,
            stop,
            scope: scope.clone(),
        };
        (writer, upload)
    }

    /// Makes the writer fail at its next chunk, so the producer stops early.
    pub(crate) fn stop_writer(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Ends the body and waits for the sink to commit; returns the bytes it stored.
    /// The writer must have been flushed and dropped.
    pub(crate) async fn commit(mut self) -> Result<u64> {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        self.join().await
    }

    /// Tells the sink to abort instead of committing, waits for it, and returns the
    /// error to report: the sink's own when the sink failed first (the producer then
    /// only saw a closed channel), `cause` otherwise.
    pub(crate) async fn abort(mut self, cause: Error) -> Error {
        let _ = self
            .tx
            .send(Err(Error::tool("the producer failed; upload aborted")))
            .await;
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        let sink_gone = self.sink_gone.load(Ordering::SeqCst);
        match self.join().await {
            Err(sink_err) if sink_gone => sink_err,
            _ => cause,
        }
    }

    async fn join(&mut self) -> Result<u64> {
        let Some(task) = self.task.take() else {
            return Err(Error::tool("the upload was already joined"));
        };
        match task.await {
            Ok(result) => result,
            Err(e) => Err(Error::tool(format!("the upload task failed: {e}"))),
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // A cancelled backup must not keep uploading. The cancellation completes at
        // the task's next await; an interrupted run waits for that (and for the abort
        // the sink starts when its put is dropped) before it exits.
        if let Some(task) = self.task.take()
            && !task.is_finished()
        {
            task.abort();
            self.scope.spawn_cleanup(async move {
                let _ = task.await;
            });
        }
    }
}

/// Gathers written bytes into [`CHUNK_SIZE`] chunks and sends them to the sink,
/// blocking while the channel is full: that back-pressure bounds memory. Use it on a
/// blocking thread only.
pub(crate) struct ChunkWriter {
    tx: mpsc::Sender<Result<Bytes>>,
    buf: BytesMut,
    sink_gone: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl ChunkWriter {
    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.stop.load(Ordering::SeqCst) {
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

impl Write for ChunkWriter {
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

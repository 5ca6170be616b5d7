//! pgproof-sink-object-store: the [`Sink`] that pgproof's S3, GCS and Azure sinks share.
//!
//! `pgproof-sink-s3`, `pgproof-sink-gcs` and `pgproof-sink-azure` only parse their URLs
//! and build an [`object_store`] client; everything a sink must guarantee lives here,
//! once:
//!
//! - **Streaming, bounded multipart.** A put buffers at most one part. A body that ends
//!   before filling a part is stored with one create-only request (`If-None-Match: *`
//!   on S3 and Azure, `x-goog-if-generation-match: 0` on GCS), so the server itself refuses to
//!   overwrite. A larger body goes up as a multipart upload *while it is still being
//!   produced*: parts are handed to [`WriteMultipart`] and, before each chunk, the
//!   sink waits until fewer than `parts_in_flight` parts are held, so memory stays
//!   below `parts_in_flight × part_size` whatever the object's size.
//! - **Abort on any failure.** An `Err` item in the body, a failed part, a failed
//!   completion or a dropped future aborts the multipart upload, so no parts are left
//!   behind (if the server is unreachable the abort cannot reach it either; a bucket
//!   lifecycle rule for incomplete multipart uploads is the backstop). Uncompleted
//!   uploads are never listed as objects by S3 or GCS. Azure has no abort: the blocks
//!   of an uncompleted upload stay uncommitted, never listed or readable, until Azure
//!   discards them after 7 days.
//! - **Create-only, honestly.** Multipart uploads cannot carry a precondition in
//!   object_store, so before starting one the sink checks that the key is absent.
//!   That check is not atomic against a concurrent writer; pgproof's data keys are
//!   unique per backup (time plus random suffix) and the real commit point is the
//!   small manifest written afterwards, which always takes the single-request,
//!   server-enforced create-only path.
//! - **Retries and error kinds.** object_store retries transient failures (5xx, 429,
//!   timeouts, refused, reset or unready connections: [`Transport`]) with exponential
//!   backoff per [`UploadOptions`]; what is left is mapped onto pgproof's [`Error`] kinds with a
//!   message naming the service, bucket, operation and key and what to check, and
//!   never a credential: server bodies are reduced to their error code and message.

mod config;
mod errors;
mod location;
mod transport;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::{
    BackoffConfig, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions,
    PutPayload, RetryConfig, WriteMultipart,
};
use pgproof_core::error::{Error, Result};
use pgproof_core::sink::{ByteStream, ObjectMeta, Sink, validate_key};

pub use config::{MAX_PART_SIZE_MIB, MAX_PARTS, MIN_PART_SIZE_MIB, ObjectLockConfig, SinkConfig};
pub use errors::Op;
pub use location::{Location, Service, check_endpoint};
pub use transport::Transport;

/// What an object store must offer to back a sink: the object API and raw-prefix
/// paginated listing (so `list("p/a")` also finds `p/ab/…`, as the contract asks).
pub trait Store: ObjectStore + PaginatedListStore {}

impl<T: ObjectStore + PaginatedListStore> Store for T {}

/// Makes rustls's ring provider the process default, which object_store's HTTP client
/// (reqwest built with `rustls-no-provider`) needs: call it before `build()` on an
/// object_store builder, or building the client panics. Idempotent; a provider
/// installed earlier, by pgproof or its embedder, is kept.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How uploads are cut and how hard requests are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadOptions {
    /// Multipart part size in bytes; bodies shorter than this are one request.
    pub part_size: usize,
    /// Parts held in memory at once: the one being filled plus those uploading.
    pub parts_in_flight: usize,
    /// Retries of a transiently failed request.
    pub max_retries: usize,
    /// No retry starts later than this after a request's first attempt.
    pub retry_timeout: Duration,
    /// Limit for one whole request, a part upload included.
    pub request_timeout: Duration,
    /// Limit for establishing one connection.
    pub connect_timeout: Duration,
}

impl UploadOptions {
    /// The options `[sink]` asks for (validated by `Config::validate`).
    pub fn from_config(config: &SinkConfig) -> Self {
        Self {
            part_size: usize::try_from(config.part_size_mib << 20).unwrap_or(usize::MAX),
            parts_in_flight: config.parts_in_flight.max(1),
            max_retries: config.max_retries,
            retry_timeout: Duration::from_secs(config.retry_timeout_secs),
            request_timeout: Duration::from_secs(config.request_timeout_secs),
            connect_timeout: Duration::from_secs(config.connect_timeout_secs),
        }
    }

    /// object_store's retry policy for these options: exponential backoff with jitter
    /// from 200 ms, growing about twofold, capped at 15 s.
    pub fn retry_config(&self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(15),
                // object_store draws each pause uniformly from [init, previous × base):
                // with base 2 the pauses barely grow and a count of retries is spent in
                // seconds; with 4 they roughly double, so the time budget, not the
                // count, ends a long outage.
                base: 4.0,
            },
            max_retries: self.max_retries,
            retry_timeout: self.retry_timeout,
        }
    }
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self::from_config(&SinkConfig::default())
    }
}

/// A [`Sink`] on a bucket (and optional key prefix) of an object store.
#[derive(Clone)]
pub struct ObjectStoreSink {
    store: Arc<dyn Store>,
    location: Location,
    options: UploadOptions,
    retention: Option<pgproof_core::sink::RetentionLock>,
    extender: Option<Arc<dyn LockExtender>>,
}

/// What extends the lock on a stored object, for a store whose client cannot (S3's
/// PutObjectRetention: object_store does not make it).
#[async_trait]
pub trait LockExtender: Send + Sync {
    /// Sets the lock on the current version of the object at `full_key` (the key
    /// with the location's prefix) to `lock`. It MUST never shorten a lock.
    async fn extend(&self, full_key: &str, lock: &pgproof_core::sink::RetentionLock) -> Result<()>;
}

impl fmt::Debug for ObjectStoreSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The store's own Debug would print its configuration, credentials included.
        f.debug_struct("ObjectStoreSink")
            .field("location", &self.location.describe())
            .field("options", &self.options)
            .finish()
    }
}

impl ObjectStoreSink {
    /// A sink writing under `location` through `store`, a client for that bucket.
    /// `options.parts_in_flight` is at least 1 (one part is always being filled).
    pub fn new(store: Arc<dyn Store>, location: Location, mut options: UploadOptions) -> Self {
        options.parts_in_flight = options.parts_in_flight.max(1);
        Self {
            store,
            location,
            options,
            retention: None,
            extender: None,
        }
    }

    /// Records the lock the store's client puts on every object (see
    /// [`Sink::retention`]), and what extends it on an object stored before.
    pub fn with_retention(
        mut self,
        retention: Option<pgproof_core::sink::RetentionLock>,
        extender: Option<Arc<dyn LockExtender>>,
    ) -> Self {
        self.retention = retention;
        self.extender = extender;
        self
    }

    /// Where this sink writes.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Its upload options.
    pub fn options(&self) -> &UploadOptions {
        &self.options
    }

    /// The object store client.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn path_of(&self, key: &str) -> Result<Path> {
        validate_key(key)?;
        let full = self.location.full_key(key);
        Path::parse(&full).map_err(|e| {
            Error::config(format!(
                "object key {key:?} cannot be stored in {}: {e}",
                self.location.describe()
            ))
        })
    }

    fn fail(&self, op: Op, key: &str, e: object_store::Error) -> Error {
        errors::map(&self.location, &self.options, op, key, &e)
    }

    /// Stores a body shorter than one part with a single create-only request.
    async fn put_small(&self, key: &str, path: &Path, chunks: Vec<Bytes>) -> Result<u64> {
        let payload: PutPayload = chunks.into_iter().collect();
        let size = payload.content_length() as u64;
        self.store
            .put_opts(path, payload, PutMode::Create.into())
            .await
            .map_err(|e| self.fail(Op::Put, key, e))?;
        Ok(size)
    }

    /// Streams a body of at least one part as a multipart upload.
    async fn put_multipart(
        &self,
        key: &str,
        path: &Path,
        first: Vec<Bytes>,
        mut body: ByteStream,
    ) -> Result<u64> {
        // Multipart uploads carry no precondition: refuse a key that exists now. The
        // create-only guarantee that matters is the manifest's (see the crate docs).
        match self.store.head(path).await {
            Ok(_) => return Err(errors::already_exists(&self.location, Op::Put, key)),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.fail(Op::CheckAbsent, key, e)),
        }
        let upload = self
            .store
            .put_multipart_opts(path, PutMultipartOptions::default())
            .await
            .map_err(|e| self.fail(Op::StartUpload, key, e))?;
        let mut upload = Upload {
            writer: Some(WriteMultipart::new_with_chunk_size(
                upload,
                self.options.part_size,
            )),
            filled: 0,
            sink: self,
            key,
        };
        let limit = MAX_PARTS.saturating_mul(self.options.part_size as u64);
        let mut total = 0u64;
        let mut pending = first.into_iter();
        loop {
            let chunk = match pending.next() {
                Some(chunk) => chunk,
                None => match body.next().await {
                    Some(Ok(chunk)) => chunk,
                    Some(Err(e)) => {
                        upload.abort(&format!("the data stream failed: {e}")).await;
                        return Err(e);
                    }
                    None => break,
                },
            };
            total += chunk.len() as u64;
            if total > limit {
                let e = Error::config(format!(
                    "{} object {} is larger than {MAX_PARTS} parts of {} MiB, the most a multipart upload can hold; raise sink.part_size_mib",
                    self.location.service.name(),
                    self.location.url_of(key),
                    self.options.part_size >> 20
                ));
                upload.abort(&e.to_string()).await;
                return Err(e);
            }
            upload.write(chunk).await?;
        }
        upload.finish().await?;
        Ok(total)
    }
}

/// An open multipart upload that is aborted unless it completes: explicitly on
/// failure, and from a spawned task if the put future is dropped mid-way.
struct Upload<'a> {
    writer: Option<WriteMultipart>,
    /// Bytes in the part being filled.
    filled: usize,
    sink: &'a ObjectStoreSink,
    key: &'a str,
}

impl Upload<'_> {
    /// Hands `chunk` to the upload, first waiting until fewer than `parts_in_flight`
    /// parts are held (the buffer being filled counts as one). A chunk is split at
    /// part boundaries, so a write either completes the buffered part (which starts
    /// uploading, leaving the buffer empty) or only adds to it: at most
    /// `parts_in_flight` parts of data are ever held.
    async fn write(&mut self, mut chunk: Bytes) -> Result<()> {
        let part = self.sink.options.part_size;
        let uploading = self.sink.options.parts_in_flight - 1;
        while !chunk.is_empty() {
            let piece = chunk.split_to(chunk.len().min(part - self.filled));
            self.filled = (self.filled + piece.len()) % part;
            let waited = match self.writer.as_mut() {
                Some(w) => w.wait_for_capacity(uploading).await,
                None => return Err(Error::tool("multipart upload used after it ended")),
            };
            if let Err(e) = waited {
                let err = self.sink.fail(Op::UploadPart, self.key, e);
                self.abort(&err.to_string()).await;
                return Err(err);
            }
            if let Some(w) = self.writer.as_mut() {
                w.put(piece);
            }
        }
        Ok(())
    }

    /// Uploads the last part and completes the upload (object_store aborts it itself
    /// if that fails).
    async fn finish(&mut self) -> Result<()> {
        let Some(mut writer) = self.writer.take() else {
            return Err(Error::tool("multipart upload used after it ended"));
        };
        // Wait for the parts in flight first, so a failed part is reported as such
        // and the abort is ours.
        if let Err(e) = writer.wait_for_capacity(0).await {
            self.writer = Some(writer);
            let err = self.sink.fail(Op::UploadPart, self.key, e);
            self.abort(&err.to_string()).await;
            return Err(err);
        }
        writer
            .finish()
            .await
            .map(|_| ())
            .map_err(|e| self.sink.fail(Op::Complete, self.key, e))
    }

    async fn abort(&mut self, why: &str) {
        let Some(writer) = self.writer.take() else {
            return;
        };
        let location = &self.sink.location;
        match writer.abort().await {
            Ok(()) => tracing::debug!(
                object = %location.url_of(self.key),
                reason = why,
                "multipart upload aborted"
            ),
            Err(e) => {
                let err = errors::map(location, &self.sink.options, Op::Abort, self.key, &e);
                tracing::warn!(
                    "{err}; its uploaded parts stay in the bucket (they are never listed) until a lifecycle rule for incomplete multipart uploads removes them"
                );
            }
        }
    }
}

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        let Some(writer) = self.writer.take() else {
            return;
        };
        let object = self.sink.location.url_of(self.key);
        // Tracked, so an interrupted run waits for the abort before it exits.
        pgproof_core::scope::spawn_cleanup(async move {
            if let Err(e) = writer.abort().await {
                tracing::warn!(object = %object, error = %e, "could not abort a cancelled multipart upload");
            }
        });
    }
}

#[async_trait]
impl Sink for ObjectStoreSink {
    fn describe(&self) -> String {
        self.location.describe()
    }

    fn retention(&self) -> Option<pgproof_core::sink::RetentionLock> {
        self.retention.clone()
    }

    async fn extend_retention(
        &self,
        key: &str,
        lock: &pgproof_core::sink::RetentionLock,
    ) -> Result<()> {
        if self.retention.is_none() {
            return Ok(());
        }
        validate_key(key)?;
        match &self.extender {
            Some(extender) => extender.extend(&self.location.full_key(key), lock).await,
            None => Err(Error::config(format!(
                "{} locks what it stores but cannot extend a lock (needed for {key}): not built for this store",
                self.location.describe()
            ))),
        }
    }

    async fn put(&self, key: &str, mut body: ByteStream) -> Result<u64> {
        let path = self.path_of(key)?;
        // Gather up to one part: a body that ends first is one create-only request.
        let mut first = Vec::new();
        let mut buffered = 0usize;
        while buffered < self.options.part_size {
            match body.next().await {
                Some(Ok(chunk)) => {
                    buffered += chunk.len();
                    first.push(chunk);
                }
                // Nothing has been sent yet: there is nothing to abort.
                Some(Err(e)) => return Err(e),
                None => return self.put_small(key, &path, first).await,
            }
        }
        self.put_multipart(key, &path, first, body).await
    }

    async fn get(&self, key: &str) -> Result<ByteStream> {
        let path = self.path_of(key)?;
        let result = self
            .store
            .get_opts(&path, GetOptions::default())
            .await
            .map_err(|e| self.fail(Op::Get, key, e))?;
        let location = self.location.clone();
        let options = self.options.clone();
        let key = key.to_owned();
        Ok(result
            .into_stream()
            .map_err(move |e| errors::map(&location, &options, Op::Read, &key, &e))
            .boxed())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let full = self.location.full_prefix(prefix);
        let root = self.location.root_prefix();
        let mut found = Vec::new();
        let mut page_token = None;
        loop {
            let options = PaginatedListOptions {
                page_token: page_token.take(),
                ..PaginatedListOptions::default()
            };
            let page = self
                .store
                .list_paginated((!full.is_empty()).then_some(full.as_str()), options)
                .await
                .map_err(|e| self.fail(Op::List, prefix, e))?;
            for object in page.result.objects {
                let Some(key) = object.location.as_ref().strip_prefix(&root) else {
                    continue;
                };
                if key.starts_with(prefix) && !key.is_empty() {
                    // The ETag changes with the bytes stored; a backend without one
                    // may still version its objects, and every one dates them.
                    let identity = object
                        .e_tag
                        .clone()
                        .or_else(|| object.version.clone())
                        .unwrap_or_else(|| object.last_modified.to_rfc3339());
                    found.push(ObjectMeta {
                        key: key.to_owned(),
                        size: object.size,
                        identity: Some(identity),
                    });
                }
            }
            match page.page_token {
                Some(token) => page_token = Some(token),
                None => break,
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        found.dedup_by(|a, b| a.key == b.key);
        Ok(found)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path_of(key)?;
        // S3 answers 204 for a missing key; the contract wants NotFound.
        self.store
            .head(&path)
            .await
            .map_err(|e| self.fail(Op::Delete, key, e))?;
        self.store
            .delete(&path)
            .await
            .map_err(|e| self.fail(Op::Delete, key, e))
    }
}

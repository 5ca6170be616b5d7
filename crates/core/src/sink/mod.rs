//! Where backups live: the [`Sink`] trait, its extension trait [`SinkExt`], the
//! bounded streaming of a dump into a sink, and (feature `testkit`) the conformance
//! suite every implementation must pass.

pub(crate) mod stream;
#[cfg(feature = "testkit")]
pub mod testkit;

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};

#[cfg(doc)]
use crate::error::ErrorKind;
use crate::error::{Error, Result};

/// A stream of byte chunks flowing into or out of a sink. An `Err` item ends the stream
/// and means "abort": the producer failed.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// One object found by [`Sink::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's key, relative to the sink's root (never starts with `/`).
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// What tells this stored object from another one stored under the same key with
    /// the same size (an object store's ETag, else its version, else its modification
    /// time; a file's inode and times), if the backend has such a thing. A cache keyed
    /// by key, size and identity (the catalog index) is only as good as this.
    pub identity: Option<String>,
}

/// A place for backup objects: a local directory, an S3 bucket, a GCS bucket.
///
/// Keys are `/`-separated relative paths (see [`validate_key`]). An implementation:
///
/// - MUST make [`put`](Sink::put) create-only: if `key` exists it fails with
///   [`ErrorKind::AlreadyExists`] and leaves the existing object untouched;
/// - MUST make a put atomic: the object becomes visible to `get` and `list` only after
///   the body stream ended without error and every byte is durable; if the body yields
///   an `Err`, or writing fails, or the future is dropped, nothing is left listed under
///   `key` (partial uploads are aborted or removed);
/// - MUST consume the body as it arrives, holding at most a bounded number of chunks in
///   memory, whatever the object's size;
/// - MUST return [`ErrorKind::NotFound`] from `get` and `delete` for a missing key;
/// - MUST list every committed object whose key starts with `prefix`, recursively,
///   sorted by key, and nothing that is not committed;
/// - SHOULD list each object with an [`identity`](ObjectMeta::identity) that differs
///   from the one it listed before whenever other bytes were stored under the key since
///   (deleted and put again), and give `None` where the backend has nothing of the kind;
/// - MUST map backend errors onto [`Error`] kinds (not found, already exists, auth,
///   transient, exhausted retries, …) with a message naming the operation, the key and
///   what to check, and never a credential;
/// - SHOULD retry transient failures itself, within a bounded budget, and report
///   [`ErrorKind::Exhausted`] when the budget ran out.
///
/// Conveniences built on these four operations live on [`SinkExt`]; the conformance
/// suite is `testkit::run_all` (feature `testkit`).
#[async_trait]
pub trait Sink: Send + Sync + fmt::Debug {
    /// A description for logs and manifests, without credentials (e.g. `file:///var/backups`).
    fn describe(&self) -> String;

    /// Stores `body` under `key`, create-only; returns the number of bytes stored.
    async fn put(&self, key: &str, body: ByteStream) -> Result<u64>;

    /// Streams the object stored under `key`.
    async fn get(&self, key: &str) -> Result<ByteStream>;

    /// Lists committed objects whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// Deletes the object under `key`.
    async fn delete(&self, key: &str) -> Result<()>;

    /// The lock this sink puts on every object it stores (S3 Object Lock), if any:
    /// the manifest records it, and retention keeps a backup its lock still holds.
    fn retention(&self) -> Option<RetentionLock> {
        None
    }

    /// Extends the lock on the stored object `key` to `lock` (a deduplicated backup's
    /// shared chunks stay locked at least as long as the newest backup that uses
    /// them; pgproof asks for [`retention`](Self::retention)'s mode, until that date
    /// or later). A sink that locks objects MUST implement it, MUST never shorten a
    /// lock nor weaken its mode, and MUST succeed when the object is already locked
    /// at least that long in a mode at least as strong; the default, for sinks that
    /// lock nothing, does nothing.
    async fn extend_retention(&self, key: &str, _lock: &RetentionLock) -> Result<()> {
        match self.retention() {
            None => Ok(()),
            Some(_) => Err(Error::config(format!(
                "{} locks what it stores but cannot extend a lock (needed for {key}): not built for this sink",
                self.describe()
            ))),
        }
    }
}

/// A write-once lock on stored objects: until `retain_until` the stored versions
/// cannot be deleted (a plain delete on S3 only hides them behind a delete marker).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetentionLock {
    /// Who may lift it.
    pub mode: LockMode,
    /// Until when.
    pub retain_until: jiff::Timestamp,
}

/// Who may lift an object lock before its date.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// A role with the bypass permission.
    Governance,
    /// No one, the account's root included.
    Compliance,
}

impl RetentionLock {
    /// Whether this lock holds at least as long as `wanted` (to the second, as S3
    /// keeps a lock's date) in a mode at least as strong.
    pub fn covers(&self, wanted: &RetentionLock) -> bool {
        self.retain_until.as_second() >= wanted.retain_until.as_second()
            && self.mode.covers(wanted.mode)
    }
}

impl LockMode {
    /// Whether a lock in this mode is at least as strong as one in `wanted`:
    /// compliance covers both, governance only governance.
    pub fn covers(self, wanted: LockMode) -> bool {
        self == LockMode::Compliance || wanted == LockMode::Governance
    }

    /// `governance` or `compliance`, as configs and manifests spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "governance",
            LockMode::Compliance => "compliance",
        }
    }
}

impl std::fmt::Display for LockMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks that `key` is a relative `/`-separated path with no empty, `.` or `..`
/// segment, so no backend can be led outside its root.
pub fn validate_key(key: &str) -> Result<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.contains('\0')
        || key
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if bad {
        return Err(Error::config(format!(
            "invalid object key {key:?}: keys are relative paths without empty, '.' or '..' segments"
        )));
    }
    Ok(())
}

/// Conveniences on every [`Sink`]: small whole objects in and out of memory.
#[async_trait]
pub trait SinkExt: Sink {
    /// Stores a small in-memory object (a manifest, a record) create-only.
    async fn put_bytes(&self, key: &str, data: Bytes) -> Result<u64> {
        self.put(key, futures::stream::once(async move { Ok(data) }).boxed())
            .await
    }

    /// Reads a whole object into memory, refusing objects larger than `limit` bytes
    /// (for manifests and records, never for dumps) as an integrity failure.
    async fn get_bytes(&self, key: &str, limit: usize) -> Result<Vec<u8>> {
        let mut body = self.get(key).await?;
        let mut out = Vec::new();
        while let Some(chunk) = body.try_next().await? {
            if out.len() + chunk.len() > limit {
                return Err(Error::integrity(format!(
                    "object {key} is larger than {limit} bytes, which no pgproof manifest or record is; it was not written by pgproof"
                ))
                .with_object(key));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

impl<S: Sink + ?Sized> SinkExt for S {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_the_root() {
        for bad in ["", "/abs", "a//b", "a/../b", "./a", "a/", "..", "a\0b"] {
            assert!(validate_key(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "app/20261123T063151Z-3fa9/manifest.json", "ünï/cödé"] {
            assert!(validate_key(good).is_ok(), "{good:?} refused");
        }
    }
}

//! pgproof-sink-fs: a [`Sink`] on a local directory.
//!
//! Objects are files under the root, keys are relative paths. A put streams into a
//! hidden temporary file in the target directory (mode 0600), fsyncs it, publishes it
//! with a hard link — which, unlike rename, refuses to replace an existing file, so
//! create-only holds even against a concurrent writer — then fsyncs the directory.
//! Directories are created 0700. Temporary files start with `.` and are never listed.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use pgproof_core::error::{Error, Result};
use pgproof_core::sink::{ByteStream, ObjectMeta, Sink, validate_key};
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

const READ_CHUNK: usize = 256 << 10;

/// A sink on a local directory.
#[derive(Clone, Debug)]
pub struct FsSink {
    root: PathBuf,
}

impl FsSink {
    /// A sink rooted at `root` (created on first write if missing).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        // Absolute, so walking up from a key always ends at the root (a bare relative
        // root like `backups` has an empty parent that cannot be fsynced).
        let root = std::path::absolute(&root).unwrap_or(root);
        Self { root }
    }

    /// Parses `file:///abs/path`, an absolute path or an explicitly relative one
    /// (`./backups`); anything else is a configuration error.
    pub fn from_url(url: &str) -> Result<Self> {
        let path = match url.strip_prefix("file://") {
            Some(rest) if rest.starts_with('/') => rest,
            Some(_) => {
                return Err(Error::config(format!(
                    "sink.url {url:?} is not a local file URL; write file:///absolute/path"
                )));
            }
            None if url.contains("://") => {
                return Err(Error::config(format!(
                    "sink.url {url:?} is not a local directory"
                )));
            }
            // A bare path only when unmistakable: absolute, or explicitly relative.
            // Anything else (`s3:/bucket`, `::::`, a typo) must not quietly become a
            // directory under the working directory.
            None if url.starts_with('/') || url.starts_with("./") || url.starts_with("../") => url,
            None => {
                return Err(Error::config(format!(
                    "sink.url {url:?} is neither a URL pgproof knows nor an absolute path; write file:///absolute/path, ./relative/path, s3://bucket/prefix, gs://bucket/prefix or az://container/prefix"
                )));
            }
        };
        Ok(Self::new(path))
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    fn io_error(&self, doing: &str, path: &Path, e: io::Error) -> Error {
        match e.kind() {
            io::ErrorKind::NotFound => Error::not_found(format!(
                "{doing} {}: no such file or directory",
                path.display()
            )),
            io::ErrorKind::PermissionDenied => Error::io(
                format!(
                    "{doing} {} (check the owner and mode of the sink directory {})",
                    path.display(),
                    self.root.display()
                ),
                e,
            ),
            _ => Error::io(format!("{doing} {}", path.display()), e),
        }
    }
}

/// Removes a temporary file unless it was published.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn temp_name(file_name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        ".{file_name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// How long a temporary file must have gone unwritten before a listing may remove it
/// as abandoned (its writer could be alive on another host sharing the directory).
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Removes `path` if it is one of this sink's temporary files whose writer is gone:
/// its pid is not running here and it has not been written for [`ABANDONED_AFTER`].
/// A run killed with SIGKILL leaves such files; the next listing (every backup
/// lists) tidies them.
fn reap_if_abandoned(path: &Path, name: &str) {
    let Some((_, tail)) = name.rsplit_once(".tmp-") else {
        return;
    };
    let Some(pid) = tail.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
        return;
    };
    if pgproof_core::pg::process::is_running(pid) {
        return;
    }
    let idle = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    if idle.is_some_and(|idle| idle >= ABANDONED_AFTER) && std::fs::remove_file(path).is_ok() {
        tracing::info!(file = %path.display(), pid, "removed a temporary file a dead run left");
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait]
impl Sink for FsSink {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn put(&self, key: &str, mut body: ByteStream) -> Result<u64> {
        let path = self.path_of(key)?;
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(Error::config(format!("invalid object key {key:?}")));
        };
        if tokio::fs::symlink_metadata(&path).await.is_ok() {
            return Err(Error::already_exists(format!(
                "{} already exists; sinks never overwrite",
                path.display()
            )));
        }
        let dir = dir.to_path_buf();
        let root = self.root.clone();
        tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || -> io::Result<()> {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)?;
                // Make every directory on the way durable, not only the file.
                let mut at = dir.as_path();
                while let Some(parent) = at.parent() {
                    sync_dir(parent)?;
                    if at == root || !at.starts_with(&root) {
                        break;
                    }
                    at = parent;
                }
                Ok(())
            }
        })
        .await
        .map_err(|e| Error::tool(format!("directory creation task failed: {e}")))?
        .map_err(|e| self.io_error("cannot create directory", &dir, e))?;

        let tmp_path = dir.join(temp_name(&name.to_string_lossy()));
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp_path)
            .await
            .map_err(|e| self.io_error("cannot create", &tmp_path, e))?;
        let mut tmp = TempFile(Some(tmp_path.clone()));
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            file.write_all(&chunk)
                .await
                .map_err(|e| self.io_error("cannot write", &tmp_path, e))?;
            written += chunk.len() as u64;
        }
        file.sync_all()
            .await
            .map_err(|e| self.io_error("cannot fsync", &tmp_path, e))?;
        drop(file);
        tokio::fs::hard_link(&tmp_path, &path)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => Error::already_exists(format!(
                    "{} already exists; sinks never overwrite",
                    path.display()
                )),
                _ => self.io_error("cannot publish", &path, e),
            })?;
        if let Some(published) = tmp.0.take() {
            let _ = tokio::fs::remove_file(published).await;
        }
        let dir_for_sync = dir.clone();
        tokio::task::spawn_blocking(move || sync_dir(&dir_for_sync))
            .await
            .map_err(|e| Error::tool(format!("fsync task failed: {e}")))?
            .map_err(|e| self.io_error("cannot fsync directory", &dir, e))?;
        Ok(written)
    }

    async fn get(&self, key: &str) -> Result<ByteStream> {
        let path = self.path_of(key)?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| self.io_error("cannot open", &path, e))?;
        let shown = path.display().to_string();
        Ok(ReaderStream::with_capacity(file, READ_CHUNK)
            .map_err(move |e| Error::io(format!("cannot read {shown}"), e))
            .boxed())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        let start = match prefix.rfind('/') {
            Some(i) => {
                validate_key(&prefix[..i])?;
                root.join(&prefix[..i])
            }
            None => root.clone(),
        };
        let found = tokio::task::spawn_blocking(move || walk(&root, &start, &prefix))
            .await
            .map_err(|e| Error::tool(format!("listing task failed: {e}")))?
            .map_err(|e| self.io_error("cannot list", &self.root, e))?;
        Ok(found)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path_of(key)?;
        tokio::fs::remove_file(&path)
            .await
            .map_err(|e| self.io_error("cannot delete", &path, e))?;
        // Tidy now-empty directories up to the root; a non-empty one stops the walk.
        let mut at = path.parent();
        while let Some(dir) = at {
            if dir == self.root || !dir.starts_with(&self.root) {
                break;
            }
            if tokio::fs::remove_dir(dir).await.is_err() {
                break;
            }
            at = dir.parent();
        }
        Ok(())
    }
}

fn walk(root: &Path, start: &Path, prefix: &str) -> io::Result<Vec<ObjectMeta>> {
    let mut found = Vec::new();
    let mut pending = vec![start.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') {
                reap_if_abandoned(&entry.path(), name);
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                let path = entry.path();
                let Ok(rel) = path.strip_prefix(root) else {
                    continue;
                };
                let Some(key) = rel.to_str() else { continue };
                if key.starts_with(prefix) {
                    found.push(ObjectMeta {
                        key: key.to_owned(),
                        size: entry.metadata()?.len(),
                    });
                }
            }
        }
    }
    found.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listing_removes_temp_files_of_dead_writers_only() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FsSink::new(dir.path());
        std::fs::create_dir_all(dir.path().join("db/id")).unwrap();
        // pid 0 is never a process of ours; a dead writer's file, idle long enough.
        let dead = dir.path().join("db/id/.dump.pgc.tmp-0-1");
        let fresh = dir.path().join("db/id/.manifest.json.tmp-0-2");
        let live = dir
            .path()
            .join(format!("db/id/.x.tmp-{}-3", std::process::id()));
        for f in [&dead, &fresh, &live] {
            std::fs::write(f, b"partial").unwrap();
        }
        let old = std::time::SystemTime::now() - ABANDONED_AFTER * 2;
        for f in [&dead, &live] {
            std::fs::File::options()
                .write(true)
                .open(f)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        assert!(sink.list("").await.unwrap().is_empty());
        assert!(!dead.exists(), "a dead writer's old temp file survived");
        assert!(fresh.exists(), "a recent temp file was removed");
        assert!(live.exists(), "a live writer's temp file was removed");
    }

    #[test]
    fn urls_and_paths() {
        assert_eq!(
            FsSink::from_url("file:///var/b").unwrap().root(),
            Path::new("/var/b")
        );
        assert_eq!(
            FsSink::from_url("/var/b").unwrap().root(),
            Path::new("/var/b")
        );
        let relative = FsSink::from_url("./backups").unwrap();
        assert!(relative.root().is_absolute() && relative.root().ends_with("backups"));
        for garbage in [
            "backups",
            "s3:/bucket/x",
            "::::",
            "",
            "file://host/x",
            "s3://bucket",
            "ftp://host/x",
        ] {
            assert!(FsSink::from_url(garbage).is_err(), "{garbage:?} accepted");
        }
    }
}

//! pgproof-sink-fs: a [`Sink`] on a local directory.
//!
//! Objects are files under the root, keys are relative paths. A put streams into a
//! hidden temporary file in the target directory (mode 0600), fsyncs it, publishes it
//! with a hard link — which, unlike rename, refuses to replace an existing file, so
//! create-only holds even against a concurrent writer — then fsyncs the directory.
//! Directories are created 0700. Temporary files start with `.` and are never listed.
//!
//! Every path is resolved from the root's descriptor with openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS) (Linux 5.6 and later): a symbolic link planted in the sink is
//! an integrity error, never followed, so no read, write or delete reaches outside.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, linkat, unlinkat};
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

    fn io_error(&self, doing: &str, path: &str, e: io::Error) -> Error {
        let shown = self.root.join(path);
        match e.raw_os_error().map(Errno::from_raw) {
            // RESOLVE_NO_SYMLINKS and RESOLVE_BENEATH: something in the sink that
            // pgproof never writes.
            Some(Errno::ELOOP | Errno::EXDEV) => Error::integrity(format!(
                "{doing} {}: a symbolic link is on the way; pgproof writes none and follows none in a sink (remove it, and find out who put it there)",
                shown.display()
            ))
            .with_object(path),
            _ => match e.kind() {
                io::ErrorKind::NotFound => Error::not_found(format!(
                    "{doing} {}: no such file or directory",
                    shown.display()
                )),
                io::ErrorKind::PermissionDenied => Error::io(
                    format!(
                        "{doing} {} (check the owner and mode of the sink directory {})",
                        shown.display(),
                        self.root.display()
                    ),
                    e,
                ),
                _ => Error::io(format!("{doing} {}", shown.display()), e),
            },
        }
    }

    /// The root, opened: every path below is resolved from it.
    fn open_root(&self) -> io::Result<OwnedFd> {
        std::fs::File::open(&self.root).map(OwnedFd::from)
    }
}

/// Opens `rel` beneath `dir` the only way pgproof resolves a path in a sink: never
/// through a symbolic link, never out of the root (openat2 with RESOLVE_BENEATH and
/// RESOLVE_NO_SYMLINKS), so a link an attacker planted cannot turn a read, a write or
/// a delete on a file elsewhere.
fn open_beneath(dir: impl AsFd, rel: &str, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    openat2(dir, rel, how).map_err(io::Error::from)
}

/// The directory `rel` beneath `root` (`""`: the root itself).
fn open_dir(root: &OwnedFd, rel: &str) -> io::Result<OwnedFd> {
    open_beneath(
        root,
        if rel.is_empty() { "." } else { rel },
        OFlag::O_DIRECTORY | OFlag::O_RDONLY,
        0,
    )
}

/// The directory `rel` beneath `root`, created (0700) with every missing parent, each
/// parent fsynced after a directory appeared in it.
fn make_dirs(root: &OwnedFd, rel: &str) -> io::Result<OwnedFd> {
    let mut at = open_dir(root, "")?;
    for component in rel.split('/').filter(|c| !c.is_empty()) {
        match mkdirat(&at, component, Mode::from_bits_truncate(0o700)) {
            Ok(()) => nix::unistd::fsync(&at).map_err(io::Error::from)?,
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
        at = open_beneath(&at, component, OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0)?;
    }
    Ok(at)
}

/// A key's directory and file name.
fn split_key(key: &str) -> (&str, &str) {
    key.rsplit_once('/').unwrap_or(("", key))
}

/// Removes a temporary file unless it was published.
struct TempFile(Option<(OwnedFd, String)>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some((dir, name)) = self.0.take() {
            let _ = unlinkat(&dir, name.as_str(), UnlinkatFlags::NoRemoveDir);
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

/// Removes the temporary file `name` in `dir` if its writer is gone: its pid is not
/// running here and it has not been written for [`ABANDONED_AFTER`]. A run killed
/// with SIGKILL leaves such files; the next listing (every backup lists) tidies them.
fn reap_if_abandoned(dir: &OwnedFd, name: &str, shown: &Path) {
    let Some((_, tail)) = name.rsplit_once(".tmp-") else {
        return;
    };
    let Some(pid) = tail.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
        return;
    };
    if pgproof_core::pg::is_running(pid) {
        return;
    }
    let Ok(stat) = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
        return;
    };
    let modified = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(u64::try_from(stat.st_mtime).unwrap_or(0));
    let idle = modified.elapsed().ok();
    if idle.is_some_and(|idle| idle >= ABANDONED_AFTER)
        && unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).is_ok()
    {
        tracing::info!(file = %shown.display(), pid, "removed a temporary file a dead run left");
    }
}

/// Runs blocking file-system calls off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<io::Result<T>> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::tool(format!("a file-system task failed: {e}")))
}

#[async_trait]
impl Sink for FsSink {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn put(&self, key: &str, mut body: ByteStream) -> Result<u64> {
        validate_key(key)?;
        let (dir_rel, name) = split_key(key);
        let (dir_rel, name) = (dir_rel.to_owned(), name.to_owned());
        // The root itself is the operator's to place (a link there is theirs).
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.root)
                .map_err(|e| self.io_error("cannot create", "", e))?;
        }
        let root = self
            .open_root()
            .map_err(|e| self.io_error("cannot open", "", e))?;
        let dir = {
            let (dir_rel, name) = (dir_rel.clone(), name.clone());
            blocking(move || {
                let dir = make_dirs(&root, &dir_rel)?;
                match fstatat(&dir, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(_) => Err(io::Error::from(io::ErrorKind::AlreadyExists)),
                    Err(Errno::ENOENT) => Ok(dir),
                    Err(e) => Err(e.into()),
                }
            })
            .await?
        };
        let dir = dir.map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => Error::already_exists(format!(
                "{} already exists; sinks never overwrite",
                self.root.join(key).display()
            )),
            _ => self.io_error("cannot create directory for", key, e),
        })?;

        let tmp_name = temp_name(&name);
        let tmp_key = format!("{dir_rel}/{tmp_name}");
        let file = open_beneath(
            &dir,
            &tmp_name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
            0o600,
        )
        .map_err(|e| self.io_error("cannot create", &tmp_key, e))?;
        let tmp = TempFile(Some((
            dir.try_clone()
                .map_err(|e| self.io_error("cannot open", &dir_rel, e))?,
            tmp_name.clone(),
        )));
        let mut file = tokio::fs::File::from_std(std::fs::File::from(file));
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            file.write_all(&chunk)
                .await
                .map_err(|e| self.io_error("cannot write", &tmp_key, e))?;
            written += chunk.len() as u64;
        }
        file.sync_all()
            .await
            .map_err(|e| self.io_error("cannot fsync", &tmp_key, e))?;
        drop(file);
        // Published by a hard link, which (unlike rename) never replaces a file.
        let published = blocking(move || {
            linkat(
                &dir,
                tmp_name.as_str(),
                &dir,
                name.as_str(),
                AtFlags::empty(),
            )?;
            drop(tmp);
            nix::unistd::fsync(&dir)?;
            Ok(())
        })
        .await?;
        match published {
            Ok(()) => Ok(written),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(Error::already_exists(format!(
                    "{} already exists; sinks never overwrite",
                    self.root.join(key).display()
                )))
            }
            Err(e) => Err(self.io_error("cannot publish", key, e)),
        }
    }

    async fn get(&self, key: &str) -> Result<ByteStream> {
        validate_key(key)?;
        // O_NONBLOCK: a named pipe planted under a key must not hang the read (it has
        // no effect on a regular file); anything but a regular file is refused.
        let file = self
            .open_root()
            .and_then(|root| open_beneath(&root, key, OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0))
            .map(std::fs::File::from)
            .map_err(|e| self.io_error("cannot open", key, e))?;
        let regular = file
            .metadata()
            .map_err(|e| self.io_error("cannot open", key, e))?
            .is_file();
        if !regular {
            return Err(Error::integrity(format!(
                "{} is not a regular file; pgproof writes none other in a sink (remove it, and find out who put it there)",
                self.root.join(key).display()
            ))
            .with_object(key));
        }
        let file = tokio::fs::File::from_std(file);
        let shown = self.root.join(key).display().to_string();
        Ok(ReaderStream::with_capacity(file, READ_CHUNK)
            .map_err(move |e| Error::io(format!("cannot read {shown}"), e))
            .boxed())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let start = match prefix.rfind('/') {
            Some(i) => {
                validate_key(&prefix[..i])?;
                prefix[..i].to_owned()
            }
            None => String::new(),
        };
        let root = match self.open_root() {
            Ok(root) => root,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io_error("cannot open", "", e)),
        };
        let shown = self.root.clone();
        let prefix = prefix.to_owned();
        let found = blocking(move || walk(&root, &start, &prefix, &shown))
            .await?
            .map_err(|e| self.io_error("cannot list", "", e))?;
        Ok(found)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        let (dir_rel, name) = split_key(key);
        let (dir_rel, name) = (dir_rel.to_owned(), name.to_owned());
        let root = self
            .open_root()
            .map_err(|e| self.io_error("cannot open", "", e))?;
        let removed = blocking(move || {
            let dir = open_dir(&root, &dir_rel)?;
            // unlinkat removes a link itself, never what it points to.
            unlinkat(&dir, name.as_str(), UnlinkatFlags::NoRemoveDir)?;
            // Tidy now-empty directories up to the root; a non-empty one stops it.
            let mut rel = dir_rel.as_str();
            while !rel.is_empty() {
                let (parent, child) = split_key(rel);
                let Ok(parent_fd) = open_dir(&root, parent) else {
                    break;
                };
                if unlinkat(&parent_fd, child, UnlinkatFlags::RemoveDir).is_err() {
                    break;
                }
                rel = parent;
            }
            Ok(())
        })
        .await?;
        removed.map_err(|e| self.io_error("cannot delete", key, e))
    }
}

/// Every file under `start` (a directory beneath `root`) whose key starts with
/// `prefix`. Directories are opened beneath their parents without following links;
/// a link or anything else that is not a file or a directory is not listed.
fn walk(root: &OwnedFd, start: &str, prefix: &str, shown: &Path) -> io::Result<Vec<ObjectMeta>> {
    let mut found = Vec::new();
    let first = match open_dir(root, start) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    let mut pending = vec![(first, start.to_owned())];
    while let Some((dir, rel)) = pending.pop() {
        // The directory as opened, by its descriptor: what it is now, wherever a
        // path to it may lead by the time it is read.
        let entries = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let key = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            if name.starts_with('.') {
                reap_if_abandoned(&dir, name, &shown.join(&key));
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                match open_beneath(&dir, name, OFlag::O_DIRECTORY | OFlag::O_RDONLY, 0) {
                    Ok(fd) => pending.push((fd, key)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            } else if kind.is_file() && key.starts_with(prefix) {
                let meta = entry.metadata()?;
                found.push(ObjectMeta {
                    key,
                    size: meta.len(),
                    identity: Some(identity(&meta)),
                });
            }
        }
    }
    found.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(found)
}

/// A file's identity: its inode, and its modification and change times to the
/// nanosecond. A file replaced under its name (unlinked, published again) gets a new
/// change time at least, even where the inode number is reused; only a replacement
/// within one tick of the kernel's file clock (a few milliseconds) could repeat all
/// three, and then with the same size too.
fn identity(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{}:{}.{:09}:{}.{:09}",
        meta.ino(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    )
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

    /// A link planted in the sink (a pin directory made a link to elsewhere, a
    /// manifest made a link to a file elsewhere) is never followed: reads, writes,
    /// listings and deletes refuse it, and nothing outside the root is touched.
    #[tokio::test]
    async fn planted_links_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sink");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim.json"), b"precious").unwrap();
        let sink = FsSink::new(&root);
        sink.put("db/id/manifest.json", bytes_of(b"m"))
            .await
            .unwrap();
        std::os::unix::fs::symlink(&outside, root.join("db/id/pin")).unwrap();
        std::os::unix::fs::symlink(
            outside.join("victim.json"),
            root.join("db/id/tombstone.json"),
        )
        .unwrap();
        std::os::unix::fs::symlink(&outside, root.join("other")).unwrap();

        let listed = sink.list("db/").await.unwrap();
        assert_eq!(
            listed.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(),
            ["db/id/manifest.json"]
        );
        assert!(sink.list("db/id/pin/").await.is_err());
        for key in ["db/id/pin/victim.json", "other/victim.json"] {
            let e = sink.get(key).await.err().unwrap();
            assert_eq!(e.kind(), pgproof_core::ErrorKind::Integrity, "{key}: {e}");
            assert!(
                sink.delete(key).await.is_err(),
                "{key} deleted through a link"
            );
            assert!(
                sink.put(&format!("{key}.new"), bytes_of(b"x"))
                    .await
                    .is_err(),
                "{key}.new written through a link"
            );
        }
        let e = sink.get("db/id/tombstone.json").await.err().unwrap();
        assert_eq!(e.kind(), pgproof_core::ErrorKind::Integrity, "{e}");
        // A named pipe where a lock should be: refused at once, not read for ever.
        nix::unistd::mkfifo(&root.join("db/_commit.lock"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = sink.get("db/_commit.lock").await.err().unwrap();
        assert_eq!(e.kind(), pgproof_core::ErrorKind::Integrity, "{e}");
        sink.delete("db/id/tombstone.json").await.unwrap();
        // Deleting the planted file link removes the link, not its target.
        assert!(std::fs::symlink_metadata(root.join("db/id/tombstone.json")).is_err());
        assert_eq!(
            std::fs::read(outside.join("victim.json")).unwrap(),
            b"precious"
        );
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            1,
            "something was written outside"
        );
    }

    fn bytes_of(data: &'static [u8]) -> ByteStream {
        futures::stream::once(async move { Ok(bytes::Bytes::from_static(data)) }).boxed()
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

//! File material a restore also needs (a CA's key, certificates, configuration),
//! backed up with the database: each set of paths is one tar archive, through the same
//! codec chain (gzip, age) into the same backup directory, listed in the manifest with
//! every entry's mode, size and sha256. Restore writes the files back with their
//! modes; verification checks every entry's hash.
//!
//! Sets are meant for small material: one archive is built in memory, up to
//! [`FILES_LIMIT`] bytes.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::catalog::ObjectInfo;
use crate::codec::{CodecChain, Compress, Identities, Recipients, sha256_hex};
use crate::error::{Error, Result};
use crate::sink::{Sink, SinkExt};

/// Largest archive of one set.
pub const FILES_LIMIT: u64 = 256 << 20;

/// A set of paths to back up (files, or directories taken whole).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSet {
    /// The set's name: the archive's and the restore subdirectory's.
    pub name: String,
    /// Absolute paths.
    pub paths: Vec<PathBuf>,
    /// Refused unless the backup is encrypted.
    #[serde(default)]
    pub secret: bool,
}

/// One archived entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The path as backed up (absolute).
    pub path: String,
    /// `file`, `dir` or `symlink`.
    pub kind: String,
    /// Permission bits.
    pub mode: u32,
    /// Bytes (files).
    #[serde(default)]
    pub size: u64,
    /// sha256 of the content (files) or of the link target (symlinks).
    #[serde(default)]
    pub sha256: String,
}

/// Whether `name` can name a set: one path segment of letters, digits, `-` and `_`,
/// on backup and (from a manifest, which names the directory a restore writes) on
/// restore alike.
pub fn is_set_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A set as stored, in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSetInfo {
    /// The set's name.
    pub name: String,
    /// Whether it was marked secret.
    pub secret: bool,
    /// Transformations after tar (`gzip`, `age`).
    pub codecs: Vec<String>,
    /// The stored archive.
    pub object: ObjectInfo,
    /// Every entry.
    pub entries: Vec<FileEntry>,
}

impl FileSet {
    /// Checks the set can be stored as configured.
    pub fn validate(&self, encrypted: bool) -> Result<()> {
        if !is_set_name(&self.name) {
            return Err(Error::config(format!(
                "file set name {:?} must be letters, digits, '-' or '_'",
                self.name
            )));
        }
        if self.secret && !encrypted {
            return Err(Error::config(format!(
                "file set {} is secret, and backups are not encrypted: set encryption recipients, or mark the set secret = false",
                self.name
            )));
        }
        if let Some(p) = self.paths.iter().find(|p| !p.is_absolute()) {
            return Err(Error::config(format!(
                "file set {}: path {} must be absolute",
                self.name,
                p.display()
            )));
        }
        if self.paths.is_empty() {
            return Err(Error::config(format!(
                "file set {} has no paths",
                self.name
            )));
        }
        Ok(())
    }

    /// Archives the set and stores it under `dir` (`<db>/<id>`) in `sink`.
    pub async fn store(
        &self,
        sink: &dyn Sink,
        dir: &str,
        recipients: Option<&Recipients>,
    ) -> Result<FileSetInfo> {
        self.validate(recipients.is_some())?;
        let (tar, entries) = self.archive()?;
        let chain = CodecChain::new(Some(Compress::Gzip { level: 6 }), recipients.is_some());
        let (stored, tallies) = chain
            .encode(&tar[..], Vec::new(), recipients, None)
            .map_err(|e| e.into_error())?;
        let key = crate::catalog::layout::file_set(dir, &self.name, &chain.suffix());
        sink.put_bytes(&key, stored.into()).await?;
        Ok(FileSetInfo {
            name: self.name.clone(),
            secret: self.secret,
            codecs: chain.names(),
            object: ObjectInfo::new(key, tallies),
            entries,
        })
    }

    fn archive(&self) -> Result<(Vec<u8>, Vec<FileEntry>)> {
        let mut builder = tar::Builder::new(Vec::new());
        builder.follow_symlinks(false);
        let mut entries = Vec::new();
        let mut total = 0u64;
        for root in &self.paths {
            let mut pending = vec![root.clone()];
            while let Some(path) = pending.pop() {
                let meta = std::fs::symlink_metadata(&path).map_err(|e| {
                    Error::io(
                        format!("cannot read {} (file set {})", path.display(), self.name),
                        e,
                    )
                })?;
                let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
                let name = archive_name(&path);
                let (kind, size, sha256) = if meta.is_dir() {
                    let mut children: Vec<PathBuf> = std::fs::read_dir(&path)
                        .map_err(|e| Error::io(format!("cannot list {}", path.display()), e))?
                        .map(|e| e.map(|e| e.path()))
                        .collect::<std::io::Result<_>>()
                        .map_err(|e| Error::io(format!("cannot list {}", path.display()), e))?;
                    children.sort();
                    children.reverse();
                    pending.extend(children);
                    ("dir", 0, String::new())
                } else if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(&path)
                        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
                    (
                        "symlink",
                        0,
                        sha256_hex(target.as_os_str().as_encoded_bytes()),
                    )
                } else if meta.is_file() {
                    let content = std::fs::read(&path)
                        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
                    total += content.len() as u64;
                    if total > FILES_LIMIT {
                        return Err(Error::config(format!(
                            "file set {} holds more than {} MiB; file sets are for keys, certificates and configuration, back up large trees otherwise",
                            self.name,
                            FILES_LIMIT >> 20
                        )));
                    }
                    ("file", content.len() as u64, sha256_hex(&content))
                } else {
                    tracing::warn!(path = %path.display(), "skipped: not a file, directory or symlink");
                    continue;
                };
                builder
                    .append_path_with_name(&path, &name)
                    .map_err(|e| Error::io(format!("cannot archive {}", path.display()), e))?;
                entries.push(FileEntry {
                    path: path.display().to_string(),
                    kind: kind.into(),
                    mode,
                    size,
                    sha256,
                });
            }
        }
        let tar = builder
            .into_inner()
            .map_err(|e| Error::io("cannot finish a file set's archive", e))?;
        Ok((tar, entries))
    }
}

/// The name inside the archive: the absolute path without its leading `/`.
fn archive_name(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

impl FileSetInfo {
    /// Reads the stored archive, checks its sizes and hashes against the manifest
    /// and returns the tar bytes.
    pub async fn fetch(&self, sink: &dyn Sink, identities: Option<&Identities>) -> Result<Vec<u8>> {
        let stored = sink
            .get_bytes(&self.object.key, FILES_LIMIT as usize * 2)
            .await?;
        let chain = CodecChain::from_names(&self.codecs)?;
        let (tar, tallies) = chain
            .decode(&stored[..], Vec::new(), identities, None)
            .map_err(|e| e.into_error())?;
        self.object.check(&tallies)?;
        Ok(tar)
    }

    /// Every entry whose content or mode differs from the manifest's, in `tar`.
    pub fn differences(&self, tar: &[u8]) -> Result<Vec<String>> {
        let mut found: BTreeMap<String, (u32, String)> = BTreeMap::new();
        let mut archive = tar::Archive::new(tar);
        for entry in archive.entries().map_err(|e| {
            Error::integrity(format!("file set {} is not a tar archive: {e}", self.name))
        })? {
            let mut entry =
                entry.map_err(|e| Error::integrity(format!("file set {}: {e}", self.name)))?;
            let name = format!(
                "/{}",
                entry
                    .path()
                    .map_err(|e| Error::integrity(e.to_string()))?
                    .display()
            );
            let mode = entry.header().mode().unwrap_or(0) & 0o7777;
            let sha = match entry.header().entry_type() {
                tar::EntryType::Regular => {
                    let mut content = Vec::new();
                    entry
                        .read_to_end(&mut content)
                        .map_err(|e| Error::integrity(format!("file set {}: {e}", self.name)))?;
                    sha256_hex(&content)
                }
                tar::EntryType::Symlink => entry
                    .link_name()
                    .ok()
                    .flatten()
                    .map(|t| sha256_hex(t.as_os_str().as_encoded_bytes()))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            found.insert(name.trim_end_matches('/').to_owned(), (mode, sha));
        }
        let mut out = Vec::new();
        for e in &self.entries {
            match found.get(e.path.trim_end_matches('/')) {
                None => out.push(format!("{} is missing", e.path)),
                Some((_, sha)) if *sha != e.sha256 => out.push(format!(
                    "{} has other content (sha256 {sha}, recorded {})",
                    e.path, e.sha256
                )),
                Some((mode, _)) if *mode != e.mode => out.push(format!(
                    "{} has mode {mode:o}, recorded {:o}",
                    e.path, e.mode
                )),
                Some(_) => {}
            }
        }
        Ok(out)
    }

    /// Writes the set under `dir/<name>/`, paths as backed up, with their permission
    /// bits. Set-user-ID, set-group-ID and sticky bits are dropped: ownership is not
    /// restored, so a setuid file would run as whoever restores.
    pub fn unpack(&self, tar: &[u8], dir: &Path) -> Result<PathBuf> {
        if !is_set_name(&self.name) {
            return Err(Error::integrity(format!(
                "the manifest names a file set {:?}, which is not a set name pgproof writes; refusing to restore it",
                self.name
            )));
        }
        let into = dir.join(&self.name);
        std::fs::create_dir_all(&into)
            .map_err(|e| Error::io(format!("cannot create {}", into.display()), e))?;
        let mut archive = tar::Archive::new(tar);
        archive.set_preserve_permissions(false);
        archive.set_preserve_ownerships(false);
        archive.set_overwrite(false);
        // unpack refuses entries that would land outside `into`.
        archive.unpack(&into).map_err(|e| {
            Error::io(
                format!(
                    "cannot write file set {} into {} (existing files are never overwritten)",
                    self.name,
                    into.display()
                ),
                e,
            )
        })?;
        Ok(into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str) -> FileSetInfo {
        FileSetInfo {
            name: name.into(),
            secret: false,
            codecs: Vec::new(),
            object: ObjectInfo {
                key: "app/x/files.tar".into(),
                raw_bytes: 0,
                raw_sha256: String::new(),
                stored_bytes: 0,
                stored_sha256: String::new(),
                stored_chunks: Vec::new(),
            },
            entries: Vec::new(),
        }
    }

    #[test]
    fn hostile_set_names_and_setuid_bits() {
        let mut archive = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o6755);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        archive
            .append_data(&mut header, "bin/sh", &b"#!"[..])
            .unwrap();
        let tar = archive.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        for hostile in ["../../escape", "/abs", "a/b", "", ".."] {
            let e = set(hostile).unpack(&tar, dir.path()).unwrap_err();
            assert_eq!(
                e.kind(),
                crate::error::ErrorKind::Integrity,
                "{hostile:?}: {e}"
            );
        }
        assert!(!dir.path().parent().unwrap().join("escape").exists());
        let into = set("pki").unpack(&tar, dir.path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(into.join("bin/sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755, "set-id bits restored: {mode:o}");
    }
}

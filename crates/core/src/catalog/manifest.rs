//! The manifest: the commit point of a backup and everything needed to trust, find
//! and restore it.
//!
//! An object without a manifest beside it is garbage from a failed run, never a backup.
//! Each manifest names the previous manifest of its database and that manifest's
//! sha256, so a deleted or edited manifest breaks the chain visibly.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::catalog::chunks::ChunkedDump;
use crate::catalog::files::FileSetInfo;
use crate::codec::{Tallies, Tally, sha256_hex};
use crate::error::{Error, Result};
use crate::evidence::Fingerprint;
use crate::evidence::alerts::Alert;
use crate::evidence::database::{DatabaseProperties, RoleInfo};
use crate::evidence::invariant::InvariantResult;
use crate::sink::RetentionLock;

/// Version of the manifest layout written by this crate.
pub const MANIFEST_VERSION: u32 = 1;

/// Manifests are small; anything larger under that name was not written by pgproof.
pub const MANIFEST_LIMIT: usize = 1 << 20;

/// Everything needed to trust, find and restore one backup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version ([`MANIFEST_VERSION`]).
    pub manifest_version: u32,
    /// Sortable id: UTC time of the start plus a random suffix.
    pub backup_id: crate::catalog::BackupId,
    /// The database dumped.
    pub database: String,
    /// The program that wrote the backup.
    pub tool: ToolInfo,
    /// The source server.
    pub source: SourceInfo,
    /// Version of the pg_dump that wrote the archive.
    pub pg_dump_version: String,
    /// The dumper that wrote the archive (`custom`, `plain`, or a library user's own);
    /// restore finds the dumper by this name.
    pub format: String,
    /// Transformations applied after pg_dump, in order (`gzip`, `age`).
    pub codecs: Vec<String>,
    /// Encryption, if any; public keys only.
    pub encryption: Option<EncryptionInfo>,
    /// The stored dump object; of a directory archive, its table of contents.
    pub object: ObjectInfo,
    /// The other files of a directory archive, each its own object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<ObjectInfo>,
    /// A deduplicated directory archive's data files, stored as shared chunks: their
    /// chunk list and sizes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<ChunkedDump>,
    /// The exported snapshot the dump was taken in.
    pub snapshot_id: String,
    /// When the backup started (UTC).
    pub started_at: Timestamp,
    /// When the dump object was complete (UTC).
    pub finished_at: Timestamp,
    /// Wall time from start to the dump object's commit, in milliseconds.
    pub duration_ms: u64,
    /// Wall time of the fingerprint, which runs beside pg_dump, in milliseconds.
    #[serde(default)]
    pub fingerprint_ms: u64,
    /// Content fingerprint taken in the dump's snapshot.
    #[serde(default)]
    pub fingerprint: Option<Fingerprint>,
    /// The database's encoding, locale, owner, settings and comment, which pg_dump
    /// does not carry: restores recreate them and verification compares them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<DatabaseProperties>,
    /// The cluster's roles (no passwords), each marked with whether the database
    /// needs it: restores create the needed ones that are missing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<RoleInfo>,
    /// The application's invariant queries, run in the dump's snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invariants: Vec<InvariantResult>,
    /// The settings values (database, per-role-in-database, per-role), which may hold
    /// secrets, stored encrypted beside the dump when the backup is encrypted; the
    /// lists above are then empty until [`unseal`](crate::catalog::unseal) fills them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<ObjectInfo>,
    /// The object lock the sink put on this backup's objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<RetentionLock>,
    /// Anomalies against the previous backup (a table emptied, rows lost, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<Alert>,
    /// File material stored with the backup (`[[files]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileSetInfo>,
    /// The previous backup of this database at the time this one was taken.
    pub previous: Option<PreviousManifest>,
}

/// The writing program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolInfo {
    /// `pgproof`.
    pub name: String,
    /// Its version.
    pub version: String,
}

impl ToolInfo {
    /// This build.
    pub fn current() -> Self {
        Self {
            name: "pgproof".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// The source server and database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// `server_version`.
    pub server_version: String,
    /// `server_version_num`.
    pub server_version_num: i32,
    /// The database's encoding; restores create the target with the same one.
    pub encoding: String,
}

/// How the object was encrypted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionInfo {
    /// `age-x25519`.
    pub scheme: String,
    /// The recipients' public keys.
    pub recipients: Vec<String>,
}

/// The stored dump object and its hashes on both sides of the codecs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// Key in the sink.
    pub key: String,
    /// Bytes pg_dump wrote.
    pub raw_bytes: u64,
    /// sha256 of what pg_dump wrote (hex).
    pub raw_sha256: String,
    /// Bytes stored.
    pub stored_bytes: u64,
    /// sha256 of the stored object (hex).
    pub stored_sha256: String,
    /// sha256 of each [`CHUNK_BYTES`](crate::codec::CHUNK_BYTES) of the stored object,
    /// for an object of more than one chunk: a restore checks each before it passes a
    /// byte of it on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stored_chunks: Vec<String>,
}

/// Link to the previous manifest of the same database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousManifest {
    /// Its backup id.
    pub backup_id: crate::catalog::BackupId,
    /// sha256 of its manifest.json bytes (hex).
    pub manifest_sha256: String,
}

impl Manifest {
    /// The objects of the dump: the dump object, then a directory archive's files.
    pub fn dump_objects(&self) -> impl Iterator<Item = &ObjectInfo> {
        std::iter::once(&self.object).chain(&self.parts)
    }

    /// Every object the backup stored in its own directory: the dump's, the chunk
    /// list, the file sets', the sealed settings'. (The shared chunks a chunk list
    /// names are not among them.)
    pub fn objects(&self) -> impl Iterator<Item = &ObjectInfo> {
        self.dump_objects()
            .chain(self.chunks.iter().map(|c| &c.list))
            .chain(self.files.iter().map(|f| &f.object))
            .chain(self.sealed.iter())
    }

    /// The dump's size as pg_dump wrote it, all files together.
    pub fn dump_raw_bytes(&self) -> u64 {
        self.dump_objects().map(|o| o.raw_bytes).sum::<u64>()
            + self.chunks.as_ref().map_or(0, |c| c.raw_bytes)
    }

    /// What this backup added to the sink: its dump's objects and, of a deduplicated
    /// dump, its chunk list and the chunks it stored itself.
    pub fn stored_bytes_added(&self) -> u64 {
        self.dump_objects().map(|o| o.stored_bytes).sum::<u64>()
            + self
                .chunks
                .as_ref()
                .map_or(0, |c| c.new_bytes + c.list.stored_bytes)
    }

    /// The dump's size as stored, all files together (a chunked dump's chunks
    /// counted whole, though other backups share them).
    pub fn dump_stored_bytes(&self) -> u64 {
        self.dump_objects().map(|o| o.stored_bytes).sum::<u64>()
            + self
                .chunks
                .as_ref()
                .map_or(0, |c| c.stored_bytes + c.list.stored_bytes)
    }

    /// Checks that the manifest read from `database`/`backup_id` describes that backup
    /// and names only objects under that backup's own prefix: a manifest must never
    /// lead a restore, a copy or a prune to another backup's objects.
    pub fn check_identity(&self, database: &str, backup_id: &str) -> Result<()> {
        let key = manifest_key(database, backup_id);
        if self.database != database || self.backup_id != backup_id {
            return Err(Error::integrity(format!(
                "manifest {key} describes backup {}/{}: it was moved or edited",
                self.database, self.backup_id
            ))
            .with_object(key));
        }
        let dir = format!("{}/", super::layout::backup_dir(database, backup_id));
        if let Some(stray) = self
            .objects()
            .find(|o| !o.key.starts_with(&dir) || crate::sink::validate_key(&o.key).is_err())
        {
            return Err(Error::integrity(format!(
                "manifest {key} names the object {:?}, outside its own backup's {dir}; not trusted",
                stray.key
            ))
            .with_object(key));
        }
        if let Some(set) = self
            .files
            .iter()
            .find(|f| !crate::catalog::files::is_set_name(&f.name))
        {
            return Err(Error::integrity(format!(
                "manifest {key} names a file set {:?}, which is not a name pgproof writes; not trusted",
                set.name
            ))
            .with_object(key));
        }
        Ok(())
    }

    /// The manifest's key in the sink.
    pub fn key(&self) -> String {
        manifest_key(&self.database, &self.backup_id)
    }

    /// The bytes stored for this manifest.
    pub fn to_bytes(&self) -> Result<Bytes> {
        let mut text = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::tool(format!("cannot serialize the manifest: {e}")))?;
        text.push(b'\n');
        Ok(Bytes::from(text))
    }
}

impl ObjectInfo {
    /// The object stored under `key`, with the tallies the codec chain took of it.
    pub fn new(key: String, tallies: Tallies) -> Self {
        Self {
            key,
            raw_bytes: tallies.raw.bytes,
            raw_sha256: tallies.raw.sha256,
            stored_bytes: tallies.stored.bytes,
            stored_sha256: tallies.stored.sha256,
            // One chunk is the object: its own sha256 says it.
            stored_chunks: if tallies.stored.chunks.len() > 1 {
                tallies.stored.chunks
            } else {
                Vec::new()
            },
        }
    }

    /// `stored` (this object, as read from the sink) behind a check of every chunk
    /// before any byte of it is handed on. An object larger than one chunk whose
    /// manifest lists no chunks (one adopted from before signing) is only checked at
    /// its end, as it always was, and the log says so.
    pub fn checked_reader<'a, R: std::io::Read + 'a>(
        &self,
        stored: R,
    ) -> Box<dyn std::io::Read + 'a> {
        if self.stored_chunks.is_empty() && self.stored_bytes > crate::codec::CHUNK_BYTES {
            tracing::warn!(
                object = %self.key,
                "the manifest lists no chunk hashes for this object (a backup from before signing): checked only at its end"
            );
            return Box::new(stored);
        }
        Box::new(crate::codec::CheckedChunks::new(
            stored,
            &self.key,
            self.stored_bytes,
            &self.stored_sha256,
            &self.stored_chunks,
        ))
    }

    /// Checks what a restore read and produced against what the manifest recorded.
    pub fn check(&self, found: &Tallies) -> Result<()> {
        check_tally(
            "stored object",
            &self.key,
            &found.stored,
            self.stored_bytes,
            &self.stored_sha256,
        )?;
        check_tally(
            "dump",
            &self.key,
            &found.raw,
            self.raw_bytes,
            &self.raw_sha256,
        )
    }
}

fn check_tally(what: &str, key: &str, got: &Tally, bytes: u64, sha256: &str) -> Result<()> {
    if got.bytes != bytes || got.sha256 != sha256 {
        return Err(Error::integrity(format!(
            "{what} of {key} does not match its manifest: {} bytes sha256 {} found, {bytes} bytes sha256 {sha256} recorded; the backup was altered or damaged",
            got.bytes, got.sha256
        ))
        .with_object(key));
    }
    Ok(())
}

/// `<database>/<backup-id>/manifest.json`.
pub fn manifest_key(database: &str, backup_id: &str) -> String {
    super::layout::manifest(database, backup_id)
}

/// Refuses database names that cannot be one key segment.
pub fn check_database_name(database: &str) -> Result<()> {
    if database.is_empty() || database.contains('/') || database.starts_with('.') {
        return Err(Error::config(format!(
            "database name {database:?} cannot be stored: pgproof needs names without '/' that do not start with '.'"
        )));
    }
    Ok(())
}

/// A new backup id: `20261123T063151.042Z-3fa9`, sorting by start time (to the
/// millisecond, so `latest` and the manifest chain hold even for back-to-back runs).
pub fn new_backup_id(now: Timestamp) -> crate::catalog::BackupId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = format!(
        "{}-{}-{}",
        now.as_nanosecond(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let suffix = &sha256_hex(seed.as_bytes())[..4];
    crate::catalog::BackupId(format!("{}-{suffix}", now.strftime("%Y%m%dT%H%M%S%.3fZ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_ids_sort_by_time_and_differ() {
        let t1: Timestamp = "2026-11-23T06:31:51Z".parse().unwrap();
        let t2: Timestamp = "2026-11-23T06:31:51.001Z".parse().unwrap();
        let a = new_backup_id(t1);
        let b = new_backup_id(t1);
        let c = new_backup_id(t2);
        assert!(a.starts_with("20261123T063151.000Z-"), "{a}");
        assert_ne!(a, b);
        assert!(a < c && b < c);
    }

    #[test]
    fn database_names_stay_one_segment() {
        assert!(check_database_name("app").is_ok());
        assert!(check_database_name("a/b").is_err());
        assert!(check_database_name(".hidden").is_err());
    }
}

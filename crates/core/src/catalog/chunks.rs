//! Deduplicated dumps: a directory dump whose data files are cut into chunks by their
//! content, each chunk compressed and encrypted on its own and stored once under
//! `.chunks/<db>/`, shared by every backup of the database that lists it.
//!
//! A chunked backup's manifest names its chunk list (`<db>/<id>/dump/chunks.json.zst`,
//! JSON compressed with zstd: not encrypted, so that prune, check and copy read it
//! without a decryption key) with the list's sha256, so the list is as authentic as
//! the signed manifest; the list names,
//! per file, its chunks in order, each with its stored size and stored sha256, which
//! a restore checks before it decrypts a byte, and the file's plaintext size and
//! sha256, checked at its end. The list holds no plaintext hash of any single chunk:
//! a chunk's id is a keyed hash whose key only the backup host has, so someone who
//! reads the bucket cannot test whether a chunk of known content is stored.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::catalog::{Manifest, ObjectInfo, layout};
use crate::codec::sha256_hex;
use crate::error::{Error, ErrorKind, Result};
use crate::sink::{LockMode, ObjectMeta, Sink, SinkExt};

/// Version of the chunk list written by this crate.
pub const CHUNK_LIST_VERSION: u32 = 1;

/// A chunk list larger than this, stored or read, was not written by pgproof (about
/// 1.3 million chunks: over a terabyte of dump at the default chunk size).
pub const CHUNK_LIST_LIMIT: usize = 256 << 20;

/// The largest chunk pgproof cuts (four times the largest average), as pg_dump wrote
/// it; stored, a chunk is at most [`MAX_STORED_CHUNK_BYTES`]. A list naming a larger
/// one was not written by pgproof, and is not believed: a restore holds a few chunks
/// of each file in memory.
pub const MAX_CHUNK_BYTES: u64 = 16 << 20;

/// The largest stored chunk: zstd's worst case on incompressible data (a few bytes a
/// 128 KiB block) and age's 16 bytes a 64 KiB plus its header stay well within this.
pub const MAX_STORED_CHUNK_BYTES: u64 = MAX_CHUNK_BYTES + (1 << 20);

/// zstd level of the chunk list: it is written once a backup, and most of it is hex.
const LIST_ZSTD_LEVEL: i32 = 19;

/// What a manifest says of its chunked files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkedDump {
    /// The chunk list object: `raw_*` the JSON's, `stored_*` the zstd-compressed
    /// object's.
    pub list: ObjectInfo,
    /// Files of the dump stored as chunks.
    pub files: u64,
    /// Their bytes as pg_dump wrote them.
    pub raw_bytes: u64,
    /// Different chunks they use.
    pub chunks: u64,
    /// Stored bytes of those chunks, whoever stored them.
    pub stored_bytes: u64,
    /// Chunks this backup stored (the others were stored before).
    pub new_chunks: u64,
    /// Their stored bytes: what this backup added to the sink, besides its manifest,
    /// table of contents and chunk list.
    pub new_bytes: u64,
}

/// The chunk list: every chunked file of one backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkList {
    /// [`CHUNK_LIST_VERSION`].
    pub version: u32,
    /// The database.
    pub database: String,
    /// The backup.
    pub backup_id: String,
    /// The files, by name.
    pub files: Vec<ChunkedFile>,
    /// On a sink that locks objects: the sink and lock mode the chunks'
    /// `locked_until` dates are about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locks: Option<ChunkLocks>,
}

/// What a chunk list's lock dates are about: a later backup believes them only on
/// the same sink, for a lock no stronger (a date is no promise of compliance mode
/// where governance was set).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkLocks {
    /// The sink, as it describes itself.
    pub sink: String,
    /// The mode every chunk of the list is locked in.
    pub mode: LockMode,
}

/// One file of a directory archive, stored as chunks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkedFile {
    /// Its name in the archive directory.
    pub name: String,
    /// Bytes pg_dump wrote.
    pub raw_bytes: u64,
    /// Their sha256 (hex).
    pub raw_sha256: String,
    /// Its chunks, in order.
    pub chunks: Vec<ChunkRef>,
}

/// One chunk of a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The keyed hash of its plaintext (64 hex digits).
    pub id: String,
    /// Its bytes as pg_dump wrote them.
    pub raw_bytes: u64,
    /// Bytes stored.
    pub stored_bytes: u64,
    /// sha256 of the stored object (hex).
    pub stored_sha256: String,
    /// What the sink listed the stored object with when the backup committed (an
    /// ETag, a file's inode and times): a later backup reuses the chunk only if it is
    /// listed so still, since an object replaced by another of the same size would
    /// otherwise pass for it until read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Until when the stored object is locked, as the backup left it (stored under
    /// its lock, or its lock extended): a later backup asks no extension while that
    /// lasts as long as its own lock. Whole seconds, as S3 keeps them, written as
    /// seconds since the epoch: a list holds a million of them at a terabyte.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "jiff::fmt::serde::timestamp::second::optional"
    )]
    pub locked_until: Option<jiff::Timestamp>,
}

impl ChunkRef {
    /// Its key in the sink.
    pub fn key(&self, database: &str) -> String {
        layout::chunk(database, &self.id, &self.stored_sha256)
    }
}

impl ChunkList {
    /// The list as stored under `key`, and its object's tallies.
    pub fn store_as(&self, key: String) -> Result<(Vec<u8>, ObjectInfo)> {
        let json = serde_json::to_vec(self)
            .map_err(|e| Error::tool(format!("cannot serialize the chunk list: {e}")))?;
        if json.len() > CHUNK_LIST_LIMIT {
            // Written, it could never be read back: every restore would call the
            // backup damaged.
            return Err(Error::config(format!(
                "this dump's chunk list would be {} MiB, more than the {} MiB pgproof reads back: raise dump.dedup_chunk_kib (fewer, larger chunks)",
                json.len() >> 20,
                CHUNK_LIST_LIMIT >> 20
            )));
        }
        let stored = zstd::bulk::compress(&json, LIST_ZSTD_LEVEL)
            .map_err(|e| Error::tool(format!("cannot compress the chunk list: {e}")))?;
        let info = ObjectInfo {
            key,
            raw_bytes: json.len() as u64,
            raw_sha256: sha256_hex(&json),
            stored_bytes: stored.len() as u64,
            stored_sha256: sha256_hex(&stored),
            stored_chunks: Vec::new(),
        };
        Ok((stored, info))
    }

    /// Every different chunk the list uses, by key.
    pub fn chunks(&self) -> BTreeMap<String, &ChunkRef> {
        self.files
            .iter()
            .flat_map(|f| &f.chunks)
            .map(|c| (c.key(&self.database), c))
            .collect()
    }

    /// The files that use each chunk, by key, each file once: for naming many chunks
    /// without a pass over the list for each.
    pub fn users(&self) -> HashMap<String, Vec<&str>> {
        let mut users: HashMap<String, Vec<&str>> = HashMap::new();
        for file in &self.files {
            for chunk in &file.chunks {
                let names = users.entry(chunk.key(&self.database)).or_default();
                if names.last() != Some(&file.name.as_str()) {
                    names.push(&file.name);
                }
            }
        }
        users
    }

    /// Checks what no well-formed list lacks: its own backup's name, chunk ids as
    /// pgproof writes them, file names that are data files of a directory archive,
    /// each once, and chunk sizes that add up. `key` is the list's.
    fn check(&self, database: &str, backup_id: &str, key: &str) -> Result<()> {
        let bad = |what: String| {
            Error::integrity(format!(
                "the chunk list of backup {database}/{backup_id} {what}; not trusted"
            ))
            .with_object(key.to_owned())
        };
        if self.version != CHUNK_LIST_VERSION {
            return Err(bad(format!(
                "has version {}, which this pgproof does not read",
                self.version
            )));
        }
        if self.database != database || self.backup_id != backup_id {
            return Err(bad(format!(
                "describes backup {}/{}",
                self.database, self.backup_id
            )));
        }
        let mut names = BTreeSet::new();
        for file in &self.files {
            if !is_data_file_name(&file.name) || !names.insert(file.name.as_str()) {
                return Err(bad(format!("names the file {:?}", file.name)));
            }
            if let Some(c) = file
                .chunks
                .iter()
                .find(|c| !is_chunk_id(&c.id) || !is_chunk_id(&c.stored_sha256))
            {
                return Err(bad(format!(
                    "names the chunk {:?} stored as {:?}",
                    c.id, c.stored_sha256
                )));
            }
            if let Some(c) = file
                .chunks
                .iter()
                .find(|c| c.raw_bytes > MAX_CHUNK_BYTES || c.stored_bytes > MAX_STORED_CHUNK_BYTES)
            {
                return Err(bad(format!(
                    "names a chunk of {} bytes stored as {}, larger than pgproof cuts",
                    c.raw_bytes, c.stored_bytes
                )));
            }
            let sum: u64 = file.chunks.iter().map(|c| c.raw_bytes).sum();
            if sum != file.raw_bytes {
                return Err(bad(format!(
                    "gives {} {} bytes in chunks of {sum}",
                    file.name, file.raw_bytes
                )));
            }
        }
        Ok(())
    }
}

/// Whether `id` is a chunk id (or a sha256) as pgproof writes it: 64 lowercase hex
/// digits.
pub fn is_chunk_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `name` can be a data file of a directory archive (not a table of contents,
/// nothing a path could be made of).
pub fn is_data_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name != "toc.dat"
        && !name.ends_with(".toc")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The chunk list of a chunked backup, read and checked against its manifest (`None`
/// for any other backup). A list that is missing, altered or malformed is the
/// backup's fault ([`ErrorKind::Integrity`]), named.
pub async fn load_chunk_list(sink: &dyn Sink, manifest: &Manifest) -> Result<Option<ChunkList>> {
    let Some(chunked) = &manifest.chunks else {
        return Ok(None);
    };
    let info = &chunked.list;
    let limit = usize::try_from(info.stored_bytes)
        .unwrap_or(usize::MAX)
        .min(CHUNK_LIST_LIMIT);
    let bytes = sink
        .get_bytes(&info.key, limit.saturating_add(1))
        .await
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::integrity(format!(
                "the chunk list {} that the manifest of {} lists is missing from {}; the backup cannot be restored",
                info.key,
                manifest.backup_id,
                sink.describe()
            ))
            .with_object(info.key.clone()),
            _ => e,
        })?;
    let sha256 = sha256_hex(&bytes);
    if bytes.len() as u64 != info.stored_bytes || sha256 != info.stored_sha256 {
        return Err(Error::integrity(format!(
            "the chunk list {} does not match its manifest: {} bytes sha256 {sha256} found, {} bytes sha256 {} recorded; the backup was altered or damaged",
            info.key,
            bytes.len(),
            info.stored_bytes,
            info.stored_sha256
        ))
        .with_object(info.key.clone()));
    }
    let not_one = |e: String| {
        Error::integrity(format!("the chunk list {} is not one: {e}", info.key))
            .with_object(info.key.clone())
    };
    let limit = usize::try_from(info.raw_bytes)
        .unwrap_or(usize::MAX)
        .min(CHUNK_LIST_LIMIT);
    let json = zstd::bulk::decompress(&bytes, limit).map_err(|e| not_one(e.to_string()))?;
    if json.len() as u64 != info.raw_bytes || sha256_hex(&json) != info.raw_sha256 {
        return Err(not_one(
            "it decompresses to other bytes than recorded".into(),
        ));
    }
    let list: ChunkList = serde_json::from_slice(&json).map_err(|e| not_one(e.to_string()))?;
    list.check(&manifest.database, &manifest.backup_id, &info.key)?;
    Ok(Some(list))
}

/// Every chunk stored for `database`: key → size.
pub async fn stored_chunks(sink: &dyn Sink, database: &str) -> Result<BTreeMap<String, u64>> {
    Ok(listed_chunks(sink, database)
        .await?
        .into_iter()
        .map(|(key, m)| (key, m.size))
        .collect())
}

/// Every chunk stored for `database` as the sink lists it: key → size and identity.
pub async fn listed_chunks(
    sink: &dyn Sink,
    database: &str,
) -> Result<BTreeMap<String, ObjectMeta>> {
    Ok(sink
        .list(&layout::chunks(database))
        .await?
        .into_iter()
        .map(|m| (m.key.clone(), m))
        .collect())
}

/// Whether the object `listed` is the chunk a backup's list recorded as `chunk`: of
/// its size, and, where both the list and the sink give one, of its identity.
pub fn listed_as(chunk: &ChunkRef, listed: &ObjectMeta) -> bool {
    listed.size == chunk.stored_bytes
        && match (&chunk.identity, &listed.identity) {
            (Some(recorded), Some(now)) => recorded == now,
            _ => true,
        }
}

/// Every chunk stored, by database (only `database`'s, if given): key → size. A
/// database's chunks are listed whether or not anything else of it is left.
pub async fn stored_chunks_by_database(
    sink: &dyn Sink,
    database: Option<&str>,
) -> Result<BTreeMap<String, BTreeMap<String, u64>>> {
    let prefix = match database {
        Some(database) => layout::chunks(database),
        None => format!("{}/", layout::CHUNKS_DIR),
    };
    let mut by_database: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for meta in sink.list(&prefix).await? {
        let Some((database, _)) = meta
            .key
            .strip_prefix(&format!("{}/", layout::CHUNKS_DIR))
            .and_then(|rest| rest.split_once('/'))
        else {
            continue;
        };
        // A name no database can have is no database's: nothing pgproof stored.
        if crate::catalog::check_database_name(database).is_err() {
            continue;
        }
        by_database
            .entry(database.to_owned())
            .or_default()
            .insert(meta.key, meta.size);
    }
    Ok(by_database)
}

/// What is wrong with how `chunk` is stored under `key`, going by the listing `stored`
/// (key to size): "is missing", or "has N bytes, not the M listed".
pub fn stored_fault(stored: &BTreeMap<String, u64>, key: &str, chunk: &ChunkRef) -> Option<String> {
    match stored.get(key) {
        None => Some("is missing".to_owned()),
        Some(size) if *size != chunk.stored_bytes => Some(format!(
            "has {size} bytes, not the {} listed",
            chunk.stored_bytes
        )),
        Some(_) => None,
    }
}

/// The first chunk `list` uses that `stored` lacks (or holds at another size), as an
/// integrity error naming it and the files that use it.
pub fn missing_chunk(list: &ChunkList, stored: &BTreeMap<String, u64>) -> Option<Error> {
    let (key, fault) = list
        .chunks()
        .into_iter()
        .find_map(|(key, chunk)| stored_fault(stored, &key, chunk).map(|fault| (key, fault)))?;
    let files = list.users().remove(&key).unwrap_or_default();
    Some(
        Error::integrity(format!(
            "the chunk {key} that backup {}/{} uses (in {}) {fault}; the backup cannot be restored",
            list.database,
            list.backup_id,
            files.join(", ")
        ))
        .with_object(key),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> ChunkList {
        let chunk = |id: char, raw_bytes| ChunkRef {
            id: id.to_string().repeat(64),
            raw_bytes,
            stored_bytes: 10,
            stored_sha256: "0".repeat(64),
            identity: None,
            locked_until: None,
        };
        ChunkList {
            version: CHUNK_LIST_VERSION,
            database: "app".into(),
            backup_id: "1".into(),
            files: vec![ChunkedFile {
                name: "3456.dat".into(),
                raw_bytes: 30,
                raw_sha256: "0".repeat(64),
                chunks: vec![chunk('a', 10), chunk('b', 20)],
            }],
            locks: None,
        }
    }

    #[test]
    fn users_name_each_file_using_a_chunk_once() {
        let mut l = list();
        let mut other = l.files[0].clone();
        other.name = "3457.dat".into();
        // Used twice in one file: named once.
        other.chunks.push(other.chunks[0].clone());
        l.files.push(other);
        let users = l.users();
        assert_eq!(users.len(), l.chunks().len());
        for key in l.chunks().keys() {
            assert_eq!(users[key], ["3456.dat", "3457.dat"], "{key}");
        }
    }

    #[test]
    fn a_list_is_believed_only_as_pgproof_writes_lists() {
        assert!(list().check("app", "1", "k").is_ok());
        let mut forged: Vec<(&str, ChunkList)> = Vec::new();
        for name in ["../x", "toc.dat", "a.toc", ".hidden", "a/b", ""] {
            let mut l = list();
            l.files[0].name = name.into();
            forged.push(("name", l));
        }
        let mut twice = list();
        twice.files.push(twice.files[0].clone());
        forged.push(("a file twice", twice));
        for id in [
            "A".repeat(64),
            "a".repeat(63),
            "../".repeat(21) + "a",
            "g".repeat(64),
        ] {
            let mut l = list();
            l.files[0].chunks[0].id = id.clone();
            forged.push(("id", l));
            let mut l = list();
            l.files[0].chunks[1].stored_sha256 = id;
            forged.push(("sha256", l));
        }
        let mut sizes = list();
        sizes.files[0].raw_bytes = 31;
        forged.push(("sizes", sizes));
        let mut huge = list();
        huge.files[0].chunks[1].raw_bytes = MAX_CHUNK_BYTES + 1;
        huge.files[0].raw_bytes = MAX_CHUNK_BYTES + 11;
        forged.push(("a chunk larger than pgproof cuts", huge));
        let mut huge = list();
        huge.files[0].chunks[1].stored_bytes = MAX_STORED_CHUNK_BYTES + 1;
        forged.push(("a chunk stored larger than pgproof stores", huge));
        let mut version = list();
        version.version = 2;
        forged.push(("version", version));
        for (what, l) in &forged {
            let e = l.check("app", "1", "k").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Integrity, "{what}: {e}");
        }
        assert!(
            list().check("app", "2", "k").is_err(),
            "another backup's list"
        );
        assert!(
            list().check("other", "1", "k").is_err(),
            "another database's list"
        );
    }

    #[test]
    fn a_chunk_missing_or_of_another_size_is_named_with_the_files_using_it() {
        let l = list();
        let mut stored: BTreeMap<String, u64> =
            l.chunks().keys().map(|k| (k.clone(), 10)).collect();
        assert!(missing_chunk(&l, &stored).is_none());
        let first = layout::chunk("app", &"a".repeat(64), &"0".repeat(64));
        stored.insert(first.clone(), 11);
        let e = missing_chunk(&l, &stored).unwrap();
        assert!(
            e.to_string().contains(&first) && e.to_string().contains("3456.dat"),
            "{e}"
        );
        stored.remove(&first);
        let e = missing_chunk(&l, &stored).unwrap();
        assert!(e.to_string().contains("is missing"), "{e}");
    }
}

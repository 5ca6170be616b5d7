//! The catalog index: `<db>/_index.json`, a signed cache of one database's small
//! catalog objects (manifests, verification records, table proofs, pins, tombstones),
//! so that `list` and `status` read one object per database instead of one per backup.
//!
//! It is a cache, never a source. An object is taken from it only when the listing
//! just made shows that very object — the same key, size and
//! [identity](crate::sink::ObjectMeta::identity) — and the key that signed the object
//! is one this reader trusts; the index itself must be signed for its own key by a
//! trusted key, like every catalog object. Anything else is read directly, as without
//! an index. So an index that is stale, missing, damaged, forged or too large changes
//! how fast the catalog is read, never what is in it: an entry for an object that is
//! not listed adds nothing, a listed object the index does not cover is read, and a
//! covered one yields the bytes a trusted key signed for that key.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::catalog::MANIFEST_LIMIT;
use crate::catalog::layout::{self, Kind};
use crate::catalog::trust::{SignedSink, carries_signature};
use crate::error::{Error, ErrorKind, Result};
use crate::sink::{ObjectMeta, Sink, SinkExt};

/// The largest index read: a database of a hundred thousand backups fits; anything
/// larger is refused and its objects are read directly.
pub const INDEX_LIMIT: usize = 256 << 20;

/// The format written; an index of another format is not read.
const INDEX_FORMAT: u32 = 1;

/// What `<db>/_index.json` holds (before its signature).
#[derive(Serialize, Deserialize)]
struct IndexFile {
    format: u32,
    database: String,
    entries: Vec<Entry>,
}

/// One catalog object as it was read, checked and believed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    key: String,
    /// Its stored size, signature included, as listed.
    size: u64,
    /// Its identity, as listed.
    identity: String,
    /// The fingerprint of the key that signed it.
    signer: String,
    /// What the signature covers: the bytes a direct read returns.
    payload: String,
}

impl Entry {
    fn matches(&self, listed: &ObjectMeta) -> bool {
        self.key == listed.key
            && self.size == listed.size
            && listed.identity.as_deref() == Some(self.identity.as_str())
    }
}

/// Whether objects of this kind are kept in the index: what `list` and `status` read
/// for every backup. Leases come and go within a run, so they are read as they are.
fn indexed(key: &str) -> bool {
    matches!(
        Kind::of(key),
        Some(Kind::Manifest | Kind::Record | Kind::TableProof | Kind::Pin | Kind::Tombstone)
    )
}

/// One database's index, during one read of the catalog.
struct DatabaseIndex {
    /// The index object as listed, if there is one.
    listed: Option<ObjectMeta>,
    /// What the index held: `(key, size, identity)`, to tell whether it must be
    /// written again.
    previous: Vec<(String, u64, String)>,
    /// Whether it held an entry that was not taken (wrong database or kind, a signer
    /// not trusted, an object no longer listed as it was): then it is written again.
    refused: bool,
    /// The entries that cover an object as it is listed now.
    covered: HashMap<String, Entry>,
    /// The entries the index is to hold after this read.
    next: BTreeMap<String, Entry>,
    /// How many objects were taken from it.
    taken: usize,
    /// How many objects of an indexed kind the listing holds for it.
    objects: usize,
}

/// The indexes of the databases one catalog read covers.
pub(crate) struct Indexes<'a> {
    sink: &'a SignedSink,
    /// Every listed object of an indexed kind.
    listed: HashMap<String, ObjectMeta>,
    databases: BTreeMap<String, DatabaseIndex>,
}

impl<'a> Indexes<'a> {
    /// Reads the index of every database in `listing` (the listing the catalog read
    /// just made), keeping each entry that covers an object as listed.
    pub(crate) async fn open(sink: &'a SignedSink, listing: &[ObjectMeta]) -> Self {
        let mut listed = HashMap::new();
        let mut databases: BTreeMap<String, DatabaseIndex> = BTreeMap::new();
        for meta in listing {
            let Some(db) = meta.key.split('/').next() else {
                continue;
            };
            if layout::in_no_database(&meta.key) {
                continue;
            }
            let part = databases
                .entry(db.to_owned())
                .or_insert_with(|| DatabaseIndex {
                    listed: None,
                    previous: Vec::new(),
                    refused: false,
                    covered: HashMap::new(),
                    next: BTreeMap::new(),
                    taken: 0,
                    objects: 0,
                });
            if Kind::of(&meta.key) == Some(Kind::Index) {
                part.listed = Some(meta.clone());
            } else if indexed(&meta.key) {
                part.objects += 1;
                listed.insert(meta.key.clone(), meta.clone());
            }
        }
        let trusted: HashSet<String> = sink
            .keys()
            .trusted()
            .iter()
            .map(|k| k.fingerprint())
            .collect();
        for (db, part) in &mut databases {
            let Some(meta) = &part.listed else { continue };
            // Nothing listed for it to cover: not worth a byte (planted indexes of
            // made-up databases must not cost a download each).
            if part.objects == 0 {
                continue;
            }
            let file = match read_index(sink, db, meta, index_limit(part.objects)).await {
                Ok(file) => file,
                Err(e) => {
                    tracing::warn!(
                        index = %meta.key,
                        problem = %e,
                        "catalog index not used; every object is read directly"
                    );
                    continue;
                }
            };
            let prefix = layout::database(db);
            for entry in file.entries {
                part.previous
                    .push((entry.key.clone(), entry.size, entry.identity.clone()));
                let believed = entry.key.starts_with(&prefix)
                    && indexed(&entry.key)
                    && trusted.contains(&entry.signer)
                    && listed.get(&entry.key).is_some_and(|m| entry.matches(m));
                if believed {
                    part.covered.insert(entry.key.clone(), entry);
                } else {
                    part.refused = true;
                }
            }
        }
        Self {
            sink,
            listed,
            databases,
        }
    }

    /// The payload of the catalog object `key` if an entry covers the object as
    /// listed, as a direct read would return it; the entry is kept for the next index.
    pub(crate) fn take(&mut self, key: &str) -> Option<Vec<u8>> {
        let db = key.split('/').next().unwrap_or_default();
        let part = self.databases.get_mut(db)?;
        let entry = part.covered.remove(key)?;
        part.taken += 1;
        let payload = entry.payload.clone().into_bytes();
        part.next.insert(entry.key.clone(), entry);
        Some(payload)
    }

    /// Reads the catalog object `key` and checks it, as [`SignedSink`] does; with the
    /// entry the next index is to hold for it, if it can hold one.
    pub(crate) async fn read(&self, key: &str) -> (Result<Vec<u8>>, Option<Entry>) {
        let stored = match self.sink.inner().get_bytes(key, MANIFEST_LIMIT).await {
            Ok(stored) => stored,
            Err(e) => return (Err(e), None),
        };
        let size = stored.len() as u64;
        let signed_itself = carries_signature(&stored);
        match self.sink.open_stored(key, stored).await {
            Ok((payload, signer)) => {
                let entry = self
                    .listed
                    .get(key)
                    // Changed since the listing: what was read is not what was listed.
                    .filter(|meta| meta.size == size && signed_itself)
                    .and_then(|meta| {
                        Some(Entry {
                            key: key.to_owned(),
                            size,
                            identity: meta.identity.clone()?,
                            signer: signer.fingerprint,
                            payload: String::from_utf8(payload.clone()).ok()?,
                        })
                    });
                (Ok(payload), entry)
            }
            Err(e) => (Err(e), None),
        }
    }

    /// Keeps `entry` for the next index of its database.
    pub(crate) fn keep(&mut self, entry: Entry) {
        let db = entry.key.split('/').next().unwrap_or_default();
        if let Some(part) = self.databases.get_mut(db) {
            part.next.insert(entry.key.clone(), entry);
        }
    }

    /// Writes again each index that no longer matches the objects just read, if this
    /// host signs. A failure is a warning: the index only makes reads faster.
    pub(crate) async fn refresh(self) {
        let signs = self.sink.keys().signer().is_some();
        for (db, part) in self.databases {
            tracing::debug!(
                database = %db,
                from_index = part.taken,
                read = part.next.len().saturating_sub(part.taken),
                "catalog objects taken from the catalog index"
            );
            if !signs {
                continue;
            }
            let now: Vec<(&str, u64, &str)> = part
                .next
                .values()
                .map(|e| (e.key.as_str(), e.size, e.identity.as_str()))
                .collect();
            let before: Vec<(&str, u64, &str)> = part
                .previous
                .iter()
                .map(|(k, s, i)| (k.as_str(), *s, i.as_str()))
                .collect();
            let current = part.listed.is_some() && !part.refused && now == before;
            if current || (part.listed.is_none() && now.is_empty()) {
                continue;
            }
            if let Err(e) = write_index(self.sink, &db, part.listed.is_some(), part.next).await {
                if e.kind() == ErrorKind::AlreadyExists {
                    tracing::debug!(database = %db, "catalog index written by another run meanwhile");
                } else {
                    tracing::warn!(
                        database = %db,
                        problem = %e,
                        "cannot write the catalog index; the next list reads every object again"
                    );
                }
            }
        }
    }
}

/// Reads and checks the index `meta` of `db`.
/// The most an index covering `objects` listed objects can take: each entry holds one
/// manifest or record (well under [`ENTRY_ROOM`]), within [`INDEX_LIMIT`].
fn index_limit(objects: usize) -> u64 {
    ((1 << 20) + objects.saturating_mul(ENTRY_ROOM)).min(INDEX_LIMIT) as u64
}

/// Room for one entry when bounding an index's size before reading it.
const ENTRY_ROOM: usize = 64 << 10;

async fn read_index(
    sink: &SignedSink,
    db: &str,
    meta: &ObjectMeta,
    limit: u64,
) -> Result<IndexFile> {
    if meta.size > limit {
        return Err(Error::integrity(format!(
            "catalog index {} is {} bytes, more than an index of this database's listed objects can be ({limit} bytes; never more than {} MiB)",
            meta.key,
            meta.size,
            INDEX_LIMIT >> 20,
        ))
        .with_object(&meta.key));
    }
    let (payload, _) = sink.get_signed(&meta.key).await?;
    let file: IndexFile = serde_json::from_slice(&payload).map_err(|e| {
        Error::integrity(format!("catalog index {} is not readable: {e}", meta.key))
            .with_object(&meta.key)
    })?;
    if file.format != INDEX_FORMAT {
        return Err(Error::integrity(format!(
            "catalog index {} is of format {}, this pgproof reads format {INDEX_FORMAT}",
            meta.key, file.format
        ))
        .with_object(&meta.key));
    }
    if file.database != db {
        return Err(Error::integrity(format!(
            "catalog index {} names the database {:?}",
            meta.key,
            crate::error::printable(&file.database)
        ))
        .with_object(&meta.key));
    }
    Ok(file)
}

/// Replaces the index of `db` by one holding `entries`: the old one deleted, the new
/// one stored create-only (a run refreshing it at the same time wins or loses whole).
async fn write_index(
    sink: &SignedSink,
    db: &str,
    exists: bool,
    entries: BTreeMap<String, Entry>,
) -> Result<()> {
    let key = layout::index(db);
    let file = IndexFile {
        format: INDEX_FORMAT,
        database: db.to_owned(),
        entries: entries.into_values().collect(),
    };
    let body = serde_json::to_vec(&file)
        .map_err(|e| Error::tool(format!("cannot serialize the catalog index: {e}")))?;
    // Room for the signature: an index no reader would take is not worth writing.
    if body.len() + 4096 > INDEX_LIMIT {
        return Err(Error::config(format!(
            "the catalog index of {db} would be {} bytes, more than the {} MiB pgproof reads",
            body.len(),
            INDEX_LIMIT >> 20
        )));
    }
    if exists {
        match sink.delete(&key).await {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    // Nothing left to cache (every backup gone): no index either.
    if file.entries.is_empty() {
        return Ok(());
    }
    sink.put_bytes(&key, Bytes::from(body)).await.map(|_| ())
}

//! Copy: committed backups to a second sink, as stored (no decryption): every object
//! streamed and its sha256 checked against the manifest on the way, the manifest
//! last, so a half-copied backup is never listed at the destination. Idempotent: a
//! backup whose manifest is already there is skipped; an object left by an
//! interrupted copy is checked and replaced if it differs. Verification records and
//! prune's tombstones go along, so the second catalog checks and verifies like the
//! first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::catalog::chunks;
use crate::catalog::layout::{self, Kind};
use crate::catalog::{CatalogEntry, DatabaseInventory, Inventory, MANIFEST_LIMIT};
use crate::error::{Error, ErrorKind, Result};
use crate::sink::{Sink, SinkExt};

/// What a copy did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CopyOutcome {
    /// Backups copied, as `<db>/<id>`.
    pub copied: Vec<String>,
    /// Backups already at the destination.
    pub already_there: Vec<String>,
    /// Bytes streamed.
    pub bytes: u64,
    /// Backups that could not be copied, with why (the others were copied).
    pub failed: Vec<String>,
    /// Whether a failure was about a backup's bytes (integrity) rather than the
    /// environment.
    #[serde(skip)]
    pub integrity_failure: bool,
}

impl CopyOutcome {
    /// `Err` naming the failed backups, if any.
    pub fn into_result(self) -> Result<Self> {
        if self.failed.is_empty() {
            return Ok(self);
        }
        let message = format!(
            "{} backups could not be copied: {}",
            self.failed.len(),
            self.failed.join("; ")
        );
        Err(if self.integrity_failure {
            Error::integrity(message)
        } else {
            Error::tool(message)
        })
    }
}

/// A copy from one sink to another, configured by its builder methods and done by
/// [`run`](CopyBackups::run).
#[must_use = "a CopyBackups does nothing until run"]
pub struct CopyBackups {
    from: Arc<dyn Sink>,
    to: Arc<dyn Sink>,
    database: Option<String>,
    only: Option<String>,
    /// Chunks whose lock this run extended at the destination (or stored there).
    locked: Mutex<std::collections::HashSet<String>>,
    /// Chunks at the destination taken as they are without reading them (key to
    /// size): those its newest backup's signed list names, and those this run stored
    /// or read there.
    vouched: Mutex<HashMap<String, u64>>,
}

impl CopyBackups {
    /// Every committed backup of `from` into `to`.
    pub fn new(from: Arc<dyn Sink>, to: Arc<dyn Sink>) -> Self {
        Self {
            from,
            to,
            database: None,
            only: None,
            locked: Mutex::default(),
            vouched: Mutex::default(),
        }
    }

    /// Only this database's backups.
    pub fn database(mut self, database: Option<String>) -> Self {
        self.database = database;
        self
    }

    /// Only this backup id, with the backups before it in its database's chain.
    pub fn backup(mut self, backup_id: Option<String>) -> Self {
        self.only = backup_id;
        self
    }

    /// Copies, oldest first, so the destination's chain grows in order.
    pub async fn run(self) -> Result<CopyOutcome> {
        let source = Inventory::load(&*self.from, self.database.as_deref()).await?;
        let there = Inventory::load(&*self.to, self.database.as_deref()).await?;
        let mut outcome = CopyOutcome::default();
        for (database, part) in &source.databases {
            let present = there.databases.get(database);
            self.vouch_for_head(present).await?;
            // Tombstones keep the destination's chain checkable across pruned backups.
            for id in part.tombstones.keys() {
                // Never over a backup that is live at the destination.
                if present.is_some_and(|p| {
                    p.tombstones.contains_key(id) || p.backups.iter().any(|b| &b.backup_id == id)
                }) {
                    continue;
                }
                let key = layout::tombstone(database, id);
                let body = self.from.get_bytes(&key, MANIFEST_LIMIT).await?;
                put_new(&*self.to, &key, body).await?;
            }
            // One backup comes with the chain before it, so the destination's catalog
            // has no gap that check would (rightly) report.
            if let Some(only) = &self.only
                && !part.backups.iter().any(|b| &b.backup_id == only)
            {
                continue;
            }
            for entry in &part.backups {
                if self
                    .only
                    .as_ref()
                    .is_some_and(|only| entry.backup_id.as_str() > only.as_str())
                {
                    continue;
                }
                let name = layout::backup_dir(database, &entry.backup_id);
                let at_destination =
                    present.and_then(|p| p.backups.iter().find(|b| b.backup_id == entry.backup_id));
                match at_destination {
                    // A manifest planted at the destination is not the backup: it is
                    // no reason to skip the copy, and it cannot be overwritten.
                    Some(dest)
                        if dest.manifest.is_err()
                            || dest.manifest_sha256 != entry.manifest_sha256 =>
                    {
                        outcome.integrity_failure = true;
                        outcome.failed.push(format!(
                            "{name}: the destination holds another manifest under this backup's key (not trusted, or not this backup's); remove it there, then copy again"
                        ));
                    }
                    Some(dest) => {
                        self.copy_records(entry, dest.objects.iter().map(|o| o.key.as_str()))
                            .await?;
                        outcome.already_there.push(name);
                    }
                    // One backup that cannot be copied does not keep the others back.
                    None => match self.copy_backup(database, entry).await {
                        Ok(bytes) => {
                            outcome.bytes += bytes;
                            outcome.copied.push(name);
                        }
                        Err(e) => {
                            tracing::error!(backup = %name, error = %e, "not copied");
                            outcome.integrity_failure |= e.kind() == ErrorKind::Integrity;
                            outcome.failed.push(format!("{name}: {e}"));
                        }
                    },
                }
            }
        }
        if let Some(only) = &self.only
            && outcome.copied.is_empty()
            && outcome.already_there.is_empty()
            && outcome.failed.is_empty()
        {
            return Err(Error::not_found(format!(
                "no committed backup {only} in {}",
                self.from.describe()
            )));
        }
        Ok(outcome)
    }

    async fn copy_backup(&self, database: &str, entry: &CatalogEntry) -> Result<u64> {
        let manifest = entry.manifest.as_ref().map_err(|damage| {
            Error::integrity(format!(
                "backup {database}/{} cannot be copied: {damage}",
                entry.backup_id
            ))
        })?;
        let mut bytes = 0;
        // The backup's own objects first: from then on a prune at the destination sees
        // a backup under way and sweeps none of the chunks it is about to use.
        for object in manifest.objects() {
            bytes += self
                .copy_checked(&object.key, object.stored_bytes, &object.stored_sha256)
                .await?;
        }
        if let Some(list) = chunks::load_chunk_list(&*self.from, manifest).await? {
            // Twice: what a sweep that started before this backup's objects landed
            // deleted meanwhile is copied again before the manifest names it.
            for pass in 0..2 {
                bytes += self.copy_chunks(database, entry, &list, pass == 0).await?;
            }
        }
        // The manifest last: from now on the backup is listed at the destination.
        let key = layout::manifest(database, &entry.backup_id);
        let body = self.from.get_bytes(&key, MANIFEST_LIMIT).await?;
        if crate::codec::sha256_hex(&body) != entry.manifest_sha256 {
            return Err(Error::integrity(format!(
                "manifest {key} changed while it was being copied; copy again"
            )));
        }
        put_new(&*self.to, &key, body).await?;
        self.copy_records(entry, std::iter::empty()).await?;
        tracing::info!(backup = %entry.backup_id, database, bytes, "copied");
        Ok(bytes)
    }

    /// Learns the chunks the destination's newest trusted backup of a database lists:
    /// taken as they are (what its signature vouches for, and never swept, since
    /// prune keeps a database's newest backup), as a backup reuses its predecessor's.
    async fn vouch_for_head(&self, present: Option<&DatabaseInventory>) -> Result<()> {
        let Some(Ok(head)) = present.and_then(|p| p.backups.last()).map(|b| &b.manifest) else {
            return Ok(());
        };
        match chunks::load_chunk_list(&*self.to, head).await {
            Ok(Some(list)) => {
                let mut vouched = self.vouched()?;
                for (key, chunk) in list.chunks() {
                    vouched.insert(key, chunk.stored_bytes);
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            // Only costs reading what is there.
            Err(e) if e.about_backup() => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn vouched(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, u64>>> {
        self.vouched
            .lock()
            .map_err(|_| Error::tool("a copy's chunk set was poisoned"))
    }

    /// The chunks of `list` the destination lacks. One it has at the listed size is
    /// taken as it is if vouched for (see `vouched`), read and kept or replaced
    /// otherwise (an object planted there at a chunk's key and size is not the
    /// chunk); one at another size is never replaced, since backups there may use
    /// it. On a destination that locks objects, with `extend`, a chunk's lock is
    /// extended to this copy's.
    async fn copy_chunks(
        &self,
        database: &str,
        entry: &CatalogEntry,
        list: &chunks::ChunkList,
        extend: bool,
    ) -> Result<u64> {
        let there = chunks::stored_chunks(&*self.to, database).await?;
        let mut bytes = 0;
        for (key, chunk) in list.chunks() {
            match there.get(&key) {
                Some(size) if *size == chunk.stored_bytes => {
                    let (size, sha256) = (chunk.stored_bytes, &chunk.stored_sha256);
                    let vouched = self.vouched()?.get(&key) == Some(&size);
                    if !vouched {
                        bytes += self.copy_checked(&key, size, sha256).await?;
                        self.vouched()?.insert(key.clone(), size);
                    }
                    let first = self
                        .locked
                        .lock()
                        .map_err(|_| Error::tool("a copy's lock set was poisoned"))?
                        .insert(key.clone());
                    if extend
                        && first
                        && let Some(lock) = self.to.retention()
                    {
                        self.to.extend_retention(&key, &lock).await?;
                    }
                }
                Some(size) => {
                    return Err(Error::integrity(format!(
                        "the chunk {key} in {} has {size} bytes, not the {} backup {database}/{} lists; run check --read-data there",
                        self.to.describe(),
                        chunk.stored_bytes,
                        entry.backup_id
                    ))
                    .with_object(key));
                }
                None => {
                    // Not listed there, so no probe first; one stored since the
                    // listing (another copy) is checked like any object found there.
                    let (size, sha256) = (chunk.stored_bytes, &chunk.stored_sha256);
                    bytes += match self.transfer(&key, size, sha256).await {
                        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                            self.copy_checked(&key, size, sha256).await?
                        }
                        copied => copied?,
                    };
                    self.vouched()?.insert(key.clone(), size);
                    // Stored by this run: it carries the destination's lock.
                    if let Ok(mut locked) = self.locked.lock() {
                        locked.insert(key.clone());
                    }
                }
            }
        }
        Ok(bytes)
    }

    /// Verification records and table proofs the destination lacks.
    async fn copy_records<'a>(
        &self,
        entry: &CatalogEntry,
        present: impl Iterator<Item = &'a str>,
    ) -> Result<()> {
        let present: Vec<&str> = present.collect();
        for object in &entry.objects {
            if !matches!(Kind::of(&object.key), Some(Kind::Record | Kind::TableProof))
                || present.contains(&object.key.as_str())
            {
                continue;
            }
            // A record no trusted key signed is not copied, and stops nothing.
            let body = match self.from.get_bytes(&object.key, MANIFEST_LIMIT).await {
                Ok(body) => body,
                Err(e) if matches!(e.kind(), ErrorKind::Integrity | ErrorKind::NotFound) => {
                    tracing::warn!(record = %object.key, problem = %e, "not copied");
                    continue;
                }
                Err(e) => return Err(e),
            };
            put_new(&*self.to, &object.key, body).await?;
        }
        Ok(())
    }

    /// Streams one object, hashing on the way; an object an interrupted copy left at
    /// the destination is kept if it is the same, replaced if not.
    async fn copy_checked(&self, key: &str, size: u64, sha256: &str) -> Result<u64> {
        if let Ok(existing) = self.to.get(key).await {
            let (got_sha, got_size) = hash_stream(existing).await?;
            if got_sha == sha256 && got_size == size {
                return Ok(0);
            }
            self.to.delete(key).await?;
        }
        self.transfer(key, size, sha256).await
    }

    /// Streams one object the destination lacks, hashing on the way; one that is not
    /// what its manifest recorded is deleted there again.
    async fn transfer(&self, key: &str, size: u64, sha256: &str) -> Result<u64> {
        let hasher = Arc::new(Mutex::new((Sha256::new(), 0u64)));
        let tap = hasher.clone();
        let (key_owned, from) = (key.to_owned(), self.from.describe());
        let body = self
            .from
            .get(key)
            .await?
            .map(move |chunk| {
                if let Ok(bytes) = &chunk
                    && let Ok(mut h) = tap.lock()
                {
                    h.0.update(bytes);
                    h.1 += bytes.len() as u64;
                    // Longer than recorded: not the object, and not worth sending on.
                    if h.1 > size {
                        return Err(Error::integrity(format!(
                            "{key_owned} in {from} is longer than the {size} bytes its manifest recorded; it was not copied"
                        ))
                        .with_object(key_owned.clone()));
                    }
                }
                chunk
            })
            .boxed();
        self.to.put(key, body).await?;
        let (got_sha, got_size) = {
            let h = hasher
                .lock()
                .map_err(|_| Error::tool("a copy's hash was poisoned"))?;
            (hex::encode(h.0.clone().finalize()), h.1)
        };
        if got_sha != sha256 || got_size != size {
            let _ = self.to.delete(key).await;
            return Err(Error::integrity(format!(
                "{key} in {} is not what its manifest recorded ({got_size} bytes, sha256 {got_sha}; recorded {size}, {sha256}); it was not copied",
                self.from.describe()
            ))
            .with_object(key.to_owned()));
        }
        Ok(got_size)
    }
}

async fn hash_stream(mut stream: crate::sink::ByteStream) -> Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// A create-only put that treats "already there" as done.
async fn put_new(sink: &dyn Sink, key: &str, body: Vec<u8>) -> Result<()> {
    match sink.put_bytes(key, body.into()).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

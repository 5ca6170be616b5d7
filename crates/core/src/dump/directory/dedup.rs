//! Deduplication of a directory dump: each data file pg_dump writes is cut into
//! chunks by its content (FastCDC), so an unchanged stretch of a table cuts into the
//! same chunks night after night wherever rows were inserted or deleted around it.
//! Each chunk is compressed and encrypted on its own and stored once, create-only,
//! under `.chunks/<db>/<id>-<sha256>`, where the id is a keyed hash of its plaintext
//! and the sha256 that of the stored bytes.
//!
//! Why keyed: an id that anyone could compute (a plain sha256) would let whoever can
//! list the bucket test whether a chunk of known content is stored. The key is a
//! secret of the backup host, derived from its signing key, and it also seeds the
//! chunker's gear table, so that where a file is cut does not follow from its content
//! alone either.
//!
//! Why a chunk already stored is reused only when the previous committed backup's
//! signed chunk list vouches for it: its list gives the chunk's stored size and
//! sha256, which this backup's list must carry for a restore to check it, and a
//! stored object nobody vouched for could be anything. A chunk's key ends with the
//! sha256 of its stored bytes (`<id>-<sha256>`), so a chunk stored again (after a
//! sweep, or when no list could be reused) is another encryption under another key:
//! nothing is overwritten, one key always names one content, and a key found taken
//! when a chunk is stored holds that chunk (a retried put) or someone else's write,
//! never another backup's chunk. And only when the
//! previous backup went through the same codecs to the same recipients: a chunk
//! stored unencrypted, or for a key since rotated away, is never part of a backup
//! that is to be encrypted for this one's.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use fastcdc::v2020::{Normalization, StreamCDC};
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::catalog::chunks::{
    CHUNK_LIST_VERSION, ChunkList, ChunkLocks, ChunkRef, ChunkedDump, ChunkedFile, listed_as,
    listed_chunks, load_chunk_list,
};
use crate::catalog::{self, BackupRef, SigningKey, layout};
use crate::codec::{CodecChain, Progress, Recipients};
use crate::error::{Error, ErrorKind, Result};
use crate::sink::{RetentionLock, Sink, SinkExt};

/// The default average chunk: 1 MiB (chunks run from a quarter of it to four times it).
pub const DEFAULT_AVERAGE_CHUNK: u32 = 1 << 20;

/// Chunk sizes pgproof accepts, on average.
pub const AVERAGE_CHUNK_RANGE: std::ops::RangeInclusive<u32> = (4 << 10)..=(4 << 20);

// The chunk list refuses chunks larger than the largest this cuts.
const _: () =
    assert!(*AVERAGE_CHUNK_RANGE.end() as u64 * 4 <= crate::catalog::chunks::MAX_CHUNK_BYTES);

/// Sink requests a deduplicated dump keeps in flight at once (chunk uploads and lock
/// extensions), across all its files: one at a time, a cloud store's latency (tens of
/// milliseconds a request) would bound a night's backup at a few dozen chunks a
/// second; more at once would hold more encoded chunks in memory (at most this many,
/// each at most four times the average chunk).
const REQUESTS_IN_FLIGHT: u32 = 8;

/// The host secret that keys chunk ids.
pub struct ChunkIds {
    key: zeroize::Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for ChunkIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkIds(secret)")
    }
}

impl ChunkIds {
    /// Ids keyed by `secret` (32 bytes nobody else has).
    pub fn new(secret: zeroize::Zeroizing<[u8; 32]>) -> Self {
        Self { key: secret }
    }

    /// Ids keyed by a secret derived from the host's signing key: every backup host
    /// signs, so dedup needs no second key file; a new signing key starts new chunks.
    pub fn from_signing_key(key: &SigningKey) -> Result<Self> {
        Ok(Self::new(key.derive_secret("pgproof chunk ids v1")?))
    }

    fn mac(&self, data: &[u8]) -> [u8; 32] {
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&*self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// The id of a chunk whose plaintext is `data`.
    pub fn id(&self, data: &[u8]) -> String {
        hex::encode(self.mac(data))
    }

    fn gear_seed(&self) -> u64 {
        let mac = self.mac(b"pgproof gear seed v1");
        u64::from_le_bytes([
            mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], mac[6], mac[7],
        ])
    }
}

/// The date a reused chunk's lock is extended to: `wanted` (this backup's lock) and
/// a week more, plus up to six days by the chunk's id so that the chunks extended on
/// one night do not all fall due again on one night; never more ahead than the lock
/// is long (a one-day lock is extended a day ahead). A chunk no backup uses any more
/// stays locked (and billed) that much longer; in exchange a terabyte of 1 MiB chunks
/// asks about 100,000 extensions a night, not a million.
fn locked_ahead(wanted: &RetentionLock, started: jiff::Timestamp, id: &str) -> jiff::Timestamp {
    let spread = id
        .get(..2)
        .and_then(|h| u8::from_str_radix(h, 16).ok())
        .map_or(0, |b| i64::from(b % 7));
    let length = wanted.retain_until.duration_since(started);
    let ahead = jiff::SignedDuration::from_hours(24 * (7 + spread))
        .min(length)
        .max(jiff::SignedDuration::ZERO);
    wanted.retain_until + ahead
}

/// `at` without its fraction of a second: what S3 keeps of a lock's date, and what a
/// chunk list records.
fn whole_seconds(at: jiff::Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_second(at.as_second()).unwrap_or(at)
}

/// Whether a previous chunk list's lock dates (`locks`) hold for a backup that wants
/// `wanted` on the sink described as `sink`: only on the sink they were set on, for a
/// mode no weaker; otherwise every chunk reused is extended (a list copied from
/// another sink, one written before lists recorded locks, governance turned into
/// compliance).
fn locks_believed(locks: Option<&ChunkLocks>, sink: &str, wanted: Option<&RetentionLock>) -> bool {
    match (locks, wanted) {
        (Some(locks), Some(wanted)) => locks.sink == sink && locks.mode.covers(wanted.mode),
        _ => false,
    }
}

/// How a deduplicated dump cuts its files.
#[derive(Clone, Debug)]
pub struct Chunking {
    /// The average chunk, in bytes.
    pub average: u32,
    /// The keyed ids.
    pub ids: Arc<ChunkIds>,
}

impl Chunking {
    /// Chunks of `average` bytes on average (within [`AVERAGE_CHUNK_RANGE`]).
    pub fn new(average: u32, ids: Arc<ChunkIds>) -> Result<Self> {
        if !AVERAGE_CHUNK_RANGE.contains(&average) {
            return Err(Error::config(format!(
                "an average chunk of {average} bytes is out of range: use {} KiB to {} KiB",
                AVERAGE_CHUNK_RANGE.start() >> 10,
                AVERAGE_CHUNK_RANGE.end() >> 10
            )));
        }
        Ok(Self { average, ids })
    }
}

/// The chunks of one dump under way: those it may reuse, those it stored, and the
/// files it cut.
pub(super) struct ChunkStore {
    sink: Arc<dyn Sink>,
    backup: BackupRef,
    /// Where the chunk list goes: in the archive's directory.
    list_key: String,
    /// The object that shows prune a dump under way.
    pending_key: String,
    chunking: Chunking,
    runtime: tokio::runtime::Handle,
    /// id → a stored chunk this dump may list: vouched for by the previous backup's
    /// list and present, or stored by this dump.
    known: Mutex<HashMap<String, ChunkRef>>,
    /// Keys this dump stored and their stored sizes: an aborted dump deletes them.
    stored: Arc<Mutex<Vec<(String, u64)>>>,
    /// Set by [`abort`](Self::abort): a chunk stored after it deletes itself.
    aborted: Arc<AtomicBool>,
    /// One permit a request in flight; all of them once every request has ended.
    in_flight: Arc<Semaphore>,
    /// The first request in flight that failed: it fails the dump.
    failure: Arc<Mutex<Option<Error>>>,
    /// The lock the sink puts on what it stores, if any: each chunk this dump lists
    /// is locked at least as long.
    wanted_lock: Option<RetentionLock>,
    /// When this dump started: a chunk's lock is extended ahead by at most the
    /// length of the lock itself.
    started: jiff::Timestamp,
    files: Mutex<Vec<ChunkedFile>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ChunkStore {
    pub(super) fn new(
        sink: Arc<dyn Sink>,
        backup: BackupRef,
        archive_dir: &str,
        chunking: Chunking,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        let wanted_lock = sink.retention();
        Self {
            sink,
            backup,
            list_key: layout::chunk_list(archive_dir),
            pending_key: layout::chunks_pending(archive_dir),
            chunking,
            runtime,
            known: Mutex::default(),
            stored: Arc::default(),
            aborted: Arc::default(),
            in_flight: Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT as usize)),
            failure: Arc::default(),
            wanted_lock,
            started: jiff::Timestamp::now(),
            files: Mutex::default(),
        }
    }

    /// Marks the dump under way for prune, then learns the chunks the previous
    /// committed backup lists that are still stored, if it was encoded as this one
    /// is (`chain`, to `recipients`). A previous backup that cannot be read only costs
    /// deduplication, never the backup (check and verify report it); a sink that
    /// cannot be listed fails it.
    pub(super) async fn begin(
        &self,
        chain: &CodecChain,
        recipients: Option<&Recipients>,
    ) -> Result<()> {
        if recipients.is_none() {
            // Unencrypted, a chunk is the same bytes each time it is stored, under the
            // same key: one planted there ahead of it, or deleted by a dump or sweep
            // that owned it, would be taken for this backup's own.
            return Err(Error::config(
                "deduplicated dumps ([dump] dedup = true) are encrypted: set [encryption] recipients, or dedup = false",
            ));
        }
        let stored = self.sink.put_bytes(&self.pending_key, Bytes::new()).await?;
        lock(&self.stored).push((self.pending_key.clone(), stored));
        if self.aborted.load(Ordering::SeqCst) {
            self.abort().await;
            return Err(Error::tool("the dump was stopped"));
        }
        let database = &self.backup.database;
        let Some(previous) = catalog::previous_link(&*self.sink, database).await? else {
            return Ok(());
        };
        let link = BackupRef {
            database: database.clone(),
            backup_id: previous.backup_id,
        };
        let list = match catalog::load_manifest(&*self.sink, &link).await {
            Ok((manifest, _)) => {
                let sorted = |mut keys: Vec<String>| {
                    keys.sort();
                    keys
                };
                let encoded_alike = manifest.codecs == chain.names()
                    && manifest
                        .encryption
                        .as_ref()
                        .map(|e| sorted(e.recipients.clone()))
                        == recipients.map(|r| sorted(r.public_keys()));
                if !encoded_alike {
                    tracing::info!(previous = %link.backup_id, "the previous backup was compressed or encrypted otherwise: every chunk is stored anew");
                    return Ok(());
                }
                load_chunk_list(&*self.sink, &manifest).await
            }
            Err(e) => Err(e),
        };
        let list = match list {
            Ok(Some(list)) => list,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Integrity => {
                tracing::warn!(previous = %link.backup_id, problem = %e, "the previous backup's chunks cannot be trusted: every chunk is stored anew");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let locks_believed = locks_believed(
            list.locks.as_ref(),
            &self.sink.describe(),
            self.wanted_lock.as_ref(),
        );
        let listed = listed_chunks(&*self.sink, database).await?;
        let mut known = lock(&self.known);
        let mut replaced = 0;
        for (key, chunk) in list.chunks() {
            match listed.get(&key) {
                Some(object) if listed_as(chunk, object) => {
                    let mut chunk = chunk.clone();
                    if !locks_believed {
                        chunk.locked_until = None;
                    }
                    known.insert(chunk.id.clone(), chunk);
                }
                Some(_) => replaced += 1,
                None => {}
            }
        }
        if replaced > 0 {
            tracing::warn!(previous = %link.backup_id, chunks = replaced, "chunks the previous backup lists were replaced in the sink since (another object of another size or identity): stored anew; run `pgproof check --read-data`");
        }
        tracing::debug!(previous = %link.backup_id, reusable = known.len(), "chunks the previous backup vouches for");
        Ok(())
    }

    /// Cuts `reader` (the file `name`) into chunks and stores those not stored yet.
    pub(super) fn store_file(
        &self,
        name: &str,
        reader: impl Read,
        chain: &CodecChain,
        recipients: Option<&Recipients>,
        progress: Option<&Progress>,
    ) -> Result<()> {
        let average = self.chunking.average;
        let cdc = StreamCDC::with_level_and_seed(
            reader,
            average / 4,
            average,
            average * 4,
            Normalization::Level1,
            self.chunking.ids.gear_seed(),
        );
        let (mut whole, mut raw_bytes, mut chunks) = (Sha256::new(), 0u64, Vec::new());
        for cut in cdc {
            let cut = cut.map_err(|e| {
                Error::io(
                    format!("reading {name} of the dump"),
                    std::io::Error::from(e),
                )
            })?;
            whole.update(&cut.data);
            raw_bytes += cut.data.len() as u64;
            if let Some(progress) = progress {
                progress(raw_bytes);
            }
            chunks.push(self.chunk(&cut.data, chain, recipients)?);
        }
        lock(&self.files).push(ChunkedFile {
            name: name.to_owned(),
            raw_bytes,
            raw_sha256: hex::encode(whole.finalize()),
            chunks,
        });
        Ok(())
    }

    /// The chunk whose plaintext is `data`: reused, or encoded and stored.
    fn chunk(
        &self,
        data: &[u8],
        chain: &CodecChain,
        recipients: Option<&Recipients>,
    ) -> Result<ChunkRef> {
        let id = self.chunking.ids.id(data);
        if let Some(reused) = self.reuse(&id) {
            return reused;
        }
        let (encoded, tallies) = chain
            .encode(data, Vec::with_capacity(data.len() / 2), recipients, None)
            .map_err(crate::codec::PumpError::into_error)?;
        let chunk = ChunkRef {
            id: id.clone(),
            raw_bytes: data.len() as u64,
            stored_bytes: encoded.len() as u64,
            stored_sha256: tallies.stored.sha256,
            identity: None,
            // Stored under the sink's lock.
            locked_until: self
                .wanted_lock
                .as_ref()
                .map(|l| whole_seconds(l.retain_until)),
        };
        let key = chunk.key(&self.backup.database);
        // Known from now on: the same content met again while this upload is in
        // flight is listed, not stored twice; commit waits for the upload.
        lock(&self.known).insert(id, chunk.clone());
        let (sink, stored, aborted) =
            (self.sink.clone(), self.stored.clone(), self.aborted.clone());
        let (sent, sha256) = (chunk.stored_bytes, chunk.stored_sha256.clone());
        self.in_flight(async move {
            match sink.put_bytes(&key, Bytes::from(encoded)).await {
                Ok(size) => {
                    let mut all = lock(&stored);
                    if aborted.load(Ordering::SeqCst) {
                        drop(all);
                        let _ = sink.delete(&key).await;
                        return Err(Error::tool("the dump was stopped"));
                    }
                    all.push((key.clone(), size));
                    drop(all);
                    if size != sent {
                        return Err(Error::integrity(format!(
                            "the sink stored {size} bytes for {key} but {sent} were sent"
                        ))
                        .with_object(key));
                    }
                    Ok(())
                }
                // The key ends with the sha256 of an encryption made a moment ago, so
                // what is there is these very bytes from a put retried after its first
                // attempt landed (its answer lost), or nobody's honest write.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let there = sink.get_bytes(&key, usize::try_from(sent).unwrap_or(usize::MAX)).await;
                    match there {
                        Ok(bytes) if crate::codec::sha256_hex(&bytes) == sha256 => {
                            let mut all = lock(&stored);
                            if aborted.load(Ordering::SeqCst) {
                                drop(all);
                                let _ = sink.delete(&key).await;
                                return Err(Error::tool("the dump was stopped"));
                            }
                            all.push((key.clone(), sent));
                            Ok(())
                        }
                        Err(e) if e.kind() != ErrorKind::Integrity => Err(e),
                        _ => Err(Error::integrity(format!(
                            "{key} holds other bytes than this backup stored under it, which no honest writer could do: someone writes into the sink; run `pgproof check`, then back up again"
                        ))
                        .with_object(key)),
                    }
                }
                Err(e) => Err(e),
            }
        })?;
        Ok(chunk)
    }

    /// The chunk `id` if it is known (listed by the previous backup, or stored by
    /// this dump), its lock extended if it ends before this backup's: a chunk stays
    /// locked at least as long as the newest backup that uses it. Extended
    /// [ahead](locked_ahead), a chunk needs a request about once a week, not every
    /// night; a lock that lasts long enough (a lowered `days`) is asked nothing, so no
    /// store can take the request for a shortening.
    fn reuse(&self, id: &str) -> Option<Result<ChunkRef>> {
        let mut known = lock(&self.known);
        let chunk = known.get_mut(id)?;
        let Some(wanted) = &self.wanted_lock else {
            return Some(Ok(chunk.clone()));
        };
        if chunk
            .locked_until
            // Both in whole seconds, as S3 keeps a lock's date.
            .is_some_and(|until| until >= whole_seconds(wanted.retain_until))
        {
            return Some(Ok(chunk.clone()));
        }
        let extended = RetentionLock {
            mode: wanted.mode,
            retain_until: locked_ahead(wanted, self.started, id),
        };
        chunk.locked_until = Some(whole_seconds(extended.retain_until));
        let chunk = chunk.clone();
        drop(known);
        let (sink, key) = (self.sink.clone(), chunk.key(&self.backup.database));
        Some(
            self.in_flight(async move { sink.extend_retention(&key, &extended).await })
                .map(|()| chunk),
        )
    }

    /// Runs `request` among the dump's requests in flight, once fewer than
    /// [`REQUESTS_IN_FLIGHT`] are (the file's reader waits until then); fails if an
    /// earlier one failed or the dump was stopped. Its own failure fails a later call
    /// or [`commit`](Self::commit).
    fn in_flight(
        &self,
        request: impl std::future::Future<Output = Result<()>> + Send + 'static,
    ) -> Result<()> {
        let permit = self
            .runtime
            .block_on(self.in_flight.clone().acquire_owned())
            .map_err(|_| Error::tool("a dump's request permits were closed"))?;
        self.failed()?;
        let failure = self.failure.clone();
        self.runtime.spawn(async move {
            if let Err(e) = request.await {
                lock(&failure).get_or_insert(e);
            }
            drop(permit);
        });
        Ok(())
    }

    /// The first failure of a request in flight, or the stop.
    fn failed(&self) -> Result<()> {
        if let Some(e) = &*lock(&self.failure) {
            return Err(e.clone());
        }
        if self.aborted.load(Ordering::SeqCst) {
            return Err(Error::tool("the dump was stopped"));
        }
        Ok(())
    }

    /// Writes the chunk list of the files cut; returns what the manifest says of them
    /// and the list.
    pub(super) async fn commit(&self) -> Result<ChunkedDump> {
        // Every upload and lock extension ended, well, before a list names them.
        drop(
            self.in_flight
                .acquire_many(REQUESTS_IN_FLIGHT)
                .await
                .map_err(|_| Error::tool("a dump's request permits were closed"))?,
        );
        if let Some(e) = &*lock(&self.failure) {
            return Err(e.clone());
        }
        let mut files = std::mem::take(&mut *lock(&self.files));
        files.sort_by(|a, b| a.name.cmp(&b.name));
        self.record_identities(&mut files).await?;
        let list = ChunkList {
            version: CHUNK_LIST_VERSION,
            database: self.backup.database.clone(),
            backup_id: self.backup.backup_id.to_string(),
            files,
            locks: self.wanted_lock.as_ref().map(|l| ChunkLocks {
                sink: self.sink.describe(),
                mode: l.mode,
            }),
        };
        let key = self.list_key.clone();
        let (bytes, info) = list.store_as(key.clone())?;
        let stored = self.sink.put_bytes(&key, Bytes::from(bytes)).await?;
        lock(&self.stored).push((key.clone(), stored));
        // The list now names every chunk, and the archive's table of contents and list
        // keep the backup uncommitted in prune's eyes until the manifest commits.
        self.sink.delete(&self.pending_key).await?;
        lock(&self.stored).retain(|(k, _)| *k != self.pending_key);
        let used: BTreeMap<String, &ChunkRef> = list.chunks();
        let new: Vec<(String, u64)> = lock(&self.stored)
            .iter()
            .filter(|(k, _)| used.contains_key(k))
            .cloned()
            .collect();
        let dump = ChunkedDump {
            list: info,
            files: list.files.len() as u64,
            raw_bytes: list.files.iter().map(|f| f.raw_bytes).sum(),
            chunks: used.len() as u64,
            stored_bytes: used.values().map(|c| c.stored_bytes).sum(),
            new_chunks: new.len() as u64,
            new_bytes: new.iter().map(|(_, n)| n).sum(),
        };
        Ok(dump)
    }

    /// A last look before the list names them: every chunk is stored at its size,
    /// and one reused is the object the previous backup's list recorded; each chunk
    /// gets the identity it is listed with now, which the next backup checks. (A
    /// prune that starts while this backup is uncommitted sweeps none, but one under
    /// way when it started may still be deleting, and the sink is not pgproof's
    /// alone.)
    async fn record_identities(&self, files: &mut [ChunkedFile]) -> Result<()> {
        let listed = listed_chunks(&*self.sink, &self.backup.database).await?;
        for file in files.iter_mut() {
            for chunk in &mut file.chunks {
                let key = chunk.key(&self.backup.database);
                match listed.get(&key) {
                    Some(object) if listed_as(chunk, object) => {
                        chunk.identity.clone_from(&object.identity);
                    }
                    found => {
                        let what = if found.is_some() {
                            "replaced"
                        } else {
                            "deleted"
                        };
                        return Err(Error::tool(format!(
                            "the chunk {key} (in {}) was {what} while this backup ran; back up again",
                            file.name
                        ))
                        .with_object(key));
                    }
                }
            }
        }
        Ok(())
    }

    /// Deletes everything this dump stored (its chunks, its list, its marker); a chunk
    /// being stored meanwhile deletes itself.
    pub(super) async fn abort(&self) {
        self.aborted.store(true, Ordering::SeqCst);
        // Uploads in flight end first (each deletes what it stored once it sees the
        // stop): afterwards nothing this dump stored is left, even if the process
        // exits at once.
        let _all_ended = self.in_flight.acquire_many(REQUESTS_IN_FLIGHT).await;
        let stored = std::mem::take(&mut *lock(&self.stored));
        for (key, _) in stored {
            let _ = self.sink.delete(&key).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::LockMode;

    fn lock(mode: LockMode, days: i64, from: jiff::Timestamp) -> RetentionLock {
        RetentionLock {
            mode,
            retain_until: from + jiff::SignedDuration::from_hours(24 * days),
        }
    }

    #[test]
    fn a_lock_is_extended_a_week_ahead_spread_by_chunk_and_never_more_than_its_length() {
        let start = jiff::Timestamp::UNIX_EPOCH;
        let day = jiff::SignedDuration::from_hours(24);
        let month = lock(LockMode::Governance, 30, start);
        let short = lock(LockMode::Governance, 2, start);
        for (wanted, id, days_ahead) in [
            // 0x00 → 7 days ahead, 0x06 → 13, 0x07 → 7 again.
            (&month, "00ff", 7),
            (&month, "06ff", 13),
            (&month, "07ff", 7),
            // An id that is no hex is not spread.
            (&month, "zz", 7),
            // A two-day lock is extended two days ahead, however the id spreads it.
            (&short, "06ff", 2),
        ] {
            assert_eq!(
                locked_ahead(wanted, start, id),
                wanted.retain_until + day * days_ahead,
                "{id}"
            );
        }
    }

    #[test]
    fn lock_dates_are_believed_on_their_own_sink_for_a_mode_no_stronger() {
        let now = jiff::Timestamp::UNIX_EPOCH;
        let governance = lock(LockMode::Governance, 5, now);
        let compliance = lock(LockMode::Compliance, 5, now);
        let set = |mode| ChunkLocks {
            sink: "s3://bucket/pg".into(),
            mode,
        };
        let gov = set(LockMode::Governance);
        let comp = set(LockMode::Compliance);
        assert!(locks_believed(
            Some(&gov),
            "s3://bucket/pg",
            Some(&governance)
        ));
        assert!(locks_believed(
            Some(&comp),
            "s3://bucket/pg",
            Some(&governance)
        ));
        assert!(locks_believed(
            Some(&comp),
            "s3://bucket/pg",
            Some(&compliance)
        ));
        // Governance dates promise nothing of compliance.
        assert!(!locks_believed(
            Some(&gov),
            "s3://bucket/pg",
            Some(&compliance)
        ));
        // A list copied here from another sink, or written before lists held locks.
        assert!(!locks_believed(
            Some(&gov),
            "s3://copy/pg",
            Some(&governance)
        ));
        assert!(!locks_believed(None, "s3://bucket/pg", Some(&governance)));
        // Nothing to believe where nothing is locked.
        assert!(!locks_believed(Some(&gov), "s3://bucket/pg", None));
    }
}

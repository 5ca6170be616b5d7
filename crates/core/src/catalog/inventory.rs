//! The whole catalog of a sink in one pass: every committed backup with its objects
//! and verification records, every tombstone of a pruned backup, every lease of a run
//! working on a backup, and the objects of runs that never committed. `list`,
//! `status`, `check` and `prune` read it once per call: one listing, then each
//! manifest and record once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::catalog::layout::{self, Kind};
use crate::catalog::{MANIFEST_LIMIT, Manifest, PreviousManifest, check_database_name};
use crate::codec::sha256_hex;
use crate::error::{Error, ErrorKind, Result};
use crate::sink::{ObjectMeta, Sink, SinkExt};

/// The longest a lease may protect a backup; a lease that claims longer is refused.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);

/// How far ahead of this host's clock a signed time may lie before it is refused:
/// a host whose clock runs that far ahead, or a forger, would otherwise win every
/// "newest" decision.
pub const CLOCK_SKEW: jiff::SignedDuration = jiff::SignedDuration::from_secs(3600);

/// A finding for `key`: `what` is wrong with it.
fn refuse(key: &str, what: String) -> Error {
    Error::integrity(format!("{key} {what}; not trusted")).with_object(key)
}

/// Refuses a signed time later than `now` plus [`CLOCK_SKEW`].
fn not_future(key: &str, field: &str, at: Timestamp, now: Timestamp) -> Result<()> {
    if at > now + CLOCK_SKEW {
        return Err(refuse(key, format!("says {field} {at}, in the future")));
    }
    Ok(())
}

/// A pin: retention never deletes the backup while it holds (until its date, or for
/// good). Each pin is a create-only object of its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// When it was pinned.
    pub pinned_at: Timestamp,
    /// Until when; `None`: until unpinned.
    #[serde(default)]
    pub until: Option<Timestamp>,
    /// Why.
    #[serde(default)]
    pub note: Option<String>,
}

impl Pin {
    /// Whether it still holds at `now`.
    pub fn holds(&self, now: Timestamp) -> bool {
        self.until.is_none_or(|until| until > now)
    }

    /// Refuses a pin made in the future.
    pub fn check(&self, now: Timestamp, key: &str) -> Result<()> {
        not_future(key, "pinned_at", self.pinned_at, now)
    }

    /// How it reads in a list: `pinned until …: note`.
    pub fn describe(&self) -> String {
        let until = self
            .until
            .map_or("for good".to_owned(), |u| format!("until {u}"));
        match &self.note {
            Some(note) => format!("pinned {until}: {note}"),
            None => format!("pinned {until}"),
        }
    }
}

/// Pins `database`/`backup_id`.
pub async fn pin(
    sink: &dyn Sink,
    database: &str,
    backup_id: &str,
    until: Option<Timestamp>,
    note: Option<String>,
) -> Result<Pin> {
    let pin = Pin {
        pinned_at: Timestamp::now(),
        until,
        note,
    };
    let unique =
        &sha256_hex(format!("{}{backup_id}", pin.pinned_at.as_nanosecond()).as_bytes())[..8];
    let key = layout::pin(
        database,
        backup_id,
        &format!(
            "{}-{unique}.json",
            pin.pinned_at.strftime("%Y%m%dT%H%M%S%.6fZ")
        ),
    );
    let body = serde_json::to_vec_pretty(&pin)
        .map_err(|e| Error::tool(format!("cannot serialize a pin: {e}")))?;
    sink.put_bytes(&key, Bytes::from(body)).await?;
    Ok(pin)
}

/// Removes every pin of `database`/`backup_id`; returns how many there were.
pub async fn unpin(sink: &dyn Sink, database: &str, backup_id: &str) -> Result<usize> {
    let pins = sink.list(&layout::pins(database, backup_id)).await?;
    for p in &pins {
        match sink.delete(&p.key).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(pins.len())
}

/// What is left of a pruned backup, so the manifest chain stays checkable: the next
/// manifest's link names this one's sha256, which the tombstone keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The database.
    pub database: String,
    /// The pruned backup.
    pub backup_id: String,
    /// sha256 of its manifest's bytes when it was pruned.
    pub manifest_sha256: String,
    /// sha256 of its stored dump object.
    pub stored_sha256: String,
    /// Why it went (which retention rule let it go).
    pub reason: String,
    /// When.
    pub pruned_at: Timestamp,
    /// The pgproof version that pruned it.
    pub tool_version: String,
    /// The pruned manifest's own link, so the chain goes on through the tombstone.
    #[serde(default)]
    pub previous: Option<PreviousManifest>,
}

impl Tombstone {
    /// Refuses a tombstone that names another backup than the one it lies in, or was
    /// made in the future.
    pub fn check(&self, database: &str, backup_id: &str, key: &str) -> Result<()> {
        if self.database != database || self.backup_id != backup_id {
            return Err(refuse(
                key,
                format!("describes {}/{}", self.database, self.backup_id),
            ));
        }
        not_future(key, "pruned_at", self.pruned_at, Timestamp::now())
    }
}

/// A run working on a backup (a verification restoring it): prune leaves a backup
/// with a live lease alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Who holds it (`verify on HOST pid N`).
    pub holder: String,
    /// When it stops protecting the backup if never released.
    pub expires_at: Timestamp,
}

impl Lease {
    /// Refuses a lease longer than [`MAX_LEASE_TTL`]: one that would protect a backup
    /// from prune for ever.
    pub fn check(&self, now: Timestamp, key: &str) -> Result<()> {
        let limit = jiff::SignedDuration::try_from(MAX_LEASE_TTL).unwrap_or_default();
        not_future(key, "expires_at", self.expires_at, now + limit)
    }
}

/// One verification of a backup, as its record says.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Verification {
    /// When it finished.
    pub verified_at: Timestamp,
    /// Whether every check passed.
    pub passed: bool,
    /// The measured restore time.
    #[serde(default)]
    pub restore_ms: Option<u64>,
}

impl Verification {
    /// The record's file name under `<db>/<id>/verify/`: the time, the verdict and the
    /// restore time, so a catalog read learns them from the listing alone and reads
    /// no record (`20261201T205301.958123456Z_passed_r2412.json`).
    pub fn record_name(&self) -> String {
        let verdict = if self.passed { "passed" } else { "failed" };
        let restore = self
            .restore_ms
            .map_or_else(String::new, |ms| format!("_r{ms}"));
        format!(
            "{}_{verdict}{restore}.json",
            self.verified_at.strftime("%Y%m%dT%H%M%S%.fZ")
        )
    }

    /// Refuses a record made in the future, or whose name says another verdict than
    /// its signed content.
    pub fn check(&self, now: Timestamp, key: &str) -> Result<()> {
        not_future(key, "verified_at", self.verified_at, now)?;
        if let Some(named) = summary_in_key(key)
            && named != *self
        {
            return Err(refuse(
                key,
                format!(
                    "is named for a verification that {} at {}, and its content says it {} at {}",
                    if named.passed { "passed" } else { "failed" },
                    named.verified_at,
                    if self.passed { "passed" } else { "failed" },
                    self.verified_at
                ),
            ));
        }
        Ok(())
    }

    /// The summary a [`record_name`](Self::record_name) carries; `None` for another
    /// name (records written before names carried it are read instead).
    pub fn from_record_name(name: &str) -> Option<Self> {
        let mut fields = name.strip_suffix(".json")?.split('_');
        let at = fields.next()?;
        let verified_at = jiff::fmt::strtime::parse("%Y%m%dT%H%M%S%.fZ", at)
            .ok()?
            .to_datetime()
            .ok()?
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()?
            .timestamp();
        let passed = match fields.next()? {
            "passed" => true,
            "failed" => false,
            _ => return None,
        };
        let restore_ms = match fields.next() {
            Some(r) => Some(r.strip_prefix('r')?.parse().ok()?),
            None => None,
        };
        fields.next().is_none().then_some(Self {
            verified_at,
            passed,
            restore_ms,
        })
    }
}

/// Which manifest a record is about.
#[derive(Deserialize)]
struct RecordBinding {
    #[serde(default)]
    manifest_sha256: Option<String>,
}

/// The summary in a verification record's key, if its name carries one.
fn summary_in_key(key: &str) -> Option<Verification> {
    key.contains("/verify/")
        .then(|| key.rsplit('/').next())
        .flatten()
        .and_then(Verification::from_record_name)
}

/// A committed backup.
#[derive(Clone, Debug)]
pub struct CatalogEntry {
    /// Its id.
    pub backup_id: String,
    /// The manifest, or why it cannot be read.
    pub manifest: std::result::Result<Manifest, String>,
    /// sha256 of the manifest's stored bytes.
    pub manifest_sha256: String,
    /// Every object under the backup's directory.
    pub objects: Vec<ObjectMeta>,
    /// Its verifications, oldest first (unreadable records are skipped).
    pub verifications: Vec<Verification>,
    /// Leases on it, live or expired.
    pub leases: Vec<Lease>,
    /// Its pins, holding or lapsed.
    pub pins: Vec<Pin>,
}

impl CatalogEntry {
    /// The latest verification, if it passed: a backup whose latest verification
    /// failed is not proven, whatever it passed before.
    pub fn proven(&self) -> Option<&Verification> {
        self.verifications.last().filter(|v| v.passed)
    }

    /// Whether its latest verification failed.
    pub fn failed_latest(&self) -> bool {
        self.verifications.last().is_some_and(|v| !v.passed)
    }

    /// A pin that holds at `now`, if any.
    pub fn pinned(&self, now: Timestamp) -> Option<&Pin> {
        self.pins.iter().find(|p| p.holds(now))
    }

    /// Whether a live lease protects it at `now`.
    pub fn leased(&self, now: Timestamp) -> bool {
        self.leases.iter().any(|l| l.expires_at > now)
    }
}

/// One database's part of the catalog.
#[derive(Clone, Debug, Default)]
pub struct DatabaseInventory {
    /// Committed backups, oldest first.
    pub backups: Vec<CatalogEntry>,
    /// Pruned backups.
    pub tombstones: BTreeMap<String, Tombstone>,
    /// Objects of backup ids with neither manifest nor tombstone (runs that never
    /// committed, or are still running), and leftovers beside tombstones.
    pub uncommitted: BTreeMap<String, Vec<ObjectMeta>>,
    /// Catalog objects that are not trusted (unsigned, signed by an unknown key, for
    /// another object, edited) or not readable: each was left out of every decision.
    pub findings: Vec<Finding>,
}

/// A catalog object that was not believed, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Its key.
    pub key: String,
    /// Why it was not believed.
    pub problem: String,
}

/// The catalog, per database.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    /// By database name.
    pub databases: BTreeMap<String, DatabaseInventory>,
}

/// What a catalog read got for one key: its bytes, gone since the listing, or the
/// reason it is not believed.
type Fetched = HashMap<String, std::result::Result<Vec<u8>, Error>>;

impl Inventory {
    /// Reads the catalog of one database, or of all.
    pub async fn load(sink: &dyn Sink, database: Option<&str>) -> Result<Self> {
        let prefix = match database {
            Some(db) => {
                check_database_name(db)?;
                layout::database(db)
            }
            None => String::new(),
        };
        // database → id → objects
        let mut grouped: BTreeMap<String, BTreeMap<String, Vec<ObjectMeta>>> = BTreeMap::new();
        for meta in sink.list(&prefix).await? {
            let mut parts = meta.key.splitn(3, '/');
            let (Some(db), Some(id), Some(_rest)) = (parts.next(), parts.next(), parts.next())
            else {
                continue; // `<db>/_commit.lock` and other top-level files
            };
            grouped
                .entry(db.to_owned())
                .or_default()
                .entry(id.to_owned())
                .or_default()
                .push(meta);
        }
        let mut fetched = prefetch(sink, &grouped).await?;
        let mut inventory = Inventory::default();
        for (db, ids) in grouped {
            let mut part = DatabaseInventory::default();
            for (id, objects) in ids {
                let has = |kind: Kind| objects.iter().any(|o| Kind::of(&o.key) == Some(kind));
                if has(Kind::Tombstone) {
                    let key = layout::tombstone(&db, &id);
                    match fetched.get(&key) {
                        Some(Ok(bytes)) => match parse::<Tombstone>(&key, bytes)
                            .and_then(|t| t.check(&db, &id, &key).map(|()| t))
                        {
                            Ok(t) => {
                                part.tombstones.insert(id.clone(), t);
                            }
                            Err(e) => part.find(&key, &e),
                        },
                        Some(Err(e)) if e.kind() != ErrorKind::NotFound => part.find(&key, e),
                        _ => {}
                    }
                }
                if !has(Kind::Manifest) {
                    let leftovers: Vec<ObjectMeta> = objects
                        .into_iter()
                        .filter(|o| Kind::of(&o.key) != Some(Kind::Tombstone))
                        .collect();
                    if !leftovers.is_empty() {
                        part.uncommitted.insert(id, leftovers);
                    }
                    continue;
                }
                let entry = load_entry(sink, &mut fetched, &mut part, &db, id, objects).await?;
                part.backups.push(entry);
            }
            inventory.databases.insert(db, part);
        }
        Ok(inventory)
    }
}

/// The small catalog objects `load` reads (tombstones, manifests, the newest
/// verification record of each backup, leases, pins), fetched many at a time: on an
/// object store each read is a round trip, and a catalog of a thousand backups must
/// still list in seconds. Failures are kept per key: one object that is not trusted
/// must not hide the rest of the catalog.
async fn prefetch(
    sink: &dyn Sink,
    grouped: &BTreeMap<String, BTreeMap<String, Vec<ObjectMeta>>>,
) -> Result<Fetched> {
    let keys: Vec<String> = grouped
        .values()
        .flat_map(|ids| {
            ids.values().flat_map(|objects| {
                let newest_record = records_newest_first(objects).next().map(str::to_owned);
                objects
                    .iter()
                    .filter_map(|o| {
                        // Classified by the gate's own rule, so nothing it would pass
                        // through unchecked is read as a catalog object.
                        let wanted = matches!(
                            Kind::of(&o.key),
                            Some(Kind::Manifest | Kind::Tombstone | Kind::Lease | Kind::Pin)
                        );
                        wanted.then(|| o.key.clone())
                    })
                    .chain(newest_record)
            })
        })
        .collect();
    let fetched: Vec<(String, Result<Vec<u8>>)> = futures::stream::iter(keys)
        .map(|key| async move {
            let got = sink.get_bytes(&key, MANIFEST_LIMIT).await;
            (key, got)
        })
        .buffer_unordered(CATALOG_READS_IN_FLIGHT)
        .collect()
        .await;
    let mut out = HashMap::with_capacity(fetched.len());
    for (key, got) in fetched {
        match got {
            Err(e) if !matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Integrity) => {
                return Err(e);
            }
            got => {
                out.insert(key, got);
            }
        }
    }
    Ok(out)
}

/// The keys of a backup's verification records, newest first (names begin with the
/// time of the verification).
fn records_newest_first(objects: &[ObjectMeta]) -> impl Iterator<Item = &str> {
    let mut records: Vec<&str> = objects
        .iter()
        .map(|o| o.key.as_str())
        .filter(|k| Kind::of(k) == Some(Kind::Record))
        .collect();
    records.sort_unstable_by(|a, b| b.cmp(a));
    records.into_iter()
}

fn parse<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::integrity(format!("{key} is signed but not readable ({e})")).with_object(key)
    })
}

/// Catalog reads in flight at once.
const CATALOG_READS_IN_FLIGHT: usize = 16;

async fn load_entry(
    sink: &dyn Sink,
    fetched: &mut Fetched,
    part: &mut DatabaseInventory,
    db: &str,
    id: String,
    objects: Vec<ObjectMeta>,
) -> Result<CatalogEntry> {
    let manifest_key = layout::manifest(db, &id);
    let (manifest, manifest_sha256) = match fetched.get(&manifest_key) {
        Some(Ok(bytes)) => (
            match serde_json::from_slice::<Manifest>(bytes) {
                Ok(m) => m
                    .check_identity(db, &id)
                    .map(|()| m)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(format!(
                    "manifest {manifest_key} is not a valid pgproof manifest ({e}); it was damaged or edited"
                )),
            },
            sha256_hex(bytes),
        ),
        Some(Err(e)) if e.kind() == ErrorKind::Integrity => {
            part.find(&manifest_key, e);
            (Err(e.to_string()), String::new())
        }
        _ => {
            return Err(Error::not_found(format!(
                "manifest {manifest_key} disappeared while the catalog was read; run the command again"
            )));
        }
    };
    let now = Timestamp::now();
    let mut leases = Vec::new();
    let mut pins = Vec::new();
    for object in &objects {
        let kind = Kind::of(&object.key);
        if !matches!(kind, Some(Kind::Lease | Kind::Pin)) {
            continue;
        }
        match fetched.get(&object.key) {
            Some(Ok(body)) if kind == Some(Kind::Pin) => {
                match parse::<Pin>(&object.key, body)
                    .and_then(|p| p.check(now, &object.key).map(|()| p))
                {
                    Ok(p) => pins.push(p),
                    Err(e) => part.find(&object.key, &e),
                }
            }
            Some(Ok(body)) => {
                match parse::<Lease>(&object.key, body)
                    .and_then(|l| l.check(now, &object.key).map(|()| l))
                {
                    Ok(l) => leases.push(l),
                    Err(e) => part.find(&object.key, &e),
                }
            }
            Some(Err(e)) if e.kind() == ErrorKind::Integrity => part.find(&object.key, e),
            // Released or pruned since the listing: gone.
            _ => {}
        }
    }
    // The newest record that is trusted says whether the backup is proven; a name
    // says nothing (anyone can name an object `…_passed.json`). Older records are
    // read only when a newer one is not believed.
    let mut verifications = Vec::new();
    // A manifest that is not trusted has nothing a record could prove.
    let records = records_newest_first(&objects).filter(|_| manifest.is_ok());
    for key in records {
        let got = match fetched.remove(key) {
            Some(got) => got,
            None => sink.get_bytes(key, MANIFEST_LIMIT).await,
        };
        let record = got.and_then(|body| {
            let v = parse::<Verification>(key, &body)?;
            v.check(now, key)?;
            // A record proves the manifest it read, not whatever now bears the name.
            let about: RecordBinding = parse(key, &body)?;
            if about.manifest_sha256.as_deref() != Some(manifest_sha256.as_str()) {
                return Err(refuse(
                    key,
                    "is about another manifest than the one now stored (it was replaced or edited since)".into(),
                ));
            }
            Ok(v)
        });
        match record {
            Ok(v) => {
                verifications.push(v);
                break;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) if e.kind() == ErrorKind::Integrity => part.find(key, &e),
            Err(e) => return Err(e),
        }
    }
    Ok(CatalogEntry {
        backup_id: id,
        manifest,
        manifest_sha256,
        objects,
        verifications,
        leases,
        pins,
    })
}

impl DatabaseInventory {
    fn find(&mut self, key: &str, e: &Error) {
        tracing::warn!(key, problem = %e, "catalog object not trusted");
        self.findings.push(Finding {
            key: key.to_owned(),
            problem: e.to_string(),
        });
    }

    /// Every backup id some manifest or tombstone links to as its predecessor.
    pub fn linked(&self) -> BTreeSet<&str> {
        self.backups
            .iter()
            .filter_map(|b| b.manifest.as_ref().ok()?.previous.as_ref())
            .chain(self.tombstones.values().filter_map(|t| t.previous.as_ref()))
            .map(|p| p.backup_id.as_str())
            .collect()
    }
}

/// A lease on one backup, taken with [`take`](BackupLease::take) and given back with
/// [`release`](BackupLease::release) (one that is not released expires).
#[derive(Debug)]
pub struct BackupLease {
    key: String,
}

impl BackupLease {
    /// Takes a lease on `database`/`backup_id` for `ttl`.
    pub async fn take(
        sink: &dyn Sink,
        database: &str,
        backup_id: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Self> {
        let now = Timestamp::now();
        let unique = &sha256_hex(format!("{holder}{}", now.as_nanosecond()).as_bytes())[..12];
        let key = layout::lease(database, backup_id, &format!("{unique}.json"));
        let lease = Lease {
            holder: holder.to_owned(),
            expires_at: now + jiff::SignedDuration::try_from(ttl).unwrap_or_default(),
        };
        let body = serde_json::to_vec(&lease)
            .map_err(|e| Error::tool(format!("cannot serialize a lease: {e}")))?;
        sink.put_bytes(&key, Bytes::from(body)).await?;
        Ok(Self { key })
    }

    /// Gives the lease back; a failure is logged (the lease expires by itself).
    pub async fn release(self, sink: &dyn Sink) {
        if let Err(e) = sink.delete(&self.key).await {
            tracing::warn!(lease = %self.key, error = %e, "could not release a lease; it expires by itself");
        }
    }
}

/// Whether a live lease protects the backup now (read fresh, just before deleting it).
pub async fn leased_now(sink: &dyn Sink, database: &str, backup_id: &str) -> Result<bool> {
    let now = Timestamp::now();
    any_record(
        sink,
        &layout::leases(database, backup_id),
        |l: &Lease, key| l.check(now, key).map(|()| l.expires_at > now),
    )
    .await
}

/// Whether a pin holds the backup now (read fresh, just before deleting it).
pub async fn pinned_now(sink: &dyn Sink, database: &str, backup_id: &str) -> Result<bool> {
    let now = Timestamp::now();
    any_record(sink, &layout::pins(database, backup_id), |p: &Pin, key| {
        p.check(now, key).map(|()| p.holds(now))
    })
    .await
}

/// Whether any trusted record under `prefix` satisfies `holds`. One that is not
/// trusted holds nothing (and is logged).
async fn any_record<T: serde::de::DeserializeOwned>(
    sink: &dyn Sink,
    prefix: &str,
    holds: impl Fn(&T, &str) -> Result<bool>,
) -> Result<bool> {
    for object in sink.list(prefix).await? {
        // Only what the gate checks: a nested or oddly named object holds nothing.
        if !matches!(Kind::of(&object.key), Some(Kind::Lease | Kind::Pin)) {
            continue;
        }
        let held = match sink.get_bytes(&object.key, MANIFEST_LIMIT).await {
            Ok(body) => parse::<T>(&object.key, &body).and_then(|r| holds(&r, &object.key)),
            Err(e) => Err(e),
        };
        match held {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            // Released or removed since the listing.
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) if e.kind() == ErrorKind::Integrity => {
                tracing::warn!(key = %object.key, problem = %e, "catalog object not trusted");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// The trusted tombstone of a pruned backup, if there is one.
pub async fn tombstone(
    sink: &dyn Sink,
    database: &str,
    backup_id: &str,
) -> Result<Option<Tombstone>> {
    let key = layout::tombstone(database, backup_id);
    let found = match sink.get_bytes(&key, MANIFEST_LIMIT).await {
        Ok(bytes) => parse::<Tombstone>(&key, &bytes)
            .and_then(|t| t.check(database, backup_id, &key).map(|()| t)),
        Err(e) => Err(e),
    };
    match found {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == ErrorKind::Integrity => {
            tracing::warn!(key = %key, problem = %e, "catalog object not trusted");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// When a backup id says its run started (ids begin with the UTC start time).
pub fn id_started_at(backup_id: &str) -> Option<Timestamp> {
    let stamp = backup_id.split('-').next()?;
    jiff::civil::DateTime::strptime("%Y%m%dT%H%M%S%.fZ", stamp)
        .ok()?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verification_record_name_carries_its_summary() {
        let at: Timestamp = "2026-12-01T20:53:01.958123456Z".parse().unwrap();
        for summary in [
            Verification {
                verified_at: at,
                passed: true,
                restore_ms: Some(2412),
            },
            Verification {
                verified_at: at,
                passed: false,
                restore_ms: None,
            },
        ] {
            let name = summary.record_name();
            assert_eq!(
                Verification::from_record_name(&name),
                Some(summary),
                "{name}"
            );
        }
        let whole_second = Verification::from_record_name("20250101T000000Z_passed_r100.json");
        assert_eq!(
            whole_second.map(|v| v.verified_at),
            Some("2025-01-01T00:00:00Z".parse().unwrap())
        );
        // Names of records written before, and anything else: read the record.
        for other in [
            "20261201T205301.958123Z.json",
            "20261201T205301Z_maybe.json",
            "20261201T205301Z_passed_x5.json",
            "20261201T205301Z_passed_r5_more.json",
            "lease.json",
        ] {
            assert_eq!(Verification::from_record_name(other), None, "{other}");
        }
    }

    #[test]
    fn backup_ids_say_when_their_run_started() {
        let at = id_started_at("20261123T063151.042Z-3fa9").unwrap();
        assert_eq!(at.to_string(), "2026-11-23T06:31:51.042Z");
        assert_eq!(id_started_at("_commit.lock"), None);
    }
}

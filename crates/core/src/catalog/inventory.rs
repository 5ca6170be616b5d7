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

use crate::catalog::{
    MANIFEST_LIMIT, MANIFEST_NAME, Manifest, PreviousManifest, check_database_name,
};
use crate::codec::sha256_hex;
use crate::error::{Error, ErrorKind, Result};
use crate::sink::{ObjectMeta, Sink, SinkExt};

/// The file name of a pruned backup's tombstone.
pub const TOMBSTONE_NAME: &str = "tombstone.json";

/// The directory of a backup's leases.
const LEASES: &str = "lease";

/// The directory of a backup's pins.
const PINS: &str = "pin";

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
    let key = format!(
        "{database}/{backup_id}/{PINS}/{}-{unique}.json",
        pin.pinned_at.strftime("%Y%m%dT%H%M%S%.6fZ")
    );
    let body = serde_json::to_vec_pretty(&pin)
        .map_err(|e| Error::tool(format!("cannot serialize a pin: {e}")))?;
    sink.put_bytes(&key, Bytes::from(body)).await?;
    Ok(pin)
}

/// Removes every pin of `database`/`backup_id`; returns how many there were.
pub async fn unpin(sink: &dyn Sink, database: &str, backup_id: &str) -> Result<usize> {
    let pins = sink
        .list(&format!("{database}/{backup_id}/{PINS}/"))
        .await?;
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

/// A run working on a backup (a verification restoring it): prune leaves a backup
/// with a live lease alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Who holds it (`verify on HOST pid N`).
    pub holder: String,
    /// When it stops protecting the backup if never released.
    pub expires_at: Timestamp,
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
}

/// The catalog, per database.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    /// By database name.
    pub databases: BTreeMap<String, DatabaseInventory>,
}

impl Inventory {
    /// Reads the catalog of one database, or of all.
    pub async fn load(sink: &dyn Sink, database: Option<&str>) -> Result<Self> {
        let prefix = match database {
            Some(db) => {
                check_database_name(db)?;
                format!("{db}/")
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
        let fetched = prefetch(sink, &grouped).await?;
        let mut inventory = Inventory::default();
        for (db, ids) in grouped {
            let mut part = DatabaseInventory::default();
            for (id, objects) in ids {
                let has = |name: &str| objects.iter().any(|o| o.key == format!("{db}/{id}/{name}"));
                if has(TOMBSTONE_NAME) {
                    let key = format!("{db}/{id}/{TOMBSTONE_NAME}");
                    let Some(bytes) = fetched.get(&key).and_then(Option::as_deref) else {
                        continue;
                    };
                    match serde_json::from_slice::<Tombstone>(bytes) {
                        Ok(t) => {
                            part.tombstones.insert(id.clone(), t);
                        }
                        Err(e) => tracing::warn!(key = %key, error = %e, "unreadable tombstone"),
                    }
                }
                if !has(MANIFEST_NAME) {
                    let leftovers: Vec<ObjectMeta> = objects
                        .into_iter()
                        .filter(|o| !o.key.ends_with(&format!("/{TOMBSTONE_NAME}")))
                        .collect();
                    if !leftovers.is_empty() {
                        part.uncommitted.insert(id, leftovers);
                    }
                    continue;
                }
                part.backups.push(load_entry(&fetched, &db, id, objects)?);
            }
            inventory.databases.insert(db, part);
        }
        Ok(inventory)
    }
}

/// The small catalog objects `load` reads (tombstones, manifests, verification records,
/// leases, pins), fetched many at a time: on an object store each read is a round
/// trip, and a catalog of a thousand backups must still list in seconds. `None`: gone
/// since the listing.
async fn prefetch(
    sink: &dyn Sink,
    grouped: &BTreeMap<String, BTreeMap<String, Vec<ObjectMeta>>>,
) -> Result<HashMap<String, Option<Vec<u8>>>> {
    let keys: Vec<String> = grouped
        .iter()
        .flat_map(|(db, ids)| {
            ids.iter().flat_map(move |(id, objects)| {
                objects.iter().filter_map(move |o| {
                    let rest = &o.key[db.len() + id.len() + 2..];
                    let kind = rest.split('/').next().unwrap_or("");
                    let wanted = rest == MANIFEST_NAME
                        || rest == TOMBSTONE_NAME
                        || matches!(kind, "verify" | LEASES | PINS)
                            && rest.ends_with(".json")
                            && summary_in_key(&o.key).is_none();
                    wanted.then(|| o.key.clone())
                })
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
            Ok(bytes) => {
                out.insert(key, Some(bytes));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                out.insert(key, None);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Catalog reads in flight at once.
const CATALOG_READS_IN_FLIGHT: usize = 16;

fn load_entry(
    fetched: &HashMap<String, Option<Vec<u8>>>,
    db: &str,
    id: String,
    objects: Vec<ObjectMeta>,
) -> Result<CatalogEntry> {
    let manifest_key = format!("{db}/{id}/{MANIFEST_NAME}");
    let bytes = fetched.get(&manifest_key).and_then(Option::as_deref).ok_or_else(|| {
        Error::not_found(format!(
            "manifest {manifest_key} disappeared while the catalog was read; run the command again"
        ))
    })?;
    let manifest = match serde_json::from_slice::<Manifest>(bytes) {
        Ok(m) if m.backup_id == id && m.database == db => Ok(m),
        Ok(m) => Err(format!(
            "manifest {manifest_key} describes backup {}/{}: it was moved or edited",
            m.database, m.backup_id
        )),
        Err(e) => Err(format!(
            "manifest {manifest_key} is not a valid pgproof manifest ({e}); it was damaged or edited"
        )),
    };
    let mut verifications = Vec::new();
    let mut leases = Vec::new();
    let mut pins = Vec::new();
    for object in &objects {
        let rest = &object.key[db.len() + id.len() + 2..];
        let kind = rest.split('/').next().unwrap_or("");
        if !matches!(kind, "verify" | LEASES | PINS) || !rest.ends_with(".json") {
            continue;
        }
        if let Some(summary) = summary_in_key(&object.key) {
            verifications.push(summary);
            continue;
        }
        // Released or pruned since the listing: gone.
        let Some(body) = fetched.get(&object.key).and_then(Option::as_deref) else {
            continue;
        };
        match kind {
            "verify" => match serde_json::from_slice::<Verification>(body) {
                Ok(v) => verifications.push(v),
                Err(e) => {
                    tracing::warn!(key = %object.key, error = %e, "unreadable verification record")
                }
            },
            PINS => match serde_json::from_slice::<Pin>(body) {
                Ok(p) => pins.push(p),
                Err(e) => tracing::warn!(key = %object.key, error = %e, "unreadable pin"),
            },
            _ => {
                if let Ok(lease) = serde_json::from_slice::<Lease>(body) {
                    leases.push(lease);
                }
            }
        }
    }
    verifications.sort_by_key(|v| v.verified_at);
    Ok(CatalogEntry {
        backup_id: id,
        manifest,
        manifest_sha256: sha256_hex(bytes),
        objects,
        verifications,
        leases,
        pins,
    })
}

impl DatabaseInventory {
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
        let key = format!("{database}/{backup_id}/{LEASES}/{unique}.json");
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
        &format!("{database}/{backup_id}/{LEASES}/"),
        |l: &Lease| l.expires_at > now,
    )
    .await
}

/// Whether a pin holds the backup now (read fresh, just before deleting it).
pub async fn pinned_now(sink: &dyn Sink, database: &str, backup_id: &str) -> Result<bool> {
    let now = Timestamp::now();
    any_record(
        sink,
        &format!("{database}/{backup_id}/{PINS}/"),
        |p: &Pin| p.holds(now),
    )
    .await
}

/// Whether any readable record under `prefix` satisfies `holds`.
async fn any_record<T: serde::de::DeserializeOwned>(
    sink: &dyn Sink,
    prefix: &str,
    holds: impl Fn(&T) -> bool,
) -> Result<bool> {
    for object in sink.list(prefix).await? {
        let body = match sink.get_bytes(&object.key, MANIFEST_LIMIT).await {
            Ok(body) => body,
            // Released or removed since the listing.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if serde_json::from_slice::<T>(&body).is_ok_and(|r| holds(&r)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The tombstone of a pruned backup, if there is one.
pub async fn tombstone(
    sink: &dyn Sink,
    database: &str,
    backup_id: &str,
) -> Result<Option<Tombstone>> {
    match sink
        .get_bytes(
            &format!("{database}/{backup_id}/{TOMBSTONE_NAME}"),
            MANIFEST_LIMIT,
        )
        .await
    {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
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

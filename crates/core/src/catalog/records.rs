//! The small signed records beside backups: pins, tombstones of pruned backups,
//! leases of runs working on a backup, and verification records, with the checks
//! each must pass before it is believed.

use std::time::Duration;

use bytes::Bytes;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::catalog::layout::{self, Kind};
use crate::catalog::{MANIFEST_LIMIT, PreviousManifest};
use crate::codec::sha256_hex;
use crate::error::{Error, ErrorKind, Result};
use crate::sink::{Sink, SinkExt};

/// The longest a lease may protect a backup; a lease that claims longer is refused.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);

/// How far ahead of this host's clock a signed time may lie before it is refused:
/// a host whose clock runs that far ahead, or a forger, would otherwise win every
/// "newest" decision.
pub const CLOCK_SKEW: jiff::SignedDuration = jiff::SignedDuration::from_secs(3600);

/// A finding for `key`: `what` is wrong with it.
pub(super) fn refuse(key: &str, what: String) -> Error {
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
    pub backup_id: crate::catalog::BackupId,
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

/// A rolling verification's proof of some of a backup's tables, as its record says
/// (the report of a partial restore into a scratch database).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct TableProof {
    /// When it finished.
    pub verified_at: Timestamp,
    /// Whether every table it restored was proven.
    pub passed: bool,
    #[serde(default)]
    checks: Vec<ProofCheck>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
struct ProofCheck {
    name: String,
    passed: bool,
}

impl TableProof {
    /// The record's file name under `<db>/<id>/tables/`: the time and `passed`,
    /// `failed` or [`UNFINISHED`](Self::UNFINISHED).
    pub fn record_name(verified_at: Timestamp, verdict: &str) -> String {
        format!(
            "{}_{verdict}.json",
            verified_at.strftime("%Y%m%dT%H%M%S%.fZ")
        )
    }

    /// The verdict of a record of tables a budget ran out on before they were proven:
    /// attempted, not proven, and no verdict on the backup.
    pub const UNFINISHED: &'static str = "unfinished";

    /// The check prefix naming a table such a record attempted.
    pub const UNFINISHED_CHECK: &'static str = "unfinished:";

    /// Each table it attempted (as fingerprints name them) and its result: whether it
    /// was proven once restored and compared (`fingerprint:`), or `None` when it was
    /// left unfinished (a budget ran out, or it could not be restored in part), which
    /// says nothing of the table.
    pub fn tables(&self) -> impl Iterator<Item = (&str, Option<bool>)> {
        self.checks.iter().filter_map(|c| {
            c.name
                .strip_prefix("fingerprint:")
                .map(|table| (table, Some(c.passed)))
                .or_else(|| {
                    c.name
                        .strip_prefix(Self::UNFINISHED_CHECK)
                        .map(|table| (table, None))
                })
        })
    }

    /// Whether it failed as a verdict (a table differs, or the archive or its
    /// restore failed), not merely unfinished.
    pub fn failed(&self) -> bool {
        !self.passed
            && self
                .checks
                .iter()
                .any(|c| !c.passed && !c.name.starts_with(Self::UNFINISHED_CHECK))
    }

    /// Refuses a record made in the future.
    pub fn check(&self, now: Timestamp, key: &str) -> Result<()> {
        not_future(key, "verified_at", self.verified_at, now)
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
pub(super) struct RecordBinding {
    #[serde(default)]
    pub(super) manifest_sha256: Option<String>,
}

/// The summary in a verification record's key, if its name carries one.
fn summary_in_key(key: &str) -> Option<Verification> {
    key.contains("/verify/")
        .then(|| key.rsplit('/').next())
        .flatten()
        .and_then(Verification::from_record_name)
}

/// A lease on one backup: made with [`new`](BackupLease::new), stored with
/// [`take`](BackupLease::take), given back with [`release`](BackupLease::release)
/// (one that is not released expires). Its key is known before it is stored, so an
/// operation cancelled while it is being taken can still give it back.
#[derive(Clone, Debug)]
pub struct BackupLease {
    key: String,
    lease: Lease,
}

impl BackupLease {
    /// A lease on `database`/`backup_id` for `ttl`, not yet taken.
    pub fn new(database: &str, backup_id: &str, holder: &str, ttl: Duration) -> Self {
        let now = Timestamp::now();
        let unique = &sha256_hex(format!("{holder}{}", now.as_nanosecond()).as_bytes())[..12];
        Self {
            key: layout::lease(database, backup_id, &format!("{unique}.json")),
            lease: Lease {
                holder: holder.to_owned(),
                expires_at: now + jiff::SignedDuration::try_from(ttl).unwrap_or_default(),
            },
        }
    }

    /// Stores the lease: from now on it keeps prune away from the backup.
    pub async fn take(&self, sink: &dyn Sink) -> Result<()> {
        let body = serde_json::to_vec(&self.lease)
            .map_err(|e| Error::tool(format!("cannot serialize a lease: {e}")))?;
        sink.put_bytes(&self.key, Bytes::from(body)).await?;
        Ok(())
    }

    /// Gives the lease back; a failure is logged (the lease expires by itself). A
    /// lease never stored (cancelled before its write) has nothing to give back.
    pub async fn release(self, sink: &dyn Sink) {
        match sink.delete(&self.key).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(lease = %self.key, error = %e, "could not release a lease; it expires by itself");
            }
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

pub(super) fn parse<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::integrity(format!("{key} is signed but not readable ({e})")).with_object(key)
    })
}

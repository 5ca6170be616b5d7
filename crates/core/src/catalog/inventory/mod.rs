//! The whole catalog of a sink in one pass: every committed backup with its objects
//! and verification records, every tombstone of a pruned backup, every lease of a run
//! working on a backup, and the objects of runs that never committed. `list`,
//! `status`, `check` and `prune` read it once per call: one listing, then each
//! manifest and record once.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::catalog::index::Indexes;
use crate::catalog::layout::{self, Kind};
use crate::catalog::trust::SignedSink;
use crate::catalog::{BackupId, BackupRef, MANIFEST_LIMIT, Manifest, check_database_name};
use crate::codec::sha256_hex;
use crate::error::{Error, ErrorKind, Result};
use crate::sink::{ObjectMeta, Sink, SinkExt};

use crate::catalog::records::{
    Lease, Pin, RecordBinding, TableProof, Tombstone, Verification, parse, refuse,
};

/// A committed backup.
#[derive(Clone, Debug)]
pub struct CatalogEntry {
    /// Its id.
    pub backup_id: crate::catalog::BackupId,
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
    /// Rolling verifications' proofs of some of its tables, oldest first (those that
    /// are not trusted, or are about another manifest, are findings instead).
    pub table_proofs: Vec<TableProof>,
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

mod read;

pub use read::newest_verification;
use read::{load_entry, prefetch};

impl Inventory {
    /// Reads the catalog of one database, or of all.
    pub async fn load(sink: &dyn Sink, database: Option<&str>) -> Result<Self> {
        Self::read(sink, database, None).await
    }

    /// [`load`](Self::load) through the signature gate with each database's catalog
    /// index (`<db>/_index.json`): the objects it covers as they are listed now are
    /// taken from it instead of read one by one, and an index that no longer matches
    /// is written again when `sink` signs (a failure to write it is a warning). The
    /// inventory is the one `load` reads, whatever the index holds.
    pub async fn load_indexed(sink: &SignedSink, database: Option<&str>) -> Result<Self> {
        Self::read(sink, database, Some(sink)).await
    }

    async fn read(
        sink: &dyn Sink,
        database: Option<&str>,
        signed: Option<&SignedSink>,
    ) -> Result<Self> {
        let prefix = match database {
            Some(db) => {
                check_database_name(db)?;
                layout::database(db)
            }
            None => String::new(),
        };
        // database → id → objects
        let mut grouped: BTreeMap<String, BTreeMap<String, Vec<ObjectMeta>>> = BTreeMap::new();
        let listing = sink.list(&prefix).await?;
        let mut indexes = match signed {
            Some(signed) => Some(Indexes::open(signed, &listing).await),
            None => None,
        };
        for meta in listing {
            // Cluster runs and chunks are no database's (see `catalog::layout`).
            if layout::in_no_database(&meta.key) {
                continue;
            }
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
        let mut fetched = prefetch(sink, &grouped, indexes.as_mut()).await?;
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
                let id = match BackupId::parse(&id) {
                    Ok(id) => id,
                    // Not an id pgproof could have written: nothing of a backup.
                    Err(e) => {
                        part.find(&layout::manifest(&db, &id), &e);
                        continue;
                    }
                };
                let entry = load_entry(sink, &mut fetched, &mut part, &db, id, objects).await?;
                part.backups.push(entry);
            }
            inventory.databases.insert(db, part);
        }
        if let Some(indexes) = indexes {
            indexes.refresh().await;
        }
        Ok(inventory)
    }
}

impl Inventory {
    /// The committed backups whose manifests are trusted, by database, oldest first.
    pub fn trusted_backups(&self) -> Vec<BackupRef> {
        self.databases
            .iter()
            .flat_map(|(db, part)| {
                part.backups
                    .iter()
                    .filter(|b| b.manifest.is_ok())
                    .map(|b| BackupRef {
                        database: db.clone(),
                        backup_id: b.backup_id.clone(),
                    })
            })
            .collect()
    }

    /// The newest trusted backup whose snapshot was taken at or before `at`; the
    /// inventory must hold one database's backups (load it for one).
    pub fn as_of(&self, at: Timestamp) -> Result<BackupRef> {
        let names: Vec<&str> = self
            .databases
            .iter()
            .filter(|(_, part)| !part.backups.is_empty())
            .map(|(db, _)| db.as_str())
            .collect();
        if names.len() > 1 {
            return Err(Error::config(format!(
                "the catalog holds backups of {}; name the database",
                names.join(", ")
            )));
        }
        self.databases
            .iter()
            .flat_map(|(db, part)| part.backups.iter().map(move |b| (db, b)))
            .filter_map(|(db, b)| b.manifest.as_ref().ok().map(|m| (db, b, m.started_at)))
            .filter(|(_, _, taken)| *taken <= at)
            .max_by_key(|(_, _, taken)| *taken)
            .map(|(db, b, _)| BackupRef {
                database: db.clone(),
                backup_id: b.backup_id.clone(),
            })
            .ok_or_else(|| {
                Error::not_found(format!(
                    "no trusted backup{} was taken at or before {at}",
                    names
                        .first()
                        .map(|db| format!(" of {db}"))
                        .unwrap_or_default()
                ))
            })
    }

    /// The trusted backups whose newest passing verification is older than `max_age`
    /// at `now` (or that never passed one): never attempted first, then by their
    /// latest attempt, so backups that keep failing do not crowd out the rest; at
    /// most `limit`.
    pub fn stale(
        &self,
        now: Timestamp,
        max_age: SignedDuration,
        limit: Option<usize>,
    ) -> Vec<BackupRef> {
        let mut stale: Vec<(Option<Timestamp>, BackupRef)> = Vec::new();
        for (db, part) in &self.databases {
            for entry in part.backups.iter().filter(|b| b.manifest.is_ok()) {
                let proven = entry.proven().map(|v| v.verified_at);
                let attempted = entry.verifications.last().map(|v| v.verified_at);
                if proven.is_none_or(|at| now.duration_since(at) > max_age) {
                    stale.push((
                        attempted,
                        BackupRef {
                            database: db.clone(),
                            backup_id: entry.backup_id.clone(),
                        },
                    ));
                }
            }
        }
        stale.sort_by(|a, b| (a.0, &a.1.backup_id).cmp(&(b.0, &b.1.backup_id)));
        stale
            .into_iter()
            .map(|(_, b)| b)
            .take(limit.unwrap_or(usize::MAX))
            .collect()
    }

    /// The trusted backups no verification attempted within `max_age` at `now`,
    /// passed or failed (or never attempted): what a round of verify workers takes,
    /// each once — a backup that failed in this round stays failed until the next
    /// (its FAIL is the verdict `status` shows). Never attempted first, then the
    /// longest ago; at most `limit`.
    pub fn unattempted(
        &self,
        now: Timestamp,
        max_age: SignedDuration,
        limit: Option<usize>,
    ) -> Vec<BackupRef> {
        let mut due: Vec<(Option<Timestamp>, BackupRef)> = Vec::new();
        for (db, part) in &self.databases {
            for entry in part.backups.iter().filter(|b| b.manifest.is_ok()) {
                let attempted = entry.verifications.last().map(|v| v.verified_at);
                if attempted.is_none_or(|at| now.duration_since(at) > max_age) {
                    due.push((
                        attempted,
                        BackupRef {
                            database: db.clone(),
                            backup_id: entry.backup_id.clone(),
                        },
                    ));
                }
            }
        }
        due.sort_by(|a, b| (a.0, &a.1.backup_id).cmp(&(b.0, &b.1.backup_id)));
        due.into_iter()
            .map(|(_, b)| b)
            .take(limit.unwrap_or(usize::MAX))
            .collect()
    }

    /// Every object that was not believed, in all databases.
    pub fn findings(&self) -> impl Iterator<Item = &Finding> {
        self.databases.values().flat_map(|part| &part.findings)
    }

    /// `Ok` when every object was believed; otherwise an
    /// [`Integrity`](crate::ErrorKind::Integrity) error naming the first of them.
    pub fn untrusted_verdict(&self) -> Result<()> {
        let findings: Vec<&Finding> = self.findings().collect();
        match findings.first() {
            None => Ok(()),
            Some(first) => Err(Error::integrity(format!(
                "{} catalog object(s) not trusted and left out, first {}; a trusted key did not sign them: find who wrote them (bucket access logs) before deleting them",
                findings.len(),
                first.key
            ))
            .with_object(first.key.clone())),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::id_started_at;

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

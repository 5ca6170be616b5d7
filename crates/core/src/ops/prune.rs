//! Prune: retention by policy, with the rules that protect users from what has hit
//! users of other tools (failed runs pruning the good backups).
//!
//! - Only committed backups count: a run that failed leaves no manifest, so it can
//!   neither be kept in place of a good backup nor push one out.
//! - The newest backup that passed verification is never deleted, nor the chain's
//!   head (the manifest the next backup will link to), nor a pinned backup, nor a
//!   backup whose manifest cannot be read (it is reported instead), nor one whose
//!   object lock still holds (it is reported as retained until its date).
//! - A backup being verified holds a lease and is left alone; so is a run still
//!   writing (its objects are orphans only once older than the grace period).
//! - A pruned backup leaves a tombstone (id, manifest and dump sha256, reason, time),
//!   written before anything is deleted, so the manifest chain stays checkable and an
//!   interrupted prune is finished by the next one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::catalog::{
    CatalogEntry, DatabaseInventory, Inventory, Tombstone, chunks, id_started_at, layout,
    leased_now, pinned_now,
};
use crate::error::{Error, ErrorKind, Result};
use crate::sink::{Sink, SinkExt};

/// How many backups to keep, restic-style: each rule keeps some, a backup kept by any
/// rule stays. A config file's `[retention]` deserializes into it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionPolicy {
    /// The newest N.
    pub keep_last: Option<u32>,
    /// The newest backup of each of the N newest days that have one (UTC).
    pub keep_daily: Option<u32>,
    /// Likewise per ISO week.
    pub keep_weekly: Option<u32>,
    /// Likewise per calendar month.
    pub keep_monthly: Option<u32>,
    /// Every backup younger than this (`36h`, `14d`, `2w`).
    #[serde(with = "super::duration::option")]
    pub keep_within: Option<SignedDuration>,
    /// How old the objects of a run that never committed must be before prune
    /// deletes them (default [`DEFAULT_ORPHAN_GRACE`]): a run may still be writing.
    #[serde(with = "super::duration::option")]
    pub orphan_grace: Option<SignedDuration>,
}

impl RetentionPolicy {
    /// Whether any rule keeps something (with none, nothing may be pruned): a rule of
    /// 0 keeps nothing and counts for nothing.
    pub fn is_set(&self) -> bool {
        [
            self.keep_last,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
        ]
        .iter()
        .any(|n| n.is_some_and(|n| n > 0))
            || self.keep_within.is_some_and(|d| d.is_positive())
    }
}

/// How long the objects of a run that never committed are left alone by default: a
/// run may still be writing them.
pub const DEFAULT_ORPHAN_GRACE: SignedDuration = SignedDuration::from_hours(48);

/// What prune decided about one backup (or one uncommitted run).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The database.
    pub database: String,
    /// The backup id.
    pub backup_id: String,
    /// What happens to it.
    pub action: Action,
}

/// Why a backup is kept: a retention rule, or a safety rule that overrides them all.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeepReason {
    /// Its manifest cannot be read or is not trusted: a person must look.
    Unreadable,
    /// The manifest the next backup will link to.
    ChainHead,
    /// The newest backup whose latest verification passed.
    NewestVerified,
    /// Its object lock still holds.
    ObjectLock(crate::sink::RetentionLock),
    /// A pin holds it (described).
    Pinned(String),
    /// A run holds a lease on it.
    Leased,
    /// Among the newest `keep_last`.
    KeepLast(u32),
    /// Younger than `keep_within`.
    KeepWithin(SignedDuration),
    /// The newest of its day, week or month (`rule`, its count, the bucket).
    Bucket {
        /// `keep_daily`, `keep_weekly` or `keep_monthly`.
        rule: &'static str,
        /// The rule's count.
        n: u32,
        /// The day, week or month.
        bucket: String,
    },
    /// Its manifest is gone but it was committed once: left for a person to decide.
    CommittedWithoutManifest,
    /// A cluster run (under `.cluster/`) every backup of which is kept.
    ClusterRun,
}

impl std::fmt::Display for KeepReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeepReason::Unreadable => f.write_str("its manifest cannot be read (see check)"),
            KeepReason::ChainHead => f.write_str("head of the manifest chain"),
            KeepReason::NewestVerified => f.write_str("newest verified backup"),
            KeepReason::ObjectLock(lock) => write!(
                f,
                "retained until {} (object lock, {})",
                lock.retain_until, lock.mode
            ),
            KeepReason::Pinned(pin) => f.write_str(pin),
            KeepReason::Leased => f.write_str("a run holds a lease on it (being verified)"),
            KeepReason::KeepLast(n) => write!(f, "keep_last {n}"),
            KeepReason::KeepWithin(within) => write!(f, "keep_within {within:#}"),
            KeepReason::Bucket { rule, n, bucket } => write!(f, "{rule} {n} ({bucket})"),
            KeepReason::CommittedWithoutManifest => f.write_str(
                "its manifest is missing but it was committed (see check); left for a person to decide",
            ),
            KeepReason::ClusterRun => {
                f.write_str("a cluster run whose backups are all kept")
            }
        }
    }
}

impl Serialize for KeepReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a pruned backup's tombstone gives as the reason.
pub const PRUNED_BY_POLICY: &str = "kept by no retention rule";

/// What happens to a backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Kept, with every rule that keeps it.
    Keep(Vec<KeepReason>),
    /// Deleted (a tombstone stays): no rule keeps it.
    Delete,
    /// Objects of a run that never committed, older than the grace period: deleted.
    DeleteOrphan(usize),
    /// Leftovers beside a tombstone (an interrupted prune): deleted.
    FinishPrune(usize),
    /// The database's shared chunks (the decision's `backup_id` is their directory):
    /// this many, listed by no committed backup, deleted.
    DeleteChunks(usize),
    /// The database's shared chunks: none deleted, for this reason.
    KeepChunks(String),
}

/// Retention for every database in a sink (or one), configured by its builder methods
/// and done by [`run`](Prune::run).
#[must_use = "a Prune does nothing until run"]
pub struct Prune {
    sink: Arc<dyn Sink>,
    policy: RetentionPolicy,
    database: Option<String>,
    dry_run: bool,
    now: Option<Timestamp>,
    orphan_grace: SignedDuration,
}

impl Prune {
    /// Prunes `sink` by `policy`.
    pub fn new(sink: Arc<dyn Sink>, policy: RetentionPolicy) -> Self {
        Self {
            orphan_grace: policy.orphan_grace.unwrap_or(DEFAULT_ORPHAN_GRACE),
            sink,
            policy,
            database: None,
            dry_run: false,
            now: None,
        }
    }

    /// Only this database.
    pub fn database(mut self, database: Option<String>) -> Self {
        self.database = database;
        self
    }

    /// Decides and reports, deletes nothing.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// The time the rules are applied at; default now. (Tests run a simulated
    /// calendar with it.)
    pub fn now(mut self, now: Timestamp) -> Self {
        self.now = Some(now);
        self
    }

    /// Decides, then (unless a dry run) deletes. Returns every decision.
    pub async fn run(self) -> Result<Vec<Decision>> {
        if !self.policy.is_set() {
            return Err(Error::config(
                "no retention rule is set, so prune would have nothing to keep by: set at least one of keep_last, keep_daily, keep_weekly, keep_monthly, keep_within",
            ));
        }
        let now = self.now.unwrap_or_else(Timestamp::now);
        let inventory = Inventory::load(&*self.sink, self.database.as_deref()).await?;
        let mut decisions = Vec::new();
        for (database, part) in &inventory.databases {
            decisions.extend(decide(database, part, &self.policy, now, self.orphan_grace));
        }
        // Cluster runs belong to no database: judged when the whole sink is pruned.
        let clusters = match &self.database {
            None => Some(
                super::cluster::ClusterPrune::plan(
                    &*self.sink,
                    &inventory,
                    &decisions,
                    now,
                    self.orphan_grace,
                )
                .await?,
            ),
            Some(_) => None,
        };
        if self.dry_run {
            decisions.extend(clusters.iter().flat_map(|c| c.decisions()));
            // Counted as if nothing were pruned: the chunks unused already.
            decisions.extend(self.sweep_all_chunks().await?);
            return Ok(decisions);
        }
        for d in &decisions {
            let part = &inventory.databases[&d.database];
            match &d.action {
                Action::Keep(_) | Action::DeleteChunks(_) | Action::KeepChunks(_) => {}
                Action::Delete => {
                    let entry = part
                        .backups
                        .iter()
                        .find(|b| b.backup_id == d.backup_id)
                        .ok_or_else(|| {
                            Error::tool("a decided backup vanished from the inventory")
                        })?;
                    self.delete_backup(&d.database, entry, PRUNED_BY_POLICY, now)
                        .await?;
                }
                Action::DeleteOrphan(_) | Action::FinishPrune(_) => {
                    for object in part.uncommitted.get(&d.backup_id).into_iter().flatten() {
                        delete_quietly(&*self.sink, &object.key).await?;
                    }
                }
            }
        }
        if let Some(clusters) = clusters {
            clusters.execute(&*self.sink).await?;
            decisions.extend(clusters.decisions());
        }
        decisions.extend(self.sweep_all_chunks().await?);
        Ok(decisions)
    }

    /// Sweeps the chunks of every database that has any, whether or not anything
    /// else of it is left (a first backup that failed after storing chunks).
    async fn sweep_all_chunks(&self) -> Result<Vec<Decision>> {
        let stored = chunks::stored_chunks_by_database(&*self.sink, self.database.as_deref());
        let mut decisions = Vec::new();
        for (database, stored) in stored.await? {
            decisions.extend(self.sweep_chunks(&database, stored).await?);
        }
        Ok(decisions)
    }

    /// Deletes the shared chunks of `database` that no committed backup lists (after
    /// the backups pruned above). Without a grace period on chunks: a backup that
    /// stores chunks keeps an uncommitted object in its directory from before its
    /// first chunk until its manifest commits, and no chunk is deleted while any
    /// backup of the database is uncommitted (under way, or failed and not yet past
    /// the orphan grace). The chunks are listed before the catalog is read, so a chunk
    /// stored after the listing is never a candidate and one stored before it belongs
    /// to a backup the catalog shows committed or under way. A backup reuses only
    /// chunks its predecessor lists, and the newest backup (the chain's head) is
    /// never pruned; a backup re-lists its chunks just before its commit anyway. Any
    /// backup whose manifest or chunk list cannot be trusted stops the sweep: what it
    /// lists is unknown.
    async fn sweep_chunks(
        &self,
        database: &str,
        stored: BTreeMap<String, u64>,
    ) -> Result<Option<Decision>> {
        let decision = |action| {
            Some(Decision {
                database: database.to_owned(),
                backup_id: layout::chunks(database),
                action,
            })
        };
        let inventory = Inventory::load(&*self.sink, Some(database)).await?;
        let empty = DatabaseInventory::default();
        let part = inventory.databases.get(database).unwrap_or(&empty);
        if let Some(id) = part
            .uncommitted
            .keys()
            .find(|id| !part.tombstones.contains_key(*id))
        {
            return Ok(decision(Action::KeepChunks(format!(
                "backup {id} has objects but no manifest (a backup under way, one that failed and is within the orphan grace, or one kept for a person to look at): chunks it stored may be listed nowhere yet; once no backup runs, delete {database}/{id}/ or let the grace pass, and prune again"
            ))));
        }
        let mut used = BTreeSet::new();
        for entry in &part.backups {
            let manifest = match &entry.manifest {
                Ok(manifest) => manifest,
                Err(problem) => {
                    return Ok(decision(Action::KeepChunks(format!(
                        "backup {} cannot be trusted ({problem}), so what it uses is unknown; run `pgproof check` and find who wrote it before deleting it",
                        entry.backup_id
                    ))));
                }
            };
            match chunks::load_chunk_list(&*self.sink, manifest).await {
                Ok(Some(list)) => used.extend(list.chunks().into_keys()),
                Ok(None) => {}
                Err(e) if e.about_backup() => {
                    return Ok(decision(Action::KeepChunks(format!(
                        "backup {}: {}; run `pgproof check` and find who wrote it before deleting it",
                        entry.backup_id,
                        e.message()
                    ))));
                }
                Err(e) => return Err(e),
            }
        }
        let unused: Vec<&String> = stored.keys().filter(|k| !used.contains(*k)).collect();
        if !self.dry_run {
            for key in &unused {
                delete_quietly(&*self.sink, key).await?;
            }
            if !unused.is_empty() {
                tracing::info!(
                    database,
                    chunks = unused.len(),
                    "deleted chunks no backup uses"
                );
            }
        }
        Ok(decision(Action::DeleteChunks(unused.len())))
    }

    async fn delete_backup(
        &self,
        database: &str,
        entry: &CatalogEntry,
        reason: &str,
        now: Timestamp,
    ) -> Result<()> {
        // A verification that started since the inventory was read holds a lease.
        if leased_now(&*self.sink, database, &entry.backup_id).await?
            || pinned_now(&*self.sink, database, &entry.backup_id).await?
        {
            tracing::info!(database, backup_id = %entry.backup_id, "left alone: a run took a lease on it, or it was pinned, meanwhile");
            return Ok(());
        }
        let manifest = entry
            .manifest
            .as_ref()
            .map_err(|e| Error::tool(format!("refusing to prune a damaged backup: {e}")))?;
        let tombstone = Tombstone {
            database: database.to_owned(),
            backup_id: entry.backup_id.clone(),
            manifest_sha256: entry.manifest_sha256.clone(),
            stored_sha256: manifest.object.stored_sha256.clone(),
            reason: reason.to_owned(),
            pruned_at: now,
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            previous: manifest.previous.clone(),
        };
        let mut body = serde_json::to_vec_pretty(&tombstone)
            .map_err(|e| Error::tool(format!("cannot serialize a tombstone: {e}")))?;
        body.push(b'\n');
        let key = layout::tombstone(database, &entry.backup_id);
        match self.sink.put_bytes(&key, Bytes::from(body)).await {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        // The manifest first: from here the backup is no longer listed, and what is
        // left is finished by the next prune.
        let manifest_key = layout::manifest(database, &entry.backup_id);
        delete_quietly(&*self.sink, &manifest_key).await?;
        for object in &entry.objects {
            if object.key != manifest_key {
                delete_quietly(&*self.sink, &object.key).await?;
            }
        }
        tracing::info!(database, backup_id = %entry.backup_id, reason, "pruned");
        Ok(())
    }
}

async fn delete_quietly(sink: &dyn Sink, key: &str) -> Result<()> {
    match sink.delete(key).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The decisions for one database at `now`.
pub fn decide(
    database: &str,
    part: &DatabaseInventory,
    policy: &RetentionPolicy,
    now: Timestamp,
    orphan_grace: SignedDuration,
) -> Vec<Decision> {
    // Newest first, by the time each run started.
    let mut backups: Vec<(&CatalogEntry, Timestamp)> = part
        .backups
        .iter()
        .map(|b| {
            let at = b
                .manifest
                .as_ref()
                .map(|m| m.started_at)
                .ok()
                .or_else(|| id_started_at(&b.backup_id))
                .unwrap_or(now);
            (b, at)
        })
        .collect();
    backups.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.backup_id.cmp(&a.0.backup_id)));

    let mut keep: Vec<Vec<KeepReason>> = vec![Vec::new(); backups.len()];
    let linked = part.linked();
    // The newest backup whose latest verification passed (not the newest verification).
    let newest_verified = backups
        .iter()
        .find(|(b, _)| b.proven().is_some())
        .map(|(b, _)| b.backup_id.as_str());
    // Rules count trusted backups only: forged manifests dated in the future must
    // not push real backups out of keep_last.
    let mut rank = 0u64;
    for (i, (b, at)) in backups.iter().enumerate() {
        let reasons = &mut keep[i];
        let trusted_rank = b.manifest.is_ok().then(|| {
            rank += 1;
            rank - 1
        });
        if b.manifest.is_err() {
            reasons.push(KeepReason::Unreadable);
        }
        if !linked.contains(b.backup_id.as_str()) {
            reasons.push(KeepReason::ChainHead);
        }
        if Some(b.backup_id.as_str()) == newest_verified {
            reasons.push(KeepReason::NewestVerified);
        }
        if let Ok(m) = &b.manifest
            && let Some(lock) = &m.object_lock
            && lock.retain_until > now
        {
            reasons.push(KeepReason::ObjectLock(lock.clone()));
        }
        if let Some(pin) = b.pinned(now) {
            reasons.push(KeepReason::Pinned(pin.describe()));
        }
        if b.leased(now) {
            reasons.push(KeepReason::Leased);
        }
        if let Some(n) = policy.keep_last
            && trusted_rank.is_some_and(|r| r < u64::from(n))
        {
            reasons.push(KeepReason::KeepLast(n));
        }
        if let Some(within) = policy.keep_within
            && now.duration_since(*at) < within
        {
            reasons.push(KeepReason::KeepWithin(within));
        }
    }
    calendar_keep(&backups, &mut keep, policy);

    let mut decisions: Vec<Decision> = backups
        .iter()
        .zip(keep)
        .map(|((b, _), reasons)| Decision {
            database: database.to_owned(),
            backup_id: b.backup_id.to_string(),
            action: if reasons.is_empty() {
                Action::Delete
            } else {
                Action::Keep(reasons)
            },
        })
        .collect();
    decisions.extend(uncommitted_decisions(
        database,
        part,
        &linked,
        now,
        orphan_grace,
    ));
    decisions
}

/// keep_daily, keep_weekly and keep_monthly: the newest backup of each of the N
/// newest days, ISO weeks and months (UTC) that have one.
fn calendar_keep(
    backups: &[(&CatalogEntry, Timestamp)],
    keep: &mut [Vec<KeepReason>],
    policy: &RetentionPolicy,
) {
    let civil = |at: Timestamp| at.to_zoned(jiff::tz::TimeZone::UTC).date();
    bucket_keep(backups, keep, policy.keep_daily, "keep_daily", |at| {
        civil(at).to_string()
    });
    bucket_keep(backups, keep, policy.keep_weekly, "keep_weekly", |at| {
        let week = civil(at).iso_week_date();
        format!("{}-W{:02}", week.year(), week.week())
    });
    bucket_keep(backups, keep, policy.keep_monthly, "keep_monthly", |at| {
        let date = civil(at);
        format!("{}-{:02}", date.year(), date.month())
    });
}

/// The runs that never committed: an interrupted prune's leftovers are finished, the
/// objects of a run older than the grace period deleted, and a backup whose manifest
/// is gone although it was committed left for a person.
fn uncommitted_decisions(
    database: &str,
    part: &DatabaseInventory,
    linked: &BTreeSet<&str>,
    now: Timestamp,
    orphan_grace: SignedDuration,
) -> Vec<Decision> {
    let mut decisions = Vec::new();
    let grace_ago = now - orphan_grace;
    for (id, objects) in &part.uncommitted {
        let action = if part.tombstones.contains_key(id) {
            Action::FinishPrune(objects.len())
        } else if linked.contains(id.as_str()) || objects.iter().any(|o| o.key.contains("/verify/"))
        {
            // Its manifest was committed once (a successor links to it, or it was
            // verified) and is gone: `check` reports that; its dump may be the only
            // copy left, so it is never taken for a failed run's leftovers.
            Action::Keep(vec![KeepReason::CommittedWithoutManifest])
        } else {
            // A run that started within the grace period may still be writing.
            match id_started_at(id) {
                Some(started) if started < grace_ago => Action::DeleteOrphan(objects.len()),
                _ => continue,
            }
        };
        decisions.push(Decision {
            database: database.to_owned(),
            backup_id: id.clone(),
            action,
        });
    }
    decisions
}

/// Keeps the newest backup of each of the `n` newest buckets (day, week, month).
fn bucket_keep(
    backups: &[(&CatalogEntry, Timestamp)],
    keep: &mut [Vec<KeepReason>],
    n: Option<u32>,
    rule: &'static str,
    bucket: impl Fn(Timestamp) -> String,
) {
    let Some(n) = n else { return };
    let mut seen = BTreeSet::new();
    for (i, (b, at)) in backups.iter().enumerate() {
        if seen.len() >= n as usize {
            break;
        }
        // A manifest that cannot be trusted fills no bucket (it is kept anyway).
        if b.manifest.is_err() {
            continue;
        }
        let key = bucket(*at);
        if seen.insert(key.clone()) {
            keep[i].push(KeepReason::Bucket {
                rule,
                n,
                bucket: key,
            });
        }
    }
}

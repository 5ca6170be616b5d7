//! Status: how old the newest backup and the newest proven backup of each database
//! are, how long its last measured restore took, and whether that meets the
//! thresholds (RPO, RTO, unproven age, alerts, untrusted objects), judged from one
//! reading of the catalog.

use std::fmt;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::catalog::{BackupId, DatabaseInventory, Inventory, SignedSink};
use crate::error::{Error, Result};
use crate::evidence::alerts::AlertPolicy;
use crate::ops::coverage::TableLedger;
use crate::sink::Sink;

mod prometheus;

use prometheus::prometheus_text;

/// The thresholds each database is held to; none is set by default. A config file's
/// `[status]` deserializes into it (`max_age = "26h"`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusPolicy {
    /// The RPO target: the newest backup may be at most this old.
    #[serde(with = "super::duration::option")]
    pub max_age: Option<SignedDuration>,
    /// The newest backup that passed verification may be at most this old.
    #[serde(with = "super::duration::option")]
    pub max_unverified_age: Option<SignedDuration>,
    /// The RTO target: the newest passing verification's measured restore must fit.
    #[serde(with = "super::duration::option")]
    pub max_restore_time: Option<SignedDuration>,
    /// Every backup must have passed a verification within this.
    #[serde(with = "super::duration::option")]
    pub max_unproven_age: Option<SignedDuration>,
    /// Every table of the newest backup must have been proven within this, by a
    /// whole verification or a rolling one (`verify --tables-per-run`/`--budget`).
    #[serde(with = "super::duration::option")]
    pub max_table_unproven_age: Option<SignedDuration>,
}

/// Why a database is not healthy.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Breach {
    /// Catalog objects no trusted key signed: `count`, and why the first was refused.
    Untrusted {
        /// How many.
        count: usize,
        /// Why the first one was not believed.
        first: String,
    },
    /// The newest backup carries alerts and the alert policy fails status on them.
    Alerts(usize),
    /// Backups not proven within `max_unproven_age`.
    Unproven {
        /// How many.
        count: usize,
        /// The threshold.
        max: SignedDuration,
        /// The oldest of them.
        oldest: BackupId,
    },
    /// Tables of the newest backup not proven within `max_table_unproven_age`.
    TablesUnproven {
        /// How many.
        count: usize,
        /// Of how many.
        total: usize,
        /// The threshold.
        max: SignedDuration,
        /// The least recently proven.
        first: String,
    },
    /// The newest backup's latest rolling verification failed (a table differs, or
    /// the archive or its restore failed).
    TablesFailed(BackupId),
    /// No committed backup.
    NoBackup,
    /// The latest verification of these backups failed.
    FailedVerification(Vec<BackupId>),
    /// The newest backup is older than `max_age`.
    TooOld {
        /// Its age.
        age: SignedDuration,
        /// The threshold.
        max: SignedDuration,
    },
    /// No backup passed verification, and `max_unverified_age` is set.
    NoVerifiedBackup,
    /// The newest verified backup is older than `max_unverified_age`.
    VerifiedTooOld {
        /// Its age.
        age: SignedDuration,
        /// The threshold.
        max: SignedDuration,
    },
    /// No verification measured a restore, and `max_restore_time` is set.
    NoRestoreTime,
    /// The last measured restore took longer than `max_restore_time`.
    RestoreTooSlow {
        /// Seconds it took.
        secs: f64,
        /// The threshold.
        max: SignedDuration,
    },
}

impl fmt::Display for Breach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Breach::Untrusted { count, first } => write!(
                f,
                "{count} catalog objects are not trusted and were left out: {first}{}",
                if *count > 1 {
                    " (and more: a catalog check lists them)"
                } else {
                    ""
                }
            ),
            Breach::Alerts(n) => write!(
                f,
                "the newest backup carries {n} alerts (alerts.fail_status)"
            ),
            Breach::Unproven { count, max, oldest } => write!(
                f,
                "{count} backups not proven within status.max_unproven_age {max:#} (oldest {oldest})"
            ),
            Breach::TablesUnproven {
                count,
                total,
                max,
                first,
            } => write!(
                f,
                "{count} of {total} tables not proven within status.max_table_unproven_age {max:#} (first {first})"
            ),
            Breach::TablesFailed(id) => write!(
                f,
                "the latest rolling verification of {id} (verify --tables-per-run/--budget) failed"
            ),
            Breach::NoBackup => f.write_str("no backup"),
            Breach::FailedVerification(ids) => {
                write!(f, "the latest verification of {} failed", ids.join(", "))
            }
            Breach::TooOld { age, max } => write!(
                f,
                "newest backup is {} old, more than status.max_age {max:#}",
                short_age(*age)
            ),
            Breach::NoVerifiedBackup => f.write_str("no verified backup"),
            Breach::VerifiedTooOld { age, max } => write!(
                f,
                "newest verified backup is {} old, more than status.max_unverified_age {max:#}",
                short_age(*age)
            ),
            Breach::NoRestoreTime => f.write_str("no measured restore time"),
            Breach::RestoreTooSlow { secs, max } => write!(
                f,
                "last measured restore took {secs:.1}s, more than status.max_restore_time {max:#}"
            ),
        }
    }
}

impl Serialize for Breach {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An age in minutes, hours or days, one decimal: `45m`, `7.5h`, `3.2d`.
pub fn short_age(d: SignedDuration) -> String {
    let secs = d.as_secs();
    if secs >= 2 * 86_400 {
        format!("{:.1}d", secs as f64 / 86_400.0)
    } else if secs >= 3600 {
        format!("{:.1}h", secs as f64 / 3600.0)
    } else {
        format!("{}m", secs / 60)
    }
}

/// One database's status.
#[derive(Clone, Debug, Serialize)]
pub struct DatabaseStatus {
    /// The database.
    pub database: String,
    /// Committed backups whose manifests are trusted and readable.
    pub backups: usize,
    /// The newest of them.
    pub newest_backup: Option<BackupId>,
    /// When it started.
    pub newest_backup_at: Option<Timestamp>,
    /// Its age in seconds.
    pub newest_backup_age_secs: Option<i64>,
    /// Its stored size.
    pub newest_backup_stored_bytes: Option<u64>,
    /// The stored size of every backup; of a deduplicated one, the chunks it stored
    /// itself (shared chunks are counted once, by the backup that stored them, and no
    /// longer once that backup is pruned).
    pub total_stored_bytes: u64,
    /// The newest backup whose latest verification passed.
    pub newest_verified_backup: Option<BackupId>,
    /// When it started.
    pub newest_verified_backup_at: Option<Timestamp>,
    /// Its age in seconds.
    pub newest_verified_backup_age_secs: Option<i64>,
    /// The newest passing verification.
    pub last_verification_at: Option<Timestamp>,
    /// The restore time it measured.
    pub last_restore_secs: Option<f64>,
    /// Backups not proven within `max_unproven_age` (with the threshold set).
    pub unproven_backups: Option<usize>,
    /// The oldest of them.
    pub oldest_unproven_backup: Option<BackupId>,
    /// When it started.
    pub oldest_unproven_backup_at: Option<Timestamp>,
    /// Tables in the newest backup (with `max_table_unproven_age`).
    pub tables: Option<usize>,
    /// Of those, proven within `max_table_unproven_age`.
    pub tables_proven: Option<usize>,
    /// The newest backup's anomalies against the one before it.
    pub alerts: Vec<String>,
    /// Catalog objects no trusted key signed (each left out of every figure here).
    pub untrusted_objects: Vec<String>,
    /// Each replica's newest copy of this database.
    pub replicas: Vec<ReplicaStatus>,
    /// Every threshold breached; empty when healthy.
    pub breaches: Vec<Breach>,
}

impl DatabaseStatus {
    /// No threshold is breached.
    pub fn healthy(&self) -> bool {
        self.breaches.is_empty()
    }
}

/// One replica's newest backup of a database.
#[derive(Clone, Debug, Serialize)]
pub struct ReplicaStatus {
    /// The replica, as it was named.
    pub url: String,
    /// Its newest backup of the database.
    pub newest_backup: Option<BackupId>,
    /// When that backup started.
    pub newest_backup_at: Option<Timestamp>,
}

/// Every database's status, judged as a whole by [`verdict`](Self::verdict).
#[derive(Clone, Debug)]
pub struct StatusReport {
    /// By database name.
    pub databases: Vec<DatabaseStatus>,
    /// The sink the catalog was read from, as it describes itself.
    pub sink: String,
}

impl StatusReport {
    /// The databases with a breach.
    pub fn breached(&self) -> Vec<&str> {
        self.databases
            .iter()
            .filter(|s| !s.healthy())
            .map(|s| s.database.as_str())
            .collect()
    }

    /// `Ok` when every database is healthy; an [`Integrity`](crate::ErrorKind::Integrity)
    /// error naming the breached databases, or saying there is no backup at all.
    pub fn verdict(&self) -> Result<()> {
        if self.databases.is_empty() {
            return Err(Error::integrity(format!(
                "no backup in {}; take a backup first",
                self.sink
            )));
        }
        let breached = self.breached();
        if breached.is_empty() {
            Ok(())
        } else {
            Err(Error::integrity(format!(
                "status thresholds breached for {}",
                breached.join(", ")
            )))
        }
    }

    /// The report as Prometheus text exposition (node_exporter's textfile format).
    pub fn prometheus_text(&self) -> String {
        prometheus_text(&self.databases)
    }
}

/// A status evaluation of every database in a sink, configured by its builder
/// methods and done by [`run`](Status::run).
///
/// # Example: alert when the newest backup is older than a day, or unproven for a week
///
/// ```no_run
/// use std::sync::Arc;
/// use jiff::SignedDuration;
/// use pgproof_core::ops::{Status, StatusPolicy};
///
/// async fn healthy(sink: Arc<dyn pgproof_core::Sink>) -> pgproof_core::Result<bool> {
///     let policy = StatusPolicy {
///         max_age: Some(SignedDuration::from_hours(26)),
///         max_unproven_age: Some(SignedDuration::from_hours(7 * 24)),
///         ..StatusPolicy::default()
///     };
///     let report = Status::new(sink, policy).run().await?;
///     for db in &report.databases {
///         for breach in &db.breaches {
///             eprintln!("{}: {breach}", db.database);
///         }
///     }
///     Ok(report.verdict().is_ok())
/// }
/// ```
#[must_use = "a Status does nothing until run"]
pub struct Status {
    sink: Arc<dyn Sink>,
    /// The same sink as the signature gate, when the catalog index is to be used.
    indexed: Option<Arc<SignedSink>>,
    policy: StatusPolicy,
    alerts: AlertPolicy,
    expected: Vec<String>,
    replicas: Vec<(String, Arc<dyn Sink>)>,
    now: Option<Timestamp>,
}

impl Status {
    /// Judges the catalog in `sink` by `policy`.
    pub fn new(sink: Arc<dyn Sink>, policy: StatusPolicy) -> Self {
        Self {
            sink,
            indexed: None,
            policy,
            alerts: AlertPolicy::default(),
            expected: Vec::new(),
            replicas: Vec::new(),
            now: None,
        }
    }

    /// Judges the catalog behind the signature gate `sink` by `policy`, reading it with
    /// each database's catalog index ([`Inventory::load_indexed`]): the same judgement
    /// as [`new`](Self::new), read faster, and the index refreshed when `sink` signs.
    pub fn indexed(sink: Arc<SignedSink>, policy: StatusPolicy) -> Self {
        Self {
            indexed: Some(Arc::clone(&sink)),
            ..Self::new(sink, policy)
        }
    }

    /// The alert policy: with `fail_status`, an alert on the newest backup is a breach.
    pub fn alert_policy(mut self, policy: AlertPolicy) -> Self {
        self.alerts = policy;
        self
    }

    /// Databases that must have backups: one without any is reported (breached)
    /// rather than left out.
    pub fn expect_databases(mut self, names: Vec<String>) -> Self {
        self.expected = names;
        self
    }

    /// A replica whose newest backups are reported beside each database's, named
    /// `label` (a URL without credentials).
    pub fn replica(mut self, label: String, sink: Arc<dyn Sink>) -> Self {
        self.replicas.push((label, sink));
        self
    }

    /// The time ages are measured at; default now.
    pub fn now(mut self, now: Timestamp) -> Self {
        self.now = Some(now);
        self
    }

    /// Reads the catalog once (and each replica's) and judges every database.
    pub async fn run(self) -> Result<StatusReport> {
        let now = self.now.unwrap_or_else(Timestamp::now);
        let inventory = match &self.indexed {
            Some(signed) => Inventory::load_indexed(signed, None).await?,
            None => Inventory::load(&*self.sink, None).await?,
        };
        let mut replicas = Vec::new();
        for (label, sink) in &self.replicas {
            replicas.push((label.clone(), Inventory::load(&**sink, None).await?));
        }
        let mut names: Vec<String> = inventory.databases.keys().cloned().collect();
        names.extend(self.expected.iter().cloned());
        names.sort();
        names.dedup();
        let empty = DatabaseInventory::default();
        let databases = names
            .into_iter()
            .map(|name| {
                let part = inventory.databases.get(&name).unwrap_or(&empty);
                let replicas = replica_statuses(&name, &replicas);
                self.judge(name, part, replicas, now)
            })
            .collect();
        Ok(StatusReport {
            databases,
            sink: self.sink.describe(),
        })
    }

    fn judge(
        &self,
        name: String,
        part: &DatabaseInventory,
        replicas: Vec<ReplicaStatus>,
        now: Timestamp,
    ) -> DatabaseStatus {
        let readable: Vec<_> = part
            .backups
            .iter()
            .filter_map(|b| b.manifest.as_ref().ok().map(|m| (b, m)))
            .collect();
        let newest = readable.iter().max_by_key(|(_, m)| m.started_at);
        let newest_verified = readable
            .iter()
            .filter(|(b, _)| b.proven().is_some())
            .max_by_key(|(_, m)| m.started_at);
        let last_verification = readable
            .iter()
            .filter_map(|(b, _)| b.proven())
            .max_by_key(|v| v.verified_at);
        let age = |at: Timestamp| now.duration_since(at);
        let mut s = DatabaseStatus {
            database: name,
            backups: readable.len(),
            newest_backup: newest.map(|(b, _)| b.backup_id.clone()),
            newest_backup_at: newest.map(|(_, m)| m.started_at),
            newest_backup_age_secs: newest.map(|(_, m)| age(m.started_at).as_secs()),
            newest_backup_stored_bytes: newest.map(|(_, m)| m.dump_stored_bytes()),
            total_stored_bytes: readable.iter().map(|(_, m)| m.stored_bytes_added()).sum(),
            newest_verified_backup: newest_verified.map(|(b, _)| b.backup_id.clone()),
            newest_verified_backup_at: newest_verified.map(|(_, m)| m.started_at),
            newest_verified_backup_age_secs: newest_verified
                .map(|(_, m)| age(m.started_at).as_secs()),
            last_verification_at: last_verification.map(|v| v.verified_at),
            last_restore_secs: last_verification
                .and_then(|v| v.restore_ms)
                .map(|ms| ms as f64 / 1000.0),
            unproven_backups: None,
            oldest_unproven_backup: None,
            oldest_unproven_backup_at: None,
            tables: None,
            tables_proven: None,
            alerts: newest
                .map(|(_, m)| m.alerts.iter().map(|a| a.detail.clone()).collect())
                .unwrap_or_default(),
            untrusted_objects: part.findings.iter().map(|f| f.key.clone()).collect(),
            replicas,
            breaches: Vec::new(),
        };
        let mut breaches = Vec::new();
        if let Some(first) = part.findings.first() {
            breaches.push(Breach::Untrusted {
                count: part.findings.len(),
                first: first.problem.clone(),
            });
        }
        if self.alerts.fail_status && !s.alerts.is_empty() {
            breaches.push(Breach::Alerts(s.alerts.len()));
        }
        if let Some(max) = self.policy.max_unproven_age {
            let mut unproven: Vec<_> = readable
                .iter()
                .filter(|(b, _)| b.proven().is_none_or(|v| age(v.verified_at) > max))
                .collect();
            unproven.sort_by_key(|(_, m)| m.started_at);
            s.unproven_backups = Some(unproven.len());
            s.oldest_unproven_backup = unproven.first().map(|(b, _)| b.backup_id.clone());
            s.oldest_unproven_backup_at = unproven.first().map(|(_, m)| m.started_at);
            if let Some((oldest, _)) = unproven.first() {
                breaches.push(Breach::Unproven {
                    count: unproven.len(),
                    max,
                    oldest: oldest.backup_id.clone(),
                });
            }
        }
        let ledger = TableLedger::of(&s.database, part);
        if let Some(ledger) = &ledger
            && ledger.newest_failed
        {
            breaches.push(Breach::TablesFailed(ledger.newest.backup_id.clone()));
        }
        if let Some(max) = self.policy.max_table_unproven_age
            && let Some(ledger) = ledger
        {
            let coverage = ledger.coverage(now, max);
            s.tables = Some(coverage.tables);
            s.tables_proven = Some(coverage.proven);
            if let Some(first) = coverage.unproven.first() {
                breaches.push(Breach::TablesUnproven {
                    count: coverage.unproven.len(),
                    total: coverage.tables,
                    max,
                    first: first.clone(),
                });
            }
        }
        if newest.is_none() {
            breaches.push(Breach::NoBackup);
        }
        let failing: Vec<BackupId> = readable
            .iter()
            .filter(|(b, _)| b.failed_latest())
            .map(|(b, _)| b.backup_id.clone())
            .collect();
        if !failing.is_empty() {
            breaches.push(Breach::FailedVerification(failing));
        }
        breaches.extend(self.threshold_breaches(&s, now));
        s.breaches = breaches;
        s
    }
}

impl Status {
    /// The RPO and RTO thresholds, judged from a database's figures.
    fn threshold_breaches(&self, s: &DatabaseStatus, now: Timestamp) -> Vec<Breach> {
        let mut breaches = Vec::new();
        let age = |at: Timestamp| now.duration_since(at);
        if let (Some(max), Some(at)) = (self.policy.max_age, s.newest_backup_at)
            && age(at) > max
        {
            breaches.push(Breach::TooOld { age: age(at), max });
        }
        if let Some(max) = self.policy.max_unverified_age {
            match s.newest_verified_backup_at {
                None => breaches.push(Breach::NoVerifiedBackup),
                Some(at) if age(at) > max => {
                    breaches.push(Breach::VerifiedTooOld { age: age(at), max });
                }
                Some(_) => {}
            }
        }
        if let Some(max) = self.policy.max_restore_time {
            match s.last_restore_secs {
                None => breaches.push(Breach::NoRestoreTime),
                Some(secs) if secs > max.as_secs_f64() => {
                    breaches.push(Breach::RestoreTooSlow { secs, max });
                }
                Some(_) => {}
            }
        }
        breaches
    }
}

fn replica_statuses(name: &str, replicas: &[(String, Inventory)]) -> Vec<ReplicaStatus> {
    replicas
        .iter()
        .map(|(url, inventory)| {
            let newest = inventory.databases.get(name).and_then(|p| {
                p.backups
                    .iter()
                    .filter_map(|b| b.manifest.as_ref().ok())
                    .max_by_key(|m| m.started_at)
            });
            ReplicaStatus {
                url: url.clone(),
                newest_backup: newest.map(|m| m.backup_id.clone()),
                newest_backup_at: newest.map(|m| m.started_at),
            }
        })
        .collect()
}

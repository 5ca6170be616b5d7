//! Rolling verification's bookkeeping: when each table of a database was last proven
//! (by a whole verification of a backup, or by a table proof of some of its tables),
//! which tables to prove next, and how many were proven within a window.
//!
//! The tables are those of the database's newest trusted backup; a proof from any of
//! its trusted backups counts for a table of the same name. A table's latest attempt
//! decides, as a backup's latest verification does: one that failed last is not
//! proven, whatever it passed before.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::catalog::{BackupRef, DatabaseInventory};

/// One table's latest attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// When it finished.
    pub at: Timestamp,
    /// Whether the table was proven.
    pub passed: bool,
}

/// A database's tables and their latest attempts, from its catalog.
#[derive(Clone, Debug)]
pub struct TableLedger {
    /// The newest trusted backup, whose tables these are.
    pub newest: BackupRef,
    /// Each table of the newest backup, with its latest attempt if any.
    pub tables: BTreeMap<String, Option<Attempt>>,
}

/// How many of a database's tables were proven within a window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Coverage {
    /// The database.
    pub database: String,
    /// Tables in its newest trusted backup.
    pub tables: usize,
    /// Of those, proven (latest attempt passed) within the window.
    pub proven: usize,
    /// The others, least recently proven first.
    pub unproven: Vec<String>,
}

impl Coverage {
    /// `proven / tables`, 1 for a database without tables.
    pub fn ratio(&self) -> f64 {
        if self.tables == 0 {
            1.0
        } else {
            self.proven as f64 / self.tables as f64
        }
    }
}

impl TableLedger {
    /// The ledger of one database's catalog, or `None` when it has no trusted
    /// backup with a fingerprint.
    pub fn of(database: &str, part: &DatabaseInventory) -> Option<Self> {
        let (newest, manifest) = part
            .backups
            .iter()
            .rev()
            .find_map(|b| b.manifest.as_ref().ok().map(|m| (b, m)))?;
        let fingerprint = manifest.fingerprint.as_ref()?;
        let mut tables: BTreeMap<String, Option<Attempt>> = fingerprint
            .tables
            .keys()
            .map(|t| (t.clone(), None))
            .collect();
        let mut note = |table: &str, attempt: Attempt| {
            if let Some(latest) = tables.get_mut(table)
                && latest.is_none_or(|l| l.at <= attempt.at)
            {
                *latest = Some(attempt);
            }
        };
        for backup in &part.backups {
            let Ok(manifest) = &backup.manifest else {
                continue;
            };
            // A whole verification that passed proved every table of its backup; one
            // that failed names no table here (its record is not read), so it leaves
            // the tables' own attempts to decide.
            if let Some(whole) = backup.verifications.last().filter(|v| v.passed)
                && let Some(f) = &manifest.fingerprint
            {
                for table in f.tables.keys() {
                    note(
                        table,
                        Attempt {
                            at: whole.verified_at,
                            passed: true,
                        },
                    );
                }
            }
            for proof in &backup.table_proofs {
                for (table, passed) in proof.tables() {
                    note(
                        table,
                        Attempt {
                            at: proof.verified_at,
                            passed,
                        },
                    );
                }
            }
        }
        Some(Self {
            newest: BackupRef {
                database: database.to_owned(),
                backup_id: newest.backup_id.clone(),
            },
            tables,
        })
    }

    /// The tables in the order a rolling verification takes them: never attempted
    /// first, then by their latest attempt, oldest first (a table that keeps failing
    /// does not crowd out the rest).
    pub fn rotation(&self) -> Vec<String> {
        let mut order: Vec<(&String, Option<Timestamp>)> = self
            .tables
            .iter()
            .map(|(table, attempt)| (table, attempt.map(|a| a.at)))
            .collect();
        order.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(b.0)));
        order.into_iter().map(|(table, _)| table.clone()).collect()
    }

    /// How many tables were proven within `window` before `now`.
    pub fn coverage(&self, now: Timestamp, window: SignedDuration) -> Coverage {
        let since = now.checked_sub(window).unwrap_or(Timestamp::MIN);
        let proven = |a: &Option<Attempt>| a.is_some_and(|a| a.passed && a.at >= since);
        Coverage {
            database: self.newest.database.clone(),
            tables: self.tables.len(),
            proven: self.tables.values().filter(|a| proven(a)).count(),
            unproven: self
                .rotation()
                .into_iter()
                .filter(|t| !proven(&self.tables[t]))
                .collect(),
        }
    }
}

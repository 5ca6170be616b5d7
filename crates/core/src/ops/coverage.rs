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
    /// Each table of the newest backup, with its latest result if any.
    pub tables: BTreeMap<String, Option<Attempt>>,
    /// When each table was last attempted, its result known or not (a batch left
    /// unfinished): the rotation's order.
    pub attempted: BTreeMap<String, Timestamp>,
    /// The newest backup's latest table proof failed as a verdict (a table differs,
    /// or the archive or its restore failed).
    pub newest_failed: bool,
    /// Each table's rows in the newest backup: what a batch costs.
    pub rows: BTreeMap<String, i64>,
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
        let mut attempted: BTreeMap<String, Timestamp> = BTreeMap::new();
        let mut note = |table: &str, at: Timestamp, passed: Option<bool>| {
            let Some(latest) = tables.get_mut(table) else {
                return;
            };
            let last = attempted.entry(table.to_owned()).or_insert(at);
            *last = (*last).max(at);
            if let Some(passed) = passed
                && latest.is_none_or(|l| l.at <= at)
            {
                *latest = Some(Attempt { at, passed });
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
                    note(table, whole.verified_at, Some(true));
                }
            }
            for proof in &backup.table_proofs {
                for (table, passed) in proof.tables() {
                    note(table, proof.verified_at, passed);
                }
            }
        }
        let newest_failed = newest
            .table_proofs
            .iter()
            .rfind(|p| p.tables().any(|(_, r)| r.is_some()) || p.failed())
            .is_some_and(|p| p.failed());
        Some(Self {
            newest: BackupRef {
                database: database.to_owned(),
                backup_id: newest.backup_id.clone(),
            },
            tables,
            attempted,
            newest_failed,
            rows: fingerprint
                .tables
                .iter()
                .map(|(t, f)| (t.clone(), f.rows))
                .collect(),
        })
    }

    /// The rotation cut into batches of `size` tables; a table holding more rows
    /// than `size` average tables goes alone, so a table too big for a budget holds
    /// up no other (it is left unfinished alone, and the rest moves on).
    pub fn batches(&self, size: usize) -> Vec<Vec<String>> {
        let size = size.max(1);
        let total: i64 = self.rows.values().map(|r| r.max(&0)).sum();
        let cap = (total as f64 * size as f64 / self.tables.len().max(1) as f64).ceil() as i64;
        let mut batches: Vec<Vec<String>> = Vec::new();
        let mut current: Vec<String> = Vec::new();
        for table in self.rotation() {
            let rows = self.rows.get(&table).copied().unwrap_or(0).max(0);
            let alone = rows > cap;
            if !current.is_empty() && (alone || current.len() == size) {
                batches.push(std::mem::take(&mut current));
            }
            current.push(table);
            if alone {
                batches.push(std::mem::take(&mut current));
            }
        }
        if !current.is_empty() {
            batches.push(current);
        }
        batches
    }

    /// The tables in the order a rolling verification takes them: never attempted
    /// first, then by their latest attempt, oldest first (a table that keeps failing
    /// does not crowd out the rest).
    pub fn rotation(&self) -> Vec<String> {
        let mut order: Vec<(&String, Option<Timestamp>)> = self
            .tables
            .keys()
            .map(|table| (table, self.attempted.get(table).copied()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(rows: &[(&str, i64)]) -> TableLedger {
        TableLedger {
            newest: BackupRef {
                database: "app".into(),
                backup_id: crate::catalog::BackupId::parse("1").unwrap(),
            },
            tables: rows.iter().map(|(t, _)| ((*t).to_owned(), None)).collect(),
            attempted: BTreeMap::new(),
            newest_failed: false,
            rows: rows.iter().map(|(t, r)| ((*t).to_owned(), *r)).collect(),
        }
    }

    #[test]
    fn a_table_bigger_than_its_share_is_batched_alone_in_rotation_order() {
        let l = ledger(&[
            ("a", 10),
            ("b", 10),
            ("big", 10_000),
            ("c", 10),
            ("d", 10),
            ("e", 10),
        ]);
        assert_eq!(
            l.batches(2),
            [
                vec!["a".to_owned(), "b".to_owned()],
                vec!["big".to_owned()],
                vec!["c".to_owned(), "d".to_owned()],
                vec!["e".to_owned()],
            ]
        );
        let all: usize = l.batches(4).iter().map(Vec::len).sum();
        assert_eq!(all, 6);
    }

    #[test]
    fn the_least_recently_attempted_come_first_and_a_window_counts_the_proven() {
        let mut l = ledger(&[("a", 1), ("b", 1), ("c", 1)]);
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        l.tables.insert(
            "a".into(),
            Some(Attempt {
                at: at("2026-12-01T00:00:00Z"),
                passed: true,
            }),
        );
        l.tables.insert(
            "b".into(),
            Some(Attempt {
                at: at("2026-11-01T00:00:00Z"),
                passed: false,
            }),
        );
        l.attempted.insert("a".into(), at("2026-12-01T00:00:00Z"));
        // Left unfinished since: later in the rotation, still proven.
        l.attempted.insert("b".into(), at("2026-12-02T00:00:00Z"));
        assert_eq!(l.rotation(), ["c", "a", "b"]);
        let c = l.coverage(
            at("2026-12-03T00:00:00Z"),
            SignedDuration::from_hours(24 * 7),
        );
        assert_eq!((c.tables, c.proven), (3, 1));
        assert_eq!(c.unproven, ["c", "b"]);
        let c = l.coverage(
            at("2026-12-30T00:00:00Z"),
            SignedDuration::from_hours(24 * 7),
        );
        assert_eq!(c.proven, 0);
    }
}

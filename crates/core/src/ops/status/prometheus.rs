//! The Prometheus text exposition of a status report: one gauge family per figure,
//! one sample per database.

use std::collections::BTreeMap;

use jiff::Timestamp;

use super::DatabaseStatus;

/// One metric's help text and its sample per database.
type Family<'a> = (&'static str, Vec<(&'a str, f64)>);

/// The statuses as Prometheus text exposition: one gauge family per figure, one
/// sample per database.
pub(super) fn prometheus_text(statuses: &[DatabaseStatus]) -> String {
    let mut metrics: BTreeMap<&str, Family<'_>> = BTreeMap::new();
    for s in statuses {
        let db = s.database.as_str();
        let ts = |t: Option<Timestamp>| t.map(|t| t.as_millisecond() as f64 / 1000.0);
        let figures: [(&str, &str, Option<f64>); 14] = [
            (
                "pgproof_last_backup_timestamp_seconds",
                "Start of the newest committed backup, Unix time.",
                ts(s.newest_backup_at),
            ),
            (
                "pgproof_last_verified_backup_timestamp_seconds",
                "Start of the newest backup that passed verification, Unix time.",
                ts(s.newest_verified_backup_at),
            ),
            (
                "pgproof_last_verification_timestamp_seconds",
                "End of the newest passing verification, Unix time.",
                ts(s.last_verification_at),
            ),
            (
                "pgproof_restore_seconds",
                "Restore time measured by the newest passing verification.",
                s.last_restore_secs,
            ),
            (
                "pgproof_backup_bytes",
                "Stored size of the newest backup.",
                s.newest_backup_stored_bytes.map(|b| b as f64),
            ),
            (
                "pgproof_backups",
                "Committed backups in the sink.",
                Some(s.backups as f64),
            ),
            (
                "pgproof_unproven_backups",
                "Backups not proven within status.max_unproven_age.",
                s.unproven_backups.map(|n| n as f64),
            ),
            (
                "pgproof_oldest_unproven_backup_timestamp_seconds",
                "Start of the oldest backup not proven within status.max_unproven_age, Unix time.",
                ts(s.oldest_unproven_backup_at),
            ),
            (
                "pgproof_tables",
                "Tables in the newest backup (with status.max_table_unproven_age).",
                s.tables.map(|n| n as f64),
            ),
            (
                "pgproof_tables_proven",
                "Tables of the newest backup proven within status.max_table_unproven_age.",
                s.tables_proven.map(|n| n as f64),
            ),
            (
                "pgproof_table_coverage_ratio",
                "Tables proven within status.max_table_unproven_age / all tables of the newest backup.",
                s.tables.zip(s.tables_proven).map(|(all, proven)| {
                    if all == 0 {
                        1.0
                    } else {
                        proven as f64 / all as f64
                    }
                }),
            ),
            (
                "pgproof_backup_alerts",
                "Anomalies of the newest backup against the previous one.",
                Some(s.alerts.len() as f64),
            ),
            (
                "pgproof_untrusted_objects",
                "Catalog objects (manifests, records, pins, leases, tombstones) no trusted key signed.",
                Some(s.untrusted_objects.len() as f64),
            ),
            (
                "pgproof_status_breached",
                "1 when a [status] threshold is breached or there is no backup.",
                Some(if s.healthy() { 0.0 } else { 1.0 }),
            ),
        ];
        for (name, help, value) in figures {
            if let Some(v) = value {
                metrics
                    .entry(name)
                    .or_insert((help, Vec::new()))
                    .1
                    .push((db, v));
            }
        }
    }
    let mut text = String::new();
    for (name, (help, values)) in &metrics {
        text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (db, v) in values {
            text.push_str(&format!("{name}{{database=\"{}\"}} {v}\n", label(db)));
        }
    }
    text
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

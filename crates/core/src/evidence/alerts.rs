//! Anomaly alerts: the quietest loss is a table truncated by mistake in the source,
//! which a backup then preserves perfectly. Each backup's row counts and dump size are
//! compared with the previous committed backup of the same database; a table that
//! vanished, became empty or lost more than a set share of its rows, or a dump that
//! shrank by more than a set share, is an alert with the figures.

use serde::{Deserialize, Serialize};

use crate::evidence::Fingerprint;

/// When to alert. A config file's `[alerts]` deserializes into it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertPolicy {
    /// A table losing more than this share of its rows (0.5: half).
    pub max_row_drop: f64,
    /// The dump shrinking by more than this share.
    pub max_size_drop: f64,
    /// Whether a status evaluation counts an alert on the newest backup as a breach.
    pub fail_status: bool,
}

impl Default for AlertPolicy {
    fn default() -> Self {
        Self {
            max_row_drop: 0.5,
            max_size_drop: 0.5,
            fail_status: false,
        }
    }
}

/// One anomaly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// `vanished`, `emptied`, `rows-dropped`, `renamed` or `dump-shrank`.
    pub kind: String,
    /// The table, if about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// The figures.
    pub detail: String,
}

/// The alerts for a backup whose fingerprint is `now` and raw dump size `now_bytes`,
/// against the previous backup `previous_id`, whose were `before` and `was_bytes`.
pub fn compare(
    previous_id: &str,
    before: &Fingerprint,
    was_bytes: u64,
    now: &Fingerprint,
    now_bytes: u64,
    policy: AlertPolicy,
) -> Vec<Alert> {
    let mut alerts = Vec::new();
    let since = format!("since {previous_id}");
    for (name, was) in &before.tables {
        match now.tables.get(name) {
            None => {
                // The same rows under a new name: renamed, not lost.
                let renamed = now.tables.iter().find(|(other, t)| {
                    !before.tables.contains_key(*other) && t.same_rows(was) && was.rows > 0
                });
                alerts.push(match renamed {
                    Some((new_name, _)) => Alert {
                        kind: "renamed".into(),
                        table: Some(name.clone()),
                        detail: format!(
                            "table {name} is now {new_name} ({} rows, same contents) {since}",
                            was.rows
                        ),
                    },
                    None => Alert {
                        kind: "vanished".into(),
                        table: Some(name.clone()),
                        detail: format!("table {name} ({} rows) is gone {since}", was.rows),
                    },
                });
            }
            Some(t) if was.rows > 0 && t.rows == 0 => alerts.push(Alert {
                kind: "emptied".into(),
                table: Some(name.clone()),
                detail: format!("table {name} had {} rows, now 0 ({since})", was.rows),
            }),
            Some(t)
                if was.rows > 0
                    && (was.rows - t.rows) as f64 / was.rows as f64 > policy.max_row_drop =>
            {
                alerts.push(Alert {
                    kind: "rows-dropped".into(),
                    table: Some(name.clone()),
                    detail: format!(
                        "table {name} lost {:.0}% of its rows: {} -> {} ({since}; alert above {:.0}%)",
                        100.0 * (was.rows - t.rows) as f64 / was.rows as f64,
                        was.rows,
                        t.rows,
                        100.0 * policy.max_row_drop
                    ),
                });
            }
            Some(_) => {}
        }
    }
    if was_bytes > 0
        && now_bytes < was_bytes
        && (was_bytes - now_bytes) as f64 / was_bytes as f64 > policy.max_size_drop
    {
        alerts.push(Alert {
            kind: "dump-shrank".into(),
            table: None,
            detail: format!(
                "the dump shrank by {:.0}%: {was_bytes} -> {now_bytes} bytes ({since}; alert above {:.0}%)",
                100.0 * (was_bytes - now_bytes) as f64 / was_bytes as f64,
                100.0 * policy.max_size_drop
            ),
        });
    }
    alerts
}

//! The application's own invariants: queries the operator names (an audit chain's
//! verify function, a balance that must be zero, …), run in the dump's snapshot at
//! backup time and again on the restored database. pgproof does not know what they
//! mean; it knows the two results must be the same, and, when the operator says what
//! the result must be, that it is.

use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::codec::sha256_hex;
use crate::error::{Error, Result};
use crate::pg::db_err;

/// An invariant query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invariant {
    /// Its name, shown as the check `invariant:<name>`.
    pub name: String,
    /// A read-only query. It runs with the database's default `search_path` and with
    /// TimeZone, DateStyle, IntervalStyle and extra_float_digits pinned, so its text
    /// result does not depend on the session.
    pub sql: String,
    /// The result it must return: rows joined by newlines, columns by tabs, NULL as
    /// `\N` (an empty string for no rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
}

/// An invariant's result at backup time, in the manifest. Only its hash is kept: the
/// result may hold data the manifest must not show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvariantResult {
    /// The invariant, as run.
    pub invariant: Invariant,
    /// Rows returned.
    pub rows: u64,
    /// sha256 of the result text.
    pub sha256: String,
    /// Whether the result was the expected one, when one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_expected: Option<bool>,
}

/// What one run of an invariant returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The result as text (see [`Invariant::expect`]).
    pub text: String,
    /// Rows returned.
    pub rows: u64,
}

impl Outcome {
    /// sha256 of the text.
    pub fn sha256(&self) -> String {
        sha256_hex(self.text.as_bytes())
    }

    /// Whether it is what `invariant` expects (`None`: it expects nothing).
    pub fn as_expected(&self, invariant: &Invariant) -> Option<bool> {
        invariant
            .expect
            .as_ref()
            .map(|e| e.trim_end() == self.text.trim_end())
    }

    /// The text, shortened for a message.
    pub fn shown(&self) -> String {
        const LIMIT: usize = 200;
        let one_line = self.text.replace('\n', " | ");
        match one_line.char_indices().nth(LIMIT) {
            Some((cut, _)) => format!("{:?}…", &one_line[..cut]),
            None => format!("{one_line:?}"),
        }
    }
}

/// Settings an invariant's text result depends on, pinned for its transaction; the
/// search path is the database's own, as the application's queries expect.
const PINNED: &str = "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'; \
     SET LOCAL IntervalStyle = 'postgres'; SET LOCAL extra_float_digits = 3; \
     SET LOCAL bytea_output = 'hex'; SET LOCAL search_path TO DEFAULT";

impl Invariant {
    /// Runs the query inside the transaction `client` has open (the dump's snapshot).
    pub async fn run_in_transaction(&self, client: &Client) -> Result<Outcome> {
        // Read-only for the rest of the transaction: it runs in the source's snapshot,
        // and nothing may write there. (A transaction can be made read-only at any
        // point, never read-write again.)
        client
            .batch_execute(&format!("{PINNED}; SET LOCAL transaction_read_only = on"))
            .await
            .map_err(db_err("pinning settings for an invariant"))?;
        // Exactly one statement, and one that returns rows: the server refuses to
        // prepare several (`SELECT 1; COMMIT; CREATE TABLE …`), and transaction
        // control, SET or COPY return none.
        let statement = client.prepare(&self.sql).await.map_err(|e| {
            let detail = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned());
            Error::config(format!(
                "invariant {:?} is not one query pgproof can run ({detail}); write exactly one read-only query that returns rows",
                self.name
            ))
        })?;
        if statement.columns().is_empty() {
            return Err(Error::config(format!(
                "invariant {:?} returns no rows: write one read-only query (SELECT …) that returns its result",
                self.name
            )));
        }
        let messages = client.simple_query(&self.sql).await.map_err(|e| {
            let detail = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned());
            Error::config(format!(
                "invariant {:?} failed: {detail}; fix its query (it runs read-only, with the database's search_path)",
                self.name
            ))
        })?;
        let mut lines = Vec::new();
        for message in messages {
            if let SimpleQueryMessage::Row(row) = message {
                let columns: Vec<&str> = (0..row.len())
                    .map(|i| row.get(i).unwrap_or("\\N"))
                    .collect();
                lines.push(columns.join("\t"));
            }
        }
        Ok(Outcome {
            rows: lines.len() as u64,
            text: lines.join("\n"),
        })
    }

    /// Runs the query in a read-only transaction of its own.
    pub async fn run(&self, client: &Client) -> Result<Outcome> {
        client
            .batch_execute("BEGIN READ ONLY")
            .await
            .map_err(db_err("starting an invariant's transaction"))?;
        let outcome = self.run_in_transaction(client).await;
        let _ = client.batch_execute("ROLLBACK").await;
        outcome
    }

    /// The result to record at backup time.
    pub fn record(&self, outcome: &Outcome) -> InvariantResult {
        InvariantResult {
            invariant: self.clone(),
            rows: outcome.rows,
            sha256: outcome.sha256(),
            as_expected: outcome.as_expected(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_results_ignore_trailing_whitespace_only() {
        let invariant = Invariant {
            name: "chain".into(),
            sql: "SELECT 1".into(),
            expect: Some("t\n".into()),
        };
        let outcome = |text: &str| Outcome {
            text: text.into(),
            rows: 1,
        };
        assert_eq!(outcome("t").as_expected(&invariant), Some(true));
        assert_eq!(outcome("f").as_expected(&invariant), Some(false));
        assert_eq!(outcome(" t").as_expected(&invariant), Some(false));
        let unexpecting = Invariant {
            expect: None,
            ..invariant
        };
        assert_eq!(outcome("x").as_expected(&unexpecting), None);
    }

    #[test]
    fn long_results_are_shortened_for_messages() {
        let outcome = Outcome {
            text: "x".repeat(1000),
            rows: 1,
        };
        assert!(outcome.shown().chars().count() < 210);
    }
}

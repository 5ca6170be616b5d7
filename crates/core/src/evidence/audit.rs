//! The tamper-evident audit chain in `migrations/`: installing it and asking it to
//! verify itself.

use tokio_postgres::Client;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pg::db_err;

mod embedded {
    refinery::embed_migrations!("../../migrations");
}

/// Applies pending migrations from `migrations/` (tracked by refinery in
/// `refinery_schema_history`); returns the names of those applied now.
pub async fn migrate(client: &mut Client) -> Result<Vec<String>> {
    let report = embedded::migrations::runner()
        .run_async(client)
        .await
        .map_err(|e| Error::database(format!("migration failed: {e}")))?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| format!("V{}__{}", m.version(), m.name()))
        .collect())
}

/// The audit chain as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainState {
    /// Rows in `pgproof.audit_events`.
    pub rows: i64,
    /// `last_seq` in the head row.
    pub last_seq: i64,
    /// `head_hash` in the head row, hex.
    pub head_hash: String,
}

/// What `pgproof.audit_verify()` found.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChainReport {
    /// Rows walked in seq order.
    pub rows_walked: i64,
    /// The first broken row, if any.
    pub first_break: Option<ChainBreak>,
    /// Whether the head row equals the last row's seq and hash.
    pub head_matches: bool,
    /// `last_seq` in the head row.
    pub head_seq: i64,
    /// seq of the last row walked.
    pub last_seq: i64,
}

/// Where and why the chain first breaks.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChainBreak {
    /// The row's seq.
    pub seq: i64,
    /// The row's id.
    pub id: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ChainReport {
    /// No break and the head matches.
    pub fn is_intact(&self) -> bool {
        self.first_break.is_none() && self.head_matches
    }
}

/// Runs the chain's verify function; `None` when the database has no chain.
pub async fn verify_chain(client: &Client) -> Result<Option<ChainReport>> {
    if !installed(client).await? {
        return Ok(None);
    }
    let row = client
        .query_one(
            "SELECT rows_walked, first_break_seq, first_break_id::text, first_break_reason, \
                    head_matches, head_seq, last_seq FROM pgproof.audit_verify()",
            &[],
        )
        .await
        .map_err(db_err("verifying the audit chain"))?;
    let first_break = row.get::<_, Option<i64>>(1).map(|seq| ChainBreak {
        seq,
        id: row.get::<_, Option<String>>(2).unwrap_or_default(),
        reason: row.get::<_, Option<String>>(3).unwrap_or_default(),
    });
    Ok(Some(ChainReport {
        rows_walked: row.get(0),
        first_break,
        head_matches: row.get(4),
        head_seq: row.get(5),
        last_seq: row.get(6),
    }))
}

/// Whether the database has pgproof's chain: both tables and the verify function.
async fn installed(client: &Client) -> Result<bool> {
    Ok(client
        .query_one(
            "SELECT to_regclass('pgproof.audit_events') IS NOT NULL \
                AND to_regclass('pgproof.audit_chain_head') IS NOT NULL \
                AND to_regprocedure('pgproof.audit_verify()') IS NOT NULL",
            &[],
        )
        .await
        .map_err(db_err("looking for the audit chain"))?
        .get(0))
}

/// The audit chain's stored state, `None` without a chain. A missing head row is
/// reported as head `missing` at seq -1, which no backup recorded.
pub async fn chain_state(client: &Client) -> Result<Option<ChainState>> {
    if !installed(client).await? {
        return Ok(None);
    }
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM pgproof.audit_events), \
                    coalesce((SELECT last_seq FROM pgproof.audit_chain_head), -1), \
                    coalesce((SELECT encode(head_hash, 'hex') FROM pgproof.audit_chain_head), 'missing')",
            &[],
        )
        .await
        .map_err(db_err("reading the audit chain head"))?;
    Ok(Some(ChainState {
        rows: row.get(0),
        last_seq: row.get(1),
        head_hash: row.get(2),
    }))
}

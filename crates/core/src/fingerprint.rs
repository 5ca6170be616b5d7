//! Content fingerprints: per table a row count and an order-independent hash of every
//! row's binary form, computed inside PostgreSQL so no table data crosses the wire.
//!
//! Each row is reduced to bytes that no session setting can change: `record_send(row)`
//! when every column has a built-in type (built-in type OIDs are the same in every
//! database), otherwise a length-prefixed concatenation of per-column send functions
//! (`int4send`, `enum_send`, …) with the text form, under pinned settings, only for
//! types that have no restore-stable binary form (user-defined composites, arrays of
//! user types, extension types). Each row's bytes are hashed to 64 bits with
//! `hashtextextended` and summed as `numeric`: order-independent, and, unlike XOR,
//! duplicates do not cancel.
//!
//! The same computation over the source (in the dump's snapshot) and over a restore
//! must agree table by table; a difference names the table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::error::Result;
use crate::pg::{db_err, quote_ident};

/// Names the row encoding and combination, so fingerprints of different methods are
/// never compared.
pub const METHOD: &str = "rowsend-hashtextextended-sum/v1";

/// Below this OID every type is built in, with the same OID in every database.
const FIRST_NORMAL_OBJECT_ID: u32 = 16384;

/// Session settings that the text fallback depends on, pinned for the transaction.
const PINNED_SETTINGS: &str = "SET LOCAL client_encoding = 'UTF8'; SET LOCAL DateStyle = 'ISO, YMD'; \
     SET LOCAL search_path = pg_catalog, pg_temp; \
     SET LOCAL TimeZone = 'UTC'; SET LOCAL IntervalStyle = 'postgres'; \
     SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = 'hex'";

/// A database's content fingerprint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// [`METHOD`] at the time it was taken.
    pub method: String,
    /// Per table (`schema.table`, quoted as needed).
    pub tables: BTreeMap<String, TableFingerprint>,
    /// Per sequence: its state.
    pub sequences: BTreeMap<String, SequenceState>,
    /// Number of large objects.
    pub large_objects: i64,
    /// The audit chain's state, when the database has pgproof's chain.
    pub audit_chain: Option<ChainState>,
}

/// One table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableFingerprint {
    /// Row count.
    pub rows: i64,
    /// Sum of the rows' 64-bit hashes, as a decimal string.
    pub hash: String,
}

/// One sequence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceState {
    /// `last_value`.
    pub last_value: i64,
    /// `is_called`.
    pub is_called: bool,
    /// `increment`: its sign says which way the sequence moves.
    #[serde(default = "one")]
    pub increment: i64,
}

fn one() -> i64 {
    1
}

impl SequenceState {
    /// Whether `self` (after restore) is at or past `recorded` (read before pg_dump
    /// ran, so a busy sequence may legitimately have moved on).
    pub fn reached(&self, recorded: &SequenceState) -> bool {
        let at = (self.last_value, self.is_called);
        let was = (recorded.last_value, recorded.is_called);
        if recorded.increment < 0 {
            (-at.0, at.1) >= (-was.0, was.1)
        } else {
            at >= was
        }
    }
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

struct Column {
    name: String,
    type_oid: u32,
    type_kind: i8,
    base_oid: u32,
    base_send: String,
    base_name: String,
}

impl Fingerprint {
    /// Computes the fingerprint of the database `client` is connected to, in a
    /// REPEATABLE READ transaction of its own.
    pub async fn compute(client: &Client) -> Result<Self> {
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(db_err("starting the fingerprint transaction"))?;
        let result = match Plan::prepare(client).await {
            Ok(plan) => plan.compute(client).await,
            Err(e) => Err(e),
        };
        let _ = client.batch_execute("COMMIT").await;
        result
    }
}

/// The first half of a fingerprint, done in the dump's snapshot before pg_dump starts:
/// settings pinned, every table listed and locked (ACCESS SHARE, as pg_dump locks
/// them, so no TRUNCATE or rewrite can empty a table under the snapshot), and the
/// sequences read — they are not transactional, so reading them before pg_dump makes
/// the dumped values at least these.
pub struct Plan {
    tables: Vec<(u32, String, bool)>,
    sequences: BTreeMap<String, SequenceState>,
}

impl Plan {
    /// Prepares inside the transaction `client` has open.
    pub async fn prepare(client: &Client) -> Result<Self> {
        client
            .batch_execute(PINNED_SETTINGS)
            .await
            .map_err(db_err("pinning session settings for the fingerprint"))?;
        let rows = client
            .query(
                "SELECT c.oid, format('%I.%I', n.nspname, c.relname),                         EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid)                  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace                  WHERE c.relkind = 'r'                    AND n.nspname NOT IN ('pg_catalog', 'information_schema')                    AND n.nspname NOT LIKE 'pg\\_toast%' AND NOT pg_is_other_temp_schema(n.oid)                    AND n.oid <> pg_my_temp_schema()                    AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                                   AND d.objid = c.oid AND d.deptype = 'e')                  ORDER BY 2",
                &[],
            )
            .await
            .map_err(db_err("listing tables to fingerprint"))?;
        let tables: Vec<(u32, String, bool)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        for chunk in tables.chunks(500) {
            let names: Vec<&str> = chunk.iter().map(|(_, name, _)| name.as_str()).collect();
            client
                .batch_execute(&format!(
                    "LOCK TABLE ONLY {} IN ACCESS SHARE MODE",
                    names.join(", ")
                ))
                .await
                .map_err(db_err("locking the tables to fingerprint"))?;
        }
        let rows = client
            .query(
                "SELECT format('%I.%I', n.nspname, c.relname), s.seqincrement FROM pg_class c                  JOIN pg_namespace n ON n.oid = c.relnamespace                  JOIN pg_sequence s ON s.seqrelid = c.oid                  WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema')                    AND NOT pg_is_other_temp_schema(n.oid) AND n.oid <> pg_my_temp_schema()                    AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass                                    AND d.objid = c.oid AND d.deptype = 'e')                  ORDER BY 1",
                &[],
            )
            .await
            .map_err(db_err("listing sequences"))?;
        let mut sequences = BTreeMap::new();
        for seq in rows {
            let name: String = seq.get(0);
            let row = client
                .query_one(&format!("SELECT last_value, is_called FROM {name}"), &[])
                .await
                .map_err(db_err("reading a sequence"))?;
            sequences.insert(
                name,
                SequenceState {
                    last_value: row.get(0),
                    is_called: row.get(1),
                    increment: seq.get(1),
                },
            );
        }
        Ok(Self { tables, sequences })
    }

    /// Hashes every table and finishes the fingerprint.
    pub async fn compute(self, client: &Client) -> Result<Fingerprint> {
        let mut fingerprint = Fingerprint {
            method: METHOD.to_owned(),
            sequences: self.sequences,
            ..Fingerprint::default()
        };
        for (oid, name, inherits) in self.tables {
            let columns = table_columns(client, oid).await?;
            let row_bytes = row_expression(&columns, inherits);
            let sql = format!(
                "SELECT count(*), coalesce(sum(hashtextextended(encode({row_bytes}, 'hex'), 0)), 0)::text \
                 FROM ONLY {name} t"
            );
            let row = client
                .query_one(&sql, &[])
                .await
                .map_err(db_err("fingerprinting a table"))?;
            fingerprint.tables.insert(
                name,
                TableFingerprint {
                    rows: row.get(0),
                    hash: row.get(1),
                },
            );
        }
        fingerprint.large_objects = client
            .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
            .await
            .map_err(db_err("counting large objects"))?
            .get(0);
        fingerprint.audit_chain = crate::audit::chain_state(client).await?;
        Ok(fingerprint)
    }
}

async fn table_columns(client: &Client, table: u32) -> Result<Vec<Column>> {
    // A domain is hashed as its base type; a domain over a domain takes the text path.
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid, t.typtype, bt.oid, bt.typsend::text, \
                    format_type(bt.oid, NULL) \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attname",
            &[&table],
        )
        .await
        .map_err(db_err("reading a table's columns"))?;
    Ok(rows
        .into_iter()
        .map(|r| Column {
            name: r.get(0),
            type_oid: r.get(1),
            type_kind: r.get(2),
            base_oid: r.get(3),
            base_send: r.get(4),
            base_name: r.get(5),
        })
        .collect())
}

/// SQL for a row's restore-stable bytes, with `t` as the row alias. Columns come
/// sorted by name: an inheritance child's physical column order can change on
/// restore, so only tables outside inheritance use `record_send`, which follows it.
fn row_expression(columns: &[Column], inherits: bool) -> String {
    let builtin_only = columns.iter().all(|c| {
        c.type_oid < FIRST_NORMAL_OBJECT_ID
            && c.type_kind != b'd' as i8
            && c.base_send != "record_send"
            && !names_an_object(c)
    });
    if builtin_only && !inherits {
        // `t.*`, not `t`: a column named `t` would shadow the row.
        return "record_send(t.*)".to_owned();
    }
    if columns.is_empty() {
        return "'\\x'::bytea".to_owned();
    }
    columns
        .iter()
        .map(|c| {
            let col = format!("t.{}", quote_ident(&c.name));
            let stable_send = c.base_send != "record_send"
                && !names_an_object(c)
                && (c.base_oid < FIRST_NORMAL_OBJECT_ID || c.base_send == "enum_send");
            let bytes = if stable_send {
                format!("{}({col}::{})", c.base_send, c.base_name)
            } else {
                format!("convert_to({col}::text, 'UTF8')")
            };
            format!("coalesce(int4send(octet_length({bytes})) || {bytes}, '\\xffffffff'::bytea)")
        })
        .collect::<Vec<_>>()
        .join(" || ")
}

/// `regclass`, `regtype` and kin send OIDs, which a restore renumbers; their text (a
/// qualified name under the pinned search_path) is what survives.
fn names_an_object(c: &Column) -> bool {
    c.base_name.starts_with("reg") && c.base_oid < FIRST_NORMAL_OBJECT_ID
}

/// A table-by-table comparison, for reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// What differs (`public.orders`, `sequence public.s`, `large objects`).
    pub subject: String,
    /// Recorded at backup.
    pub expected: String,
    /// Found after restore.
    pub found: String,
}

impl Fingerprint {
    /// Everything that differs from `found`, expected being `self`.
    pub fn differences(&self, found: &Fingerprint) -> Vec<Difference> {
        let mut out = Vec::new();
        let describe = |t: Option<&TableFingerprint>| match t {
            Some(t) => format!("{} rows, hash {}", t.rows, t.hash),
            None => "no such table".to_owned(),
        };
        let names: std::collections::BTreeSet<&String> =
            self.tables.keys().chain(found.tables.keys()).collect();
        for name in names {
            let (e, f) = (self.tables.get(name), found.tables.get(name));
            if e != f {
                out.push(Difference {
                    subject: name.clone(),
                    expected: describe(e),
                    found: describe(f),
                });
            }
        }
        let seq = |s: Option<&SequenceState>| match s {
            Some(s) => format!("last_value {}, is_called {}", s.last_value, s.is_called),
            None => "no such sequence".to_owned(),
        };
        let seq_ok = |e: Option<&SequenceState>, f: Option<&SequenceState>| match (e, f) {
            (Some(e), Some(f)) => f.reached(e),
            (None, None) => true,
            _ => false,
        };
        let names: std::collections::BTreeSet<&String> = self
            .sequences
            .keys()
            .chain(found.sequences.keys())
            .collect();
        for name in names {
            let (e, f) = (self.sequences.get(name), found.sequences.get(name));
            if !seq_ok(e, f) {
                out.push(Difference {
                    subject: format!("sequence {name}"),
                    expected: format!("at least {}", seq(e)),
                    found: seq(f),
                });
            }
        }
        if self.large_objects != found.large_objects {
            out.push(Difference {
                subject: "large objects".into(),
                expected: self.large_objects.to_string(),
                found: found.large_objects.to_string(),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(last_value: i64, is_called: bool, increment: i64) -> SequenceState {
        SequenceState {
            last_value,
            is_called,
            increment,
        }
    }

    #[test]
    fn sequences_may_move_on_but_not_back() {
        let recorded = seq(42, true, 1);
        assert!(seq(42, true, 1).reached(&recorded));
        assert!(
            seq(50, true, 1).reached(&recorded),
            "writers advanced it during the dump"
        );
        assert!(!seq(41, true, 1).reached(&recorded));
        assert!(!seq(42, false, 1).reached(&recorded));
        let falling = seq(-10, true, -1);
        assert!(seq(-20, true, -1).reached(&falling));
        assert!(!seq(-5, true, -1).reached(&falling));
    }
}

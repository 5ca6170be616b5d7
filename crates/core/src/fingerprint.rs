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
        let result = Self::compute_in_transaction(client).await;
        let _ = client.batch_execute("COMMIT").await;
        result
    }

    /// Computes the fingerprint inside the transaction `client` already has open
    /// (the dump's snapshot). Pins its session settings with `SET LOCAL`.
    pub(crate) async fn compute_in_transaction(client: &Client) -> Result<Self> {
        client
            .batch_execute(PINNED_SETTINGS)
            .await
            .map_err(db_err("pinning session settings for the fingerprint"))?;
        let tables = client
            .query(
                "SELECT c.oid, format('%I.%I', n.nspname, c.relname) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind = 'r' \
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
                   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                                   AND d.objid = c.oid AND d.deptype = 'e') \
                 ORDER BY 2",
                &[],
            )
            .await
            .map_err(db_err("listing tables to fingerprint"))?;
        let mut fingerprint = Fingerprint {
            method: METHOD.to_owned(),
            ..Fingerprint::default()
        };
        for table in tables {
            let oid: u32 = table.get(0);
            let name: String = table.get(1);
            let columns = table_columns(client, oid).await?;
            let row_bytes = row_expression(&columns);
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
        let sequences = client
            .query(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                 ORDER BY 1",
                &[],
            )
            .await
            .map_err(db_err("listing sequences"))?;
        for seq in sequences {
            let name: String = seq.get(0);
            let row = client
                .query_one(&format!("SELECT last_value, is_called FROM {name}"), &[])
                .await
                .map_err(db_err("reading a sequence"))?;
            fingerprint.sequences.insert(
                name,
                SequenceState {
                    last_value: row.get(0),
                    is_called: row.get(1),
                },
            );
        }
        fingerprint.large_objects = client
            .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
            .await
            .map_err(db_err("counting large objects"))?
            .get(0);
        fingerprint.audit_chain = chain_state(client).await?;
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
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
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

/// SQL for a row's restore-stable bytes, with `t` as the row alias.
fn row_expression(columns: &[Column]) -> String {
    let builtin_only = columns.iter().all(|c| {
        c.type_oid < FIRST_NORMAL_OBJECT_ID
            && c.type_kind != b'd' as i8
            && c.base_send != "record_send"
    });
    if builtin_only {
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

async fn chain_state(client: &Client) -> Result<Option<ChainState>> {
    let present: bool = client
        .query_one(
            "SELECT to_regclass('pgproof.audit_events') IS NOT NULL \
                AND to_regclass('pgproof.audit_chain_head') IS NOT NULL",
            &[],
        )
        .await
        .map_err(db_err("looking for the audit chain"))?
        .get(0);
    if !present {
        return Ok(None);
    }
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM pgproof.audit_events), h.last_seq, encode(h.head_hash, 'hex') \
             FROM pgproof.audit_chain_head h",
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
        let names: std::collections::BTreeSet<&String> = self
            .sequences
            .keys()
            .chain(found.sequences.keys())
            .collect();
        for name in names {
            let (e, f) = (self.sequences.get(name), found.sequences.get(name));
            if e != f {
                out.push(Difference {
                    subject: format!("sequence {name}"),
                    expected: seq(e),
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

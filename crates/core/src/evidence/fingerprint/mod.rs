//! Content fingerprints: per table a row count and an order-independent hash of every
//! row's binary form, computed inside PostgreSQL so no table data crosses the wire.
//!
//! Each row is reduced to bytes that no session setting can change: `record_send(row)`
//! when every column has a built-in type (built-in type OIDs are the same in every
//! database), otherwise a length-prefixed concatenation of per-column send functions
//! (`int4send`, `enum_send`, …) with the text form, under pinned settings, only for
//! types that have no restore-stable binary form (user-defined composites, arrays of
//! user types, extension types). Each row's bytes are hashed to 64 bits and summed as
//! `numeric`: order-independent, and, unlike XOR, duplicates do not cancel. Method v4
//! (PostgreSQL 14 on) hashes the bytes themselves (`hash_array_extended` over one
//! bytea) where v1–v3 hashed their hex text, and a row whose every column has a type
//! whose hash function reads exactly its stored bytes (integers, text under a
//! deterministic collation, bytea, uuid, timestamps, …) with `hash_record_extended`,
//! without building the row's bytes at all: the same verdict at about half the cost.
//!
//! The same computation over the source (in the dump's snapshot) and over a restore
//! must agree table by table; a difference names the table.

mod follow;
mod loaded;
mod plan;
mod rows;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::error::Result;
use crate::evidence::audit::ChainState;
use crate::pg::{ConnParams, db_err};

pub use follow::{DumpWatch, LEAD, PIECE_BYTES};
pub(crate) use loaded::{Hashing, untouched, while_restoring};
pub use plan::{Plan, large_object_hash, large_objects, sequences};

/// Names the row encoding and combination of the fingerprints this version takes, so
/// fingerprints of different methods are never compared.
pub const METHOD: &str = "rowhash-sum/v4";

/// A fingerprint definition. A backup is verified with the definition it was taken
/// with, so upgrading pgproof never turns an old backup's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Method {
    /// Every ordinary table on its own (`FROM ONLY`), floats by their send bytes.
    V1,
    /// As V1, except: floats (and arrays of them) by their text, so the many NaN bit
    /// patterns count as the one value a dump can carry; a partitioned table compared
    /// at its root, since rows may land in other partitions on restore.
    V2,
    /// As V2, plus: geometric types (float8 inside) by their text; populated
    /// materialized views hashed as their own kind of relation (a restore recomputes
    /// them); large objects hashed by content, owner and ACL, not only counted.
    V3,
    /// As V3, hashed cheaper (PostgreSQL 14 on): a row's bytes hashed as bytes, not
    /// as hex text, and rows of exactly hashed columns (`rows::is_hashed_exactly`) only by
    /// `hash_record_extended`.
    V4,
}

impl Method {
    /// The newest method.
    pub fn current() -> Self {
        Method::V4
    }

    /// The newest method a server of `server_version_num` can compute: V4 needs
    /// `hash_record_extended` (PostgreSQL 14).
    pub fn for_server(server_version_num: i32) -> Self {
        if server_version_num >= 140_000 {
            Method::V4
        } else {
            Method::V3
        }
    }

    async fn for_client(client: &Client) -> Result<Self> {
        let version: String = client
            .query_one("SELECT current_setting('server_version_num')", &[])
            .await
            .map_err(db_err("reading the server version"))?
            .get(0);
        Ok(Self::for_server(version.parse().unwrap_or(0)))
    }

    /// The name recorded in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Method::V1 => "rowsend-hashtextextended-sum/v1",
            Method::V2 => "rowsend-hashtextextended-sum/v2",
            Method::V3 => "rowsend-hashtextextended-sum/v3",
            Method::V4 => METHOD,
        }
    }

    /// The method a manifest names, if this version knows it.
    pub fn parse(name: &str) -> Option<Self> {
        [Method::V1, Method::V2, Method::V3, Method::V4]
            .into_iter()
            .find(|m| m.name() == name)
    }
}

/// Below this OID every type is built in, with the same OID in every database.
const FIRST_NORMAL_OBJECT_ID: u32 = 16384;

/// Session settings that the text fallback depends on, pinned for the transaction.
/// `row_security = off` makes a table whose policies would hide rows from this role an
/// error instead of a silently partial fingerprint (pg_dump does the same).
const PINNED_SETTINGS: &str = "SET LOCAL DateStyle = 'ISO, YMD'; \
     SET LOCAL search_path = pg_catalog, pg_temp; \
     SET LOCAL TimeZone = 'UTC'; SET LOCAL IntervalStyle = 'postgres'; \
     SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = 'hex'; \
     SET LOCAL row_security = off";

/// The encoding text is hashed in: UTF-8, the same bytes whatever the database's
/// encoding, except in SQL_ASCII databases, whose bytes have no known encoding and
/// are hashed as stored (converting them could only fail).
async fn pin_settings(client: &Client) -> Result<&'static str> {
    let server_encoding: String = client
        .query_one("SELECT current_setting('server_encoding')", &[])
        .await
        .map_err(db_err("reading the server encoding"))?
        .get(0);
    let encoding = if server_encoding == "SQL_ASCII" {
        "SQL_ASCII"
    } else {
        "UTF8"
    };
    client
        .batch_execute(&format!(
            "{PINNED_SETTINGS}; SET LOCAL client_encoding = '{encoding}'"
        ))
        .await
        .map_err(db_err("pinning session settings for the fingerprint"))?;
    Ok(encoding)
}

/// A database's content fingerprint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// [`METHOD`] at the time it was taken.
    pub method: String,
    /// Per table (`schema.table`, quoted as needed).
    pub tables: BTreeMap<String, TableFingerprint>,
    /// Per sequence: its state.
    pub sequences: BTreeMap<String, SequenceState>,
    /// Per populated materialized view (method v3 on): its stored rows, which a
    /// restore does not copy but recomputes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub materialized_views: BTreeMap<String, TableFingerprint>,
    /// Number of large objects.
    pub large_objects: i64,
    /// Sum of the large objects' hashes over oid, owner, ACL and content (method v3
    /// on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub large_object_hash: Option<String>,
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
    /// A partitioned table's rows per leaf partition, for information only: a restore
    /// may route rows to other partitions (hash partitioning on an enum, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partitions: BTreeMap<String, i64>,
}

impl TableFingerprint {
    /// Whether the two hold the same rows (partitions aside).
    pub fn same_rows(&self, other: &TableFingerprint) -> bool {
        self.rows == other.rows && self.hash == other.hash
    }
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

pub(super) struct Column {
    name: String,
    type_oid: u32,
    type_kind: i8,
    base_oid: u32,
    base_send: String,
    base_name: String,
    /// `atttypmod` (a bpchar's length).
    typmod: i32,
    /// Whether its collation compares bytes (all but ICU's nondeterministic ones).
    deterministic: bool,
}

impl Fingerprint {
    /// Computes the fingerprint of the database `client` is connected to, in a
    /// REPEATABLE READ transaction of its own, with the newest method the server
    /// can compute.
    pub async fn compute(client: &Client) -> Result<Self> {
        let method = Method::for_client(client).await?;
        Self::compute_with(client, method).await
    }

    /// [`compute`](Self::compute) with a given method (a backup's own).
    pub async fn compute_with(client: &Client, method: Method) -> Result<Self> {
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(db_err("starting the fingerprint transaction"))?;
        let result = match Plan::prepare_with(client, method).await {
            Ok(plan) => plan.compute(client).await,
            Err(e) => Err(e),
        };
        let _ = client.batch_execute("COMMIT").await;
        result
    }

    /// The tables `names` (keys as a fingerprint names them, `schema.table` quoted
    /// where needed) of the database `client` is connected to, with `method`, in a
    /// REPEATABLE READ transaction of its own. Nothing else is read or locked (the
    /// database may be one others use); a table the database lacks is absent from
    /// the result.
    pub async fn of_tables(client: &Client, method: Method, names: &[String]) -> Result<Self> {
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(db_err("starting the fingerprint transaction"))?;
        let result = async {
            let mut oids = Vec::new();
            for name in names {
                let row = client
                    .query_one("SELECT to_regclass($1)::oid", &[name])
                    .await
                    .map_err(db_err("finding a restored table"))?;
                oids.extend(row.get::<_, Option<u32>>(0));
            }
            Plan::prepare_only(client, method, &oids)
                .await?
                .tables_on(client, &[])
                .await
        }
        .await;
        let _ = client.batch_execute("COMMIT").await;
        result
    }

    /// The tables, materialized views and sequences of
    /// [`compute_with`](Self::compute_with) (not the large objects or the audit chain,
    /// which their own verifiers read) on `connections` connections to a database
    /// nothing writes to (a restore being verified), hashing tables in parallel (a
    /// large one with the server's parallel workers: whole scans, independent of the
    /// TID ranges the source was read in).
    /// Tables in `hashed_already` (fingerprinted while the restore ran, once their data
    /// had committed) are taken from there where they still are plain tables.
    pub async fn tables_parallel(
        params: &ConnParams,
        method: Method,
        connections: usize,
        hashed_already: &BTreeMap<String, TableFingerprint>,
    ) -> Result<Self> {
        let client = params.connect().await?;
        let mut helpers = Vec::new();
        for _ in 1..connections.max(1) {
            let helper = params.connect().await?;
            helper
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .await
                .map_err(db_err("starting the fingerprint transaction"))?;
            helpers.push(helper);
        }
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(db_err("starting the fingerprint transaction"))?;
        let result = match Plan::prepare_with(&client, method).await {
            Ok(mut plan) => {
                let mut reused = BTreeMap::new();
                plan.tables.retain(|t| match hashed_already.get(&t.name) {
                    Some(fingerprint) if !t.partitioned && !t.materialized => {
                        reused.insert(t.name.clone(), fingerprint.clone());
                        false
                    }
                    _ => true,
                });
                plan.tables_on(&client, &helpers).await.map(|mut found| {
                    found.tables.extend(reused);
                    found
                })
            }
            Err(e) => Err(e),
        };
        for c in helpers.iter().chain([&client]) {
            let _ = c.batch_execute("COMMIT").await;
        }
        result
    }
}

/// How many connections hash a restore at once: one per core, up to four (the
/// server's cores, when it runs on this host as a scratch server does).
pub(crate) fn hashing_connections() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// One difference between what a backup recorded and what a restore holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// What differs: a table or sequence name.
    pub subject: String,
    /// Recorded at backup.
    pub expected: String,
    /// Found after restore.
    pub found: String,
}

/// Every table whose count or hash differs, or that exists on one side only.
pub fn table_differences(
    expected: &BTreeMap<String, TableFingerprint>,
    found: &BTreeMap<String, TableFingerprint>,
) -> Vec<Difference> {
    let describe = |t: Option<&TableFingerprint>| match t {
        Some(t) => format!("{} rows, hash {}", t.rows, t.hash),
        None => "no such table".to_owned(),
    };
    let names: BTreeSet<&String> = expected.keys().chain(found.keys()).collect();
    names
        .into_iter()
        .filter_map(|name| {
            let (e, f) = (expected.get(name), found.get(name));
            let same = matches!((e, f), (Some(e), Some(f)) if e.same_rows(f));
            (!same).then(|| Difference {
                subject: name.clone(),
                expected: describe(e),
                found: describe(f),
            })
        })
        .collect()
}

/// Every sequence that is missing, extra, or behind the value recorded (a sequence may
/// have moved on while pg_dump ran, never back).
pub fn sequence_differences(
    expected: &BTreeMap<String, SequenceState>,
    found: &BTreeMap<String, SequenceState>,
) -> Vec<Difference> {
    let describe = |s: Option<&SequenceState>| match s {
        Some(s) => format!("last_value {}, is_called {}", s.last_value, s.is_called),
        None => "no such sequence".to_owned(),
    };
    let names: BTreeSet<&String> = expected.keys().chain(found.keys()).collect();
    names
        .into_iter()
        .filter_map(|name| {
            let (e, f) = (expected.get(name), found.get(name));
            let ok = match (e, f) {
                (Some(e), Some(f)) => f.reached(e),
                _ => false,
            };
            (!ok).then(|| Difference {
                subject: name.clone(),
                expected: format!("at least {}", describe(e)),
                found: describe(f),
            })
        })
        .collect()
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

    fn table(rows: i64, hash: &str) -> TableFingerprint {
        TableFingerprint {
            rows,
            hash: hash.into(),
            partitions: BTreeMap::new(),
        }
    }

    #[test]
    fn table_differences_name_changed_missing_and_extra_tables() {
        let expected = BTreeMap::from([
            ("a".to_owned(), table(1, "10")),
            ("b".to_owned(), table(2, "20")),
            ("c".to_owned(), table(3, "30")),
        ]);
        let found = BTreeMap::from([
            ("a".to_owned(), table(1, "10")),
            ("b".to_owned(), table(2, "21")),
            ("d".to_owned(), table(0, "0")),
        ]);
        let diffs = table_differences(&expected, &found);
        let subjects: Vec<&str> = diffs.iter().map(|d| d.subject.as_str()).collect();
        assert_eq!(subjects, ["b", "c", "d"]);
        assert_eq!(diffs[1].found, "no such table");
        assert_eq!(diffs[2].expected, "no such table");
        assert!(table_differences(&expected, &expected).is_empty());
    }

    #[test]
    fn sequence_differences_allow_progress_only() {
        let expected = BTreeMap::from([("s".to_owned(), seq(5, true, 1))]);
        let ahead = BTreeMap::from([("s".to_owned(), seq(9, true, 1))]);
        let behind = BTreeMap::from([("s".to_owned(), seq(4, true, 1))]);
        assert!(sequence_differences(&expected, &ahead).is_empty());
        assert_eq!(sequence_differences(&expected, &behind).len(), 1);
        assert_eq!(sequence_differences(&expected, &BTreeMap::new()).len(), 1);
    }

    #[test]
    fn every_method_is_found_by_its_recorded_name() {
        for method in [Method::V1, Method::V2, Method::V3, Method::V4] {
            assert_eq!(Method::parse(method.name()), Some(method));
        }
        assert_eq!(Method::current().name(), METHOD);
        assert_eq!(Method::for_server(130_015), Method::V3);
        assert_eq!(Method::for_server(150_010), Method::V4);
        assert_eq!(Method::parse("rowsend-hashtextextended-sum/v9"), None);
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

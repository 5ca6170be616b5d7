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

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::evidence::audit::{self, ChainState};
use crate::pg::{ConnParams, db_err, query_count, quote_ident};

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
    /// as hex text, and rows of [`exactly hashed`](is_hashed_exactly) columns only by
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

struct Column {
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

    /// The tables, materialized views and sequences of
    /// [`compute_with`](Self::compute_with) (not the large objects or the audit chain,
    /// which their own verifiers read) on `connections` connections to a database
    /// nothing writes to (a restore being verified), hashing tables in parallel.
    pub async fn tables_parallel(
        params: &ConnParams,
        method: Method,
        connections: usize,
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
            Ok(plan) => plan.tables_on(&client, &helpers).await,
            Err(e) => Err(e),
        };
        for c in helpers.iter().chain([&client]) {
            let _ = c.batch_execute("COMMIT").await;
        }
        result
    }
}

/// The first half of a fingerprint, done in the dump's snapshot before pg_dump starts:
/// settings pinned, every table listed and locked (ACCESS SHARE, as pg_dump locks
/// them, so no TRUNCATE or rewrite can empty a table under the snapshot), and the
/// sequences read — they are not transactional, so reading them before pg_dump makes
/// the dumped values at least these.
pub struct Plan {
    method: Method,
    text_encoding: &'static str,
    tables: Vec<TableToHash>,
    sequences: BTreeMap<String, SequenceState>,
}

struct TableToHash {
    oid: u32,
    name: String,
    /// An inheritance child (not a partition): its physical column order may change.
    inherits: bool,
    /// A partitioned table's root: hashed with all its partitions.
    partitioned: bool,
    /// A materialized view (method v3 on), recorded apart from the tables.
    materialized: bool,
    /// Its size in pages (with its partitions), for spreading tables over connections.
    pages: i64,
}

/// The user relations a fingerprint covers, for `WHERE {relations} AND` this.
const USER_RELATION: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') \
       AND n.nspname NOT LIKE 'pg\\_toast%' AND NOT pg_is_other_temp_schema(n.oid) \
       AND n.oid <> pg_my_temp_schema() \
       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                       AND d.objid = c.oid AND d.deptype = 'e')";

impl Plan {
    /// Prepares inside the transaction `client` has open, with the newest method the
    /// server can compute.
    pub async fn prepare(client: &Client) -> Result<Self> {
        let method = Method::for_client(client).await?;
        Self::prepare_with(client, method).await
    }

    /// [`prepare`](Self::prepare) with a given method.
    pub async fn prepare_with(client: &Client, method: Method) -> Result<Self> {
        let relations = match method {
            Method::V1 => "c.relkind = 'r'",
            Method::V2 => "c.relkind IN ('r', 'p') AND NOT c.relispartition",
            Method::V3 | Method::V4 => {
                "(c.relkind IN ('r', 'p') AND NOT c.relispartition OR c.relkind = 'm' AND c.relispopulated)"
            }
        };
        let text_encoding = pin_settings(client).await?;
        check_privileges(client, relations).await?;
        let rows = client
            .query(
                &format!(
                    "SELECT c.oid, format('%I.%I', n.nspname, c.relname), \
                            EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid), \
                            c.relkind = 'p', c.relkind = 'm', \
                            coalesce((SELECT sum(p.relpages) FROM pg_partition_tree(c.oid) t \
                                      JOIN pg_class p ON p.oid = t.relid), c.relpages)::int8 \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE {relations} AND {USER_RELATION} ORDER BY 2"
                ),
                &[],
            )
            .await
            .map_err(db_err("listing tables to fingerprint"))?;
        let tables: Vec<TableToHash> = rows
            .iter()
            .map(|r| TableToHash {
                oid: r.get(0),
                name: r.get(1),
                inherits: r.get(2),
                partitioned: r.get(3),
                materialized: r.get(4),
                pages: r.get(5),
            })
            .collect();
        // A partitioned root is locked with its partitions (no ONLY), as pg_dump locks
        // every partition it dumps.
        let only = if method == Method::V1 { "ONLY " } else { "" };
        let (views, tables_only): (Vec<&TableToHash>, Vec<&TableToHash>) =
            tables.iter().partition(|t| t.materialized);
        for chunk in tables_only.chunks(500) {
            let names: Vec<&str> = chunk.iter().map(|t| t.name.as_str()).collect();
            client
                .batch_execute(&format!(
                    "LOCK TABLE {only}{} IN ACCESS SHARE MODE",
                    names.join(", ")
                ))
                .await
                .map_err(db_err("locking the tables to fingerprint"))?;
        }
        // LOCK TABLE refuses materialized views; reading one takes the same lock, which
        // keeps a REFRESH from replacing its contents under the snapshot.
        for view in views {
            client
                .batch_execute(&format!("SELECT FROM {} LIMIT 0", view.name))
                .await
                .map_err(db_err("locking a materialized view to fingerprint"))?;
        }
        let sequences = sequences(client).await?;
        Ok(Self {
            method,
            text_encoding,
            tables,
            sequences,
        })
    }

    /// Hashes every table and finishes the fingerprint.
    pub async fn compute(self, client: &Client) -> Result<Fingerprint> {
        self.compute_on(client, &[]).await
    }

    /// [`compute`](Self::compute), with the tables spread over `client` and `helpers`:
    /// connections to the same database, each inside a REPEATABLE READ transaction
    /// that sees the same data as `client`'s (the same static database, or the
    /// snapshot imported with `SET TRANSACTION SNAPSHOT`). Sums do not depend on which
    /// connection hashed which table, so the result is the same.
    pub async fn compute_on(self, client: &Client, helpers: &[Client]) -> Result<Fingerprint> {
        let method = self.method;
        let mut fingerprint = self.tables_on(client, helpers).await?;
        fingerprint.large_objects = large_objects(client).await?;
        if method >= Method::V3 {
            fingerprint.large_object_hash = Some(large_object_hash(client).await?);
        }
        fingerprint.audit_chain = audit::chain_state(client).await?;
        Ok(fingerprint)
    }

    /// Tables, materialized views and sequences only (what the table verifiers judge;
    /// large objects and the audit chain have verifiers of their own).
    async fn tables_on(self, client: &Client, helpers: &[Client]) -> Result<Fingerprint> {
        let mut fingerprint = Fingerprint {
            method: self.method.name().to_owned(),
            sequences: self.sequences,
            ..Fingerprint::default()
        };
        let mut workers: Vec<&Client> = vec![client];
        for helper in helpers {
            pin_settings(helper).await?;
            workers.push(helper);
        }
        // Largest first onto the least loaded connection.
        let mut tables = self.tables;
        tables.sort_by_key(|t| std::cmp::Reverse(t.pages));
        let mut shares: Vec<(i64, Vec<TableToHash>)> =
            workers.iter().map(|_| (0, Vec::new())).collect();
        for table in tables {
            if let Some(share) = shares.iter_mut().min_by_key(|(load, _)| *load) {
                share.0 += table.pages.max(1);
                share.1.push(table);
            }
        }
        let (method, encoding) = (self.method, self.text_encoding);
        let results = futures::future::join_all(workers.iter().zip(shares).map(
            |(worker, (_, share))| async move {
                let mut hashed = Vec::with_capacity(share.len());
                for table in share {
                    let fp = hash_table(worker, &table, method, encoding).await?;
                    hashed.push((table.name, table.materialized, fp));
                }
                Ok::<_, Error>(hashed)
            },
        ))
        .await;
        for result in results {
            for (name, materialized, hashed) in result? {
                if materialized {
                    fingerprint.materialized_views.insert(name, hashed);
                } else {
                    fingerprint.tables.insert(name, hashed);
                }
            }
        }
        Ok(fingerprint)
    }
}

/// One table's count and hash sum, on `client` (settings pinned).
async fn hash_table(
    client: &Client,
    table: &TableToHash,
    method: Method,
    encoding: &str,
) -> Result<TableFingerprint> {
    let columns = table_columns(client, table.oid).await?;
    let row_hash = row_hash(&columns, table.inherits, method, encoding);
    let only = if table.partitioned { "" } else { "ONLY " };
    // A partitioned table is summed per partition in the same scan, so the leaves can
    // be reported for information; the root's sum is what counts.
    let (leaf, group) = if table.partitioned {
        ("t.tableoid::regclass::text", " GROUP BY 1")
    } else {
        ("NULL::text", "")
    };
    let name = &table.name;
    let sql = format!(
        "SELECT {leaf}, count(*), coalesce(sum({row_hash}), 0)::text \
         FROM {only}{name} t{group}"
    );
    let rows = client
        .query(&sql, &[])
        .await
        .map_err(|e| db_err("fingerprinting a table")(e).with_object(name.clone()))?;
    combine(&rows, table.partitioned).map_err(|e| e.with_object(name.clone()))
}

/// One table's fingerprint from its per-partition (or single) count and hash sum.
fn combine(rows: &[tokio_postgres::Row], partitioned: bool) -> Result<TableFingerprint> {
    let (mut count, mut sum) = (0i64, 0i128);
    let mut partitions = BTreeMap::new();
    for row in rows {
        let rows_here: i64 = row.get(1);
        let text: String = row.get(2);
        // Each term is a 64-bit hash, so any table's sum fits in 128 bits.
        sum += text.parse::<i128>().map_err(|e| {
            Error::database(format!(
                "a table's hash sum {text:?} is not an integer: {e}"
            ))
        })?;
        count += rows_here;
        if partitioned {
            partitions.insert(row.get::<_, String>(0), rows_here);
        }
    }
    Ok(TableFingerprint {
        rows: count,
        hash: sum.to_string(),
        partitions,
    })
}

/// Fails up front, naming every relation and the privilege this role lacks, rather
/// than at the first table deep into a dump with PostgreSQL's bare "permission
/// denied for table b".
async fn check_privileges(client: &Client, relations: &str) -> Result<()> {
    let rows = client
        .query(
            &format!(
                "SELECT format('%I.%I', n.nspname, c.relname), \
                        NOT has_schema_privilege(n.oid, 'USAGE'), \
                        NOT has_table_privilege(c.oid, 'SELECT'), \
                        c.relrowsecurity AND (c.relforcerowsecurity OR NOT pg_has_role(c.relowner, 'USAGE')) \
                          AND NOT (SELECT rolbypassrls OR rolsuper FROM pg_roles WHERE rolname = current_user) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE ({relations} OR c.relkind = 'S') AND {USER_RELATION} ORDER BY 1"
            ),
            &[],
        )
        .await
        .map_err(db_err("checking this role's privileges on the tables"))?;
    let mut problems = Vec::new();
    for row in rows {
        let (name, no_usage, no_select, row_security): (String, bool, bool, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if no_usage {
            problems.push(format!("{name} (no USAGE on its schema)"));
        } else if no_select {
            problems.push(format!("{name} (no SELECT)"));
        } else if row_security {
            problems.push(format!("{name} (row security hides rows; needs BYPASSRLS)"));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let role: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(db_err("reading the current role"))?
        .get(0);
    let shown = problems.len().min(5);
    let more = if problems.len() > shown {
        format!(" and {} more", problems.len() - shown)
    } else {
        String::new()
    };
    Err(Error::permission(format!(
        "role {role} cannot read everything a backup must hold: {}{more}; GRANT pg_read_all_data TO {role} (and ALTER ROLE {role} BYPASSRLS where row security is on), or back up as the owner",
        problems[..shown].join(", ")
    )))
}

/// Every user sequence's state, as the transaction `client` has open sees it.
pub async fn sequences(client: &Client) -> Result<BTreeMap<String, SequenceState>> {
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
    Ok(sequences)
}

/// The number of large objects.
pub async fn large_objects(client: &Client) -> Result<i64> {
    query_count(
        client,
        "SELECT count(*) FROM pg_largeobject_metadata",
        "counting large objects",
    )
    .await
}

/// Every large object's oid, owner, ACL and content, hashed and summed like rows. An
/// ACL is compared as its items, sorted, with the owner's default for none (a
/// GRANT then REVOKE leaves an explicit default that pg_dump does not carry).
/// `lo_get` reads one object at a time into server memory: objects over 1 GB cannot be
/// hashed this way (a known limit).
pub async fn large_object_hash(client: &Client) -> Result<String> {
    Ok(client
        .query_one(
            "SELECT coalesce(sum(hashtextextended(m.oid::text || ':' || pg_get_userbyid(m.lomowner) \
                    || ':' || (SELECT coalesce(string_agg(a::text, ',' ORDER BY a::text), '') \
                               FROM unnest(coalesce(m.lomacl, acldefault('L', m.lomowner))) a) \
                    || ':' || encode(sha256(lo_get(m.oid)), 'hex'), 0)), 0)::text \
             FROM pg_largeobject_metadata m",
            &[],
        )
        .await
        .map_err(db_err("hashing the large objects"))?
        .get(0))
}

async fn table_columns(client: &Client, table: u32) -> Result<Vec<Column>> {
    // A domain is hashed as its base type; a domain over a domain takes the text path.
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid, t.typtype, bt.oid, bt.typsend::text, \
                    format_type(bt.oid, NULL), a.atttypmod, \
                    coalesce((SELECT co.collisdeterministic FROM pg_collation co \
                              WHERE co.oid = a.attcollation), true) \
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
            typmod: r.get(6),
            deterministic: r.get(7),
        })
        .collect())
}

/// SQL for a row's 64-bit hash, with `t` as the row alias.
fn row_hash(columns: &[Column], inherits: bool, method: Method, encoding: &str) -> String {
    if method < Method::V4 {
        let row_bytes = row_expression(columns, inherits, method, encoding);
        return format!("hashtextextended(encode({row_bytes}, 'hex'), 0)");
    }
    if !columns.is_empty() && columns.iter().all(is_hashed_exactly) {
        // Columns by name, as row_expression's fallback: the same order on both sides
        // whatever the physical order. NULL hashes as 0 at its position. 64-bit values
        // go in as their 8 send bytes: their own hash folds them to 32 bits first (0
        // and 4294967297 would hash alike).
        let fields: Vec<String> = columns
            .iter()
            .map(|c| {
                let col = format!("t.{}", quote_ident(&c.name));
                if is_64_bit(c) {
                    format!("{}({col})", c.base_send)
                } else {
                    col
                }
            })
            .collect();
        // hash_record_extended combines column hashes linearly (31 * h + next), so a
        // sum of its results over rows would be a sum per column, blind to values
        // moved between rows: each row's result is hashed once more.
        return format!(
            "hashtextextended(hash_record_extended(ROW({}), 0)::text, 0)",
            fields.join(", ")
        );
    }
    let row_bytes = row_expression(columns, inherits, method, encoding);
    format!("hash_array_extended(ARRAY[{row_bytes}], 0)")
}

/// int8, time, timestamp and timestamptz: 64 bits whose hash functions fold to 32.
fn is_64_bit(c: &Column) -> bool {
    matches!(c.type_oid, 20 | 1083 | 1114 | 1184)
}

/// Whether the column's value, as [`row_hash`] passes it, is hashed by exactly its
/// stored bytes, so that equal hashes mean equal send forms but for collisions:
/// integers, bool,
/// "char", oid, bytea, uuid, date, time, timestamp(tz), and text, varchar and
/// fixed-length char under a collation that compares bytes. Not floats (−0 and 0,
/// NaNs hash alike), numeric (scale ignored), intervals (normalized), enums (hashed
/// by OID, which a restore renumbers), arrays (bounds ignored), unbounded bpchar
/// (trailing blanks ignored), domains or anything else.
fn is_hashed_exactly(c: &Column) -> bool {
    if c.type_kind != b'b' as i8 || c.type_oid != c.base_oid {
        return false;
    }
    match c.type_oid {
        16 | 18 | 20 | 21 | 23 | 26 | 17 | 2950 | 1082 | 1083 | 1114 | 1184 => true,
        25 | 1043 => c.deterministic,
        1042 => c.deterministic && c.typmod > 0,
        _ => false,
    }
}

/// SQL for a row's restore-stable bytes, with `t` as the row alias. Columns come
/// sorted by name: an inheritance child's physical column order can change on
/// restore, so only tables outside inheritance use `record_send`, which follows it.
fn row_expression(columns: &[Column], inherits: bool, method: Method, encoding: &str) -> String {
    let by_text =
        |c: &Column| method >= Method::V2 && is_float(c) || method >= Method::V3 && is_geometric(c);
    let builtin_only = columns.iter().all(|c| {
        c.type_oid < FIRST_NORMAL_OBJECT_ID
            && c.type_kind != b'd' as i8
            && c.base_send != "record_send"
            && !names_an_object(c)
            && !by_text(c)
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
                && !by_text(c)
                && (c.base_oid < FIRST_NORMAL_OBJECT_ID || c.base_send == "enum_send");
            let bytes = if stable_send {
                format!("{}({col}::{})", c.base_send, c.base_name)
            } else {
                format!("convert_to({col}::text, '{encoding}')")
            };
            format!("coalesce(int4send(octet_length({bytes})) || {bytes}, '\\xffffffff'::bytea)")
        })
        .collect::<Vec<_>>()
        .join(" || ")
}

/// float4, float8 and their arrays: their send form has many NaN bit patterns (the sign
/// bit of an arithmetic NaN) that all dump as the text `NaN`; their text under the
/// pinned extra_float_digits is exact and has one NaN.
fn is_float(c: &Column) -> bool {
    matches!(c.base_oid, 700 | 701 | 1021 | 1022)
}

/// point, lseg, path, box, polygon, line, circle and their arrays: float8 inside, so
/// the same NaN patterns as [`is_float`].
fn is_geometric(c: &Column) -> bool {
    matches!(
        c.base_oid,
        600..=604 | 628 | 718 | 1017..=1020 | 1027 | 629 | 719
    )
}

/// `regclass`, `regtype` and kin send OIDs, which a restore renumbers; their text (a
/// qualified name under the pinned search_path) is what survives.
fn names_an_object(c: &Column) -> bool {
    c.base_name.starts_with("reg") && c.base_oid < FIRST_NORMAL_OBJECT_ID
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

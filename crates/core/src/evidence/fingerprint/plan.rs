//! The fingerprint's queries: tables listed, locked and hashed (on several connections
//! when verifying), sequences read, large objects hashed.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::evidence::audit;
use crate::pg::{db_err, query_count};

use super::rows::{row_hash, table_columns};
use super::*;

/// The first half of a fingerprint, done in the dump's snapshot before pg_dump starts:
/// settings pinned, every table listed and locked (ACCESS SHARE, as pg_dump locks
/// them, so no TRUNCATE or rewrite can empty a table under the snapshot), and the
/// sequences read — they are not transactional, so reading them before pg_dump makes
/// the dumped values at least these.
pub struct Plan {
    pub(super) method: Method,
    pub(super) text_encoding: &'static str,
    pub(super) tables: Vec<TableToHash>,
    pub(super) sequences: BTreeMap<String, SequenceState>,
}

#[derive(Clone)]
pub(super) struct TableToHash {
    pub(super) oid: u32,
    pub(super) name: String,
    /// Schema and name unquoted: pg_dump dumps tables' data in this order when it
    /// runs alone.
    pub(super) order: (String, String),
    /// An inheritance child (not a partition): its physical column order may change.
    pub(super) inherits: bool,
    /// A partitioned table's root: hashed with all its partitions.
    pub(super) partitioned: bool,
    /// A materialized view (method v3 on), recorded apart from the tables.
    pub(super) materialized: bool,
    /// Its size in pages as the catalog last estimated it (with its partitions), for
    /// spreading tables over connections; pg_dump orders a parallel dump by it.
    pub(super) pages: i64,
    /// Its size in blocks now (its own, without partitions).
    pub(super) blocks: i64,
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
        Self::prepare_in(client, method, None).await
    }

    /// [`prepare_with`](Self::prepare_with) for the relations `oids` only, and no
    /// sequences: a part of a database others use, which pgproof neither locks nor
    /// reads beyond what it was asked about.
    pub async fn prepare_only(client: &Client, method: Method, oids: &[u32]) -> Result<Self> {
        Self::prepare_in(client, method, Some(oids)).await
    }

    async fn prepare_in(client: &Client, method: Method, restrict: Option<&[u32]>) -> Result<Self> {
        let kinds = match method {
            Method::V1 => "c.relkind = 'r'",
            Method::V2 => "c.relkind IN ('r', 'p') AND NOT c.relispartition",
            Method::V3 | Method::V4 => {
                "(c.relkind IN ('r', 'p') AND NOT c.relispartition OR c.relkind = 'm' AND c.relispopulated)"
            }
        };
        let relations = match restrict {
            None => kinds.to_owned(),
            Some(oids) => format!(
                "({kinds}) AND c.oid IN ({})",
                oids.iter()
                    .map(|oid| oid.to_string())
                    .chain(["0".to_owned()])
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let relations = relations.as_str();
        let text_encoding = pin_settings(client).await?;
        check_privileges(client, relations, restrict.is_none()).await?;
        let rows = client
            .query(
                &format!(
                    "SELECT c.oid, format('%I.%I', n.nspname, c.relname), \
                            EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid), \
                            c.relkind = 'p', c.relkind = 'm', \
                            coalesce((SELECT sum(p.relpages) FROM pg_partition_tree(c.oid) t \
                                      JOIN pg_class p ON p.oid = t.relid), c.relpages)::int8, \
                            n.nspname::text, c.relname::text, \
                            pg_relation_size(c.oid) / current_setting('block_size')::int8 \
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
                order: (r.get(6), r.get(7)),
                blocks: r.get(8),
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
        let sequences = match restrict {
            None => sequences(client).await?,
            Some(_) => BTreeMap::new(),
        };
        Ok(Self {
            method,
            text_encoding,
            tables,
            sequences,
        })
    }

    /// The method this plan hashes with.
    pub fn method(&self) -> Method {
        self.method
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
        let fingerprint = self.tables_on(client, helpers).await?;
        finish(fingerprint, method, client).await
    }

    /// Tables, materialized views and sequences only (what the table verifiers judge;
    /// large objects and the audit chain have verifiers of their own).
    pub(super) async fn tables_on(
        self,
        client: &Client,
        helpers: &[Client],
    ) -> Result<Fingerprint> {
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
                    let row_hash = table.row_hash(worker, method, encoding).await?;
                    let fp = table.hash(worker, &row_hash, Blocks::All).await?;
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

/// The rest of a whole database's fingerprint, after its tables.
pub(super) async fn finish(
    mut fingerprint: Fingerprint,
    method: Method,
    client: &Client,
) -> Result<Fingerprint> {
    fingerprint.large_objects = large_objects(client).await?;
    if method >= Method::V3 {
        fingerprint.large_object_hash = Some(large_object_hash(client).await?);
    }
    fingerprint.audit_chain = audit::chain_state(client).await?;
    Ok(fingerprint)
}

/// Which of a table's rows one query hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Blocks {
    /// Every row.
    All,
    /// The rows stored in blocks `from..to` (`to` open: to the table's end), read by a
    /// TID range scan. Row hashes are summed, so the sums of ranges that cover the
    /// table add up to its whole sum: the same fingerprint, read in pieces.
    Range { from: i64, to: Option<i64> },
}

impl TableToHash {
    /// SQL for one of this table's row hashes, with `t` as the row alias.
    pub(super) async fn row_hash(
        &self,
        client: &Client,
        method: Method,
        encoding: &str,
    ) -> Result<String> {
        let columns = table_columns(client, self.oid).await?;
        Ok(row_hash(&columns, self.inherits, method, encoding))
    }

    /// The count and hash sum of the rows in `blocks`, on `client` (settings pinned).
    pub(super) async fn hash(
        &self,
        client: &Client,
        row_hash: &str,
        blocks: Blocks,
    ) -> Result<TableFingerprint> {
        let name = &self.name;
        let sql = self.hash_sql(row_hash, blocks);
        let rows = client
            .query(&sql, &[])
            .await
            .map_err(|e| db_err("fingerprinting a table")(e).with_object(name.clone()))?;
        combine(&rows, self.partitioned).map_err(|e| e.with_object(name.clone()))
    }

    pub(super) fn hash_sql(&self, row_hash: &str, blocks: Blocks) -> String {
        let only = if self.partitioned { "" } else { "ONLY " };
        // A partitioned table is summed per partition in the same scan, so the leaves
        // can be reported for information; the root's sum is what counts.
        let (leaf, group) = if self.partitioned {
            ("t.tableoid::regclass::text", " GROUP BY 1")
        } else {
            ("NULL::text", "")
        };
        let range = match blocks {
            Blocks::All => String::new(),
            Blocks::Range { from, to } => {
                let to = to
                    .map(|to| format!(" AND t.ctid < '({to},0)'::tid"))
                    .unwrap_or_default();
                format!(" WHERE t.ctid >= '({from},0)'::tid{to}")
            }
        };
        let name = &self.name;
        format!(
            "SELECT {leaf}, count(*), coalesce(sum({row_hash}), 0)::text \
             FROM {only}{name} t{range}{group}"
        )
    }
}

/// A table's hash sum as the server printed it. Each term is a 64-bit hash, so any
/// table's sum fits in 128 bits.
pub(super) fn hash_sum(text: &str) -> Result<i128> {
    text.parse::<i128>().map_err(|e| {
        Error::database(format!(
            "a table's hash sum {text:?} is not an integer: {e}"
        ))
    })
}

/// One table's fingerprint from its per-partition (or single) count and hash sum.
fn combine(rows: &[tokio_postgres::Row], partitioned: bool) -> Result<TableFingerprint> {
    let (mut count, mut sum) = (0i64, 0i128);
    let mut partitions = BTreeMap::new();
    for row in rows {
        let rows_here: i64 = row.get(1);
        let text: String = row.get(2);
        sum += hash_sum(&text)?;
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
async fn check_privileges(client: &Client, relations: &str, sequences: bool) -> Result<()> {
    let sequences = if sequences { "OR c.relkind = 'S'" } else { "" };
    let rows = client
        .query(
            &format!(
                "SELECT format('%I.%I', n.nspname, c.relname), \
                        NOT has_schema_privilege(n.oid, 'USAGE'), \
                        NOT has_table_privilege(c.oid, 'SELECT'), \
                        c.relrowsecurity AND (c.relforcerowsecurity OR NOT pg_has_role(c.relowner, 'USAGE')) \
                          AND NOT (SELECT rolbypassrls OR rolsuper FROM pg_roles WHERE rolname = current_user) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE ({relations} {sequences}) AND {USER_RELATION} ORDER BY 1"
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

//! What the fingerprint reads in step with pg_dump: each table, and a partitioned
//! table partition by partition, as pg_dump copies them.

use tokio_postgres::Client;

use crate::error::Result;
use crate::pg::db_err;

use super::super::plan::TableToHash;
use super::Method;

/// One relation read, for one table's fingerprint.
pub(super) struct Unit {
    /// The table's place in the plan.
    pub(super) of: usize,
    /// The relation read: the table itself, or one of its partitions.
    pub(super) read: TableToHash,
    /// The table whose row hash applies (for a partition, its root's, so that its
    /// rows hash as a scan of the root would hash them).
    pub(super) hashed_as: TableToHash,
    /// A partition's name in the root's per-partition counts.
    pub(super) leaf: Option<String>,
    /// pg_dump never reads it as such (a materialized view, a partitioned table read
    /// whole): it may be read at any time.
    pub(super) anytime: bool,
}

/// The units of `tables`: a partitioned table's partitions where each can be read on
/// its own with the root's row hash, else the table whole.
pub(super) async fn of(
    client: &Client,
    tables: Vec<TableToHash>,
    method: Method,
) -> Result<Vec<Unit>> {
    let mut units = Vec::with_capacity(tables.len());
    for (of, table) in tables.into_iter().enumerate() {
        if table.partitioned && method >= Method::V4 {
            let leaves = leaves(client, &table).await?;
            if !leaves.is_empty() {
                for (leaf, read) in leaves {
                    units.push(Unit {
                        of,
                        read,
                        hashed_as: table.clone(),
                        leaf: Some(leaf),
                        anytime: false,
                    });
                }
                continue;
            }
        }
        let anytime = table.partitioned || table.materialized;
        units.push(Unit {
            of,
            read: table.clone(),
            hashed_as: table,
            leaf: None,
            anytime,
        });
    }
    Ok(units)
}

/// The partitions of `root`, each with its name as a scan of the root reports it,
/// when every one is a plain table laid out column for column as the root (same
/// numbers, names, types and dropped columns): then `record_send(t.*)` of a
/// partition's row is the root's. Empty when any is not, or there are none.
async fn leaves(client: &Client, root: &TableToHash) -> Result<Vec<(String, TableToHash)>> {
    let columns = |rel: &str| {
        format!(
            "SELECT a.attnum, a.attname, a.atttypid, a.attisdropped FROM pg_attribute a \
             WHERE a.attrelid = {rel} AND a.attnum > 0"
        )
    };
    let (leaf, root_columns) = (columns("c.oid"), columns("$1::oid"));
    let rows = client
        .query(
            &format!(
                "SELECT c.oid, c.oid::regclass::text, format('%I.%I', n.nspname, c.relname), \
                        n.nspname::text, c.relname::text, c.relpages::int8, \
                        pg_relation_size(c.oid) / current_setting('block_size')::int8, \
                        c.relkind = 'r' AND NOT EXISTS (({leaf} EXCEPT {root_columns}) \
                                                        UNION ALL ({root_columns} EXCEPT {leaf})) \
                 FROM pg_partition_tree($1::oid::regclass) t JOIN pg_class c ON c.oid = t.relid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.isleaf"
            ),
            &[&root.oid],
        )
        .await
        .map_err(|e| {
            db_err("listing a partitioned table's partitions")(e).with_object(root.name.clone())
        })?;
    if rows.iter().any(|r| !r.get::<_, bool>(7)) {
        return Ok(Vec::new());
    }
    Ok(rows
        .iter()
        .map(|r| {
            let read = TableToHash {
                oid: r.get(0),
                name: r.get(2),
                order: (r.get(3), r.get(4)),
                inherits: false,
                partitioned: false,
                materialized: false,
                pages: r.get(5),
                blocks: r.get(6),
            };
            (r.get(1), read)
        })
        .collect())
}

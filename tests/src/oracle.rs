//! An oracle for the fidelity property tests that shares no code with pgproof's
//! fingerprint: every row of every table, read over its own connection with pinned
//! session settings, per column as text and as the type's binary send form, keyed by
//! the primary key. Two values are equal when their send forms are equal, except in
//! columns whose type holds floats (float4/float8, arrays, composites and domains of
//! them): there the exact text (extra_float_digits 3) is the value, because the many
//! bit patterns of NaN are one value that a dump carries as `NaN`.

use std::collections::BTreeMap;
use std::fmt;

use tokio_postgres::Client;

/// Settings every oracle connection runs under, whatever the server's defaults.
pub const PINNED: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; \
     SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET bytea_output = 'hex'; \
     SET client_encoding = 'UTF8'";

/// One column of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Name (unquoted).
    pub name: String,
    /// Type, as `format_type` writes it.
    pub type_name: String,
    /// Holds floats somewhere: compared by exact text.
    pub float_like: bool,
}

/// One value: text form and binary send form (both `None` for SQL NULL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    /// `col::text` under [`PINNED`].
    pub text: Option<String>,
    /// `<typsend>(col)`.
    pub binary: Option<Vec<u8>>,
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.text, &self.binary) {
            (None, _) => write!(f, "NULL"),
            (Some(t), Some(b)) => {
                let hex = hex::encode(b);
                let hex = if hex.len() > 80 {
                    format!("{}…({} bytes)", &hex[..80], b.len())
                } else {
                    hex
                };
                write!(f, "{t:?} [send {hex}]")
            }
            (Some(t), None) => write!(f, "{t:?}"),
        }
    }
}

/// One table's rows by key.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// Columns in attnum order.
    pub columns: Vec<Column>,
    /// Key (binary, length-prefixed primary-key send forms) → (key as text, values).
    pub rows: BTreeMap<Vec<u8>, (String, Vec<Value>)>,
}

/// Every user table of a database; partitioned tables read at their root.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// `schema.table` (quoted as `format('%I.%I')` quotes) → rows.
    pub tables: BTreeMap<String, Table>,
}

/// A difference the oracle found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// `schema.table`.
    pub table: String,
    /// The row's key as text, or a description of a table-level difference.
    pub key: String,
    /// What differs.
    pub what: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]: {}", self.table, self.key, self.what)
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Reads every user table of the database `client` is connected to. Pins the session
/// settings first.
pub async fn read(client: &Client) -> Snapshot {
    client.batch_execute(PINNED).await.expect("pin settings");
    let float_types: Vec<u32> = client
        .query(
            "WITH RECURSIVE holds(t) AS ( \
               SELECT oid FROM pg_type WHERE oid IN ('float4'::regtype, 'float8'::regtype) \
               UNION \
               SELECT ty.oid FROM pg_type ty JOIN holds h ON \
                 (ty.typelem = h.t AND ty.typsubscript = 'array_subscript_handler'::regproc) \
                 OR ty.typbasetype = h.t \
                 OR (ty.typrelid <> 0 AND EXISTS (SELECT 1 FROM pg_attribute a \
                      WHERE a.attrelid = ty.typrelid AND a.attnum > 0 AND NOT a.attisdropped \
                        AND a.atttypid = h.t)) \
             ) SELECT t FROM holds",
            &[],
        )
        .await
        .expect("float-holding types")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let tables = client
        .query(
            "SELECT c.oid, format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' ORDER BY 2",
            &[],
        )
        .await
        .expect("list tables");
    let mut snapshot = Snapshot::default();
    for t in tables {
        let oid: u32 = t.get(0);
        let name: String = t.get(1);
        let cols = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
                        ty.typsend::regproc::text, a.atttypid, \
                        coalesce(a.attnum = ANY (i.indkey::int2[]), false) AS in_key \
                 FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid \
                 LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
                &[&oid],
            )
            .await
            .expect("list columns");
        let mut columns = Vec::new();
        let mut key_parts = Vec::new();
        let mut select = Vec::new();
        for c in &cols {
            let col: String = c.get(0);
            let send: String = c.get(2);
            let typ: u32 = c.get(3);
            let in_key: bool = c.get(4);
            let q = quote_ident(&col);
            if in_key {
                key_parts.push(format!(
                    "coalesce(int4send(octet_length({send}({q}))) || {send}({q}), '\\x'::bytea)"
                ));
            }
            select.push(format!("{q}::text"));
            select.push(format!("{send}({q})"));
            columns.push(Column {
                name: col,
                type_name: c.get(1),
                float_like: float_types.contains(&typ),
            });
        }
        let keyed = !key_parts.is_empty();
        let in_key: Vec<bool> = cols.iter().map(|c| c.get(4)).collect();
        let key = if keyed {
            key_parts.join(" || ")
        } else {
            // No primary key: the whole row's send form, duplicates numbered below.
            "record_send(t)".to_owned()
        };
        let sql = format!(
            "SELECT {key}, {} FROM {name} t",
            if select.is_empty() {
                "NULL::text".to_owned()
            } else {
                select.join(", ")
            }
        );
        let rows = client
            .query(&sql, &[])
            .await
            .unwrap_or_else(|e| panic!("oracle read of {name}: {e}"));
        let mut table = Table {
            columns,
            rows: BTreeMap::new(),
        };
        for row in rows {
            let mut key: Vec<u8> = row.get(0);
            let values: Vec<Value> = (0..table.columns.len())
                .map(|i| Value {
                    text: row.get(1 + 2 * i),
                    binary: row.get(2 + 2 * i),
                })
                .collect();
            let key_text = table
                .columns
                .iter()
                .zip(&values)
                .zip(&in_key)
                .filter(|(_, k)| **k)
                .map(|((c, v), _)| format!("{}={}", c.name, v.text.as_deref().unwrap_or("NULL")))
                .collect::<Vec<_>>()
                .join(",");
            if !keyed {
                let mut n = 0u32;
                while table
                    .rows
                    .contains_key(&[key.as_slice(), &n.to_be_bytes()].concat())
                {
                    n += 1;
                }
                key.extend_from_slice(&n.to_be_bytes());
            }
            table.rows.insert(key, (key_text, values));
        }
        snapshot.tables.insert(name, table);
    }
    snapshot
}

/// Whether two values of `column` are the same value.
pub fn same(column: &Column, a: &Value, b: &Value) -> bool {
    if column.float_like {
        a.text == b.text
    } else {
        a.binary == b.binary
    }
}

/// Every difference between `expected` (the source) and `found` (a restore).
pub fn diff(expected: &Snapshot, found: &Snapshot) -> Vec<Difference> {
    let mut out = Vec::new();
    for (name, table) in &expected.tables {
        let Some(other) = found.tables.get(name) else {
            out.push(Difference {
                table: name.clone(),
                key: "-".into(),
                what: "table missing".into(),
            });
            continue;
        };
        if other.columns != table.columns {
            out.push(Difference {
                table: name.clone(),
                key: "-".into(),
                what: format!("columns {:?} became {:?}", table.columns, other.columns),
            });
            continue;
        }
        for (key, (key_text, values)) in &table.rows {
            let Some((_, found_values)) = other.rows.get(key) else {
                out.push(Difference {
                    table: name.clone(),
                    key: key_text.clone(),
                    what: "row missing".into(),
                });
                continue;
            };
            for ((column, a), b) in table.columns.iter().zip(values).zip(found_values) {
                if !same(column, a, b) {
                    out.push(Difference {
                        table: name.clone(),
                        key: key_text.clone(),
                        what: format!("{} ({}): {a} became {b}", column.name, column.type_name),
                    });
                }
            }
        }
        for (key, (key_text, _)) in &other.rows {
            if !table.rows.contains_key(key) {
                out.push(Difference {
                    table: name.clone(),
                    key: key_text.clone(),
                    what: "row added".into(),
                });
            }
        }
    }
    for name in found.tables.keys() {
        if !expected.tables.contains_key(name) {
            out.push(Difference {
                table: name.clone(),
                key: "-".into(),
                what: "table added".into(),
            });
        }
    }
    out
}

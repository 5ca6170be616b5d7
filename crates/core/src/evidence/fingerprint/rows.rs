//! The SQL that reduces one row to a 64-bit hash: which columns take which path
//! (hash_record_extended, send functions, or pinned text), per method.

use tokio_postgres::Client;

use crate::error::Result;
use crate::pg::{db_err, quote_ident};

use super::*;

pub(super) async fn table_columns(client: &Client, table: u32) -> Result<Vec<Column>> {
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
pub(super) fn row_hash(
    columns: &[Column],
    inherits: bool,
    method: Method,
    encoding: &str,
) -> String {
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

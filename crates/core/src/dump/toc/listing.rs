//! The lines `pg_restore --list --verbose` prints, and the names fingerprints record.

use super::Entry;
use crate::error::Error;

/// Entry kinds, longest first: a listing separates them from names by a space only.
const KINDS: &[&str] = &[
    "MATERIALIZED VIEW DATA",
    "PUBLICATION TABLES IN SCHEMA",
    "TEXT SEARCH CONFIGURATION",
    "TEXT SEARCH DICTIONARY",
    "TEXT SEARCH TEMPLATE",
    "TEXT SEARCH PARSER",
    "FOREIGN DATA WRAPPER",
    "SEQUENCE OWNED BY",
    "DATABASE PROPERTIES",
    "PROCEDURAL LANGUAGE",
    "SUBSCRIPTION TABLE",
    "PUBLICATION TABLE",
    "MATERIALIZED VIEW",
    "CHECK CONSTRAINT",
    "STATISTICS DATA",
    "OPERATOR FAMILY",
    "OPERATOR CLASS",
    "SECURITY LABEL",
    "BLOB METADATA",
    "EVENT TRIGGER",
    "FK CONSTRAINT",
    "FOREIGN TABLE",
    "ACCESS METHOD",
    "INDEX ATTACH",
    "LARGE OBJECT",
    "SEQUENCE SET",
    "TABLE ATTACH",
    "ROW SECURITY",
    "USER MAPPING",
    "DEFAULT ACL",
    "SHELL TYPE",
    "TABLE DATA",
    "SUBSCRIPTION",
    "PUBLICATION",
    "SEARCHPATH",
    "STDSTRINGS",
    "STATISTICS",
    "CONSTRAINT",
    "CONVERSION",
    "COLLATION",
    "EXTENSION",
    "PROCEDURE",
    "TRANSFORM",
    "AGGREGATE",
    "FUNCTION",
    "OPERATOR",
    "SEQUENCE",
    "ENCODING",
    "DATABASE",
    "TRIGGER",
    "COMMENT",
    "DEFAULT",
    "SCHEMA",
    "SERVER",
    "POLICY",
    "DOMAIN",
    "BLOBS",
    "INDEX",
    "TABLE",
    "RULE",
    "VIEW",
    "TYPE",
    "CAST",
    "BLOB",
    "ACL",
];

/// `216; 1259 16395 TABLE app items postgres`.
pub(super) fn parse_line(line: &str) -> Option<Entry> {
    let (id, rest) = line.split_once("; ")?;
    let id = id.trim().parse().ok()?;
    let mut words = rest.splitn(3, ' ');
    let (_catalog, _oid, rest) = (words.next()?, words.next()?, words.next()?);
    let desc = KINDS
        .iter()
        .find(|k| rest.starts_with(*k) && rest[k.len()..].starts_with(' '))?;
    Some(Entry {
        id,
        desc,
        rest: rest[desc.len() + 1..].to_owned(),
        deps: Vec::new(),
    })
}

pub(super) fn bad_listing(line: &str) -> Error {
    Error::tool(format!(
        "pg_restore --list printed a line pgproof does not understand: {}",
        crate::error::printable(line)
    ))
}

/// `schema.name` as `format('%I.%I')` wrote it, unquoted: `"My Schema".t` →
/// (`My Schema`, `t`).
pub fn unquote_qualified(key: &str) -> Option<(String, String)> {
    let (schema, rest) = unquote_one(key)?;
    let rest = rest.strip_prefix('.')?;
    let (name, rest) = unquote_one(rest)?;
    rest.is_empty().then_some((schema, name))
}

fn unquote_one(text: &str) -> Option<(String, &str)> {
    if let Some(quoted) = text.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if quoted[i + 1..].starts_with('"') {
                    out.push('"');
                    chars.next();
                } else {
                    return Some((out, &quoted[i + 1..]));
                }
            } else {
                out.push(c);
            }
        }
        None
    } else {
        let end = text.find('.').unwrap_or(text.len());
        Some((text[..end].to_owned(), &text[end..]))
    }
}

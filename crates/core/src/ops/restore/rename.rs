//! `--rename-to`: one table of a backup restored beside the live one, under another
//! name. pg_restore cannot rename, so the table is restored and proven in a database
//! of its own first; renamed there with its indexes and owned sequences (whose names
//! would collide with the live table's); copied into the target with `pg_dump
//! --table | pg_restore --single-transaction`; and proven again where it landed.

use std::process::Stdio;

use super::Restore;
use super::partial::{Part, PartialProof};
use crate::codec::sha256_hex;
use crate::dump::toc::{SelectedTable, unquote_qualified};
use crate::error::{Error, ErrorKind, Result};
use crate::evidence::fingerprint::{Fingerprint, TableFingerprint};
use crate::ops::create_dropped_on_cancel;
use crate::pg::admin::Admin;
use crate::pg::process::{ChildProgram, client_command};
use crate::pg::{ConnParams, db_err, quote_ident};
use crate::verify::compare_relations;

/// PostgreSQL's longest identifier, in bytes.
const NAME_BYTES: usize = 63;

impl Restore {
    /// Restores the one table `chosen` selects into the existing target as `name`.
    pub(super) async fn restore_renamed(
        &self,
        admin: &Admin,
        part: &Part<'_>,
        chosen: Vec<SelectedTable>,
        name: &str,
        target_exists: bool,
    ) -> Result<(u64, PartialProof)> {
        let database = self.target.dbname();
        let key = match chosen.as_slice() {
            [SelectedTable { key: Some(key), .. }] => key.clone(),
            _ => {
                return Err(Error::config(format!(
                    "--rename-to restores exactly one table, but the patterns select {} tables or partitions; narrow them with --table",
                    chosen.len()
                )));
            }
        };
        if !target_exists {
            return Err(Error::not_found(format!(
                "--rename-to restores beside a table of an existing database, and {database} does not exist: give the database that holds the live table, or drop --rename-to to restore into a new database"
            )));
        }
        check_name(name)?;
        // pg_dump --table writes a child's INHERITS (or a partition's ATTACH): the copy
        // would join the live parent, and its rows every query of it.
        let parents: Vec<String> = part
            .toc
            .parents(&chosen)
            .iter()
            .map(|e| e.describe())
            .collect();
        if !parents.is_empty() {
            return Err(Error::config(format!(
                "--rename-to restores a table without parents, and {key} inherits from (or is a partition of) {}: restore it into a new database instead",
                parents.join(", ")
            )));
        }
        let Some((schema, table)) = unquote_qualified(&key) else {
            return Err(Error::integrity(format!(
                "the backup's fingerprint names a table {key} pgproof cannot read"
            )));
        };
        let landed = format!("{}.{}", quote_ident(&schema), quote_ident(name));

        // Restored and proven apart first: the target is touched only by a copy whose
        // rows are the backup's.
        let apart = self.target.with_dbname(&format!(
            "pgproof_part_{}",
            &sha256_hex(
                format!(
                    "{database}\n{key}\n{}\n{}",
                    std::process::id(),
                    jiff::Timestamp::now().as_nanosecond()
                )
                .as_bytes()
            )[..12]
        ));
        admin.drop(apart.dbname()).await?;
        let registered = create_dropped_on_cancel(
            &self.scope,
            &apart,
            admin.canceller(),
            admin.create(
                apart.dbname(),
                &self.manifest.source.encoding,
                self.manifest.properties.as_ref(),
            ),
        )
        .await?;
        let result = async {
            let (raw_bytes, mut proof) = self
                .restore_part(admin, part, chosen, &apart, false)
                .await?;
            if !proof.passed {
                return Ok((raw_bytes, proof));
            }
            let client = apart.connect().await?;
            let renames = rename_apart(&client, &schema, &table, name).await?;
            let live = self.target.connect().await?;
            let taken = taken_names(&live, &schema, &renames).await?;
            if !taken.is_empty() {
                return Err(Error::already_exists(format!(
                    "{database} already has {} in schema {schema}; choose another --rename-to",
                    taken.join(", ")
                )));
            }
            self.copy_table(part, &apart, &landed).await?;
            let found =
                Fingerprint::of_tables(&live, part.method, std::slice::from_ref(&landed)).await?;
            // Named as fingerprints name tables (quoted only where needed).
            let (shown, found) = match found.tables.into_iter().next() {
                Some((shown, found)) => (shown, Some(found)),
                None => (landed.clone(), None),
            };
            proof.checks = self.prove_landed(&key, &shown, found);
            proof.passed = proof.checks.iter().all(|c| c.passed);
            proof.restored_as = Some(shown);
            Ok((raw_bytes, proof))
        }
        .await;
        let dropped = admin.drop(apart.dbname()).await;
        registered.keep();
        if let Err(e) = &dropped {
            tracing::error!(database = %apart.dbname(), error = %e, "could not drop the database the table was restored into first; drop it by hand");
        }
        result
    }

    /// `pg_dump --table` from the database apart, into `pg_restore` on the target in
    /// one transaction.
    async fn copy_table(&self, part: &Part<'_>, apart: &ConnParams, landed: &str) -> Result<()> {
        let mut dump = client_command(part.tools, "pg_dump", apart);
        dump.args(["--format=custom", "--no-password"])
            .arg(format!("--table={landed}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut restore = client_command(part.tools, "pg_restore", &self.target);
        restore
            .args(["--exit-on-error", "--single-transaction", "--no-password"])
            .args(["--dbname", self.target.dbname()])
            .stdout(Stdio::null());
        if let Some(properties) = &self.manifest.properties {
            restore.envs(properties.restore_env());
        }
        let scope = self.scope.clone();
        // Spawned and waited for on one thread, which the children's parent-death
        // signal follows.
        tokio::task::spawn_blocking(move || {
            let mut dumping = ChildProgram::spawn(dump, "pg_dump", &scope)?;
            restore.stdin(Stdio::from(dumping.take_stdout()?));
            let restoring = ChildProgram::spawn(restore, "pg_restore", &scope)?;
            let restored = restoring.wait(ErrorKind::Rejected);
            let dumped = dumping.wait(ErrorKind::Tool);
            // pg_restore's failure says more than the broken pipe pg_dump then met.
            restored.and(dumped).map(|_| ())
        })
        .await
        .unwrap_or_else(|e| Err(Error::tool(format!("the copy's thread failed: {e}"))))
    }

    /// The table where it landed against the backup's fingerprint of the original.
    fn prove_landed(
        &self,
        key: &str,
        landed: &str,
        found: Option<TableFingerprint>,
    ) -> Vec<crate::verify::Check> {
        let recorded = self
            .manifest
            .fingerprint
            .as_ref()
            .and_then(|f| f.tables.get(key))
            .cloned();
        let expected = recorded.into_iter().map(|t| (key.to_owned(), t)).collect();
        let found = found.into_iter().map(|t| (key.to_owned(), t)).collect();
        compare_relations("fingerprint", &expected, &found, "")
            .into_iter()
            .map(|mut check| {
                check.detail = format!("as {landed}: {}", check.detail);
                check
            })
            .collect()
    }
}

/// Renames the table in the database apart, with its indexes and owned sequences
/// named after it; returns every new name.
async fn rename_apart(
    client: &tokio_postgres::Client,
    schema: &str,
    table: &str,
    name: &str,
) -> Result<Vec<String>> {
    let qualified = format!("{}.{}", quote_ident(schema), quote_ident(table));
    let rows = client
        .query(
            "SELECT c.relname::text, c.relkind::text FROM pg_class c WHERE c.oid IN ( \
                 SELECT indexrelid FROM pg_index WHERE indrelid = $1::text::regclass \
                 UNION SELECT d.objid FROM pg_depend d JOIN pg_class s ON s.oid = d.objid \
                   WHERE d.refobjid = $1::text::regclass AND d.classid = 'pg_class'::regclass \
                     AND s.relkind = 'S' AND d.deptype IN ('a', 'i')) \
             ORDER BY 1",
            &[&qualified],
        )
        .await
        .map_err(db_err("listing the restored table's indexes and sequences"))?;
    let mut statements = vec![format!(
        "ALTER TABLE {qualified} RENAME TO {}",
        quote_ident(name)
    )];
    let mut names = vec![name.to_owned()];
    for row in rows {
        let (old, kind): (String, String) = (row.get(0), row.get(1));
        let new = renamed(&old, table, name);
        let what = if kind == "S" { "SEQUENCE" } else { "INDEX" };
        statements.push(format!(
            "ALTER {what} {}.{} RENAME TO {}",
            quote_ident(schema),
            quote_ident(&old),
            quote_ident(&new)
        ));
        names.push(new);
    }
    client
        .batch_execute(&statements.join(";\n"))
        .await
        .map_err(db_err("renaming the restored table"))?;
    Ok(names)
}

/// The names among `names` that schema `schema` of the target already uses.
async fn taken_names(
    client: &tokio_postgres::Client,
    schema: &str,
    names: &[String],
) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = ANY($2) ORDER BY 1",
            &[&schema, &names],
        )
        .await
        .map_err(db_err("looking for the new names in the target"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// An index or sequence named after `table` (`items_pkey`) named after `name`
/// instead (`items_back_pkey`); any other gets `name_` in front. Cut to 63 bytes.
fn renamed(old: &str, table: &str, name: &str) -> String {
    let new = match old.strip_prefix(table) {
        Some(rest) => format!("{name}{rest}"),
        None => format!("{name}_{old}"),
    };
    let mut end = new.len().min(NAME_BYTES);
    while !new.is_char_boundary(end) {
        end -= 1;
    }
    new[..end].to_owned()
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > NAME_BYTES || name.contains('\0') {
        return Err(Error::config(format!(
            "--rename-to {name:?}: a table name is 1 to {NAME_BYTES} bytes (the schema stays the original's)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_and_sequences_are_named_after_the_new_table() {
        assert_eq!(
            renamed("items_pkey", "items", "items_back"),
            "items_back_pkey"
        );
        assert_eq!(renamed("items_id_seq", "items", "old"), "old_id_seq");
        assert_eq!(renamed("by_note", "items", "old"), "old_by_note");
        let long = renamed("items_pkey", "items", &"é".repeat(40));
        assert!(long.len() <= NAME_BYTES && long.starts_with('é'));
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(64)).is_err());
        assert!(check_name("yesterday's \"items\"").is_ok());
    }
}

//! amcheck: every B-tree index checked against its table (`bt_index_check` with
//! `heapallindexed`), so a corrupt index is reported instead of being backed up, or
//! restored, as if it were sound.

use async_trait::async_trait;
use tokio_postgres::Client;

use crate::error::Result;
use crate::pg::db_err;
use crate::verify::{Check, Restored, Verifier};

/// Runs amcheck on every valid B-tree index of the database `client` is connected to
/// (amcheck must be installed there). Returns how many were checked and each failure
/// as (index, PostgreSQL's message).
pub async fn check_indexes(client: &Client) -> Result<(usize, Vec<(String, String)>)> {
    let indexes = client
        .query(
            "SELECT c.oid, format('%I.%I', n.nspname, c.relname) FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE am.amname = 'btree' AND c.relkind = 'i' AND i.indisvalid AND i.indisready \
               AND c.relpersistence <> 't' AND n.nspname <> 'pg_toast' ORDER BY 2",
            &[],
        )
        .await
        .map_err(db_err("listing B-tree indexes"))?;
    let mut failures = Vec::new();
    for row in &indexes {
        let (oid, name): (u32, String) = (row.get(0), row.get(1));
        if let Err(e) = client
            .execute("SELECT bt_index_check($1::oid::regclass, true)", &[&oid])
            .await
        {
            // Only data_corrupted and index_corrupted are findings; anything else
            // (no privilege, a timeout, a lost connection) says nothing about the index.
            match e.as_db_error() {
                Some(db) if matches!(db.code().code(), "XX001" | "XX002") => {
                    failures.push((name, db.message().to_owned()));
                }
                _ => {
                    return Err(db_err("running amcheck (bt_index_check needs EXECUTE on amcheck's functions, e.g. as a superuser)")(e)
                        .with_object(name));
                }
            }
        }
    }
    Ok((indexes.len(), failures))
}

/// Whether the amcheck extension is installed in the database `client` is connected to.
pub async fn installed(client: &Client) -> Result<bool> {
    Ok(client
        .query_opt("SELECT 1 FROM pg_extension WHERE extname = 'amcheck'", &[])
        .await
        .map_err(db_err("looking for the amcheck extension"))?
        .is_some())
}

/// The optional amcheck verifier: one check, `amcheck`, failing with every index
/// amcheck finds corrupt. Unlike the others it changes the scratch database: it
/// creates the amcheck extension there (never in a source), which is dropped with it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Amcheck;

#[async_trait]
impl Verifier for Amcheck {
    fn name(&self) -> &str {
        "amcheck"
    }

    async fn verify(&self, r: &Restored<'_>) -> Result<Vec<Check>> {
        r.client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck")
            .await
            .map_err(db_err(
                "creating the amcheck extension in the scratch database (install PostgreSQL's contrib modules)",
            ))?;
        let (checked, failures) = check_indexes(r.client).await?;
        Ok(vec![if failures.is_empty() {
            Check::pass(
                self.name(),
                format!(
                    "{checked} B-tree indexes consistent with their tables (bt_index_check, heapallindexed)"
                ),
            )
        } else {
            Check::fail(
                self.name(),
                failures
                    .iter()
                    .map(|(index, message)| format!("{index}: {message}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        }])
    }
}

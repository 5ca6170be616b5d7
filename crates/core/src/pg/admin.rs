//! Database-level statements: create, drop, rename, and "is it empty", issued on a
//! connection to another database of the same server.

use tokio_postgres::Client;

use crate::error::Result;
use crate::pg::process::is_running;
use crate::pg::sql::{USER_OBJECTS, query_count};
use crate::pg::{ConnParams, ServerInfo, db_err, quote_ident};

/// A connection to `target`'s server through a database other than the target, so
/// the target itself can be created, dropped or renamed.
pub struct Admin {
    client: Client,
    server: ServerInfo,
}

impl Admin {
    /// Connects to `postgres` (or `template1` when the target is `postgres`).
    pub async fn connect(target: &ConnParams) -> Result<Self> {
        let admin_db = if target.dbname() == "postgres" {
            "template1"
        } else {
            "postgres"
        };
        let client = target.with_dbname(admin_db).connect().await?;
        let server = ServerInfo::query(&client).await?;
        Ok(Self { client, server })
    }

    /// The server's version.
    pub fn server(&self) -> &ServerInfo {
        &self.server
    }

    /// Whether `database` exists.
    pub async fn exists(&self, database: &str) -> Result<bool> {
        Ok(self
            .client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
            .await
            .map_err(db_err("looking up a database"))?
            .is_some())
    }

    /// Creates `database` from `template0` with `encoding`, marked as pgproof's work
    /// in progress (a comment naming this process and host) until
    /// [`hand_over`](Self::hand_over): if this process dies first, the next run on
    /// this host drops it ([`reap_abandoned`](Self::reap_abandoned)).
    pub async fn create(&self, database: &str, encoding: &str) -> Result<()> {
        // Two statements: CREATE DATABASE cannot share a query string (an implicit
        // transaction) with another.
        let db = quote_ident(database);
        self.client
            .batch_execute(&format!(
                "CREATE DATABASE {db} TEMPLATE template0 ENCODING '{}'",
                encoding.replace('\'', "")
            ))
            .await
            .map_err(db_err("creating a database"))?;
        self.client
            .batch_execute(&format!(
                "COMMENT ON DATABASE {db} IS '{MARK}{} on {}'",
                std::process::id(),
                hostname().replace('\'', "")
            ))
            .await
            .map_err(db_err("marking a database pgproof is restoring into"))?;
        tracing::info!(database = %database, "created database");
        Ok(())
    }

    /// Removes the work-in-progress mark: the database is the user's now.
    pub async fn hand_over(&self, database: &str) -> Result<()> {
        self.client
            .batch_execute(&format!(
                "COMMENT ON DATABASE {} IS NULL",
                quote_ident(database)
            ))
            .await
            .map_err(db_err("handing over a restored database"))
    }

    /// Drops the databases that pgproof runs on this host created and never handed
    /// over, when the run that created them no longer exists (killed with SIGKILL, the
    /// host rebooted). Returns their names.
    pub async fn reap_abandoned(&self) -> Result<Vec<String>> {
        let rows = self
            .client
            .query(
                "SELECT d.datname::text, shobj_description(d.oid, 'pg_database') FROM pg_database d \
                 WHERE shobj_description(d.oid, 'pg_database') LIKE $1",
                &[&format!("{MARK}%")],
            )
            .await
            .map_err(db_err("looking for abandoned databases"))?;
        let host = hostname();
        let mut dropped = Vec::new();
        for row in rows {
            let (name, mark): (String, String) = (row.get(0), row.get(1));
            let Some((pid, on)) = mark
                .strip_prefix(MARK)
                .and_then(|rest| rest.split_once(" on "))
            else {
                continue;
            };
            let alive = pid.parse::<u32>().map_or(true, is_running);
            if on != host || alive {
                continue;
            }
            self.drop(&name).await?;
            tracing::info!(database = %name, pid, "dropped a database a run that died had left");
            dropped.push(name);
        }
        Ok(dropped)
    }

    /// Drops `database` if it exists, disconnecting its sessions where the server
    /// can (13 and newer).
    pub async fn drop(&self, database: &str) -> Result<()> {
        let force = if self.server.version_num >= 130000 {
            " WITH (FORCE)"
        } else {
            ""
        };
        self.client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {}{force}",
                quote_ident(database)
            ))
            .await
            .map_err(db_err("dropping a database"))?;
        tracing::debug!(database = %database, "dropped database if it existed");
        Ok(())
    }

    /// Ends every other session connected to `database`.
    async fn disconnect(&self, database: &str) -> Result<()> {
        self.client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&database],
            )
            .await
            .map_err(db_err("ending the sessions of the database being replaced"))?;
        Ok(())
    }

    /// Renames `from` to `to`.
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.client
            .batch_execute(&format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote_ident(from),
                quote_ident(to)
            ))
            .await
            .map_err(db_err("renaming a database"))
    }

    /// Replaces `database` with `replacement` so that the name never stops naming a
    /// whole database: the original's sessions are ended (as `DROP DATABASE … WITH
    /// (FORCE)` would), it is renamed aside, the replacement renamed in, and only then
    /// the original dropped. If the second rename fails the original is put back.
    pub async fn swap_in(&self, replacement: &str, database: &str) -> Result<()> {
        let aside = format!("{replacement}_old");
        self.drop(&aside).await?;
        let mut attempt = 0;
        loop {
            self.disconnect(database).await?;
            match self.rename(database, &aside).await {
                Ok(()) => break,
                // A terminated session takes a moment to go, or a client reconnected
                // between the two statements: wait, end it again.
                Err(_) if attempt < 10 => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
        if let Err(e) = self.rename(replacement, database).await {
            if let Err(back) = self.rename(&aside, database).await {
                tracing::error!(original = %aside, restored = %replacement, error = %back, "could not put the original database back; it is kept under the name shown");
            }
            return Err(e);
        }
        if let Err(e) = self.drop(&aside).await {
            tracing::warn!(database = %aside, error = %e, "the replaced database could not be dropped; drop it by hand");
        }
        Ok(())
    }
}

/// The comment that marks a database as pgproof's work in progress.
const MARK: &str = "pgproof: in progress, pid ";

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// Relations and large objects a user put into the database `client` is connected
/// to; zero means it is empty as far as a restore is concerned.
pub async fn user_objects(client: &Client) -> Result<i64> {
    query_count(client, USER_OBJECTS, "counting objects in a database").await
}

/// Drops `target`'s database (scratch databases pgproof created).
pub async fn drop_database(target: &ConnParams) -> Result<()> {
    Admin::connect(target).await?.drop(target.dbname()).await
}

//! Database-level statements: create, drop, rename, and "is it empty", issued on a
//! connection to another database of the same server.

use std::future::Future;
use std::sync::Arc;

use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::pg::conn::Canceller;
use crate::pg::process::is_running;
use crate::pg::properties::{DatabaseProperties, RoleInfo};
use crate::pg::sql::{USER_OBJECTS, query_count};
use crate::pg::{ConnParams, ServerInfo, db_err, quote_ident};

/// A connection to `target`'s server through a database other than the target, so
/// the target itself can be created, dropped or renamed.
pub struct Admin {
    client: Arc<Client>,
    server: ServerInfo,
    canceller: Canceller,
}

impl Admin {
    /// Connects to `postgres` (or `template1` when the target is `postgres`).
    pub async fn connect(target: &ConnParams) -> Result<Self> {
        let admin_db = if target.dbname() == "postgres" {
            "template1"
        } else {
            "postgres"
        };
        let params = target.with_dbname(admin_db);
        let client = params.connect().await?;
        let server = ServerInfo::query(&client).await?;
        Ok(Self {
            canceller: params.canceller(&client),
            client: Arc::new(client),
            server,
        })
    }

    /// What cancels the statement this connection runs, from elsewhere.
    pub fn canceller(&self) -> Canceller {
        self.canceller.clone()
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

    /// Creates `database` from `template0` with `encoding` and, when known, the
    /// source's locale (`properties`), marked as pgproof's work in progress (a comment
    /// naming this process and host) until [`hand_over`](Self::hand_over): if this
    /// process dies first, the next run on this host drops it
    /// ([`reap_abandoned`](Self::reap_abandoned)).
    ///
    /// The future owns what it needs, so it can be spawned and outlive its caller: the
    /// server runs a CREATE DATABASE to its end whoever waits for it.
    pub fn create(
        &self,
        database: &str,
        encoding: &str,
        properties: Option<&DatabaseProperties>,
    ) -> impl Future<Output = Result<()>> + Send + 'static {
        // Two statements: CREATE DATABASE cannot share a query string (an implicit
        // transaction) with another.
        let db = quote_ident(database);
        let statement = match properties.map(|p| self.locale_clause(p)).transpose() {
            Ok(locale) => Ok(format!(
                "CREATE DATABASE {db} TEMPLATE template0 ENCODING {}{}",
                sql_literal(encoding),
                locale.unwrap_or_default()
            )),
            Err(e) => Err(e),
        };
        let (client, database, properties) = (
            self.client.clone(),
            database.to_owned(),
            properties.cloned(),
        );
        async move {
            client
                .batch_execute(&statement?)
                .await
                .map_err(|e| match (e.as_db_error(), &properties) {
                    (Some(db), Some(p)) if db.message().contains("locale") || db.message().contains("collation") => {
                        Error::tool(format!(
                            "the server cannot create a database with the backup's locale (LC_COLLATE {:?}, LC_CTYPE {:?}, provider {}{}): {}; install that locale on the server's host (locale-gen, or an ICU build), or restore into an existing database with the locale you want and force it",
                            p.collate,
                            p.ctype,
                            p.locale_provider,
                            p.locale.as_deref().map(|l| format!(" {l:?}")).unwrap_or_default(),
                            db.message()
                        ))
                    }
                    _ => db_err("creating a database")(e),
                })?;
            let marked = client
                .batch_execute(&format!(
                    "COMMENT ON DATABASE {db} IS '{MARK}{} on {}'",
                    std::process::id(),
                    hostname().replace('\'', "")
                ))
                .await;
            if let Err(e) = marked {
                // Unmarked, no later run would know it for pgproof's: dropped now.
                if let Err(dropped) = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))
                    .await
                {
                    tracing::error!(%database, error = %dropped, "pgproof created this database and could not mark or drop it: drop it by hand");
                }
                return Err(db_err("marking a database pgproof is restoring into")(e));
            }
            tracing::info!(database = %database, "created database");
            Ok(())
        }
    }

    /// Replaces the work-in-progress mark with `comment` (the backup's own): the
    /// database is the user's now.
    pub async fn hand_over(&self, database: &str, comment: Option<&str>) -> Result<()> {
        self.set_comment(database, comment)
            .await
            .map_err(|e| e.with_operation("handing over a restored database"))
    }

    /// `COMMENT ON DATABASE`.
    pub async fn set_comment(&self, database: &str, comment: Option<&str>) -> Result<()> {
        let statement: String = self
            .client
            .query_one(
                "SELECT format('COMMENT ON DATABASE %I IS %s', $1::text, coalesce(quote_literal($2::text), 'NULL'))",
                &[&database, &comment],
            )
            .await
            .map_err(db_err("preparing a database comment"))?
            .get(0);
        self.client
            .batch_execute(&statement)
            .await
            .map_err(db_err("setting a database's comment"))
    }

    /// The `LOCALE_PROVIDER …` / `LC_COLLATE …` part of a CREATE DATABASE for this
    /// server, or an error when the server cannot have that locale at all.
    fn locale_clause(&self, p: &DatabaseProperties) -> Result<String> {
        let literal = sql_literal;
        let mut clause = format!(
            " LC_COLLATE {} LC_CTYPE {}",
            literal(&p.collate),
            literal(&p.ctype)
        );
        let version = self.server.version_num;
        match (p.locale_provider.as_str(), &p.locale) {
            ("libc", _) => {
                if version >= 150000 {
                    clause.push_str(" LOCALE_PROVIDER libc");
                }
            }
            ("icu", Some(locale)) if version >= 150000 => {
                clause.push_str(&format!(
                    " LOCALE_PROVIDER icu ICU_LOCALE {}",
                    literal(locale)
                ));
            }
            ("builtin", Some(locale)) if version >= 170000 => {
                clause.push_str(&format!(
                    " LOCALE_PROVIDER builtin BUILTIN_LOCALE {}",
                    literal(locale)
                ));
            }
            (provider, _) => {
                return Err(Error::tool(format!(
                    "the backup's database uses the {provider} locale provider, which PostgreSQL {} cannot create; restore into a newer server",
                    self.server.major()
                )));
            }
        }
        Ok(clause)
    }

    /// The roles among `needed` that this server lacks.
    pub async fn missing_roles<'r>(&self, roles: &'r [RoleInfo]) -> Result<Vec<&'r RoleInfo>> {
        let names: Vec<&str> = roles
            .iter()
            .filter(|r| r.needed)
            .map(|r| r.name.as_str())
            .collect();
        let present: Vec<String> = self
            .client
            .query(
                "SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1)",
                &[&names],
            )
            .await
            .map_err(db_err("looking up roles"))?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        Ok(roles
            .iter()
            .filter(|r| r.needed && !present.contains(&r.name))
            .collect())
    }

    /// Creates `missing` roles as recorded (without passwords: pgproof never has
    /// them), then the memberships and per-role settings they had.
    pub async fn create_roles(&self, missing: &[&RoleInfo]) -> Result<()> {
        for role in missing {
            let created = self
                .client
                .batch_execute(&format!(
                    "CREATE ROLE {} WITH {}",
                    quote_ident(&role.name),
                    role.attributes()
                ))
                .await;
            match created {
                Ok(()) => tracing::info!(role = %role.name, "created role"),
                // Another restore on this server (a second verify worker) created it
                // since it was found missing (at once: a unique violation on the
                // catalog); the roles check judges its attributes.
                Err(e)
                    if e.code().is_some_and(|c| {
                        *c == tokio_postgres::error::SqlState::DUPLICATE_OBJECT
                            || *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
                    }) =>
                {
                    tracing::debug!(role = %role.name, "role created meanwhile by another run");
                }
                Err(e) => return Err(db_err("creating a role the backup needs")(e)),
            }
        }
        for role in missing {
            for parent in &role.member_of {
                let exists = self
                    .client
                    .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[parent])
                    .await
                    .map_err(db_err("looking up a role"))?
                    .is_some();
                if !exists {
                    continue;
                }
                self.client
                    .batch_execute(&format!(
                        "GRANT {} TO {}",
                        quote_ident(parent),
                        quote_ident(&role.name)
                    ))
                    .await
                    .map_err(db_err("granting a role's memberships"))?;
            }
            for setting in &role.settings {
                self.apply_setting(&format!("ALTER ROLE {}", quote_ident(&role.name)), setting)
                    .await?;
            }
        }
        Ok(())
    }

    /// Gives `database` the recorded settings, per-role settings and, when pgproof
    /// created it, owner.
    pub async fn apply_properties(
        &self,
        database: &str,
        p: &DatabaseProperties,
        created: bool,
    ) -> Result<()> {
        let db = quote_ident(database);
        if created {
            self.client
                .batch_execute(&format!(
                    "ALTER DATABASE {db} OWNER TO {}",
                    quote_ident(&p.owner)
                ))
                .await
                .map_err(db_err("giving the restored database its owner"))?;
        }
        for setting in &p.settings {
            self.apply_setting(&format!("ALTER DATABASE {db}"), setting)
                .await?;
        }
        for (role, settings) in &p.role_settings {
            for setting in settings {
                self.apply_setting(
                    &format!("ALTER ROLE {} IN DATABASE {db}", quote_ident(role)),
                    setting,
                )
                .await?;
            }
        }
        Ok(())
    }

    /// `<target> SET name FROM CURRENT` after setting it for this transaction only:
    /// the recorded `name=value` is the server's own spelling of the value (a list
    /// like search_path included), which `set_config` parses exactly as it was.
    async fn apply_setting(&self, target: &str, setting: &str) -> Result<()> {
        let Some((name, value)) = setting.split_once('=') else {
            return Ok(());
        };
        let quoted_name = name
            .split('.')
            .map(quote_ident)
            .collect::<Vec<_>>()
            .join(".");
        let result = async {
            self.client.batch_execute("BEGIN").await?;
            self.client
                .execute("SELECT set_config($1, $2, true)", &[&name, &value])
                .await?;
            self.client
                .batch_execute(&format!("{target} SET {quoted_name} FROM CURRENT; COMMIT"))
                .await
        }
        .await;
        if let Err(e) = result {
            let _ = self.client.batch_execute("ROLLBACK").await;
            let detail = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned());
            return Err(Error::database(format!(
                "cannot apply the recorded setting {name} ({target}): {detail}; restore as a role that may set it, or set it by hand"
            )));
        }
        Ok(())
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

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
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

/// Every database `params`' role may connect to, templates aside, by name.
pub async fn connectable_databases(params: &ConnParams) -> Result<Vec<String>> {
    let client = params.connect().await?;
    Ok(client
        .query(
            "SELECT datname::text FROM pg_database \
             WHERE datallowconn AND NOT datistemplate AND has_database_privilege(oid, 'CONNECT') \
             ORDER BY 1",
            &[],
        )
        .await
        .map_err(db_err("listing the server's databases"))?
        .into_iter()
        .map(|r| r.get(0))
        .collect())
}

/// Drops `target`'s database (scratch databases pgproof created).
pub async fn drop_database(target: &ConnParams) -> Result<()> {
    Admin::connect(target).await?.drop(target.dbname()).await
}

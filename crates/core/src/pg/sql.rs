//! Small SQL helpers shared by every module that talks to PostgreSQL.

use tokio_postgres::Client;

use crate::error::{Error, Result};

/// A PostgreSQL server's version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    /// `server_version`, e.g. `15.18 (Debian 15.18-0+deb12u1)`.
    pub version: String,
    /// `server_version_num`, e.g. `150018`.
    pub version_num: i32,
}

impl ServerInfo {
    /// Asks the server.
    pub async fn query(client: &Client) -> Result<Self> {
        let row = client
            .query_one(
                "SELECT current_setting('server_version'), current_setting('server_version_num')::int4",
                &[],
            )
            .await
            .map_err(db_err("reading the server version"))?;
        Ok(Self {
            version: row.get(0),
            version_num: row.get(1),
        })
    }

    /// The major version (15 for 15.18).
    pub fn major(&self) -> u32 {
        (self.version_num / 10000) as u32
    }
}

/// Maps a tokio-postgres error to [`ErrorKind::Database`](crate::ErrorKind::Database), saying what was being done.
pub fn db_err(doing: &'static str) -> impl Fn(tokio_postgres::Error) -> Error {
    move |e| {
        let detail = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        };
        Error::database(format!("PostgreSQL error while {doing}: {detail}")).with_source(e)
    }
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Reads one `bigint` that a query returns.
pub(crate) async fn query_count(client: &Client, sql: &str, doing: &'static str) -> Result<i64> {
    Ok(client
        .query_one(sql, &[])
        .await
        .map_err(db_err(doing))?
        .get(0))
}

/// The relations and large objects a user put into a database: zero means the
/// database is empty, as far as a restore is concerned.
pub(crate) const USER_OBJECTS: &str = "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
       WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
         AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%') \
     + (SELECT count(*) FROM pg_largeobject_metadata)";

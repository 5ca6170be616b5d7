//! Exported snapshots: one transaction whose view pg_dump and the fingerprint share.

use std::time::Duration;

use tokio_postgres::Client;

use crate::error::Result;
use crate::pg::{ConnParams, ServerInfo, db_err};

/// A transaction that exported its snapshot, held open so `pg_dump --snapshot` and
/// whatever runs on [`client`](Self::client) (the fingerprint) see exactly the same data.
pub struct SnapshotSession {
    client: Client,
    snapshot_id: String,
    server: ServerInfo,
    encoding: String,
    /// The transaction's settings, for connections that join the snapshot.
    settings: String,
}

impl SnapshotSession {
    /// Connects, opens a REPEATABLE READ READ ONLY transaction and exports its
    /// snapshot. `lock_wait` bounds how long it waits for a table lock and
    /// `statement_timeout` each statement pgproof runs in it (catalog queries, one
    /// table's fingerprint); zero means no limit.
    pub async fn open(
        params: &ConnParams,
        lock_wait: Duration,
        statement_timeout: Duration,
    ) -> Result<Self> {
        let client = params.connect().await?;
        // The session idles while pg_dump works: a server-side idle timeout must not
        // end the snapshot under pg_dump. The server's own statement_timeout is
        // replaced by pgproof's, which is about its own queries.
        let settings = format!(
            "SET LOCAL statement_timeout = {}; SET LOCAL idle_in_transaction_session_timeout = 0; \
             SET LOCAL lock_timeout = '{}s'",
            statement_timeout.as_millis(),
            lock_wait.as_secs().max(1)
        );
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; {settings}"
            ))
            .await
            .map_err(db_err("opening the snapshot transaction"))?;
        let row = client
            .query_one(
                "SELECT pg_export_snapshot(), pg_encoding_to_char(d.encoding)::text \
                 FROM pg_database d WHERE d.datname = current_database()",
                &[],
            )
            .await
            .map_err(db_err("exporting a snapshot"))?;
        let server = ServerInfo::query(&client).await?;
        Ok(Self {
            snapshot_id: row.get(0),
            encoding: row.get(1),
            client,
            server,
            settings,
        })
    }

    /// Another connection inside the same snapshot, with the same settings (the
    /// snapshot id came from the server, so it is safe to quote).
    pub async fn join(&self, params: &ConnParams) -> Result<Client> {
        let client = params.connect().await?;
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; \
                 SET TRANSACTION SNAPSHOT '{}'; {}",
                self.snapshot_id.replace('\'', "''"),
                self.settings
            ))
            .await
            .map_err(db_err("joining the snapshot transaction"))?;
        Ok(client)
    }

    /// The exported snapshot's id, for `pg_dump --snapshot`.
    pub fn snapshot_id(&self) -> &str {
        &self.snapshot_id
    }

    /// The connection inside the snapshot transaction: queries here see the dump's data.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The source server's version.
    pub fn server(&self) -> &ServerInfo {
        &self.server
    }

    /// The source database's encoding (e.g. `UTF8`).
    pub fn encoding(&self) -> &str {
        &self.encoding
    }

    /// Ends the transaction, releasing the snapshot.
    pub async fn close(self) -> Result<()> {
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(db_err("closing the snapshot transaction"))
    }
}

/// How many more connections the connected role may open to its database now, under
/// the tightest of the server's, the database's and the role's limits (the
/// superuser's exemptions ignored: an estimate that errs low).
pub(crate) async fn connections_free(client: &Client) -> Result<i64> {
    // Other roles' sessions show a NULL backend_type to a role without
    // pg_read_all_stats: counted as clients, to err low. The server's own
    // processes (checkpointer, walwriter…) have no user and take no slot.
    let clients =
        "usesysid IS NOT NULL AND (backend_type IS NULL OR backend_type = 'client backend')";
    let sql = format!(
        "SELECT least( \
           current_setting('max_connections')::int \
             - current_setting('superuser_reserved_connections')::int \
             - coalesce(current_setting('reserved_connections', true)::int, 0) \
             - (SELECT count(*) FROM pg_stat_activity WHERE {clients}), \
           CASE WHEN d.datconnlimit < 0 THEN NULL ELSE d.datconnlimit \
             - (SELECT count(*) FROM pg_stat_activity WHERE datid = d.oid AND ({clients})) END, \
           CASE WHEN r.rolconnlimit < 0 THEN NULL ELSE r.rolconnlimit \
             - (SELECT count(*) FROM pg_stat_activity WHERE usesysid = r.oid AND ({clients})) END)::int8 \
         FROM pg_database d, pg_roles r \
         WHERE d.datname = current_database() AND r.rolname = current_user"
    );
    let row = client
        .query_one(&sql, &[])
        .await
        .map_err(db_err("counting the server's free connections"))?;
    Ok(row.get(0))
}

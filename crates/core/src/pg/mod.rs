//! PostgreSQL plumbing: connection parameters with libpq's meaning, the password file,
//! tool discovery, exported snapshots, database-level statements, the cluster's globals
//! and child programs.

// Restores create, rename and drop databases through it; the workspace tests reach
// it (feature `testkit`) to break a swap half-way.
#[cfg(feature = "testkit")]
pub mod admin;
#[cfg(not(feature = "testkit"))]
pub(crate) mod admin;
mod conn;
pub mod globals;
mod passfile;
pub(crate) mod process;
pub mod properties;
mod snapshot;
mod sql;
pub mod tls;
mod tools;

pub use admin::connectable_databases;
pub use conn::{Canceller, ConnParams};
pub use process::{client_command, is_running};
pub use snapshot::SnapshotSession;
pub(crate) use snapshot::connections_free;
pub(crate) use sql::query_count;
pub use sql::{ServerInfo, db_err, quote_ident};
pub use tools::{PgTools, parse_version_output};

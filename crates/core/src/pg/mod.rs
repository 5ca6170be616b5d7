//! PostgreSQL plumbing: connection parameters with libpq's meaning, the password file,
//! tool discovery, exported snapshots, database-level statements and child programs.

pub mod admin;
mod conn;
mod passfile;
pub mod process;
pub mod properties;
mod snapshot;
mod sql;
pub mod tls;
mod tools;

pub use conn::ConnParams;
pub use snapshot::SnapshotSession;
pub(crate) use sql::query_count;
pub use sql::{ServerInfo, db_err, quote_ident};
pub use tools::{PgTools, parse_version_output};

//! Evidence: what pgproof records about a database so a restore can be compared with
//! it — the content fingerprint (tables, sequences, large objects) and the
//! tamper-evident audit chain; the database's properties and the roles it
//! needs; and the results of the application's own invariant queries.

pub mod alerts;
pub mod audit;
pub mod database;
pub mod fingerprint;
pub mod invariant;

pub use fingerprint::Fingerprint;

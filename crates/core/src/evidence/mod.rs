//! Evidence: what pgproof records about a database so a restore can be compared with
//! it — the content fingerprint (tables, sequences, large objects) and the
//! tamper-evident audit chain.

pub mod audit;
pub mod fingerprint;

pub use fingerprint::Fingerprint;

//! pgproof-core: the engines of pgproof, with no cloud SDK in sight.
//!
//! This crate holds the traits every backend implements ([`Sink`], [`Dumper`],
//! [`Verifier`]), the streaming backup and restore [`pipeline`], the backup
//! [`manifest`], the config types the CLI flattens into its own file, PostgreSQL
//! plumbing ([`pg`]: connection parameters, tool discovery, exported snapshots) and an
//! [`cluster::EphemeralCluster`] for tests, demos and scratch restores.
//!
//! A backup is one streaming pass: `pg_dump --snapshot` → sha256(raw) → [gzip] → age →
//! sha256(stored) → [`Sink::put`], then the manifest, written last and create-only. No
//! temporary file is written and memory stays bounded whatever the database size.

pub mod audit;
pub mod cluster;
pub mod config;
pub mod crypto;
pub mod dump;
pub mod error;
pub mod fingerprint;
mod hashing;
pub mod manifest;
pub mod pg;
pub mod pipeline;
pub mod prove;
pub mod sink;
pub mod verify;

pub use dump::{Dumper, Format};
pub use error::{Error, Result};
pub use sink::Sink;
pub use verify::Verifier;

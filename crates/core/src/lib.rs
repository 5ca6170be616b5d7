//! pgproof-core: logical PostgreSQL backups that are proven, as a library.
//!
//! A backup is one streaming pass: `pg_dump --snapshot` → sha256(raw) → \[gzip\] → age →
//! sha256(stored) → a [`Sink`], then the manifest, written last and create-only. In the
//! same exported snapshot every table is fingerprinted server-side. Verification
//! restores the backup into a scratch database, fingerprints it again and compares.
//! No temporary file is written and memory stays bounded whatever the database size.
//!
//! # Engines
//!
//! Three small traits, each with a written contract and (feature `testkit`) a
//! conformance suite that every implementation runs:
//!
//! - [`Dumper`] turns a snapshot into an archive and an archive into a database
//!   ([`dump::CustomDumper`], [`dump::PlainDumper`]);
//! - [`Sink`] stores objects create-only ([`sink::SinkExt`] adds conveniences; the
//!   local, S3 and GCS sinks live in their own crates);
//! - [`Verifier`] judges a restored database against a backup's evidence.
//!
//! # Operations
//!
//! [`ops`] composes them: [`Backup`](ops::Backup), [`Restore`](ops::Restore),
//! [`Verify`](ops::Verify), [`Drill`](ops::Drill); [`catalog`] lists what a sink holds.
//! Hand operations a sink wrapped in [`catalog::SignedSink`]: it signs every catalog
//! object they write and refuses every one they read that a trusted key did not sign
//! (the sink is untrusted storage; `docs/security.md`).
//! Errors are one [`Error`] type with an [`ErrorKind`] and
//! [`about_backup`](Error::about_backup), which separates a verdict on a backup from a
//! problem of the environment.
//!
//! # Example: back up, then verify with an application invariant of your own
//!
//! ```no_run
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use pgproof_core::{catalog::{BackupRef, Keyring, SignedSink, SigningKey}, codec::KeyPair, dump::Format, ops, pg::ConnParams};
//! use pgproof_core::{Result, Sink, verify::{Check, Restored, Verifier}};
//!
//! struct NoOrphanOrders;
//! #[async_trait]
//! impl Verifier for NoOrphanOrders {
//!     fn name(&self) -> &str { "orphan-orders" }
//!     async fn verify(&self, r: &Restored<'_>) -> Result<Vec<Check>> {
//!         let sql = "SELECT count(*) FROM orders o LEFT JOIN customers c ON c.id = o.customer_id WHERE c.id IS NULL";
//!         let n: i64 = r.client.query_one(sql, &[]).await.map_err(pgproof_core::pg::db_err("counting orphans"))?.get(0);
//!         Ok(vec![Check::judge(self.name(), n == 0, format!("{n} orders without a customer"))])
//!     }
//! }
//!
//! async fn nightly(store: Arc<dyn Sink>, signing: SigningKey) -> Result<bool> {
//!     // Every catalog object signed; nothing read back believed unless signed.
//!     let sink: Arc<dyn Sink> = Arc::new(SignedSink::new(store, Keyring::new(Some(signing), vec![])));
//!     let keys = KeyPair::generate();
//!     let source = ConnParams::parse("postgres://backup@db.internal/app")?;
//!     let manifest = ops::Backup::new(source, sink.clone())
//!         .dumper(Format::Plain.dumper(6))
//!         .recipients(keys.recipients())
//!         .run()
//!         .await?;
//!     let scratch = ConnParams::parse("postgres://postgres@scratch.internal/postgres")?;
//!     let report = ops::Verify::new(sink, BackupRef::of(&manifest), scratch)
//!         .identities(Some(keys.identities()))
//!         .verifier(Box::new(NoOrphanOrders))
//!         .run()
//!         .await?;
//!     Ok(report.passed)
//! }
//! ```

pub mod catalog;
pub mod codec;
pub mod dump;
pub mod error;
pub mod evidence;
pub mod ops;
pub mod pg;
pub mod scope;
pub mod scratch;
pub mod sink;
pub mod verify;

pub use dump::Dumper;
pub use error::{Error, ErrorKind, Result, Setting};
pub use sink::Sink;
pub use verify::Verifier;

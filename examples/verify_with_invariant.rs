//! Backs up a database and verifies the backup with pgproof's verifiers plus an
//! application invariant of its own (no order without its customer).
//!
//! `cargo run -p pgproof-examples --example verify_with_invariant`: runs on an
//! ephemeral cluster it starts; exits non-zero if any check fails.

use std::sync::Arc;

use async_trait::async_trait;
use pgproof_core::catalog::{BackupRef, Keyring, SignedSink, SigningKey};
use pgproof_core::codec::KeyPair;
use pgproof_core::pg::db_err;
use pgproof_core::scratch::EphemeralCluster;
use pgproof_core::verify::{Check, Restored, Verifier};
use pgproof_core::{Error, Result, Sink, ops};
use pgproof_sink_fs::FsSink;

/// Every order's customer exists.
struct NoOrphanOrders;

#[async_trait]
impl Verifier for NoOrphanOrders {
    fn name(&self) -> &str {
        "orphan-orders"
    }

    async fn verify(&self, r: &Restored<'_>) -> Result<Vec<Check>> {
        let orphans: i64 = r
            .client
            .query_one(
                "SELECT count(*) FROM orders o LEFT JOIN customers c ON c.id = o.customer_id WHERE c.id IS NULL",
                &[],
            )
            .await
            .map_err(db_err("counting orphan orders"))?
            .get(0);
        Ok(vec![Check::judge(
            self.name(),
            orphans == 0,
            format!("{orphans} orders without a customer"),
        )])
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cluster = EphemeralCluster::start(None)?;
    let source = cluster.params("postgres")?;
    source
        .connect()
        .await?
        .batch_execute(
            "CREATE TABLE customers (id int PRIMARY KEY, name text); \
             CREATE TABLE orders (id serial PRIMARY KEY, customer_id int, total numeric); \
             INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 50) g; \
             INSERT INTO orders (customer_id, total) SELECT 1 + g % 50, g * 1.25 FROM generate_series(1, 500) g",
        )
        .await
        .map_err(db_err("creating the example tables"))?;
    let dir = tempfile::tempdir().map_err(|e| Error::io("creating a directory", e))?;
    // Signed with a key made for this run; only what it signed is believed.
    let sink: Arc<dyn Sink> = Arc::new(SignedSink::new(
        Arc::new(FsSink::new(dir.path())),
        Keyring::new(Some(SigningKey::generate("example")?), Vec::new()),
    ));
    let keys = KeyPair::generate();
    let manifest = ops::Backup::new(source.clone(), sink.clone())
        .recipients(keys.recipients())
        .run()
        .await?;
    let report = ops::Verify::new(sink, BackupRef::of(&manifest), source)
        .identities(Some(keys.identities()))
        .verifier(Box::new(NoOrphanOrders))
        .run()
        .await?;
    for check in &report.checks {
        println!(
            "{} {:<32} {}",
            if check.passed { "ok  " } else { "FAIL" },
            check.name,
            check.detail
        );
    }
    if !report.passed || !report.checks.iter().any(|c| c.name == "orphan-orders") {
        return Err(Error::integrity("verification failed"));
    }
    println!("PASS {}", report.backup_id);
    Ok(())
}

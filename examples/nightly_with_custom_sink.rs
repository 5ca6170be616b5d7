//! The nightly run as a library operation, into a sink written here: two databases
//! backed up, each verified, then pruned to the newest backup of each, and the
//! status of the catalog judged by the same library.
//!
//! `cargo run -p pgproof-examples --example nightly_with_custom_sink`: it starts an
//! ephemeral cluster (and one more to verify in) with two small databases.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use pgproof_core::catalog::{Keyring, SignedSink, SigningKey};
use pgproof_core::codec::KeyPair;
use pgproof_core::ops::{
    Backup, NightlyRun, RetentionPolicy, RunEvent, Status, StatusPolicy, Verify,
};
use pgproof_core::scratch::EphemeralCluster;
use pgproof_core::sink::{ByteStream, ObjectMeta, validate_key};
use pgproof_core::{Error, Result, Sink};

/// Objects in memory: enough for an example, and the whole Sink contract
/// (create-only puts, exact listing by prefix, deletes).
#[derive(Debug, Default)]
struct MemorySink {
    objects: Mutex<BTreeMap<String, Bytes>>,
}

impl MemorySink {
    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Bytes>> {
        self.objects.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Sink for MemorySink {
    fn describe(&self) -> String {
        "memory:".into()
    }

    async fn put(&self, key: &str, mut body: ByteStream) -> Result<u64> {
        validate_key(key)?;
        let mut data = BytesMut::new();
        while let Some(chunk) = body.try_next().await? {
            data.extend_from_slice(&chunk);
        }
        let mut objects = self.objects();
        if objects.contains_key(key) {
            return Err(Error::already_exists(format!("{key} exists")));
        }
        objects.insert(key.to_owned(), data.freeze());
        Ok(objects[key].len() as u64)
    }

    async fn get(&self, key: &str) -> Result<ByteStream> {
        match self.objects().get(key).cloned() {
            Some(data) => Ok(futures::stream::iter([Ok(data)]).boxed()),
            None => Err(Error::not_found(format!("{key} does not exist"))),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        Ok(self
            .objects()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectMeta {
                key: k.clone(),
                size: v.len() as u64,
                // Nothing here tells two puts of one key apart: no catalog index
                // entry will ever be taken for these objects, which is allowed.
                identity: None,
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match self.objects().remove(key) {
            Some(_) => Ok(()),
            None => Err(Error::not_found(format!("{key} does not exist"))),
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cluster = EphemeralCluster::start(None)?;
    let admin = cluster.params("postgres")?.connect().await?;
    for db in ["billing", "inventory"] {
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .map_err(pgproof_core::pg::db_err("creating an example database"))?;
        cluster
            .params(db)?
            .connect()
            .await?
            .batch_execute("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 500) g")
            .await
            .map_err(pgproof_core::pg::db_err("filling an example database"))?;
    }
    let scratch = EphemeralCluster::start(None)?;
    let sink: Arc<dyn Sink> = Arc::new(SignedSink::new(
        Arc::new(MemorySink::default()),
        Keyring::new(Some(SigningKey::generate("example")?), Vec::new()),
    ));
    let keys = KeyPair::generate();
    let databases = vec![cluster.params("billing")?, cluster.params("inventory")?];
    let keep_one = RetentionPolicy {
        keep_last: Some(1),
        ..RetentionPolicy::default()
    };
    for night in 1..=2 {
        let (backup_sink, recipients) = (sink.clone(), keys.recipients());
        let (verify_sink, identities, scratch) =
            (sink.clone(), keys.identities(), scratch.params("postgres")?);
        let (outcome, result) = NightlyRun::new(sink.clone(), move |source| {
            Backup::new(source, backup_sink.clone()).recipients(recipients.clone())
        })
        .databases(databases.clone())
        .verify(move |target| {
            Ok(Verify::new(verify_sink.clone(), target, scratch.clone())
                .identities(Some(identities.clone()))
                .ephemeral_scratch(true))
        })
        .prune(keep_one.clone())
        .on_event(|event| {
            if let RunEvent::Verified(report) = event {
                println!(
                    "verified {} of {}: {}",
                    report.backup_id,
                    report.database,
                    if report.passed { "PASS" } else { "FAIL" }
                );
            }
        })
        .run()
        .await;
        result?;
        println!(
            "night {night}: {} backups committed, {} verified, {} failed",
            outcome.committed.len(),
            outcome.reports.len(),
            outcome.failed.len()
        );
        assert_eq!(outcome.committed.len(), 2);
    }
    let report = Status::new(sink.clone(), StatusPolicy::default())
        .run()
        .await?;
    for db in &report.databases {
        println!(
            "{}: {} backup(s), newest verified {}",
            db.database,
            db.backups,
            db.newest_verified_backup.as_deref().unwrap_or("none")
        );
        assert_eq!(db.backups, 1, "retention keeps the newest backup only");
    }
    report.verdict()
}

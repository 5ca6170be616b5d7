//! Backs up a database into a local directory through a sink chosen in code: the
//! directory sink wrapped in a layer that counts what it stores.
//!
//! `cargo run -p pgproof-examples --example backup_to_directory [SOURCE_URL]`: without
//! a URL it starts an ephemeral cluster with a small table of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use pgproof_core::catalog::{Keyring, SignedSink, SigningKey};
use pgproof_core::codec::KeyPair;
use pgproof_core::pg::ConnParams;
use pgproof_core::scratch::EphemeralCluster;
use pgproof_core::sink::{ByteStream, ObjectMeta};
use pgproof_core::{Result, Sink, catalog, ops};
use pgproof_sink_fs::FsSink;

/// A layer around any sink that counts objects and bytes stored.
#[derive(Debug)]
struct Counted<S> {
    inner: S,
    objects: AtomicU64,
    bytes: AtomicU64,
}

#[async_trait]
impl<S: Sink> Sink for Counted<S> {
    fn describe(&self) -> String {
        format!("counted {}", self.inner.describe())
    }

    async fn put(&self, key: &str, body: ByteStream) -> Result<u64> {
        let n = self.inner.put(key, body).await?;
        self.objects.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }

    async fn get(&self, key: &str) -> Result<ByteStream> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let (source, _cluster) = match std::env::args().nth(1) {
        Some(url) => (ConnParams::parse(&url)?, None),
        None => {
            let cluster = EphemeralCluster::start(None)?;
            let params = cluster.params("postgres")?;
            params
                .connect()
                .await?
                .batch_execute(
                    "CREATE TABLE readings AS SELECT g AS id, g * 0.5 AS value FROM generate_series(1, 1000) g",
                )
                .await
                .map_err(pgproof_core::pg::db_err("creating the example table"))?;
            (params, Some(cluster))
        }
    };
    let dir =
        tempfile::tempdir().map_err(|e| pgproof_core::Error::io("creating a directory", e))?;
    let counted = Arc::new(Counted {
        inner: FsSink::new(dir.path()),
        objects: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    });
    // The catalog's gate outermost: it signs what pgproof writes and believes only
    // what a trusted key signed (here the key made for this run).
    let signing = SigningKey::generate("example")?;
    let sink: Arc<dyn Sink> = Arc::new(SignedSink::new(
        counted.clone(),
        Keyring::new(Some(signing), Vec::new()),
    ));
    let keys = KeyPair::generate();
    let manifest = ops::Backup::new(source, sink.clone())
        .recipients(keys.recipients())
        .run()
        .await?;
    let listed = catalog::list_backups(&*sink, None).await?;
    let stored = sink.list("").await?;
    println!(
        "backup {} of {}: {} dump bytes stored as {} bytes; {} puts of {} bytes in all (dump, commit lock, manifest); {} objects kept; {} backup(s) listed",
        manifest.backup_id,
        manifest.database,
        manifest.object.raw_bytes,
        manifest.object.stored_bytes,
        counted.objects.load(Ordering::Relaxed),
        counted.bytes.load(Ordering::Relaxed),
        stored.len(),
        listed.len()
    );
    assert_eq!(listed.len(), 1, "the committed backup is listed");
    assert_eq!(
        counted.objects.load(Ordering::Relaxed),
        3,
        "dump, commit lock, manifest"
    );
    assert_eq!(
        stored.len(),
        2,
        "the lock is released: dump and manifest remain"
    );
    Ok(())
}

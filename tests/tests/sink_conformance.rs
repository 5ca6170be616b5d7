//! The Sink conformance suite (pgproof-core's `testkit`) against every sink: fs on
//! local disk, S3 on moto (a real S3 server, in server mode), GCS on the in-process
//! XML-API server, Azure on Azurite (the Azure Blob Storage emulator), and a
//! third-party sink written here, outside the core, the way a library user would
//! write one.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use pgproof_core::sink::{ByteStream, ObjectMeta, SinkExt, testkit, validate_key};
use pgproof_core::{Error, Result, Sink};
use pgproof_sink_fs::FsSink;
use pgproof_tests::azurite::Azurite;
use pgproof_tests::gcs_server::GcsServer;
use pgproof_tests::moto::Moto;

#[tokio::test]
async fn fs_sink_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let sink = FsSink::new(&root);
    testkit::run_all(&sink).await;
    // The suite's own "nothing left" checks go through `list`, which skips the sink's
    // dot-named temporary files by design; only the directory itself shows whether a
    // failed or aborted put left one behind.
    assert_eq!(every_file_under(&root), Vec::<String>::new());
}

/// Every non-directory entry below `root`, hidden ones included, as relative paths.
fn every_file_under(root: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            } else {
                found.push(
                    entry
                        .path()
                        .strip_prefix(root)
                        .unwrap()
                        .display()
                        .to_string(),
                );
            }
        }
    }
    found.sort();
    found
}

/// The walk above would see a temporary file: a put whose body fails is stopped
/// while its temporary file exists (seen here), and the file is gone afterwards.
#[tokio::test]
async fn fs_sink_failed_put_leaves_no_hidden_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let sink = FsSink::new(&root);
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel::<Vec<String>>();
    let watched = root.clone();
    let body: ByteStream = futures::stream::iter(vec![Ok(Bytes::from(vec![7u8; 300_000]))])
        .chain(futures::stream::once(async move {
            // The chunk before was written: the temporary file exists now.
            let _ = seen_tx.send(every_file_under(&watched));
            Err(Error::tool("producer died"))
        }))
        .boxed();
    assert!(sink.put("db/id/dump", body).await.is_err());
    let during = seen_rx.await.unwrap();
    assert_eq!(
        during.len(),
        1,
        "one temporary file while writing: {during:?}"
    );
    assert!(
        during[0].starts_with("db/id/."),
        "the temporary file is hidden: {during:?}"
    );
    assert!(sink.list("").await.unwrap().is_empty());
    assert_eq!(every_file_under(&root), Vec::<String>::new());
}

/// A sink in memory, as a library user might write for tests: objects appear only
/// when their body ended without error, and never replace one another.
#[derive(Debug, Default)]
struct MemorySink {
    /// Each object with the number of the put that stored it: its identity.
    objects: Mutex<BTreeMap<String, (u64, Bytes)>>,
    puts: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl Sink for MemorySink {
    fn describe(&self) -> String {
        "memory:".into()
    }

    async fn put(&self, key: &str, body: ByteStream) -> Result<u64> {
        validate_key(key)?;
        if self.objects.lock().unwrap().contains_key(key) {
            return Err(Error::already_exists(format!("{key} exists")));
        }
        let mut data = BytesMut::new();
        let mut body = body;
        while let Some(chunk) = body.try_next().await? {
            data.extend_from_slice(&chunk);
        }
        let mut objects = self.objects.lock().unwrap();
        if objects.contains_key(key) {
            return Err(Error::already_exists(format!("{key} exists")));
        }
        let n = data.len() as u64;
        let put = self.puts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        objects.insert(key.to_owned(), (put, data.freeze()));
        Ok(n)
    }

    async fn get(&self, key: &str) -> Result<ByteStream> {
        let data = self
            .objects
            .lock()
            .unwrap()
            .get(key)
            .map(|(_, data)| data.clone());
        match data {
            Some(data) => {
                let chunks: Vec<Result<Bytes>> = data
                    .chunks(64 << 10)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect();
                Ok(futures::stream::iter(chunks).boxed())
            }
            None => Err(Error::not_found(format!("{key} does not exist"))),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        Ok(self
            .objects
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, (put, v))| ObjectMeta {
                key: k.clone(),
                size: v.len() as u64,
                identity: Some(put.to_string()),
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match self.objects.lock().unwrap().remove(key) {
            Some(_) => Ok(()),
            None => Err(Error::not_found(format!("{key} does not exist"))),
        }
    }
}

#[tokio::test]
async fn a_third_party_sink_conforms() {
    testkit::run_all(&MemorySink::default()).await;
}

/// A layer written outside the core, around any sink: it counts the requests it
/// passes on, and must keep the contract of what it wraps.
#[derive(Debug, Default)]
struct Counting<S> {
    inner: S,
    requests: std::sync::atomic::AtomicU64,
}

impl<S> Counting<S> {
    fn count(&self) {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[async_trait]
impl<S: Sink> Sink for Counting<S> {
    fn describe(&self) -> String {
        format!("counting {}", self.inner.describe())
    }

    async fn put(&self, key: &str, body: ByteStream) -> Result<u64> {
        self.count();
        self.inner.put(key, body).await
    }

    async fn get(&self, key: &str) -> Result<ByteStream> {
        self.count();
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.count();
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.count();
        self.inner.delete(key).await
    }
}

#[tokio::test]
async fn a_third_party_layer_around_a_sink_conforms() {
    let layered = Counting::<MemorySink>::default();
    testkit::run_all(&layered).await;
    assert!(
        layered.requests.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the suite went around the layer"
    );
}

#[tokio::test]
async fn fs_sink_files_are_private_and_no_temp_file_survives() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let sink = FsSink::new(&root);
    sink.put_bytes("db/id/manifest.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root.join("db/id/manifest.json")), 0o600);
    assert_eq!(mode(&root.join("db/id")), 0o700);
    assert_eq!(mode(&root.join("db")), 0o700);
    let names: Vec<_> = std::fs::read_dir(root.join("db/id"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["manifest.json"]);
}

fn names(list: Vec<ObjectMeta>) -> Vec<String> {
    list.into_iter().map(|m| m.key).collect()
}

/// Objects beside the sink's prefix (one sharing its first characters) that must
/// never show up in, or be touched by, the sink under test.
async fn put_neighbours(root: &dyn Sink) {
    for key in ["pgproof-neighbour/x", "elsewhere/y"] {
        root.put_bytes(key, Bytes::from_static(b"not yours"))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn s3_sink_conforms_on_moto() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("conformance");
    let root = moto.sink("conformance", "", 5, 2);
    put_neighbours(&root).await;
    let sink = moto.sink("conformance", "pgproof/ci", 5, 2);
    testkit::run_all(&sink).await;
    assert!(
        moto.pending_uploads("conformance").is_empty(),
        "aborted multipart uploads left parts behind: {:?}",
        moto.pending_uploads("conformance")
    );
    assert_eq!(
        names(root.list("").await.unwrap()),
        ["elsewhere/y", "pgproof-neighbour/x"]
    );
    // The multipart path ran, and the aborted upload was aborted (moto logs requests).
    let log = moto.log_text();
    for expected in [
        "POST /conformance/pgproof/ci/large/object?uploads",
        "partNumber=3",
        "DELETE /conformance/pgproof/ci/aborted/large?uploadId=",
    ] {
        assert!(
            log.contains(expected),
            "no request with {expected:?} in:\n{log}"
        );
    }
}

#[tokio::test]
async fn gcs_sink_conforms_on_the_in_process_xml_api_server() {
    let server = GcsServer::start();
    server.create_bucket("conformance");
    // Small pages, so every listing also exercises continuation tokens.
    server.set_page_size(2);
    let root = server.sink("conformance", "", 5, 2);
    put_neighbours(&root).await;
    let sink = server.sink("conformance", "pgproof/ci", 5, 2);
    testkit::run_all(&sink).await;
    assert!(
        server.pending_uploads("conformance").is_empty(),
        "aborted multipart uploads left parts behind: {:?}",
        server.pending_uploads("conformance")
    );
    assert_eq!(
        names(root.list("").await.unwrap()),
        ["elsewhere/y", "pgproof-neighbour/x"]
    );
    // The requests object_store sent are the XML API's, and the paths the suite
    // claims to cover were taken.
    let log = server.requests().join("\n");
    for expected in [
        "?uploads",
        "partNumber=",
        "[x-goog-if-generation-match: 0]",
        "DELETE /conformance/pgproof%2Fci%2Faborted%2Flarge?uploadId=",
        "continuation-token=",
    ] {
        assert!(
            log.contains(expected),
            "no request with {expected:?} in:\n{log}"
        );
    }
}

#[tokio::test]
async fn azure_sink_conforms_on_azurite() {
    let Some(azurite) = Azurite::start() else {
        return;
    };
    azurite.create_container("conformance");
    let root = azurite.sink("conformance", "", 5, 2);
    put_neighbours(&root).await;
    let sink = azurite.sink("conformance", "pgproof/ci", 5, 2);
    testkit::run_all(&sink).await;
    assert_eq!(
        names(root.list("").await.unwrap()),
        ["elsewhere/y", "pgproof-neighbour/x"]
    );
    // Unlike S3 and GCS, Azure cannot abort a block upload: the blocks the failed
    // large put had sent stay as an uncommitted blob, never listed by the sink nor
    // readable, until Azure discards them (after 7 days). At most that one.
    let uncommitted = azurite.uncommitted_blobs("conformance");
    assert!(
        uncommitted.iter().all(|b| b == "pgproof/ci/aborted/large"),
        "{uncommitted:?}"
    );
    // The block path ran (Put Block, Put Block List), small puts were create-only
    // (Azurite answered the second put of a key 409), and deletes went through Blob
    // Batch, object_store's only delete on Azure.
    let log = azurite.log_text();
    for expected in [
        "PUT /devstoreaccount1/conformance/pgproof/ci/large/object?comp=block&blockid=",
        "PUT /devstoreaccount1/conformance/pgproof/ci/large/object?comp=blocklist",
        "PUT /devstoreaccount1/conformance/pgproof/ci/once/key HTTP/1.1\" 409",
        "POST /devstoreaccount1/conformance?restype=container&comp=batch",
    ] {
        assert!(
            log.contains(expected),
            "no request with {expected:?} in:\n{log}"
        );
    }
}

//! The conformance suite every [`Sink`] implementation must pass (feature `testkit`).
//! Each check states the part of the trait's contract it proves; [`run_all`] runs them
//! in turn on a sink whose root is empty. The checks panic on a violation, as tests do.

// A conformance suite reports a violation by panicking.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use bytes::Bytes;
use futures::StreamExt;
use futures::stream;
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind};
use crate::sink::{ByteStream, LockMode, ObjectMeta, RetentionLock, Sink, SinkExt};

const LIMIT: usize = 64 << 20;

fn chunks(parts: Vec<Bytes>) -> ByteStream {
    stream::iter(parts.into_iter().map(Ok)).boxed()
}

/// Size of the "large" objects: above the 5 MiB part size the object-store sinks are
/// tested with, so their multipart path runs.
pub const LARGE: usize = 12 << 20;

/// Runs every check, then checks the sink is empty again.
pub async fn run_all(sink: &dyn Sink) {
    put_get_delete_list(sink).await;
    empty_object_round_trips(sink).await;
    create_only_refuses_and_keeps_the_original(sink).await;
    create_only_holds_for_large_objects(sink).await;
    failed_body_leaves_nothing(sink).await;
    failed_large_body_leaves_nothing(sink).await;
    large_streamed_object_round_trips(sink).await;
    listing_honours_prefixes(sink).await;
    replaced_objects_list_with_another_identity(sink).await;
    unicode_keys(sink).await;
    missing_objects_are_not_found(sink).await;
    keys_cannot_escape(sink).await;
    locks_are_extended_or_there_are_none(sink).await;
    let left: Vec<String> = sink
        .list("")
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert!(
        left.is_empty(),
        "the checks deleted what they stored: {left:?}"
    );
}

/// A sink that locks nothing extends nothing and says so by succeeding; one that
/// locks objects extends the lock of an object it stored (the lock itself is read
/// back by the S3 tests, which can see it).
pub async fn locks_are_extended_or_there_are_none(sink: &dyn Sink) {
    let key = "pgproof-kit/locked";
    sink.put_bytes(key, Bytes::from_static(b"locked"))
        .await
        .unwrap();
    // A day past the sink's own lock: a lock the object does not have yet.
    let lock = sink.retention().map_or_else(
        || RetentionLock {
            mode: LockMode::Governance,
            retain_until: jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24),
        },
        |own| RetentionLock {
            retain_until: own.retain_until + jiff::SignedDuration::from_hours(24),
            ..own
        },
    );
    sink.extend_retention(key, &lock)
        .await
        .unwrap_or_else(|e| panic!("extending the lock of {key}: {e}"));
    assert_eq!(sink.get_bytes(key, LIMIT).await.unwrap(), b"locked");
    sink.delete(key).await.unwrap();
}

/// `n` bytes of a pattern that differs per `seed`, in 1 MiB chunks.
pub fn pattern(n: usize, seed: u32) -> Vec<Bytes> {
    (0..n)
        .step_by(1 << 20)
        .map(|start| {
            let end = (start + (1 << 20)).min(n);
            Bytes::from(
                (start..end)
                    .map(|j| (j as u32 ^ seed.wrapping_mul(2654435761) ^ (j >> 20) as u32) as u8)
                    .collect::<Vec<_>>(),
            )
        })
        .collect()
}

fn sha256_of(parts: &[Bytes]) -> Vec<u8> {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().to_vec()
}

async fn sha256_of_object(sink: &dyn Sink, key: &str) -> (u64, Vec<u8>) {
    let mut body = sink.get(key).await.expect("get");
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("chunk");
        n += chunk.len() as u64;
        h.update(&chunk);
    }
    (n, h.finalize().to_vec())
}

/// put then get returns the bytes; list shows the key and size; delete removes it.
pub async fn put_get_delete_list(sink: &dyn Sink) {
    let body = Bytes::from_static(b"hello, sink");
    let n = sink
        .put("basic/one", chunks(vec![body.slice(..5), body.slice(5..)]))
        .await
        .expect("put");
    assert_eq!(n, body.len() as u64);
    assert_eq!(sink.get_bytes("basic/one", LIMIT).await.expect("get"), body);
    let listed = sink.list("basic/").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, "basic/one");
    assert_eq!(listed[0].size, body.len() as u64);
    sink.delete("basic/one").await.expect("delete");
    assert!(sink.list("basic/").await.expect("list").is_empty());
}

/// An empty body stores an empty object.
pub async fn empty_object_round_trips(sink: &dyn Sink) {
    let n = sink
        .put("empty/object", chunks(Vec::new()))
        .await
        .expect("put empty");
    assert_eq!(n, 0);
    assert!(
        sink.get_bytes("empty/object", LIMIT)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(sink.list("empty/").await.unwrap()[0].size, 0);
    sink.delete("empty/object").await.expect("delete");
}

/// Create-only also holds for an object large enough to go up in parts, and the
/// refusal leaves the original as it was.
pub async fn create_only_holds_for_large_objects(sink: &dyn Sink) {
    let original = pattern(LARGE, 1);
    sink.put("once/large", chunks(original.clone()))
        .await
        .expect("first large put");
    let again = sink.put("once/large", chunks(pattern(LARGE, 2))).await;
    assert!(
        matches!(&again, Err(e) if e.kind() == ErrorKind::AlreadyExists),
        "{again:?}"
    );
    let small_again = sink
        .put_bytes("once/large", Bytes::from_static(b"small"))
        .await;
    assert!(
        matches!(&small_again, Err(e) if e.kind() == ErrorKind::AlreadyExists),
        "{small_again:?}"
    );
    assert_eq!(
        sha256_of_object(sink, "once/large").await,
        (LARGE as u64, sha256_of(&original))
    );
    sink.delete("once/large").await.expect("delete");
}

/// A second put to the same key fails with AlreadyExists and the first object stays.
pub async fn create_only_refuses_and_keeps_the_original(sink: &dyn Sink) {
    sink.put_bytes("once/key", Bytes::from_static(b"first"))
        .await
        .expect("first put");
    let again = sink
        .put_bytes("once/key", Bytes::from_static(b"second"))
        .await;
    assert!(
        matches!(&again, Err(e) if e.kind() == ErrorKind::AlreadyExists),
        "{again:?}"
    );
    assert_eq!(
        sink.get_bytes("once/key", LIMIT).await.expect("get"),
        &b"first"[..]
    );
    sink.delete("once/key").await.expect("delete");
}

/// A body that fails midway makes put fail and leaves nothing listed or readable.
pub async fn failed_body_leaves_nothing(sink: &dyn Sink) {
    let body: ByteStream = stream::iter(vec![
        Ok(Bytes::from(vec![7u8; 300_000])),
        Ok(Bytes::from(vec![8u8; 300_000])),
        Err(Error::tool("producer died")),
    ])
    .boxed();
    let result = sink.put("aborted/object", body).await;
    assert!(result.is_err(), "a failed body must fail the put");
    assert!(sink.list("aborted/").await.expect("list").is_empty());
    assert!(matches!(sink.get("aborted/object").await, Err(e) if e.kind() == ErrorKind::NotFound));
}

/// A body that fails after several parts' worth of data (a multipart upload under
/// way) makes put fail and leaves nothing listed or readable.
pub async fn failed_large_body_leaves_nothing(sink: &dyn Sink) {
    let mut items: Vec<crate::Result<Bytes>> = pattern(LARGE, 3).into_iter().map(Ok).collect();
    items.push(Err(Error::tool("producer died after 12 MiB")));
    let result = sink.put("aborted/large", stream::iter(items).boxed()).await;
    assert!(result.is_err(), "a failed body must fail the put");
    assert!(sink.list("aborted/").await.expect("list").is_empty());
    assert!(matches!(sink.get("aborted/large").await, Err(e) if e.kind() == ErrorKind::NotFound));
}

/// An object of many chunks streams in and out unchanged.
pub async fn large_streamed_object_round_trips(sink: &dyn Sink) {
    let part = 1 << 20;
    let parts: Vec<Bytes> = (0..24u32)
        .map(|i| {
            Bytes::from(
                (0..part)
                    .map(|j| (j as u32 ^ i.wrapping_mul(2654435761)) as u8)
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let mut expected = Sha256::new();
    for p in &parts {
        expected.update(p);
    }
    let n = sink
        .put("large/object", chunks(parts))
        .await
        .expect("put large");
    assert_eq!(n, 24 * part as u64);
    let mut body = sink.get("large/object").await.expect("get large");
    let mut got = Sha256::new();
    let mut total = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("chunk");
        total += chunk.len() as u64;
        got.update(&chunk);
    }
    assert_eq!(total, n);
    assert_eq!(got.finalize(), expected.finalize());
    sink.delete("large/object").await.expect("delete");
}

/// list returns exactly the keys under a prefix, recursively, sorted.
pub async fn listing_honours_prefixes(sink: &dyn Sink) {
    let keys = ["p/a/1", "p/a/2", "p/b/1", "p/ab/1", "q/1"];
    for k in keys {
        sink.put_bytes(k, Bytes::from(k.as_bytes().to_vec()))
            .await
            .expect("put");
    }
    let names = |v: Vec<ObjectMeta>| v.into_iter().map(|m| m.key).collect::<Vec<_>>();
    assert_eq!(names(sink.list("p/a/").await.unwrap()), ["p/a/1", "p/a/2"]);
    assert_eq!(
        names(sink.list("p/a").await.unwrap()),
        ["p/a/1", "p/a/2", "p/ab/1"]
    );
    assert_eq!(
        names(sink.list("p/").await.unwrap()),
        ["p/a/1", "p/a/2", "p/ab/1", "p/b/1"]
    );
    assert_eq!(names(sink.list("").await.unwrap()).len(), keys.len());
    assert!(sink.list("nothing/").await.unwrap().is_empty());
    for k in keys {
        sink.delete(k).await.expect("delete");
    }
}

/// An object deleted and stored again with other bytes of the same size lists with
/// another identity, where the sink gives identities at all (a cache keyed by key,
/// size and identity must never take the new bytes for the old).
pub async fn replaced_objects_list_with_another_identity(sink: &dyn Sink) {
    let identity = |listed: Vec<ObjectMeta>| {
        assert_eq!(listed.len(), 1, "{listed:?}");
        listed[0].identity.clone()
    };
    sink.put_bytes("identity/x", Bytes::from_static(b"first"))
        .await
        .expect("put");
    let first = identity(sink.list("identity/").await.expect("list"));
    assert_eq!(
        identity(sink.list("identity/").await.expect("list")),
        first,
        "an unchanged object listed with another identity"
    );
    // Past the tick of the coarse clock that stamps files (a few milliseconds), which
    // a file's identity relies on.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    sink.delete("identity/x").await.expect("delete");
    sink.put_bytes("identity/x", Bytes::from_static(b"other"))
        .await
        .expect("put again");
    let second = identity(sink.list("identity/").await.expect("list"));
    if first.is_some() {
        assert!(
            second.is_some() && second != first,
            "replaced bytes listed with the same identity {first:?}"
        );
    }
    sink.delete("identity/x").await.expect("delete");
}

/// Keys with non-ASCII characters and spaces work.
pub async fn unicode_keys(sink: &dyn Sink) {
    let key = "dä/ünï cödé 😀/x.json";
    sink.put_bytes(key, Bytes::from_static(b"{}"))
        .await
        .expect("put unicode");
    assert_eq!(sink.list("dä/").await.unwrap()[0].key, key);
    assert_eq!(sink.get_bytes(key, LIMIT).await.unwrap(), &b"{}"[..]);
    sink.delete(key).await.expect("delete unicode");
}

/// get and delete of a missing key say NotFound.
pub async fn missing_objects_are_not_found(sink: &dyn Sink) {
    assert!(matches!(sink.get("missing/key").await, Err(e) if e.kind() == ErrorKind::NotFound));
    assert!(matches!(sink.delete("missing/key").await, Err(e) if e.kind() == ErrorKind::NotFound));
}

/// Keys that would leave the root are refused.
pub async fn keys_cannot_escape(sink: &dyn Sink) {
    for bad in ["../escape", "/abs", "a//b"] {
        assert!(
            sink.put_bytes(bad, Bytes::from_static(b"x")).await.is_err(),
            "{bad} accepted"
        );
    }
}

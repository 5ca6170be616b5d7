//! The Sink conformance suite against every sink: fs on local disk, S3 on moto (a
//! real S3 server, in server mode) and GCS on the in-process XML-API server.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;

use pgproof_core::Sink;
use pgproof_core::sink::put_bytes;
use pgproof_sink_fs::FsSink;
use pgproof_tests::conformance;
use pgproof_tests::gcs_server::GcsServer;
use pgproof_tests::moto::Moto;

#[tokio::test]
async fn fs_sink_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let sink = FsSink::new(dir.path().join("root"));
    conformance::run_all(&sink).await;
}

#[tokio::test]
async fn fs_sink_files_are_private_and_no_temp_file_survives() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let sink = FsSink::new(&root);
    put_bytes(
        &sink,
        "db/id/manifest.json",
        bytes::Bytes::from_static(b"{}"),
    )
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

fn names(list: Vec<pgproof_core::sink::ObjectMeta>) -> Vec<String> {
    list.into_iter().map(|m| m.key).collect()
}

/// Objects beside the sink's prefix (one sharing its first characters) that must
/// never show up in, or be touched by, the sink under test.
async fn put_neighbours(root: &dyn pgproof_core::Sink) {
    for key in ["pgproof-neighbour/x", "elsewhere/y"] {
        put_bytes(root, key, bytes::Bytes::from_static(b"not yours"))
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
    conformance::run_all(&sink).await;
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
    conformance::run_all(&sink).await;
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

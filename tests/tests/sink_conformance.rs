//! The Sink conformance suite against every sink built so far.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;

use pgproof_core::sink::put_bytes;
use pgproof_sink_fs::FsSink;
use pgproof_tests::conformance;

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

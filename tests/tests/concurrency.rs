//! Overlapping backups of one database (a cron overlap, a manual run beside the timer)
//! must all commit and all verify: the commit lock keeps the manifest chain one line.

#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pgproof_core::catalog::{CommitLock, Keyring, SignedSink, SigningKey};
use pgproof_core::sink::SinkExt;
use pgproof_core::{ErrorKind, Sink};
use pgproof_sink_fs::FsSink;
use pgproof_tests::{Workspace, create_sample_database, start_cluster, stderr};
use serde_json::Value;

#[tokio::test]
async fn eight_backups_started_together_all_commit_and_all_verify() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_sample_database(&cluster, "app").await;
    let ws = Workspace::new(&cluster, "app", "custom");
    ws.verify_on(&cluster);

    // Eight runs of a small database rarely reach their commit in the same instant,
    // so left alone they might never meet the lock. The test holds it (signed with
    // the workspace's key, as a run would) until every run has stored its dump: from
    // then on all eight are waiting for it at once.
    let signed = SignedSink::new(
        Arc::new(FsSink::new(&ws.sink)),
        Keyring::new(Some(SigningKey::load(&ws.signing_key).unwrap()), Vec::new()),
    );
    let held = CommitLock::acquire(&signed, "app", "the test (holding the lock)")
        .await
        .unwrap();
    let children: Vec<_> = (0..8)
        .map(|_| {
            ws.command(&["-v", "backup", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let stored = |suffix: &str| {
        ws.sink_files()
            .iter()
            .filter(|f| f.ends_with(suffix))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(50);
    while stored("/dump.pgc.zst.age") < 8 {
        assert!(
            Instant::now() < deadline,
            "dumps stored: {:?}",
            ws.sink_files()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stored("manifest.json"),
        0,
        "a run committed past a held lock"
    );
    held.release(&signed).await;
    for child in children {
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert!(out.status.success(), "a backup failed: {err}");
        assert!(
            err.lines()
                .any(|l| l.contains("waiting for the commit lock")),
            "a run did not wait for the lock: {err}"
        );
    }

    let listed: Value = serde_json::from_str(&ws.pgproof_ok(&["list", "--json"])).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 8, "{listed:#?}");
    // One line: every manifest but one names a predecessor, and no two name the same.
    let mut predecessors: Vec<&str> = listed
        .iter()
        .filter_map(|m| m["previous"]["backup_id"].as_str())
        .collect();
    assert_eq!(predecessors.len(), 7);
    predecessors.sort_unstable();
    predecessors.dedup();
    assert_eq!(predecessors.len(), 7, "a fork in the chain: {listed:#?}");
    assert!(
        !ws.sink_files().iter().any(|f| f.ends_with("_commit.lock")),
        "a commit lock was left behind: {:?}",
        ws.sink_files()
    );

    let out = ws.pgproof(&["verify", "--all", "--json"]);
    let reports: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", stderr(&out)));
    let failed: Vec<&Value> = reports
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["checks"].as_array().unwrap())
        .filter(|c| c["passed"] == false)
        .collect();
    assert!(failed.is_empty(), "healthy backups failed: {failed:#?}");
    assert_eq!(out.status.code(), Some(0));
}

#[tokio::test]
async fn a_live_lock_makes_others_wait_and_a_dead_one_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let sink = FsSink::new(dir.path());

    let held = CommitLock::acquire(&sink, "app", "first run")
        .await
        .unwrap();
    let err = CommitLock::acquire_within(&sink, "app", "second run", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Exhausted, "{err}");
    assert!(err.to_string().contains("first run"), "{err}");
    held.release(&sink).await;
    CommitLock::acquire_within(&sink, "app", "second run", Duration::from_millis(300))
        .await
        .unwrap()
        .release(&sink)
        .await;

    // A run that died holding the lock: its record expired, so the next run takes over.
    sink.put_bytes(
        "app/_commit.lock",
        Bytes::from_static(br#"{"owner":"dead run","expires_at":"2020-01-01T00:00:00Z"}"#),
    )
    .await
    .unwrap();
    let taken = CommitLock::acquire_within(&sink, "app", "third run", Duration::from_millis(300))
        .await
        .unwrap();
    taken.release(&sink).await;
    assert!(sink.list("app/").await.unwrap().is_empty());
}

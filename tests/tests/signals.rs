//! SIGTERM, SIGINT and SIGHUP during backup, restore and verify: pgproof stops its
//! children, aborts its upload, drops the database it created, stops its ephemeral
//! cluster, exits 128 + the signal's number and says what it cleaned in one line.
//! One test, run step by step: the process checks must not see another test's
//! programs.

#![allow(clippy::unwrap_used)]

use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use pgproof_tests::moto::{ACCESS_KEY, Moto, SECRET_KEY, pending_parts};
use pgproof_tests::{Workspace, connect, database_exists, start_cluster, stderr};

const BUCKET: &str = "signals";

async fn create_big_database(cluster: &pgproof_core::scratch::EphemeralCluster, name: &str) {
    connect(cluster, "postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    connect(cluster, name)
        .await
        .batch_execute(
            "CREATE TABLE blob (id int PRIMARY KEY, data bytea);
             ALTER TABLE blob ALTER COLUMN data SET STORAGE EXTERNAL;
             INSERT INTO blob
               SELECT g, decode(string_agg(md5(g::text || ':' || i::text), '' ORDER BY i), 'hex')
               FROM generate_series(1, 2560) g, generate_series(1, 1024) i GROUP BY g;",
        )
        .await
        .unwrap();
}

fn signal(child: &Child, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_until(what: &str, child: &mut Child, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("pgproof ended ({status}) before {what}");
        }
        assert!(Instant::now() < deadline, "never saw {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn interrupted(child: Child, code: i32, name: &str) -> String {
    let started = Instant::now();
    let out: Output = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "cleanup took {:?}",
        started.elapsed()
    );
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("pgproof: interrupted by"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains(name), "{err}");
    lines[0].to_owned()
}

fn running(pattern: &str) -> usize {
    let out = std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test]
async fn signals_leave_nothing_behind() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let Some(moto) = Moto::start() else {
        return;
    };
    moto.create_bucket(BUCKET);
    create_big_database(&cluster, "big").await;
    let socket = cluster.socket_dir().display().to_string();

    // 1. SIGTERM while a backup streams into S3: pg_dump stopped, the multipart upload
    //    aborted, nothing listed.
    let section = format!(
        "url = \"s3://{BUCKET}/pg\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\npart_size_mib = 5\nparts_in_flight = 1\n",
        moto.endpoint()
    );
    let mut s3 = Workspace::with_sink(&cluster, "big", "plain", Some(&section));
    s3.env.push(("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()));
    s3.env
        .push(("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()));
    let mut child = s3
        .command(&["backup"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("a part uploaded", &mut child, || {
        pending_parts(moto.port(), BUCKET) > 0
    });
    signal(&child, "TERM");
    let line = interrupted(child, 143, "SIGTERM");
    assert!(line.contains("aborting uploads"), "{line}");
    assert!(
        moto.pending_uploads(BUCKET).is_empty(),
        "{:?}",
        moto.pending_uploads(BUCKET)
    );
    assert_eq!(
        running(&format!("pg_dump.*{socket}|--snapshot=")),
        0,
        "pg_dump outlived pgproof"
    );
    let listed = s3.pgproof_ok(&["list", "--json"]);
    assert_eq!(listed.trim(), "[]", "{listed}");

    // 2. SIGINT while a restore runs: the restore program stopped, the database pgproof
    //    created for it dropped.
    let fs = Workspace::new(&cluster, "big", "plain");
    fs.backup();
    let target = cluster.url("big_restored");
    let mut child = fs
        .command(&["restore", "latest", "--target", &target])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let admin = connect(&cluster, "postgres").await;
    let mut restoring = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !restoring {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the restore ended first"
        );
        assert!(Instant::now() < deadline, "never saw the restore run");
        restoring = admin
            .query_one(
                "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = 'big_restored' AND state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal(&child, "INT");
    let line = interrupted(child, 130, "SIGINT");
    assert!(line.contains("psql"), "{line}");
    assert!(line.contains("dropped database big_restored"), "{line}");
    assert!(!database_exists(&cluster, "big_restored").await);

    // 3. SIGHUP while verify works in its own ephemeral cluster: the cluster stopped
    //    and its directory removed.
    let tmp = tempfile::tempdir().unwrap();
    let mut child = fs
        .command(&["verify", "latest"])
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the scratch cluster running", &mut child, || {
        std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .any(|e| e.path().join("data/postmaster.pid").exists())
    });
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, "HUP");
    interrupted(child, 129, "SIGHUP");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "the scratch cluster left {left:?}");
    assert_eq!(
        running(&tmp.path().display().to_string()),
        0,
        "a scratch postgres still runs"
    );
}

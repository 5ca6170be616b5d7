//! SIGTERM, SIGINT and SIGHUP during backup, restore and verify: pgproof stops its
//! children, aborts its upload, drops the database it created, stops its ephemeral
//! cluster, exits 128 + the signal's number and says what it cleaned in one line.
//! One test, run step by step: the process checks must not see another test's
//! programs.

#![allow(clippy::unwrap_used)]

use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use pgproof_tests::moto::{ACCESS_KEY, Moto, SECRET_KEY, pending_parts};
use pgproof_tests::processes_matching as running;
use pgproof_tests::{
    Workspace, connect, create_big_database, database_exists, start_cluster, stderr,
};

const BUCKET: &str = "signals";

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

#[tokio::test]
async fn signals_leave_nothing_behind() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let Some(moto) = Moto::start() else {
        return;
    };
    moto.create_bucket(BUCKET);
    create_big_database(&cluster, "big", 40).await;
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
    let left = entries(tmp.path());
    assert!(left.is_empty(), "the scratch cluster left {left:?}");
    assert_eq!(
        running(&tmp.path().display().to_string()),
        0,
        "a scratch postgres still runs"
    );

    // 4. SIGKILL cannot be caught: what the killed run left (its scratch cluster, still
    //    running, and the database it was restoring into) is removed by the next run.
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
    signal(&child, "KILL");
    let _ = child.wait_with_output().unwrap();
    let abandoned = entries(tmp.path());
    assert_eq!(abandoned.len(), 1, "{abandoned:?}");
    assert!(
        running(&tmp.path().display().to_string()) > 0,
        "its postgres should still run"
    );

    let first = fs.backup()["backup_id"].as_str().unwrap().to_owned();
    let second = fs.backup()["backup_id"].as_str().unwrap().to_owned();
    let own_cluster = std::fs::read_to_string(&fs.config).unwrap();
    fs.verify_on(&cluster);
    let mut child = fs
        .command(&["verify", &first])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let scratch = pgproof_core::ops::scratch_database(&first);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !database_exists(&cluster, &scratch).await {
        assert!(child.try_wait().unwrap().is_none(), "verify ended first");
        assert!(Instant::now() < deadline, "never saw the scratch database");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Past its creation, so the work-in-progress mark is on it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    signal(&child, "KILL");
    let _ = child.wait_with_output().unwrap();
    assert!(
        database_exists(&cluster, &scratch).await,
        "nothing was left to clean"
    );

    // The next runs: verify of another backup on the scratch server drops the dead
    // run's database; one in an ephemeral cluster, in the same temp directory, stops
    // and removes the dead run's cluster.
    fs.pgproof_ok(&["verify", &second]);
    assert!(
        !database_exists(&cluster, &scratch).await,
        "the dead run's database is still there"
    );
    fs.write_config(&own_cluster);
    let out = fs
        .command(&["verify", &second])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let left = entries(tmp.path());
    assert!(
        left.is_empty(),
        "the dead run's cluster is still there: {left:?}"
    );
    assert_eq!(
        running(&tmp.path().display().to_string()),
        0,
        "the dead run's postgres still runs"
    );
}

fn entries(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect()
}

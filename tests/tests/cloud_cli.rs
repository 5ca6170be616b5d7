//! `pgproof` end to end with object-store sinks: backup, list, show and restore on
//! moto (S3), on the in-process GCS server and on Azurite (Azure); a backup of several
//! parts streamed in bounded memory without local files (S3 and Azure); the S3 server
//! killed mid-upload.
//!
//! `verify` is not covered here: it is being built separately.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use pgproof_core::Sink;
use pgproof_core::scratch::EphemeralCluster;
use pgproof_tests::azurite::{self, Azurite};
use pgproof_tests::gcs_server::GcsServer;
use pgproof_tests::moto::{ACCESS_KEY, Moto, SECRET_KEY, pending_parts};
use pgproof_tests::proxy::TcpProxy;
use pgproof_tests::{
    Workspace, connect, create_big_database, create_random_database, create_sample_database,
    start_cluster, stderr, table_summary,
};

const BUCKET: &str = "pgproof-backups";
const PREFIX: &str = "prod/pg";
const MIB: u64 = 1 << 20;
/// zstd's working memory (the default compression of custom dumps): fixed by its
/// level and worker count (level 3, one worker: a few window-sized buffers), never by
/// the dump's size.
const ZSTD_WORK: u64 = 32 * MIB;
/// How many times its memory bound a bounded-memory test's dump is: a run that
/// buffered the whole dump could not stay under the bound.
const BOUND_MULTIPLE: u64 = 3;

fn s3_section(endpoint: &str, part_size_mib: u64, in_flight: usize) -> String {
    format!(
        "url = \"s3://{BUCKET}/{PREFIX}\"\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\nallow_http = true\npart_size_mib = {part_size_mib}\nparts_in_flight = {in_flight}\nmax_retries = 2\nretry_timeout_secs = 3\n"
    )
}

fn s3_workspace(
    cluster: &EphemeralCluster,
    database: &str,
    endpoint: &str,
    part_size_mib: u64,
    in_flight: usize,
) -> Workspace {
    let mut ws = Workspace::with_sink(
        cluster,
        database,
        "custom",
        Some(&s3_section(endpoint, part_size_mib, in_flight)),
    );
    ws.env.push(("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()));
    ws.env
        .push(("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()));
    ws
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn backup_ids(ws: &Workspace) -> Vec<String> {
    let listed = json(&ws.pgproof_ok(&["list", "--json"]));
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["backup_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn blob_digest(cluster: &EphemeralCluster, database: &str) -> (i64, String) {
    let row = connect(cluster, database)
        .await
        .query_one(
            "SELECT count(*), md5(string_agg(md5(data), '' ORDER BY id)) FROM blob",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

fn assert_failed_with(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "exit status; stderr: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("pgproof: error:"))
        .unwrap_or_else(|| panic!("no error line in: {err}"));
    eprintln!("backup said: {line}");
    for needle in needles {
        assert!(line.contains(needle), "{needle:?} missing from: {line}");
    }
}

#[tokio::test]
async fn s3_backup_list_show_verify_restore_on_moto() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket(BUCKET);
    let source = create_sample_database(&cluster, "app").await;
    let before = table_summary(&source).await;
    let ws = s3_workspace(&cluster, "app", &moto.endpoint(), 5, 2);

    let out = ws.pgproof(&["-v", "backup", "--json"]);
    assert!(out.status.success(), "backup failed: {}", stderr(&out));
    let mut backed_up: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let manifest = backed_up.remove(0);
    let id = manifest["backup_id"].as_str().unwrap();
    let everything = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(
        !everything.contains(SECRET_KEY),
        "secret in output: {everything}"
    );
    assert!(
        stderr(&out).contains(&format!("s3://{BUCKET}/{PREFIX}")),
        "the log names the sink: {}",
        stderr(&out)
    );

    assert_eq!(backup_ids(&ws), [id]);
    let shown = json(&ws.pgproof_ok(&["show", id, "--json"]));
    assert_eq!(shown, manifest);
    let text = ws.pgproof_ok(&["show", "latest"]);
    assert!(
        text.contains(&format!("app/{id}/dump.pgc.zst.age")),
        "{text}"
    );

    // What is in the bucket: the dump and its manifest under the prefix, and the
    // catalog index `list` wrote; nothing else.
    let sink = moto.sink(BUCKET, "", 5, 2);
    let objects = sink.list("").await.unwrap();
    let keys: Vec<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            format!("{PREFIX}/app/{id}/dump.pgc.zst.age"),
            format!("{PREFIX}/app/{id}/manifest.json"),
            format!("{PREFIX}/app/_index.json")
        ]
    );
    assert_eq!(
        objects[0].size,
        manifest["object"]["stored_bytes"].as_u64().unwrap()
    );

    let target = cluster.url("app_restored");
    let outcome = json(&ws.pgproof_ok(&["restore", "latest", "--target", &target, "--json"]));
    assert_eq!(outcome["backup_id"], id);
    let after = table_summary(&connect(&cluster, "app_restored").await).await;
    assert_eq!(before, after, "restored tables differ from the source");

    // verify proves it from the bucket and writes its record there.
    let out = ws.pgproof(&["verify", id, "--json"]);
    assert!(out.status.success(), "verify failed: {}", stderr(&out));
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reports[0]["passed"], true, "{reports:#}");
    let records = sink
        .list(&format!("{PREFIX}/app/{id}/verify/"))
        .await
        .unwrap();
    assert_eq!(records.len(), 1, "{records:?}");

    // A second backup links to the first through the S3 sink, too.
    let second = ws.backup();
    assert_eq!(second["previous"]["backup_id"], id);
    assert_eq!(backup_ids(&ws).len(), 2);
}

/// Peak resident memory (VmHWM) of `pid` in bytes, and what its writable descriptors
/// point at (reading CA certificates or config is not a temporary file).
fn sample(pid: u32, targets: &mut BTreeSet<String>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            let info = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
            let writable = std::fs::read_to_string(info)
                .ok()
                .and_then(|text| {
                    let flags = text.lines().find_map(|l| l.strip_prefix("flags:"))?;
                    u32::from_str_radix(flags.trim(), 8).ok()
                })
                .is_some_and(|flags| flags & 0o3 != 0);
            if writable && let Ok(target) = std::fs::read_link(fd.path()) {
                targets.insert(target.display().to_string());
            }
        }
    }
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[tokio::test]
async fn s3_backup_of_many_parts_streams_in_bounded_memory_without_local_files() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket(BUCKET);
    let (part_mib, in_flight) = (5u64, 2usize);
    let bound = 64 * MIB + ZSTD_WORK + in_flight as u64 * part_mib * MIB;
    // Several times the bound, so a run that held the dump (raw or stored) in memory
    // would break it.
    create_random_database(&cluster, "big", BOUND_MULTIPLE * bound / MIB + 8).await;
    let ws = s3_workspace(&cluster, "big", &moto.endpoint(), part_mib, in_flight);
    let scratch = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();

    let started = Instant::now();
    let child = ws
        .command(&["backup", "--json"])
        .env("TMPDIR", scratch.path())
        .current_dir(cwd.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        let mut targets = BTreeSet::new();
        while let Some(hwm) = sample(pid, &mut targets) {
            peak = peak.max(hwm);
            std::thread::sleep(Duration::from_millis(10));
        }
        (peak, targets)
    });
    let out = child.wait_with_output().unwrap();
    let elapsed = started.elapsed();
    let (peak, targets) = sampler.join().unwrap();
    assert!(out.status.success(), "backup failed: {}", stderr(&out));
    let manifest = json(&String::from_utf8_lossy(&out.stdout))[0].clone();
    let stored = manifest["object"]["stored_bytes"].as_u64().unwrap();
    let parts = stored.div_ceil(part_mib * MIB);
    eprintln!(
        "S3 backup: {stored} bytes stored in {parts} parts of {part_mib} MiB, {in_flight} in flight, {:.1}s; peak RSS {:.1} MiB, bound {} MiB",
        elapsed.as_secs_f64(),
        peak as f64 / MIB as f64,
        bound / MIB
    );
    assert!(
        stored >= BOUND_MULTIPLE * bound,
        "the dump ({stored} bytes stored) must be {BOUND_MULTIPLE} times the bound ({bound})"
    );
    assert!(peak > 0, "no memory sample was taken");
    assert!(
        peak < bound,
        "peak RSS {peak} bytes exceeds 64 MiB + zstd's 32 MiB + {in_flight} x {part_mib} MiB = {bound}"
    );
    // It went up as a multipart upload, in parts of the configured size.
    let log = moto.log_text();
    assert!(
        log.contains("dump.pgc.zst.age?uploads"),
        "no multipart upload: {log}"
    );
    assert!(
        log.contains(&format!("partNumber={parts}&"))
            || log.contains(&format!("partNumber={parts} "))
    );
    // No local temporary file: nothing in TMPDIR or the working directory, and no
    // descriptor on a regular file while it ran.
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0);
    let files: Vec<&String> = targets
        .iter()
        .filter(|t| t.starts_with('/') && !t.starts_with("/dev/") && !t.starts_with("/proc/"))
        .collect();
    assert!(
        files.is_empty(),
        "files opened during the backup: {files:?}"
    );

    // The multipart object restores to the same data.
    let target = cluster.url("big_restored");
    ws.pgproof_ok(&["restore", "latest", "--target", &target]);
    assert_eq!(
        blob_digest(&cluster, "big_restored").await,
        blob_digest(&cluster, "big").await
    );
}

/// A directory dump on S3: one object per file, each read while pg_dump writes it,
/// the blocks already read given back at once, so local disk holds a small window of
/// the archive, never the whole; memory stays bounded; it verifies and restores.
#[tokio::test]
async fn s3_directory_dump_keeps_only_a_window_of_the_archive_on_local_disk() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket(BUCKET);
    let (part_mib, in_flight) = (5u64, 2usize);
    let bound = 64 * MIB + 2 * in_flight as u64 * part_mib * MIB;
    create_random_database(&cluster, "bigdir", BOUND_MULTIPLE * bound / MIB + 8).await;
    let mut ws = Workspace::with_sink(
        &cluster,
        "bigdir",
        "directory",
        Some(&s3_section(&moto.endpoint(), part_mib, in_flight)),
    );
    ws.env.push(("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()));
    ws.env
        .push(("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()));
    ws.verify_on(&cluster);
    let scratch = tempfile::tempdir().unwrap();
    let child = ws
        .command(&["backup", "--json"])
        .env("TMPDIR", scratch.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let watched = scratch.path().to_owned();
    let sampler = std::thread::spawn(move || {
        let (mut peak_rss, mut peak_disk) = (0, 0);
        let mut targets = BTreeSet::new();
        while let Some(hwm) = sample(pid, &mut targets) {
            peak_rss = peak_rss.max(hwm);
            peak_disk = peak_disk.max(allocated_bytes(&watched));
            std::thread::sleep(Duration::from_millis(5));
        }
        (peak_rss, peak_disk)
    });
    let out = child.wait_with_output().unwrap();
    let (peak_rss, peak_disk) = sampler.join().unwrap();
    assert!(out.status.success(), "backup failed: {}", stderr(&out));
    let manifest = json(&String::from_utf8_lossy(&out.stdout))[0].clone();
    let parts = manifest["parts"].as_array().unwrap();
    let raw: u64 = std::iter::once(&manifest["object"])
        .chain(parts)
        .map(|o| o["raw_bytes"].as_u64().unwrap())
        .sum();
    let largest = parts
        .iter()
        .map(|o| o["raw_bytes"].as_u64().unwrap())
        .max()
        .unwrap();
    eprintln!(
        "S3 directory backup: {} objects, {raw} dump bytes (largest file {largest}); peak RSS {:.1} MiB, peak local disk {:.1} MiB",
        parts.len() + 1,
        peak_rss as f64 / MIB as f64,
        peak_disk as f64 / MIB as f64
    );
    // pg_dump is paused while it is 32 MiB ahead of the upload, and blocks are given
    // back every 4 MiB read: the disk holds a window, not the file. The window also
    // holds what pg_dump writes between the check and its SIGSTOP landing, which on
    // a loaded 2-core run (the other tests of this file at work) reached 50 MiB
    // once: bounded at 64 MiB, still a tenth of the file.
    let window = 64 * MIB;
    assert!(
        largest > window + 16 * MIB,
        "the test needs a large table file: {largest}"
    );
    assert!(
        peak_disk < window,
        "local disk held {peak_disk} bytes of a {largest}-byte file"
    );
    let stored_largest = parts
        .iter()
        .map(|o| o["stored_bytes"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        stored_largest >= BOUND_MULTIPLE * bound,
        "the table's file ({stored_largest} bytes stored) must be {BOUND_MULTIPLE} times the bound ({bound})"
    );
    assert!(peak_rss < bound, "peak RSS {peak_rss} exceeds {bound}");
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);

    let out = ws.pgproof(&["verify", "latest"]);
    assert!(out.status.success(), "{}", stderr(&out));
    ws.pgproof_ok(&["check", "--read-data"]);
    ws.pgproof_ok(&["restore", "latest", "--target", &cluster.url("bigdir_back")]);
    assert_eq!(
        blob_digest(&cluster, "bigdir_back").await,
        blob_digest(&cluster, "bigdir").await
    );
}

/// Bytes the file system has allocated to the files under `dir` (holes not counted).
fn allocated_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => pending.push(entry.path()),
                Ok(m) => total += m.blocks() * 512,
                Err(_) => {}
            }
        }
    }
    total
}

/// Starts a backup of the big database, waits until moto holds at least one part of
/// it (so the multipart upload is certainly under way), then runs `kill`; returns the
/// backup's output.
fn backup_killed_mid_upload(ws: &Workspace, moto_port: u16, kill: impl FnOnce()) -> Output {
    // Parts an earlier killed run left behind do not count.
    let before = pending_parts(moto_port, BUCKET);
    let mut child = ws
        .command(&["backup"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while pending_parts(moto_port, BUCKET) <= before {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("backup ended ({status}) before any part was uploaded");
        }
        assert!(Instant::now() < deadline, "no part was uploaded");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the backup finished before the server could be killed; use a bigger database"
    );
    kill();
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "backup took {:?} to give up",
        started.elapsed()
    );
    out
}

#[tokio::test]
async fn s3_server_killed_mid_upload_fails_the_backup_and_commits_nothing() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let Some(mut moto) = Moto::start() else {
        return;
    };
    moto.create_bucket(BUCKET);
    create_sample_database(&cluster, "app").await;
    create_big_database(&cluster, "big", 40).await;

    // 1. The endpoint dies while the server's data survives (a proxy in front of moto
    //    is killed): the state after it returns is what a real outage leaves.
    let mut proxy = TcpProxy::start(moto.port());
    let ws = s3_workspace(&cluster, "big", &proxy.endpoint(), 5, 1);
    let app = cluster.url("app");
    ws.pgproof_ok(&["backup", "--source", &app]);
    let committed = backup_ids(&ws);
    assert_eq!(committed.len(), 1);

    let out = backup_killed_mid_upload(&ws, moto.port(), || proxy.kill());
    assert_failed_with(
        &out,
        &[
            "S3 part upload of s3://pgproof-backups/prod/pg/big/",
            "dump.pgc.zst.age failed",
            "check that the endpoint at http://127.0.0.1:",
            "is up and reachable",
        ],
    );
    assert!(!stderr(&out).contains(SECRET_KEY));
    proxy.restart();
    assert_eq!(backup_ids(&ws), committed, "list shows nothing new");
    // The abort could not reach the dead endpoint either: the parts stay, never
    // listed as an object, until a lifecycle rule removes them.
    let pending = moto.pending_uploads(BUCKET);
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert!(
        pending[0].starts_with(&format!("{PREFIX}/big/"))
            && pending[0].ends_with("/dump.pgc.zst.age"),
        "{pending:?}"
    );

    // 2. moto itself killed with SIGKILL. moto keeps its objects in memory only, so
    //    a listing after it restarts is empty whatever the killed run did: the
    //    evidence is moto's request log instead, written as each request is answered
    //    and kept past the kill. It must show the run's parts stored and nothing that
    //    would have committed it (completing the upload, or storing its manifest).
    let port = moto.port();
    let ws = s3_workspace(&cluster, "big", &moto.endpoint(), 5, 1);
    let logged_before = moto.log_text().len();
    let out = backup_killed_mid_upload(&ws, port, || moto.kill());
    assert_failed_with(
        &out,
        &[
            "S3 part upload of s3://pgproof-backups/prod/pg/big/",
            "failed",
        ],
    );
    let answered = moto.log_text()[logged_before..].to_owned();
    let big = format!("/{BUCKET}/{PREFIX}/big/");
    let requests: Vec<&str> = answered.lines().filter(|l| l.contains(&big)).collect();
    // The run's upload shows in the log (it began it before any part: moto writes a
    // line after each answer, so the line of the part seen stored above may be lost
    // with the kill); the log is not silent about this run.
    assert!(
        requests
            .iter()
            .any(|l| l.contains("dump.pgc.zst.age?uploads")
                || l.contains("dump.pgc.zst.age?partNumber=")),
        "moto's log shows nothing of the killed run, so it would show no commit either: {answered}"
    );
    let commits: Vec<&&str> = requests
        .iter()
        .filter(|l| {
            l.contains("manifest.json") || (l.contains("POST ") && l.contains("?uploadId="))
        })
        .collect();
    assert!(commits.is_empty(), "the killed run committed: {commits:?}");
    // And pgproof copes with the server coming back empty.
    let moto = Moto::start_on(port);
    moto.create_bucket(BUCKET);
    assert_eq!(ws.pgproof_ok(&["list", "--json"]).trim(), "[]");
}

#[tokio::test]
async fn gcs_backup_list_restore_on_the_in_process_server() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let server = GcsServer::start();
    server.create_bucket(BUCKET);
    let source = create_sample_database(&cluster, "app").await;
    let before = table_summary(&source).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = server.service_account_file(dir.path());
    let section = format!(
        "url = \"gs://{BUCKET}/{PREFIX}\"\nendpoint = \"{}\"\nallow_http = true\nservice_account_file = \"{}\"\npart_size_mib = 5\n",
        server.base_url(),
        key_file.display()
    );
    let ws = Workspace::with_sink(&cluster, "app", "plain", Some(&section));
    let manifest = ws.backup();
    let id = manifest["backup_id"].as_str().unwrap();
    assert_eq!(backup_ids(&ws), [id]);
    // The backup's objects, and the catalog index `list` wrote.
    assert_eq!(
        server.object_names(BUCKET),
        [
            format!("{PREFIX}/app/{id}/dump.sql.gz.age"),
            format!("{PREFIX}/app/{id}/manifest.json"),
            format!("{PREFIX}/app/_index.json")
        ]
    );
    // The manifest was committed create-only.
    let log = server.requests().join("\n");
    assert!(
        log.contains("manifest%2Ejson [x-goog-if-generation-match: 0]"),
        "{log}"
    );
    let target = cluster.url("app_restored");
    ws.pgproof_ok(&["restore", "latest", "--target", &target]);
    let after = table_summary(&connect(&cluster, "app_restored").await).await;
    assert_eq!(before, after, "restored tables differ from the source");
}

/// An S3 endpoint that goes away in the middle of an upload and comes back within the
/// retry budget costs nothing: the backup commits whole and verifies. One that stays
/// away longer than the budget fails the backup with a line saying how long it tried,
/// and nothing is listed.
#[tokio::test]
async fn s3_outages_inside_the_retry_budget_leave_a_whole_backup() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let Some(moto) = Moto::start() else {
        return;
    };
    moto.create_bucket(BUCKET);
    create_big_database(&cluster, "big", 40).await;
    let mut proxy = TcpProxy::start(moto.port());
    let section = format!(
        "url = \"s3://{BUCKET}/{PREFIX}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\npart_size_mib = 5\nparts_in_flight = 1\nmax_retries = 20\nretry_timeout_secs = 60\nrequest_timeout_secs = 5\n",
        proxy.endpoint()
    );
    let mut ws = Workspace::with_sink(&cluster, "big", "custom", Some(&section));
    ws.env.push(("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()));
    ws.env
        .push(("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()));
    ws.verify_on(&cluster);

    // Two outages where the endpoint is gone (connections cut, new ones refused), and
    // one where it stalls: connections stay open and nothing moves (request timeout).
    for (outage, stall) in [
        (Duration::from_secs(6), false),
        (Duration::from_secs(20), false),
        (Duration::from_secs(8), true),
    ] {
        let before = pending_parts(moto.port(), BUCKET);
        let mut child = ws
            .command(&["backup", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while pending_parts(moto.port(), BUCKET) <= before {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the backup ended before the outage"
            );
            assert!(Instant::now() < deadline, "no part was uploaded");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Parts stored when the endpoint goes away and when it comes back, read from
        // moto itself (behind the proxy): the upload is under way at the start, and
        // still unfinished at the end.
        let at_start = pending_parts(moto.port(), BUCKET) - before;
        if stall {
            proxy.stall();
            std::thread::sleep(outage);
        } else {
            proxy.kill();
            std::thread::sleep(outage);
        }
        let at_end = pending_parts(moto.port(), BUCKET) - before;
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended during the {outage:?} outage"
        );
        if stall {
            proxy.unstall();
        } else {
            proxy.restart();
        }
        let out = child.wait_with_output().unwrap();
        let log = stderr(&out);
        assert!(
            out.status.success(),
            "a {outage:?} outage failed the backup: {log}"
        );
        let manifest = json(&String::from_utf8_lossy(&out.stdout))[0].clone();
        let parts = manifest["object"]["stored_bytes"]
            .as_u64()
            .unwrap()
            .div_ceil(5 * MIB) as usize;
        eprintln!(
            "{outage:?} outage (stall: {stall}): {at_start} of {parts} parts stored when it began, {at_end} when it ended"
        );
        assert!(
            at_start >= 1 && at_end < parts,
            "the outage must fall inside the upload: {at_start} and {at_end} of {parts} parts"
        );
        // object_store logs each retry it makes ("backing off for N seconds, retry i
        // of n") at info, which pgproof shows by default.
        let retries: Vec<&str> = log.lines().filter(|l| l.contains("backing off")).collect();
        assert!(
            !retries.is_empty(),
            "no retry was logged across a {outage:?} outage: {log}"
        );
        eprintln!("  {} retries logged, first: {}", retries.len(), retries[0]);
    }
    let ids = backup_ids(&ws);
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(
        moto.pending_uploads(BUCKET).is_empty(),
        "{:?}",
        moto.pending_uploads(BUCKET)
    );
    let out = ws.pgproof(&["verify", "--all"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

const CONTAINER: &str = "pgproof-backups";

/// A workspace backing up `database` into Azurite the way a production config names
/// an account: `sink.account`, the account's blob endpoint in `sink.endpoint`, the
/// key in `AZURE_STORAGE_ACCOUNT_KEY`.
fn azure_workspace(cluster: &EphemeralCluster, database: &str, azurite: &Azurite) -> Workspace {
    let section = format!(
        "url = \"az://{CONTAINER}/{PREFIX}\"\naccount = \"{account}\"\nendpoint = \"{endpoint}/{account}\"\nallow_http = true\npart_size_mib = 5\nparts_in_flight = 2\nmax_retries = 2\nretry_timeout_secs = 3\n",
        account = azurite::ACCOUNT,
        endpoint = azurite.endpoint(),
    );
    let mut ws = Workspace::with_sink(cluster, database, "custom", Some(&section));
    ws.env.push((
        "AZURE_STORAGE_ACCOUNT_KEY".into(),
        azurite::ACCOUNT_KEY.into(),
    ));
    ws
}

#[tokio::test]
async fn azure_backup_list_show_verify_restore_on_azurite() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let Some(azurite) = Azurite::start() else {
        return;
    };
    azurite.create_container(CONTAINER);
    let source = create_sample_database(&cluster, "app").await;
    let before = table_summary(&source).await;
    let ws = azure_workspace(&cluster, "app", &azurite);

    // config check opens the sink without a request and shows no credential.
    let checked = ws.pgproof_ok(&["config", "check"]);
    assert!(
        checked.contains("url = \"az://pgproof-backups/prod/pg\""),
        "{checked}"
    );
    assert!(
        checked.contains("account = \"devstoreaccount1\""),
        "{checked}"
    );
    assert!(!checked.contains(azurite::ACCOUNT_KEY), "{checked}");

    let out = ws.pgproof(&["-v", "backup", "--json"]);
    assert!(out.status.success(), "backup failed: {}", stderr(&out));
    let mut backed_up: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let manifest = backed_up.remove(0);
    let id = manifest["backup_id"].as_str().unwrap();
    let everything = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(
        !everything.contains(azurite::ACCOUNT_KEY),
        "key in output: {everything}"
    );
    assert!(
        stderr(&out).contains(&format!("az://{CONTAINER}/{PREFIX}")),
        "the log names the sink: {}",
        stderr(&out)
    );

    assert_eq!(backup_ids(&ws), [id]);
    let shown = json(&ws.pgproof_ok(&["show", id, "--json"]));
    assert_eq!(shown, manifest);
    let text = ws.pgproof_ok(&["show", "latest"]);
    assert!(
        text.contains(&format!("app/{id}/dump.pgc.zst.age")),
        "{text}"
    );

    // What is in the container: the dump and its manifest under the prefix, and the
    // catalog index `list` wrote.
    let sink = azurite.sink(CONTAINER, "", 5, 2);
    let objects = sink.list("").await.unwrap();
    let keys: Vec<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            format!("{PREFIX}/app/{id}/dump.pgc.zst.age"),
            format!("{PREFIX}/app/{id}/manifest.json"),
            format!("{PREFIX}/app/_index.json")
        ]
    );
    assert_eq!(
        objects[0].size,
        manifest["object"]["stored_bytes"].as_u64().unwrap()
    );
    // The manifest was committed create-only (a Put Blob, which carried If-None-Match).
    let log = azurite.log_text();
    assert!(
        log.contains(&format!(
            "PUT /devstoreaccount1/{CONTAINER}/{PREFIX}/app/{id}/manifest.json "
        )),
        "{log}"
    );

    let target = cluster.url("app_restored");
    let outcome = json(&ws.pgproof_ok(&["restore", "latest", "--target", &target, "--json"]));
    assert_eq!(outcome["backup_id"], id);
    let after = table_summary(&connect(&cluster, "app_restored").await).await;
    assert_eq!(before, after, "restored tables differ from the source");

    let out = ws.pgproof(&["verify", id, "--json"]);
    assert!(out.status.success(), "verify failed: {}", stderr(&out));
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reports[0]["passed"], true, "{reports:#}");
    let records = sink
        .list(&format!("{PREFIX}/app/{id}/verify/"))
        .await
        .unwrap();
    assert_eq!(records.len(), 1, "{records:?}");

    let second = ws.backup();
    assert_eq!(second["previous"]["backup_id"], id);
    assert_eq!(backup_ids(&ws).len(), 2);

    // A wrong key is refused at once, as an auth failure naming what to check, and
    // neither key is echoed.
    let mut bad = azure_workspace(&cluster, "app", &azurite);
    let wrong = "d3JvbmctYnV0LXZhbGlkLWJhc2U2NC1rZXktZm9yLXBncHJvb2Y=";
    bad.env.retain(|(k, _)| k != "AZURE_STORAGE_ACCOUNT_KEY");
    bad.env
        .push(("AZURE_STORAGE_ACCOUNT_KEY".into(), wrong.into()));
    let out = bad.pgproof(&["list"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Azure refused the list of az://pgproof-backups/prod/pg/")
            && err.contains("in container \"pgproof-backups\""),
        "{err}"
    );
    assert!(err.contains("AZURE_STORAGE_ACCOUNT_KEY"), "{err}");
    assert!(
        !err.contains(wrong) && !err.contains(azurite::ACCOUNT_KEY),
        "{err}"
    );

    // A missing container is a configuration error naming it.
    let out = ws.pgproof(&["--sink", "az://no-such-container/x", "list"]);
    let err = stderr(&out);
    assert!(
        err.contains("Azure container \"no-such-container\"") && err.contains("does not exist"),
        "{err}"
    );
}

#[tokio::test]
async fn azure_backup_of_many_blocks_streams_in_bounded_memory_on_the_emulator() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let Some(azurite) = Azurite::start() else {
        return;
    };
    azurite.create_container(CONTAINER);
    let (part_mib, in_flight) = (5u64, 2usize);
    let bound = 64 * MIB + ZSTD_WORK + in_flight as u64 * part_mib * MIB;
    create_random_database(&cluster, "big", BOUND_MULTIPLE * bound / MIB + 8).await;
    // Emulator mode: Azurite's address only; account and key are Azurite's defaults.
    let section = format!(
        "url = \"azure://{CONTAINER}/{PREFIX}\"\nuse_emulator = true\nendpoint = \"{}\"\npart_size_mib = {part_mib}\nparts_in_flight = {in_flight}\nmax_retries = 2\nretry_timeout_secs = 3\n",
        azurite.endpoint()
    );
    let ws = Workspace::with_sink(&cluster, "big", "custom", Some(&section));

    let started = Instant::now();
    let child = ws
        .command(&["backup", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        let mut targets = BTreeSet::new();
        while let Some(hwm) = sample(pid, &mut targets) {
            peak = peak.max(hwm);
            std::thread::sleep(Duration::from_millis(10));
        }
        peak
    });
    let out = child.wait_with_output().unwrap();
    let elapsed = started.elapsed();
    let peak = sampler.join().unwrap();
    assert!(out.status.success(), "backup failed: {}", stderr(&out));
    let manifest = json(&String::from_utf8_lossy(&out.stdout))[0].clone();
    let id = manifest["backup_id"].as_str().unwrap().to_owned();
    let stored = manifest["object"]["stored_bytes"].as_u64().unwrap();
    let parts = stored.div_ceil(part_mib * MIB);
    eprintln!(
        "Azure backup: {stored} bytes stored in {parts} blocks of {part_mib} MiB, {in_flight} in flight, {:.1}s; peak RSS {:.1} MiB, bound {} MiB",
        elapsed.as_secs_f64(),
        peak as f64 / MIB as f64,
        bound / MIB
    );
    assert!(
        stored >= BOUND_MULTIPLE * bound,
        "the dump ({stored} bytes stored) must be {BOUND_MULTIPLE} times the bound ({bound})"
    );
    assert!(
        peak > 0 && peak < bound,
        "peak RSS {peak} bytes, bound {bound}"
    );
    // One Put Block per part, then one Put Block List.
    let log = azurite.log_text();
    let dump = format!("PUT /devstoreaccount1/{CONTAINER}/{PREFIX}/big/{id}/dump.pgc.zst.age?");
    let blocks = log
        .lines()
        .filter(|l| l.contains(&dump) && l.contains("comp=block&"))
        .count();
    assert_eq!(blocks as u64, parts, "{log}");
    assert_eq!(
        log.lines()
            .filter(|l| l.contains(&dump) && l.contains("comp=blocklist"))
            .count(),
        1,
        "{log}"
    );

    let target = cluster.url("big_restored");
    ws.pgproof_ok(&["restore", "latest", "--target", &target]);
    assert_eq!(
        blob_digest(&cluster, "big_restored").await,
        blob_digest(&cluster, "big").await
    );
}

/// Deduplicated backups on a real S3 server: the second night stores only what
/// changed, both verify and restore exactly, `check --read-data` reads every chunk,
/// and prune deletes the chunks only a pruned backup used.
#[tokio::test]
async fn s3_deduplicated_backups_on_moto() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket(BUCKET);
    let source = create_sample_database(&cluster, "chunky").await;
    source
        .batch_execute(
            "CREATE TABLE notes (id int PRIMARY KEY, body text);
             INSERT INTO notes SELECT g, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 20000) g;",
        )
        .await
        .unwrap();
    let mut ws = Workspace::with_sink(
        &cluster,
        "chunky",
        "dedup",
        Some(&s3_section(&moto.endpoint(), 5, 2)),
    );
    ws.use_moto_credentials();
    ws.verify_on(&cluster);
    let first = json(&ws.pgproof_ok(&["backup", "--json"]))[0].clone();
    source
        .batch_execute("UPDATE notes SET body = upper(body) WHERE id > 19900")
        .await
        .unwrap();
    let second = json(&ws.pgproof_ok(&["backup", "--json"]))[0].clone();
    let new = |m: &serde_json::Value| m["chunks"]["new_bytes"].as_u64().unwrap();
    assert!(
        new(&second) * 5 < new(&first),
        "the second night stored {} new bytes, the first {}",
        new(&second),
        new(&first)
    );
    for m in [&first, &second] {
        let id = m["backup_id"].as_str().unwrap();
        let out = ws.pgproof(&["verify", id]);
        assert!(out.status.success(), "{id}: {}", stderr(&out));
    }
    let checked = json(&ws.pgproof_ok(&["check", "--read-data", "--json"]));
    assert_eq!(checked["backups"], 2, "{checked:#}");
    ws.pgproof_ok(&["restore", "latest", "--target", &cluster.url("chunky_back")]);
    assert_eq!(
        table_summary(&connect(&cluster, "chunky_back").await).await,
        table_summary(&source).await
    );
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&format!("{config}\n[retention]\nkeep_last = 1\n"));
    let pruned = json(&ws.pgproof_ok(&["prune", "--json"]));
    let swept = pruned["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["action"] == "delete-chunks")
        .unwrap_or_else(|| panic!("{pruned:#}"))["detail"]
        .as_u64()
        .unwrap();
    assert!(swept > 0, "{pruned:#}");
    ws.pgproof_ok(&["check", "--read-data"]);
    let out = ws.pgproof(&["verify", "latest"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

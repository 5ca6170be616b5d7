//! Running unattended: many databases per run, with one failing among them.

#![allow(clippy::unwrap_used)]

use pgproof_tests::{Workspace, connect, create_database, start_cluster, stderr};
use serde_json::Value;

/// `databases = "all"` backs up every connectable database but the excluded ones; a
/// database that fails (here: a table locked past the lock wait) does not stop the
/// others, and the exit code, the summary line and `--json` say which failed.
#[tokio::test]
async fn all_databases_with_one_failing() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let admin = connect(&cluster, "postgres").await;
    for db in ["alpha", "beta", "busy", "skip_me"] {
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
        connect(&cluster, db)
            .await
            .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1), (2)")
            .await
            .unwrap();
    }
    let blocker = connect(&cluster, "busy").await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let ws = Workspace::new(&cluster, "postgres", "custom");
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(
        &config
            .replace(
                "[source]\n",
                "[source]\ndatabases = \"all\"\nexclude = [\"skip_*\"]\n",
            )
            .replace("[dump]\n", "[dump]\nlock_wait_timeout_secs = 1\n"),
    );
    let out = ws.pgproof(&["backup", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let entries: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let committed: Vec<&str> = entries
        .iter()
        .filter(|e| e.get("backup_id").is_some())
        .map(|e| e["database"].as_str().unwrap())
        .collect();
    assert_eq!(committed, ["alpha", "beta", "postgres"]);
    let failed: Vec<&Value> = entries.iter().filter(|e| e["status"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{entries:#?}");
    assert_eq!(failed[0]["database"], "busy");
    assert!(
        failed[0]["error"].as_str().unwrap().contains("lock"),
        "{failed:?}"
    );
    let last = stderr(&out);
    let last = last.trim().lines().last().unwrap();
    assert!(last.contains("1 of 4 backups failed (busy)"), "{last}");
    drop(blocker);

    // The text form names the failed database on stdout too.
    ws.write_config(&config.replace(
        "[source]\n",
        "[source]\ndatabases = \"all\"\nexclude = [\"skip_*\", \"busy\"]\n",
    ));
    let listed = ws.pgproof_ok(&["backup"]);
    // Three backups, then the run over the whole server (tests/tests/cluster.rs).
    assert_eq!(listed.lines().count(), 4, "{listed}");
    assert!(
        listed.lines().last().unwrap().contains("cluster run"),
        "{listed}"
    );

    // A misspelt keyword is a config error naming the key.
    ws.write_config(&config.replace("[source]\n", "[source]\ndatabases = \"everything\"\n"));
    let out = ws.pgproof(&["backup"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("source.databases"),
        "{}",
        stderr(&out)
    );
}

fn decisions(out: &std::process::Output) -> Vec<Value> {
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", stderr(out)));
    v["decisions"].as_array().unwrap().clone()
}

/// Twenty daily backups on a simulated calendar with failed runs interleaved, an
/// orphan of a run that died, one old verified backup: prune keeps what the rules and
/// the safety rules say, leaves tombstones, and `check` tells pruned backups from
/// deleted or edited manifests and missing objects; `status` reads the result.
#[tokio::test]
async fn retention_check_and_status_over_a_simulated_calendar() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_database(&cluster, "app").await;
    connect(&cluster, "app")
        .await
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, "app", "custom");
    ws.verify_on(&cluster);
    let config = std::fs::read_to_string(&ws.config).unwrap();
    let broken = config.replace(&cluster.url("app"), &cluster.url("no_such_db"));
    let mut ids = Vec::new();
    for day in 1..=20 {
        let now = format!("2026-01-{day:02}T01:00:00Z");
        if day % 4 == 0 {
            // A failed run the same night: it must not count for anything.
            ws.write_config(&broken);
            let out = ws.pgproof_at(&format!("2026-01-{day:02}T00:30:00Z"), &["backup"]);
            assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
            ws.write_config(&config);
        }
        let out = ws.pgproof_at(&now, &["backup", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        ids.push(list[0]["backup_id"].as_str().unwrap().to_owned());
    }
    assert!(ids[0].starts_with("20260101T010000"), "{ids:?}");
    // Day 5's backup is the only one verified.
    ws.pgproof_ok(&["verify", &ids[4]]);
    // A run that died on day 2 left a dump object and no manifest; another died an
    // hour ago (it may still be writing).
    for (id, when) in [
        ("20260102T013000.000Z-dead", "old"),
        ("20260120T020000.000Z-live", "new"),
    ] {
        let dir = ws.sink.join("app").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("dump.pgc.age"), when).unwrap();
    }

    // Day 7's backup is being verified by another run: it holds a lease.
    let lease = ws.sink.join("app").join(&ids[6]).join("lease");
    std::fs::create_dir_all(&lease).unwrap();
    // Signed by a verifying host (the same key here), valid for the next hour.
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    std::fs::write(
        lease.join("other-run.json"),
        format!(r#"{{"holder": "verify, pid 1", "expires_at": "{expires}"}}"#),
    )
    .unwrap();
    ws.edit_signed(&format!("app/{}/lease/other-run.json", ids[6]), |t| t);

    let now = "2026-01-20T03:00:00Z";
    ws.write_config(&format!(
        "{config}\n[retention]\nkeep_daily = 3\nkeep_weekly = 3\norphan_grace = \"12h\"\n"
    ));
    let dry = ws.pgproof_at(now, &["prune", "--dry-run", "--json"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    let plan = decisions(&dry);
    let action = |id: &str| {
        plan.iter().find(|d| d["backup_id"] == id).map(|d| {
            (
                d["action"].as_str().unwrap().to_owned(),
                d["detail"].to_string(),
            )
        })
    };
    for (day, rule) in [
        (7, "lease"),
        (20, "keep_daily"),
        (19, "keep_daily"),
        (18, "keep_daily"),
        (11, "keep_weekly"),
        (5, "newest verified"),
    ] {
        let (what, why) = action(&ids[day - 1]).unwrap();
        assert_eq!(what, "keep", "day {day}");
        assert!(why.contains(rule), "day {day}: {why}");
    }
    assert!(
        action(&ids[19])
            .unwrap()
            .1
            .contains("head of the manifest chain")
    );
    for day in [1, 2, 3, 4, 6, 10, 12, 17] {
        assert_eq!(action(&ids[day - 1]).unwrap().0, "delete", "day {day}");
    }
    assert_eq!(
        action("20260102T013000.000Z-dead").unwrap().0,
        "delete-orphan"
    );
    assert_eq!(
        action("20260120T020000.000Z-live"),
        None,
        "a run within the grace period"
    );
    let before = ws.sink_files();
    assert!(
        before.iter().any(|f| f.contains(&ids[0])),
        "dry run deleted nothing"
    );

    let out = ws.pgproof_at(now, &["prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(summary.contains("6 backups kept, 14 pruned"), "{summary}");
    let files = ws.sink_files();
    for day in [1, 6, 17] {
        let id = &ids[day - 1];
        let left: Vec<&String> = files.iter().filter(|f| f.contains(id.as_str())).collect();
        assert_eq!(left.len(), 1, "day {day}: {left:?}");
        assert!(left[0].ends_with("tombstone.json"));
    }
    assert!(!files.iter().any(|f| f.contains("-dead")));
    assert!(files.iter().any(|f| f.contains("-live")));
    std::fs::remove_dir_all(&lease).unwrap();

    // A prune interrupted after the tombstone and the manifest: the next one finishes.
    let leftover = ws.sink.join("app").join(&ids[0]).join("dump.pgc.age");
    std::fs::write(&leftover, "left behind").unwrap();
    let out = ws.pgproof_at(now, &["prune", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        decisions(&out)
            .iter()
            .any(|d| d["backup_id"] == ids[0].as_str() && d["action"] == "finish-prune"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!leftover.exists());

    // Pruned backups are no finding; the chain still verifies across a tombstone.
    let out = ws.pgproof(&["check", "--read-data"]);
    assert!(
        out.status.success(),
        "{}{}",
        stderr(&out),
        String::from_utf8_lossy(&out.stdout)
    );
    let out = ws.pgproof(&["verify", &ids[17], "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let previous = report[0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "manifest:previous")
        .unwrap()
        .clone();
    assert_eq!(previous["passed"], true, "{previous}");
    assert!(previous["detail"].as_str().unwrap().contains("pruned"));
    // A kept backup whose successor was pruned: the successor's tombstone links to it.
    let out = ws.pgproof(&["verify", &ids[10], "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let next = report[0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "manifest:next")
        .unwrap()
        .clone();
    assert_eq!(next["passed"], true, "{next}");
    assert!(
        next["detail"].as_str().unwrap().contains("(pruned)"),
        "{next}"
    );

    // Status at the simulated time, then three days later.
    ws.write_config(&format!(
        "{config}\n[status]\nmax_age = \"26h\"\nmax_unverified_age = \"7d\"\nmax_restore_time = \"1h\"\n"
    ));
    let textfile = ws.dir.path().join("pgproof.prom");
    let out = ws.pgproof_at(
        now,
        &[
            "status",
            "--json",
            "--prometheus",
            textfile.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status[0]["database"], "app");
    assert_eq!(status[0]["backups"], 5);
    assert_eq!(status[0]["newest_backup_age_secs"], 2 * 3600);
    assert_eq!(status[0]["newest_verified_backup"], ids[17]);
    let metrics = std::fs::read_to_string(&textfile).unwrap();
    assert!(
        metrics.contains("# TYPE pgproof_last_backup_timestamp_seconds gauge"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pgproof_last_backup_timestamp_seconds{database=\"app\"} 1768870800"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pgproof_status_breached{database=\"app\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pgproof_restore_seconds{database=\"app\"}"),
        "{metrics}"
    );
    let out = ws.pgproof_at(
        "2026-01-23T03:00:00Z",
        &["status", "--prometheus", textfile.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("max_age"));
    assert!(
        std::fs::read_to_string(&textfile)
            .unwrap()
            .contains("pgproof_status_breached{database=\"app\"} 1")
    );

    // A deleted manifest, an edited one and a missing object are findings.
    std::fs::remove_file(ws.sink.join("app").join(&ids[18]).join("manifest.json")).unwrap();
    let edited = ws.sink.join("app").join(&ids[4]).join("manifest.json");
    let text = std::fs::read_to_string(&edited).unwrap();
    std::fs::write(&edited, text.replacen("\n", "\n ", 1)).unwrap();
    let dump = std::fs::read_dir(ws.sink.join("app").join(&ids[10]))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("dump."))
        .unwrap();
    std::fs::remove_file(dump.path()).unwrap();
    let out = ws.pgproof(&["check", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let found: Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems: Vec<(String, String)> = found["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["backup_id"].as_str().unwrap().to_owned(),
                f["problem"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let about =
        |id: &str, needle: &str| problems.iter().any(|(b, p)| b == id && p.contains(needle));
    assert!(about(&ids[18], "deleted, not by prune"), "{problems:#?}");
    assert!(about(&ids[4], "edited"), "{problems:#?}");
    assert!(about(&ids[10], "missing"), "{problems:#?}");
    // Both sides of the gap: the backup before the deleted manifest lost its successor.
    assert!(
        about(&ids[17], "committed after it was deleted"),
        "{problems:#?}"
    );
    assert_eq!(problems.len(), 4, "{problems:#?}");
}

/// A webhook receiver: answers the first `failures` requests with 500, then 200, and
/// hands over each request body.
fn webhook_server(failures: usize) -> (String, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://127.0.0.1:{}/hook/s3cr3t-token",
        listener.local_addr().unwrap().port()
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let status = if n < failures {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
        }
    });
    (url, rx)
}

/// Hooks run without a shell with the outcome in their environment; a failing after
/// hook or webhook does not change the result; a failing before hook stops the run;
/// the webhook gets a JSON summary, retried, and its token never shows.
#[tokio::test]
async fn hooks_and_notifications_report_without_hiding_the_result() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_database(&cluster, "hooked").await;
    let ws = Workspace::new(&cluster, "hooked", "custom");
    let config = std::fs::read_to_string(&ws.config).unwrap();
    let seen = ws.dir.path().join("seen.env");
    let script = ws.dir.path().join("hook.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$PGPROOF_HOOK $PGPROOF_OUTCOME $PGPROOF_EXIT_CODE [$PGPROOF_BACKUPS] [$PGPROOF_FAILED] [$AWS_SECRET_ACCESS_KEY]\" >> {}\necho hook says hi\ncase $PGPROOF_HOOK in after) exit ${{AFTER_EXIT:-0}};; *) exit ${{HOOK_EXIT:-0}};; esac\n",
            seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (url, bodies) = webhook_server(2);
    let hooked = format!(
        "{config}\n[hooks]\nbefore = [\"{s}\"]\nafter = [\"{s}\", \"ignored-arg\"]\nenv = [\"HOOK_EXIT\", \"AFTER_EXIT\"]\n\n[notify]\nurl = \"{url}\"\non = [\"failure\", \"success\"]\n",
        s = script.display()
    );
    ws.write_config(&hooked);

    // Success: both hooks ran, the webhook got the summary on its third attempt. A
    // secret in pgproof's environment does not reach them.
    let out = ws
        .command(&["backup", "--json"])
        .env("AWS_SECRET_ACCESS_KEY", "hunter2-in-env")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(log.contains("hook says hi"), "hook output is logged: {log}");
    assert!(!log.contains("s3cr3t"), "the webhook token leaked: {log}");
    let wait = std::time::Duration::from_secs(10);
    let attempts: Vec<String> = (0..3).map(|_| bodies.recv_timeout(wait).unwrap()).collect();
    assert!(
        bodies.try_recv().is_err(),
        "accepted on the third attempt, no fourth"
    );
    let body: Value = serde_json::from_str(&attempts[2]).unwrap();
    assert_eq!(body["outcome"], "success", "{body}");
    assert_eq!(body["backups"][0]["database"], "hooked");
    let lines = std::fs::read_to_string(&seen).unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines[0], "before   [] [] []");
    assert!(
        lines[1].starts_with("after success 0 [hooked/") && lines[1].ends_with("[] []"),
        "{lines:?}"
    );

    // A failing backup: the after hook sees it; the result is the backup's.
    std::fs::remove_file(&seen).unwrap();
    ws.write_config(&hooked.replace(&cluster.url("hooked"), &cluster.url("gone")));
    let out = ws.pgproof(&["backup"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines = std::fs::read_to_string(&seen).unwrap();
    assert!(
        lines
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("after failure 1 [] [gone]"),
        "{lines}"
    );
    let last = bodies.recv_timeout(wait).expect("a failure is notified");
    let body: Value = serde_json::from_str(&last).unwrap();
    assert_eq!(body["outcome"], "failure");
    assert_eq!(body["failed"][0]["database"], "gone");

    // A failing after hook (the before hook succeeding: each reads its own exit
    // variable) and an unreachable webhook: reported, result unchanged.
    std::fs::remove_file(&seen).unwrap();
    ws.write_config(
        &hooked
            .replace(&url, "http://127.0.0.1:9/hook/s3cr3t-token")
            .replace("[notify]\n", "[notify]\nattempts = 2\ntimeout_secs = 2\n"),
    );
    let listed_before = backup_count(&ws);
    let out = ws
        .command(&["backup", "--json"])
        .env("HOOK_EXIT", "0")
        .env("AFTER_EXIT", "7")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(log.contains("notification webhook failed"), "{log}");
    assert!(!log.contains("s3cr3t"), "{log}");
    let failed_hook: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("the after hook failed"))
        .collect();
    assert_eq!(
        failed_hook.len(),
        1,
        "the after hook's failure is logged: {log}"
    );
    assert!(failed_hook[0].contains('7'), "with its exit status: {log}");
    let lines = std::fs::read_to_string(&seen).unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 2, "both hooks ran: {lines:?}");
    assert!(
        lines[1].starts_with("after success 0 [hooked/"),
        "{lines:?}"
    );
    // The backup the after hook reported on is committed and listed.
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = printed[0]["backup_id"].as_str().unwrap();
    assert_eq!(backup_count(&ws), listed_before + 1);
    assert!(
        ws.pgproof_ok(&["list", "--json"]).contains(id),
        "the backup is listed"
    );

    // A failing before hook stops the run: nothing is backed up.
    let before = ws.sink_files().len();
    let out = ws
        .command(&["backup"])
        .env("HOOK_EXIT", "3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.trim().lines().last().unwrap().contains("before hook"),
        "{err}"
    );
    assert_eq!(ws.sink_files().len(), before);
}

fn backup_count(ws: &Workspace) -> usize {
    let listed: Value = serde_json::from_str(&ws.pgproof_ok(&["list", "--json"])).unwrap();
    listed.as_array().unwrap().len()
}

/// `[[files]]`: a set of keys and configuration stored with the backup, encrypted,
/// checked by verify, written back with its modes by `restore --files`; a secret set
/// without encryption is refused, and a damaged archive fails its check.
#[tokio::test]
async fn file_sets_travel_with_the_backup() {
    use std::os::unix::fs::PermissionsExt;
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_database(&cluster, "withfiles").await;
    let ws = Workspace::new(&cluster, "withfiles", "plain");
    ws.verify_on(&cluster);
    let pki = ws.dir.path().join("pki");
    std::fs::create_dir_all(pki.join("issued")).unwrap();
    std::fs::write(pki.join("ca.key"), "-----BEGIN PRIVATE KEY-----\nsecret\n").unwrap();
    std::fs::set_permissions(pki.join("ca.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(pki.join("issued/app.crt"), "certificate").unwrap();
    std::fs::set_permissions(
        pki.join("issued/app.crt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::os::unix::fs::symlink("issued/app.crt", pki.join("current.crt")).unwrap();
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&format!(
        "{config}\n[[files]]\nname = \"pki\"\npaths = [\"{}\"]\nsecret = true\n",
        pki.display()
    ));
    let manifest = ws.backup();
    let set = &manifest["files"][0];
    assert_eq!(set["name"], "pki");
    assert!(
        set["object"]["key"]
            .as_str()
            .unwrap()
            .ends_with("files-pki.tar.gz.age")
    );
    assert_eq!(set["entries"].as_array().unwrap().len(), 5, "{set:#}");
    // Encrypted: the key's content is not in the stored bytes.
    let stored = std::fs::read(ws.sink.join(set["object"]["key"].as_str().unwrap())).unwrap();
    assert!(!String::from_utf8_lossy(&stored).contains("PRIVATE KEY"));

    let out = ws.pgproof(&["verify", "latest", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let check = report[0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "files:pki")
        .cloned()
        .unwrap();
    assert_eq!(check["passed"], true, "{check}");

    let back = ws.dir.path().join("back");
    ws.pgproof_ok(&["restore", "latest", "--files", back.to_str().unwrap()]);
    let restored = back.join("pki").join(pki.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read_to_string(restored.join("ca.key")).unwrap(),
        "-----BEGIN PRIVATE KEY-----\nsecret\n"
    );
    let mode =
        |p: &std::path::Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&restored.join("ca.key")), 0o600);
    assert_eq!(mode(&restored.join("issued/app.crt")), 0o644);
    assert_eq!(
        std::fs::read_link(restored.join("current.crt")).unwrap(),
        std::path::PathBuf::from("issued/app.crt")
    );
    // Never overwrites.
    let out = ws.pgproof(&["restore", "latest", "--files", back.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("never overwritten"),
        "{}",
        stderr(&out)
    );

    // A damaged archive fails its own check, not the run.
    let key = ws.sink.join(set["object"]["key"].as_str().unwrap());
    let mut bytes = std::fs::read(&key).unwrap();
    let last = bytes.len() - 20;
    bytes[last] ^= 0x01;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&key, bytes).unwrap();
    let out = ws.pgproof(&["verify", "latest", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed: Vec<&str> = report[0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["files:pki"]);

    // A secret set is refused when backups are not encrypted.
    ws.write_config(&format!(
        "{}\n[[files]]\nname = \"pki\"\npaths = [\"{}\"]\nsecret = true\n",
        config.replace("[encryption]\n", "[encryption]\nenabled = false\n"),
        pki.display()
    ));
    let out = ws.pgproof(&["backup"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("files[0]") && stderr(&out).contains("secret"),
        "{}",
        stderr(&out)
    );
}

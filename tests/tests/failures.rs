//! Bad input and failures: each gives one clear line, a meaningful exit code, and
//! leaves no half-written backup or half-restored database.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use pgproof_tests::{
    Workspace, command, connect, create_sample_database, database_exists, pgproof_bin,
    start_cluster, stderr,
};

fn assert_one_line_error(out: &std::process::Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "exit code; stderr: {err}");
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("pgproof: error: "),
        "last line is the error: {err}"
    );
    for needle in needles {
        assert!(last.contains(needle), "error line lacks {needle:?}: {last}");
    }
}

/// Restoring a damaged backup fails with an integrity error (exit 3) and leaves no
/// target database.
#[tokio::test]
async fn damaged_objects_and_wrong_keys_fail_restore_cleanly() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_sample_database(&cluster, "app").await;
    let ws = Workspace::new(&cluster, "app", "custom");
    let manifest = ws.backup();
    let object = ws.sink.join(manifest["object"]["key"].as_str().unwrap());
    let original = std::fs::read(&object).unwrap();
    let target = cluster.url("target");

    let restore_fails = |what: &str, code: i32, needles: &[&str], extra: &[&str]| {
        let mut args = vec!["restore", "latest", "--target", target.as_str()];
        args.extend_from_slice(extra);
        let out = ws.pgproof(&args);
        eprintln!("{what}: {}", stderr(&out).trim());
        assert_one_line_error(&out, code, needles);
    };

    // One flipped byte in the middle of the payload.
    let mut flipped = original.clone();
    let at = original.len() / 2;
    flipped[at] ^= 0x01;
    std::fs::write(&object, &flipped).unwrap();
    restore_fails("flipped byte", 3, &["corrupted"], &[]);
    assert!(
        !database_exists(&cluster, "target").await,
        "flipped byte left a database"
    );

    // Truncated to two thirds.
    std::fs::write(&object, &original[..original.len() * 2 / 3]).unwrap();
    restore_fails("truncated", 3, &["truncated"], &[]);
    assert!(
        !database_exists(&cluster, "target").await,
        "truncation left a database"
    );

    // Bytes appended after a valid age stream.
    let mut longer = original.clone();
    longer.extend_from_slice(b"tail");
    std::fs::write(&object, &longer).unwrap();
    restore_fails("appended", 3, &["corrupted"], &[]);
    assert!(
        !database_exists(&cluster, "target").await,
        "appended bytes left a database"
    );

    // Intact object, wrong identity.
    std::fs::write(&object, &original).unwrap();
    let other_key = ws.dir.path().join("other.key");
    ws.pgproof_ok(&["keygen", "--output", other_key.to_str().unwrap()]);
    restore_fails(
        "wrong identity",
        3,
        &["no identity", "other.key"],
        &["--identity", other_key.to_str().unwrap()],
    );
    assert!(
        !database_exists(&cluster, "target").await,
        "wrong key left a database"
    );

    // Missing identity file: a configuration error.
    restore_fails(
        "missing identity",
        2,
        &["does not exist", "identity_file"],
        &["--identity", "/nonexistent/age.key"],
    );

    // And the untouched object still restores.
    ws.pgproof_ok(&["restore", "latest", "--target", &target]);
    assert!(database_exists(&cluster, "target").await);

    // --clean with a key that cannot open the backup leaves the database it would
    // have replaced exactly as it was.
    let keep = connect(&cluster, "target").await;
    keep.batch_execute(
        "CREATE TABLE precious (v text); INSERT INTO precious VALUES ('still here')",
    )
    .await
    .unwrap();
    drop(keep);
    restore_fails(
        "wrong identity with --clean",
        3,
        &["no identity"],
        &["--clean", "--identity", other_key.to_str().unwrap()],
    );
    let keep = connect(&cluster, "target").await;
    let v: String = keep
        .query_one("SELECT v FROM precious", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "still here");
    drop(keep);
    // With the right key, --clean swaps the restored database in.
    ws.pgproof_ok(&["restore", "latest", "--target", &target, "--clean"]);
    let swapped = connect(&cluster, "target").await;
    assert!(
        swapped
            .query_opt("SELECT 1 FROM pg_class WHERE relname = 'precious'", &[])
            .await
            .unwrap()
            .is_none()
    );
    let rows: i64 = swapped
        .query_one("SELECT count(*) FROM kinds", &[])
        .await
        .unwrap()
        .get(0);
    assert!(rows > 5000);
}

#[tokio::test]
async fn config_errors_name_the_key_or_file() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let ws = Workspace::new(&cluster, "app", "custom");
    let good = std::fs::read_to_string(&ws.config).unwrap();

    ws.write_config(&good.replace("format = \"custom\"", "formt = \"custom\""));
    let out = ws.pgproof(&["backup"]);
    assert_one_line_error(&out, 2, &["formt", "dump", "pgproof.toml"]);

    ws.write_config(&good.replace("format = \"custom\"", "format = \"tar\""));
    let out = ws.pgproof(&["backup"]);
    assert_one_line_error(&out, 2, &["tar", "dump.format"]);

    let out = pgproof_tests::run(
        &pgproof_bin(),
        &["--config", "/nonexistent/pgproof.toml", "list"],
    );
    assert_one_line_error(&out, 2, &["/nonexistent/pgproof.toml", "does not exist"]);

    ws.write_config(&good.replace(&ws.public_key, "age1notakey"));
    let out = ws.pgproof(&["backup"]);
    assert_one_line_error(&out, 2, &["encryption.recipients[0]"]);
}

#[tokio::test]
async fn unreachable_database_fails_with_one_line() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let ws = Workspace::new(&cluster, "app", "custom");
    let good = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&good.replace(
        &cluster.url("app"),
        "postgres://backup:hunter2@/app?host=/nonexistent/socket&port=5999",
    ));
    let out = ws.pgproof(&["backup"]);
    assert_one_line_error(
        &out,
        1,
        &[
            "cannot connect to PostgreSQL",
            "backup@/nonexistent/socket:5999/app",
        ],
    );
    assert!(
        !stderr(&out).contains("hunter2"),
        "password leaked: {}",
        stderr(&out)
    );
    assert!(ws.sink_files().is_empty());
}

/// pg_dump killed mid-run: the backup fails, nothing is committed, list shows nothing.
#[tokio::test]
async fn killed_pg_dump_leaves_no_backup() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_sample_database(&cluster, "app").await;
    let ws = Workspace::new(&cluster, "app", "custom");
    // The cluster trusts local connections, so the password only has to stay hidden.
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&config.replace("postgres://postgres@", "postgres://postgres:hunter2@"));

    // Enough data that pg_dump is certainly still running when it is killed.
    connect(&cluster, "app")
        .await
        .batch_execute(
            "CREATE TABLE filler AS SELECT g, md5(g::text) || md5((-g)::text) AS h \
             FROM generate_series(1, 2000000) g",
        )
        .await
        .unwrap();

    let child = command(
        &pgproof_bin(),
        &["--config", ws.config.to_str().unwrap(), "backup"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let parent = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    // The dump itself, not the `pg_dump --version` that tool discovery runs first;
    // right after exec the kernel may not have laid out its argv and environment yet.
    let (pg_dump, argv, environ) = loop {
        if let Some(pid) = child_named(parent, "pg_dump") {
            let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if String::from_utf8_lossy(&argv).contains("--snapshot") && !environ.is_empty() {
                break (pid, argv, environ);
            }
        }
        assert!(Instant::now() < deadline, "pg_dump never started");
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(
        !String::from_utf8_lossy(&argv).contains("hunter2"),
        "password in pg_dump's argv"
    );
    assert!(
        String::from_utf8_lossy(&environ).contains("PGPASSWORD=hunter2"),
        "pg_dump gets the password through its environment"
    );
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pg_dump.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();

    assert_one_line_error(&out, 1, &["pg_dump failed", "signal: 9"]);
    assert!(
        !stderr(&out).contains("hunter2"),
        "password in the log: {}",
        stderr(&out)
    );
    assert!(
        ws.sink_files().is_empty(),
        "files left behind: {:?}",
        ws.sink_files()
    );
    assert_eq!(ws.pgproof_ok(&["list", "--json"]).trim(), "[]");
}

/// An unwritable sink directory: the backup fails naming the directory, commits
/// nothing, and pg_dump does not linger.
#[tokio::test]
async fn unwritable_sink_leaves_no_backup() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_sample_database(&cluster, "app").await;
    let ws = Workspace::new(&cluster, "app", "custom");
    std::fs::create_dir(&ws.sink).unwrap();
    std::fs::set_permissions(&ws.sink, std::fs::Permissions::from_mode(0o500)).unwrap();

    // Root ignores file modes; drop the capabilities that let it, so the mode bites.
    let args = ["--config", ws.config.to_str().unwrap(), "backup"];
    let out = if is_root() {
        let mut full = vec![
            "--bounding-set=-dac_override,-dac_read_search",
            "--inh-caps=-dac_override,-dac_read_search",
            "--",
        ];
        let bin = pgproof_bin();
        full.push(bin.to_str().unwrap());
        full.extend_from_slice(&args);
        command(std::path::Path::new("setpriv"), &full)
            .output()
            .unwrap()
    } else {
        command(&pgproof_bin(), &args).output().unwrap()
    };
    std::fs::set_permissions(&ws.sink, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_one_line_error(&out, 1, &["Permission denied", ws.sink.to_str().unwrap()]);
    assert!(
        ws.sink_files().is_empty(),
        "files left behind: {:?}",
        ws.sink_files()
    );
    assert_eq!(ws.pgproof_ok(&["list", "--json"]).trim(), "[]");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// The pid of a direct child of `parent` whose command name is `name`.
fn child_named(parent: u32, name: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if comm == name && ppid == Some(parent) {
            return Some(pid);
        }
    }
    None
}

/// Encryption is on by default: without recipients a backup refuses to run, unless
/// encryption is explicitly disabled, which works and warns.
#[tokio::test]
async fn encryption_must_be_disabled_explicitly() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_sample_database(&cluster, "app").await;
    let ws = Workspace::new(&cluster, "app", "plain");
    let good = std::fs::read_to_string(&ws.config).unwrap();
    let no_recipients = good.replace(&format!("recipients = [\"{}\"]", ws.public_key), "");
    ws.write_config(&no_recipients);
    let out = ws.pgproof(&["backup"]);
    assert_one_line_error(&out, 2, &["no age recipient", "encryption.enabled = false"]);
    assert!(ws.sink_files().is_empty());

    ws.write_config(&no_recipients.replace("[encryption]", "[encryption]\nenabled = false"));
    let out = ws.pgproof(&["backup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unencrypted"),
        "no warning: {}",
        stderr(&out)
    );
    let manifests: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(manifests[0]["encryption"].is_null());
    assert_eq!(manifests[0]["codecs"], serde_json::json!(["gzip"]));
    assert!(
        ws.sink_files().iter().any(|f| f.ends_with("/dump.sql.gz")),
        "{:?}",
        ws.sink_files()
    );
    ws.pgproof_ok(&["restore", "latest", "--target", &cluster.url("plain_copy")]);
    assert!(database_exists(&cluster, "plain_copy").await);
}

/// A directory dump whose pg_dump fails after every file was stored leaves no object:
/// the files are committed one by one, and the failed backup deletes them.
#[tokio::test]
async fn a_failed_directory_dump_leaves_no_object() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_sample_database(&cluster, "app").await;
    let real = cluster.tools().dir().to_owned();
    let bin = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&real).unwrap().flatten() {
        std::os::unix::fs::symlink(entry.path(), bin.path().join(entry.file_name())).unwrap();
    }
    let pg_dump = bin.path().join("pg_dump");
    std::fs::remove_file(&pg_dump).unwrap();
    std::fs::write(
        &pg_dump,
        format!(
            "#!/bin/sh\n{}/pg_dump \"$@\" || exit\ncase \"$*\" in *--file=*) echo 'pg_dump: error: disk on fire' >&2; exit 1;; esac\n",
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&pg_dump, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ws = Workspace::new(&cluster, "app", "directory");
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&config.replace(
        &format!("pg_bin_dir = \"{}\"", real.display()),
        &format!("pg_bin_dir = \"{}\"", bin.path().display()),
    ));
    let out = ws.pgproof(&["backup"]);
    assert_one_line_error(&out, 1, &["disk on fire"]);
    assert!(ws.sink_files().is_empty(), "{:?}", ws.sink_files());
}

/// A table lock the backup cannot get within dump.lock_wait_timeout_secs fails it
/// instead of holding the snapshot open forever.
#[tokio::test]
async fn a_lock_pg_dump_cannot_get_fails_the_backup_in_time() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_sample_database(&cluster, "app").await;
    let ws = Workspace::new(&cluster, "app", "custom");
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&config.replace("[dump]", "[dump]\nlock_wait_timeout_secs = 1"));
    let blocker = hold_a_lock_the_backup_needs(&cluster).await;
    let started = Instant::now();
    let out = ws.pgproof(&["backup"]);
    blocker.batch_execute("ROLLBACK").await.unwrap();
    // The snapshot session locks every table pg_dump will (ACCESS SHARE) before
    // pg_dump starts, under the same timeout, so it is the one that gives up.
    assert_one_line_error(&out, 1, &["lock timeout"]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(ws.sink_files().is_empty(), "{:?}", ws.sink_files());
}

/// Holds ACCESS EXCLUSIVE on a partitioned table until the client rolls back: the
/// backup (the snapshot session's up-front locks, as pg_dump's) must wait for it. The
/// table is committed first, or the snapshot would not see it.
async fn hold_a_lock_the_backup_needs(
    cluster: &pgproof_core::scratch::EphemeralCluster,
) -> tokio_postgres::Client {
    let blocker = connect(cluster, "app").await;
    blocker
        .batch_execute("CREATE TABLE blocker (id int) PARTITION BY RANGE (id)")
        .await
        .unwrap();
    blocker
        .batch_execute("BEGIN; LOCK TABLE blocker IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    blocker
}

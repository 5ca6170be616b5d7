//! Faults an operator meets, each injected for real: a server that accepts and never
//! answers, a damaged manifest among good ones, garbage sink URLs, a secret key where a
//! public key belongs, a world-readable identity, a missing identity, bad config
//! syntax and values from the environment. Each asserts the exit code, a one-line
//! cause and that nothing secret is printed.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use pgproof_tests::{
    Workspace, command, create_sample_database, pgproof_bin, start_cluster, stderr,
};
use serde_json::Value;

/// The `pgproof: error:` line, asserting there is exactly one and it is one line.
fn error_line(text: &str) -> &str {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("pgproof: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line in:\n{text}");
    lines[0]
}

/// Writes `body` as the config, with a signing key of its own (made once per
/// directory): every catalog object pgproof writes is signed.
fn write_config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let key = dir.join("signing.key");
    if !key.exists() {
        let out = command(
            &pgproof_bin(),
            &["keygen", "--signing", "-o", key.to_str().unwrap()],
        )
        .output()
        .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let path = dir.join("pgproof.toml");
    std::fs::write(
        &path,
        format!("{body}\n[signing]\nkey_file = \"{}\"\n", key.display()),
    )
    .unwrap();
    path
}

fn pgproof(config: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut full = vec!["--config", config.to_str().unwrap()];
    full.extend_from_slice(args);
    command(&pgproof_bin(), &full)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn a_server_that_accepts_and_never_answers_fails_within_the_connect_timeout() {
    // The kernel completes the TCP handshake for a listener nobody accepts from: to a
    // client it looks like a dead load balancer.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[source]\nurl = \"postgres://backup@127.0.0.1:{port}/app\"\nconnect_timeout_secs = 2\n\
             [encryption]\nenabled = false\n[sink]\nurl = \"file://{}/sink\"\n",
            dir.path().display()
        ),
    );
    let started = Instant::now();
    let out = pgproof(&config, &[], &["backup"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let line = error_line(&stderr(&out)).to_owned();
    assert!(line.contains("no answer within 2s"), "{line}");
    assert!(
        !dir.path().join("sink").exists()
            || std::fs::read_dir(dir.path().join("sink"))
                .unwrap()
                .next()
                .is_none()
    );

    // The same through PGCONNECT_TIMEOUT, as libpq reads it.
    let config = write_config(
        dir.path(),
        &format!(
            "[source]\nurl = \"postgres://backup@127.0.0.1:{port}/app\"\n\
             [encryption]\nenabled = false\n[sink]\nurl = \"file://{}/sink\"\n",
            dir.path().display()
        ),
    );
    let out = pgproof(&config, &[("PGCONNECT_TIMEOUT", "1")], &["backup"]);
    assert!(
        error_line(&stderr(&out)).contains("no answer within 1s"),
        "{}",
        stderr(&out)
    );
    drop(listener);
}

#[test]
fn garbage_sink_urls_are_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[encryption]\nenabled = false\n");
    for url in [
        "s3:/bucket/x",
        "::::",
        "ftp://host/x",
        "backups",
        "file://host/x",
    ] {
        let out = pgproof(&config, &[], &["--sink", url, "list"]);
        assert_eq!(out.status.code(), Some(2), "{url}: {}", stderr(&out));
        assert!(
            error_line(&stderr(&out)).contains("sink.url"),
            "{url}: {}",
            stderr(&out)
        );
    }
    assert!(
        !std::path::Path::new("backups").exists() && !std::path::Path::new("s3:").exists(),
        "a garbage URL became a directory"
    );
    // Explicitly relative and absolute paths are fine.
    let out = pgproof(
        &config,
        &[],
        &["--sink", &format!("{}/sink", dir.path().display()), "list"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_secret_key_among_the_recipients_is_refused_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("age.key");
    let out = command(&pgproof_bin(), &["keygen", "-o", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let secret = std::fs::read_to_string(&key)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_owned();
    let config = write_config(
        dir.path(),
        &format!(
            "[encryption]\nrecipients = [\"{secret}\"]\n[sink]\nurl = \"file://{}/sink\"\n",
            dir.path().display()
        ),
    );
    for args in [
        &["config", "check"][..],
        &["config", "check", "--json"],
        &["backup"],
    ] {
        let out = pgproof(&config, &[], args);
        let everything = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {everything}");
        assert!(
            !everything.contains(&secret),
            "{args:?} printed the secret key"
        );
        assert!(
            everything.contains("encryption.recipients[0] holds an age secret key"),
            "{args:?}: {everything}"
        );
    }
}

#[test]
fn identity_files_readable_by_others_are_warned_about_and_missing_ones_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("age.key");
    let out = command(&pgproof_bin(), &["keygen", "-o", key.to_str().unwrap()])
        .output()
        .unwrap();
    let public = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[encryption]\nrecipients = [\"{public}\"]\nidentity_file = \"{}\"\n[sink]\nurl = \"file://{}/sink\"\n",
            key.display(),
            dir.path().display()
        ),
    );
    let out = pgproof(&config, &[], &["config", "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("readable by group or others"),
        "{}",
        stderr(&out)
    );

    let out = pgproof(
        &config,
        &[],
        &[
            "restore",
            "latest",
            "--target",
            "postgres:///x",
            "--identity",
            "/nonexistent/age.key",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let line = error_line(&stderr(&out)).to_owned();
    assert!(
        line.contains("/nonexistent/age.key") && line.contains("--identity"),
        "{line}"
    );
}

#[test]
fn config_errors_are_one_line_and_name_the_environment_variable() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[sink\nurl = \"file:///x\"\n");
    let out = pgproof(&config, &[], &["config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    let line = error_line(&stderr(&out)).to_owned();
    assert!(line.contains("pgproof.toml"), "{line}");

    let config = write_config(dir.path(), "[sink]\nurl = \"file:///x\"\n");
    let out = pgproof(
        &config,
        &[("PGPROOF_SINK__PART_SIZE_MIB", "3")],
        &["config", "check"],
    );
    assert_eq!(out.status.code(), Some(2));
    let line = error_line(&stderr(&out)).to_owned();
    assert!(line.contains("PGPROOF_SINK__PART_SIZE_MIB"), "{line}");
}

#[tokio::test]
async fn one_damaged_manifest_does_not_blind_list_or_verify_all() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_sample_database(&cluster, "app").await;
    let ws = Workspace::new(&cluster, "app", "custom");
    ws.verify_on(&cluster);
    let first = ws.backup();
    let second = ws.backup();
    let first_id = first["backup_id"].as_str().unwrap();
    let second_id = second["backup_id"].as_str().unwrap();
    std::fs::write(
        ws.sink.join(format!("app/{first_id}/manifest.json")),
        "{ not a manifest",
    )
    .unwrap();

    // Not signed, so not trusted: listed as damaged beside the good backup, named on
    // stderr, and the command exits 3.
    let out = ws.pgproof(&["list"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains(first_id), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(second_id), "{text}");
    assert!(
        text.contains(first_id) && text.contains("DAMAGED"),
        "{text}"
    );

    let out = ws.pgproof(&["list", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let damaged: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["status"] == "damaged")
        .collect();
    assert_eq!(damaged.len(), 1, "{listed:#}");
    assert_eq!(damaged[0]["backup_id"], first_id);

    // verify --all proves what it can trust and names the rest (exit 3).
    let out = ws.pgproof(&["verify", "--all", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains(first_id), "{}", stderr(&out));
    let reports: Value = serde_json::from_slice(&out.stdout).unwrap();
    let reports = reports.as_array().unwrap();
    assert_eq!(reports.len(), 1, "{reports:#?}");
    // The other backup was restored and compared; only its link to the damaged
    // predecessor fails.
    let other = reports
        .iter()
        .find(|r| r["backup_id"] == second_id)
        .unwrap();
    let failed: Vec<&str> = other["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["manifest:previous"], "{other:#}");
}

#[tokio::test]
async fn a_clean_restore_ends_sessions_on_the_database_it_replaces_and_keeps_it_until_then() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_sample_database(&cluster, "app").await;
    let ws = Workspace::new(&cluster, "app", "custom");
    ws.backup();
    let target = cluster.url("app_copy");
    ws.pgproof_ok(&["restore", "latest", "--target", &target]);
    // A session holds the database being replaced: it is ended, the swap succeeds.
    let holder = pgproof_tests::connect(&cluster, "app_copy").await;
    holder
        .batch_execute("CREATE TABLE marker (x int)")
        .await
        .unwrap();
    ws.pgproof_ok(&["restore", "latest", "--target", &target, "--clean"]);
    assert!(
        holder.batch_execute("SELECT 1").await.is_err(),
        "the old session survived"
    );
    let fresh = pgproof_tests::connect(&cluster, "app_copy").await;
    let marker: i64 = fresh
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = 'marker'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(marker, 0, "the database was not replaced");
    let leftovers: i64 = fresh
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgproof\\_restore\\_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leftovers, 0, "a beside-database was left behind");

    // A damaged backup never costs the database it was meant to replace.
    let object = ws
        .sink_files()
        .into_iter()
        .find(|f| f.ends_with("dump.pgc.zst.age"))
        .unwrap();
    let path = ws.sink.join(&object);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let out = ws.pgproof(&["restore", "latest", "--target", &target, "--clean"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let kinds: i64 = fresh
        .query_one("SELECT count(*) FROM public.kinds", &[])
        .await
        .unwrap()
        .get(0);
    assert!(kinds > 0, "the original lost its rows");
}

/// A fingerprint statement slower than `statement_timeout` fails the backup. Tables are
/// hashed in pieces of a few MiB, each well inside any sane limit; a materialized view
/// is read in one statement, so a large one is the slow query here.
#[tokio::test]
async fn a_slow_fingerprint_query_stops_at_the_statement_timeout_and_commits_nothing() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let client = create_sample_database(&cluster, "slow").await;
    client
        .batch_execute(
            "CREATE MATERIALIZED VIEW wide AS SELECT g, md5(g::text) AS h, repeat('x', 200) AS pad \
             FROM generate_series(1, 1200000) g",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sink: std::sync::Arc<dyn pgproof_core::Sink> =
        std::sync::Arc::new(pgproof_sink_fs::FsSink::new(dir.path()));
    let err = pgproof_core::ops::Backup::new(cluster.params("slow").unwrap(), sink.clone())
        .unencrypted()
        .statement_timeout(Duration::from_millis(100))
        .run()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("fingerprinting a table"), "{text}");
    assert!(text.contains("statement timeout"), "{text}");
    assert!(
        sink.list("").await.unwrap().is_empty(),
        "something was stored"
    );
    // Without the limit the same backup goes through.
    pgproof_core::ops::Backup::new(cluster.params("slow").unwrap(), sink)
        .unencrypted()
        .statement_timeout(Duration::ZERO)
        .run()
        .await
        .unwrap();
}

/// A backup role at its connection limit: the fingerprint's extra connections (a
/// monitor and one per pg_dump job, to read in step with pg_dump) would take the slot
/// pg_dump needs. pgproof counts the room first and, with none to spare, reads each
/// table on its own beside pg_dump, every time, with a warning saying why.
#[tokio::test]
async fn a_role_at_its_connection_limit_backs_up_without_taking_pg_dumps_slot() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let admin = pgproof_tests::connect(&cluster, "postgres").await;
    for sql in [
        "CREATE ROLE tight LOGIN CONNECTION LIMIT 2",
        "CREATE DATABASE tight OWNER tight",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    pgproof_tests::connect(&cluster, "tight")
        .await
        .batch_execute(
            "SET ROLE tight; \
             CREATE TABLE wide AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 200000) g",
        )
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, "tight", "custom");
    let superuser_url = cluster.url("tight");
    let config = std::fs::read_to_string(&ws.config).unwrap();
    assert!(config.contains(&superuser_url));
    ws.write_config(&config.replace(
        &superuser_url,
        &superuser_url.replace("postgres@", "tight@"),
    ));
    ws.verify_on(&cluster);
    for round in 0..3 {
        let out = ws.pgproof(&["backup"]);
        let log = stderr(&out);
        assert!(out.status.success(), "round {round}: {log}");
        // Room for 1 (pgproof's own session holds the other slot), or 0 while a
        // previous session's backend is still exiting: either way no in-step reading.
        assert!(
            log.contains("connection limits leave room for")
                && log.contains("reading in step needs 2 beside pg_dump's 1"),
            "round {round}: {log}"
        );
    }
    let out = ws.pgproof(&["verify", "--all"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The `--clean` swap when renaming the restored copy into place fails (here: the copy
/// is gone): the original is renamed back and keeps its data.
#[tokio::test]
async fn a_failed_swap_puts_the_original_back() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let client = create_sample_database(&cluster, "precious").await;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM kinds", &[])
        .await
        .unwrap()
        .get(0);
    drop(client);
    let admin = pgproof_core::pg::admin::Admin::connect(&cluster.params("precious").unwrap())
        .await
        .unwrap();
    let err = admin
        .swap_in("pgproof_restore_missing", "precious")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("renaming"), "{err}");
    assert!(pgproof_tests::database_exists(&cluster, "precious").await);
    assert!(!pgproof_tests::database_exists(&cluster, "pgproof_restore_missing_old").await);
    let again: i64 = pgproof_tests::connect(&cluster, "precious")
        .await
        .query_one("SELECT count(*) FROM kinds", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, rows);
}

/// A dump object its manifest lists is gone: that is a verdict on the backup (a failed
/// `archive` check, exit 3), never a database created for nothing.
#[tokio::test]
async fn a_missing_dump_object_fails_the_backup_not_the_environment() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_sample_database(&cluster, "app").await;
    let ws = Workspace::new(&cluster, "app", "custom");
    ws.verify_on(&cluster);
    let manifest = ws.backup();
    std::fs::remove_file(ws.sink.join(manifest["object"]["key"].as_str().unwrap())).unwrap();

    let out = ws.pgproof(&["verify", "latest", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let reports: Value = serde_json::from_slice(&out.stdout).unwrap();
    let archive = reports[0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "archive")
        .unwrap();
    assert_eq!(archive["passed"], false);
    assert!(
        archive["detail"].as_str().unwrap().contains("is missing"),
        "{archive}"
    );

    let out = ws.pgproof(&["restore", "latest", "--target", &cluster.url("restored")]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        error_line(&stderr(&out)).contains("is missing"),
        "{}",
        stderr(&out)
    );
    assert!(!pgproof_tests::database_exists(&cluster, "restored").await);
}

/// The verification records under a backup in the local sink.
fn records(ws: &Workspace, id: &str) -> Vec<String> {
    ws.sink_files()
        .into_iter()
        .filter(|f| f.starts_with(&format!("app/{id}/verify/")))
        .collect()
}

/// A problem of the environment (a scratch server nobody answers on, a missing
/// restore program) stops `verify` with an error and writes no record: it must never
/// read as a failed verification of the backup. The same backup then verifies and
/// its record appears where the failed runs' would have, so the checks look in the
/// right place.
#[tokio::test]
async fn an_environment_error_writes_no_verification_record() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_sample_database(&cluster, "app").await;
    let ws = Workspace::new(&cluster, "app", "custom");
    let id = ws.backup()["backup_id"].as_str().unwrap().to_owned();
    let config = std::fs::read_to_string(&ws.config).unwrap();

    // A scratch server address where nothing listens (a port just released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    ws.write_config(&format!(
        "{config}\n[verify]\nscratch_url = \"postgres://postgres@127.0.0.1:{port}/postgres?connect_timeout=5\"\n"
    ));
    let out = ws.pgproof(&["verify", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(error_line(&err).contains(&port.to_string()), "{err}");
    assert_eq!(
        records(&ws, &id),
        Vec::<String>::new(),
        "unreachable scratch"
    );

    // The client programs without pg_restore (a partial install).
    let partial = ws.dir.path().join("partial-bin");
    std::fs::create_dir(&partial).unwrap();
    for entry in std::fs::read_dir(cluster.tools().dir()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "pg_restore" {
            std::os::unix::fs::symlink(entry.path(), partial.join(entry.file_name())).unwrap();
        }
    }
    ws.write_config(&config.replace(
        &format!("pg_bin_dir = \"{}\"", cluster.tools().dir().display()),
        &format!("pg_bin_dir = \"{}\"", partial.display()),
    ));
    ws.verify_on(&cluster);
    let out = ws.pgproof(&["verify", &id]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(error_line(&err).contains("pg_restore"), "{err}");
    assert_eq!(
        records(&ws, &id),
        Vec::<String>::new(),
        "missing pg_restore"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("FAIL"),
        "reported as a failed verification: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    ws.write_config(&config);
    ws.verify_on(&cluster);
    ws.pgproof_ok(&["verify", &id]);
    assert_eq!(records(&ws, &id).len(), 1, "{:?}", ws.sink_files());
}

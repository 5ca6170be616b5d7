//! Trust over time: pins that retention respects, rolling re-verification over an
//! injected clock.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use pgproof_tests::{Workspace, create_database, start_cluster, stderr};
use serde_json::Value;

fn json(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

async fn small_database(cluster: &pgproof_core::scratch::EphemeralCluster, name: &str) {
    create_database(cluster, name)
        .await
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
}

/// A pinned backup survives a policy that would delete it, until its pin lapses or is
/// removed; list and show tell pins and notes.
#[tokio::test]
async fn pins_outlast_retention() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    small_database(&cluster, "pinned").await;
    let ws = Workspace::new(&cluster, "pinned", "custom");
    let mut ids = Vec::new();
    for day in 1..=6 {
        let out = ws.pgproof_at(
            &format!("2026-02-{day:02}T01:00:00Z"),
            &["backup", "--json"],
        );
        ids.push(json(&out)[0]["backup_id"].as_str().unwrap().to_owned());
    }
    ws.pgproof_ok(&[
        "pin",
        &ids[1],
        "--note",
        "before the schema migration",
        "--until",
        "2026-03-01",
    ]);
    ws.pgproof_ok(&["pin", &ids[0], "--until", "2026-02-03T00:00:00Z"]);
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&format!("{config}\n[retention]\nkeep_last = 1\n"));

    let now = "2026-02-06T03:00:00Z";
    let listed = json(&ws.pgproof_at(now, &["list", "--json"]));
    let pins = &listed.as_array().unwrap()[1]["pins"];
    assert_eq!(pins[0]["note"], "before the schema migration", "{listed:#}");
    let text = String::from_utf8_lossy(&ws.pgproof_at(now, &["list"]).stdout).to_string();
    assert!(
        text.contains("pinned until 2026-03-01T00:00:00Z: before the schema migration"),
        "{text}"
    );

    let out = ws.pgproof_at(now, &["prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let left: Vec<String> = json(&ws.pgproof_at(now, &["list", "--json"]))
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backup_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        left,
        [ids[1].clone(), ids[5].clone()],
        "day 1's pin lapsed on Feb 3"
    );

    // After the pin's date, or once unpinned, retention takes it.
    let later = "2026-03-02T00:00:00Z";
    let plan = json(&ws.pgproof_at(later, &["prune", "--dry-run", "--json"]));
    let day2 = plan["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["backup_id"] == ids[1].as_str())
        .unwrap()
        .clone();
    assert_eq!(day2["action"], "delete", "{day2}");
    ws.pgproof_ok(&["unpin", &ids[1]]);
    let out = ws.pgproof_at(now, &["prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        json(&ws.pgproof_at(now, &["list", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// `verify --stale` re-proves what was never proven first, then what was proven
/// longest ago, `--limit` per run; status says what is unproven.
#[tokio::test]
async fn rolling_reverification_over_an_injected_clock() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    small_database(&cluster, "rolling").await;
    let ws = Workspace::new(&cluster, "rolling", "custom");
    ws.verify_on(&cluster);
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(ws.backup()["backup_id"].as_str().unwrap().to_owned());
    }
    ws.pgproof_ok(&["verify", &ids[1]]);
    let day =
        |d: i64| (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * d)).to_string();
    let verified = |out: &std::process::Output| -> Vec<String> {
        json(out)
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["backup_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = ws.pgproof_at(
        &day(1),
        &["verify", "--stale", "7d", "--limit", "2", "--json"],
    );
    assert_eq!(
        verified(&first),
        [ids[0].clone(), ids[2].clone()],
        "never proven first"
    );
    let second = ws.pgproof_at(&day(1), &["verify", "--stale", "7d", "--json"]);
    assert_eq!(verified(&second), [ids[3].clone()]);
    let none = ws.pgproof_at(&day(1), &["verify", "--stale", "7d"]);
    assert!(String::from_utf8_lossy(&none.stdout).contains("every backup was proven within 7d"));

    // Ten days on, all are stale; the least recently proven (ids[1]) goes first.
    let later = ws.pgproof_at(
        &day(10),
        &["verify", "--stale", "7d", "--limit", "1", "--json"],
    );
    assert_eq!(verified(&later), [ids[1].clone()]);

    // status: with max_unproven_age, ten days on every backup is unproven (the
    // verifications ran on the real clock, ten simulated days before).
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&format!("{config}\n[status]\nmax_unproven_age = \"7d\"\n"));
    let out = ws.pgproof_at(&day(10), &["status", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status[0]["unproven_backups"], 4, "{status:#}");
    assert_eq!(status[0]["oldest_unproven_backup"], ids[0].as_str());
    let out = ws.pgproof_at(&day(1), &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // list shows each backup's last verification.
    let listed = json(&ws.pgproof_at(&day(1), &["list", "--json"]));
    assert_eq!(listed[1]["last_verification"]["passed"], true);
    assert!(listed[1]["last_verification"]["restore_ms"].is_u64());
}

/// A table truncated, one thinned out, one renamed and one dropped between two backups:
/// the second backup says so with figures (output, manifest, status), and status fails
/// on it when asked to.
#[tokio::test]
async fn anomalies_against_the_previous_backup_are_alerts() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let client = create_database(&cluster, "shop").await;
    client
        .batch_execute(
            "CREATE TABLE orders (id int, note text); INSERT INTO orders SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g;
             CREATE TABLE events (id int); INSERT INTO events SELECT generate_series(1, 1000);
             CREATE TABLE old_name (id int); INSERT INTO old_name SELECT generate_series(1, 10);
             CREATE TABLE scratch (id int); INSERT INTO scratch VALUES (1);
             CREATE TABLE steady (id int); INSERT INTO steady SELECT generate_series(1, 100);",
        )
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, "shop", "custom");
    let first = ws.backup();
    assert!(first.get("alerts").is_none(), "{first:#}");
    client
        .batch_execute(
            "TRUNCATE orders; DELETE FROM events WHERE id > 300; ALTER TABLE old_name RENAME TO new_name;
             DROP TABLE scratch; DELETE FROM steady WHERE id > 60;",
        )
        .await
        .unwrap();
    let out = ws.pgproof(&["backup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("ALERT  table public.orders had 5000 rows, now 0"),
        "{text}"
    );
    let listed = json(&ws.pgproof(&["list", "--json"]));
    let alerts: Vec<(String, String)> = listed[1]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["kind"].as_str().unwrap().to_owned(),
                a["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let has =
        |kind: &str, needle: &str| alerts.iter().any(|(k, d)| k == kind && d.contains(needle));
    assert!(has("emptied", "public.orders had 5000 rows"), "{alerts:#?}");
    assert!(
        has(
            "rows-dropped",
            "public.events lost 70% of its rows: 1000 -> 300"
        ),
        "{alerts:#?}"
    );
    assert!(
        has("renamed", "public.old_name is now public.new_name"),
        "{alerts:#?}"
    );
    assert!(
        has("vanished", "public.scratch (1 rows) is gone"),
        "{alerts:#?}"
    );
    assert!(has("dump-shrank", "the dump shrank by"), "{alerts:#?}");
    assert!(
        !alerts.iter().any(|(_, d)| d.contains("steady")),
        "40% is under the 50% threshold: {alerts:#?}"
    );

    // status shows them; fails on them only with alerts.fail_status.
    let out = ws.pgproof(&["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ALERT"));
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&format!("{config}\n[alerts]\nfail_status = true\n"));
    let out = ws.pgproof(&["status"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

/// A B-tree index made inconsistent with its table (its "immutable" expression
/// redefined): `backup --amcheck` refuses to back it up as if sound, naming the index;
/// the amcheck verifier finds the same on a database, and passes a sound restore.
#[tokio::test]
async fn amcheck_finds_a_corrupt_index() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let client = create_database(&cluster, "indexed").await;
    client
        .batch_execute(
            "CREATE FUNCTION shift(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1 + 1';
             CREATE TABLE t (v int); INSERT INTO t SELECT generate_series(1, 2000);
             CREATE INDEX t_shift ON t (shift(v)); CREATE INDEX t_plain ON t (v);",
        )
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, "indexed", "custom");
    ws.verify_on(&cluster);
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&config.replace("[verify]\n", "[verify]\namcheck = true\n"));
    // Sound, but amcheck is not installed in the source: a warning, not a refusal.
    let out = ws.pgproof(&["backup", "--amcheck"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("amcheck is not installed in the source"),
        "{}",
        stderr(&out)
    );
    let report = json(&ws.pgproof(&["verify", "latest", "--json"]));
    let check = report[0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "amcheck")
        .cloned()
        .unwrap();
    assert_eq!(check["passed"], true, "{check}");
    assert!(check["detail"].as_str().unwrap().contains("B-tree indexes"));

    // Corrupt it: the index holds v + 1, the function now says v + 2.
    client
        .batch_execute(
            "CREATE EXTENSION amcheck;
             CREATE OR REPLACE FUNCTION shift(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1 + 2';",
        )
        .await
        .unwrap();
    let before = ws.sink_files().len();
    let out = ws.pgproof(&["backup", "--amcheck"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    let line = err.trim().lines().last().unwrap();
    assert!(
        line.contains("public.t_shift") && line.contains("REINDEX"),
        "{line}"
    );
    assert!(!line.contains("t_plain"), "{line}");
    assert_eq!(ws.sink_files().len(), before, "nothing stored");

    // The verifier, on the corrupt database itself.
    let (checked, failures) = pgproof_core::verify::amcheck::check_indexes(&client)
        .await
        .unwrap();
    assert!(checked > 2, "user and catalog indexes: {checked}");
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, "public.t_shift");
}

/// `copy` to a second local sink and `[[replicas]]` on S3 (moto): the copies form a
/// catalog that `check` and `verify` accept; a second copy copies nothing; a damaged
/// source object is not copied; status names each replica's newest backup.
#[tokio::test]
async fn copies_form_a_second_catalog() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let Some(moto) = pgproof_tests::moto::Moto::start() else {
        return;
    };
    moto.create_bucket("replica");
    small_database(&cluster, "copied").await;
    let ws = Workspace::new(&cluster, "copied", "custom");
    ws.verify_on(&cluster);
    for _ in 0..3 {
        ws.backup();
    }
    ws.pgproof_ok(&["verify", "latest"]);
    let second = ws.dir.path().join("second");
    let to = format!("file://{}", second.display());
    let out = json(&ws.pgproof(&["copy", "--to", &to, "--json"]));
    assert_eq!(out["copied"].as_array().unwrap().len(), 3, "{out}");
    let again = json(&ws.pgproof(&["copy", "--to", &to, "--json"]));
    assert_eq!(
        again["copied"].as_array().unwrap().len(),
        0,
        "idempotent: {again}"
    );
    assert_eq!(again["already_there"].as_array().unwrap().len(), 3);
    // The second catalog stands on its own.
    let out = ws.pgproof(&["--sink", &to, "check", "--read-data"]);
    assert!(
        out.status.success(),
        "{}{}",
        stderr(&out),
        String::from_utf8_lossy(&out.stdout)
    );
    let listed = json(&ws.pgproof(&["--sink", &to, "list", "--json"]));
    assert_eq!(
        listed[2]["last_verification"]["passed"], true,
        "records came along"
    );
    let report = json(&ws.pgproof(&["--sink", &to, "verify", "latest", "--json"]));
    assert_eq!(report[0]["passed"], true, "{report:#}");

    // A damaged object in the source is not copied, and nothing of that backup lists.
    let third = ws.dir.path().join("third");
    let first_id = listed[0]["backup_id"].as_str().unwrap().to_owned();
    let object = ws.sink.join(listed[0]["object"]["key"].as_str().unwrap());
    let mut bytes = std::fs::read(&object).unwrap();
    bytes[100] ^= 1;
    std::fs::set_permissions(&object, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(&object, bytes).unwrap();
    let out = ws.pgproof(&[
        "copy",
        "--to",
        &format!("file://{}", third.display()),
        &first_id,
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not what its manifest recorded"),
        "{}",
        stderr(&out)
    );
    assert!(
        !third
            .join("copied")
            .join(&first_id)
            .join("manifest.json")
            .exists()
    );

    // [[replicas]]: every backup run copies to S3 as well; status reports it.
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&format!(
        "{config}\n[[replicas]]\nurl = \"s3://replica/pg\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\n",
        moto.endpoint()
    ));
    let mut backup = ws.command(&["backup", "--json"]);
    backup
        .env("AWS_ACCESS_KEY_ID", pgproof_tests::moto::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", pgproof_tests::moto::SECRET_KEY);
    // The damaged backup cannot be replicated: the run says so, after committing.
    let out = backup.output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("copying them to the replica"),
        "{}",
        stderr(&out)
    );
    let newest: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let status = ws
        .command(&["status", "--json"])
        .env("AWS_ACCESS_KEY_ID", pgproof_tests::moto::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", pgproof_tests::moto::SECRET_KEY)
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status[0]["replicas"][0]["newest_backup"], newest[0]["backup_id"],
        "{status:#}"
    );
}

/// Runs a boto3 script against moto (the interpreter moto runs on), `s3` bound to a
/// client; returns its stdout.
fn boto(moto: &pgproof_tests::moto::Moto, script: &str) -> String {
    let python = pgproof_tests::moto::moto_server_bin()
        .unwrap()
        .with_file_name("python");
    let prelude = format!(
        "import boto3, datetime, json\ns3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='{}', aws_secret_access_key='{}')\n",
        moto.endpoint(),
        pgproof_tests::moto::ACCESS_KEY,
        pgproof_tests::moto::SECRET_KEY
    );
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// moto with the bucket `bucket`, Object Lock enabled on it.
fn moto_with_locked_bucket(bucket: &str) -> Option<pgproof_tests::moto::Moto> {
    let moto = pgproof_tests::moto::Moto::start()?;
    boto(
        &moto,
        &format!("s3.create_bucket(Bucket='{bucket}', ObjectLockEnabledForBucket=True)"),
    );
    Some(moto)
}

/// A `[sink]` section for `bucket` on moto, locking what it stores for `days` in
/// governance mode.
fn locked_sink(moto: &pgproof_tests::moto::Moto, bucket: &str, days: u32) -> String {
    format!(
        "url = \"s3://{bucket}/pg\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\nobject_lock = {{ mode = \"governance\", days = {days} }}\n",
        moto.endpoint()
    )
}

/// S3 Object Lock on moto: every object of a backup carries the lock the config asks
/// for, a locked version cannot be deleted, and prune reports a locked backup as
/// retained instead of deleting it.
#[tokio::test]
async fn object_lock_protects_backups_until_their_date() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let Some(moto) = moto_with_locked_bucket("locked") else {
        return;
    };
    small_database(&cluster, "vault").await;
    let mut ws = Workspace::with_sink(
        &cluster,
        "vault",
        "custom",
        Some(&locked_sink(&moto, "locked", 2)),
    );
    ws.use_moto_credentials();
    let first = ws.backup();
    ws.backup();
    assert_eq!(first["object_lock"]["mode"], "governance", "{first:#}");
    let key = format!("pg/{}", first["object"]["key"].as_str().unwrap());
    let seen = boto(
        &moto,
        &format!(
            "h = s3.head_object(Bucket='locked', Key='{key}')\n\
             print(h.get('ObjectLockMode'), (h['ObjectLockRetainUntilDate'] - datetime.datetime.now(datetime.timezone.utc)).days)\n\
             v = s3.list_object_versions(Bucket='locked', Prefix='{key}')['Versions'][0]['VersionId']\n\
             try:\n    s3.delete_object(Bucket='locked', Key='{key}', VersionId=v)\n    print('deleted')\n\
             except Exception as e:\n    print('refused', type(e).__name__)\n"
        ),
    );
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines[0], "GOVERNANCE 1", "locked for two days: {seen}");
    assert!(
        lines[1].starts_with("refused"),
        "a locked version cannot be deleted: {seen}"
    );

    // Retention keeps what the lock keeps, and says so.
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&format!("{config}\n[retention]\nkeep_last = 1\n"));
    let plan = json(&ws.pgproof(&["prune", "--dry-run", "--json"]));
    let first_decision = plan["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["backup_id"] == first["backup_id"])
        .unwrap()
        .clone();
    assert_eq!(first_decision["action"], "keep", "{plan:#}");
    assert!(
        first_decision["detail"]
            .to_string()
            .contains("retained until"),
        "{first_decision}"
    );
    let out = ws.pgproof(&["verify", "latest"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // config check reads the bucket's settings.
    let out = ws.pgproof(&["config", "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("# bucket: versioning on, Object Lock on"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Someone deletes the older backup's objects: on a locked, versioned bucket that
    // only hides them. list --hidden shows the backup, undelete brings it back.
    let id = first["backup_id"].as_str().unwrap();
    boto(
        &moto,
        &format!(
            "for o in s3.list_objects_v2(Bucket='locked', Prefix='pg/vault/{id}/')['Contents']:
    s3.delete_object(Bucket='locked', Key=o['Key'])
"
        ),
    );
    let listed = json(&ws.pgproof(&["list", "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 1, "hidden from list");
    let hidden = json(&ws.pgproof(&["list", "--hidden", "--json"]));
    assert_eq!(hidden[0]["backup_id"], id, "{hidden}");
    ws.pgproof_ok(&["undelete", id, "--database", "vault"]);
    let listed = json(&ws.pgproof(&["list", "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 2, "back");
    let out = ws.pgproof(&["verify", id]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A bucket without Object Lock: config check says the promise does not hold.
    boto(&moto, "s3.create_bucket(Bucket='plain')");
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&config.replace("s3://locked/pg", "s3://plain/pg"));
    let out = ws.pgproof(&["config", "check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("Object Lock off"), "{}", stderr(&out));
}

/// S3 Object Lock with deduplicated backups, on moto: a chunk stays locked at least as
/// long as the newest backup that uses it (a backup extends the lock of a chunk it
/// reuses when it ends sooner than its own, ahead by as long as the lock is, at most
/// about a week, so the next nights ask nothing), while a chunk only an older backup
/// uses keeps that one's; a lowered `days` asks nothing.
#[tokio::test]
async fn object_lock_on_shared_chunks_follows_the_newest_backup_using_them() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let Some(moto) = moto_with_locked_bucket("chunklock") else {
        return;
    };
    let client = create_database(&cluster, "locked_chunks").await;
    client
        .batch_execute(
            "CREATE TABLE notes (id int PRIMARY KEY, body text);
             INSERT INTO notes SELECT g, md5(g::text) || md5((g * 3)::text) FROM generate_series(1, 20000) g;",
        )
        .await
        .unwrap();
    // The first backup's lock, then a longer one (shorter than the week a lock is
    // extended ahead by at most), then a shorter one.
    let (short, long, lowered) = (2_i64, 5_i64, 3_i64);
    let mut ws = Workspace::with_sink(
        &cluster,
        "locked_chunks",
        "dedup",
        Some(&locked_sink(&moto, "chunklock", short as u32)),
    );
    ws.use_moto_credentials();
    ws.verify_on(&cluster);
    let first = ws.backup();
    client
        .batch_execute("UPDATE notes SET body = upper(body) WHERE id > 19000")
        .await
        .unwrap();
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&config.replace(&format!("days = {short}"), &format!("days = {long}")));
    let second = ws.backup();
    assert_eq!(second["object_lock"]["mode"], "governance", "{second:#}");

    let new_in_second = second["chunks"]["new_chunks"].as_u64().unwrap();
    let used_by_second = second["chunks"]["chunks"].as_u64().unwrap() as usize;
    let after_second = chunk_locks(&moto);
    assert!(new_in_second > 0 && (new_in_second as usize) < after_second.len());
    // Whole days left: long - 1 on the chunks the second backup stored (its lock),
    // 2 * long - 1 on those it reused (extended ahead by the lock's own length, under
    // a week), short - 1 on those only the first uses.
    let (stored_days, ahead_days, first_days) = (long - 1, 2 * long - 1, short - 1);
    let count = |locks: &BTreeMap<String, (String, i64)>, days: i64| {
        locks.values().filter(|(_, d)| *d == days).count()
    };
    // Chunks by whole days left, for the messages.
    let by_days = |locks: &BTreeMap<String, (String, i64)>| {
        locks
            .values()
            .fold(BTreeMap::<i64, usize>::new(), |mut m, (_, d)| {
                *m.entry(*d).or_default() += 1;
                m
            })
    };
    assert_eq!(
        count(&after_second, stored_days),
        new_in_second as usize,
        "{:?}",
        by_days(&after_second)
    );
    assert_eq!(
        count(&after_second, ahead_days),
        used_by_second - new_in_second as usize,
        "{:?}",
        by_days(&after_second)
    );
    assert_eq!(
        count(&after_second, first_days),
        after_second.len() - used_by_second,
        "{:?}",
        by_days(&after_second)
    );
    let first_id = first["backup_id"].as_str().unwrap();
    let out = ws.pgproof(&["verify", first_id]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The next night, nothing changed: the chunks extended ahead are asked nothing
    // (their lock dates stay to the second), those stored under the second's lock
    // are extended ahead now.
    let third = ws.backup();
    assert_eq!(third["chunks"]["new_chunks"], 0, "{third:#}");
    let after_third = chunk_locks(&moto);
    for (key, (until, days)) in &after_second {
        let (now_until, now_days) = &after_third[key];
        if *days == stored_days {
            assert_eq!(*now_days, ahead_days, "{key}: {:?}", by_days(&after_third));
        } else if *days == ahead_days {
            assert_eq!(now_until, until, "{key} was extended again");
        } else {
            assert_eq!(now_until, until, "{key} is not the third's");
        }
    }

    // A shorter lock later (days lowered): every chunk is locked longer already, so
    // nothing is asked, nothing a lenient store could take for a shortening.
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&config.replace(&format!("days = {long}"), &format!("days = {lowered}")));
    let fourth = ws.backup();
    assert_eq!(fourth["chunks"]["new_chunks"], 0, "{fourth:#}");
    assert_eq!(chunk_locks(&moto), after_third, "a chunk's lock changed");
}

/// Each chunk's key → its lock's retain-until date (as S3 shows it) and the whole
/// days left on it.
fn chunk_locks(moto: &pgproof_tests::moto::Moto) -> BTreeMap<String, (String, i64)> {
    boto(
        moto,
        "for o in s3.list_objects_v2(Bucket='chunklock', Prefix='pg/.chunks/')['Contents']:\n    u = s3.head_object(Bucket='chunklock', Key=o['Key'])['ObjectLockRetainUntilDate']\n    print(o['Key'], u.isoformat(), (u - datetime.datetime.now(datetime.timezone.utc)).days)",
    )
    .lines()
    .map(|line| {
        let mut parts = line.split(' ');
        let (key, until, days) = (parts.next(), parts.next(), parts.next());
        (
            key.unwrap().to_owned(),
            (until.unwrap().to_owned(), days.unwrap().parse().unwrap()),
        )
    })
    .collect()
}

//! Deduplicated directory dumps (`[dump] dedup = true`): nightly full backups that
//! store about what changed, each restoring exactly; shared chunks kept, pruned,
//! checked and copied for every backup that uses them; and a missing, damaged or
//! forged chunk failing exactly the backups that use it.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pgproof_core::Sink;
use pgproof_core::catalog::{Keyring, SignedSink, SigningKey};
use pgproof_core::ops::CopyBackups;
use pgproof_core::sink::{ByteStream, ObjectMeta, SinkExt};
use pgproof_sink_fs::FsSink;
use pgproof_tests::hooked::{Hooked, Hooks};
use pgproof_tests::{Workspace, connect, create_database, start_cluster, stderr};
use serde_json::Value;
use tokio_postgres::Client;

/// The shaped database's size: `scale` 1 is about 16 MB of rows (the events' 200,000,
/// the customers' 40,000).
fn shape(scale: u32) -> String {
    let (customers, events) = (40_000 * scale, 200_000 * scale);
    format!(
        "CREATE TABLE kinds (id int PRIMARY KEY, name text NOT NULL)
           WITH (autovacuum_enabled = off);
         INSERT INTO kinds SELECT g, 'kind ' || g FROM generate_series(1, 200) g;
         CREATE TABLE customers (id bigserial PRIMARY KEY, name text, email text,
                                 balance numeric, updated_at timestamptz)
           WITH (autovacuum_enabled = off);
         INSERT INTO customers (name, email, balance, updated_at)
           SELECT 'customer ' || g, 'c' || g || '@example.com', (g * 7) % 10000,
                  '2026-01-01'::timestamptz + g * interval '1 minute'
           FROM generate_series(1, {customers}) g;
         CREATE TABLE events (id bigserial PRIMARY KEY, customer_id bigint, kind int,
                              at timestamptz, payload text)
           WITH (autovacuum_enabled = off);
         INSERT INTO events (customer_id, kind, at, payload)
           SELECT (g * 31) % {customers} + 1, g % 200 + 1,
                  '2026-01-01'::timestamptz + g * interval '1 second',
                  md5(g::text) || ' ' || repeat('x', g % 40)
           FROM generate_series(1, {events}) g;"
    )
}

/// One night at `scale`: the oldest 1 % of events deleted and 1 % appended, 1 % of
/// customers updated (among the newest tenth), a few new customers, then VACUUM.
async fn night(client: &Client, n: u32, scale: u32) {
    let (customers, events) = (40_000 * scale, 200_000 * scale);
    let (churn, recent, new) = (events / 100, customers / 10, customers / 400);
    client
        .batch_execute(&format!(
            "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT {churn});
             INSERT INTO events (customer_id, kind, at, payload)
               SELECT (g * 17) % {customers} + 1, g % 200 + 1,
                      '2026-06-01'::timestamptz + ({n} * {churn} + g) * interval '1 second',
                      md5(({n} * {churn} + g)::text) || ' night {n}'
               FROM generate_series(1, {churn}) g;
             UPDATE customers SET balance = balance + {n}, updated_at = '2026-06-01'::timestamptz + {n} * interval '1 day'
               WHERE id IN (SELECT id FROM customers ORDER BY id DESC OFFSET {new} LIMIT {recent})
                 AND (id * 7 + {n}) % 10 = 0;
             INSERT INTO customers (name, email, balance, updated_at)
               SELECT 'customer n{n}-' || g, 'n{n}-' || g || '@example.com', 0,
                      '2026-06-01'::timestamptz
               FROM generate_series(1, {new}) g;"
        ))
        .await
        .unwrap();
    client.batch_execute("VACUUM ANALYZE").await.unwrap();
}

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no JSON ({e}): {}", stderr(out)))
}

/// The bytes of every file under the sink, but verification records.
fn stored_bytes(ws: &Workspace) -> u64 {
    ws.sink_files()
        .iter()
        .filter(|f| !f.contains("/verify/"))
        .map(|f| std::fs::metadata(ws.sink.join(f)).unwrap().len())
        .sum()
}

/// The chunk list a backup's manifest names, read from the sink with standard tools
/// (it is JSON compressed with zstd).
fn chunk_list(ws: &Workspace, manifest: &Value) -> Value {
    let key = manifest["chunks"]["list"]["key"]
        .as_str()
        .unwrap_or_else(|| panic!("no chunk list: {manifest:#}"));
    let stored = std::fs::read(ws.sink.join(key)).unwrap();
    serde_json::from_slice(&pgproof_tests::pipe_through("zstd", &["-d", "-c"], &stored)).unwrap()
}

/// The chunk keys a chunk list uses.
fn chunk_keys(database: &str, list: &Value) -> BTreeSet<String> {
    list["files"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["chunks"].as_array().unwrap())
        .map(|c| {
            format!(
                ".chunks/{database}/{}-{}",
                c["id"].as_str().unwrap(),
                c["stored_sha256"].as_str().unwrap()
            )
        })
        .collect()
}

/// Verifies one backup; returns the report and whether it passed.
fn verify(ws: &Workspace, id: &str) -> (Value, bool) {
    let out = ws.pgproof(&["verify", id, "--json"]);
    let reports = json_of(&out);
    (reports[0].clone(), out.status.success())
}

/// Ten nights of realistic churn: the deduplicated backups store in total at most
/// 1.3 times one full (not deduplicated) directory backup, every one of them
/// verifies, and after prune every kept backup is whole (check --read-data) and
/// still verifies, while the chunks only the pruned ones used are gone.
#[tokio::test]
async fn ten_nights_store_what_changed_and_every_backup_restores_exactly() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let client = create_database(&cluster, "shop").await;
    // 32 MB of rows cut into 64 KiB chunks: about as many chunks per byte of data as
    // the default 1 MiB gives a database of 500 MB (scripts/bench-dedup measures that
    // one), so the chunk lists weigh about the same against the data.
    let scale = 2;
    client.batch_execute(&shape(scale)).await.unwrap();
    client.batch_execute("VACUUM ANALYZE").await.unwrap();
    let ws = Workspace::new(&cluster, "shop", "dedup");
    ws.verify_on(&cluster);
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&config.replace("dedup_chunk_kib = 16", "dedup_chunk_kib = 64"));

    let mut manifests = Vec::new();
    for n in 1..=10 {
        if n > 1 {
            night(&client, n, scale).await;
        }
        manifests.push(ws.backup());
    }
    let total = stored_bytes(&ws);
    let lists: u64 = manifests
        .iter()
        .map(|m| m["chunks"]["list"]["stored_bytes"].as_u64().unwrap())
        .sum();
    let manifest_bytes: u64 = ws
        .sink_files()
        .iter()
        .filter(|f| f.ends_with("manifest.json"))
        .map(|f| std::fs::metadata(ws.sink.join(f)).unwrap().len())
        .sum();
    eprintln!("chunk lists {lists} bytes, manifests {manifest_bytes} bytes");
    let new_bytes: Vec<u64> = manifests
        .iter()
        .map(|m| m["chunks"]["new_bytes"].as_u64().unwrap())
        .collect();
    // The first night stores everything; each later one a small part of it.
    for (n, bytes) in new_bytes.iter().enumerate().skip(1) {
        assert!(
            *bytes * 10 < new_bytes[0],
            "night {} stored {bytes} new bytes of {}: {new_bytes:?}",
            n + 1,
            new_bytes[0]
        );
    }

    // One full backup of the last night, not deduplicated.
    let full = Workspace::new(&cluster, "shop", "directory");
    full.backup();
    let one_full = stored_bytes(&full);
    let ratio = total as f64 / one_full as f64;
    eprintln!(
        "10 nights: {total} bytes stored, one full directory backup {one_full}: {ratio:.2}x; new bytes per night {new_bytes:?}"
    );
    assert!(ratio <= 1.3, "{ratio:.2}x one full backup");

    for m in &manifests {
        let id = m["backup_id"].as_str().unwrap();
        let (report, passed) = verify(&ws, id);
        assert!(passed, "{id}: {report:#}");
    }

    // Keep the last three: the others go, with the chunks only they used.
    let lists: Vec<BTreeSet<String>> = manifests
        .iter()
        .map(|m| chunk_keys("shop", &chunk_list(&ws, m)))
        .collect();
    let kept: BTreeSet<&String> = lists[7..].iter().flatten().collect();
    let only_pruned: BTreeSet<&String> = lists[..7]
        .iter()
        .flatten()
        .filter(|k| !kept.contains(k))
        .collect();
    assert!(!only_pruned.is_empty());
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&format!("{config}\n[retention]\nkeep_last = 3\n"));
    let out = ws.pgproof(&["prune", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let decisions = json_of(&out);
    let swept: Vec<&Value> = decisions["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["action"] == "delete-chunks")
        .collect();
    assert_eq!(swept.len(), 1, "{decisions:#}");
    assert_eq!(
        swept[0]["detail"].as_u64().unwrap(),
        only_pruned.len() as u64,
        "{decisions:#}"
    );
    for key in &only_pruned {
        assert!(
            !ws.sink.join(key).exists(),
            "{key} outlived every backup using it"
        );
    }
    for key in &kept {
        assert!(
            ws.sink.join(key).exists(),
            "{key} was pruned while a kept backup uses it"
        );
    }
    let out = ws.pgproof(&["check", "--read-data", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let check = json_of(&out);
    assert_eq!(check["backups"], 3, "{check:#}");
    // Every chunk read once, however many backups share it.
    let chunk_bytes: u64 = kept
        .iter()
        .map(|k| std::fs::metadata(ws.sink.join(k)).unwrap().len())
        .sum();
    let read = check["bytes_read"].as_u64().unwrap();
    assert!(
        read >= chunk_bytes && read < chunk_bytes + chunk_bytes / 2,
        "read {read} bytes for {chunk_bytes} bytes of chunks"
    );
    let oldest_kept = manifests[7]["backup_id"].as_str().unwrap();
    let (report, passed) = verify(&ws, oldest_kept);
    assert!(passed, "{report:#}");
}

/// Three backups, the first two sharing a chunk the third does not use: that chunk
/// missing, damaged, or replaced by another real chunk (a valid encryption of other
/// rows) fails check and verify of exactly the first two, naming it, and nothing else.
#[tokio::test]
async fn a_bad_shared_chunk_fails_every_backup_that_uses_it_and_no_other() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let client = create_database(&cluster, "ledger").await;
    client
        .batch_execute(
            "CREATE TABLE old (id int PRIMARY KEY, note text);
             INSERT INTO old SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
             CREATE TABLE new (id int PRIMARY KEY, note text);
             INSERT INTO new SELECT g, md5((g * 3)::text) FROM generate_series(1, 20000) g;",
        )
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, "ledger", "dedup");
    ws.verify_on(&cluster);
    let first = ws.backup();
    client
        .batch_execute("UPDATE new SET note = note || '!' WHERE id % 100 = 0")
        .await
        .unwrap();
    let second = ws.backup();
    client
        .batch_execute("UPDATE old SET note = upper(note)")
        .await
        .unwrap();
    let third = ws.backup();
    let ids: Vec<&str> = [&first, &second, &third]
        .iter()
        .map(|m| m["backup_id"].as_str().unwrap())
        .collect();
    let lists: Vec<BTreeSet<String>> = [&first, &second, &third]
        .iter()
        .map(|m| chunk_keys("ledger", &chunk_list(&ws, m)))
        .collect();
    let victim = lists[0]
        .intersection(&lists[1])
        .find(|k| !lists[2].contains(*k))
        .expect("a chunk the first two backups share and the third does not")
        .clone();
    let other = lists[2]
        .iter()
        .find(|k| !lists[0].contains(*k) && !lists[1].contains(*k))
        .unwrap()
        .clone();
    let path = ws.sink.join(&victim);
    let original = std::fs::read(&path).unwrap();
    let mut damaged = original.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x10;
    let forged = std::fs::read(ws.sink.join(&other)).unwrap();

    for (how, bytes) in [
        ("missing", None),
        ("damaged", Some(damaged)),
        ("forged", Some(forged)),
    ] {
        let _ = std::fs::remove_file(&path);
        if let Some(bytes) = &bytes {
            std::fs::write(&path, bytes).unwrap();
        }
        let out = ws.pgproof(&["check", "--read-data", "--json"]);
        assert!(!out.status.success(), "{how}: check passed");
        let findings = json_of(&out)["findings"].clone();
        let named: BTreeSet<&str> = findings
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                assert!(
                    f["problem"].as_str().unwrap().contains(&victim),
                    "{how}: {f:#}"
                );
                f["backup_id"].as_str().unwrap()
            })
            .collect();
        assert_eq!(
            named,
            BTreeSet::from([ids[0], ids[1]]),
            "{how}: {findings:#}"
        );
        for (i, id) in ids.iter().enumerate() {
            let (report, passed) = verify(&ws, id);
            if i < 2 {
                assert!(!passed, "{how}: {id} verified with a {how} chunk");
                let archive = report["checks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["name"] == "archive")
                    .cloned()
                    .unwrap_or_else(|| panic!("{how}: {report:#}"));
                assert_eq!(archive["passed"], false, "{how}: {archive:#}");
                assert!(
                    archive["detail"].as_str().unwrap().contains(&victim),
                    "{how}: the chunk is not named: {archive:#}"
                );
            } else {
                assert!(passed, "{how}: {id} does not use the chunk: {report:#}");
            }
        }
        // A restore of a backup using it fails as damage (exit 3) and leaves no
        // database: missing, before one exists; damaged or forged, pg_restore killed
        // before it sees the file's end, in its single transaction.
        let out = ws.pgproof(&["restore", ids[0], "--target", &cluster.url("ledger_back")]);
        assert_eq!(out.status.code(), Some(3), "{how}: {}", stderr(&out));
        let left: i64 = connect(&cluster, "postgres")
            .await
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname = 'ledger_back'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "{how}: the failed restore left its database");
    }
    std::fs::write(&path, &original).unwrap();
    ws.pgproof_ok(&["check", "--read-data"]);

    // Every chunk gone: each backup's findings name twenty and count the rest.
    std::fs::remove_dir_all(ws.sink.join(".chunks")).unwrap();
    let out = ws.pgproof(&["check", "--json"]);
    assert!(!out.status.success(), "check passed without chunks");
    let findings = json_of(&out)["findings"].clone();
    for (id, list) in ids.iter().zip(&lists) {
        let of_it: Vec<&str> = findings
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["backup_id"] == *id)
            .map(|f| f["problem"].as_str().unwrap())
            .collect();
        assert!(list.len() > 21, "{} chunks: too few to count", list.len());
        assert_eq!(of_it.len(), 21, "{id}: {of_it:#?}");
        assert!(
            of_it[20].contains(&format!("and {} more", list.len() - 20)),
            "{id}: {}",
            of_it[20]
        );
    }
}

/// A chunk no backup lists is deleted by prune, unless a backup of the database is
/// under way (it may be that backup's); copy takes a backup's chunks to a second sink,
/// and the next copy only the chunks that sink lacks.
#[tokio::test]
async fn prune_spares_chunks_of_a_backup_under_way_and_copy_brings_what_is_missing() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let (client, ws) = people(&cluster, 30000).await;
    ws.verify_on(&cluster);
    let first = ws.backup();
    let config = std::fs::read_to_string(&ws.config).unwrap();
    let replica = ws.dir.path().join("replica");
    ws.write_config(&format!(
        "{config}\n[retention]\nkeep_last = 5\n\n[[replicas]]\nurl = \"file://{}\"\n",
        replica.display()
    ));

    // A chunk left by a run that died, and a backup that has started since.
    let stray = format!(".chunks/crm/{}-{}", "ab".repeat(32), "cd".repeat(32));
    std::fs::write(ws.sink.join(&stray), b"left by a run that died").unwrap();
    let now = jiff::Timestamp::now();
    let under_way = format!(
        "crm/{}-beef/dump/chunks.pending",
        now.strftime("%Y%m%dT%H%M%S%.3fZ")
    );
    std::fs::create_dir_all(ws.sink.join(&under_way).parent().unwrap()).unwrap();
    std::fs::write(ws.sink.join(&under_way), b"").unwrap();
    let out = ws.pgproof(&["prune", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let decisions = json_of(&out);
    assert!(
        decisions["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["action"] == "keep-chunks"
                && d["detail"].as_str().unwrap().contains("no manifest")),
        "{decisions:#}"
    );
    assert!(
        ws.sink.join(&stray).exists(),
        "a chunk of a backup under way was pruned"
    );
    std::fs::remove_dir_all(ws.sink.join(&under_way).parent().unwrap().parent().unwrap()).unwrap();
    let out = ws.pgproof(&["prune", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !ws.sink.join(&stray).exists(),
        "an unused chunk outlived prune"
    );

    // Copy: the backup and its chunks, verified at the other end.
    let to = format!("file://{}", replica.display());
    let out = ws.pgproof(&["copy", "--to", &to, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first_copy = json_of(&out)["bytes"].as_u64().unwrap();
    for key in chunk_keys("crm", &chunk_list(&ws, &first)) {
        assert!(replica.join(&key).exists(), "{key} was not copied");
    }
    client
        .batch_execute("UPDATE people SET name = upper(name) WHERE id % 1000 = 0")
        .await
        .unwrap();
    ws.backup();
    let out = ws.pgproof(&["copy", "--to", &to, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let second_copy = json_of(&out)["bytes"].as_u64().unwrap();
    assert!(
        second_copy * 4 < first_copy,
        "the second copy moved {second_copy} bytes, the first {first_copy}"
    );
    let there = Workspace::new(&cluster, "crm", "dedup");
    there.verify_on(&cluster);
    let config = std::fs::read_to_string(&ws.config).unwrap();
    let sink_line = format!("url = \"file://{}\"", ws.sink.display());
    there.write_config(&config.replacen(&sink_line, &format!("url = \"{to}\""), 1));
    let (report, passed) = verify(&there, "latest");
    assert!(passed, "{report:#}");
    there.pgproof_ok(&["check", "--read-data"]);
}

/// dedup is the directory format's with pgproof's zstd, encrypted, keyed by the signing
/// key: other combinations are refused with the setting that fixes them.
#[tokio::test]
async fn dedup_needs_the_directory_format_encryption_and_a_signing_key() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    connect(&cluster, "postgres").await;
    let ws = Workspace::new(&cluster, "postgres", "dedup");
    let config = std::fs::read_to_string(&ws.config).unwrap();
    let signing = format!("key_file = \"{}\"", ws.signing_key.display());
    let refused = [
        (
            config.replace("format = \"directory\"", "format = \"custom\""),
            "dump.format = \"directory\"",
        ),
        (
            config.replace("dedup = true", "dedup = true\ncompression = \"pg-dump\""),
            "dump.compression = \"zstd\"",
        ),
        (
            config.replace("dedup_chunk_kib = 16", "dedup_chunk_kib = 2"),
            "dump.dedup_chunk_kib",
        ),
        (
            format!(
                "{}\n[trust]\nkeys = [\"{}\"]\n",
                config.replace(&signing, ""),
                ws.signing_public
            ),
            "signing.key_file",
        ),
        (
            config.replace("[encryption]\n", "[encryption]\nenabled = false\n"),
            "dump.dedup needs encryption",
        ),
    ];
    for (config, setting) in refused {
        ws.write_config(&config);
        let out = ws.pgproof(&["backup"]);
        assert!(!out.status.success(), "passed without {setting}");
        assert!(stderr(&out).contains(setting), "{}", stderr(&out));
    }
    assert_eq!(
        chunks_of(&ws, "postgres"),
        0,
        "a refused backup stored chunks"
    );
}

/// A database `crm` with `rows` people (a few chunks of 16 KiB each per 1,000 rows),
/// and a workspace taking deduplicated backups of it.
async fn people(
    cluster: &pgproof_core::scratch::EphemeralCluster,
    rows: u32,
) -> (Client, Workspace) {
    let client = create_database(cluster, "crm").await;
    client
        .batch_execute(&format!(
            "CREATE TABLE people (id int PRIMARY KEY, name text);
             INSERT INTO people SELECT g, md5(g::text) FROM generate_series(1, {rows}) g;"
        ))
        .await
        .unwrap();
    (client, Workspace::new(cluster, "crm", "dedup"))
}

/// Whether the sink holds any chunk of `database`.
fn chunks_of(ws: &Workspace, database: &str) -> usize {
    ws.sink_files()
        .iter()
        .filter(|f| f.starts_with(&format!(".chunks/{database}/")) && !f.contains(".tmp-"))
        .count()
}

/// Starts a backup and waits until it has stored chunks.
fn backup_storing_chunks(ws: &Workspace, database: &str) -> std::process::Child {
    let mut child = ws
        .command(&["backup"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while chunks_of(ws, database) < 20 {
        assert!(std::time::Instant::now() < deadline, "no chunk was stored");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended first"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child
}

/// A deduplicated backup stopped by SIGTERM takes its chunks and its marker with it; one
/// killed by SIGKILL leaves them, and prune keeps its chunks (it may be under way)
/// until the orphan grace has passed, then deletes the dead run and its chunks.
#[tokio::test]
async fn a_stopped_backup_takes_its_chunks_and_a_killed_ones_are_pruned_after_the_grace() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    pgproof_tests::create_big_database(&cluster, "bulky", 96).await;
    let ws = Workspace::new(&cluster, "bulky", "dedup");
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&format!(
        "{}\n[retention]\nkeep_last = 3\n",
        config.replace("[dump]\n", "[dump]\njobs = 1\n")
    ));

    let child = backup_storing_chunks(&ws, "bulky");
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{}", stderr(&out));
    assert_eq!(chunks_of(&ws, "bulky"), 0, "{:?}", ws.sink_files());
    let left: Vec<String> = ws
        .sink_files()
        .into_iter()
        .filter(|f| !f.contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "a stopped backup left {left:?}");

    let mut child = backup_storing_chunks(&ws, "bulky");
    child.kill().unwrap();
    let _ = child.wait_with_output();
    let left = chunks_of(&ws, "bulky");
    assert!(left >= 20);
    assert!(
        ws.sink_files()
            .iter()
            .any(|f| f.ends_with("/chunks.pending")),
        "{:?}",
        ws.sink_files()
    );
    let out = ws.pgproof(&["prune", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        chunks_of(&ws, "bulky"),
        left,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let later = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(72)).to_string();
    let out = ws.pgproof_at(&later, &["prune", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let decisions = json_of(&out);
    let actions: BTreeSet<&str> = decisions["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        BTreeSet::from(["delete-orphan", "delete-chunks"]),
        "{decisions:#}"
    );
    // A put SIGKILL cut short may leave the file sink's temporary file: a listing
    // removes it once it has been idle 15 minutes (sink-fs), not counted here.
    let left: Vec<String> = ws
        .sink_files()
        .into_iter()
        .filter(|f| !f.contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// scripts/unchunk puts a deduplicated backup back together with age, zstd, jq and
/// sha256sum alone, into the directory pg_dump wrote: pg_restore reads it, and a
/// chunk changed on the way stops it.
#[tokio::test]
async fn a_deduplicated_backup_is_put_back_together_with_standard_tools() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let client = create_database(&cluster, "notes").await;
    client
        .batch_execute(
            "CREATE TABLE note (id int PRIMARY KEY, body text);
             INSERT INTO note SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 5000) g;
             CREATE TABLE empty (id int);",
        )
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, "notes", "dedup");
    let manifest = ws.backup();
    let backup = format!("notes/{}", manifest["backup_id"].as_str().unwrap());
    let unchunk = |out: &std::path::Path| {
        std::process::Command::new("scripts/unchunk")
            .current_dir(env!("CARGO_MANIFEST_DIR").to_owned() + "/..")
            .arg(&ws.sink)
            .arg(&backup)
            .arg(&ws.key)
            .arg(out)
            .output()
            .unwrap()
    };
    let out_dir = ws.dir.path().join("by-hand");
    let out = unchunk(&out_dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let list = chunk_list(&ws, &manifest);
    for file in list["files"].as_array().unwrap() {
        let name = file["name"].as_str().unwrap();
        let len = std::fs::metadata(out_dir.join(name)).unwrap().len();
        assert_eq!(len, file["raw_bytes"].as_u64().unwrap(), "{name}");
    }
    let listing = std::process::Command::new(cluster.tools().bin("pg_restore"))
        .arg("--list")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(listing.status.success(), "{}", stderr(&listing));
    assert!(String::from_utf8_lossy(&listing.stdout).contains("TABLE DATA public note"));

    let victim = chunk_keys("notes", &list).into_iter().next().unwrap();
    let path = ws.sink.join(&victim);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let again = ws.dir.path().join("again");
    let out = unchunk(&again);
    assert!(!out.status.success(), "a changed chunk went through");
    assert!(stderr(&out).contains(&victim), "{}", stderr(&out));
    assert!(
        !again.exists(),
        "unchecked plaintext was left in {}",
        again.display()
    );
}

/// A backup encrypted to a new age key (a rotation) reuses no chunk the previous one
/// stored for the old key: every chunk it names opens with the new key alone.
#[tokio::test]
async fn after_a_key_rotation_no_chunk_of_the_old_key_is_reused() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let client = create_database(&cluster, "rotated").await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, body text);
             INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g;",
        )
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, "rotated", "dedup");
    ws.verify_on(&cluster);
    let first = ws.backup();
    assert_eq!(first["chunks"]["new_chunks"], first["chunks"]["chunks"]);
    let again = ws.backup();
    assert_eq!(again["chunks"]["new_chunks"], 0, "{again:#}");

    let new_key = ws.dir.path().join("new-age.key");
    let out = std::process::Command::new(pgproof_tests::pgproof_bin())
        .args(["keygen", "--output", new_key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let new_public = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(
        &config
            .replace(&ws.public_key, &new_public)
            .replace(ws.key.to_str().unwrap(), new_key.to_str().unwrap()),
    );
    let rotated = ws.backup();
    assert_eq!(
        rotated["chunks"]["new_chunks"], rotated["chunks"]["chunks"],
        "chunks of the old key were reused: {rotated:#}"
    );
    let (report, passed) = verify(&ws, rotated["backup_id"].as_str().unwrap());
    assert!(passed, "{report:#}");
}

/// A destination for copy that counts reads of chunks and, once a copy has listed the
/// chunks there, stores `planted` (key, bytes) as if another copy had stored them
/// meanwhile.
#[derive(Debug)]
struct CopyDestination {
    chunk_reads: AtomicUsize,
    planted: Mutex<Vec<(String, Vec<u8>)>>,
}

#[async_trait]
impl Hooks for CopyDestination {
    async fn get(&self, inner: &dyn Sink, key: &str) -> pgproof_core::Result<ByteStream> {
        if key.starts_with(".chunks/") {
            self.chunk_reads.fetch_add(1, Ordering::SeqCst);
        }
        inner.get(key).await
    }
    async fn list(&self, inner: &dyn Sink, prefix: &str) -> pgproof_core::Result<Vec<ObjectMeta>> {
        let listed = inner.list(prefix).await?;
        if prefix.starts_with(".chunks/") {
            let planted = std::mem::take(&mut *self.planted.lock().unwrap());
            for (key, bytes) in planted {
                inner.put_bytes(&key, bytes.into()).await?;
            }
        }
        Ok(listed)
    }
}

/// copy streams the chunks the destination lacks without reading the destination
/// first (one request a chunk, not two), and takes the chunks the destination's newest
/// backup vouches for without reading them; a chunk found there that nothing vouches
/// for (planted before the copy, or stored between copy's listing and its upload) is
/// read, and kept when it is the same and replaced when it is not, so the copy lands
/// whole.
#[tokio::test]
async fn copy_reads_no_chunk_it_lacks_and_takes_in_one_that_appeared_meanwhile() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let (client, ws) = people(&cluster, 30000).await;
    let manifest = ws.backup();
    let keys: Vec<String> = chunk_keys("crm", &chunk_list(&ws, &manifest))
        .into_iter()
        .collect();
    assert!(keys.len() >= 4, "{} chunks", keys.len());
    let keyring = || Keyring::new(Some(SigningKey::load(&ws.signing_key).unwrap()), Vec::new());
    let source: Arc<dyn Sink> =
        Arc::new(SignedSink::new(Arc::new(FsSink::new(&ws.sink)), keyring()));
    let copy_to = |dir: &std::path::Path, planted| {
        std::fs::create_dir_all(dir).unwrap();
        Arc::new(Hooked {
            inner: Arc::new(SignedSink::new(Arc::new(FsSink::new(dir)), keyring())),
            hooks: CopyDestination {
                chunk_reads: AtomicUsize::new(0),
                planted: Mutex::new(planted),
            },
        })
    };
    let same_as_source = |dir: &std::path::Path| {
        for key in &keys {
            assert_eq!(
                std::fs::read(dir.join(key)).ok(),
                Some(std::fs::read(ws.sink.join(key)).unwrap()),
                "{key} at the destination"
            );
        }
    };

    let clean = ws.dir.path().join("clean");
    let to = copy_to(&clean, Vec::new());
    let outcome = CopyBackups::new(source.clone(), to.clone())
        .run()
        .await
        .unwrap();
    assert_eq!(outcome.copied.len(), 1, "{:?}", outcome.failed);
    assert_eq!(
        to.hooks.chunk_reads.load(Ordering::SeqCst),
        0,
        "chunks read back"
    );
    same_as_source(&clean);

    // The next night: what the first backup (the destination's newest) vouches for is
    // taken unread.
    client
        .batch_execute("UPDATE people SET name = upper(name) WHERE id % 1000 = 0")
        .await
        .unwrap();
    let second = ws.backup();
    let outcome = CopyBackups::new(source.clone(), to.clone())
        .run()
        .await
        .unwrap();
    assert_eq!(outcome.copied.len(), 1, "{:?}", outcome.failed);
    assert_eq!(
        to.hooks.chunk_reads.load(Ordering::SeqCst),
        0,
        "chunks read back"
    );
    for key in chunk_keys("crm", &chunk_list(&ws, &second)) {
        assert!(clean.join(&key).exists(), "{key} was not copied");
    }
    let first_only = || Some(manifest["backup_id"].as_str().unwrap().to_owned());

    let raced = ws.dir.path().join("raced");
    let planted = vec![
        (
            keys[0].clone(),
            std::fs::read(ws.sink.join(&keys[0])).unwrap(),
        ),
        (keys[1].clone(), b"another copy's torn chunk".to_vec()),
    ];
    let to = copy_to(&raced, planted);
    let outcome = CopyBackups::new(source.clone(), to.clone())
        .backup(first_only())
        .run()
        .await
        .unwrap();
    assert_eq!(outcome.copied.len(), 1, "{:?}", outcome.failed);
    assert_eq!(
        to.hooks.chunk_reads.load(Ordering::SeqCst),
        2,
        "chunks read back"
    );
    same_as_source(&raced);

    // Planted before the copy, at a chunk's key and size: read, and replaced.
    let planted = ws.dir.path().join("planted");
    let victim = planted.join(&keys[2]);
    std::fs::create_dir_all(victim.parent().unwrap()).unwrap();
    let size = std::fs::metadata(ws.sink.join(&keys[2])).unwrap().len() as usize;
    std::fs::write(&victim, vec![b'x'; size]).unwrap();
    let to = copy_to(&planted, Vec::new());
    let outcome = CopyBackups::new(source.clone(), to.clone())
        .backup(first_only())
        .run()
        .await
        .unwrap();
    assert_eq!(outcome.copied.len(), 1, "{:?}", outcome.failed);
    assert_eq!(
        to.hooks.chunk_reads.load(Ordering::SeqCst),
        1,
        "chunks read back"
    );
    same_as_source(&planted);

    // A source chunk grown past its listed size: the copy stops sending it there.
    let grown = ws.sink.join(&keys[3]);
    let mut bytes = std::fs::read(&grown).unwrap();
    bytes.extend(vec![0; 4 << 20]);
    std::fs::remove_file(&grown).unwrap();
    std::fs::write(&grown, bytes).unwrap();
    let oversized = ws.dir.path().join("oversized");
    let to = copy_to(&oversized, Vec::new());
    let outcome = CopyBackups::new(source, to.clone())
        .backup(first_only())
        .run()
        .await
        .unwrap();
    assert!(outcome.copied.is_empty(), "{outcome:?}");
    assert!(
        outcome.failed.len() == 1 && outcome.failed[0].contains("longer than"),
        "{:?}",
        outcome.failed
    );
    assert!(
        !oversized.join(&keys[3]).exists(),
        "a grown chunk was copied"
    );
}

/// A backup that fails after its dump is stored (here: a file set whose path is gone)
/// leaves no directory behind, its chunk list included, so nothing keeps the next
/// prune from sweeping the chunks only it stored.
#[tokio::test]
async fn a_backup_failing_after_its_dump_leaves_no_list_and_its_chunks_are_swept() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let (_, ws) = people(&cluster, 20000).await;
    let config = std::fs::read_to_string(&ws.config).unwrap();
    let gone = ws.dir.path().join("gone");
    ws.write_config(&format!(
        "{config}\n[retention]\nkeep_last = 3\n\n[[files]]\nname = \"etc\"\npaths = [\"{}\"]\n",
        gone.display()
    ));
    let out = ws.pgproof(&["backup"]);
    assert!(
        !out.status.success(),
        "a backup with a missing file set passed"
    );
    assert!(stderr(&out).contains("gone"), "{}", stderr(&out));
    let left: Vec<String> = ws
        .sink_files()
        .into_iter()
        .filter(|f| f.starts_with("crm/"))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "left in the backup's directory");
    assert!(chunks_of(&ws, "crm") > 0, "the dump stored no chunk");
    ws.pgproof_ok(&["prune"]);
    assert_eq!(
        chunks_of(&ws, "crm"),
        0,
        "chunks no backup uses outlived prune"
    );
}

/// A chunk replaced in the sink by another object of the same size is not reused by
/// the next backup (the sink lists it with another identity than the list recorded):
/// that backup stores it anew and restores exactly, and only the backup before it
/// keeps the bad chunk, named by check.
#[tokio::test]
async fn a_chunk_replaced_at_its_size_is_not_reused_by_the_next_backup() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let (_, ws) = people(&cluster, 20000).await;
    ws.verify_on(&cluster);
    let first = ws.backup();
    let list = chunk_list(&ws, &first);
    assert!(
        list["files"][0]["chunks"][0]["identity"].is_string(),
        "no identity recorded: {list:#}"
    );
    let victim = chunk_keys("crm", &list).into_iter().next().unwrap();
    let path = ws.sink.join(&victim);
    let size = std::fs::metadata(&path).unwrap().len() as usize;
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, vec![b'x'; size]).unwrap();

    let second = ws.backup();
    let id = second["backup_id"].as_str().unwrap();
    assert!(
        !chunk_keys("crm", &chunk_list(&ws, &second)).contains(&victim),
        "the replaced chunk was reused"
    );
    let (report, passed) = verify(&ws, id);
    assert!(passed, "{report:#}");
    let out = ws.pgproof(&["check", "--read-data", "--json"]);
    assert!(!out.status.success(), "check passed with a replaced chunk");
    let findings = json_of(&out)["findings"].clone();
    let named: BTreeSet<&str> = findings
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["backup_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        named,
        BTreeSet::from([first["backup_id"].as_str().unwrap()]),
        "{findings:#}"
    );
}

/// A backup whose chunk list is gone is one finding of check, naming the list: the
/// list is one of the backup's objects, and its chunks are not a second finding.
#[tokio::test]
async fn a_missing_chunk_list_is_one_finding() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let (_, ws) = people(&cluster, 5000).await;
    let manifest = ws.backup();
    let key = manifest["chunks"]["list"]["key"].as_str().unwrap();
    std::fs::remove_file(ws.sink.join(key)).unwrap();
    let out = ws.pgproof(&["check", "--json"]);
    assert!(!out.status.success(), "check passed without the chunk list");
    let findings = json_of(&out)["findings"].clone();
    let findings = findings.as_array().unwrap();
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert!(
        findings[0]["problem"].as_str().unwrap().contains(key),
        "{findings:#?}"
    );
}

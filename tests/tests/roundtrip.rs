//! Backup and restore round trips through the CLI on a real PostgreSQL.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::Command;

use pgproof_core::evidence::fingerprint::{Fingerprint, TableFingerprint};
use pgproof_tests::{
    Workspace, connect, create_sample_database, database_exists, missing_service, start_cluster,
    stderr, table_summary,
};
use sha2::{Digest, Sha256};

async fn round_trip(format: &str) {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let source = create_sample_database(&cluster, "app").await;
    let before = table_summary(&source).await;
    assert!(
        before["public.kinds"].0 > 5000,
        "sample data loaded: {before:?}"
    );
    assert_eq!(before["<large objects>"].0, 2);

    // Another session's temporary table and sequence must not trouble the backup.
    let other_session = connect(&cluster, "app").await;
    other_session
        .batch_execute("CREATE TEMP TABLE scratch (id serial)")
        .await
        .unwrap();

    let ws = Workspace::new(&cluster, "app", format);
    let manifest = ws.backup();
    assert_eq!(manifest["format"], format);
    assert_eq!(manifest["database"], "app");
    assert_eq!(
        manifest["encryption"]["recipients"][0],
        ws.public_key.as_str()
    );
    // Custom dumps are compressed by pgproof with zstd by default.
    let expected_codecs: &[&str] = if format == "plain" {
        &["gzip", "age"]
    } else {
        &["zstd", "age"]
    };
    assert_eq!(manifest["codecs"], serde_json::json!(expected_codecs));

    let listed: serde_json::Value =
        serde_json::from_str(&ws.pgproof_ok(&["list", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["backup_id"], manifest["backup_id"]);

    let target = cluster.url("app_restored");
    let out = ws.pgproof_ok(&["restore", "latest", "--target", &target, "--json"]);
    let outcome: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(outcome["created"], true);
    // A directory archive's bytes are its table of contents' and its other files'.
    let parts = manifest["parts"].as_array().cloned().unwrap_or_default();
    let raw_bytes: u64 = std::iter::once(&manifest["object"])
        .chain(&parts)
        .map(|o| o["raw_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(outcome["raw_bytes"], raw_bytes);
    assert_eq!(parts.is_empty(), format != "directory", "{manifest:#}");

    let restored = connect(&cluster, "app_restored").await;
    let after = table_summary(&restored).await;
    assert_eq!(before, after, "restored tables differ from the source");
    let seq: i64 = restored
        .query_one("SELECT last_value FROM counter", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seq, 42);
    let view: i64 = restored
        .query_one("SELECT * FROM kinds_count", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(view, before["public.kinds"].0);

    // A second backup links to the first by id and manifest hash.
    let second = ws.backup();
    let first_manifest = std::fs::read_to_string(ws.sink.join(format!(
        "app/{}/manifest.json",
        manifest["backup_id"].as_str().unwrap()
    )))
    .unwrap();
    assert_eq!(second["previous"]["backup_id"], manifest["backup_id"]);
    // The link hashes the signed content, the signature aside.
    let (payload, signature) = pgproof_tests::split_signed(&first_manifest);
    assert!(
        signature.starts_with("-----BEGIN SSH SIGNATURE-----"),
        "{first_manifest}"
    );
    assert_eq!(
        second["previous"]["manifest_sha256"],
        hex::encode(Sha256::digest(payload.as_bytes()))
    );

    // Restoring over the now non-empty database needs --clean.
    let refused = ws.pgproof(&["restore", "latest", "--target", &target]);
    assert!(!refused.status.success());
    assert!(
        pgproof_tests::stderr(&refused).contains("--clean"),
        "{}",
        pgproof_tests::stderr(&refused)
    );
    ws.pgproof_ok(&["restore", "latest", "--target", &target, "--clean"]);
    assert_eq!(
        table_summary(&connect(&cluster, "app_restored").await).await,
        before
    );
    assert!(database_exists(&cluster, "app_restored").await);

    // backup --verify proves the new backup at once (in an ephemeral cluster).
    let out = ws.pgproof_ok(&["backup", "--verify"]);
    assert!(out.lines().any(|l| l.starts_with("PASS ")), "{out}");
    let out = ws.pgproof_ok(&["backup", "--verify", "--json"]);
    let both: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(both["reports"][0]["passed"], true);
    assert_eq!(
        both["reports"][0]["backup_id"],
        both["backups"][0]["backup_id"]
    );
    drop(other_session);
}

#[tokio::test]
async fn custom_format_round_trip() {
    round_trip("custom").await;
}

#[tokio::test]
async fn plain_format_round_trip() {
    round_trip("plain").await;
}

#[tokio::test]
async fn directory_format_round_trip() {
    round_trip("directory").await;
}

/// A directory archive is one object per file pg_dump wrote, each readable with
/// standard tools (`age -d`, `zstd -d`, then `pg_restore` on the directory); a damaged
/// file fails verification and costs no database.
#[tokio::test]
async fn directory_archives_are_one_object_per_file() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let source = create_sample_database(&cluster, "dapp").await;
    let before = table_summary(&source).await;
    let ws = Workspace::new(&cluster, "dapp", "directory");
    ws.verify_on(&cluster);
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&config.replace("[dump]\n", "[dump]\njobs = 2\n"));
    let manifest = ws.backup();
    let toc_key = manifest["object"]["key"].as_str().unwrap();
    assert!(toc_key.ends_with("/dump/toc.dat.zst.age"), "{toc_key}");
    let parts = manifest["parts"].as_array().unwrap();
    // Every table with rows, and the large objects.
    assert!(parts.len() >= 4, "{parts:#?}");

    let by_hand = ws.dir.path().join("by-hand");
    std::fs::create_dir(&by_hand).unwrap();
    for object in std::iter::once(&manifest["object"]).chain(parts) {
        let key = object["key"].as_str().unwrap();
        let file = open_by_hand(&ws, key);
        assert_eq!(file.len() as u64, object["raw_bytes"].as_u64().unwrap());
        let name = key.rsplit('/').next().unwrap().trim_end_matches(".zst.age");
        std::fs::write(by_hand.join(name), file).unwrap();
    }
    let listing = Command::new(cluster.tools().bin("pg_restore"))
        .arg("--list")
        .arg(&by_hand)
        .output()
        .unwrap();
    assert!(listing.status.success(), "{}", stderr(&listing));
    assert!(String::from_utf8_lossy(&listing.stdout).contains("TABLE DATA public kinds"));

    let out = ws.pgproof(&["verify", "latest"]);
    assert!(out.status.success(), "{}", stderr(&out));
    ws.pgproof_ok(&["restore", "latest", "--target", &cluster.url("dapp_back")]);
    assert_eq!(
        table_summary(&connect(&cluster, "dapp_back").await).await,
        before
    );
    // Several transactions: never into a database pgproof did not create, even empty.
    pgproof_tests::create_database(&cluster, "dapp_empty").await;
    let refused = ws.pgproof(&["restore", "latest", "--target", &cluster.url("dapp_empty")]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("--clean"), "{}", stderr(&refused));
    assert!(database_exists(&cluster, "dapp_empty").await);

    // One byte of the largest table's file flipped.
    let largest = parts
        .iter()
        .max_by_key(|o| o["stored_bytes"].as_u64().unwrap())
        .unwrap()["key"]
        .as_str()
        .unwrap();
    let path = ws.sink.join(largest);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    let out = ws.pgproof(&["verify", "latest", "--json"]);
    assert!(!out.status.success());
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let archive = reports[0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "archive")
        .cloned()
        .unwrap();
    assert_eq!(archive["passed"], false, "{archive:#}");
    let refused = ws.pgproof(&["restore", "latest", "--target", &cluster.url("dapp_again")]);
    assert!(!refused.status.success());
    assert!(!database_exists(&cluster, "dapp_again").await);
    let left: i64 = connect(&cluster, "postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgproof%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "a scratch database was left behind");
}

/// The stored object is standard age ciphertext: the reference `age` tool opens it
/// with the identity pgproof wrote, and the plaintext is exactly the dump pgproof hashed.
#[tokio::test]
async fn stored_object_opens_with_the_reference_age_tool() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_sample_database(&cluster, "app").await;
    for format in ["custom", "plain"] {
        let ws = Workspace::new(&cluster, "app", format);
        let manifest = ws.backup();
        let object = ws.sink.join(manifest["object"]["key"].as_str().unwrap());
        let stored = std::fs::read(&object).unwrap();
        assert!(
            stored.starts_with(b"age-encryption.org/v1\n"),
            "not an age file"
        );
        assert_eq!(
            manifest["object"]["stored_sha256"],
            hex::encode(Sha256::digest(&stored))
        );

        let Ok(out) = Command::new("age")
            .arg("--decrypt")
            .arg("--identity")
            .arg(&ws.key)
            .arg(&object)
            .output()
        else {
            missing_service("the reference age tool (Debian package age)");
            return;
        };
        assert!(
            out.status.success(),
            "age -d failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut plain = out.stdout;
        if format == "plain" {
            let mut gunzip = Vec::new();
            std::io::Read::read_to_end(&mut system_gunzip(&plain), &mut gunzip).unwrap();
            plain = gunzip;
            assert!(String::from_utf8_lossy(&plain).contains("CREATE TABLE public.kinds"));
        } else {
            // Custom dumps are zstd-compressed by pgproof (the default).
            plain = system_filter("zstd", &["-dc"], &plain);
            assert!(
                plain.starts_with(b"PGDMP"),
                "custom archives start with PGDMP"
            );
        }
        assert_eq!(
            manifest["object"]["raw_sha256"],
            hex::encode(Sha256::digest(&plain))
        );
        assert_eq!(manifest["object"]["raw_bytes"], plain.len() as u64);
    }
}

/// Runs `data` through a system program, so the check does not reuse pgproof's own
/// codec.
fn system_filter(program: &str, args: &[&str], data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} available (scripts/setup --tests): {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{program} {args:?} failed");
    out.stdout
}

/// gunzip through the system's gzip, so the check does not reuse pgproof's own codec.
fn system_gunzip(data: &[u8]) -> std::io::Cursor<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip available");
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "gzip -d failed");
    std::io::Cursor::new(out.stdout)
}

/// A stored zstd object opened with the standard tools: `age -d`, then `zstd -dc`.
fn open_by_hand(ws: &Workspace, key: &str) -> Vec<u8> {
    let decrypted = Command::new("age")
        .args(["-d", "-i", ws.key.to_str().unwrap()])
        .arg(ws.sink.join(key))
        .output()
        .unwrap();
    assert!(decrypted.status.success(), "{}", stderr(&decrypted));
    system_filter("zstd", &["-dc"], &decrypted.stdout)
}

/// dump.compression = "zstd" (the default): pg_dump writes an uncompressed custom archive, pgproof
/// compresses it with zstd; the codec is recorded, restore and verify invert it, and
/// the stored object opens with standard tools (age, then any zstd decoder, then
/// pg_restore).
#[tokio::test]
async fn zstd_compressed_custom_dumps_round_trip() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let source = create_sample_database(&cluster, "zapp").await;
    let before = table_summary(&source).await;
    let ws = Workspace::new(&cluster, "zapp", "custom");
    ws.verify_on(&cluster);
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&config.replace(
        "[dump]\n",
        "[dump]\ncompression = \"zstd\"\nzstd_level = 5\n",
    ));
    let manifest = ws.backup();
    assert_eq!(manifest["codecs"], serde_json::json!(["zstd", "age"]));
    let key = manifest["object"]["key"].as_str().unwrap();
    assert!(key.ends_with("dump.pgc.zst.age"), "{key}");
    // pg_dump did not compress: the archive is much larger than what is stored.
    let raw = manifest["object"]["raw_bytes"].as_u64().unwrap();
    let stored = manifest["object"]["stored_bytes"].as_u64().unwrap();
    assert!(raw > 3 * stored, "raw {raw}, stored {stored}");

    let out = ws.pgproof(&["verify", "latest"]);
    assert!(out.status.success(), "{}", stderr(&out));
    ws.pgproof_ok(&["restore", "latest", "--target", &cluster.url("zapp_back")]);
    let after = table_summary(&connect(&cluster, "zapp_back").await).await;
    assert_eq!(before, after);

    // By hand: age -d, a zstd decoder, pg_restore --list.
    let archive = open_by_hand(&ws, key);
    assert_eq!(archive.len() as u64, raw);
    let file = ws.dir.path().join("dump.pgc");
    std::fs::write(&file, &archive).unwrap();
    let listing = Command::new(cluster.tools().bin("pg_restore"))
        .arg("--list")
        .arg(&file)
        .output()
        .unwrap();
    assert!(listing.status.success());
    assert!(String::from_utf8_lossy(&listing.stdout).contains("TABLE DATA public kinds"));
}

/// A directory dump of many tables and large objects with more jobs than cores: every
/// file pg_dump holds open at once has a reader, nothing waits on a paused dump, and
/// the backup verifies and restores whole.
#[tokio::test]
async fn directory_dumps_of_many_tables_with_more_jobs_than_cores() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let source = pgproof_tests::create_database(&cluster, "many").await;
    source
        .batch_execute(
            "DO $$ BEGIN
               FOR i IN 1..150 LOOP
                 EXECUTE format('CREATE TABLE t%s AS SELECT g AS id, md5((g * %s)::text) AS note
                                 FROM generate_series(1, %s) g', i, i, 50 + i * 20);
               END LOOP;
               FOR i IN 1..40 LOOP
                 PERFORM lo_from_bytea(0, convert_to(repeat(md5(i::text), 100 * i), 'UTF8'));
               END LOOP;
             END $$;",
        )
        .await
        .unwrap();
    let before = table_summary(&source).await;
    let ws = Workspace::new(&cluster, "many", "directory");
    ws.verify_on(&cluster);
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&config.replace("[dump]\n", "[dump]\njobs = 6\n"));
    let manifest = ws.backup();
    let parts = manifest["parts"].as_array().unwrap();
    assert!(parts.len() >= 150, "{} files", parts.len());
    let out = ws.pgproof(&["verify", "latest"]);
    assert!(out.status.success(), "{}", stderr(&out));
    ws.pgproof_ok(&["restore", "latest", "--target", &cluster.url("many_back")]);
    assert_eq!(
        table_summary(&connect(&cluster, "many_back").await).await,
        before
    );
    assert_eq!(before["<large objects>"].0, 40);
}

/// pg_dump's own sequential scans of `table` so far, as the server's statistics
/// count them (a TID range scan is not one).
async fn seq_scans(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .batch_execute("SET stats_fetch_consistency = none")
        .await
        .unwrap();
    client
        .query_one(
            "SELECT seq_scan FROM pg_stat_user_tables WHERE relid = $1::text::regclass",
            &[&table],
        )
        .await
        .unwrap()
        .get(0)
}

/// A table larger than a piece is fingerprinted in step with pg_dump's COPY, by TID
/// ranges, even where the database turns TID scans off: the only sequential scan of
/// it is pg_dump's, so each page is read once (scripts/bench --cold measures the
/// reads), and the pieces add up to what a restore's whole scan finds. So is a
/// partition, with its root's row hash; a partitioned table whose partitions are laid
/// out otherwise than the root (a dropped column) is read whole.
async fn large_tables_are_read_once(format: &str) {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let database = format!("pieces_{format}");
    let source = pgproof_tests::create_database(&cluster, &database).await;
    source
        .batch_execute(&format!(
            "CREATE TABLE wide AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS note,
                    g * 0.5 AS amount FROM generate_series(1, 300000) g;
             DELETE FROM wide WHERE id % 97 = 0;
             CREATE TABLE parted (id int, at date, note text) PARTITION BY RANGE (at);
             CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM ('2020-01-01') TO ('2025-01-01');
             CREATE TABLE parted_2 PARTITION OF parted FOR VALUES FROM ('2025-01-01') TO ('2030-01-01');
             INSERT INTO parted SELECT g, '2024-01-01'::date + g % 300, md5(g::text) || md5(g::text)
               FROM generate_series(1, 250000) g;
             CREATE TABLE legacy (id int, gone int, at date) PARTITION BY LIST (id);
             ALTER TABLE legacy DROP COLUMN gone;
             CREATE TABLE legacy_1 PARTITION OF legacy FOR VALUES IN (1);
             INSERT INTO legacy SELECT 1, '2024-01-01'::date + g FROM generate_series(1, 1000) g;
             CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n FROM wide;
             ALTER DATABASE {database} SET enable_tidscan = off"
        ))
        .await
        .unwrap();
    source.batch_execute("VACUUM ANALYZE").await.unwrap();
    // The setup's own scans (the view's query) must be counted before, not after.
    source
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    let pages: i64 = source
        .query_one(
            "SELECT pg_relation_size('wide') / current_setting('block_size')::int8",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let piece_pages = pgproof_core::evidence::fingerprint::PIECE_BYTES / 8192;
    assert!(
        pages > 2 * piece_pages,
        "wide is {pages} pages: several pieces"
    );
    let big = ["wide", "parted_1"];
    let mut before = Vec::new();
    for table in big {
        before.push(seq_scans(&source, table).await);
    }

    let ws = Workspace::new(&cluster, &database, format);
    ws.verify_on(&cluster);
    let manifest = ws.backup();
    assert_eq!(
        manifest["fingerprint"]["tables"]["public.wide"]["rows"],
        300000 - 300000 / 97
    );
    assert_eq!(
        manifest["fingerprint"]["tables"]["public.parted"]["partitions"]["public.parted_1"],
        250000
    );
    // Statistics reach the server as each backend exits.
    for (table, before) in big.into_iter().zip(before) {
        let mut after = before;
        for _ in 0..50 {
            after = seq_scans(&source, table).await;
            if after > before {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(after - before, 1, "{table}: pg_dump's COPY only");
    }
    // One whole scan of each table (the source is at rest) is the independent check
    // that the pieces miss no row and count partitions as a scan does.
    let whole = Fingerprint::compute(&source).await.unwrap();
    let recorded: BTreeMap<String, TableFingerprint> =
        serde_json::from_value(manifest["fingerprint"]["tables"].clone()).unwrap();
    assert_eq!(recorded, whole.tables);

    let out = ws.pgproof(&["verify", "latest"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    for check in [
        "fingerprint:public.wide",
        "fingerprint:public.parted",
        "fingerprint:public.legacy",
        "materialized-view:public.totals",
    ] {
        assert!(
            report
                .lines()
                .any(|l| l.contains("ok") && l.contains(check)),
            "{check} in {report}"
        );
    }
}

#[tokio::test]
async fn large_tables_are_read_once_custom() {
    large_tables_are_read_once("custom").await;
}

#[tokio::test]
async fn large_tables_are_read_once_directory() {
    large_tables_are_read_once("directory").await;
}

/// Verify restores into its scratch database table by table (no single
/// transaction: it is dropped whatever happens) and fingerprints each table as soon
/// as its data commits, beside the rest of the restore; the verdicts are those of a
/// hash after it (here: every table as the source held it, the empty one and one
/// with a hostile name too).
async fn a_restore_is_fingerprinted_as_each_table_commits(format: &str) {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let database = format!("loaded_{format}");
    let source = pgproof_tests::create_database(&cluster, &database).await;
    source
        .batch_execute(
            "CREATE TABLE a AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 400000) g;
             CREATE TABLE b AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 400000) g;
             ALTER TABLE b ADD PRIMARY KEY (id);
             CREATE TABLE \"c'; DROP TABLE a; --\" AS SELECT g AS id, repeat(md5(g::text), 4) AS note
               FROM generate_series(1, 200000) g;
             CREATE TABLE empty (id int)",
        )
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, &database, format);
    ws.verify_on(&cluster);
    ws.backup();
    let out = ws.pgproof(&["verify", "latest"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}{}", stderr(&out));
    let restore = report
        .lines()
        .find(|l| l.contains("restored into"))
        .unwrap_or_else(|| panic!("a restore check in {report}"));
    let early: usize = restore
        .split("; ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("tables fingerprinted while restoring, in {restore}"));
    assert!((1..=3).contains(&early), "{restore}");
    // A hostile name reaches the server only quoted by it (`format('%I')`).
    for table in ["a", "b", "\"c'; DROP TABLE a; --\"", "empty"] {
        assert!(
            report.lines().any(|l| l.trim_start().starts_with("ok")
                && l.contains(&format!("fingerprint:public.{table} "))),
            "{table} in {report}"
        );
    }
}

#[tokio::test]
async fn a_custom_restore_is_fingerprinted_as_each_table_commits() {
    a_restore_is_fingerprinted_as_each_table_commits("custom").await;
}

#[tokio::test]
async fn a_plain_restore_is_fingerprinted_as_each_table_commits() {
    a_restore_is_fingerprinted_as_each_table_commits("plain").await;
}

#[tokio::test]
async fn a_directory_restore_is_fingerprinted_as_each_table_commits() {
    a_restore_is_fingerprinted_as_each_table_commits("directory").await;
}

/// A table written by the restore after its COPY (a materialized view whose query
/// inserts rows, run when the restore refreshes it at the end) holds more than the
/// source did: hashed while restoring or not, verify finds the extra row.
async fn a_table_written_after_its_copy_is_judged_as_the_restore_left_it(format: &str) {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let database = format!("refreshing_{format}");
    let source = pgproof_tests::create_database(&cluster, &database).await;
    source
        .batch_execute(
            // `log` large enough that its COPY is seen running, so it is hashed while
            // restoring; `bulk` larger and indexed, so the refresh (after all data and
            // indexes) comes later.
            "CREATE TABLE log AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 600000) g;
             CREATE TABLE bulk AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 1500000) g;
             ALTER TABLE bulk ADD PRIMARY KEY (id);
             CREATE FUNCTION noisy() RETURNS int LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO public.log VALUES (0, 'refreshed'); RETURN 1; END $$;
             CREATE MATERIALIZED VIEW refreshes AS SELECT noisy() AS n",
        )
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, &database, format);
    ws.verify_on(&cluster);
    ws.backup();
    let out = ws.pgproof(&["verify", "latest"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{report}");
    let log = report
        .lines()
        .find(|l| l.contains("fingerprint:public.log "))
        .unwrap_or_else(|| panic!("fingerprint:public.log in {report}"));
    assert!(
        log.trim_start().starts_with("FAIL") && log.contains("600002 rows"),
        "{log}"
    );
}

#[tokio::test]
async fn a_table_written_after_its_copy_is_judged_as_the_restore_left_it_custom() {
    a_table_written_after_its_copy_is_judged_as_the_restore_left_it("custom").await;
}

#[tokio::test]
async fn a_table_written_after_its_copy_is_judged_as_the_restore_left_it_directory() {
    a_table_written_after_its_copy_is_judged_as_the_restore_left_it("directory").await;
}

/// The hash while restoring opens its connections only where the scratch server has
/// room for them beside every connection the restore program may open; with none
/// under the limits it counts (here the role's, which the superuser restoring is
/// exempt from, so the restore itself goes on) every table is hashed after the
/// restore instead, with the same verdicts.
#[tokio::test]
async fn no_table_is_hashed_while_restoring_without_connections_to_spare() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let source = pgproof_tests::create_database(&cluster, "crowded").await;
    source
        .batch_execute(
            "CREATE TABLE a AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 400000) g;
             CREATE TABLE b AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 400000) g",
        )
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, "crowded", "directory");
    ws.verify_on(&cluster);
    ws.backup();
    source
        .batch_execute("ALTER ROLE postgres CONNECTION LIMIT 2")
        .await
        .unwrap();
    let out = ws.pgproof(&["verify", "latest"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}{}", stderr(&out));
    let restore = report
        .lines()
        .find(|l| l.contains("restored into"))
        .unwrap_or_else(|| panic!("a restore check in {report}"));
    assert!(!restore.contains("while it ran"), "{restore}");
    for table in ["a", "b"] {
        assert!(
            report.lines().any(|l| l.trim_start().starts_with("ok")
                && l.contains(&format!("fingerprint:public.{table} "))),
            "{table} in {report}"
        );
    }
}

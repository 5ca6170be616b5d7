//! The Dumper and Verifier conformance suites (pgproof-core's `testkit`) against every
//! built-in engine and against a dumper and a verifier written here, outside the core,
//! the way a library user would write them.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pgproof_core::catalog::{self, BackupRef};
use pgproof_core::codec::{Compress, KeyPair};
use pgproof_core::dump::{self, Dumper, Format, pg_dump_command};
use pgproof_core::ops::{Backup, Restore, Verify};
use pgproof_core::pg::{ConnParams, PgTools, client_command, db_err};
use pgproof_core::scope::Scope;
use pgproof_core::verify::{self, Check, Restored, Verifier, standard_verifiers};
use pgproof_core::{ErrorKind, Result, Sink};
use pgproof_sink_fs::FsSink;
use pgproof_tests::hooked::{Hooked, Hooks};
use pgproof_tests::{connect, create_database, create_sample_database, start_cluster};

/// pg_dump's tar format, gzipped by pgproof, restored by pg_restore from stdin.
#[derive(Debug)]
struct TarDumper;

impl Dumper for TarDumper {
    fn format(&self) -> &str {
        "tar"
    }

    fn file_name(&self) -> &str {
        "dump.tar"
    }

    fn compression(&self) -> Option<Compress> {
        Some(Compress::Gzip { level: 1 })
    }

    fn restore_program(&self) -> &'static str {
        "pg_restore"
    }

    fn dump_command(
        &self,
        tools: &PgTools,
        source: &ConnParams,
        snapshot: &str,
        lock_wait: Duration,
    ) -> Command {
        pg_dump_command(tools, source, "tar", snapshot, lock_wait)
    }

    fn restore_command(&self, tools: &PgTools, target: &ConnParams) -> Command {
        let mut cmd = client_command(tools, "pg_restore", target);
        cmd.args([
            "--format=tar",
            "--exit-on-error",
            "--single-transaction",
            "--no-password",
            "--dbname",
            target.dbname(),
        ])
        .stdout(Stdio::null());
        cmd
    }
}

/// An application invariant: a table holds at least `min` rows.
struct RowsAtLeast {
    table: &'static str,
    min: i64,
}

#[async_trait]
impl Verifier for RowsAtLeast {
    fn name(&self) -> &str {
        "rows-at-least"
    }

    async fn verify(&self, r: &Restored<'_>) -> Result<Vec<Check>> {
        let n: i64 = r
            .client
            .query_one(&format!("SELECT count(*) FROM {}", self.table), &[])
            .await
            .map_err(db_err("counting rows"))?
            .get(0);
        Ok(vec![Check::judge(
            format!("rows-at-least:{}", self.table),
            n >= self.min,
            format!("{n} rows, at least {} expected", self.min),
        )])
    }
}

/// Deduplication with small chunks, so that the suites' small tables cut into several.
fn small_chunks() -> pgproof_core::dump::Chunking {
    let ids = pgproof_core::dump::ChunkIds::new(zeroize::Zeroizing::new([7; 32]));
    pgproof_core::dump::Chunking::new(4096, Arc::new(ids)).unwrap()
}

#[tokio::test]
async fn built_in_dumpers_conform() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let server = cluster.params("postgres").unwrap();
    for dumper in [
        Format::Custom.dumper(6),
        Format::Plain.dumper(1),
        Format::Directory.dumper(6),
        Format::Directory.dumper_with(6, Some(3), Some(2), None),
        Format::Directory.dumper_with(6, Some(3), Some(2), Some(small_chunks())),
    ] {
        dump::testkit::run_all(&*dumper, &server, None).await;
    }
}

#[tokio::test]
async fn a_third_party_dumper_conforms_and_serves_backup_restore_and_verify() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let server = cluster.params("postgres").unwrap();
    dump::testkit::run_all(&TarDumper, &server, None).await;

    create_sample_database(&cluster, "app").await;
    let dir = tempfile::tempdir().unwrap();
    let sink: Arc<dyn Sink> = Arc::new(FsSink::new(dir.path().join("sink")));
    let keys = KeyPair::generate();
    let manifest = Backup::new(cluster.params("app").unwrap(), sink.clone())
        .dumper(Arc::new(TarDumper))
        .recipients(keys.recipients())
        .run()
        .await
        .unwrap();
    assert_eq!(manifest.format, "tar");
    assert_eq!(manifest.codecs, ["gzip", "age"]);
    assert!(manifest.object.key.ends_with("/dump.tar.gz.age"));

    let report = Verify::new(sink.clone(), BackupRef::of(&manifest), server.clone())
        .identities(Some(keys.identities()))
        .dumper(Arc::new(TarDumper))
        .verifier(Box::new(RowsAtLeast {
            table: "public.kinds",
            min: 1,
        }))
        .run()
        .await
        .unwrap();
    let failed: Vec<_> = report.failures().collect();
    assert!(report.passed, "{failed:?}");
    assert!(
        report
            .checks
            .iter()
            .any(|c| c.name == "rows-at-least:public.kinds"),
        "{:?}",
        report.checks
    );

    // Without the dumper, a restore of an unknown format says what is missing.
    let err = Restore::new(sink, manifest, cluster.params("elsewhere").unwrap())
        .identities(Some(keys.identities()))
        .run()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("\"tar\""), "{err}");
}

/// The built-in custom format, travelling by [`dump::testkit::SpooledLayout`]: a third
/// archive layout that Backup, Restore and Verify take without knowing it.
#[derive(Debug)]
struct Spooled(Arc<dyn Dumper>);

impl Dumper for Spooled {
    fn format(&self) -> &str {
        self.0.format()
    }
    fn file_name(&self) -> &str {
        self.0.file_name()
    }
    fn compression(&self) -> Option<Compress> {
        self.0.compression()
    }
    fn restore_program(&self) -> &'static str {
        self.0.restore_program()
    }
    fn dump_command(
        &self,
        tools: &PgTools,
        source: &ConnParams,
        snapshot: &str,
        lock_wait: Duration,
    ) -> Command {
        self.0.dump_command(tools, source, snapshot, lock_wait)
    }
    fn restore_command(&self, tools: &PgTools, target: &ConnParams) -> Command {
        self.0.restore_command(tools, target)
    }
    fn layout(&self) -> Arc<dyn dump::ArchiveLayout> {
        Arc::new(dump::testkit::SpooledLayout)
    }
}

#[tokio::test]
async fn a_third_archive_layout_serves_backup_restore_and_verify_unchanged() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let server = cluster.params("postgres").unwrap();
    let dumper: Arc<dyn Dumper> = Arc::new(Spooled(Format::Custom.dumper(6)));
    dump::testkit::run_all(&*dumper, &server, None).await;

    create_sample_database(&cluster, "app").await;
    let dir = tempfile::tempdir().unwrap();
    let sink: Arc<dyn Sink> = Arc::new(FsSink::new(dir.path().join("sink")));
    let keys = KeyPair::generate();
    let manifest = Backup::new(cluster.params("app").unwrap(), sink.clone())
        .dumper(dumper.clone())
        .recipients(keys.recipients())
        .run()
        .await
        .unwrap();
    assert_verifies(&sink, &manifest, &server, &keys, &dumper).await;

    // The layout's own check runs before any database exists: one byte changed in the
    // stored object, and the restore fails as a verdict on the backup, creating nothing.
    let path = dir.path().join("sink").join(&manifest.object.key);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, bytes).unwrap();
    let err = Restore::new(sink, manifest, cluster.params("spooled").unwrap())
        .identities(Some(keys.identities()))
        .dumper(dumper)
        .run()
        .await
        .unwrap_err();
    assert!(err.about_backup(), "{err}");
    assert!(err.to_string().contains("spooled object"), "{err}");
    let client = server.connect().await.unwrap();
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = 'spooled'", &[])
        .await
        .unwrap();
    assert!(
        exists.is_none(),
        "a restore of a damaged archive created its database"
    );
}

#[tokio::test]
async fn every_verifier_conforms_and_judges_a_changed_restore() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_sample_database(&cluster, "app").await;
    let mut client = pgproof_tests::connect(&cluster, "app").await;
    pgproof_core::evidence::audit::migrate(&mut client)
        .await
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO pgproof.audit_events (actor, action, subject) \
             SELECT 'u', 'issue', 'c' || g FROM generate_series(1, 20) g",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sink: Arc<dyn Sink> = Arc::new(FsSink::new(dir.path().join("sink")));
    // An application invariant, so the invariant verifier has something to judge.
    let invariant = pgproof_core::evidence::invariant::Invariant {
        name: "audited".into(),
        sql: "SELECT count(*) FROM pgproof.audit_events".into(),
        expect: Some("20".into()),
    };
    for _ in 0..2 {
        Backup::new(cluster.params("app").unwrap(), sink.clone())
            .unencrypted()
            .invariants(vec![invariant.clone()])
            .run()
            .await
            .unwrap();
    }
    let first = catalog::list_backups(&*sink, Some("app")).await.unwrap()[0].clone();
    let (manifest, sha) = catalog::load_manifest(&*sink, &first).await.unwrap();
    let target = cluster.params("restored").unwrap();
    Restore::new(sink.clone(), manifest.clone(), target.clone())
        .run()
        .await
        .unwrap();
    let restored_client = target.connect().await.unwrap();
    let restored = Restored {
        target: None,
        manifest: &manifest,
        manifest_sha256: &sha,
        sink: &*sink,
        client: &restored_client,
        hashed_while_restoring: &Default::default(),
    };
    let mut verifiers = standard_verifiers();
    verifiers.push(Box::new(RowsAtLeast {
        table: "public.kinds",
        min: 1,
    }));
    for verifier in &verifiers {
        let verdicts = verify::testkit::check_contract(&**verifier, &restored).await;
        assert!(!verdicts.is_empty(), "{} checked nothing", verifier.name());
        assert!(
            verdicts.iter().all(|passed| *passed),
            "{} failed an exact restore",
            verifier.name()
        );
    }

    // The same verifiers on a restore that lost a row: the table's check fails, and
    // only that one.
    restored_client
        .batch_execute("DELETE FROM public.kinds WHERE ctid = (SELECT min(ctid) FROM public.kinds)")
        .await
        .unwrap();
    let fingerprints = verify::TableFingerprints;
    let checks = fingerprints.verify(&restored).await.unwrap();
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(failed, ["fingerprint:public.kinds"], "{checks:?}");
}

/// Every archive layout keeps the ArchiveLayout contract: the stream, the directory
/// (pg_dump's compression and pgproof's zstd) and the test-only spooled one.
#[tokio::test]
async fn every_archive_layout_conforms() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let server = cluster.params("postgres").unwrap();
    let dumpers: [Arc<dyn Dumper>; 5] = [
        Format::Custom.dumper(6),
        Format::Directory.dumper(6),
        Format::Directory.dumper_with(6, Some(3), Some(2), None),
        Format::Directory.dumper_with(6, Some(3), Some(2), Some(small_chunks())),
        Arc::new(Spooled(Format::Custom.dumper(6))),
    ];
    for dumper in dumpers {
        let dir = tempfile::tempdir().unwrap();
        let sink: Arc<dyn Sink> = Arc::new(FsSink::new(dir.path().join("sink")));
        dump::testkit::layout_conforms(dumper, &server, sink, None).await;
    }
}

/// A deduplicating dump refuses to store unencrypted chunks (the same bytes under the
/// same key each time, which a planted object could pass for), before it stores
/// anything, through the library as through the CLI.
#[tokio::test]
async fn a_deduplicating_dump_refuses_to_store_unencrypted() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_sample_database(&cluster, "app").await;
    let dir = tempfile::tempdir().unwrap();
    let sink: Arc<dyn Sink> = Arc::new(FsSink::new(dir.path().join("sink")));
    let err = Backup::new(cluster.params("app").unwrap(), sink.clone())
        .dumper(Format::Directory.dumper_with(6, Some(3), Some(2), Some(small_chunks())))
        .unencrypted()
        .run()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("[encryption] recipients"), "{err}");
    assert_eq!(
        sink.list("").await.unwrap(),
        Vec::new(),
        "stored while refusing"
    );
}

/// Verifies the backup `manifest` in `sink` with the standard checks, and asserts it
/// passed.
async fn assert_verifies(
    sink: &Arc<dyn Sink>,
    manifest: &pgproof_core::catalog::Manifest,
    server: &ConnParams,
    keys: &KeyPair,
    dumper: &Arc<dyn Dumper>,
) {
    let report = Verify::new(sink.clone(), BackupRef::of(manifest), server.clone())
        .identities(Some(keys.identities()))
        .dumper(dumper.clone())
        .run()
        .await
        .unwrap();
    let failed: Vec<_> = report.failures().collect();
    assert!(report.passed, "{failed:?}");
}

/// A sink whose first put of each chunk finds its key taken: after storing the body
/// itself (`landed`: a put retried after its first attempt landed, its answer lost),
/// or because someone stored other bytes there first.
#[derive(Debug)]
struct TakenChunkKeys {
    landed: bool,
    taken: std::sync::Mutex<std::collections::HashSet<String>>,
}

#[async_trait]
impl Hooks for TakenChunkKeys {
    async fn put(
        &self,
        inner: &dyn Sink,
        key: &str,
        body: pgproof_core::sink::ByteStream,
    ) -> Result<u64> {
        if !key.starts_with(".chunks/") || !self.taken.lock().unwrap().insert(key.to_owned()) {
            return inner.put(key, body).await;
        }
        if self.landed {
            inner.put(key, body).await?;
        } else {
            let squatter = bytes::Bytes::from_static(b"someone else's bytes");
            pgproof_core::sink::SinkExt::put_bytes(inner, key, squatter).await?;
            drop(body);
        }
        Err(pgproof_core::Error::already_exists(format!("{key} exists")))
    }
}

/// A chunk key found taken holds this backup's own chunk when a retried put's first
/// attempt landed (read back and taken: the backup commits and verifies), and anything
/// else is someone's write (the backup fails naming the key, leaving nothing of its
/// own).
#[tokio::test]
async fn a_chunk_key_found_taken_is_read_back_before_it_is_believed() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_sample_database(&cluster, "app").await;
    let server = cluster.params("postgres").unwrap();
    let dumper = Format::Directory.dumper_with(6, Some(3), Some(2), Some(small_chunks()));
    for landed in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let fs: Arc<dyn Sink> = Arc::new(FsSink::new(dir.path().join("sink")));
        let sink: Arc<dyn Sink> = Arc::new(Hooked {
            inner: fs.clone(),
            hooks: TakenChunkKeys {
                landed,
                taken: Default::default(),
            },
        });
        let keys = KeyPair::generate();
        let backup = Backup::new(cluster.params("app").unwrap(), sink.clone())
            .dumper(dumper.clone())
            .recipients(keys.recipients())
            .run()
            .await;
        if landed {
            let manifest = backup.unwrap();
            assert_verifies(&fs, &manifest, &server, &keys, &dumper).await;
        } else {
            let err = backup.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
            assert!(
                err.to_string().contains("someone writes into the sink"),
                "{err}"
            );
            let left: Vec<String> = fs
                .list("")
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.key)
                .filter(|k| !k.starts_with(".chunks/"))
                .collect();
            assert_eq!(left, Vec::<String>::new(), "left by a failed backup");
            // Only the squatters' objects are left under .chunks/: none of the backup's.
            let squatted = fs.list(".chunks/").await.unwrap();
            assert!(!squatted.is_empty());
            for meta in squatted {
                let bytes = pgproof_core::sink::SinkExt::get_bytes(&*fs, &meta.key, 1 << 20)
                    .await
                    .unwrap();
                assert_eq!(bytes, b"someone else's bytes", "{} left", meta.key);
            }
        }
    }
}

/// Two backups in one program, each in its own scope: cancelling one kills its
/// pg_dump and aborts its upload, and the other commits as if nothing happened.
#[tokio::test]
async fn two_backups_at_once_one_cancelled() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_sample_database(&cluster, "small").await;
    // Large enough that its dump is still streaming when it is cancelled.
    create_database(&cluster, "big")
        .await
        .batch_execute(
            "CREATE TABLE wide AS SELECT g, md5(g::text) || md5((-g)::text) AS t \
             FROM generate_series(1, 3000000) g",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sink");
    let sink: Arc<dyn Sink> = Arc::new(FsSink::new(&root));
    let (doomed, kept) = (Scope::new(), Scope::new());
    let big = Backup::new(cluster.params("big").unwrap(), sink.clone())
        .unencrypted()
        .scope(doomed.clone())
        .run();
    let small = Backup::new(cluster.params("small").unwrap(), sink.clone())
        .unencrypted()
        .scope(kept.clone())
        .run();
    let admin = connect(&cluster, "postgres").await;
    let cancel = async {
        // Once big's pg_dump is copying its table, not before.
        let copying = "SELECT count(*) FROM pg_stat_activity \
                       WHERE datname = 'big' AND query LIKE 'COPY%'";
        for _ in 0..600 {
            let n: i64 = admin.query_one(copying, &[]).await.unwrap().get(0);
            if n > 0 {
                return doomed.cancel();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("big's pg_dump never started copying");
    };
    let (big, small, stopped) = tokio::join!(big, small, cancel);
    let err = big.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert!(
        stopped.iter().any(|s| s.starts_with("pg_dump (pid ")),
        "cancelling did not stop big's pg_dump: {stopped:?}"
    );
    let small = small.unwrap();
    assert!(!kept.is_cancelled());
    catalog::load_manifest(&*sink, &BackupRef::of(&small))
        .await
        .unwrap();
    // Nothing of the cancelled backup is left: no session on its database (a killed
    // client's backend notices within moments), no object.
    let sessions = "SELECT count(*) FROM pg_stat_activity \
                    WHERE datname = 'big' AND backend_type = 'client backend'";
    let mut left: i64 = -1;
    for _ in 0..100 {
        left = admin.query_one(sessions, &[]).await.unwrap().get(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the cancelled backup's sessions still run");
    let listed = sink.list("big/").await.unwrap();
    assert!(listed.is_empty(), "the cancelled backup left {listed:?}");
}

/// A sink on which the verification's scope is cancelled the moment its lease is
/// stored, before the put returns to it: a verify worker whose claim is found taken
/// over just then, or a signal.
#[derive(Debug)]
struct CancelledAsTheLeaseLands {
    scope: Scope,
}

#[async_trait]
impl Hooks for CancelledAsTheLeaseLands {
    async fn put(
        &self,
        inner: &dyn Sink,
        key: &str,
        body: pgproof_core::sink::ByteStream,
    ) -> Result<u64> {
        let stored = inner.put(key, body).await;
        if key.contains("/lease/") {
            self.scope.cancel();
            // The operation sees its cancellation before the put's answer.
            tokio::task::yield_now().await;
        }
        stored
    }
}

/// A verification cancelled while its lease is written gives the lease back: left,
/// it would keep prune from the backup for a day.
#[tokio::test]
async fn a_verification_cancelled_as_it_takes_its_lease_gives_the_lease_back() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_sample_database(&cluster, "app").await;
    let dir = tempfile::tempdir().unwrap();
    let fs: Arc<dyn Sink> = Arc::new(FsSink::new(dir.path().join("sink")));
    let manifest = Backup::new(cluster.params("app").unwrap(), fs.clone())
        .unencrypted()
        .run()
        .await
        .unwrap();
    let scope = Scope::new();
    let sink: Arc<dyn Sink> = Arc::new(Hooked {
        inner: fs.clone(),
        hooks: CancelledAsTheLeaseLands {
            scope: scope.clone(),
        },
    });
    let server = cluster.params("postgres").unwrap();
    let err = Verify::new(sink, BackupRef::of(&manifest), server)
        .scope(scope.clone())
        .run()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    let leases = fs
        .list(&catalog::layout::leases(
            &manifest.database,
            &manifest.backup_id,
        ))
        .await
        .unwrap();
    assert!(leases.is_empty(), "{leases:?} left; {err}");
}

/// Restores a backup of `app` into `fresh`, holding its CREATE DATABASE on a lock on
/// template0 (a rename of it not yet committed: a CREATE from it waits; the DROP
/// DATABASE IF EXISTS before it does not), runs `meanwhile` once the CREATE waits,
/// cancels the restore, then lets the CREATE through. Returns the restore's error
/// once every CREATE DATABASE has ended, and whether `fresh` exists then.
async fn restore_cancelled_while_creating(meanwhile: &str) -> Option<(pgproof_core::Error, bool)> {
    let cluster = start_cluster()?;
    create_sample_database(&cluster, "app").await;
    let dir = tempfile::tempdir().unwrap();
    let sink: Arc<dyn Sink> = Arc::new(FsSink::new(dir.path().join("sink")));
    let manifest = Backup::new(cluster.params("app").unwrap(), sink.clone())
        .unencrypted()
        .run()
        .await
        .unwrap();
    let admin = connect(&cluster, "postgres").await;
    let blocker = connect(&cluster, "postgres").await;
    blocker
        .batch_execute("BEGIN; ALTER DATABASE template0 RENAME TO held_template0")
        .await
        .unwrap();
    let scope = Scope::new();
    let restore = Restore::new(sink, manifest, cluster.params("fresh").unwrap())
        .scope(scope.clone())
        .run();
    let creating = "SELECT count(*) FROM pg_stat_activity \
                    WHERE query LIKE 'CREATE DATABASE \"fresh\"%' AND wait_event_type = 'Lock'";
    let cancel = async {
        for _ in 0..600 {
            let n: i64 = admin.query_one(creating, &[]).await.unwrap().get(0);
            if n > 0 {
                admin.batch_execute(meanwhile).await.unwrap();
                scope.cancel();
                // Let the cancelled restore start its cleanup, then let the CREATE
                // (and whatever follows it) through.
                tokio::time::sleep(Duration::from_millis(300)).await;
                blocker.batch_execute("ROLLBACK").await.unwrap();
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rows = admin
            .query(
                "SELECT query, coalesce(wait_event_type, '') FROM pg_stat_activity",
                &[],
            )
            .await
            .unwrap();
        let seen: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        panic!("the restore never sent its CREATE DATABASE: {seen:?}");
    };
    let (restored, ()) = tokio::join!(restore, cancel);
    let err = restored.unwrap_err();
    // An abandoned CREATE would finish on the server whatever pgproof does: wait.
    let running = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE DATABASE%'";
    let mut creating: i64 = -1;
    for _ in 0..300 {
        creating = admin.query_one(running, &[]).await.unwrap().get(0);
        if creating == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        creating, 0,
        "a CREATE DATABASE still runs: too early to look"
    );
    let exists: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = 'fresh'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    Some((err, exists == 1))
}

/// A restore cancelled while its CREATE DATABASE runs leaves no database: the server
/// would finish the CREATE after pgproof stopped waiting for it, so the cancellation
/// cancels it on the server and waits for it before dropping what it made.
#[tokio::test]
async fn a_restore_cancelled_while_its_database_is_created_leaves_none() {
    let Some((err, left)) = restore_cancelled_while_creating("SELECT 1").await else {
        return;
    };
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert!(!left, "the cancelled restore left its database; {err}");
}

/// The same cancellation when someone else created the database meanwhile (the
/// restore's CREATE then fails): their database is left alone.
#[tokio::test]
async fn a_cancelled_restore_drops_no_database_it_did_not_create() {
    let Some((err, left)) =
        restore_cancelled_while_creating("CREATE DATABASE fresh TEMPLATE template1").await
    else {
        return;
    };
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert!(
        left,
        "the cancelled restore dropped a database it did not create; {err}"
    );
}

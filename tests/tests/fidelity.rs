//! Verdicts that must not be false alarms: values with several binary encodings (the
//! NaN an arithmetic produces carries the sign bit; a dump writes `NaN`) and
//! partitioned tables, compared at their root.

#![allow(clippy::unwrap_used)]

use pgproof_core::evidence::Fingerprint;
use pgproof_tests::{Workspace, connect, create_database, database_exists, start_cluster, stderr};
use serde_json::Value;

#[tokio::test]
async fn nan_bit_patterns_and_partitioned_tables_verify_in_every_format() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let client = create_database(&cluster, "fid").await;
    client
        .batch_execute(
            "CREATE TABLE floats (id int PRIMARY KEY, f8 float8, f4 float4, arr float8[]);
             INSERT INTO floats VALUES
               (1, 'Infinity'::float8 - 'Infinity'::float8, 'Infinity'::float4 - 'Infinity'::float4,
                   ARRAY['Infinity'::float8 - 'Infinity'::float8, 1.5]),
               (2, '-0', '-0', '{-0}'),
               (3, 'NaN', 'NaN', '{NaN}'),
               (4, 4.9e-324, 1.4e-45, '{1e308,-1e-308}');
             CREATE TABLE shapes (id int, p point, c circle, b box);
             INSERT INTO shapes VALUES
               (1, point('Infinity'::float8 - 'Infinity'::float8, 0),
                   circle(point(0, 'Infinity'::float8 - 'Infinity'::float8), 1), box(point(0, 0), point(1, 1)));
             CREATE TABLE measurements (id int, at date, v numeric) PARTITION BY RANGE (at);
             CREATE TABLE m2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
             CREATE TABLE m2026 PARTITION OF measurements FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
             INSERT INTO measurements SELECT g, date '2025-06-01' + g, g / 3.0 FROM generate_series(1, 400) g;
             CREATE TYPE mood AS ENUM ('calm', 'glad', 'sad', 'cross', 'tired', 'keen');
             CREATE TABLE feelings (m mood, n int) PARTITION BY HASH (m);
             CREATE TABLE feelings_0 PARTITION OF feelings FOR VALUES WITH (MODULUS 3, REMAINDER 0);
             CREATE TABLE feelings_1 PARTITION OF feelings FOR VALUES WITH (MODULUS 3, REMAINDER 1);
             CREATE TABLE feelings_2 PARTITION OF feelings FOR VALUES WITH (MODULUS 3, REMAINDER 2);
             INSERT INTO feelings SELECT (enum_range(NULL::mood))[1 + g % 6], g FROM generate_series(1, 600) g;",
        )
        .await
        .unwrap();
    // The fault is real: the stored NaN's bytes are not the canonical NaN's.
    let differs: bool = client
        .query_one(
            "SELECT float8send(f8) <> float8send('NaN'::float8) FROM floats WHERE id = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        differs,
        "this server makes canonical NaNs; the test proves nothing here"
    );

    for format in ["custom", "plain", "directory", "dedup"] {
        let ws = Workspace::new(&cluster, "fid", format);
        ws.verify_on(&cluster);
        ws.backup();
        let out = ws.pgproof(&["verify", "latest", "--json"]);
        let reports: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no JSON ({e}): {}", stderr(&out)));
        let report = &reports[0];
        let names: Vec<&str> = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        let failed: Vec<&Value> = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["passed"] == false)
            .collect();
        assert!(failed.is_empty(), "{format}: false alarms: {failed:#?}");
        assert_eq!(out.status.code(), Some(0), "{format}: {}", stderr(&out));
        assert!(names.contains(&"fingerprint:public.floats"), "{names:?}");
        if format == "directory" {
            // One object per file of the archive: the table of contents and the tables.
            let show = ws.pgproof(&["show", "latest"]);
            let shown = String::from_utf8_lossy(&show.stdout);
            assert!(shown.contains("/dump/toc.dat"), "{shown}");
            assert!(shown.contains("more files of the archive"), "{shown}");
        }
        assert!(names.contains(&"fingerprint:public.shapes"), "{names:?}");
        let leaves = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "fingerprint:public.feelings")
            .unwrap()["detail"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            leaves.contains("rows per partition") && leaves.contains("public.feelings_0"),
            "{leaves}"
        );
        eprintln!("{format}: {leaves}");
        assert!(
            names.contains(&"fingerprint:public.measurements"),
            "{names:?}"
        );
        assert!(
            !names
                .iter()
                .any(|n| n.ends_with(".m2025") || n.ends_with(".m2026")),
            "partitions compared on their own: {names:?}"
        );
    }
}

/// Runs each `;`-separated statement on its own (CREATE DATABASE cannot share a
/// query string with others).
async fn each(client: &tokio_postgres::Client, sql: &str) {
    for statement in sql.split(';').filter(|s| !s.trim().is_empty()) {
        client
            .batch_execute(statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

/// Runs `verify latest --json` and returns the report and the exit code.
fn verify_latest(ws: &Workspace) -> (Value, Option<i32>) {
    let out = ws.pgproof(&["verify", "latest", "--json"]);
    let reports: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", stderr(&out)));
    (reports[0].clone(), out.status.code())
}

/// The check of that name in a report.
fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report:#}"))
}

fn failed_checks(report: &Value) -> Vec<&Value> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .collect()
}

/// Objects owned by and granted to application roles, a policy naming one, per-role
/// settings: verified in a fresh cluster that has none of those roles, and restored
/// elsewhere only once the roles may be created.
#[tokio::test]
async fn roles_the_schema_needs_are_carried() {
    let (Some(cluster), Some(scratch)) = (start_cluster(), start_cluster()) else {
        return;
    };
    each(
        &connect(&cluster, "postgres").await,
        "CREATE ROLE readers NOLOGIN; CREATE ROLE app_owner LOGIN CREATEDB CONNECTION LIMIT 7;
             CREATE ROLE app_reader LOGIN IN ROLE readers; CREATE ROLE unrelated;
             ALTER ROLE app_owner SET statement_timeout = '5s';
             CREATE DATABASE roles_db OWNER app_owner;
             ALTER ROLE app_reader IN DATABASE roles_db SET work_mem = '8MB';",
    )
    .await;
    connect(&cluster, "roles_db")
        .await
        .batch_execute(
            "CREATE SCHEMA app AUTHORIZATION app_owner;
             CREATE TABLE app.accounts (id int PRIMARY KEY, owner_name text);
             ALTER TABLE app.accounts OWNER TO app_owner;
             GRANT SELECT ON app.accounts TO readers;
             ALTER TABLE app.accounts ENABLE ROW LEVEL SECURITY;
             CREATE POLICY mine ON app.accounts TO app_reader USING (owner_name = current_user);
             INSERT INTO app.accounts VALUES (1, 'app_reader'), (2, 'someone');",
        )
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, "roles_db", "custom");
    ws.verify_on(&scratch);
    // The scratch server has its own app_reader, with other attributes: its own,
    // not the backup's, so information, not a failure.
    connect(&scratch, "postgres")
        .await
        .batch_execute("CREATE ROLE app_reader NOLOGIN CONNECTION LIMIT 3")
        .await
        .unwrap();
    let manifest = ws.backup();
    let needed: Vec<&str> = manifest["roles"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["needed"] == true)
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for role in ["app_owner", "app_reader", "readers", "postgres"] {
        assert!(needed.contains(&role), "{role} not needed: {needed:?}");
    }
    assert!(!needed.contains(&"unrelated"), "{needed:?}");

    let (report, code) = verify_latest(&ws);
    assert!(failed_checks(&report).is_empty(), "{report:#}");
    assert_eq!(code, Some(0));
    assert_eq!(check(&report, "roles")["passed"], true);
    assert!(
        check(&report, "roles")["detail"]
            .as_str()
            .unwrap()
            .contains("role app_reader has"),
        "{report:#}"
    );
    assert_eq!(check(&report, "fingerprint:app.accounts")["passed"], true);
    let verified = connect(&scratch, "postgres").await;
    let row = verified
        .query_one(
            "SELECT r.rolconnlimit, r.rolcreatedb, \
                    (SELECT setconfig::text FROM pg_db_role_setting WHERE setrole = r.oid AND setdatabase = 0) \
             FROM pg_roles r WHERE rolname = 'app_owner'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
    assert!(row.get::<_, bool>(1));
    assert_eq!(
        row.get::<_, Option<String>>(2).as_deref(),
        Some("{statement_timeout=5s}")
    );

    // A restore into a server without the roles is refused up front, then done
    // when pgproof may create them.
    let other = start_cluster().unwrap();
    let target = other.url("restored");
    let out = ws.pgproof(&["restore", "latest", "--target", &target]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("app_owner") && err.contains("--create-roles"),
        "{err}"
    );
    assert!(!database_exists(&other, "restored").await);
    ws.pgproof_ok(&["restore", "latest", "--target", &target, "--create-roles"]);
    let restored = connect(&other, "restored").await;
    let owners: (String, String, Option<String>) = {
        let r = restored
            .query_one(
                "SELECT c.relowner::regrole::text, pg_get_userbyid(d.datdba)::text, \
                        (SELECT setconfig::text FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole \
                         WHERE s.setdatabase = d.oid AND r.rolname = 'app_reader') \
                 FROM pg_class c, pg_database d WHERE c.oid = 'app.accounts'::regclass AND d.datname = current_database()",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(
        owners,
        (
            "app_owner".to_owned(),
            "app_owner".to_owned(),
            Some("{work_mem=8MB}".to_owned())
        )
    );
}

/// A database's encoding, locale, settings and comment come back with it, and an
/// existing database that would store or sort text otherwise is refused.
#[tokio::test]
async fn database_properties_are_carried_and_checked() {
    let (Some(cluster), Some(scratch)) = (start_cluster(), start_cluster()) else {
        return;
    };
    let admin = connect(&cluster, "postgres").await;
    each(
        &admin,
            "CREATE DATABASE props TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8';
             ALTER DATABASE props SET search_path = app, public;
             ALTER DATABASE props SET TimeZone = 'Asia/Kathmandu';
             ALTER DATABASE props SET work_mem = 65536;
             ALTER DATABASE props SET enable_seqscan = false;
             COMMENT ON DATABASE props IS 'the app''s data';
             CREATE DATABASE ascii TEMPLATE template0 ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C';",
    )
    .await;
    connect(&cluster, "props")
        .await
        .batch_execute(
            "CREATE SCHEMA app; CREATE TABLE app.words (w text);
             INSERT INTO app.words VALUES ('b'), ('a'), ('B'), ('ä');",
        )
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, "props", "plain");
    ws.verify_on(&scratch);
    let manifest = ws.backup();
    assert_eq!(manifest["properties"]["collate"], "C.UTF-8");
    let (report, code) = verify_latest(&ws);
    assert!(failed_checks(&report).is_empty(), "{report:#}");
    assert_eq!(code, Some(0));
    let database = check(&report, "database");
    assert!(
        database["detail"].as_str().unwrap().contains("C.UTF-8"),
        "{database}"
    );

    // A new database gets everything.
    ws.pgproof_ok(&["restore", "latest", "--target", &cluster.url("props_copy")]);
    let read = |db: &'static str| {
        let admin = &admin;
        async move {
            let r = admin
                .query_one(
                    "SELECT pg_encoding_to_char(d.encoding)::text, d.datcollate::text, d.datctype::text, \
                            shobj_description(d.oid, 'pg_database'), \
                            (SELECT count(*) FROM pg_db_role_setting s, unnest(s.setconfig) \
                             WHERE s.setdatabase = d.oid AND s.setrole = 0)::text \
                     FROM pg_database d WHERE datname = $1",
                    &[&db],
                )
                .await
                .unwrap();
            (
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2),
                r.get::<_, Option<String>>(3),
                r.get::<_, Option<String>>(4),
            )
        }
    };
    assert_eq!(read("props_copy").await, read("props").await);
    // The settings as a session of each database sees them (a restore stores them in
    // the server's own spelling: 64MB for 65536).
    let mut seen = Vec::new();
    for db in ["props", "props_copy"] {
        let row = connect(&cluster, db)
            .await
            .query_one(
                "SELECT current_setting('search_path'), current_setting('TimeZone'), \
                        current_setting('work_mem'), current_setting('enable_seqscan')",
                &[],
            )
            .await
            .unwrap();
        seen.push((0..4).map(|i| row.get::<_, String>(i)).collect::<Vec<_>>());
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[1], ["app, public", "Asia/Kathmandu", "64MB", "off"]);

    // An existing empty SQL_ASCII database would change the data: refused, unless
    // forced.
    let out = ws.pgproof(&["restore", "latest", "--target", &cluster.url("ascii")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("SQL_ASCII") && err.contains("--force"),
        "{err}"
    );
    let ascii = connect(&cluster, "ascii").await;
    assert_eq!(
        ascii
            .query_one("SELECT count(*) FROM pg_class WHERE relname = 'words'", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        0
    );
    ws.pgproof_ok(&[
        "restore",
        "latest",
        "--target",
        &cluster.url("ascii"),
        "--force",
    ]);

    // A locale the target host lacks: one line naming it, nothing left behind. (The
    // manifest is edited to name one; no host has every locale to test this with.)
    // Signed again with the backup host's key: an unsigned edit is refused as such.
    ws.edit_signed(
        &format!(
            "props/{}/manifest.json",
            manifest["backup_id"].as_str().unwrap()
        ),
        |text| text.replace("\"C.UTF-8\"", "\"xx_XX.UTF-8\""),
    );
    let out = ws.pgproof(&["restore", "latest", "--target", &cluster.url("nowhere")]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = err.trim().lines().last().unwrap();
    assert!(
        line.contains("xx_XX.UTF-8") && line.contains("install that locale"),
        "{line}"
    );
    assert!(!database_exists(&cluster, "nowhere").await);
}

/// A SQL_ASCII database holding bytes that are not UTF-8 backs up and verifies.
#[tokio::test]
async fn sql_ascii_databases_with_latin1_bytes_verify() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    connect(&cluster, "postgres")
        .await
        .batch_execute("CREATE DATABASE latin TEMPLATE template0 ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'")
        .await
        .unwrap();
    connect(&cluster, "latin")
        .await
        .batch_execute(
            "CREATE TABLE b (id int, name text, tags text[], doc jsonb);
             INSERT INTO b VALUES (1, E'caf\\xe9 cr\\xe8me', ARRAY[E'\\xfc'], '{\"k\": 1}');",
        )
        .await
        .unwrap();
    for format in ["custom", "plain", "directory", "dedup"] {
        let ws = Workspace::new(&cluster, "latin", format);
        ws.verify_on(&cluster);
        ws.backup();
        let (report, code) = verify_latest(&ws);
        assert!(failed_checks(&report).is_empty(), "{format}: {report:#}");
        assert_eq!(code, Some(0));
        assert_eq!(check(&report, "fingerprint:public.b")["passed"], true);
    }
}

/// A materialized view refreshed before its table changed comes back recomputed:
/// that is a named failure, not a pass.
#[tokio::test]
async fn stale_materialized_views_are_reported() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_database(&cluster, "mv").await;
    connect(&cluster, "mv")
        .await
        .batch_execute(
            "CREATE TABLE t (v int); INSERT INTO t SELECT generate_series(1, 10);
             CREATE MATERIALIZED VIEW fresh AS SELECT sum(v) AS total FROM t;
             CREATE MATERIALIZED VIEW stale AS SELECT sum(v) AS total FROM t;
             CREATE MATERIALIZED VIEW never AS SELECT v FROM t WITH NO DATA;
             INSERT INTO t VALUES (100); REFRESH MATERIALIZED VIEW fresh;",
        )
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, "mv", "custom");
    ws.verify_on(&cluster);
    ws.backup();
    let (report, code) = verify_latest(&ws);
    assert_eq!(code, Some(3), "{report:#}");
    let failed: Vec<&str> = failed_checks(&report)
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["materialized-view:public.stale"], "{report:#}");
    assert!(
        check(&report, "materialized-view:public.stale")["detail"]
            .as_str()
            .unwrap()
            .contains("recomputed")
    );
    assert_eq!(
        check(&report, "materialized-view:public.fresh")["passed"],
        true
    );
}

/// Large objects are compared by content, not only counted.
#[tokio::test]
async fn large_object_contents_are_fingerprinted() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let client = create_database(&cluster, "los").await;
    client
        .batch_execute("SELECT lo_from_bytea(0, 'first'), lo_from_bytea(0, 'second')")
        .await
        .unwrap();
    let before = Fingerprint::compute(&client).await.unwrap();
    client
        .batch_execute(
            "SELECT lo_put(oid, 0, 'x') FROM pg_largeobject_metadata ORDER BY oid LIMIT 1",
        )
        .await
        .unwrap();
    let after = Fingerprint::compute(&client).await.unwrap();
    assert_eq!(before.large_objects, 2);
    assert_eq!(before.large_objects, after.large_objects);
    assert!(before.large_object_hash.is_some());
    assert_ne!(before.large_object_hash, after.large_object_hash);

    let ws = Workspace::new(&cluster, "los", "plain");
    ws.verify_on(&cluster);
    ws.backup();
    let (report, code) = verify_latest(&ws);
    assert_eq!(code, Some(0), "{report:#}");
    assert!(
        check(&report, "large-objects")["detail"]
            .as_str()
            .unwrap()
            .contains("contents")
    );
}

/// A role that cannot read a table (or sees it through row security) gets an error
/// naming the table, the privilege and the grant, before pg_dump runs.
#[tokio::test]
async fn missing_privileges_are_named() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    each(
        &connect(&cluster, "postgres").await,
        "CREATE ROLE limited LOGIN; CREATE DATABASE priv",
    )
    .await;
    connect(&cluster, "priv")
        .await
        .batch_execute(
            "CREATE TABLE a (v int); CREATE TABLE b (v int); CREATE TABLE c (v int);
             GRANT SELECT ON a, c TO limited;
             ALTER TABLE c ENABLE ROW LEVEL SECURITY;",
        )
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, "priv", "custom");
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(
        &config.replace(
            &cluster.url("priv"),
            &cluster
                .url("priv")
                .replace("postgres@", "limited@")
                .replace("user=postgres", "user=limited"),
        ),
    );
    let out = ws.pgproof(&["backup"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let err = err.trim().lines().last().unwrap_or_default();
    assert!(err.starts_with("pgproof: error: role limited"), "{err}");
    for needle in [
        "public.b (no SELECT)",
        "public.c (row security",
        "pg_read_all_data",
        "BYPASSRLS",
    ] {
        assert!(err.contains(needle), "{needle} not in {err}");
    }
    assert!(
        ws.sink_files()
            .iter()
            .all(|f| !f.ends_with("manifest.json"))
    );
}

/// The application's own invariant: recorded in the snapshot, run again on the
/// restore; a source that already breaks it, or a restore that answers otherwise,
/// fails verification with the invariant's name.
#[tokio::test]
async fn application_invariants_are_checked() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let client = create_database(&cluster, "inv").await;
    client
        .batch_execute(
            "CREATE SCHEMA app; CREATE TABLE app.ledger (id int, amount numeric);
             INSERT INTO app.ledger VALUES (1, 10), (2, -10);
             CREATE FUNCTION app.balanced() RETURNS boolean LANGUAGE sql STABLE
               AS 'SELECT coalesce(sum(amount), 0) = 0 FROM app.ledger';
             ALTER DATABASE inv SET search_path = app, public;",
        )
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, "inv", "custom");
    ws.verify_on(&cluster);
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&format!(
        "{config}\n[[verify.invariants]]\nname = \"balanced\"\nsql = \"SELECT balanced()\"\nexpect = \"t\"\n\n\
         [[verify.invariants]]\nname = \"table oid\"\nsql = \"SELECT 'app.ledger'::regclass::oid\"\n"
    ));
    let manifest = ws.backup();
    assert_eq!(manifest["invariants"].as_array().unwrap().len(), 2);
    let (report, code) = verify_latest(&ws);
    assert_eq!(code, Some(3), "{report:#}");
    assert_eq!(check(&report, "invariant:balanced")["passed"], true);
    // An OID is renumbered by any restore: the two answers differ, and that is named.
    let oid = check(&report, "invariant:table oid");
    assert_eq!(oid["passed"], false);
    assert!(
        oid["detail"].as_str().unwrap().contains("the source"),
        "{oid}"
    );

    // The source breaks the invariant: the backup says so, and verification fails.
    client
        .batch_execute("INSERT INTO app.ledger VALUES (3, 5)")
        .await
        .unwrap();
    ws.write_config(&format!(
        "{config}\n[[verify.invariants]]\nname = \"balanced\"\nsql = \"SELECT balanced()\"\nexpect = \"t\"\n"
    ));
    let out = ws.pgproof(&["backup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("balanced"), "{}", stderr(&out));
    let (report, code) = verify_latest(&ws);
    assert_eq!(code, Some(3));
    let balanced = check(&report, "invariant:balanced");
    assert_eq!(balanced["passed"], false);
    assert!(
        balanced["detail"]
            .as_str()
            .unwrap()
            .contains("already broke it"),
        "{balanced}"
    );

    // An invariant is exactly one read-only query: one that ends the snapshot's
    // transaction and writes, or writes through a function, fails the backup and
    // leaves the source untouched.
    client
        .batch_execute(
            "CREATE FUNCTION app.writes() RETURNS int LANGUAGE sql
               AS 'INSERT INTO app.ledger VALUES (99, 0) RETURNING 1'",
        )
        .await
        .unwrap();
    for sql in [
        "SELECT 1; COMMIT; CREATE TABLE app.pwned ()",
        "COMMIT",
        "SELECT app.writes()",
    ] {
        ws.write_config(&format!(
            "{config}\n[[verify.invariants]]\nname = \"escape\"\nsql = \"{sql}\"\n"
        ));
        let out = ws.pgproof(&["backup"]);
        assert_ne!(out.status.code(), Some(0), "{sql}: {}", stderr(&out));
        assert!(stderr(&out).contains("escape"), "{sql}: {}", stderr(&out));
        let written: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE tablename = 'pwned'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(written, 0, "{sql} wrote to the source");
        let rows: i64 = client
            .query_one("SELECT count(*) FROM app.ledger WHERE id = 99", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 0, "{sql} wrote to the source");
    }
}

/// Method v4 hashes a row whose every column is hashed exactly by its type with
/// `hash_record_extended`, columns by name: each changed value of each such type
/// changes the table's hash, NULL differs from every value, and undoing a change
/// gives the first hash back. A table with any other column type takes the byte path.
#[tokio::test]
async fn the_v4_row_hash_sees_every_change_of_every_exactly_hashed_type() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let client = create_database(&cluster, "hashes").await;
    client
        .batch_execute(
            "CREATE TABLE exact (id int8, b bool, c \"char\", s int2, i int4, o oid, by bytea,
                 u uuid, d date, tm time, ts timestamp, tz timestamptz, tx text,
                 vc varchar(10), bp char(4));
             INSERT INTO exact VALUES (1, true, 'a', 2, 3, 4, '\\x00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
                 '2026-12-01', '12:00', '2026-12-01 12:00', '2026-12-01 12:00+00', 'a', 'x', 'ab');
             CREATE TABLE bytes_path (id int8, f float8);
             INSERT INTO bytes_path VALUES (1, 0.5);",
        )
        .await
        .unwrap();
    let hash = |table: &'static str| {
        let client = &client;
        async move {
            let fp = Fingerprint::compute(client).await.unwrap();
            assert_eq!(fp.method, "rowhash-sum/v4");
            fp.tables[table].hash.clone()
        }
    };
    let first = hash("public.exact").await;
    // The fast path is what ran: the same sum by hand, columns in name order, 64-bit
    // ones as their send bytes, each row's hash hashed again.
    let by_hand: String = client
        .query_one(
            "SELECT sum(hashtextextended(hash_record_extended(ROW(b, bp, by, c, d, i, int8send(id), o, s, \
                    time_send(tm), timestamp_send(ts), tx, timestamptz_send(tz), u, vc), 0)::text, 0))::text FROM exact",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(first, by_hand);
    let changes = [
        ("id", "2"),
        // int8's own hash folds its halves together: 1 and 4294967296 alike.
        ("id", "4294967296"),
        ("b", "false"),
        ("c", "'b'"),
        ("s", "-2"),
        ("i", "33"),
        ("o", "5"),
        ("by", "'\\x0000'"),
        ("u", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12'"),
        ("d", "'2026-12-02'"),
        ("tm", "'12:00:00.000001'"),
        ("ts", "'2026-12-01 12:00:00.000001'"),
        ("tz", "'2026-12-01 12:00:00.000001+00'"),
        ("tx", "'a '"),
        ("tx", "NULL"),
        ("tx", "''"),
        ("vc", "'X'"),
        ("bp", "'abc'"),
        ("bp", "NULL"),
    ];
    for (column, value) in changes {
        let original: String = client
            .query_one(
                &format!("SELECT quote_nullable({column}::text) FROM exact"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        client
            .batch_execute(&format!("UPDATE exact SET {column} = {value}"))
            .await
            .unwrap();
        assert_ne!(
            hash("public.exact").await,
            first,
            "{column} = {value} unseen"
        );
        client
            .batch_execute(&format!("UPDATE exact SET {column} = {original}"))
            .await
            .unwrap();
    }
    assert_eq!(hash("public.exact").await, first);

    // Values moved between rows: the same values per column, other rows.
    client
        .batch_execute(
            "CREATE TABLE pairs (a int4, b text);
             INSERT INTO pairs VALUES (1, 'a'), (2, 'b');",
        )
        .await
        .unwrap();
    let paired = hash("public.pairs").await;
    client
        .batch_execute("UPDATE pairs SET b = CASE b WHEN 'a' THEN 'b' ELSE 'a' END")
        .await
        .unwrap();
    assert_ne!(
        hash("public.pairs").await,
        paired,
        "values moved between rows unseen"
    );

    // A float column: the byte path, whose sum is not hash_record_extended's.
    let floats = hash("public.bytes_path").await;
    let record_sum: String = client
        .query_one(
            "SELECT sum(hash_record_extended(ROW(f, id), 0))::text FROM bytes_path",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_ne!(floats, record_sum);
}

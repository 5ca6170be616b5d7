//! Partial restores (`restore --table/--schema/--exclude-table`) on a real
//! PostgreSQL: a table comes with what it needs, goes into a new database or beside
//! what an existing one holds, and is proven against the backup's fingerprint; a
//! restore that differs fails its check, by name.

#![allow(clippy::unwrap_used)]

use pgproof_core::scratch::EphemeralCluster;
use pgproof_tests::{Workspace, connect, create_database, start_cluster, stderr};
use serde_json::Value;

const SCHEMA: &str = "
    CREATE SCHEMA app;
    CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
    CREATE FUNCTION app.positive(n int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT n > 0';
    CREATE TABLE app.items (
        id serial PRIMARY KEY,
        qty int CHECK (app.positive(qty)),
        mood app.mood DEFAULT 'ok',
        note text
    );
    CREATE INDEX items_note ON app.items (note);
    CREATE TABLE app.orders (id int PRIMARY KEY, item int REFERENCES app.items (id));
    CREATE TABLE public.unrelated (v text);
    INSERT INTO app.items (qty, mood, note)
        SELECT g, (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::app.mood, 'note ' || g
        FROM generate_series(1, 500) g;
    INSERT INTO app.orders SELECT g, g FROM generate_series(1, 50) g;
    INSERT INTO public.unrelated SELECT 'row ' || g FROM generate_series(1, 20) g;
";

async fn source(cluster: &EphemeralCluster, name: &str) {
    create_database(cluster, name)
        .await
        .batch_execute(SCHEMA)
        .await
        .unwrap();
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn check<'a>(partial: &'a Value, name: &str) -> &'a Value {
    partial["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {partial}"))
}

async fn count(cluster: &EphemeralCluster, db: &str, table: &str) -> i64 {
    connect(cluster, db)
        .await
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

async fn exists(cluster: &EphemeralCluster, db: &str, table: &str) -> bool {
    connect(cluster, db)
        .await
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .unwrap()
        .get(0)
}

/// One table with its sequence, enum type and the function its check calls, into a
/// new database and back into the source after the table was dropped there.
async fn one_table_is_restored_and_proven(format: &str) {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let db = format!("part_{format}");
    source(&cluster, &db).await;
    let ws = Workspace::new(&cluster, &db, format);
    ws.backup();

    let fresh = format!("{db}_items");
    let out = json(&ws.pgproof_ok(&[
        "restore",
        "latest",
        "--table",
        "app.items",
        "--target",
        &cluster.url(&fresh),
        "--json",
    ]));
    let partial = &out["partial"];
    assert_eq!(partial["passed"], true, "{out}");
    assert_eq!(check(partial, "fingerprint:app.items")["passed"], true);
    assert_eq!(check(partial, "sequence:app.items_id_seq")["passed"], true);
    let created: Vec<&str> = partial["created"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for needed in [
        "SCHEMA - app",
        "TYPE app mood",
        "FUNCTION app positive(integer)",
    ] {
        assert!(
            created.iter().any(|c| c.starts_with(needed)),
            "{needed}: {created:?}"
        );
    }
    assert_eq!(count(&cluster, &fresh, "app.items").await, 500);
    assert!(!exists(&cluster, &fresh, "app.orders").await);
    assert!(!exists(&cluster, &fresh, "public.unrelated").await);
    let restored = connect(&cluster, &fresh).await;
    // The sequence goes on where the source's was, and the check still calls the
    // function.
    let next: i32 = restored
        .query_one("INSERT INTO app.items (qty) VALUES (1) RETURNING id", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(next, 501);
    assert!(
        restored
            .batch_execute("INSERT INTO app.items (qty) VALUES (0)")
            .await
            .is_err(),
        "the check calling app.positive came along"
    );

    // "Yesterday's rows back": the table dropped at the source, restored into it
    // beside everything else, which stays untouched.
    let live = connect(&cluster, &db).await;
    live.batch_execute(
        "DROP TABLE app.items CASCADE; INSERT INTO public.unrelated VALUES ('after the backup')",
    )
    .await
    .unwrap();
    let out = json(&ws.pgproof_ok(&[
        "restore",
        "latest",
        "-t",
        "app.it*",
        "--target",
        &cluster.url(&db),
        "--json",
    ]));
    let partial = &out["partial"];
    assert_eq!(out["created"], false);
    assert_eq!(partial["passed"], true, "{out}");
    assert_eq!(check(partial, "fingerprint:app.items")["passed"], true);
    let present = partial["present"].to_string();
    for kept in ["SCHEMA - app", "TYPE app mood", "FUNCTION app positive"] {
        assert!(present.contains(kept), "{kept}: {present}");
    }
    assert_eq!(count(&cluster, &db, "app.items").await, 500);
    assert_eq!(count(&cluster, &db, "app.orders").await, 50);
    assert_eq!(count(&cluster, &db, "public.unrelated").await, 21);

    // Again, now that the table exists: refused, nothing touched.
    let refused = ws.pgproof(&[
        "restore",
        "latest",
        "-t",
        "app.items",
        "--target",
        &cluster.url(&db),
    ]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("already has app.items"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(count(&cluster, &db, "app.items").await, 500);
}

#[tokio::test]
async fn one_table_of_a_custom_backup_is_restored_and_proven() {
    one_table_is_restored_and_proven("custom").await;
}

#[tokio::test]
async fn one_table_of_a_directory_backup_is_restored_and_proven() {
    one_table_is_restored_and_proven("directory").await;
}

#[tokio::test]
async fn one_table_of_a_deduplicated_backup_is_restored_and_proven() {
    one_table_is_restored_and_proven("dedup").await;
}

/// A restore whose rows differ from the backup's fails its check by name: here
/// pg_restore is wrapped by a program that changes a row once it is done.
#[tokio::test]
async fn a_damaged_partial_restore_fails_its_check() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    source(&cluster, "part_damaged").await;
    let ws = Workspace::new(&cluster, "part_damaged", "custom");
    ws.backup();

    let real = cluster.tools().dir().to_path_buf();
    let wrapped = ws.dir.path().join("bin");
    std::fs::create_dir(&wrapped).unwrap();
    let script = wrapped.join("pg_restore");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\"{real}/pg_restore\" \"$@\" || exit $?\n\
             case \" $* \" in *--use-list=*) \"{real}/psql\" -X -q -d part_damaged_back \
             -c \"UPDATE app.items SET note = 'changed' WHERE id = 3\" >/dev/null || exit 9 ;; esac\n",
            real = real.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&config.replace(
        &format!("pg_bin_dir = \"{}\"", real.display()),
        &format!("pg_bin_dir = \"{}\"", wrapped.display()),
    ));

    let out = ws.pgproof(&[
        "restore",
        "latest",
        "--table",
        "app.items",
        "--target",
        &cluster.url("part_damaged_back"),
        "--json",
    ]);
    assert!(
        !out.status.success(),
        "a differing table must fail the restore"
    );
    let report = json(&String::from_utf8_lossy(&out.stdout));
    let partial = &report["partial"];
    assert_eq!(partial["passed"], false);
    let failed = check(partial, "fingerprint:app.items");
    assert_eq!(failed["passed"], false);
    assert!(
        failed["detail"]
            .as_str()
            .unwrap()
            .contains("expected 500 rows"),
        "{failed}"
    );
    assert!(
        stderr(&out).contains("fingerprint:app.items"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn what_needs_a_table_left_out_is_named_and_the_rest_restored() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    source(&cluster, "part_fk").await;
    let ws = Workspace::new(&cluster, "part_fk", "custom");
    ws.backup();
    let out = json(&ws.pgproof_ok(&[
        "restore",
        "latest",
        "--schema",
        "app",
        "--exclude-table",
        "app.items",
        "--target",
        &cluster.url("part_fk_orders"),
        "--json",
    ]));
    let partial = &out["partial"];
    assert_eq!(partial["passed"], true, "{out}");
    assert_eq!(partial["checks"].as_array().unwrap().len(), 1, "{partial}");
    let left_out = partial["left_out"].as_array().unwrap();
    assert_eq!(left_out.len(), 1, "{partial}");
    assert!(
        left_out[0]["entry"]
            .as_str()
            .unwrap()
            .contains("orders_item_fkey")
    );
    assert!(left_out[0]["reason"].as_str().unwrap().contains("--table"));
    assert_eq!(count(&cluster, "part_fk_orders", "app.orders").await, 50);

    // Nothing matches: an error naming the tables there are, and no database.
    let out = ws.pgproof(&[
        "restore",
        "latest",
        "--table",
        "nope*",
        "--target",
        &cluster.url("part_fk_none"),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("app.items"), "{}", stderr(&out));
    let dbs: i64 = connect(&cluster, "postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = 'part_fk_none'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dbs, 0);
}

#[tokio::test]
async fn plain_backups_are_refused_naming_the_formats_that_can() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    source(&cluster, "part_plain").await;
    let ws = Workspace::new(&cluster, "part_plain", "plain");
    ws.backup();
    let out = ws.pgproof(&[
        "restore",
        "latest",
        "--table",
        "app.items",
        "--target",
        &cluster.url("part_plain_back"),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("custom and directory"), "{err}");
}

/// `--as-of` takes the newest backup whose snapshot is not later than the time.
#[tokio::test]
async fn as_of_picks_the_newest_backup_taken_by_then() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    source(&cluster, "part_asof").await;
    let ws = Workspace::new(&cluster, "part_asof", "custom");
    let first = ws.backup();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let between = jiff::Timestamp::now().to_string();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    connect(&cluster, "part_asof")
        .await
        .batch_execute("INSERT INTO app.items (qty) SELECT g FROM generate_series(1, 10) g")
        .await
        .unwrap();
    let second = ws.backup();
    assert_ne!(first["backup_id"], second["backup_id"]);

    let out = json(&ws.pgproof_ok(&[
        "restore",
        "--as-of",
        &between,
        "--table",
        "app.items",
        "--target",
        &cluster.url("part_asof_then"),
        "--json",
    ]));
    assert_eq!(out["backup_id"], first["backup_id"]);
    assert_eq!(out["partial"]["passed"], true);
    assert_eq!(count(&cluster, "part_asof_then", "app.items").await, 500);

    let out = ws.pgproof(&[
        "restore",
        "--as-of",
        "2000-01-01T00:00:00Z",
        "--table",
        "app.items",
        "--target",
        &cluster.url("part_asof_never"),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("at or before"), "{}", stderr(&out));
}

/// Names with quotes, dots, spaces, semicolons and upper case travel from the backup
/// to the target server as data: the table is found by its quoted pattern, restored
/// with its schema, type and sequence, and proven.
#[tokio::test]
async fn hostile_names_are_restored_and_proven() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_database(&cluster, "part_names")
        .await
        .batch_execute(
            r#"
            CREATE SCHEMA "Odd Schema; x";
            CREATE TYPE "Odd Schema; x"."state.kind" AS ENUM ('a', 'b');
            CREATE TABLE "Odd Schema; x"."we""ird. name" (
                id serial PRIMARY KEY, s "Odd Schema; x"."state.kind", t text);
            INSERT INTO "Odd Schema; x"."we""ird. name" (s, t)
                SELECT 'b', 'v' || g FROM generate_series(1, 40) g;
            CREATE TABLE public.other (v int);
            "#,
        )
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, "part_names", "custom");
    ws.backup();
    let out = json(&ws.pgproof_ok(&[
        "restore",
        "latest",
        "--table",
        r#""Odd Schema; x"."we""ird. name""#,
        "--target",
        &cluster.url("part_names_back"),
        "--json",
    ]));
    let partial = &out["partial"];
    assert_eq!(partial["passed"], true, "{out}");
    assert_eq!(
        check(partial, r#"fingerprint:"Odd Schema; x"."we""ird. name""#)["passed"],
        true
    );
    assert_eq!(partial["checks"].as_array().unwrap().len(), 2, "{partial}");
    assert_eq!(
        count(
            &cluster,
            "part_names_back",
            r#""Odd Schema; x"."we""ird. name""#
        )
        .await,
        40
    );
    assert!(!exists(&cluster, "part_names_back", "public.other").await);
}

/// "Get yesterday's rows back": the table restored beside the live one under
/// another name, with its indexes and sequence named after it, proven where it
/// landed; the live table and the rest of the database stay as they are.
#[tokio::test]
async fn a_table_is_restored_beside_the_live_one_under_another_name() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    source(&cluster, "part_rename").await;
    let ws = Workspace::new(&cluster, "part_rename", "directory");
    ws.backup();
    let live = connect(&cluster, "part_rename").await;
    live.batch_execute(
        "DELETE FROM app.items WHERE id > 100 AND id NOT IN (SELECT item FROM app.orders)",
    )
    .await
    .unwrap();

    let out = json(&ws.pgproof_ok(&[
        "restore",
        "latest",
        "--table",
        "app.items",
        "--rename-to",
        "items_yesterday",
        "--target",
        &cluster.url("part_rename"),
        "--json",
    ]));
    let partial = &out["partial"];
    assert_eq!(partial["passed"], true, "{out}");
    assert_eq!(partial["restored_as"], "app.items_yesterday");
    let proven = check(partial, "fingerprint:app.items");
    assert_eq!(proven["passed"], true);
    assert!(
        proven["detail"]
            .as_str()
            .unwrap()
            .starts_with("as app.items_yesterday")
    );
    assert_eq!(
        count(&cluster, "part_rename", "app.items_yesterday").await,
        500
    );
    assert_eq!(count(&cluster, "part_rename", "app.items").await, 100);
    assert_eq!(count(&cluster, "part_rename", "app.orders").await, 50);
    for renamed in ["app.items_yesterday_pkey", "app.items_yesterday_id_seq"] {
        assert!(exists(&cluster, "part_rename", renamed).await, "{renamed}");
    }
    let leftovers: i64 = connect(&cluster, "postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgproof\\_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        leftovers, 0,
        "the database the table was proven in first is gone"
    );

    // The name is taken now: refused, nothing changed.
    let again = ws.pgproof(&[
        "restore",
        "latest",
        "--table",
        "app.items",
        "--rename-to",
        "items_yesterday",
        "--target",
        &cluster.url("part_rename"),
    ]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("items_yesterday"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        count(&cluster, "part_rename", "app.items_yesterday").await,
        500
    );
}

/// A child table restored under a parent the target has would add its rows to that
/// parent's queries: refused, nothing touched; into a new database it comes with its
/// parent's definition (no rows) and is proven.
#[tokio::test]
async fn a_child_is_never_restored_under_a_live_parent() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_database(&cluster, "part_kids")
        .await
        .batch_execute(
            "CREATE TABLE base (id int, v text);
             CREATE TABLE kid (extra int) INHERITS (base);
             INSERT INTO base VALUES (1, 'parent row');
             INSERT INTO kid SELECT g, 'kid ' || g, g FROM generate_series(1, 30) g;",
        )
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, "part_kids", "custom");
    ws.backup();
    connect(&cluster, "part_kids")
        .await
        .batch_execute("DROP TABLE kid")
        .await
        .unwrap();
    let refused = ws.pgproof(&[
        "restore",
        "latest",
        "-t",
        "kid",
        "--target",
        &cluster.url("part_kids"),
    ]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("TABLE public base"),
        "{}",
        stderr(&refused)
    );
    assert!(!exists(&cluster, "part_kids", "public.kid").await);
    assert_eq!(count(&cluster, "part_kids", "base").await, 1);
    let renamed = ws.pgproof(&[
        "restore",
        "latest",
        "-t",
        "kid",
        "--rename-to",
        "kid_back",
        "--target",
        &cluster.url("part_kids"),
    ]);
    assert!(!renamed.status.success());
    assert_eq!(count(&cluster, "part_kids", "base").await, 1);

    let out = json(&ws.pgproof_ok(&[
        "restore",
        "latest",
        "-t",
        "kid",
        "--target",
        &cluster.url("part_kids_new"),
        "--json",
    ]));
    assert_eq!(out["partial"]["passed"], true, "{out}");
    assert_eq!(count(&cluster, "part_kids_new", "ONLY base").await, 0);
    assert_eq!(count(&cluster, "part_kids_new", "kid").await, 30);
}

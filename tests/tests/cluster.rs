//! Whole-cluster recovery (issue 20, item 3): a run with `databases = "all"` stores
//! the server's globals as a signed, encrypted cluster run, and `restore --cluster`
//! recreates the whole server from it on an empty cluster and proves it.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use pgproof_core::scratch::EphemeralCluster;
use pgproof_tests::{Workspace, connect, split_signed, start_cluster, stderr, table_summary};
use serde_json::Value;

/// A role name, a tablespace name and a directory that break naive quoting.
const ODD_ROLE: &str = r#"we'ird"; DROP ROLE readers; --"#;
const ODD_TABLESPACE: &str = r#"fast'ts"; --"#;
const ODD_VALUE: &str = r#"it's; DROP TABLE orders; --"#;

/// A directory for a tablespace beside `cluster`'s socket, owned by the server's
/// user (a tablespace's directory must be).
fn server_dir(cluster: &EphemeralCluster, name: &str) -> PathBuf {
    let dir = cluster.socket_dir().join(name);
    std::fs::create_dir(&dir).unwrap();
    if let Some(user) = cluster.run_as() {
        let out = Command::new("chown").arg(user).arg(&dir).output().unwrap();
        assert!(out.status.success(), "chown: {}", stderr(&out));
    }
    dir
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Roles with attributes, passwords and comments, memberships (one with the admin
/// option, one of a predefined role), settings everywhere and in one database, a
/// tablespace with an option and a comment, and three databases whose objects
/// belong to those roles, one table in the tablespace.
async fn populate(source: &EphemeralCluster, tablespace_dir: &Path) {
    let admin = connect(source, "postgres").await;
    let odd = quote_ident(ODD_ROLE);
    let ts = quote_ident(ODD_TABLESPACE);
    let value = quote_literal(ODD_VALUE);
    let location = quote_literal(&tablespace_dir.display().to_string());
    // One statement at a time: CREATE TABLESPACE and CREATE DATABASE refuse to share
    // a query string (an implicit transaction).
    for statement in [
        "CREATE ROLE readers NOLOGIN".to_owned(),
        "COMMENT ON ROLE readers IS 'people who read'".to_owned(),
        "CREATE ROLE app_owner LOGIN CREATEDB CONNECTION LIMIT 7 \
         VALID UNTIL '2031-01-01 00:00:00+00' PASSWORD 'secret-app'"
            .to_owned(),
        format!("CREATE ROLE {odd} LOGIN PASSWORD 'second-secret'"),
        "CREATE ROLE auditor LOGIN NOINHERIT".to_owned(),
        "CREATE ROLE ops_admin CREATEROLE".to_owned(),
        "GRANT readers TO app_owner".to_owned(),
        format!("GRANT readers TO {odd} WITH ADMIN OPTION"),
        "GRANT app_owner TO ops_admin".to_owned(),
        "GRANT pg_read_all_data TO auditor".to_owned(),
        "ALTER ROLE app_owner SET work_mem = '64MB'".to_owned(),
        format!("ALTER ROLE {odd} SET application_name = {value}"),
        "ALTER ROLE readers SET search_path = app, \"Odd \"\"schema\"".to_owned(),
        format!("CREATE TABLESPACE {ts} OWNER app_owner LOCATION {location}"),
        format!("ALTER TABLESPACE {ts} SET (random_page_cost = 1.5)"),
        format!("COMMENT ON TABLESPACE {ts} IS 'the fast disk'"),
        "CREATE DATABASE shop OWNER app_owner".to_owned(),
        format!("CREATE DATABASE hr OWNER {odd}"),
        "CREATE DATABASE analytics OWNER ops_admin".to_owned(),
        "ALTER ROLE app_owner IN DATABASE shop SET statement_timeout = '5s'".to_owned(),
    ] {
        admin
            .batch_execute(&statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    connect(source, "shop")
        .await
        .batch_execute(&format!(
            "SET ROLE app_owner;
             CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL, qty int) TABLESPACE {ts};
             INSERT INTO orders (item, qty) SELECT 'item ' || g, g % 7 FROM generate_series(1, 2000) g;
             CREATE TABLE customers (id int PRIMARY KEY, name text);
             INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 300) g;
             GRANT SELECT ON orders, customers TO readers;"
        ))
        .await
        .unwrap();
    connect(source, "hr")
        .await
        .batch_execute(&format!(
            "SET ROLE {odd};
             CREATE TABLE staff (id int PRIMARY KEY, name text, salary numeric);
             INSERT INTO staff SELECT g, 'person ' || g, g * 1000.5 FROM generate_series(1, 150) g;
             GRANT SELECT ON staff TO readers;"
        ))
        .await
        .unwrap();
    connect(source, "analytics")
        .await
        .batch_execute(
            "CREATE TABLE events (at timestamptz, kind text, payload jsonb);
             INSERT INTO events SELECT timestamptz '2026-01-01' + g * interval '1 minute', 'k' || (g % 5),
                    jsonb_build_object('g', g) FROM generate_series(1, 5000) g;
             ALTER TABLE events OWNER TO auditor;",
        )
        .await
        .unwrap();
}

/// What the server holds of roles, memberships, settings and tablespaces, read
/// independently of pgproof: equal on both clusters after a restore.
async fn server_globals(cluster: &EphemeralCluster) -> Vec<String> {
    let client = connect(cluster, "postgres").await;
    let queries = [
        "SELECT format('%s super=%s inherit=%s createrole=%s createdb=%s login=%s repl=%s bypass=%s limit=%s until=%s pw=%s comment=%s',
                rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication,
                rolbypassrls, rolconnlimit, rolvaliduntil AT TIME ZONE 'UTC', rolpassword, shobj_description(oid, 'pg_authid'))
         FROM pg_authid WHERE rolname !~ '^pg_' ORDER BY rolname",
        "SELECT format('%s in %s admin=%s', m.rolname, g.rolname, a.admin_option)
         FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member
         ORDER BY 1",
        "SELECT format('%s in %s: %s', r.rolname, coalesce(d.datname, '*'), s.setconfig)
         FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole LEFT JOIN pg_database d ON d.oid = s.setdatabase
         ORDER BY 1",
        "SELECT format('%s owner=%s options=%s comment=%s', spcname, pg_get_userbyid(spcowner), spcoptions,
                shobj_description(oid, 'pg_tablespace'))
         FROM pg_tablespace ORDER BY 1",
        "SELECT format('%s owner=%s', datname, pg_get_userbyid(datdba)) FROM pg_database ORDER BY 1",
    ];
    let mut out = Vec::new();
    for q in queries {
        for row in client.query(q, &[]).await.unwrap() {
            out.push(row.get::<_, String>(0));
        }
    }
    out
}

async fn roles_of(cluster: &EphemeralCluster) -> Vec<String> {
    connect(cluster, "postgres")
        .await
        .query(
            "SELECT rolname::text FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect()
}

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}): {} / {}",
            String::from_utf8_lossy(&out.stdout),
            stderr(out)
        )
    })
}

/// A cluster with roles (hostile names among them), memberships, settings, a
/// tablespace and three databases is backed up with `databases = "all"` and
/// recreated on an empty second cluster: every database proves (fingerprints equal),
/// the globals read back equal the recorded ones (password verifiers included), and
/// what the server holds, read without pgproof, is the source's. A target that is
/// not empty, or a tablespace location that is not usable there, is refused, and
/// nothing is left half-made.
#[tokio::test]
async fn a_whole_cluster_is_recreated_on_an_empty_one_and_proven() {
    let Some(source) = start_cluster() else {
        return;
    };
    let Some(target) = start_cluster() else {
        return;
    };
    let source_ts = server_dir(&source, r#"ts "src"; dir"#);
    populate(&source, &source_ts).await;

    let ws = Workspace::new(&source, "postgres", "custom");
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&format!(
        "{}\n[globals]\npasswords = true\n",
        config.replace("[source]\n", "[source]\ndatabases = \"all\"\n")
    ));
    let out = ws.pgproof_ok(&["backup"]);
    assert!(out.contains("cluster run"), "{out}");

    // The run is listed, and nothing of it is a database to check or prune.
    let runs = json_of(&ws.pgproof(&["list", "--clusters", "--json"]));
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run_id = runs[0]["run_id"].as_str().unwrap().to_owned();
    let mut databases: Vec<&str> = runs[0]["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["database"].as_str().unwrap())
        .collect();
    databases.sort_unstable();
    assert_eq!(databases, ["analytics", "hr", "postgres", "shop"]);
    assert_eq!(runs[0]["passwords"], true);
    let check = ws.pgproof(&["check", "--json"]);
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(!String::from_utf8_lossy(&check.stdout).contains(".cluster"));
    // The verifiers are inside the encrypted object only.
    for file in ws.sink_files() {
        let bytes = std::fs::read(ws.sink.join(&file)).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("SCRAM-SHA-256"),
            "{file} holds a password verifier"
        );
        assert!(!text.contains("secret-app"), "{file} holds a password");
    }

    // A recorded location that is in use (the source's, on this host) is refused,
    // saying how to proceed, and the target is left as it was.
    let out = ws.pgproof(&[
        "restore",
        "--cluster",
        "latest",
        "--target",
        &target.url("postgres"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(message.contains("--tablespace-dir"), "{message}");
    assert!(!message.contains("SCRAM"), "{message}");
    assert_eq!(roles_of(&target).await, ["postgres"]);

    let target_ts = server_dir(&target, r#"ts "dst"; x"#);
    let remap = format!("{ODD_TABLESPACE}={}", target_ts.display());
    let out = ws.pgproof(&[
        "restore",
        "--cluster",
        &run_id,
        "--target",
        &target.url("postgres"),
        "--tablespace-dir",
        &remap,
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let outcome = json_of(&out);
    assert_eq!(outcome["passed"], true, "{outcome:#}");
    let proofs = outcome["databases"].as_array().unwrap();
    assert_eq!(proofs.len(), 4);
    for proof in proofs {
        let checks = proof["checks"].as_array().unwrap();
        assert_eq!(proof["passed"], true, "{proof:#}");
        if proof["database"] != "postgres" {
            assert!(
                checks
                    .iter()
                    .any(|c| c["name"].as_str().unwrap().starts_with("fingerprint:")
                        && c["passed"] == true),
                "{proof:#}"
            );
        }
    }
    let names: Vec<&str> = outcome["globals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "globals:roles",
            "globals:memberships",
            "globals:role-settings",
            "globals:tablespaces",
            "globals:passwords"
        ]
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("SCRAM"));

    // What the servers hold, read without pgproof: the same, but for the tablespace's
    // directory (which was moved on purpose) and the rows, table by table.
    assert_eq!(server_globals(&target).await, server_globals(&source).await);
    let location: String = connect(&target, "postgres")
        .await
        .query_one(
            "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = $1",
            &[&ODD_TABLESPACE],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(location, target_ts.display().to_string());
    let in_tablespace: String = connect(&target, "shop")
        .await
        .query_one(
            "SELECT coalesce(t.spcname::text, '') FROM pg_class c LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace WHERE c.relname = 'orders'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_tablespace, ODD_TABLESPACE);
    for db in ["shop", "hr", "analytics"] {
        assert_eq!(
            table_summary(&connect(&target, db).await).await,
            table_summary(&connect(&source, db).await).await,
            "{db}"
        );
    }

    // The target is no longer empty: a second restore is refused, naming what is there.
    let out = ws.pgproof(&[
        "restore",
        "--cluster",
        "latest",
        "--target",
        &target.url("postgres"),
        "--tablespace-dir",
        &remap,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(message.contains("not an empty cluster"), "{message}");
    assert!(message.contains("app_owner"), "{message}");
}

/// The sink is untrusted: a forged cluster run (unsigned, or a genuine record copied
/// under another run's key) and a replaced globals object (encrypted to the public
/// recipient, creating a superuser) are refused before anything reaches the target.
#[tokio::test]
async fn forged_cluster_runs_and_globals_are_refused_before_use() {
    let Some(source) = start_cluster() else {
        return;
    };
    let Some(target) = start_cluster() else {
        return;
    };
    connect(&source, "postgres")
        .await
        .batch_execute("CREATE ROLE app LOGIN")
        .await
        .unwrap();
    connect(&source, "postgres")
        .await
        .batch_execute("CREATE DATABASE app OWNER app")
        .await
        .unwrap();
    let ws = Workspace::new(&source, "postgres", "custom");
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&config.replace("[source]\n", "[source]\ndatabases = \"all\"\n"));
    ws.pgproof_ok(&["backup"]);
    let runs = json_of(&ws.pgproof(&["list", "--clusters", "--json"]));
    let run_id = runs[0]["run_id"].as_str().unwrap().to_owned();
    let record_key = format!(".cluster/{run_id}/cluster.json");
    let record = std::fs::read_to_string(ws.sink.join(&record_key)).unwrap();
    let restore = |which: &str| {
        ws.pgproof(&[
            "restore",
            "--cluster",
            which,
            "--target",
            &target.url("postgres"),
        ])
    };
    let refused = |out: std::process::Output, why: &str| {
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        assert!(stderr(&out).contains(why), "{why}: {}", stderr(&out));
    };

    // An unsigned run, newer than the real one, naming a superuser's globals.
    let forged_id = "29990101T000000.000Z-f0f0";
    let (payload, _) = split_signed(&record);
    let forged = payload.replace(&run_id, forged_id);
    std::fs::create_dir_all(ws.sink.join(format!(".cluster/{forged_id}"))).unwrap();
    std::fs::write(
        ws.sink.join(format!(".cluster/{forged_id}/cluster.json")),
        &forged,
    )
    .unwrap();
    refused(restore("latest"), "is not signed");
    refused(restore(forged_id), "is not signed");
    refused(ws.pgproof(&["list", "--clusters"]), "is not signed");
    // The genuine record copied under the forged run's key: signed for another key.
    std::fs::write(
        ws.sink.join(format!(".cluster/{forged_id}/cluster.json")),
        &record,
    )
    .unwrap();
    refused(restore(forged_id), "copied from another object");
    std::fs::remove_dir_all(ws.sink.join(format!(".cluster/{forged_id}"))).unwrap();

    // The globals object replaced by one anyone could write (encrypted to the public
    // recipient) that makes a superuser.
    let globals_key = format!(".cluster/{run_id}/globals.json.age");
    let hostile = serde_json::json!({
        "server_version_num": 150000, "bootstrap": "postgres", "passwords": false,
        "roles": [{"name": "mallory", "superuser": true, "inherit": true, "createrole": true,
                   "createdb": true, "login": true, "replication": true, "bypassrls": true,
                   "connection_limit": -1}],
        "memberships": [], "role_settings": [], "tablespaces": []
    });
    let recipients =
        pgproof_core::codec::Recipients::load(std::slice::from_ref(&ws.public_key), "test", None)
            .unwrap();
    let (stored, _) = pgproof_core::codec::CodecChain::new(None, true)
        .encode(
            hostile.to_string().as_bytes(),
            Vec::new(),
            Some(&recipients),
            None,
        )
        .map_err(|e| e.into_error())
        .unwrap();
    let genuine = std::fs::read(ws.sink.join(&globals_key)).unwrap();
    std::fs::write(ws.sink.join(&globals_key), stored).unwrap();
    refused(restore(&run_id), "was replaced or damaged");
    std::fs::write(ws.sink.join(&globals_key), genuine).unwrap();

    // A database's manifest replaced by another validly signed one (a leaked key, or
    // an operator's edit): the run vouches for exactly the manifest it recorded.
    let app = runs[0]["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["database"] == "app")
        .unwrap();
    let manifest_key = format!("app/{}/manifest.json", app["backup_id"].as_str().unwrap());
    let manifest = std::fs::read(ws.sink.join(&manifest_key)).unwrap();
    ws.edit_signed(&manifest_key, |m| m.replacen('{', "{ ", 1));
    refused(restore(&run_id), "is not the one cluster run");
    std::fs::write(ws.sink.join(&manifest_key), manifest).unwrap();
    assert_eq!(roles_of(&target).await, ["postgres"]);

    // A damaged dump found while restoring the last database (`postgres`, after
    // `app`): everything this restore created is dropped again, and the error says
    // what had been restored.
    let postgres = runs[0]["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["database"] == "postgres")
        .unwrap();
    let dump_key = format!(
        "postgres/{}/dump.pgc.zst.age",
        postgres["backup_id"].as_str().unwrap()
    );
    let dump = std::fs::read(ws.sink.join(&dump_key)).unwrap();
    let mut damaged = dump.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(ws.sink.join(&dump_key), damaged).unwrap();
    let out = restore(&run_id);
    refused(out, "the databases restored before it (app)");
    std::fs::write(ws.sink.join(&dump_key), dump).unwrap();
    assert_eq!(roles_of(&target).await, ["postgres"]);
    assert!(!pgproof_tests::database_exists(&target, "app").await);

    // Untouched, the same run restores.
    let out = restore(&run_id);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(roles_of(&target).await, ["app", "postgres"]);
}

/// Password verifiers are stored only encrypted: `[globals] passwords = true` with
/// encryption off is a configuration error naming both keys.
#[tokio::test]
async fn passwords_without_encryption_are_refused() {
    let Some(source) = start_cluster() else {
        return;
    };
    let ws = Workspace::new(&source, "postgres", "custom");
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&format!(
        "{}\n[globals]\npasswords = true\n",
        config
            .replace("[source]\n", "[source]\ndatabases = \"all\"\n")
            .replace("[encryption]\n", "[encryption]\nenabled = false\n")
    ));
    let out = ws.pgproof(&["backup"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(
        message.contains("globals.passwords") && message.contains("encryption"),
        "{message}"
    );
    assert!(ws.sink_files().is_empty(), "{:?}", ws.sink_files());
}

/// Cluster runs are upkept with the catalog: `check` finds a run whose globals object
/// is gone, `prune` deletes a run once one of its backups is pruned (and a failed
/// run's globals after the grace period), and keeps the run whose backups it keeps.
#[tokio::test]
async fn check_and_prune_tend_cluster_runs() {
    let Some(source) = start_cluster() else {
        return;
    };
    connect(&source, "postgres")
        .await
        .batch_execute("CREATE DATABASE app")
        .await
        .unwrap();
    let ws = Workspace::new(&source, "postgres", "custom");
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&format!(
        "{}\n[retention]\nkeep_last = 1\n",
        config.replace("[source]\n", "[source]\ndatabases = \"all\"\n")
    ));
    ws.pgproof_ok(&["backup"]);
    ws.pgproof_ok(&["backup"]);
    let runs = json_of(&ws.pgproof(&["list", "--clusters", "--json"]));
    let ids: Vec<String> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2);
    let out = ws.pgproof(&["check", "--read-data"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A failed run's globals, without a record, from long ago.
    let orphan = ws.sink.join(".cluster/20200101T000000.000Z-0a0a");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("globals.json.age"), b"left by a failed run").unwrap();

    let out = ws.pgproof(&["prune", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let decisions = json_of(&out);
    let clusters: Vec<(&str, &str)> = decisions["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["database"] == ".cluster")
        .map(|d| {
            (
                d["backup_id"].as_str().unwrap(),
                d["action"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        clusters,
        [
            ("20200101T000000.000Z-0a0a", "delete-orphan"),
            (ids[0].as_str(), "delete"),
            (ids[1].as_str(), "keep")
        ]
    );
    assert!(!orphan.exists());
    let runs = json_of(&ws.pgproof(&["list", "--clusters", "--json"]));
    assert_eq!(runs.as_array().unwrap().len(), 1);
    assert_eq!(runs[0]["run_id"], ids[1].as_str());

    // The kept run's globals object deleted behind pgproof's back: a finding.
    std::fs::remove_file(
        ws.sink
            .join(format!(".cluster/{}/globals.json.age", ids[1])),
    )
    .unwrap();
    let out = ws.pgproof(&["check"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("globals object"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

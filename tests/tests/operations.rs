//! Running unattended: many databases per run, with one failing among them.

#![allow(clippy::unwrap_used)]

use pgproof_tests::{Workspace, connect, start_cluster, stderr};
use serde_json::Value;

/// `databases = "all"` backs up every connectable database but the excluded ones; a
/// database that fails (here: a table locked past the lock wait) does not stop the
/// others, and the exit code, the summary line and `--json` say which failed.
#[tokio::test]
async fn all_databases_with_one_failing() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let admin = connect(&cluster, "postgres").await;
    for db in ["alpha", "beta", "busy", "skip_me"] {
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
        connect(&cluster, db)
            .await
            .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1), (2)")
            .await
            .unwrap();
    }
    let blocker = connect(&cluster, "busy").await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let ws = Workspace::new(&cluster, "postgres", "custom");
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(
        &config
            .replace(
                "[source]\n",
                "[source]\ndatabases = \"all\"\nexclude = [\"skip_*\"]\n",
            )
            .replace("[dump]\n", "[dump]\nlock_wait_timeout_secs = 1\n"),
    );
    let out = ws.pgproof(&["backup", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let entries: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let committed: Vec<&str> = entries
        .iter()
        .filter(|e| e.get("backup_id").is_some())
        .map(|e| e["database"].as_str().unwrap())
        .collect();
    assert_eq!(committed, ["alpha", "beta", "postgres"]);
    let failed: Vec<&Value> = entries.iter().filter(|e| e["status"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{entries:#?}");
    assert_eq!(failed[0]["database"], "busy");
    assert!(
        failed[0]["error"].as_str().unwrap().contains("lock"),
        "{failed:?}"
    );
    let last = stderr(&out);
    let last = last.trim().lines().last().unwrap();
    assert!(last.contains("1 of 4 backups failed (busy)"), "{last}");
    drop(blocker);

    // The text form names the failed database on stdout too.
    ws.write_config(&config.replace(
        "[source]\n",
        "[source]\ndatabases = \"all\"\nexclude = [\"skip_*\", \"busy\"]\n",
    ));
    let listed = ws.pgproof_ok(&["backup"]);
    assert_eq!(listed.lines().count(), 3, "{listed}");

    // A misspelt keyword is a config error naming the key.
    ws.write_config(&config.replace("[source]\n", "[source]\ndatabases = \"everything\"\n"));
    let out = ws.pgproof(&["backup"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("source.databases"),
        "{}",
        stderr(&out)
    );
}

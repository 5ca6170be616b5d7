//! Rolling verification (`verify --tables-per-run`, `--budget`) on a real
//! PostgreSQL: each run proves the least recently proven tables, status tells how
//! many were proven within `status.max_table_unproven_age` (judged at injected
//! times), and a forged table proof counts for nothing.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use pgproof_tests::{Workspace, create_database, start_cluster, stderr};
use serde_json::Value;

const TABLES: usize = 12;

/// The tables each report proved (`fingerprint:<table>` checks that passed).
fn proven(reports: &Value) -> Vec<BTreeSet<String>> {
    reports
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["checks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["passed"] == true)
                .filter_map(|c| c["name"].as_str()?.strip_prefix("fingerprint:"))
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

fn status_at(ws: &Workspace, now: &str) -> (bool, Value) {
    let out = ws.pgproof_at(now, &["status", "--json"]);
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    (out.status.success(), report[0].clone())
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path.display().to_string());
        }
    }
    found
}

fn later(days: i64) -> String {
    (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * days)).to_string()
}

#[tokio::test]
async fn rolling_verification_reaches_every_table_within_the_window() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let db = create_database(&cluster, "rolling").await;
    for i in 1..=TABLES {
        db.batch_execute(&format!(
            "CREATE TABLE t{i:02} (id int PRIMARY KEY, v text);
             INSERT INTO t{i:02} SELECT g, md5(g::text) FROM generate_series(1, {}) g;",
            100 * i
        ))
        .await
        .unwrap();
    }
    let ws = Workspace::new(&cluster, "rolling", "custom");
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&format!(
        "{config}\n[status]\nmax_table_unproven_age = \"7d\"\n"
    ));
    ws.backup();

    let (healthy, before) = status_at(&ws, &later(0));
    assert!(!healthy);
    assert_eq!(before["tables"], TABLES);
    assert_eq!(before["tables_proven"], 0);

    // Three nights of five tables: the least recently proven first, so every table
    // is proven before any is proven twice.
    let mut nights = Vec::new();
    for _ in 0..3 {
        let out = ws.pgproof_ok(&["verify", "--tables-per-run", "5", "--json"]);
        let reports: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(reports.as_array().unwrap().len(), 1, "{out}");
        assert_eq!(reports[0]["passed"], true, "{out}");
        nights.push(proven(&reports).remove(0));
    }
    assert_eq!(nights[0].len(), 5);
    assert_eq!(nights[1].len(), 5);
    assert!(nights[0].is_disjoint(&nights[1]));
    // The third: the two never proven, then the oldest proven (the first night's,
    // all proven at one time, by name).
    let mut expected: BTreeSet<String> = nights[0].iter().take(3).cloned().collect();
    expected.extend(["public.t11".to_owned(), "public.t12".to_owned()]);
    assert_eq!(nights[2], expected);

    // Covered now; in six days still; in eight days the window has passed.
    let (healthy, now) = status_at(&ws, &later(0));
    assert!(healthy, "{now}");
    assert_eq!(now["tables_proven"], TABLES);
    let (healthy, _) = status_at(&ws, &later(6));
    assert!(healthy);
    let (healthy, stale) = status_at(&ws, &later(8));
    assert!(!healthy);
    assert_eq!(stale["tables_proven"], 0);
    assert!(
        stale["breaches"]
            .to_string()
            .contains("max_table_unproven_age"),
        "{stale}"
    );
    let prom = ws.dir.path().join("pgproof.prom");
    let out = ws.pgproof_at(
        &later(0),
        &["status", "--prometheus", prom.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(
        text.contains("pgproof_table_coverage_ratio{database=\"rolling\"} 1"),
        "{text}"
    );

    // A copy carries the table proofs: the replica's coverage is the same.
    let replica = ws.dir.path().join("replica");
    ws.pgproof_ok(&["copy", "--to", &format!("file://{}", replica.display())]);
    let copied = walk(&replica)
        .into_iter()
        .filter(|p| p.contains("/tables/"))
        .count();
    assert_eq!(copied, 3, "one table proof per night");

    // A budget takes batches until none is left: the whole rotation in one run.
    let out = ws.pgproof_ok(&[
        "verify",
        "--budget",
        "20m",
        "--tables-per-run",
        "4",
        "--json",
    ]);
    let batches = proven(&serde_json::from_str(&out).unwrap());
    assert_eq!(batches.len(), 3, "{out}");
    let all: BTreeSet<String> = batches.into_iter().flatten().collect();
    assert_eq!(all.len(), TABLES);
}

/// A table proof no trusted key signed, claiming every table passed, is a finding
/// and proves nothing.
#[tokio::test]
async fn a_forged_table_proof_proves_nothing() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_database(&cluster, "rolling_forged")
        .await
        .batch_execute("CREATE TABLE a (v int); INSERT INTO a VALUES (1); CREATE TABLE b (v int);")
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, "rolling_forged", "custom");
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&format!(
        "{config}\n[status]\nmax_table_unproven_age = \"7d\"\n"
    ));
    let manifest = ws.backup();
    let id = manifest["backup_id"].as_str().unwrap();
    let dir = ws.sink.join("rolling_forged").join(id).join("tables");
    std::fs::create_dir_all(&dir).unwrap();
    let now = jiff::Timestamp::now();
    std::fs::write(
        dir.join(format!("{}_passed.json", now.strftime("%Y%m%dT%H%M%S%.fZ"))),
        serde_json::json!({
            "backup_id": id,
            "database": "rolling_forged",
            "manifest_sha256": "",
            "verified_at": now.to_string(),
            "passed": true,
            "checks": [
                {"name": "fingerprint:public.a", "passed": true, "detail": ""},
                {"name": "fingerprint:public.b", "passed": true, "detail": ""}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let (healthy, status) = status_at(&ws, &later(0));
    assert!(!healthy);
    assert_eq!(status["tables_proven"], 0, "{status}");
    assert!(
        status["untrusted_objects"].to_string().contains("/tables/"),
        "{status}"
    );
}

/// A table that takes longer than the budget is left unfinished alone, recorded as
/// attempted and not proven; the next run proves the others instead of trying it
/// again, and status names it as unproven.
#[tokio::test]
async fn a_table_too_big_for_the_budget_holds_up_no_other() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let db = create_database(&cluster, "rolling_big").await;
    db.batch_execute(
        "CREATE TABLE a_big (id bigint PRIMARY KEY, v text);
         INSERT INTO a_big SELECT g, md5(g::text) FROM generate_series(1, 3000000) g;",
    )
    .await
    .unwrap();
    for i in 1..=4 {
        db.batch_execute(&format!(
            "CREATE TABLE s{i} (v int); INSERT INTO s{i} SELECT generate_series(1, 50);"
        ))
        .await
        .unwrap();
    }
    let ws = Workspace::new(&cluster, "rolling_big", "custom");
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&format!(
        "{config}\n[status]\nmax_table_unproven_age = \"7d\"\n"
    ));
    ws.backup();

    let out = ws.pgproof(&["verify", "--budget", "1s", "--tables-per-run", "4"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "no verdict on the backup: {said}{}",
        stderr(&out)
    );
    assert!(
        said.contains("budget reached while proving public.a_big"),
        "{said}"
    );
    let out = ws.pgproof_ok(&[
        "verify",
        "--budget",
        "10m",
        "--tables-per-run",
        "4",
        "--json",
    ]);
    let batches = proven(&serde_json::from_str(&out).unwrap());
    assert_eq!(
        batches[0],
        BTreeSet::from(["public.s1", "public.s2", "public.s3", "public.s4"].map(String::from)),
        "the small tables first: {out}"
    );
    let (_, status) = status_at(&ws, &later(0));
    let proven_now = status["tables_proven"].as_u64().unwrap();
    assert!(proven_now >= 4, "{status}");
}

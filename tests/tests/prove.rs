//! Proof on a real PostgreSQL: drill, verify on untouched backups, and every tamper
//! case (damaged object, edited manifests, broken audit chains, a restore that
//! silently changes data) reported by name.

#![allow(clippy::unwrap_used)]

use pgproof_tests::{
    Workspace, connect, create_sample_database, database_exists, pgproof_bin, run, start_cluster,
    stderr,
};
use serde_json::Value;

/// Runs `verify --json` for one backup; returns (exit code, the report).
fn verify(ws: &Workspace, backup_id: &str) -> (i32, Value) {
    let out = ws.pgproof(&["verify", backup_id, "--json"]);
    let reports: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("verify --json printed no JSON ({e}): {}", stderr(&out)));
    (out.status.code().unwrap(), reports[0].clone())
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

fn failed(report: &Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| {
            format!(
                "{}: {}",
                c["name"].as_str().unwrap(),
                c["detail"].as_str().unwrap()
            )
        })
        .collect()
}

fn drill(format: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("empty.toml");
    std::fs::write(&config, "").unwrap();
    let out = run(
        &pgproof_bin(),
        &[
            "--config",
            config.to_str().unwrap(),
            "drill",
            "--format",
            format,
            "--rows",
            "300",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "drill failed: {stdout}\n{}",
        stderr(&out)
    );
    let line = stdout.lines().last().unwrap();
    assert!(line.starts_with(&format!("PASS drill ({format}")), "{line}");
    assert!(line.contains("304 audit rows"), "{line}");
    assert!(line.contains("wipe confirmed"), "{line}");
    assert!(line.contains("restore (RTO)"), "{line}");
}

#[test]
fn drill_custom_format() {
    if !pgproof_tests::postgres_available() {
        return;
    }
    drill("custom");
}

#[test]
fn drill_plain_format() {
    if !pgproof_tests::postgres_available() {
        return;
    }
    drill("plain");
}

#[tokio::test]
async fn verify_passes_untouched_and_names_every_tamper() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let source = create_sample_database(&cluster, "app").await;
    let mut chain = connect(&cluster, "app").await;
    pgproof_core::evidence::audit::migrate(&mut chain)
        .await
        .unwrap();
    source
        .batch_execute(
            "INSERT INTO pgproof.audit_events (actor, action, subject) \
             SELECT 'u', 'issue', 'c' || g FROM generate_series(1, 50) g",
        )
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, "app", "custom");
    ws.verify_on(&cluster);

    // Untouched: every check passes, a record is written, the scratch database is gone.
    let first = ws.backup();
    let first_id = first["backup_id"].as_str().unwrap().to_owned();
    let (code, report) = verify(&ws, &first_id);
    assert_eq!(code, 0, "{:?}", failed(&report));
    assert_eq!(report["passed"], true);
    assert!(report["restore_ms"].as_u64().is_some());
    for name in [
        "archive",
        "restore",
        "fingerprint:public.kinds",
        "large-objects",
        "sequences",
        "audit-chain:head",
        "audit-chain:verify",
        "audit-chain:walked",
    ] {
        assert_eq!(check(&report, name)["passed"], true, "{name}");
    }
    // The record's name carries its verdict and restore time, so listing the catalog
    // tells them without reading the record; a record named the old way is read.
    let record = ws
        .sink_files()
        .into_iter()
        .find(|f| f.starts_with(&format!("app/{first_id}/verify/")))
        .unwrap_or_else(|| panic!("no verification record: {:?}", ws.sink_files()));
    let restore_ms = report["restore_ms"].as_u64().unwrap();
    assert!(
        record.ends_with(&format!("_passed_r{restore_ms}.json")),
        "{record}"
    );
    let last = |ws: &Workspace| {
        let listed: Value = serde_json::from_str(&ws.pgproof_ok(&["list", "--json"])).unwrap();
        listed[0]["last_verification"].clone()
    };
    let from_name = last(&ws);
    assert_eq!(from_name["passed"], true, "{from_name}");
    // A name is not believed, only signed content: a record renamed (here to the name
    // a failed verification would have had) is not trusted. list names it, exits 3,
    // and no longer shows the backup as verified by it.
    let renamed = record.replace("_passed_", "_failed_");
    std::fs::rename(ws.sink.join(&record), ws.sink.join(&renamed)).unwrap();
    let out = ws.pgproof(&["list", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains(&renamed), "{}", stderr(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["last_verification"], Value::Null, "{listed}");
    std::fs::rename(ws.sink.join(&renamed), ws.sink.join(&record)).unwrap();
    assert_eq!(last(&ws), from_name);
    let scratch_db = pgproof_core::ops::scratch_database(&first_id);
    assert!(!database_exists(&cluster, &scratch_db).await);

    // A second backup, then the first backup's manifest is edited. Without the
    // signing key the edit is refused outright: nothing is restored, no record is
    // written, and the second backup's link names the predecessor as untrusted.
    let second = ws.backup();
    let second_id = second["backup_id"].as_str().unwrap().to_owned();
    let first_key = format!("app/{first_id}/manifest.json");
    let first_manifest = ws.sink.join(&first_key);
    let original = std::fs::read_to_string(&first_manifest).unwrap();
    let records_before = ws.sink_files().len();
    std::fs::write(
        &first_manifest,
        original.replacen("\"duration_ms\": ", "\"duration_ms\": 1", 1),
    )
    .unwrap();
    let out = ws.pgproof(&["verify", &first_id, "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not match its signature"),
        "{}",
        stderr(&out)
    );
    assert_eq!(ws.sink_files().len(), records_before, "nothing recorded");
    let (code, report) = verify(&ws, &second_id);
    assert_eq!(code, 3);
    assert!(
        check(&report, "manifest:previous")["detail"]
            .as_str()
            .unwrap()
            .contains("not trusted"),
        "{report:#}"
    );
    std::fs::write(&first_manifest, &original).unwrap();

    // Edited and signed again (a holder of the signing key, or a leaked one): the
    // chain still exposes it from both neighbours.
    ws.edit_signed(&first_key, |text| {
        let mut edited: Value = serde_json::from_str(&text).unwrap();
        edited["duration_ms"] = Value::from(1);
        serde_json::to_string_pretty(&edited).unwrap()
    });
    let (code, report) = verify(&ws, &first_id);
    assert_eq!(code, 3);
    assert_eq!(
        check(&report, "manifest:next")["passed"],
        false,
        "{:?}",
        failed(&report)
    );
    let (_, report) = verify(&ws, &second_id);
    assert_eq!(check(&report, "manifest:previous")["passed"], false);
    std::fs::write(&first_manifest, &original).unwrap();

    // The latest manifest's fingerprint edited (and signed again): the comparison
    // names the table.
    let second_key = format!("app/{second_id}/manifest.json");
    let second_manifest = ws.sink.join(&second_key);
    let original = std::fs::read_to_string(&second_manifest).unwrap();
    ws.edit_signed(&second_key, |text| {
        let mut edited: Value = serde_json::from_str(&text).unwrap();
        edited["fingerprint"]["tables"]["public.kinds"]["rows"] = Value::from(1);
        serde_json::to_string_pretty(&edited).unwrap()
    });
    let (code, report) = verify(&ws, &second_id);
    assert_eq!(code, 3);
    let kinds = check(&report, "fingerprint:public.kinds");
    assert_eq!(kinds["passed"], false);
    assert!(
        kinds["detail"]
            .as_str()
            .unwrap()
            .contains("expected 1 rows"),
        "{kinds}"
    );
    std::fs::write(&second_manifest, &original).unwrap();

    // One flipped byte in the stored object: the archive check fails, nothing remains.
    let object = ws.sink.join(second["object"]["key"].as_str().unwrap());
    let mut bytes = std::fs::read(&object).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&object, &bytes).unwrap();
    let (code, report) = verify(&ws, &second_id);
    assert_eq!(code, 3);
    assert_eq!(
        check(&report, "archive")["passed"],
        false,
        "{:?}",
        failed(&report)
    );
    assert!(!database_exists(&cluster, &pgproof_core::ops::scratch_database(&second_id)).await);
    let records = ws
        .sink_files()
        .into_iter()
        .filter(|f| f.starts_with(&format!("app/{second_id}/verify/")))
        .count();
    assert_eq!(records, 4, "one record per verification, none overwritten");

    // Tampered audit chains in the source are carried into the backup and caught.
    source
        .batch_execute("ALTER TABLE pgproof.audit_events DISABLE TRIGGER audit_events_write_once")
        .await
        .unwrap();
    let tampers = [
        (
            "UPDATE pgproof.audit_events SET actor = 'mallory' WHERE seq = 5",
            "first break at seq 5",
        ),
        (
            "UPDATE pgproof.audit_events SET actor = 'u' WHERE seq = 5; \
             UPDATE pgproof.audit_events SET seq = -seq WHERE seq IN (20, 21); \
             UPDATE pgproof.audit_events SET seq = 21 WHERE seq = -20; \
             UPDATE pgproof.audit_events SET seq = 20 WHERE seq = -21",
            "first break at seq 20",
        ),
        (
            "UPDATE pgproof.audit_events SET seq = -seq WHERE seq IN (20, 21); \
             UPDATE pgproof.audit_events SET seq = 21 WHERE seq = -20; \
             UPDATE pgproof.audit_events SET seq = 20 WHERE seq = -21; \
             DELETE FROM pgproof.audit_events WHERE seq > 45",
            "cut from the tail",
        ),
    ];
    for (sql, expected) in tampers {
        source.batch_execute(sql).await.unwrap();
        let id = ws.backup()["backup_id"].as_str().unwrap().to_owned();
        let (code, report) = verify(&ws, &id);
        assert_eq!(code, 3, "{sql}");
        let chain = check(&report, "audit-chain:verify");
        assert_eq!(chain["passed"], false, "{sql}");
        assert!(
            chain["detail"].as_str().unwrap().contains(expected),
            "{sql}: {chain}"
        );
    }
}

/// A restore that succeeds but changes data: a STORED generated column computed by a
/// function that claims IMMUTABLE but follows TimeZone is recomputed at restore.
/// Only the fingerprint sees it.
#[tokio::test]
async fn fingerprint_catches_a_restore_that_changes_values() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    connect(&cluster, "postgres")
        .await
        .batch_execute("CREATE DATABASE shifty")
        .await
        .unwrap();
    let client = connect(&cluster, "shifty").await;
    client
        .batch_execute(
            "CREATE FUNCTION local_hour(ts timestamptz) RETURNS text LANGUAGE sql IMMUTABLE \
               AS $$ SELECT to_char(ts, 'YYYY-MM-DD HH24') $$; \
             CREATE TABLE shifts (id int PRIMARY KEY, at timestamptz, \
               hour text GENERATED ALWAYS AS (local_hour(at)) STORED); \
             CREATE TABLE steady (id int PRIMARY KEY, v text); \
             INSERT INTO steady VALUES (1, 'unchanged'); \
             SET TimeZone = 'Asia/Tokyo'; \
             INSERT INTO shifts (id, at) VALUES (1, '2026-01-01 20:00+00'), (2, '2026-06-01 01:00+00');",
        )
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, "shifty", "plain");
    let id = ws.backup()["backup_id"].as_str().unwrap().to_owned();
    let (code, report) = verify(&ws, &id);
    assert_eq!(code, 3);
    let shifts = check(&report, "fingerprint:public.shifts");
    assert_eq!(shifts["passed"], false);
    assert!(
        shifts["detail"]
            .as_str()
            .unwrap()
            .contains("expected 2 rows"),
        "{shifts}"
    );
    assert_eq!(check(&report, "fingerprint:public.steady")["passed"], true);
    assert_eq!(
        check(&report, "restore")["passed"],
        true,
        "the restore itself succeeded"
    );
}

/// A manifest deleted from the middle of the chain is caught from both sides.
#[tokio::test]
async fn a_deleted_manifest_is_caught_by_its_neighbours() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    connect(&cluster, "postgres")
        .await
        .batch_execute("CREATE DATABASE small")
        .await
        .unwrap();
    connect(&cluster, "small")
        .await
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, "small", "custom");
    let ids: Vec<String> = (0..3)
        .map(|_| ws.backup()["backup_id"].as_str().unwrap().to_owned())
        .collect();
    std::fs::remove_dir_all(ws.sink.join(format!("small/{}", ids[1]))).unwrap();

    let (code, report) = verify(&ws, &ids[0]);
    assert_eq!(code, 3);
    let next = check(&report, "manifest:next");
    assert_eq!(next["passed"], false);
    assert!(
        next["detail"].as_str().unwrap().contains("was deleted"),
        "{next}"
    );

    let (code, report) = verify(&ws, &ids[2]);
    assert_eq!(code, 3);
    let previous = check(&report, "manifest:previous");
    assert_eq!(previous["passed"], false);
    assert!(
        previous["detail"].as_str().unwrap().contains("missing"),
        "{previous}"
    );
}

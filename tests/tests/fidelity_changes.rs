//! The fidelity hazards docs/fidelity.md says verify catches, made to happen: a
//! restore that turns −0 into +0, 44 BC into 44 AD, a `regclass` into another
//! table, swaps two columns' values in an inheritance child whose column order the
//! restore changed, or meets a failing statement. Each must FAIL `verify`, naming the
//! table (or the `restore` check); the same backup restored faithfully must PASS, so
//! the failures are the change's and not the hazard's own false alarm.
//!
//! The change is made between pgproof and the restore program: `source.pg_bin_dir`
//! names a directory of the real client programs whose `psql` runs its input through
//! `sed` first, keeping what it read and what it passed on. pgproof's own hashing of
//! the archive is before that point, so the backup stays sound; only the restored
//! database differs from the source, which is what each hazard is.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use pgproof_tests::{Workspace, connect, create_database, start_cluster, stderr};
use serde_json::Value;

const SOURCE: &str = "
CREATE TABLE signs (id int PRIMARY KEY, f float8, a float8[]);
INSERT INTO signs VALUES (1, '-0', '{-0,1}'), (2, '0', '{0,1}');
CREATE TABLE eras (id int PRIMARY KEY, d date, ts timestamptz);
INSERT INTO eras VALUES (1, '0044-03-15 BC', '0044-03-15 12:00+00 BC'), (2, '2026-01-01', '2026-01-01 00:00+00');
-- OIDs are not what the restore will give: tables come and go first.
CREATE TABLE gone1 (); CREATE TABLE gone2 (); DROP TABLE gone1, gone2;
CREATE TABLE target_a (v int);
CREATE TABLE target_b (v int);
CREATE TABLE refs (id int PRIMARY KEY, r regclass, t regtype);
INSERT INTO refs VALUES (1, 'target_a', 'int4'), (2, 'target_b', 'text');
-- The child's own column order (b, a, extra) is not the one a restore gives it
-- (pg_dump writes it as INHERITS (parent), so a and b come first, in the parent's order).
CREATE TABLE parent (a text, b text);
CREATE TABLE child (b text, a text, extra int);
ALTER TABLE child INHERIT parent;
INSERT INTO child VALUES ('bee', 'ay', 1);
";

/// A `pg_bin_dir` of the cluster's client programs with a `psql` that edits its
/// input with `sed_script` (empty: passes it on unchanged) and keeps both sides in
/// `seen/` (`<pid>.in`, `<pid>.out`).
fn tampering_bin_dir(ws: &Workspace, real: &Path, name: &str, sed_script: &str) -> PathBuf {
    let dir = ws.dir.path().join(format!("bin-{name}"));
    let seen = dir.join("seen");
    std::fs::create_dir_all(&seen).unwrap();
    for entry in std::fs::read_dir(real).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "psql" {
            std::os::unix::fs::symlink(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    std::fs::write(dir.join("script.sed"), sed_script).unwrap();
    let psql = dir.join("psql");
    // Arguments pass through untouched: ON_ERROR_STOP and --single-transaction are
    // pgproof's choice, not this wrapper's.
    std::fs::write(
        &psql,
        format!(
            "#!/bin/sh\ntee {seen}/$$.in | sed -f {dir}/script.sed | tee {seen}/$$.out | exec {real}/psql \"$@\"\n",
            seen = seen.display(),
            dir = dir.display(),
            real = real.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&psql, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    dir
}

/// The lines of the restore stream the wrapper changed: (what came in, what went
/// out), for the one psql run that received the dump.
fn changed_lines(bin: &Path) -> (Vec<String>, Vec<String>) {
    let seen = bin.join("seen");
    let mut restores = Vec::new();
    for entry in std::fs::read_dir(&seen).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "in") {
            let input = std::fs::read_to_string(&path).unwrap();
            if input.contains("COPY public.signs") {
                let output = std::fs::read_to_string(path.with_extension("out")).unwrap();
                restores.push((input, output));
            }
        }
    }
    assert_eq!(restores.len(), 1, "one restore ran through the wrapper");
    let (input, output) = restores.pop().unwrap();
    let ins: Vec<&str> = input.lines().collect();
    let outs: Vec<&str> = output.lines().collect();
    let gone = ins
        .iter()
        .filter(|l| !outs.contains(l))
        .map(|l| (*l).to_owned())
        .collect();
    let came = outs
        .iter()
        .filter(|l| !ins.contains(l))
        .map(|l| (*l).to_owned())
        .collect();
    (gone, came)
}

/// `verify latest --json` with `pg_bin_dir` set to `bin`: (exit code, report).
fn verify_with(ws: &Workspace, config: &str, real: &Path, bin: &Path) -> (i32, Value) {
    ws.write_config(&config.replace(
        &format!("pg_bin_dir = \"{}\"", real.display()),
        &format!("pg_bin_dir = \"{}\"", bin.display()),
    ));
    let out = ws.pgproof(&["verify", "latest", "--json"]);
    let reports: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", stderr(&out)));
    (out.status.code().unwrap(), reports[0].clone())
}

fn failed(report: &Value) -> Vec<(String, String)> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["detail"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn each_caught_hazard_fails_verify_when_it_happens() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_database(&cluster, "app")
        .await
        .batch_execute(SOURCE)
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, "app", "plain");
    ws.verify_on(&cluster);
    ws.backup();
    let real = cluster.tools().dir().to_owned();
    let config = std::fs::read_to_string(&ws.config).unwrap();

    // Faithful: the same wrapper with nothing to change passes every check, although
    // the restore renumbered the reg* OIDs and reordered the child's columns (seen in
    // a restored copy below), so neither is a false alarm.
    let bin = tampering_bin_dir(&ws, &real, "faithful", "");
    let (code, report) = verify_with(&ws, &config, &real, &bin);
    assert_eq!(code, 0, "{:?}", failed(&report));
    assert_eq!(changed_lines(&bin), (vec![], vec![]));
    ws.write_config(&config);
    ws.pgproof_ok(&["restore", "latest", "--target", &cluster.url("copy")]);
    let oids = |db: &'static str| {
        let cluster = &cluster;
        async move {
            let client = connect(cluster, db).await;
            let oid: u32 = client
                .query_one("SELECT 'target_a'::regclass::oid", &[])
                .await
                .unwrap()
                .get(0);
            let order: String = client
                .query_one(
                    "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute \
                     WHERE attrelid = 'child'::regclass AND attnum > 0",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            (oid, order)
        }
    };
    let (source_oid, source_order) = oids("app").await;
    let (copy_oid, copy_order) = oids("copy").await;
    assert_ne!(source_oid, copy_oid, "the restore kept the OIDs");
    assert_eq!(source_order, "b,a,extra");
    assert_ne!(
        copy_order, source_order,
        "the restore kept the column order"
    );

    // Each change, the line it must alter, and the one check that must fail.
    let cases: [(&str, &str, &str, &str); 4] = [
        (
            "minus-zero",
            r"s/^1\t-0\t{-0,1}$/1\t0\t{-0,1}/",
            "fingerprint:public.signs",
            "float -0 restored as +0",
        ),
        (
            "era",
            r"s/^1\t0044-03-15 BC\t/1\t0044-03-15\t/",
            "fingerprint:public.eras",
            "44 BC restored as 44 AD",
        ),
        (
            "regclass",
            r"s/^1\tpublic\.target_a\t/1\tpublic.target_b\t/",
            "fingerprint:public.refs",
            "a regclass naming another table",
        ),
        (
            "swapped-columns",
            r"s/^bee\tay\t1$/ay\tbee\t1/",
            "fingerprint:public.child",
            "the child's a and b swapped",
        ),
    ];
    for (name, sed, expected, what) in cases {
        let bin = tampering_bin_dir(&ws, &real, name, sed);
        let (code, report) = verify_with(&ws, &config, &real, &bin);
        let (gone, came) = changed_lines(&bin);
        assert!(
            gone.len() == 1 && came.len() == 1,
            "{what}: the change did not happen as planned: {gone:?} -> {came:?}"
        );
        eprintln!("{what}: {:?} -> {:?}", gone[0], came[0]);
        let failures = failed(&report);
        assert_eq!(code, 3, "{what}: verify passed: {report:#}");
        let names: Vec<&str> = failures.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [expected], "{what}: {failures:#?}");
    }

    // A statement that fails mid-restore: with ON_ERROR_STOP psql stops and exits
    // 3, which is the `restore` check; without it psql would go on, exit 0, and leave
    // the verdict to whatever the aborted transaction left.
    let bin = tampering_bin_dir(
        &ws,
        &real,
        "failing-statement",
        "/^COPY public.signs /i\\\nSELECT 1/0;\n",
    );
    let (code, report) = verify_with(&ws, &config, &real, &bin);
    let (gone, came) = changed_lines(&bin);
    assert_eq!((gone.len(), came), (0, vec!["SELECT 1/0;".to_owned()]));
    assert_eq!(code, 3, "{report:#}");
    let failures = failed(&report);
    let restore = failures
        .iter()
        .find(|(n, _)| n == "restore")
        .unwrap_or_else(|| panic!("the restore check did not fail: {failures:#?}"));
    assert!(restore.1.contains("division by zero"), "{restore:?}");
    // Verify's scratch restore commits table by table: the tables before the failure
    // were in, and not one is judged on its own; the scratch database is gone.
    let judged: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(judged, ["archive", "restore"], "{report:#}");
    let left: i64 = connect(&cluster, "postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgproof\\_verify\\_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "a scratch database was left behind");
}

//! Verdicts that must not be false alarms: values with several binary encodings (the
//! NaN an arithmetic produces carries the sign bit; a dump writes `NaN`) and
//! partitioned tables, compared at their root.

#![allow(clippy::unwrap_used)]

use pgproof_tests::{Workspace, connect, start_cluster, stderr};
use serde_json::Value;

#[tokio::test]
async fn nan_bit_patterns_and_partitioned_tables_verify_in_both_formats() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    connect(&cluster, "postgres")
        .await
        .batch_execute("CREATE DATABASE fid")
        .await
        .unwrap();
    let client = connect(&cluster, "fid").await;
    client
        .batch_execute(
            "CREATE TABLE floats (id int PRIMARY KEY, f8 float8, f4 float4, arr float8[]);
             INSERT INTO floats VALUES
               (1, 'Infinity'::float8 - 'Infinity'::float8, 'Infinity'::float4 - 'Infinity'::float4,
                   ARRAY['Infinity'::float8 - 'Infinity'::float8, 1.5]),
               (2, '-0', '-0', '{-0}'),
               (3, 'NaN', 'NaN', '{NaN}'),
               (4, 4.9e-324, 1.4e-45, '{1e308,-1e-308}');
             CREATE TABLE measurements (id int, at date, v numeric) PARTITION BY RANGE (at);
             CREATE TABLE m2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
             CREATE TABLE m2026 PARTITION OF measurements FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
             INSERT INTO measurements SELECT g, date '2025-06-01' + g, g / 3.0 FROM generate_series(1, 400) g;",
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

    for format in ["custom", "plain"] {
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

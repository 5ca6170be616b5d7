//! `scripts/demo`: the whole loop on an embedded ephemeral cluster, through the real
//! `pgproof` CLI and a real config file. Creates sample data, backs it up (custom and
//! plain formats, age-encrypted, local sink), restores each backup into a new
//! database, compares every table, and prints a summary. Exits 1 on any difference.

// A harness reports failure by panicking; unwrap is its assert.
#![allow(clippy::unwrap_used)]

use std::process::ExitCode;
use std::time::Instant;

use pgproof_tests::{Workspace, connect, create_sample_database, table_summary};

fn show(step: &str, args: &[&str]) {
    let quoted: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains(['&', '?', ' ']) {
                format!("'{a}'")
            } else {
                (*a).to_owned()
            }
        })
        .collect();
    println!("\n$ pgproof {step} {}", quoted.join(" "));
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let started = Instant::now();
    let cluster = match pgproof_core::cluster::EphemeralCluster::start(None) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("demo: cannot start an ephemeral PostgreSQL cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "ephemeral PostgreSQL {} on {}",
        cluster.tools().version(),
        cluster.socket_dir().display()
    );
    let source = create_sample_database(&cluster, "app").await;
    let before = table_summary(&source).await;
    let rows: i64 = before.values().map(|(n, _)| n).sum();
    println!(
        "sample database app: {} tables + large objects, {rows} rows",
        before.len() - 1
    );

    let ws = Workspace::new(&cluster, "app", "custom");
    println!(
        "\nconfig {}:\n{}",
        ws.config.display(),
        std::fs::read_to_string(&ws.config).unwrap_or_default()
    );

    let mut failures = 0;
    for format in ["custom", "plain"] {
        show("backup", &["--format", format]);
        print!("{}", ws.pgproof_ok(&["backup", "--format", format]));
    }
    show("list", &[]);
    print!("{}", ws.pgproof_ok(&["list"]));

    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&ws.pgproof_ok(&["list", "--json"])).unwrap_or_default();
    for backup in &listed {
        let id = backup["backup_id"].as_str().unwrap_or_default();
        let format = backup["format"].as_str().unwrap_or_default();
        let target_db = format!("app_restored_{format}");
        let target = cluster.url(&target_db);
        show("restore", &[id, "--target", &target]);
        print!("{}", ws.pgproof_ok(&["restore", id, "--target", &target]));
        let after = table_summary(&connect(&cluster, &target_db).await).await;
        for (table, (rows_before, hash_before)) in &before {
            match after.get(table) {
                Some((rows_after, hash_after))
                    if rows_after == rows_before && hash_after == hash_before =>
                {
                    println!("  ok   {table}: {rows_after} rows, identical");
                }
                Some((rows_after, _)) => {
                    failures += 1;
                    println!(
                        "  FAIL {table}: {rows_before} rows before, {rows_after} after, or contents differ"
                    );
                }
                None => {
                    failures += 1;
                    println!("  FAIL {table}: missing after restore");
                }
            }
        }
    }
    println!();
    if failures == 0 && listed.len() == 2 {
        println!(
            "PASS: {} backups restored, {} tables and large objects identical ({rows} rows), {:.1}s in all",
            listed.len(),
            before.len(),
            started.elapsed().as_secs_f64()
        );
        ExitCode::SUCCESS
    } else {
        println!(
            "FAIL: {failures} differences across {} backups",
            listed.len()
        );
        ExitCode::FAILURE
    }
}

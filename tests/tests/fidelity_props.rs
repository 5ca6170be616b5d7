//! The fidelity property harness: generated rows (timestamps over the whole range,
//! boundaries, 7–9 fractional digits, era mirrors, floats with every NaN, numeric
//! specials and huge scales, text with delimiters and non-BMP characters, jsonb with
//! duplicate keys, arrays and composites, a partitioned table, a TimeZone-dependent
//! generated column, the audit chain) are written under per-row writer settings,
//! pushed through the real CLI pipeline — `pgproof backup` (custom, plain, then
//! directory with its parallel jobs; zstd or gzip, age, a directory sink), `pgproof verify --keep --json`, `pgproof restore` — each
//! step under its own drawn session settings, and judged by [`pgproof_tests::oracle`],
//! which shares no code with pgproof's fingerprint.
//!
//! The test asserts AGREEMENT: for every table, the oracle finds the verify scratch
//! database different from the source ⇔ pgproof's check for that table failed; no
//! other check fails; the restored audit chain's head is byte-exact and its verify
//! function clean in both restores; and a `pgproof restore` under other settings
//! loses nothing verify did not see, apart from the generated column (a loss that
//! depends on the restoring session's TimeZone; verify proves its own restore).
//! A disagreement is shrunk to one row (bisection over the batch, then the proptest
//! value tree) and printed as SQL for `tests/fidelity-regressions.sql`, whose cases
//! are replayed first in every run.
//!
//! `PROPTEST_CASES` sets the number of generated cases (default 2400: twelve batches
//! of 200, each through every format); `PROPTEST_RNG_SEED` replays a run;
//! `scripts/fidelity --cases N` runs a larger one.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use pgproof_core::scratch::EphemeralCluster;
use pgproof_tests::cases::{self, Case, GENERATED_TABLE, INTERVALSTYLES, ZONES};
use pgproof_tests::oracle::{self, Difference, Snapshot};
use pgproof_tests::{Workspace, connect, start_cluster, stderr};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use serde_json::Value;

const DEFAULT_CASES: usize = 2400;

/// Every built-in archive format (and the directory format deduplicated); each batch
/// goes through all of them.
const FORMATS: [&str; 4] = ["custom", "plain", "directory", "dedup"];
/// Pipeline runs one shrink may spend on simplifying the last row.
const MAX_SIMPLIFY_STEPS: usize = 24;

/// Session settings of one step (dump, restore or verify), given to the pgproof
/// process's environment and so inherited by pg_dump, pg_restore and psql.
#[derive(Clone, Debug)]
struct Session {
    tz: &'static str,
    datestyle: &'static str,
    intervalstyle: &'static str,
    extra_float_digits: i32,
    bytea_output: &'static str,
    encoding: &'static str,
}

impl Session {
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("PGTZ".into(), self.tz.into()),
            ("PGDATESTYLE".into(), self.datestyle.into()),
            ("PGCLIENTENCODING".into(), self.encoding.into()),
            (
                "PGOPTIONS".into(),
                format!(
                    "-c IntervalStyle={} -c extra_float_digits={} -c bytea_output={}",
                    self.intervalstyle, self.extra_float_digits, self.bytea_output
                ),
            ),
        ]
    }

    fn describe(&self) -> String {
        self.env()
            .iter()
            .map(|(k, v)| format!("{k}='{v}'"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[derive(Clone, Debug)]
struct Settings {
    dump: Session,
    verify: Session,
    restore: Session,
}

/// Draws sessions; zones come from one shuffled deck per format and role, so every
/// role sees every zone in each format once there are six batches.
struct SettingsDeck {
    decks: BTreeMap<(usize, usize), Vec<&'static str>>,
    format: usize,
}

impl SettingsDeck {
    fn new() -> Self {
        Self {
            decks: BTreeMap::new(),
            format: 0,
        }
    }

    fn zone(&mut self, role: usize, runner: &mut TestRunner) -> &'static str {
        let deck = self.decks.entry((self.format, role)).or_default();
        if deck.is_empty() {
            let mut zones = ZONES.to_vec();
            // Fisher–Yates with the runner's rng, through a strategy.
            for i in (1..zones.len()).rev() {
                let j = (0..=i).new_tree(runner).unwrap().current();
                zones.swap(i, j);
            }
            *deck = zones;
        }
        deck.pop().unwrap()
    }

    fn session(&mut self, role: usize, runner: &mut TestRunner, dump: bool) -> Session {
        let pick = |runner: &mut TestRunner, v: &[&'static str]| {
            select(v.to_vec()).new_tree(runner).unwrap().current()
        };
        // A dump in an encoding that cannot hold every character fails (pg_dump
        // refuses); restores and verifies take the archive's encoding whatever the
        // environment says, so they may draw LATIN1.
        let encodings: &[&'static str] = if dump {
            &["UTF8"]
        } else {
            &["UTF8", "LATIN1", "GB18030"]
        };
        Session {
            tz: self.zone(role, runner),
            datestyle: pick(runner, &cases::DATESTYLES),
            intervalstyle: pick(runner, &INTERVALSTYLES),
            extra_float_digits: select(vec![-15, 0, 1, 3])
                .new_tree(runner)
                .unwrap()
                .current(),
            bytea_output: pick(runner, &["hex", "escape"]),
            encoding: pick(runner, encodings),
        }
    }

    fn settings(&mut self, format: usize, runner: &mut TestRunner) -> Settings {
        self.format = format;
        Settings {
            dump: self.session(0, runner, true),
            verify: self.session(1, runner, false),
            restore: self.session(2, runner, false),
        }
    }
}

/// One row to write: a generated case (with its tree, for shrinking) or a
/// regression case replayed from the file.
#[derive(Clone, Debug)]
struct Unit {
    label: String,
    /// `SET client_encoding …`, sent on its own first.
    encoding: String,
    /// The other SETs and the inserts.
    body: String,
    /// Index of the generated case's value tree.
    tree: Option<usize>,
    table: String,
}

impl Unit {
    fn generated(i: usize, id: i64, case: &Case) -> Self {
        let (encoding, body) = case.sql(id);
        Self {
            label: format!("case {id}"),
            encoding,
            body,
            tree: Some(i),
            table: case.table().to_owned(),
        }
    }

    fn as_sql(&self) -> String {
        format!(
            "-- {} ({})\n{}\n{}\n",
            self.label, self.table, self.encoding, self.body
        )
    }
}

/// The regression cases: blocks separated by blank lines, each a `-- label (table)`
/// comment, a `SET client_encoding` line and the body.
fn regressions() -> Vec<Unit> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fidelity-regressions.sql");
    let text = std::fs::read_to_string(path).unwrap();
    let mut units = Vec::new();
    for block in text.split("\n\n") {
        let lines: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
        let Some(head) = lines.first().and_then(|l| l.strip_prefix("-- ")) else {
            continue;
        };
        if !head.starts_with("regression") {
            continue;
        }
        let (label, table) = head.rsplit_once(" (").unwrap();
        let encoding = lines[1];
        assert!(encoding.starts_with("SET client_encoding"), "{block}");
        units.push(Unit {
            label: label.to_owned(),
            encoding: encoding.to_owned(),
            body: lines[2..].join("\n"),
            tree: None,
            table: table.trim_end_matches(')').to_owned(),
        });
    }
    assert!(!units.is_empty(), "{path} holds no regression case");
    units
}

#[derive(Default)]
struct WriteStats {
    written: Vec<String>,
    rejected: usize,
    /// The first few rejections: label, table, the server's message.
    rejections: Vec<String>,
}

/// Creates `database` with the schema and the audit chain and writes every unit, each
/// under its writer settings. A unit the server rejects (out of range after the
/// writer's zone applied, an encoding without the character) is skipped.
async fn write_source(cluster: &EphemeralCluster, database: &str, units: &[Unit]) -> WriteStats {
    drop_database(cluster, database).await;
    connect(cluster, "postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .unwrap();
    let mut client = connect(cluster, database).await;
    client.batch_execute(cases::SCHEMA).await.unwrap();
    pgproof_core::evidence::audit::migrate(&mut client)
        .await
        .unwrap();
    let mut stats = WriteStats::default();
    for unit in units {
        client.batch_execute(&unit.encoding).await.unwrap();
        match client.batch_execute(&unit.body).await {
            Ok(()) => stats.written.push(unit.table.clone()),
            Err(e) => {
                stats.rejected += 1;
                if stats.rejections.len() < 8 {
                    let msg = e
                        .as_db_error()
                        .map_or_else(|| e.to_string(), |d| d.message().to_owned());
                    stats
                        .rejections
                        .push(format!("{} ({}): {msg}", unit.label, unit.table));
                }
            }
        }
    }
    client
        .batch_execute("SET client_encoding = 'UTF8'")
        .await
        .unwrap();
    stats
}

/// A disagreement between the oracle and pgproof, or a broken promise of the pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Disagreement {
    kind: &'static str,
    table: String,
    detail: String,
}

impl std::fmt::Display for Disagreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} in {}: {}", self.kind, self.table, self.detail)
    }
}

#[derive(Default)]
struct Verdict {
    disagreements: Vec<Disagreement>,
    /// Tables the oracle and pgproof agree were lost by verify's restore.
    agreed_losses: BTreeSet<String>,
}

fn disagree(kind: &'static str, table: &str, detail: impl Into<String>) -> Disagreement {
    Disagreement {
        kind,
        table: table.to_owned(),
        detail: detail.into(),
    }
}

async fn drop_database(cluster: &EphemeralCluster, database: &str) {
    connect(cluster, "postgres")
        .await
        .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .await
        .unwrap();
}

/// The audit chain's head and its verify function's verdict.
async fn chain_state(client: &tokio_postgres::Client) -> (i64, Vec<u8>, i64, Option<i64>, bool) {
    let head = client
        .query_one(
            "SELECT last_seq, head_hash FROM pgproof.audit_chain_head",
            &[],
        )
        .await
        .unwrap();
    let v = client
        .query_one(
            "SELECT rows_walked, first_break_seq, head_matches FROM pgproof.audit_verify()",
            &[],
        )
        .await
        .unwrap();
    (head.get(0), head.get(1), v.get(0), v.get(1), v.get(2))
}

fn by_table(diffs: Vec<Difference>) -> BTreeMap<String, Vec<Difference>> {
    let mut out: BTreeMap<String, Vec<Difference>> = BTreeMap::new();
    for d in diffs {
        out.entry(d.table.clone()).or_default().push(d);
    }
    out
}

/// One pipeline: backup, verify (kept), restore, all under `settings`; the oracle
/// reads both restores and the verdict says where it and pgproof disagree.
async fn pipeline(
    cluster: &EphemeralCluster,
    source_db: &str,
    source: &Snapshot,
    format: &str,
    settings: &Settings,
    tag: &str,
) -> Verdict {
    let mut verdict = Verdict::default();
    let ws = Workspace::new(cluster, source_db, format);
    ws.verify_on(cluster);
    let out = ws
        .command(&["backup", "--json"])
        .envs(settings.dump.env())
        .output()
        .unwrap();
    if !out.status.success() {
        verdict
            .disagreements
            .push(disagree("backup failed", "-", stderr(&out)));
        return verdict;
    }
    let out = ws
        .command(&["verify", "latest", "--keep", "--json"])
        .envs(settings.verify.env())
        .output()
        .unwrap();
    let reports: Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(e) => {
            verdict.disagreements.push(disagree(
                "verify error",
                "-",
                format!("no report ({e}): {}", stderr(&out)),
            ));
            return verdict;
        }
    };
    let report = &reports[0];
    let scratch = report["restored_into"]
        .as_str()
        .and_then(|s| s.rsplit('/').next())
        .unwrap()
        .to_owned();
    let checks: Vec<(String, bool, String)> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["passed"].as_bool().unwrap(),
                c["detail"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let passed = report["passed"].as_bool().unwrap();
    let expected_code = if passed { 0 } else { 3 };
    if out.status.code() != Some(expected_code) {
        verdict.disagreements.push(disagree(
            "exit code",
            "-",
            format!("verify passed={passed} but exited {}", out.status),
        ));
    }

    let target = format!("fid_r_{tag}");
    drop_database(cluster, &target).await;
    let restored = ws
        .command(&["restore", "latest", "--target", &cluster.url(&target)])
        .envs(settings.restore.env())
        .output()
        .unwrap();

    // What verify's restore holds.
    let found = if checks.iter().any(|(n, p, _)| n == "restore" && !p) {
        None
    } else {
        let client = connect(cluster, &scratch).await;
        let snap = oracle::read(&client).await;
        Some((snap, chain_state(&client).await))
    };
    let source_chain = chain_state(&connect(cluster, source_db).await).await;
    match &found {
        None => {
            let detail = checks
                .iter()
                .find(|(n, _, _)| n == "restore")
                .map(|c| c.2.clone())
                .unwrap_or_default();
            verdict
                .disagreements
                .push(disagree("verify's restore failed", "-", detail));
        }
        Some((snap, chain)) => {
            let lost = by_table(oracle::diff(source, snap));
            for (table, diffs) in &lost {
                let name = format!("fingerprint:{table}");
                match checks.iter().find(|(n, _, _)| *n == name) {
                    Some((_, false, _)) => {
                        verdict.agreed_losses.insert(table.clone());
                    }
                    Some((_, true, detail)) => verdict.disagreements.push(disagree(
                        "missed loss",
                        table,
                        format!("{name} passed ({detail}); oracle: {}", diffs[0]),
                    )),
                    None => verdict.disagreements.push(disagree(
                        "missed loss",
                        table,
                        format!("no check {name}; oracle: {}", diffs[0]),
                    )),
                }
            }
            let chain_lost = lost.contains_key("pgproof.audit_events")
                || lost.contains_key("pgproof.audit_chain_head");
            for (name, ok, detail) in &checks {
                if *ok {
                    continue;
                }
                let explained = match name.strip_prefix("fingerprint:") {
                    Some(table) => lost.contains_key(table),
                    None => name.starts_with("audit-chain") && chain_lost,
                };
                if !explained {
                    verdict
                        .disagreements
                        .push(disagree("false alarm", name, detail.clone()));
                }
            }
            if passed != checks.iter().all(|c| c.1) {
                verdict.disagreements.push(disagree(
                    "report",
                    "-",
                    format!("passed={passed} disagrees with its checks"),
                ));
            }
            check_chain(&mut verdict, "verify's restore", &source_chain, chain);
        }
    }

    // The `pgproof restore` under the restore settings.
    if restored.status.success() {
        let client = connect(cluster, &target).await;
        let snap = oracle::read(&client).await;
        let chain = chain_state(&client).await;
        drop(client);
        check_chain(&mut verdict, "pgproof restore", &source_chain, &chain);
        let lost_by_verify: BTreeSet<String> = match &found {
            Some((s, _)) => by_table(oracle::diff(source, s)).into_keys().collect(),
            None => BTreeSet::new(),
        };
        for (table, diffs) in by_table(oracle::diff(source, &snap)) {
            if lost_by_verify.contains(&table) {
                continue;
            }
            // pgproof runs every restore under the TimeZone and DateStyle the backup
            // recorded, whatever the restoring process's own: verify's verdict holds
            // for any later restore, a generated column over an "immutable" but
            // zone-dependent expression included (found by this harness).
            verdict.disagreements.push(disagree(
                "loss only in pgproof restore",
                &table,
                diffs[0].to_string(),
            ));
        }
    } else {
        verdict
            .disagreements
            .push(disagree("pgproof restore failed", "-", stderr(&restored)));
    }
    drop_database(cluster, &target).await;
    drop_database(cluster, &scratch).await;
    verdict
}

fn check_chain(
    verdict: &mut Verdict,
    which: &str,
    source: &(i64, Vec<u8>, i64, Option<i64>, bool),
    found: &(i64, Vec<u8>, i64, Option<i64>, bool),
) {
    let (seq, hash, walked, brk, matches) = found;
    if (seq, hash) != (&source.0, &source.1) {
        verdict.disagreements.push(disagree(
            "audit chain head",
            "pgproof.audit_chain_head",
            format!(
                "{which}: head {seq} {} differs from the source's {} {}",
                hex::encode(hash),
                source.0,
                hex::encode(&source.1)
            ),
        ));
    }
    if brk.is_some() || !matches || *walked != source.2 {
        verdict.disagreements.push(disagree(
            "audit chain verify",
            "pgproof.audit_events",
            format!(
                "{which}: walked {walked} (source {}), break at {brk:?}, head matches {matches}",
                source.2
            ),
        ));
    }
}

/// Runs the pipeline on `units` in a fresh source database.
async fn run_units(
    cluster: &EphemeralCluster,
    units: &[Unit],
    format: &str,
    settings: &Settings,
    tag: &str,
) -> Verdict {
    let db = format!("fid_s_{tag}");
    write_source(cluster, &db, units).await;
    let source = oracle::read(&connect(cluster, &db).await).await;
    let verdict = pipeline(cluster, &db, &source, format, settings, tag).await;
    drop_database(cluster, &db).await;
    verdict
}

/// What a verdict shows: its disagreements, and the losses both sides agreed on (kind
/// `agreed loss`, which the shrinker's own test shrinks).
fn classes(v: &Verdict) -> Vec<Disagreement> {
    let mut out = v.disagreements.clone();
    out.extend(v.agreed_losses.iter().map(|t| {
        disagree(
            "agreed loss",
            t,
            "oracle and pgproof both found a difference",
        )
    }));
    out
}

fn find_class(v: &Verdict, target: &Disagreement) -> Option<Disagreement> {
    classes(v)
        .into_iter()
        .find(|d| d.kind == target.kind && d.table == target.table)
}

/// Shrinks a disagreement to one row: bisection over the units, then the last
/// generated row's value tree. Returns the shrunk units and what they show.
async fn shrink(
    cluster: &EphemeralCluster,
    mut units: Vec<Unit>,
    trees: &mut [Box<dyn ValueTree<Value = Case>>],
    format: &str,
    settings: &Settings,
    target: &Disagreement,
    max_simplify: usize,
) -> (Vec<Unit>, Disagreement) {
    let mut step = 0usize;
    let mut last = target.clone();
    while units.len() > 1 {
        let half = units.len() / 2;
        let (a, b) = (units[..half].to_vec(), units[half..].to_vec());
        let mut next = None;
        for part in [a, b] {
            step += 1;
            let v = run_units(cluster, &part, format, settings, &format!("k{step}")).await;
            if let Some(d) = find_class(&v, target) {
                last = d;
                next = Some(part);
                break;
            }
        }
        match next {
            Some(part) => units = part,
            None => break, // needs rows from both halves
        }
    }
    if let [unit] = units.as_slice()
        && let Some(i) = unit.tree
    {
        let id: i64 = unit.label.trim_start_matches("case ").parse().unwrap();
        let mut best = unit.clone();
        let mut failed = true;
        for _ in 0..max_simplify {
            let moved = if failed {
                trees[i].simplify()
            } else {
                trees[i].complicate()
            };
            if !moved {
                break;
            }
            step += 1;
            let candidate = Unit::generated(i, id, &trees[i].current());
            let v = run_units(
                cluster,
                std::slice::from_ref(&candidate),
                format,
                settings,
                &format!("k{step}"),
            )
            .await;
            let found = find_class(&v, target);
            failed = found.is_some();
            if let Some(d) = found {
                last = d;
                best = candidate;
            }
        }
        units = vec![best];
    }
    (units, last)
}

fn cases_wanted() -> usize {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

fn seed() -> u64 {
    std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// The strategies' value trees nest deeply: the run gets a thread with a large stack
/// and a runtime of its own.
fn on_big_stack<F: std::future::Future<Output = ()>>(make: impl FnOnce() -> F + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(512 << 20)
        .spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(make())
        })
        .unwrap()
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

#[test]
fn generated_rows_survive_every_format_and_pgproof_agrees_with_the_oracle() {
    on_big_stack(run);
}

/// The shrinker, on a loss that is certain: one row of `fid_gen` written in
/// Pacific/Chatham among thirty others, verified under America/St_Johns. Bisection
/// must find that row alone, and the value tree must simplify its value while the
/// loss stays (oracle and pgproof agreeing on it throughout).
#[test]
fn a_difference_shrinks_to_its_one_row_and_a_simpler_value() {
    on_big_stack(shrink_self_test);
}

async fn shrink_self_test() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let mut runner = TestRunner::new(Config {
        rng_seed: RngSeed::Fixed(seed()),
        ..Config::default()
    });
    let others = cases::case().prop_filter("no fid_gen row", |c| c.table() != GENERATED_TABLE);
    let mut trees: Vec<Box<dyn ValueTree<Value = Case>>> = (0..30)
        .map(|_| {
            Box::new(others.new_tree(&mut runner).unwrap()) as Box<dyn ValueTree<Value = Case>>
        })
        .collect();
    trees.insert(
        17,
        cases::day_shifting_gen_case()
            .new_tree(&mut runner)
            .unwrap(),
    );
    let units: Vec<Unit> = trees
        .iter()
        .enumerate()
        .map(|(i, t)| Unit::generated(i, i as i64 + 1, &t.current()))
        .collect();
    let original = units[17].clone();
    let session = |tz| Session {
        tz,
        datestyle: "ISO, MDY",
        intervalstyle: "postgres",
        extra_float_digits: 1,
        bytea_output: "hex",
        encoding: "UTF8",
    };
    let settings = Settings {
        dump: session("UTC"),
        verify: session("America/St_Johns"),
        restore: session("Pacific/Chatham"),
    };
    let target = disagree("agreed loss", GENERATED_TABLE, "");
    let whole = run_units(&cluster, &units, "custom", &settings, "t0").await;
    assert!(whole.disagreements.is_empty(), "{:?}", whole.disagreements);
    assert!(find_class(&whole, &target).is_some(), "the loss is certain");
    let (shrunk, shown) =
        shrink(&cluster, units, &mut trees, "custom", &settings, &target, 6).await;
    assert_eq!(shrunk.len(), 1, "{shrunk:#?}");
    assert_eq!(shrunk[0].label, original.label, "{shrunk:#?}");
    assert_eq!(shown.table, GENERATED_TABLE);
    assert_ne!(
        shrunk[0].body, original.body,
        "the value tree simplified nothing"
    );
    eprintln!("shrunk to:\n{}", shrunk[0].as_sql());
}

async fn run() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    let started = Instant::now();
    let total = cases_wanted();
    let seed = seed();
    eprintln!("fidelity_props: {total} cases, PROPTEST_RNG_SEED={seed}");
    let mut runner = TestRunner::new(Config {
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    });
    let strategy = cases::case();
    let mut trees: Vec<Box<dyn ValueTree<Value = Case>>> = (0..total)
        .map(|_| strategy.new_tree(&mut runner).unwrap())
        .collect();
    let batch = (total / 12).clamp(50, 1000);
    let regressions = regressions();
    let mut deck = SettingsDeck::new();

    // Counts: (format, role, zone) → cases; format → rows written / rejected.
    let mut per_zone: BTreeMap<(String, &str, String), usize> = BTreeMap::new();
    let mut per_format: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut per_table: BTreeMap<String, usize> = BTreeMap::new();
    let mut agreed: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();

    let mut start = 0usize;
    let mut b = 0usize;
    while start < total || b == 0 {
        let end = (start + batch).min(total);
        let mut units: Vec<Unit> = if b == 0 {
            regressions.clone()
        } else {
            Vec::new()
        };
        units.extend((start..end).map(|i| Unit::generated(i, i as i64 + 1, &trees[i].current())));
        let db = format!("fid_b{b}");
        let stats = write_source(&cluster, &db, &units).await;
        for r in &stats.rejections {
            eprintln!("  batch {b}: rejected at write: {r}");
        }
        for t in &stats.written {
            *per_table.entry(t.clone()).or_default() += 1;
        }
        let source = oracle::read(&connect(&cluster, &db).await).await;
        for (f, format) in FORMATS.into_iter().enumerate() {
            let settings = deck.settings(f, &mut runner);
            let e = per_format.entry(format.to_owned()).or_default();
            e.0 += stats.written.len();
            e.1 += stats.rejected;
            for (role, s) in [
                ("dump", &settings.dump),
                ("verify", &settings.verify),
                ("restore", &settings.restore),
            ] {
                *per_zone
                    .entry((format.to_owned(), role, s.tz.to_owned()))
                    .or_default() += stats.written.len();
            }
            let tag = format!("b{b}{}", &format[..1]);
            let verdict = pipeline(&cluster, &db, &source, format, &settings, &tag).await;
            for t in &verdict.agreed_losses {
                *agreed.entry(t.clone()).or_default() += 1;
            }
            if let Some(first) = verdict.disagreements.first().cloned() {
                eprintln!(
                    "fidelity_props: batch {b} {format}: {} disagreement(s), first: {first}; shrinking…",
                    verdict.disagreements.len()
                );
                let (shrunk, shown) = shrink(
                    &cluster,
                    units.clone(),
                    &mut trees,
                    format,
                    &settings,
                    &first,
                    MAX_SIMPLIFY_STEPS,
                )
                .await;
                let sql: String = shrunk.iter().map(Unit::as_sql).collect();
                failures.push(format!(
                    "batch {b}, format {format}, seed {seed}\n  settings: dump {}\n            verify {}\n            restore {}\n  all: {}\n  shrunk ({} row(s)) shows: {shown}\n{sql}",
                    settings.dump.describe(),
                    settings.verify.describe(),
                    settings.restore.describe(),
                    verdict
                        .disagreements
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n       "),
                    shrunk.len()
                ));
            }
        }
        drop_database(&cluster, &db).await;
        start = end;
        b += 1;
    }

    eprintln!(
        "fidelity_props: {total} generated cases + {} regression cases in {b} batches, {:.1}s",
        regressions.len(),
        started.elapsed().as_secs_f64()
    );
    for (format, (written, rejected)) in &per_format {
        eprintln!(
            "  {format}: {written} rows through the pipeline ({rejected} rejected by the server at write)"
        );
    }
    eprintln!("  rows per table: {per_table:?}");
    eprintln!("  losses oracle and pgproof agreed on (pipelines): {agreed:?}");
    for ((format, role, zone), n) in &per_zone {
        eprintln!("  {format} {role} TimeZone={zone}: {n} rows");
    }
    assert!(
        failures.is_empty(),
        "{} disagreement(s):\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The run covered what it claims.
    for format in FORMATS {
        let (written, _) = per_format[format];
        assert!(
            written >= total * 9 / 10,
            "{format}: only {written} of {total} rows written"
        );
        if total >= DEFAULT_CASES {
            for role in ["dump", "verify", "restore"] {
                let zones = per_zone
                    .keys()
                    .filter(|(f, r, _)| f == format && *r == role)
                    .count();
                assert!(zones >= 5, "{format} {role}: only {zones} time zones");
            }
        }
    }
    for table in [
        "public.fid_time",
        "public.fid_num",
        "public.fid_text",
        "public.fid_arr",
        "public.fid_part",
    ] {
        assert!(
            per_table.get(table).copied().unwrap_or(0) > 0,
            "no row reached {table}"
        );
    }
}

/// The oracle itself: NaN bit patterns are one value, but −0 and 0, 44 BC and 44 AD,
/// 1.5 and 1.50, a missing row and an added one are differences; floats inside
/// arrays and composites are compared by text.
#[tokio::test]
async fn the_oracle_tells_values_apart_by_send_form_and_floats_by_text() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    connect(&cluster, "postgres")
        .await
        .batch_execute("CREATE DATABASE fid_oracle")
        .await
        .unwrap();
    let client = connect(&cluster, "fid_oracle").await;
    client
        .batch_execute(
            "CREATE TYPE fc AS (f float8, s text);
             CREATE TABLE o (id int PRIMARY KEY, f float8, fa float8[], c fc, ts timestamptz, n numeric);
             INSERT INTO o VALUES (1, 'Infinity'::float8 - 'Infinity', ARRAY['Infinity'::float8 - 'Infinity'],
               ROW('Infinity'::float8 - 'Infinity', 'x'), '0044-03-15 12:00+00', 1.5);",
        )
        .await
        .unwrap();
    let before = oracle::read(&client).await;
    let cols = &before.tables["public.o"].columns;
    let float_like: Vec<bool> = cols.iter().map(|c| c.float_like).collect();
    assert_eq!(
        float_like,
        [false, true, true, true, false, false],
        "{cols:?}"
    );

    let changes: [(&str, Option<&str>); 6] = [
        (
            "UPDATE o SET f = 'NaN', fa = '{NaN}', c = ROW('NaN', 'x')",
            None,
        ),
        ("UPDATE o SET f = '-0'", Some("f (double precision)")),
        (
            "UPDATE o SET ts = '0044-03-15 12:00+00 BC'",
            Some("ts (timestamp with time zone)"),
        ),
        ("UPDATE o SET n = 1.50", Some("n (numeric)")),
        ("DELETE FROM o", Some("row missing")),
        ("INSERT INTO o (id) VALUES (2)", Some("row added")),
    ];
    for (sql, expected) in changes {
        client.batch_execute("BEGIN").await.unwrap();
        client.batch_execute(sql).await.unwrap();
        let after = oracle::read(&client).await;
        client.batch_execute("ROLLBACK").await.unwrap();
        let diffs = oracle::diff(&before, &after);
        match expected {
            None => {
                assert!(diffs.is_empty(), "{sql}: {diffs:?}");
                // The change was real: the stored bytes differ.
                let b = &before.tables["public.o"].rows.values().next().unwrap().1[1];
                let a = &after.tables["public.o"].rows.values().next().unwrap().1[1];
                assert_ne!(a.binary, b.binary, "{sql}: the bytes did not change");
            }
            Some(what) => {
                assert_eq!(diffs.len(), 1, "{sql}: {diffs:?}");
                assert!(diffs[0].what.contains(what), "{sql}: {}", diffs[0]);
            }
        }
    }
    drop(client);
    connect(&cluster, "postgres")
        .await
        .batch_execute("DROP DATABASE fid_oracle")
        .await
        .unwrap();
}

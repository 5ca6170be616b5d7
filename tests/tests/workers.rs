//! N verify workers on one catalog (`pgproof verify --stale AGE --worker`): claims
//! decide which worker verifies a backup, so no two verify one at once, each backup
//! is verified once per round, a worker killed mid-verify loses its backup to
//! another once its claim expires, and a forged claim holds nothing.
//! A test binary of its own: it counts processes and kills one.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use jiff::{SignedDuration, Timestamp};
use pgproof_core::catalog::{Claim, Keyring, SignedSink, SigningKey, Taken, VerifyClaim, layout};
use pgproof_core::sink::SinkExt;
use pgproof_core::{ErrorKind, Sink};
use pgproof_sink_fs::FsSink;
use pgproof_tests::{
    Workspace, connect, create_sample_database, split_signed, start_cluster, stderr,
};
use serde_json::Value;

const TTL: Duration = Duration::from_secs(3);

fn signed_sink(dir: &std::path::Path) -> (Arc<SignedSink>, Arc<FsSink>) {
    let fs = Arc::new(FsSink::new(dir));
    let keys = Keyring::new(Some(SigningKey::generate("worker").unwrap()), Vec::new());
    (Arc::new(SignedSink::new(fs.clone(), keys)), fs)
}

async fn take(sink: &dyn Sink, id: &str, holder: &str) -> (Taken, Vec<pgproof_core::Error>) {
    let mut untrusted = Vec::new();
    let taken = VerifyClaim::take(sink, "app", id, holder, TTL, &mut untrusted)
        .await
        .unwrap();
    (taken, untrusted)
}

fn claimed(taken: Taken) -> VerifyClaim {
    match taken {
        Taken::Claimed(claim) => claim,
        Taken::Busy { holder, .. } => panic!("busy, held by {holder}"),
    }
}

async fn generations(sink: &dyn Sink, id: &str) -> Vec<u64> {
    let mut found: Vec<u64> = sink
        .list(&layout::claims("app", id))
        .await
        .unwrap()
        .iter()
        .filter_map(|o| layout::claim_generation(&o.key))
        .collect();
    found.sort_unstable();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_workers_taking_one_backup_at_once_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, _) = signed_sink(dir.path());
    for round in 0..5 {
        let id = format!("b{round}");
        let tasks: Vec<_> = (0..8)
            .map(|w| {
                let sink = sink.clone();
                let id = id.clone();
                tokio::spawn(async move { take(&*sink, &id, &format!("worker {w}")).await.0 })
            })
            .collect();
        let mut won = Vec::new();
        for task in tasks {
            if let Taken::Claimed(claim) = task.await.unwrap() {
                won.push(claim);
            }
        }
        assert_eq!(won.len(), 1, "round {round}: {won:?}");
    }
}

#[tokio::test]
async fn an_expired_claim_is_taken_over_and_its_holder_cannot_renew_or_record() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, _) = signed_sink(dir.path());
    let mut first = claimed(take(&*sink, "1", "first").await.0);
    assert!(first.renew(&*sink).await.unwrap(), "renewing a live claim");
    assert_eq!(
        generations(&*sink, "1").await,
        [2],
        "the renewed-over one is gone"
    );
    match take(&*sink, "1", "second").await.0 {
        Taken::Busy { holder, .. } => assert_eq!(holder, "first"),
        Taken::Claimed(c) => panic!("a live claim was taken: {c:?}"),
    }
    assert!(first.holds(&*sink, Duration::ZERO).await.unwrap());

    // The first holder stops renewing (paused, killed): after the TTL, taken over.
    tokio::time::sleep(TTL + Duration::from_millis(200)).await;
    let second = claimed(take(&*sink, "1", "second").await.0);
    assert_eq!(second.generation(), 3);
    assert!(!first.holds(&*sink, Duration::ZERO).await.unwrap());
    assert!(
        !first.renew(&*sink).await.unwrap(),
        "the old holder must learn it lost"
    );
    second.release(&*sink).await;
    // One released marker on top; the trusted generations below it deleted.
    assert_eq!(generations(&*sink, "1").await, [4]);
    let third = claimed(take(&*sink, "1", "third").await.0);
    assert_eq!(third.generation(), 5, "generations only grow");
}

#[tokio::test]
async fn a_claim_not_believed_holds_nothing_and_is_kept_as_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, fs) = signed_sink(dir.path());
    let now = Timestamp::now();
    let live = |id: &str, generation: u64, expires_in: i64| Claim {
        database: "app".into(),
        backup_id: id.into(),
        generation,
        holder: "an attacker".into(),
        claimed_at: now,
        expires_at: now + SignedDuration::from_secs(expires_in),
        released: false,
    };
    let body = |c: &Claim| Bytes::from(serde_json::to_vec(c).unwrap());

    // Unsigned, live for an hour, at a high generation.
    let forged = layout::claim("app", "1", 50);
    fs.put_bytes(&forged, body(&live("1", 50, 3600)))
        .await
        .unwrap();
    let (taken, untrusted) = take(&*sink, "1", "worker").await;
    let claim = claimed(taken);
    assert_eq!(claim.generation(), 51);
    assert_eq!(untrusted.len(), 1);
    assert_eq!(untrusted[0].kind(), ErrorKind::Integrity);
    assert_eq!(untrusted[0].object(), Some(forged.as_str()));
    claim.release(&*sink).await;
    assert_eq!(
        generations(&*sink, "1").await,
        [50, 52],
        "the forgery stays"
    );

    // Signed by a trusted key, but claiming the backup for a month.
    sink.put_bytes(
        &layout::claim("app", "2", 1),
        body(&live("2", 1, 30 * 86_400)),
    )
    .await
    .unwrap();
    let (taken, untrusted) = take(&*sink, "2", "worker").await;
    assert_eq!(claimed(taken).generation(), 2);
    assert!(
        untrusted[0]
            .to_string()
            .contains("longer than a claim may last"),
        "{}",
        untrusted[0]
    );

    // A genuine live claim of backup 3 copied to backup 4: its signature is for
    // another key.
    let genuine = claimed(take(&*sink, "3", "holder of 3").await.0);
    let stored = fs
        .get_bytes(&layout::claim("app", "3", genuine.generation()), 1 << 16)
        .await
        .unwrap();
    fs.put_bytes(&layout::claim("app", "4", 7), Bytes::from(stored))
        .await
        .unwrap();
    let (taken, untrusted) = take(&*sink, "4", "worker").await;
    assert_eq!(claimed(taken).generation(), 8);
    assert!(
        untrusted[0].to_string().contains("made for"),
        "{}",
        untrusted[0]
    );
}

/// What a lease object says: the pid in its holder (`verify, pid N`).
fn lease_pid(path: &std::path::Path) -> Option<u32> {
    let stored = std::fs::read_to_string(path).ok()?;
    let (payload, _) = split_signed(&stored);
    let lease: Value = serde_json::from_str(payload).ok()?;
    lease["holder"].as_str()?.rsplit(' ').next()?.parse().ok()
}

/// backup id → pids holding a lease on it now.
fn leases(ws: &Workspace) -> BTreeMap<String, BTreeSet<u32>> {
    let mut out: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for file in ws.sink_files() {
        let parts: Vec<&str> = file.split('/').collect();
        if let ["app", id, "lease", _] = parts.as_slice()
            && let Some(pid) = lease_pid(&ws.sink.join(&file))
        {
            out.entry((*id).to_owned()).or_default().insert(pid);
        }
    }
    out
}

/// backup id → its verification records' names.
fn records(ws: &Workspace) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in ws.sink_files() {
        let parts: Vec<&str> = file.split('/').collect();
        if let ["app", id, "verify", name] = parts.as_slice() {
            out.entry((*id).to_owned())
                .or_default()
                .push((*name).to_owned());
        }
    }
    out
}

fn spawn_worker(ws: &Workspace) -> Child {
    ws.command(&["verify", "--stale", "1d", "--worker", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn four_workers_one_killed_mid_verify_verify_every_backup_exactly_once() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_sample_database(&cluster, "app").await;
    // Enough rows that a restore takes a while: the kill lands mid-verify.
    connect(&cluster, "app")
        .await
        .batch_execute(
            "CREATE TABLE padding AS SELECT g, md5(g::text) AS h, repeat('x', 200) AS t \
             FROM generate_series(1, 300000) g",
        )
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, "app", "custom");
    ws.verify_on(&cluster);
    let config = std::fs::read_to_string(&ws.config).unwrap();
    // Short, so the test waits little for the takeover; long enough that a loaded
    // machine never delays a renewal (every 2 s) past it.
    ws.write_config(&format!("{config}claim_ttl = \"6s\"\n"));
    const BACKUPS: usize = 6;
    let ids: BTreeSet<String> = (0..BACKUPS)
        .map(|_| ws.backup()["backup_id"].as_str().unwrap().to_owned())
        .collect();

    let mut workers: Vec<Child> = (0..4).map(|_| spawn_worker(&ws)).collect();
    let pids: Vec<u32> = workers.iter().map(Child::id).collect();
    // The first lease taken: a worker has claimed a backup and is restoring it.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (victim_backup, victim_pid) = loop {
        assert!(Instant::now() < deadline, "no worker ever took a lease");
        if let Some((id, holders)) = leases(&ws).into_iter().next() {
            break (id, *holders.iter().next().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let victim = pids.iter().position(|p| *p == victim_pid).unwrap();
    workers[victim].kill().unwrap(); // SIGKILL: no cleanup, no release
    let killed_at = Instant::now();
    workers.remove(victim).wait().unwrap();
    assert!(
        !records(&ws).contains_key(&victim_backup),
        "the kill came after the record: not mid-verify"
    );

    // While the other three work: never two live workers on one backup, and the
    // killed worker's backup taken over only once its claim could have expired.
    let mut taken_over_after = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while workers.iter_mut().any(|w| w.try_wait().unwrap().is_none()) {
        assert!(Instant::now() < deadline, "the workers did not finish");
        for (id, holders) in leases(&ws) {
            let live: Vec<&u32> = holders.iter().filter(|p| **p != victim_pid).collect();
            assert!(live.len() <= 1, "backup {id} verified by {live:?} at once");
            if id == victim_backup && !live.is_empty() && taken_over_after.is_none() {
                taken_over_after = Some(killed_at.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut reported = Vec::new();
    for worker in workers {
        let out = worker.wait_with_output().unwrap();
        assert!(out.status.success(), "a worker failed: {}", stderr(&out));
        let reports: Value = serde_json::from_slice(&out.stdout).unwrap();
        for r in reports.as_array().unwrap() {
            assert_eq!(r["passed"], true, "{r:#}");
            reported.push(r["backup_id"].as_str().unwrap().to_owned());
        }
    }
    reported.sort();
    assert_eq!(
        reported,
        ids.iter().cloned().collect::<Vec<_>>(),
        "each backup reported by exactly one worker"
    );
    // Exactly one passing record per backup for the round.
    let records = records(&ws);
    assert_eq!(records.keys().cloned().collect::<BTreeSet<_>>(), ids);
    for (id, names) in &records {
        assert_eq!(names.len(), 1, "backup {id}: {names:?}");
        assert!(names[0].contains("_passed"), "{id}: {names:?}");
    }
    // Taken over after the claim expired: it was renewed at most a third of its
    // lifetime before the kill, so it held at least two thirds of 6 s beyond it.
    let after = taken_over_after.expect("the killed worker's backup was never taken over");
    eprintln!(
        "killed pid {victim_pid} verifying {victim_backup}; taken over {after:?} later; reports {reported:?}"
    );
    assert!(
        after >= Duration::from_secs(2),
        "taken over after {after:?}"
    );
    // What is left of the claims: one released marker per backup, written by a
    // worker that lived.
    for id in &ids {
        let claims: Vec<String> = ws
            .sink_files()
            .into_iter()
            .filter(|f| f.starts_with(&format!("app/{id}/claim/")))
            .collect();
        assert_eq!(claims.len(), 1, "{id}: {claims:?}");
        let stored = std::fs::read_to_string(ws.sink.join(&claims[0])).unwrap();
        let claim: Value = serde_json::from_str(split_signed(&stored).0).unwrap();
        assert_eq!(claim["released"], true, "{claim:#}");
        assert!(
            !claim["holder"]
                .as_str()
                .unwrap()
                .ends_with(&format!("pid {victim_pid}")),
            "{claim:#}"
        );
    }

    // The round is over: another worker finds nothing left to do.
    let out = ws.pgproof(&["verify", "--stale", "1d", "--worker"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 verified"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(records_count(&ws), BACKUPS);
}

fn records_count(ws: &Workspace) -> usize {
    records(ws).values().map(Vec::len).sum()
}

#[tokio::test]
async fn a_forged_claim_does_not_keep_a_worker_from_a_backup() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_sample_database(&cluster, "app").await;
    let ws = Workspace::new(&cluster, "app", "custom");
    ws.verify_on(&cluster);
    let id = ws.backup()["backup_id"].as_str().unwrap().to_owned();
    // Unsigned, live for an hour: what someone with write access to the bucket can
    // put there to keep the backup from ever being proven again.
    let now = Timestamp::now();
    let forged = layout::claim("app", &id, 9);
    let path = ws.sink.join(&forged);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        &path,
        serde_json::to_vec(&Claim {
            database: "app".into(),
            backup_id: id.clone(),
            generation: 9,
            holder: "verify worker on elsewhere, pid 1".into(),
            claimed_at: now,
            expires_at: now + SignedDuration::from_secs(3600),
            released: false,
        })
        .unwrap(),
    )
    .unwrap();

    let out = ws.pgproof(&["verify", "--stale", "1d", "--worker"]);
    // Verified and recorded all the same; the forgery is named and fails the run.
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains(&forged), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 verified"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let names = records(&ws).remove(&id).unwrap_or_default();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].contains("_passed"), "{names:?}");
    assert!(path.exists(), "the forged claim is evidence: kept");
}

#[tokio::test]
async fn a_worker_paused_past_its_claim_stops_and_records_nothing() {
    let Some(cluster) = start_cluster() else {
        return;
    };
    create_sample_database(&cluster, "app").await;
    connect(&cluster, "app")
        .await
        .batch_execute(
            "CREATE TABLE padding AS SELECT g, md5(g::text) AS h, repeat('x', 200) AS t \
             FROM generate_series(1, 300000) g",
        )
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, "app", "custom");
    ws.verify_on(&cluster);
    let config = std::fs::read_to_string(&ws.config).unwrap();
    ws.write_config(&format!("{config}claim_ttl = \"3s\"\n"));
    let id = ws.backup()["backup_id"].as_str().unwrap().to_owned();

    // A claims the backup and starts restoring it; then it is paused (SIGSTOP: a
    // stalled VM, a process swapped out) for longer than its claim lives.
    let paused = spawn_worker(&ws);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !leases(&ws).contains_key(&id) {
        assert!(Instant::now() < deadline, "the worker never took a lease");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = paused.id().to_string();
    let signal = |sig: &str| {
        let sent = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;

    // B takes the backup over and verifies it (ending the paused one's session on
    // the shared scratch server as it swaps its restore in).
    let out = ws.pgproof(&["verify", "--stale", "1d", "--worker"]);
    signal("-CONT");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 verified"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A resumes, finds its claim taken, stops its verification and records nothing;
    // nothing of the round is left for it.
    let out = paused.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let reports: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reports, serde_json::json!([]), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("another worker took this backup over; stopping"),
        "{}",
        stderr(&out)
    );
    let names = records(&ws).remove(&id).unwrap_or_default();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].contains("_passed"), "{names:?}");
    // The stopped verification gave its lease back; its scratch database is gone.
    assert!(
        leases(&ws).is_empty(),
        "{:?} left; {}",
        leases(&ws),
        stderr(&out)
    );
    let scratch: i64 = connect(&cluster, "postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgproof\\_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(scratch, 0);
}

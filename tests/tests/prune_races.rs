//! Prune's protections that act after the plan: a lease taken between the plan and
//! the deletion (a verification that started meanwhile), and a backup whose manifest
//! cannot be read. Backups are real (`pgproof backup` of a real database into a
//! signed local sink); prune runs through the library so a verification can be made
//! to start at exactly the moment prune re-checks, which no timing of two processes
//! could hit reliably.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pgproof_core::catalog::{BackupLease, Keyring, SignedSink, SigningKey, layout};
use pgproof_core::ops::{Action, Prune, RetentionPolicy};
use pgproof_core::sink::ObjectMeta;
use pgproof_core::{Result, Sink};
use pgproof_sink_fs::FsSink;
use pgproof_tests::hooked::{Hooked, Hooks};
use pgproof_tests::{Workspace, create_database, start_cluster, stderr};
use serde_json::Value;

/// The workspace's sink as the CLI opens it: signed with its key.
fn signed_sink(ws: &Workspace) -> Arc<SignedSink> {
    Arc::new(SignedSink::new(
        Arc::new(FsSink::new(&ws.sink)),
        Keyring::new(Some(SigningKey::load(&ws.signing_key).unwrap()), Vec::new()),
    ))
}

/// A sink that lets a verification take its lease on one backup at the moment prune
/// lists that backup's leases — which only the re-check just before deletion does
/// (the plan reads the whole database's listing once).
#[derive(Debug)]
struct VerificationStartsDuringPrune {
    database: String,
    backup_id: String,
    lease_listings: AtomicUsize,
}

#[async_trait]
impl Hooks for VerificationStartsDuringPrune {
    async fn list(&self, inner: &dyn Sink, prefix: &str) -> Result<Vec<ObjectMeta>> {
        if prefix == layout::leases(&self.database, &self.backup_id)
            && self.lease_listings.fetch_add(1, Ordering::SeqCst) == 0
        {
            // Taken through the signed sink, as a verifying host's would be.
            BackupLease::new(
                &self.database,
                &self.backup_id,
                "verify (started during prune)",
                Duration::from_secs(3600),
            )
            .take(inner)
            .await?;
        }
        inner.list(prefix).await
    }
}

/// Three backups of `app`, oldest first.
async fn three_backups() -> Option<(
    pgproof_core::scratch::EphemeralCluster,
    Workspace,
    Vec<String>,
)> {
    let cluster = start_cluster()?;
    create_database(&cluster, "app")
        .await
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let ws = Workspace::new(&cluster, "app", "custom");
    let ids = (0..3)
        .map(|_| ws.backup()["backup_id"].as_str().unwrap().to_owned())
        .collect();
    Some((cluster, ws, ids))
}

fn keep_last_one() -> RetentionPolicy {
    RetentionPolicy {
        keep_last: Some(1),
        ..RetentionPolicy::default()
    }
}

fn files_of(ws: &Workspace, id: &str) -> Vec<String> {
    ws.sink_files()
        .into_iter()
        .filter(|f| f.contains(id))
        .collect()
}

/// The plan says delete; a verification takes its lease before prune gets to it; the
/// backup stays whole (no tombstone, every object), while the other backup the plan
/// condemned is pruned, so the deletion machinery did run.
#[tokio::test]
async fn a_lease_taken_after_the_plan_saves_the_backup() {
    let Some((_cluster, ws, ids)) = three_backups().await else {
        return;
    };
    let (oldest, middle) = (&ids[0], &ids[1]);
    let signed = signed_sink(&ws);
    let sink = Arc::new(Hooked {
        inner: signed.clone(),
        hooks: VerificationStartsDuringPrune {
            database: "app".into(),
            backup_id: oldest.clone(),
            lease_listings: AtomicUsize::new(0),
        },
    });
    let oldest_before = files_of(&ws, oldest);
    assert!(!oldest_before.iter().any(|f| f.contains("/lease/")));

    let decisions = Prune::new(sink.clone(), keep_last_one())
        .run()
        .await
        .unwrap();

    let action = |id: &str| {
        decisions
            .iter()
            .find(|d| d.backup_id == id)
            .map(|d| d.action.clone())
            .unwrap()
    };
    assert!(
        matches!(action(oldest), Action::Delete),
        "the plan condemned it: {decisions:?}"
    );
    assert!(matches!(action(middle), Action::Delete), "{decisions:?}");
    assert_eq!(
        sink.hooks.lease_listings.load(Ordering::SeqCst),
        1,
        "prune re-read the leases of the planned deletion once"
    );
    // Saved: every object it had, plus the lease; no tombstone.
    let oldest_after = files_of(&ws, oldest);
    let leases: Vec<&String> = oldest_after
        .iter()
        .filter(|f| f.contains("/lease/"))
        .collect();
    assert_eq!(leases.len(), 1, "{oldest_after:?}");
    let without_lease: Vec<String> = oldest_after
        .iter()
        .filter(|f| !f.contains("/lease/"))
        .cloned()
        .collect();
    assert_eq!(without_lease, oldest_before);
    assert!(!oldest_after.iter().any(|f| f.ends_with("tombstone.json")));
    // The middle one, not leased, was pruned: only its tombstone is left.
    let middle_after = files_of(&ws, middle);
    assert_eq!(middle_after.len(), 1, "{middle_after:?}");
    assert!(middle_after[0].ends_with("tombstone.json"));
    // And the saved backup is still a backup: listed by the CLI.
    let listed: Value = serde_json::from_str(&ws.pgproof_ok(&["list", "--json"])).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["backup_id"] == oldest.as_str()),
        "{listed:#}"
    );
}

/// A backup whose manifest is damaged is never deleted, though no retention rule
/// keeps it: the plan keeps it naming why, and its objects (the dump may be the only
/// copy of that night) stay. Only its neighbour, intact and kept by nothing, goes.
///
/// `Prune`'s second guard (refusing, at deletion, an entry whose manifest did not
/// parse) cannot be reached through `Prune::run`: the plan above always keeps such
/// an entry, so this test proves the behaviour the docs claim through the guard that
/// actually acts.
#[tokio::test]
async fn a_damaged_manifest_is_never_pruned() {
    let Some((_cluster, ws, ids)) = three_backups().await else {
        return;
    };
    let (oldest, middle) = (&ids[0], &ids[1]);
    let manifest = ws.sink.join(layout::manifest("app", oldest));
    std::fs::write(&manifest, "{ damaged").unwrap();
    let oldest_before = files_of(&ws, oldest);
    assert!(oldest_before.len() >= 2, "{oldest_before:?}");

    ws.write_config(&format!(
        "{}\n[retention]\nkeep_last = 1\n",
        std::fs::read_to_string(&ws.config).unwrap()
    ));
    let out = ws.pgproof(&["prune", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let decisions: Value = serde_json::from_slice(&out.stdout).unwrap();
    let decisions = decisions["decisions"].as_array().unwrap().clone();
    let of = |id: &str| {
        decisions
            .iter()
            .find(|d| d["backup_id"] == id)
            .unwrap_or_else(|| panic!("{id} not decided: {decisions:#?}"))
            .clone()
    };
    assert_eq!(of(oldest)["action"], "keep", "{decisions:#?}");
    assert!(
        of(oldest)["detail"]
            .to_string()
            .contains("manifest cannot be read"),
        "{decisions:#?}"
    );
    assert_eq!(of(middle)["action"], "delete", "{decisions:#?}");
    assert_eq!(
        files_of(&ws, oldest),
        oldest_before,
        "a damaged backup lost objects"
    );
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), "{ damaged");
    let middle_after = files_of(&ws, middle);
    assert!(
        middle_after.len() == 1 && middle_after[0].ends_with("tombstone.json"),
        "{middle_after:?}"
    );
}

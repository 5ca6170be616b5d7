//! `check` and `prune` of cluster runs.

use super::*;

/// The objects under `.cluster/`, by run id (the directory name as listed).
async fn runs_listed(sink: &dyn Sink) -> Result<BTreeMap<String, Vec<crate::sink::ObjectMeta>>> {
    let mut runs: BTreeMap<String, Vec<crate::sink::ObjectMeta>> = BTreeMap::new();
    for meta in sink.list(&catalog::layout::cluster_runs()).await? {
        if let Some(id) = meta.key.split('/').nth(1) {
            runs.entry(id.to_owned()).or_default().push(meta);
        }
    }
    Ok(runs)
}

/// `check` of the cluster runs: each record trusted and readable, its globals object
/// there with the recorded size (and sha256, with `read_data`), and each backup it
/// names committed or pruned by prune (a run whose backup was pruned is left for
/// prune; one whose backup vanished otherwise is a finding). Returns the findings
/// and the bytes read.
pub(crate) async fn check_runs(
    sink: &dyn Sink,
    inventory: &catalog::Inventory,
    read_data: bool,
) -> Result<(Vec<crate::ops::Finding>, u64)> {
    let mut findings = Vec::new();
    let mut bytes_read = 0;
    let finding = |run: &str, problem: String| crate::ops::Finding {
        database: catalog::layout::CLUSTER_DIR.to_owned(),
        backup_id: run.to_owned(),
        problem,
    };
    for (id, objects) in runs_listed(sink).await? {
        let record = catalog::layout::cluster_run(&id);
        if !objects.iter().any(|o| o.key == record) {
            continue; // a run that failed or is still writing: prune's to judge
        }
        let run = match cluster::load_run(sink, &id).await {
            Ok(run) => run,
            Err(e) if matches!(e.kind(), ErrorKind::Integrity | ErrorKind::Config) => {
                findings.push(finding(&id, e.to_string()));
                continue;
            }
            Err(e) => return Err(e),
        };
        let object = &run.globals;
        match objects.iter().find(|o| o.key == object.key) {
            None => findings.push(finding(
                &id,
                format!("globals object {} is missing", object.key),
            )),
            Some(o) if o.size != object.stored_bytes => findings.push(finding(
                &id,
                format!(
                    "globals object {} has {} bytes, the record says {}",
                    object.key, o.size, object.stored_bytes
                ),
            )),
            Some(o) if read_data => {
                let stored = sink.get_bytes(&object.key, cluster::GLOBALS_LIMIT).await?;
                bytes_read += o.size;
                let sha = crate::codec::sha256_hex(&stored);
                if sha != object.stored_sha256 {
                    findings.push(finding(
                        &id,
                        format!(
                            "globals object {} has sha256 {sha}, the record says {}",
                            object.key, object.stored_sha256
                        ),
                    ));
                }
            }
            Some(_) => {}
        }
        for db in &run.databases {
            let part = inventory.databases.get(&db.database);
            let committed =
                part.and_then(|p| p.backups.iter().find(|b| b.backup_id == db.backup_id));
            let pruned = part.is_some_and(|p| p.tombstones.contains_key(db.backup_id.as_str()));
            match committed {
                Some(entry) if entry.manifest.is_ok() && entry.manifest_sha256 != db.manifest_sha256 => {
                    findings.push(finding(
                        &id,
                        format!(
                            "the manifest of backup {} of {} is not the one the run recorded (sha256 {} recorded, {} now)",
                            db.backup_id, db.database, db.manifest_sha256, entry.manifest_sha256
                        ),
                    ));
                }
                Some(_) => {}
                None if pruned => {}
                None => findings.push(finding(
                    &id,
                    format!(
                        "names backup {} of {}, whose manifest is gone (not by prune: no tombstone)",
                        db.backup_id, db.database
                    ),
                )),
            }
        }
    }
    Ok((findings, bytes_read))
}

/// What prune does with the cluster runs: a trusted run one of whose backups is
/// pruned (already, or by this prune) can no longer recreate its server and goes,
/// record first; a run's objects without a record, older than the grace period, are
/// a failed run's and go; a record that is not trusted is kept and reported.
pub(crate) struct ClusterPrune {
    decisions: Vec<(crate::ops::Decision, Vec<String>)>,
}

impl ClusterPrune {
    /// Decides, given the inventory and the per-database decisions of this prune.
    pub(crate) async fn plan(
        sink: &dyn Sink,
        inventory: &catalog::Inventory,
        decided: &[crate::ops::Decision],
        now: Timestamp,
        orphan_grace: jiff::SignedDuration,
    ) -> Result<Self> {
        use crate::ops::{Action, Decision, KeepReason};
        let pruned = |database: &str, id: &str| {
            inventory
                .databases
                .get(database)
                .is_some_and(|p| p.tombstones.contains_key(id))
                || decided.iter().any(|d| {
                    d.database == database && d.backup_id == id && d.action == Action::Delete
                })
        };
        let mut decisions = Vec::new();
        for (id, objects) in runs_listed(sink).await? {
            let record = catalog::layout::cluster_run(&id);
            // The record first: once it is gone, the run is no longer offered.
            let mut keys: Vec<String> = objects.iter().map(|o| o.key.clone()).collect();
            keys.sort_by_key(|k| *k != record);
            let decision = |action| Decision {
                database: catalog::layout::CLUSTER_DIR.to_owned(),
                backup_id: id.clone(),
                action,
            };
            if !keys.contains(&record) {
                if catalog::id_started_at(&id).is_some_and(|at| at < now - orphan_grace) {
                    decisions.push((decision(Action::DeleteOrphan(keys.len())), keys));
                }
                continue;
            }
            let action = match cluster::load_run(sink, &id).await {
                Ok(run) => {
                    let gone: Vec<&str> = run
                        .databases
                        .iter()
                        .filter(|d| pruned(&d.database, &d.backup_id))
                        .map(|d| d.database.as_str())
                        .collect();
                    if gone.is_empty() {
                        Action::Keep(vec![KeepReason::ClusterRun])
                    } else {
                        tracing::info!(run = %id, databases = %gone.join(", "), "cluster run loses a backup to prune; it goes too");
                        Action::Delete
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::Integrity | ErrorKind::Config) => {
                    Action::Keep(vec![KeepReason::Unreadable])
                }
                Err(e) => return Err(e),
            };
            decisions.push((decision(action), keys));
        }
        Ok(Self { decisions })
    }

    /// Deletes what was decided.
    pub(crate) async fn execute(&self, sink: &dyn Sink) -> Result<()> {
        for (decision, keys) in &self.decisions {
            if matches!(decision.action, crate::ops::Action::Keep(_)) {
                continue;
            }
            for key in keys {
                match sink.delete(key).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            tracing::info!(run = %decision.backup_id, "pruned cluster run");
        }
        Ok(())
    }

    /// The decisions, for the report.
    pub(crate) fn decisions(&self) -> impl Iterator<Item = crate::ops::Decision> + '_ {
        self.decisions.iter().map(|(d, _)| d.clone())
    }
}

//! Check: the whole catalog without restoring anything. Every database's manifest
//! chain (a manifest deleted other than by prune, or edited after its successor
//! recorded it, a second head), every manifest readable, and every object it lists
//! present at its recorded size (with `read_data`, also hashed).

use std::sync::Arc;

use futures::TryStreamExt;
use sha2::{Digest, Sha256};

use std::collections::{BTreeMap, HashMap};

use crate::catalog::chunks;
use crate::catalog::{DatabaseInventory, Inventory};
use crate::error::Result;
use crate::sink::Sink;

/// Bad chunks a backup's findings name one by one; more are counted.
const CHUNK_FINDINGS_NAMED: usize = 20;

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// The database.
    pub database: String,
    /// The backup it concerns.
    pub backup_id: String,
    /// What is wrong.
    pub problem: String,
}

/// A check of a sink's catalog (or one database's), done by
/// [`run`](CatalogCheck::run).
#[must_use = "a CatalogCheck does nothing until run"]
pub struct CatalogCheck {
    sink: Arc<dyn Sink>,
    database: Option<String>,
    read_data: bool,
}

/// What a check looked at, and what it found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckOutcome {
    /// Committed backups looked at.
    pub backups: usize,
    /// Backups pruned (tombstones), which are not findings.
    pub pruned: usize,
    /// Bytes read and hashed (`read_data`).
    pub bytes_read: u64,
    /// Every problem.
    pub findings: Vec<Finding>,
}

impl CatalogCheck {
    /// Checks `sink`.
    pub fn new(sink: Arc<dyn Sink>) -> Self {
        Self {
            sink,
            database: None,
            read_data: false,
        }
    }

    /// Only this database.
    pub fn database(mut self, database: Option<String>) -> Self {
        self.database = database;
        self
    }

    /// Also reads every dump object and compares its sha256 with the manifest's.
    pub fn read_data(mut self, read: bool) -> Self {
        self.read_data = read;
        self
    }

    /// Checks.
    pub async fn run(self) -> Result<CheckOutcome> {
        let inventory = Inventory::load(&*self.sink, self.database.as_deref()).await?;
        let mut outcome = CheckOutcome::default();
        for (database, part) in &inventory.databases {
            outcome.backups += part.backups.len();
            outcome.pruned += part.tombstones.len();
            let mut findings = chain_findings(database, part);
            // Objects other than manifests that no trusted key signed (an untrusted
            // manifest is already its backup's finding).
            findings.extend(
                part.findings
                    .iter()
                    .filter(|f| !f.key.ends_with("/manifest.json"))
                    .map(|f| Finding {
                        database: database.clone(),
                        backup_id: f.key.split('/').nth(1).unwrap_or_default().to_owned(),
                        problem: f.problem.clone(),
                    }),
            );
            for entry in &part.backups {
                let Ok(manifest) = &entry.manifest else {
                    continue;
                };
                for object in manifest.objects() {
                    let found = entry.objects.iter().find(|o| o.key == object.key);
                    let problem = match found {
                        None => Some(format!("object {} is missing", object.key)),
                        Some(o) if o.size != object.stored_bytes => Some(format!(
                            "object {} has {} bytes, the manifest says {}",
                            object.key, o.size, object.stored_bytes
                        )),
                        Some(_) if self.read_data => {
                            let (sha, bytes) = self.hash(&object.key).await?;
                            outcome.bytes_read += bytes;
                            (sha != object.stored_sha256).then(|| {
                                format!(
                                    "object {} has sha256 {sha}, the manifest says {}",
                                    object.key, object.stored_sha256
                                )
                            })
                        }
                        Some(_) => None,
                    };
                    if let Some(problem) = problem {
                        findings.push(Finding {
                            database: database.clone(),
                            backup_id: entry.backup_id.to_string(),
                            problem,
                        });
                    }
                }
            }
            let found = self
                .chunk_findings(database, part, &findings, &mut outcome)
                .await?;
            findings.extend(found);
            outcome.findings.extend(findings);
        }
        // Cluster runs belong to no database: checked with the whole sink.
        if self.database.is_none() {
            let (findings, bytes) =
                super::cluster::check_runs(&*self.sink, &inventory, self.read_data).await?;
            outcome.findings.extend(findings);
            outcome.bytes_read += bytes;
        }
        Ok(outcome)
    }

    /// The shared chunks of `database`'s deduplicated backups: each one every backup
    /// lists present at its listed size and, with `read_data`, hashed, once however
    /// many backups share it; a bad chunk is a finding of every backup that lists it.
    async fn chunk_findings(
        &self,
        database: &str,
        part: &DatabaseInventory,
        found: &[Finding],
        outcome: &mut CheckOutcome,
    ) -> Result<Vec<Finding>> {
        let mut findings = Vec::new();
        let mut stored: Option<BTreeMap<String, u64>> = None;
        let mut hashed: HashMap<String, String> = HashMap::new();
        for entry in &part.backups {
            let Ok(manifest) = &entry.manifest else {
                continue;
            };
            let finding = |problem: String| Finding {
                database: database.to_owned(),
                backup_id: entry.backup_id.to_string(),
                problem,
            };
            let list = match chunks::load_chunk_list(&*self.sink, manifest).await {
                Ok(Some(list)) => list,
                Ok(None) => continue,
                Err(e) if e.about_backup() => {
                    // A list missing or damaged is a finding of the backup's objects
                    // already (the list is one of them): named once.
                    let key = manifest.chunks.as_ref().map(|c| c.list.key.as_str());
                    let named = found.iter().any(|f| {
                        f.backup_id == entry.backup_id.as_str()
                            && key.is_some_and(|k| f.problem.contains(k))
                    });
                    if !named {
                        findings.push(finding(e.message().to_owned()));
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let stored = match &mut stored {
                Some(stored) => &*stored,
                None => stored.insert(chunks::stored_chunks(&*self.sink, database).await?),
            };
            let mut problems = Vec::new();
            for (key, chunk) in list.chunks() {
                let problem = match chunks::stored_fault(stored, &key, chunk) {
                    Some(fault) => Some(format!("chunk {key} {fault}")),
                    None if self.read_data => {
                        let sha = match hashed.get(&key) {
                            Some(sha) => sha.clone(),
                            None => {
                                let (sha, bytes) = self.hash(&key).await?;
                                outcome.bytes_read += bytes;
                                hashed.insert(key.clone(), sha.clone());
                                sha
                            }
                        };
                        (sha != chunk.stored_sha256).then(|| {
                            format!(
                                "chunk {key} has sha256 {sha}, the chunk list says {}",
                                chunk.stored_sha256
                            )
                        })
                    }
                    None => None,
                };
                if let Some(problem) = problem {
                    problems.push((key, problem));
                }
            }
            if problems.is_empty() {
                continue;
            }
            // Named one by one up to a point: a bucket emptied of chunks is one finding
            // a backup, not a million.
            let users = list.users();
            for (key, problem) in problems.iter().take(CHUNK_FINDINGS_NAMED) {
                let files = users.get(key).map(|f| f.join(", ")).unwrap_or_default();
                findings.push(finding(format!("{problem} (used by {files})")));
            }
            if problems.len() > CHUNK_FINDINGS_NAMED {
                findings.push(finding(format!(
                    "and {} more of its chunks missing or damaged",
                    problems.len() - CHUNK_FINDINGS_NAMED
                )));
            }
        }
        Ok(findings)
    }

    async fn hash(&self, key: &str) -> Result<(String, u64)> {
        let mut stream = self.sink.get(key).await?;
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        while let Some(chunk) = stream.try_next().await? {
            bytes += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok((hex::encode(hasher.finalize()), bytes))
    }
}

/// The chain of one database: each link names a manifest that is there with the
/// recorded bytes, or a tombstone that recorded them; one head.
fn chain_findings(database: &str, part: &DatabaseInventory) -> Vec<Finding> {
    let finding = |backup_id: &str, problem: String| Finding {
        database: database.to_owned(),
        backup_id: backup_id.to_owned(),
        problem,
    };
    let mut out = Vec::new();
    for entry in &part.backups {
        let manifest = match &entry.manifest {
            Ok(m) => m,
            Err(damage) => {
                out.push(finding(&entry.backup_id, damage.clone()));
                continue;
            }
        };
        let Some(previous) = &manifest.previous else {
            continue;
        };
        let there = part
            .backups
            .iter()
            .find(|b| b.backup_id == previous.backup_id);
        match (there, part.tombstones.get(previous.backup_id.as_str())) {
            // An untrusted predecessor is its own finding.
            (Some(prev), _) if prev.manifest.is_err() => {}
            (Some(prev), _) if prev.manifest_sha256 != previous.manifest_sha256 => {
                out.push(finding(
                    &previous.backup_id,
                    format!(
                        "manifest edited after {} recorded it: sha256 {} recorded, {} now",
                        entry.backup_id, previous.manifest_sha256, prev.manifest_sha256
                    ),
                ));
            }
            (Some(_), _) => {}
            (None, Some(t)) if t.manifest_sha256 != previous.manifest_sha256 => {
                out.push(finding(
                    &previous.backup_id,
                    format!(
                        "pruned, but its tombstone records sha256 {} where {} recorded {}",
                        t.manifest_sha256, entry.backup_id, previous.manifest_sha256
                    ),
                ));
            }
            (None, Some(_)) => {}
            (None, None) => out.push(finding(
                &previous.backup_id,
                format!(
                    "manifest deleted, not by prune (no tombstone): {} links to it",
                    entry.backup_id
                ),
            )),
        }
    }
    // A tombstone keeps its pruned manifest's link: the manifest it names must be
    // as that one recorded it.
    for t in part.tombstones.values() {
        let Some(previous) = &t.previous else {
            continue;
        };
        if let Some(prev) = part
            .backups
            .iter()
            .find(|b| b.backup_id == previous.backup_id)
            && prev.manifest.is_ok()
            && prev.manifest_sha256 != previous.manifest_sha256
        {
            out.push(finding(
                &previous.backup_id,
                format!(
                    "manifest edited after {} (since pruned) recorded it: sha256 {} recorded, {} now",
                    t.backup_id, previous.manifest_sha256, prev.manifest_sha256
                ),
            ));
        }
    }
    let linked = part.linked();
    let heads: Vec<&str> = part
        .backups
        .iter()
        .filter(|b| b.manifest.is_ok())
        .map(|b| b.backup_id.as_str())
        .filter(|id| !linked.contains(id))
        .collect();
    if heads.len() > 1 {
        // Commits are serialised, so the chain is one line: every head but the newest
        // lost the manifest committed after it.
        for head in &heads[..heads.len() - 1] {
            out.push(finding(
                head,
                format!(
                    "no manifest links to it while {} heads the chain: the manifest committed after it was deleted",
                    heads[heads.len() - 1]
                ),
            ));
        }
    }
    out
}

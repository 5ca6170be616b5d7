//! The manifest chain around one backup: its link to the previous manifest, and the
//! next manifest's link to it, each by sha256 of the stored bytes, so an edited or
//! deleted manifest is seen from its neighbours.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::catalog::{self, MANIFEST_LIMIT, Manifest, PreviousManifest};
use crate::codec::sha256_hex;
use crate::error::{ErrorKind, Result};
use crate::sink::SinkExt;
use crate::verify::{Check, Restored, Verifier};

/// `manifest:previous` (the recorded predecessor is there, unchanged) and
/// `manifest:next` (whichever manifest links to this one recorded its current bytes;
/// if none does and this is not the chain's only head, the manifest after it was
/// deleted).
///
/// Clones share what they read: every other manifest's link is read once per
/// instance, so verifying all n backups of a database reads n manifests, not n².
/// (An edit made to an already read manifest while one instance is in use shows in
/// the next run.)
#[derive(Clone, Debug, Default)]
pub struct ManifestChain {
    links: Arc<Mutex<HashMap<String, Option<Option<PreviousManifest>>>>>,
}

impl ManifestChain {
    /// The link a manifest records (`Some(None)`: none, or unreadable; `None`: the
    /// manifest is not trusted, so it is no part of the chain), read once.
    async fn link_of(
        &self,
        r: &Restored<'_>,
        key: &str,
    ) -> Result<Option<Option<PreviousManifest>>> {
        if let Some(known) = self.links.lock().ok().and_then(|m| m.get(key).cloned()) {
            return Ok(known);
        }
        // A damaged manifest gets its own failed check when it is verified; one no
        // trusted key signed is not a backup, and neither a successor nor a head.
        let link = match r.sink.get_bytes(key, MANIFEST_LIMIT).await {
            Ok(bytes) => Some(
                serde_json::from_slice::<Manifest>(&bytes)
                    .ok()
                    .and_then(|m| m.previous),
            ),
            Err(e) if e.kind() == ErrorKind::Integrity => None,
            Err(e) => return Err(e),
        };
        if let Ok(mut m) = self.links.lock() {
            m.insert(key.to_owned(), link.clone());
        }
        Ok(link)
    }
}

#[async_trait]
impl Verifier for ManifestChain {
    fn name(&self) -> &str {
        "manifest"
    }

    async fn verify(&self, r: &Restored<'_>) -> Result<Vec<Check>> {
        let manifest = r.manifest;
        let mut checks: Vec<Check> = previous_check(r).await?.into_iter().collect();
        let all = catalog::list_backups(r.sink, Some(&manifest.database)).await?;
        // The successor is whichever manifest links to this one. Commits are serialised
        // by the commit lock, so the chain is one line with one head; a second head
        // means the manifest after one of them is gone.
        let mut successor: Option<(String, String)> = None;
        let mut linked = std::collections::BTreeSet::new();
        linked.extend(manifest.previous.as_ref().map(|p| p.backup_id.to_string()));
        // A pruned successor's link lives on in its tombstone.
        for t in catalog::tombstones(r.sink, &manifest.database).await? {
            if let Some(p) = t.previous {
                if p.backup_id == manifest.backup_id {
                    successor = Some((
                        format!("{} (pruned)", t.backup_id),
                        p.manifest_sha256.clone(),
                    ));
                }
                linked.insert(p.backup_id.to_string());
            }
        }
        let mut others = Vec::new();
        for other in all.iter().filter(|b| b.backup_id != manifest.backup_id) {
            let Some(link) = self.link_of(r, &other.manifest_key()).await? else {
                continue;
            };
            others.push(other.backup_id.to_string());
            if let Some(p) = link {
                if p.backup_id == manifest.backup_id {
                    successor = Some((other.backup_id.to_string(), p.manifest_sha256.clone()));
                }
                linked.insert(p.backup_id.to_string());
            }
        }
        let other_head = others.into_iter().rev().find(|id| !linked.contains(id));
        let sha = r.manifest_sha256;
        match (successor, other_head) {
            (Some((next, recorded)), _) => checks.push(Check::judge(
                "manifest:next",
                recorded == sha,
                if recorded == sha {
                    format!("{next} links to this manifest's sha256 {sha}")
                } else {
                    format!(
                        "this manifest was edited after {next} recorded it: sha256 {recorded} recorded, {sha} now"
                    )
                },
            )),
            (None, Some(head)) => checks.push(Check::fail(
                "manifest:next",
                format!(
                    "no manifest links to this backup while {head} heads the chain too: the manifest committed after this one was deleted"
                ),
            )),
            (None, None) => {}
        }
        Ok(checks)
    }
}

/// `None` for a backup without a predecessor: there is nothing to check on that side
/// (a manifest whose link was removed no longer matches the sha256 its successor
/// recorded, and `manifest:next` of its predecessor sees that).
async fn previous_check(r: &Restored<'_>) -> Result<Option<Check>> {
    let manifest = r.manifest;
    let Some(prev) = &manifest.previous else {
        return Ok(None);
    };
    let key = catalog::manifest_key(&manifest.database, &prev.backup_id);
    Ok(Some(match r.sink.get_bytes(&key, MANIFEST_LIMIT).await {
        Ok(bytes) if sha256_hex(&bytes) == prev.manifest_sha256 => Check::pass(
            "manifest:previous",
            format!(
                "{} unchanged (sha256 {})",
                prev.backup_id, prev.manifest_sha256
            ),
        ),
        Ok(bytes) => Check::fail(
            "manifest:previous",
            format!(
                "manifest of {} was edited: sha256 {} recorded, {} found",
                prev.backup_id,
                prev.manifest_sha256,
                sha256_hex(&bytes)
            ),
        ),
        Err(e) if e.kind() == ErrorKind::Integrity => Check::fail(
            "manifest:previous",
            format!("the previous backup's manifest is not trusted: {e}"),
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            match catalog::tombstone(r.sink, &manifest.database, &prev.backup_id).await? {
                Some(t) => Check::judge(
                    "manifest:previous",
                    t.manifest_sha256 == prev.manifest_sha256,
                    format!(
                        "{} was pruned at {} ({}); its tombstone records sha256 {}, this manifest {}",
                        prev.backup_id,
                        t.pruned_at,
                        t.reason,
                        t.manifest_sha256,
                        prev.manifest_sha256
                    ),
                ),
                None => Check::fail(
                    "manifest:previous",
                    format!(
                        "manifest of the previous backup {} is missing, and no tombstone says it was pruned",
                        prev.backup_id
                    ),
                ),
            }
        }
        Err(e) => return Err(e),
    }))
}

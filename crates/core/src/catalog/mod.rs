//! The catalog: what a sink holds, read from its manifests. A backup exists once its
//! manifest is committed; the manifests of one database form a hash chain.

pub mod chunks;
mod claim;
pub mod cluster;
pub mod files;
mod id;
mod index;
mod inventory;
pub mod layout;
mod lock;
mod manifest;
mod records;
pub mod trust;

pub use claim::{Claim, MAX_CLAIM_TTL, MIN_CLAIM_TTL, Taken, VerifyClaim, check_claim_ttl};
pub use id::BackupId;
pub use index::INDEX_LIMIT;
pub use inventory::{CatalogEntry, DatabaseInventory, Finding, Inventory, newest_verification};
pub use layout::{MANIFEST_NAME, TOMBSTONE_NAME};
pub use lock::{CommitLock, LOCK_TTL, LOCK_WAIT};
pub use manifest::{
    EncryptionInfo, MANIFEST_LIMIT, MANIFEST_VERSION, Manifest, ObjectInfo, PreviousManifest,
    SourceInfo, ToolInfo, check_database_name, manifest_key, new_backup_id,
};
pub use records::{
    BackupLease, CLOCK_SKEW, Lease, MAX_LEASE_TTL, Pin, TableProof, Tombstone, Verification,
    id_started_at, leased_now, pin, pinned_now, tombstone, unpin,
};
pub use trust::{Keyring, SignedSink, SigningKey, TrustedKey};

use crate::codec::sha256_hex;
use crate::error::{Error, Result};
use crate::sink::{Sink, SinkExt};

/// A backup found in a sink: a committed manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupRef {
    /// The database.
    pub database: String,
    /// The backup id.
    pub backup_id: crate::catalog::BackupId,
}

impl BackupRef {
    /// The backup a manifest describes.
    pub fn of(manifest: &Manifest) -> Self {
        Self {
            database: manifest.database.clone(),
            backup_id: manifest.backup_id.clone(),
        }
    }

    /// The manifest's key.
    pub fn manifest_key(&self) -> String {
        manifest_key(&self.database, &self.backup_id)
    }
}

/// Every committed backup in the sink, of one database or all, oldest first.
pub async fn list_backups(sink: &dyn Sink, database: Option<&str>) -> Result<Vec<BackupRef>> {
    let prefix = match database {
        Some(db) => {
            check_database_name(db)?;
            layout::database(db)
        }
        None => String::new(),
    };
    let mut found: Vec<BackupRef> = sink
        .list(&prefix)
        .await?
        .into_iter()
        .filter_map(|meta| {
            let mut parts = meta.key.split('/');
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(db), Some(id), Some(_), None)
                    if layout::Kind::of(&meta.key) == Some(layout::Kind::Manifest) =>
                {
                    // A key pgproof could not have written names no backup.
                    Some(BackupRef {
                        database: db.to_owned(),
                        backup_id: BackupId::parse(id).ok()?,
                    })
                }
                _ => None,
            }
        })
        .collect();
    found.sort_by(|a, b| (&a.backup_id, &a.database).cmp(&(&b.backup_id, &b.database)));
    Ok(found)
}

/// Reads a manifest and the sha256 of its stored bytes.
pub async fn load_manifest(sink: &dyn Sink, backup: &BackupRef) -> Result<(Manifest, String)> {
    let key = backup.manifest_key();
    let bytes = sink.get_bytes(&key, MANIFEST_LIMIT).await?;
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
        Error::integrity(format!(
            "manifest {key} is not a valid pgproof manifest ({e}); it was damaged or edited"
        ))
    })?;
    manifest.check_identity(&backup.database, &backup.backup_id)?;
    Ok((manifest, sha256_hex(&bytes)))
}

/// Resolves `latest` or a backup id for `database` (or, for an id, any database).
pub async fn resolve(sink: &dyn Sink, which: &str, database: Option<&str>) -> Result<BackupRef> {
    let all = list_backups(sink, database).await?;
    if which == "latest" {
        let mut databases: Vec<&str> = all.iter().map(|b| b.database.as_str()).collect();
        databases.sort_unstable();
        databases.dedup();
        if databases.len() > 1 {
            return Err(Error::config(format!(
                "`latest` is ambiguous: {} holds backups of {}; name the database",
                sink.describe(),
                databases.join(", ")
            )));
        }
        return all.last().cloned().ok_or_else(|| {
            Error::not_found(format!(
                "no backup{} in {}; take a backup first",
                database
                    .map(|db| format!(" of database {db}"))
                    .unwrap_or_default(),
                sink.describe()
            ))
        });
    }
    let mut matches = all.into_iter().filter(|b| b.backup_id == which);
    match (matches.next(), matches.next()) {
        (Some(found), None) => Ok(found),
        (Some(_), Some(_)) => Err(Error::config(format!(
            "backup id {which} exists for several databases; name the database"
        ))),
        (None, _) => Err(Error::not_found(format!(
            "no backup {which} in {}; list the backups there to find its id",
            sink.describe()
        ))),
    }
}

/// The predecessors the tombstones of `database` link to.
pub async fn tombstone_links(sink: &dyn Sink, database: &str) -> Result<Vec<String>> {
    Ok(tombstones(sink, database)
        .await?
        .into_iter()
        .filter_map(|t| t.previous.map(|p| p.backup_id.to_string()))
        .collect())
}

/// The settings a manifest keeps sealed (see [`Manifest::sealed`]).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Sealed {
    settings: Vec<String>,
    role_settings: std::collections::BTreeMap<String, Vec<String>>,
    role_global_settings: std::collections::BTreeMap<String, Vec<String>>,
}

/// Moves the settings values out of `manifest` into an age-encrypted object under
/// `dir` (`<db>/<id>`), recorded in [`Manifest::sealed`]. Nothing to seal, nothing
/// stored.
pub async fn seal(
    manifest: &mut Manifest,
    sink: &dyn Sink,
    dir: &str,
    recipients: &crate::codec::Recipients,
) -> Result<()> {
    let mut sealed = Sealed::default();
    if let Some(p) = &mut manifest.properties {
        sealed.settings = std::mem::take(&mut p.settings);
        sealed.role_settings = std::mem::take(&mut p.role_settings);
    }
    for role in &mut manifest.roles {
        if !role.settings.is_empty() {
            sealed
                .role_global_settings
                .insert(role.name.clone(), std::mem::take(&mut role.settings));
        }
    }
    if sealed.settings.is_empty()
        && sealed.role_settings.is_empty()
        && sealed.role_global_settings.is_empty()
    {
        return Ok(());
    }
    let json = serde_json::to_vec(&sealed)
        .map_err(|e| Error::tool(format!("cannot serialize the settings: {e}")))?;
    let chain = crate::codec::CodecChain::new(None, true);
    let (stored, tallies) = chain
        .encode(&json[..], Vec::new(), Some(recipients), None)
        .map_err(|e| e.into_error())?;
    let key = layout::sealed_settings(dir);
    sink.put_bytes(&key, stored.into()).await?;
    manifest.sealed = Some(ObjectInfo::new(key, tallies));
    Ok(())
}

/// Puts the sealed settings back into `manifest` (a no-op for a manifest with none).
pub async fn unseal(
    manifest: &mut Manifest,
    sink: &dyn Sink,
    identities: Option<&crate::codec::Identities>,
) -> Result<()> {
    let Some(object) = &manifest.sealed else {
        return Ok(());
    };
    let stored = sink
        .get_bytes(&object.key, MANIFEST_LIMIT)
        .await
        .map_err(|e| {
            if e.kind() == crate::error::ErrorKind::NotFound {
                Error::integrity(format!(
                    "the sealed settings {} that the manifest of {} lists are missing",
                    object.key, manifest.backup_id
                ))
            } else {
                e
            }
        })?;
    let chain = crate::codec::CodecChain::from_names(&["age".to_owned()])?;
    let (json, tallies) = chain
        .decode(&stored[..], Vec::new(), identities, None)
        .map_err(|e| e.into_error())?;
    object.check(&tallies)?;
    let sealed: Sealed = serde_json::from_slice(&json).map_err(|e| {
        Error::integrity(format!(
            "the sealed settings of {} are not readable: {e}",
            manifest.backup_id
        ))
    })?;
    if let Some(p) = &mut manifest.properties {
        p.settings = sealed.settings;
        p.role_settings = sealed.role_settings;
    }
    for role in &mut manifest.roles {
        if let Some(settings) = sealed.role_global_settings.get(&role.name) {
            role.settings = settings.clone();
        }
    }
    Ok(())
}

/// Every trusted tombstone of `database`.
pub async fn tombstones(sink: &dyn Sink, database: &str) -> Result<Vec<Tombstone>> {
    let mut found = Vec::new();
    for meta in sink.list(&layout::database(database)).await? {
        let mut parts = meta.key.split('/');
        if let (Some(_), Some(id), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
            && layout::Kind::of(&meta.key) == Some(layout::Kind::Tombstone)
            && let Some(t) = tombstone(sink, database, id).await?
        {
            found.push(t);
        }
    }
    Ok(found)
}

/// The head of `database`'s manifest chain, as the link for the next manifest: the
/// committed manifest no other one links to. Ids sort by start time, not by commit
/// time, so the newest id is not the head when backups overlap; with several heads
/// (left by versions that linked without a lock) the newest id among them wins.
/// The head's bytes are hashed as stored, not trusted: a damaged predecessor must not
/// stop new backups, and its hash is what makes the damage visible later. Run it
/// under the database's [`CommitLock`].
pub async fn previous_link(sink: &dyn Sink, database: &str) -> Result<Option<PreviousManifest>> {
    let all = list_backups(sink, Some(database)).await?;
    let mut stored = Vec::with_capacity(all.len());
    // A pruned manifest's link lives on in its tombstone: without it, the backup
    // before a pruned one would look like a head.
    let mut linked: std::collections::BTreeSet<String> =
        tombstone_links(sink, database).await?.into_iter().collect();
    for backup in all {
        // A manifest no trusted key signed is no backup: a forger must not become the
        // head the next backup links to.
        let bytes = match sink.get_bytes(&backup.manifest_key(), MANIFEST_LIMIT).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == crate::error::ErrorKind::Integrity => {
                tracing::warn!(manifest = %backup.manifest_key(), problem = %e, "not trusted; not linked to");
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Ok(manifest) = serde_json::from_slice::<Manifest>(&bytes)
            && let Some(previous) = manifest.previous
        {
            linked.insert(previous.backup_id.to_string());
        }
        stored.push((backup.backup_id, bytes));
    }
    Ok(stored
        .into_iter()
        .rev()
        .find(|(id, _): &(BackupId, _)| !linked.contains(id.as_str()))
        .map(|(backup_id, bytes)| PreviousManifest {
            backup_id,
            manifest_sha256: sha256_hex(&bytes),
        }))
}

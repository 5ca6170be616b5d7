//! Cluster runs: what a backup run over every database of a server (`databases =
//! "all"`) stores besides each database's backup, so the whole server can be
//! recreated from one sink.
//!
//! ```text
//! .cluster/<run>/globals.json[.age]   the cluster's globals, through the codec chain (age
//!                                     when the run encrypts): roles, memberships, settings,
//!                                     tablespaces, and password verifiers when asked
//! .cluster/<run>/cluster.json         the signed record that ties the run together: the
//!                                     globals object's size and sha256s, and the backup id and
//!                                     manifest sha256 of each database's backup
//! ```
//!
//! The record is a catalog object, signed like a manifest (namespace: its key); the
//! globals object is checked against the record's sizes and hashes before a byte of it
//! is parsed, as a dump is against its manifest. What the globals hold is opaque here
//! (JSON bytes): the operations give them their meaning.

use bytes::Bytes;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::catalog::check_database_name;
use crate::catalog::layout::{self, Kind};
use crate::catalog::{BackupId, EncryptionInfo, MANIFEST_LIMIT, ObjectInfo, ToolInfo};
use crate::codec::{CodecChain, Identities, Recipients};
use crate::error::{Error, ErrorKind, Result};
use crate::sink::{Sink, SinkExt};

/// The largest globals object a reader accepts (thousands of roles fit many times).
pub const GLOBALS_LIMIT: usize = 64 << 20;

/// Version of the cluster run record written by this crate.
pub const CLUSTER_RUN_VERSION: u32 = 1;

/// One run over a whole server: its globals and the backup of each database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRun {
    /// Layout version ([`CLUSTER_RUN_VERSION`]).
    pub version: u32,
    /// The run's id: when it started, like a backup id.
    pub run_id: BackupId,
    /// The program that wrote it.
    pub tool: ToolInfo,
    /// The source server's `server_version`.
    pub server_version: String,
    /// When the run started.
    pub started_at: Timestamp,
    /// When the record was written (every backup of the run committed or failed).
    pub finished_at: Timestamp,
    /// The globals object.
    pub globals: ObjectInfo,
    /// Its codec chain (`["age"]`, or none when the run does not encrypt).
    pub codecs: Vec<String>,
    /// Encryption, if any; public keys only.
    pub encryption: Option<EncryptionInfo>,
    /// Whether the globals hold the roles' password verifiers.
    pub passwords: bool,
    /// Each database's backup, by name.
    pub databases: Vec<ClusterDatabase>,
    /// Databases whose backup failed in this run: the run cannot recreate them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
}

/// One database's backup in a cluster run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterDatabase {
    /// The database.
    pub database: String,
    /// Its backup.
    pub backup_id: BackupId,
    /// sha256 of that backup's manifest as committed: the run vouches for exactly it.
    pub manifest_sha256: String,
}

impl ClusterRun {
    /// The record's key.
    pub fn key(&self) -> String {
        layout::cluster_run(&self.run_id)
    }

    /// Whether every database of the run was backed up.
    pub fn complete(&self) -> bool {
        self.failed.is_empty()
    }

    /// Checks that the record read from `run_id`'s key describes that run and names
    /// only its own globals object and databases pgproof could have stored.
    pub fn check_identity(&self, run_id: &str) -> Result<()> {
        let key = layout::cluster_run(run_id);
        let refuse = |why: String| {
            Err(Error::integrity(format!("cluster run {key} {why}; not trusted")).with_object(&key))
        };
        if self.run_id != run_id {
            return refuse(format!(
                "describes run {}: it was moved or edited",
                self.run_id
            ));
        }
        if self.version > CLUSTER_RUN_VERSION {
            return Err(Error::config(format!(
                "cluster run {key} has layout version {}, newer than this pgproof knows ({CLUSTER_RUN_VERSION}); use the pgproof version that wrote it",
                self.version
            )));
        }
        let dir = format!("{}/", layout::cluster_dir(run_id));
        if !self.globals.key.starts_with(&dir)
            || crate::sink::validate_key(&self.globals.key).is_err()
            || Kind::of(&self.globals.key).is_some()
        {
            return refuse(format!(
                "names the globals object {:?}, outside its own run's {dir}",
                self.globals.key
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for db in &self.databases {
            if check_database_name(&db.database).is_err() || !seen.insert(db.database.as_str()) {
                return refuse(format!(
                    "names the database {:?}, which is not one pgproof stores, or twice",
                    crate::error::printable(&db.database)
                ));
            }
        }
        Ok(())
    }
}

/// Stores `globals` (JSON) for run `run_id` through the codec chain (age when
/// `recipients` are given); returns the object, the codec names and the encryption.
pub async fn store_globals(
    sink: &dyn Sink,
    run_id: &str,
    globals: &[u8],
    recipients: Option<&Recipients>,
) -> Result<(ObjectInfo, Vec<String>, Option<EncryptionInfo>)> {
    let chain = CodecChain::new(None, recipients.is_some());
    let (stored, tallies) = chain
        .encode(globals, Vec::new(), recipients, None)
        .map_err(|e| e.into_error())?;
    let key = layout::cluster_globals(run_id, &chain.suffix());
    sink.put_bytes(&key, Bytes::from(stored)).await?;
    let encryption = recipients.map(|r| EncryptionInfo {
        scheme: "age-x25519".into(),
        recipients: r.public_keys(),
    });
    Ok((ObjectInfo::new(key, tallies), chain.names(), encryption))
}

/// Writes the run's record (signed on its way by a [`SignedSink`](super::SignedSink)).
pub async fn write_run(sink: &dyn Sink, run: &ClusterRun) -> Result<()> {
    let mut body = serde_json::to_vec_pretty(run)
        .map_err(|e| Error::tool(format!("cannot serialize the cluster run: {e}")))?;
    body.push(b'\n');
    sink.put_bytes(&run.key(), Bytes::from(body)).await?;
    Ok(())
}

/// The ids of every cluster run whose record the sink lists, oldest first (not yet
/// read, so not yet trusted).
pub async fn list_runs(sink: &dyn Sink) -> Result<Vec<BackupId>> {
    let mut ids: Vec<BackupId> = sink
        .list(&layout::cluster_runs())
        .await?
        .into_iter()
        .filter(|meta| Kind::of(&meta.key) == Some(Kind::ClusterRun))
        .filter_map(|meta| BackupId::parse(meta.key.split('/').nth(1)?).ok())
        .collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Reads and checks the record of run `run_id`: signed by a trusted key for its key
/// (the sink must be a [`SignedSink`](super::SignedSink)), readable, about that run.
pub async fn load_run(sink: &dyn Sink, run_id: &str) -> Result<ClusterRun> {
    let key = layout::cluster_run(run_id);
    let bytes = sink.get_bytes(&key, MANIFEST_LIMIT).await.map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            Error::not_found(format!(
                "no cluster run {run_id} in {}; list the cluster runs there to find its id",
                sink.describe()
            ))
        } else {
            e
        }
    })?;
    let run: ClusterRun = serde_json::from_slice(&bytes).map_err(|e| {
        Error::integrity(format!(
            "cluster run {key} is not a valid pgproof cluster run ({e}); it was damaged or edited"
        ))
        .with_object(&key)
    })?;
    run.check_identity(run_id)?;
    Ok(run)
}

/// The run `which` names: an id, or `latest`, the newest run in which every
/// database was backed up. A record that is not trusted is never skipped over: it is
/// refused, naming it (someone wrote it who holds no trusted key).
pub async fn resolve_run(sink: &dyn Sink, which: &str) -> Result<ClusterRun> {
    if which != "latest" {
        let id = BackupId::parse(which).map_err(|e| {
            Error::config(format!(
                "{which:?} is not a cluster run id: {}",
                e.message()
            ))
        })?;
        return load_run(sink, &id).await;
    }
    let ids = list_runs(sink).await?;
    let mut incomplete = Vec::new();
    for id in ids.iter().rev() {
        let run = load_run(sink, id).await?;
        if run.complete() {
            return Ok(run);
        }
        incomplete.push(format!("{id} (failed: {})", run.failed.join(", ")));
    }
    Err(Error::not_found(if incomplete.is_empty() {
        format!(
            "no cluster run in {}; back up with source.databases = \"all\" first",
            sink.describe()
        )
    } else {
        format!(
            "no complete cluster run in {}: {}; fix the failing backups and run again",
            sink.describe(),
            incomplete.join("; ")
        )
    }))
}

/// Reads the run's globals object, decodes it and checks it against the record's
/// sizes and sha256s before returning a byte of it.
pub async fn fetch_globals(
    sink: &dyn Sink,
    run: &ClusterRun,
    identities: Option<&Identities>,
) -> Result<Vec<u8>> {
    let object = &run.globals;
    let stored = sink
        .get_bytes(&object.key, GLOBALS_LIMIT)
        .await
        .map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::integrity(format!(
                    "the globals object {} that cluster run {} lists is missing",
                    object.key, run.run_id
                ))
                .with_object(&object.key)
            } else {
                e
            }
        })?;
    // The stored bytes first: an object that is not the recorded one is never
    // decrypted or parsed.
    let found = crate::codec::sha256_hex(&stored);
    if stored.len() as u64 != object.stored_bytes || found != object.stored_sha256 {
        return Err(Error::integrity(format!(
            "the globals object {} does not match cluster run {}: {} bytes sha256 {found} found, {} bytes sha256 {} recorded; it was replaced or damaged",
            object.key,
            run.run_id,
            stored.len(),
            object.stored_bytes,
            object.stored_sha256
        ))
        .with_object(&object.key));
    }
    let chain = CodecChain::from_names(&run.codecs)?;
    if chain.encrypted() && identities.is_none() {
        return Err(Error::config(format!(
            "the globals of cluster run {} are encrypted: give the age identity",
            run.run_id
        ))
        .with_setting(crate::Setting::Identity));
    }
    let (json, tallies) = chain
        .decode(&stored[..], Vec::new(), identities, None)
        .map_err(|e| e.into_error())?;
    object.check(&tallies)?;
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str) -> ClusterRun {
        let now = Timestamp::now();
        ClusterRun {
            version: CLUSTER_RUN_VERSION,
            run_id: BackupId::parse(id).unwrap(),
            tool: ToolInfo::current(),
            server_version: "15".into(),
            started_at: now,
            finished_at: now,
            globals: ObjectInfo {
                key: layout::cluster_globals(id, ".age"),
                raw_bytes: 0,
                raw_sha256: String::new(),
                stored_bytes: 0,
                stored_sha256: String::new(),
                stored_chunks: Vec::new(),
            },
            codecs: vec!["age".into()],
            encryption: None,
            passwords: false,
            databases: vec![ClusterDatabase {
                database: "app".into(),
                backup_id: BackupId::parse("b1").unwrap(),
                manifest_sha256: String::new(),
            }],
            failed: Vec::new(),
        }
    }

    #[test]
    fn a_run_names_only_its_own_objects_and_databases_pgproof_stores() {
        assert!(run("r1").check_identity("r1").is_ok());
        assert!(run("r1").check_identity("r2").is_err());
        let mut stray = run("r1");
        stray.globals.key = layout::cluster_globals("r2", ".age");
        assert_eq!(
            stray.check_identity("r1").unwrap_err().kind(),
            ErrorKind::Integrity
        );
        let mut stray = run("r1");
        stray.globals.key = layout::cluster_run("r1");
        assert!(stray.check_identity("r1").is_err());
        for bad in ["../x", ".hidden", ""] {
            let mut r = run("r1");
            r.databases[0].database = bad.into();
            assert!(r.check_identity("r1").is_err(), "{bad}");
        }
        let mut twice = run("r1");
        twice.databases.push(twice.databases[0].clone());
        assert!(twice.check_identity("r1").is_err());
    }
}

//! Whole-cluster recovery: a backup run over every database of a server also stores
//! the server's globals (roles, memberships, settings, tablespaces) and a signed
//! record of the run ([`catalog::cluster`](crate::catalog::cluster));
//! [`ClusterRestore`] recreates the whole server from one such run on an empty
//! cluster and proves it: the globals, then every database, then each database's
//! checks and the globals read back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;

use crate::catalog::cluster::{
    self, CLUSTER_RUN_VERSION, ClusterDatabase, ClusterRun, fetch_globals, store_globals,
};
use crate::catalog::{
    self, BackupRef, EncryptionInfo, Manifest, ObjectInfo, ToolInfo, new_backup_id,
};
use crate::codec::{Identities, Recipients};
use crate::error::{Error, ErrorKind, Result, Setting};
use crate::evidence::database::normalize_settings;
use crate::ops::restore::{Restore, drop_restored};
use crate::ops::verify::Proof;
use crate::pg::admin::user_objects;
use crate::pg::globals::{
    self, Expectations, Globals, GlobalsDifferences, TargetState, read_globals,
};
use crate::pg::{ConnParams, ServerInfo, db_err};
use crate::scope::Scope;
use crate::sink::{Sink, SinkExt};
use crate::verify::{Check, standard_verifiers};

mod restore;
mod upkeep;

pub use restore::ClusterRestore;
pub(crate) use upkeep::{ClusterPrune, check_runs};

/// What a backup run over a whole server (`databases = "all"`) stores besides each
/// database's backup: the server's globals, read once at the start of the run.
/// Given to [`NightlyRun::cluster`](crate::ops::NightlyRun::cluster).
#[derive(Clone, Debug)]
pub struct ClusterCapture {
    server: ConnParams,
    recipients: Option<Recipients>,
    passwords: bool,
}

impl ClusterCapture {
    /// Reads the globals through `server` (any database of the server), stored
    /// unencrypted unless [`recipients`](Self::recipients) are given.
    pub fn new(server: ConnParams) -> Self {
        Self {
            server,
            recipients: None,
            passwords: false,
        }
    }

    /// Encrypts the globals to these recipients (as the dumps are).
    pub fn recipients(mut self, recipients: Option<Recipients>) -> Self {
        self.recipients = recipients;
        self
    }

    /// Also stores the roles' password verifiers (read from `pg_authid`, which needs a
    /// superuser); only ever into an encrypted object.
    pub fn passwords(mut self, passwords: bool) -> Self {
        self.passwords = passwords;
        self
    }

    /// Reads the globals and stores them as the first object of a new run.
    pub(crate) async fn store(&self, sink: &dyn Sink) -> Result<StoredGlobals> {
        if self.passwords && self.recipients.is_none() {
            return Err(Error::config(
                "the roles' password verifiers are stored only encrypted, and this run does not encrypt: give recipients, or leave the passwords out",
            )
            .with_setting(Setting::Recipients));
        }
        let started_at = Timestamp::now();
        let run_id = new_backup_id(started_at);
        let client = self.server.connect().await?;
        let server = ServerInfo::query(&client).await?;
        let globals = read_globals(&client, self.passwords).await?;
        let json = zeroize::Zeroizing::new(
            serde_json::to_vec(&globals)
                .map_err(|e| Error::tool(format!("cannot serialize the globals: {e}")))?,
        );
        let (object, codecs, encryption) =
            store_globals(sink, &run_id, &json, self.recipients.as_ref()).await?;
        tracing::info!(run = %run_id, roles = globals.roles.len(), tablespaces = globals.tablespaces.len(), "stored the cluster's globals");
        Ok(StoredGlobals {
            run_id,
            started_at,
            server_version: server.version,
            object,
            codecs,
            encryption,
            passwords: self.passwords,
        })
    }
}

/// A run's globals, stored; the record follows once the backups are done.
pub(crate) struct StoredGlobals {
    run_id: catalog::BackupId,
    started_at: Timestamp,
    server_version: String,
    object: ObjectInfo,
    codecs: Vec<String>,
    encryption: Option<EncryptionInfo>,
    passwords: bool,
}

impl StoredGlobals {
    /// Writes the run's record: the globals object and each committed backup with
    /// its manifest's sha256, and the databases that failed.
    pub(crate) async fn record(
        self,
        sink: &dyn Sink,
        committed: &[Manifest],
        failed: &[String],
    ) -> Result<ClusterRun> {
        let mut databases = Vec::with_capacity(committed.len());
        for manifest in committed {
            let (_, manifest_sha256) =
                catalog::load_manifest(sink, &BackupRef::of(manifest)).await?;
            databases.push(ClusterDatabase {
                database: manifest.database.clone(),
                backup_id: manifest.backup_id.clone(),
                manifest_sha256,
            });
        }
        let run = ClusterRun {
            version: CLUSTER_RUN_VERSION,
            run_id: self.run_id,
            tool: ToolInfo::current(),
            server_version: self.server_version,
            started_at: self.started_at,
            finished_at: Timestamp::now(),
            globals: self.object,
            codecs: self.codecs,
            encryption: self.encryption,
            passwords: self.passwords,
            databases,
            failed: failed.to_vec(),
        };
        cluster::write_run(sink, &run).await?;
        Ok(run)
    }
}

/// One database of a cluster restore: restored, then proven.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DatabaseProof {
    /// The database.
    pub database: String,
    /// The backup restored into it.
    pub backup_id: catalog::BackupId,
    /// How long its restore took, in milliseconds.
    pub restore_ms: u64,
    /// Every check of the standard verifiers (fingerprints, sequences, properties…).
    pub checks: Vec<Check>,
    /// Every check passed.
    pub passed: bool,
}

/// What a cluster restore did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClusterRestoreOutcome {
    /// The run restored.
    pub run: ClusterRun,
    /// Where (no credentials).
    pub target: String,
    /// Roles created.
    pub roles_created: Vec<String>,
    /// Roles that were there and kept as found (the target's bootstrap superuser, the
    /// role connected).
    pub roles_kept: Vec<String>,
    /// Tablespaces created, with their directories.
    pub tablespaces: BTreeMap<String, String>,
    /// Each database, in the order restored.
    pub databases: Vec<DatabaseProof>,
    /// The globals read back and compared with the recorded ones.
    pub globals: Vec<Check>,
    /// Every check passed.
    pub passed: bool,
    /// Wall time of the whole restore, in milliseconds.
    pub duration_ms: u64,
}

impl ClusterRestoreOutcome {
    /// `Ok` when every check passed; otherwise an
    /// [`Integrity`](crate::ErrorKind::Integrity) error naming what failed.
    pub fn verdict(&self) -> Result<()> {
        let mut failed: Vec<String> = self
            .databases
            .iter()
            .filter(|d| !d.passed)
            .map(|d| format!("database {}", d.database))
            .collect();
        failed.extend(
            self.globals
                .iter()
                .filter(|c| !c.passed)
                .map(|c| c.name.clone()),
        );
        if failed.is_empty() {
            return Ok(());
        }
        Err(Error::integrity(format!(
            "cluster run {} was restored but not proven: {} failed their checks",
            self.run.run_id,
            failed.join(", ")
        )))
    }
}

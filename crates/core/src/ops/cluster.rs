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

/// A restore of a whole cluster run onto an empty server, configured by its builder
/// methods and done by [`run`](ClusterRestore::run).
///
/// The run's record must be signed by a trusted key (the sink must be a
/// [`SignedSink`](crate::catalog::SignedSink)), its globals object must match the
/// record's sha256 and each database's manifest the sha256 the record names, all
/// before anything is created. The target must be an empty cluster as far as the run
/// goes: none of the run's roles (but its bootstrap superuser and the role
/// connected, which are kept as found), tablespaces or non-empty databases. The
/// globals are created, then each database is restored; if anything fails on the way,
/// what this restore created is dropped again and the error says what had been done.
/// Then each database is proven with the standard verifiers, and the globals are read
/// back and compared: failed checks are in the outcome, not an `Err`.
#[must_use = "a ClusterRestore does nothing until run"]
pub struct ClusterRestore {
    scope: Scope,
    sink: Arc<dyn Sink>,
    which: String,
    target: ConnParams,
    identities: Option<Identities>,
    tablespace_dirs: BTreeMap<String, String>,
    pg_bin_dir: Option<PathBuf>,
}

impl ClusterRestore {
    /// Restores the cluster run `which` (an id, or `latest`: the newest complete one)
    /// from `sink` onto the server `target` points at (a superuser's connection; its
    /// database is used only to reach the server).
    pub fn new(sink: Arc<dyn Sink>, which: &str, target: ConnParams) -> Self {
        Self {
            scope: Scope::current_or_new(),
            sink,
            which: which.to_owned(),
            target,
            identities: None,
            tablespace_dirs: BTreeMap::new(),
            pg_bin_dir: None,
        }
    }

    /// The age identities that open the run's globals and backups.
    pub fn identities(mut self, identities: Option<Identities>) -> Self {
        self.identities = identities;
        self
    }

    /// Creates the tablespace `name` in `dir` instead of its recorded location
    /// (which is often not usable on another host).
    pub fn tablespace_dir(mut self, name: &str, dir: &str) -> Self {
        self.tablespace_dirs.insert(name.to_owned(), dir.to_owned());
        self
    }

    /// The directory of PostgreSQL programs.
    pub fn pg_bin_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.pg_bin_dir = dir;
        self
    }

    /// The scope this operation belongs to (see [`Restore::scope`]).
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Restores and proves.
    pub async fn run(self) -> Result<ClusterRestoreOutcome> {
        let scope = self.scope.clone();
        scope.run(self.execute()).await
    }

    async fn execute(self) -> Result<ClusterRestoreOutcome> {
        let clock = Instant::now();
        // Everything read from the sink is checked before the target is touched.
        let run = cluster::resolve_run(&*self.sink, &self.which).await?;
        if !run.complete() {
            return Err(Error::config(format!(
                "cluster run {} is incomplete: the backups of {} failed in it, so it cannot recreate the server; restore an earlier run",
                run.run_id,
                run.failed.join(", ")
            )));
        }
        let backups = self.load_backups(&run).await?;
        let globals = self.load_globals(&run).await?;
        for name in self.tablespace_dirs.keys() {
            if !globals.tablespaces.iter().any(|t| &t.name == name) {
                let recorded: Vec<&str> = globals
                    .tablespaces
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect();
                return Err(Error::config(format!(
                    "a directory is given for tablespace {name:?}, which cluster run {} does not have (it has: {})",
                    run.run_id,
                    if recorded.is_empty() { "none".to_owned() } else { recorded.join(", ") }
                ))
                .with_setting(Setting::TablespaceDir));
            }
        }

        // Connected through template1: the run's databases (`postgres` among them)
        // may be replaced while this session lives.
        let admin_params = self.target.with_dbname("template1");
        let client = admin_params.connect().await?;
        let state = TargetState::read(&client).await?;
        let existing = self.check_empty(&client, &state, &globals, &run).await?;
        let kept = state.kept();
        let preexisting: BTreeSet<String> = state
            .roles
            .iter()
            .filter(|r| !kept.contains(*r) && globals.role(r).is_none())
            .cloned()
            .collect();

        let created = globals::apply_globals(&client, &globals, &kept, &self.tablespace_dirs)
            .await
            .map_err(|e| {
                Error::new(
                    e.kind(),
                    format!(
                        "creating the globals of cluster run {} on {} failed, and what was created is dropped again: {}",
                        run.run_id,
                        self.target.describe(),
                        e.message()
                    ),
                )
                .keeping_setting(&e)
            })?;
        tracing::info!(
            roles = created.roles.len(),
            tablespaces = created.tablespaces.len(),
            "created the cluster's globals"
        );

        // New databases first, those that exist (empty: `postgres`) last, so a failure
        // before them leaves them as they were.
        let mut order: Vec<&(ClusterDatabase, Manifest, String)> = backups.iter().collect();
        order.sort_by_key(|(db, _, _)| existing.contains(&db.database));
        let mut restored: Vec<(&(ClusterDatabase, Manifest, String), u64)> = Vec::new();
        for entry in &order {
            let (db, manifest, _) = entry;
            let exists = existing.contains(&db.database);
            let target = self.target.with_dbname(&db.database);
            let restore = Restore::new(self.sink.clone(), manifest.clone(), target)
                .identities(self.identities.clone())
                // An existing empty one (`postgres`, made by initdb with the new
                // cluster's locale) is replaced: restored beside it into a database
                // created with the backup's locale, swapped in once it succeeded.
                .clean(exists)
                // The globals made every role; one created after they were read
                // comes as the backup recorded it.
                .create_roles(true)
                .pg_bin_dir(self.pg_bin_dir.clone())
                .scope(self.scope.clone());
            tracing::info!(database = %db.database, backup = %db.backup_id, "restoring");
            match restore.run().await {
                Ok(outcome) => restored.push((entry, outcome.duration.as_millis() as u64)),
                Err(e) => {
                    let done: Vec<&str> = restored
                        .iter()
                        .map(|((d, _, _), _)| d.database.as_str())
                        .collect();
                    self.roll_back(&client, &created, &restored, &existing)
                        .await;
                    return Err(Error::new(
                        e.kind(),
                        format!(
                            "restoring database {} (backup {}) of cluster run {} failed: {}; rolled back: {} and the globals this restore created were dropped, so the target is as it was",
                            db.database,
                            db.backup_id,
                            run.run_id,
                            e.message(),
                            if done.is_empty() {
                                "no database had been restored".to_owned()
                            } else {
                                format!("the databases restored before it ({})", done.join(", "))
                            }
                        ),
                    )
                    .keeping_setting(&e));
                }
            }
        }

        let verifiers = standard_verifiers();
        let mut databases = Vec::with_capacity(restored.len());
        for ((db, manifest, manifest_sha256), restore_ms) in restored {
            let proof = Proof {
                sink: &*self.sink,
                manifest,
                manifest_sha256,
                verifiers: &verifiers,
            };
            let target = self.target.with_dbname(&db.database);
            let mut checks = vec![Check::pass(
                "restore",
                format!(
                    "restored into {} in {:.2}s",
                    target.describe(),
                    restore_ms as f64 / 1000.0
                ),
            )];
            checks.extend(proof.run_verifiers(&target).await?);
            databases.push(DatabaseProof {
                database: db.database.clone(),
                backup_id: db.backup_id.clone(),
                restore_ms,
                passed: checks.iter().all(|c| c.passed),
                checks,
            });
        }

        let databases_restored: BTreeSet<String> =
            databases.iter().map(|d| d.database.clone()).collect();
        let globals_checks = compare_globals(
            &client,
            &globals,
            &Expectations {
                kept: &kept,
                preexisting: &preexisting,
                tablespace_dirs: &self.tablespace_dirs,
                databases: &databases_restored,
            },
        )
        .await?;
        let passed = databases.iter().all(|d| d.passed) && globals_checks.iter().all(|c| c.passed);
        Ok(ClusterRestoreOutcome {
            target: self.target.describe(),
            roles_created: created.roles.clone(),
            roles_kept: globals
                .roles
                .iter()
                .filter(|r| kept.contains(&r.name))
                .map(|r| r.name.clone())
                .collect(),
            tablespaces: globals
                .tablespaces
                .iter()
                .map(|t| {
                    let dir = self.tablespace_dirs.get(&t.name).unwrap_or(&t.location);
                    (t.name.clone(), dir.clone())
                })
                .collect(),
            run,
            databases,
            globals: globals_checks,
            passed,
            duration_ms: clock.elapsed().as_millis() as u64,
        })
    }

    /// Each database's manifest, which must be trusted and be exactly the one the run
    /// recorded, with its settings unsealed.
    async fn load_backups(
        &self,
        run: &ClusterRun,
    ) -> Result<Vec<(ClusterDatabase, Manifest, String)>> {
        let mut out = Vec::with_capacity(run.databases.len());
        for db in &run.databases {
            let backup = BackupRef {
                database: db.database.clone(),
                backup_id: db.backup_id.clone(),
            };
            let (mut manifest, sha256) = catalog::load_manifest(&*self.sink, &backup)
                .await
                .map_err(|e| match e.kind() {
                    ErrorKind::NotFound => Error::integrity(format!(
                        "cluster run {} names backup {} of database {}, which is gone (pruned, or deleted); restore a newer run",
                        run.run_id, db.backup_id, db.database
                    )),
                    _ => e,
                })?;
            if sha256 != db.manifest_sha256 {
                return Err(Error::integrity(format!(
                    "the manifest of backup {} of database {} is not the one cluster run {} recorded (its sha256 differs): it was replaced or edited; not trusted",
                    db.backup_id, db.database, run.run_id
                ))
                .with_object(backup.manifest_key()));
            }
            catalog::unseal(&mut manifest, &*self.sink, self.identities.as_ref()).await?;
            out.push((db.clone(), manifest, sha256));
        }
        Ok(out)
    }

    /// The run's globals, checked against its record, then parsed.
    async fn load_globals(&self, run: &ClusterRun) -> Result<Globals> {
        let json = zeroize::Zeroizing::new(
            fetch_globals(&*self.sink, run, self.identities.as_ref()).await?,
        );
        let globals: Globals = serde_json::from_slice(&json).map_err(|e| {
            Error::integrity(format!(
                "the globals of cluster run {} are not readable ({e}); they were damaged",
                run.run_id
            ))
        })?;
        if globals.passwords != run.passwords {
            return Err(Error::integrity(format!(
                "the globals of cluster run {} do not say what its record says about passwords; not trusted",
                run.run_id
            )));
        }
        Ok(globals)
    }

    /// Refuses a target that already has what the run would create; returns the
    /// run's databases that exist there, empty.
    async fn check_empty(
        &self,
        client: &tokio_postgres::Client,
        state: &TargetState,
        globals: &Globals,
        run: &ClusterRun,
    ) -> Result<BTreeSet<String>> {
        let kept = state.kept();
        let roles: Vec<&str> = globals
            .roles
            .iter()
            .filter(|r| !kept.contains(&r.name) && state.roles.contains(&r.name))
            .map(|r| r.name.as_str())
            .collect();
        let tablespaces: Vec<&str> = globals
            .tablespaces
            .iter()
            .filter(|t| state.tablespaces.contains(&t.name))
            .map(|t| t.name.as_str())
            .collect();
        let mut existing = BTreeSet::new();
        let mut full = Vec::new();
        for db in &run.databases {
            let exists = client
                .query_opt(
                    "SELECT 1 FROM pg_database WHERE datname = $1",
                    &[&db.database],
                )
                .await
                .map_err(db_err("looking up a database"))?
                .is_some();
            if !exists {
                continue;
            }
            let objects =
                user_objects(&self.target.with_dbname(&db.database).connect().await?).await?;
            if objects > 0 {
                full.push(format!("{} ({objects} objects)", db.database));
            } else {
                existing.insert(db.database.clone());
            }
        }
        let mut what = Vec::new();
        let quoted = |names: &[&str]| {
            names
                .iter()
                .map(|n| format!("{:?}", crate::error::printable(n)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !roles.is_empty() {
            what.push(format!("roles {}", quoted(&roles)));
        }
        if !tablespaces.is_empty() {
            what.push(format!("tablespaces {}", quoted(&tablespaces)));
        }
        if !full.is_empty() {
            what.push(format!("databases {}", full.join(", ")));
        }
        if what.is_empty() {
            return Ok(existing);
        }
        Err(Error::already_exists(format!(
            "{} is not an empty cluster: it already has {} of cluster run {}; restore --cluster recreates a whole server, so give it a fresh one (initdb), or drop these there first",
            self.target.describe(),
            what.join("; "),
            run.run_id
        )))
    }

    /// Drops the databases this restore created and the globals it created.
    async fn roll_back(
        &self,
        client: &tokio_postgres::Client,
        created: &globals::Created,
        restored: &[(&(ClusterDatabase, Manifest, String), u64)],
        existing: &BTreeSet<String>,
    ) {
        for ((db, _, _), _) in restored {
            if existing.contains(&db.database) {
                continue;
            }
            if let Err(e) = drop_restored(&self.target.with_dbname(&db.database)).await {
                tracing::error!(database = %db.database, error = %e, "could not drop a database this restore created; drop it by hand");
            }
        }
        globals::undo(client, created).await;
    }
}

/// The globals read back from the target, compared with the recorded ones: one check
/// per kind of object, named `globals:<kind>`.
async fn compare_globals(
    client: &tokio_postgres::Client,
    recorded: &Globals,
    expect: &Expectations<'_>,
) -> Result<Vec<Check>> {
    let mut found = read_globals(client, recorded.passwords).await?;
    // Both sides in the target server's spelling (`64MB` for `65536kB`).
    let mut recorded = recorded.clone();
    for side in [&mut recorded, &mut found] {
        for entry in &mut side.role_settings {
            entry.settings = normalize_settings(client, &entry.settings).await?;
        }
    }
    let GlobalsDifferences {
        roles,
        memberships,
        role_settings,
        tablespaces,
        passwords,
    } = globals::differences(&recorded, &found, expect);
    let judge = |name: &str, differences: Vec<String>, ok: String| {
        if differences.is_empty() {
            Check::pass(name, ok)
        } else {
            Check::fail(name, differences.join("; "))
        }
    };
    let kept: Vec<&str> = expect.kept.iter().map(String::as_str).collect();
    let mut checks = vec![
        judge(
            "globals:roles",
            roles,
            format!(
                "{} roles with their recorded attributes and comments ({} kept as found)",
                recorded.roles.len(),
                kept.join(", ")
            ),
        ),
        judge(
            "globals:memberships",
            memberships,
            format!(
                "{} memberships with their recorded options",
                recorded.memberships.len()
            ),
        ),
        judge(
            "globals:role-settings",
            role_settings,
            format!(
                "{} role settings entries as recorded",
                recorded
                    .role_settings
                    .iter()
                    .filter(|s| s
                        .database
                        .as_ref()
                        .is_none_or(|db| expect.databases.contains(db)))
                    .count()
            ),
        ),
        judge(
            "globals:tablespaces",
            tablespaces,
            format!(
                "{} tablespaces with their recorded owners and options, at their directories",
                recorded.tablespaces.len()
            ),
        ),
    ];
    if recorded.passwords {
        let with = recorded
            .roles
            .iter()
            .filter(|r| r.password.is_some() && !expect.kept.contains(&r.name))
            .count();
        checks.push(judge(
            "globals:passwords",
            passwords,
            format!("{with} password verifiers as recorded"),
        ));
    }
    Ok(checks)
}

/// Carries a wrapped error's [`Setting`] over to the error that wraps it.
trait KeepSetting {
    fn keeping_setting(self, from: &Error) -> Self;
}

impl KeepSetting for Error {
    fn keeping_setting(self, from: &Error) -> Self {
        match from.setting() {
            Some(setting) => self.with_setting(setting),
            None => self,
        }
    }
}

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

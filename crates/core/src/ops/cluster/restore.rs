//! [`ClusterRestore`]: a whole server recreated on an empty cluster from one run, and
//! proven.

use super::*;

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
        self.check_tablespace_dirs(&run, &globals)?;

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

        let databases = self.prove_databases(restored).await?;
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

    /// Every `--tablespace-dir` names a tablespace the run has.
    fn check_tablespace_dirs(&self, run: &ClusterRun, globals: &Globals) -> Result<()> {
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
        Ok(())
    }

    /// Each restored database proven with the standard verifiers.
    async fn prove_databases(
        &self,
        restored: Vec<(&(ClusterDatabase, Manifest, String), u64)>,
    ) -> Result<Vec<DatabaseProof>> {
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
            checks.extend(proof.run_verifiers(&target, &Default::default()).await?);
            databases.push(DatabaseProof {
                database: db.database.clone(),
                backup_id: db.backup_id.clone(),
                restore_ms,
                passed: checks.iter().all(|c| c.passed),
                checks,
            });
        }

        Ok(databases)
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

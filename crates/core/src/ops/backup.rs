//! Backup: snapshot, fingerprint, dump through the codec chain into a sink, manifest
//! last.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::catalog::chunks::ChunkedDump;
use crate::catalog::files::{FileSet, FileSetInfo};
use crate::catalog::layout;
use crate::catalog::{
    self, BackupRef, CommitLock, EncryptionInfo, Manifest, ObjectInfo, SourceInfo, ToolInfo,
};
use crate::codec::{CodecChain, Progress, Recipients};
use crate::dump::{self, ArchiveTarget, CustomDumper, Dumper, StoredArchive, StoringArchive};
use crate::error::{Error, Result, Setting};
use crate::evidence::alerts::{self, AlertPolicy};
use crate::evidence::database::{self, DatabaseProperties, RoleInfo};
use crate::evidence::fingerprint::{DumpWatch, Fingerprint, Method, Plan};
use crate::evidence::invariant::{Invariant, InvariantResult};
use crate::pg::{ConnParams, PgTools, ServerInfo, SnapshotSession};
use crate::scope::Scope;
use crate::sink::{Sink, SinkExt};
use crate::verify::amcheck;

/// How long pg_dump and the fingerprint wait for a table lock by default.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(300);

/// How long one of pgproof's own statements in the snapshot (a catalog query, one
/// table's fingerprint) may run by default; the dump itself is not bounded by it.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// One backup of one database, configured by its builder methods and taken by
/// [`run`](Backup::run).
///
/// It dumps the database in an exported snapshot, fingerprints every table in the
/// same snapshot while the dump streams through the codec chain into the sink, then
/// commits the manifest, create-only and last. On any failure nothing is committed
/// under a manifest and the dump object's upload is aborted.
#[must_use = "a Backup does nothing until run"]
pub struct Backup {
    scope: Scope,
    source: ConnParams,
    sink: Arc<dyn Sink>,
    dumper: Arc<dyn Dumper>,
    recipients: Option<Recipients>,
    unencrypted: bool,
    pg_bin_dir: Option<PathBuf>,
    lock_wait: Duration,
    statement_timeout: Duration,
    progress: Option<Progress>,
    invariants: Vec<Invariant>,
    started_at: Option<Timestamp>,
    files: Vec<FileSet>,
    alert_policy: AlertPolicy,
    amcheck: bool,
    stage_dir: Option<PathBuf>,
}

impl Backup {
    /// A backup of `source`'s database into `sink`, in the custom format. Choose
    /// [`recipients`](Self::recipients) or, explicitly,
    /// [`unencrypted`](Self::unencrypted).
    pub fn new(source: ConnParams, sink: Arc<dyn Sink>) -> Self {
        Self {
            scope: Scope::current_or_new(),
            source,
            sink,
            dumper: Arc::new(CustomDumper),
            recipients: None,
            unencrypted: false,
            pg_bin_dir: None,
            lock_wait: DEFAULT_LOCK_WAIT,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            progress: None,
            invariants: Vec::new(),
            started_at: None,
            files: Vec::new(),
            alert_policy: AlertPolicy::default(),
            amcheck: false,
            stage_dir: None,
        }
    }

    /// The dumper (archive format); default [`CustomDumper`].
    pub fn dumper(mut self, dumper: Arc<dyn Dumper>) -> Self {
        self.dumper = dumper;
        self
    }

    /// Encrypts the dump to these age recipients.
    pub fn recipients(mut self, recipients: Recipients) -> Self {
        self.recipients = Some(recipients);
        self
    }

    /// Stores the dump unencrypted; must be chosen explicitly.
    pub fn unencrypted(mut self) -> Self {
        self.unencrypted = true;
        self
    }

    /// The directory of PostgreSQL programs; default: the newest install whose major
    /// version is at least the server's.
    pub fn pg_bin_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.pg_bin_dir = dir;
        self
    }

    /// How long to wait for a table lock before failing; default
    /// [`DEFAULT_LOCK_WAIT`].
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// How long one of pgproof's own statements in the snapshot may run (zero: no
    /// limit); default [`DEFAULT_STATEMENT_TIMEOUT`].
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Called with the dump bytes processed so far.
    pub fn progress(mut self, progress: Option<Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// The application's invariant queries, run in the dump's snapshot; their results
    /// go into the manifest for verification to compare.
    pub fn invariants(mut self, invariants: Vec<Invariant>) -> Self {
        self.invariants = invariants;
        self
    }

    /// File sets stored with the backup (keys, certificates, configuration a restore
    /// also needs).
    pub fn files(mut self, files: Vec<FileSet>) -> Self {
        self.files = files;
        self
    }

    /// Checks every B-tree index of the source with amcheck before dumping, when the
    /// extension is installed there (pgproof never installs it in a source); a corrupt
    /// index fails the backup instead of being backed up as if sound.
    pub fn amcheck(mut self, check: bool) -> Self {
        self.amcheck = check;
        self
    }

    /// Where a directory-format dump's stage goes (default: the temporary directory):
    /// pg_dump writes each table's file there, in plaintext, until pgproof has
    /// streamed it to the sink. The stage is private (0700, files 0600) and removed by
    /// the next run if a killed one left it.
    pub fn stage_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.stage_dir = dir;
        self
    }

    /// When the comparison with the previous backup raises an alert.
    pub fn alert_policy(mut self, policy: AlertPolicy) -> Self {
        self.alert_policy = policy;
        self
    }

    /// The time the backup is recorded as started (its id, its age for retention);
    /// default: now. Tests run a simulated calendar with it.
    pub fn started_at(mut self, at: Option<Timestamp>) -> Self {
        self.started_at = at;
        self
    }

    /// The scope this operation belongs to: cancelling it stops the operation
    /// (its programs are killed, what it created is dropped) and makes
    /// [`run`](Self::run) return an [`ErrorKind::Cancelled`](crate::ErrorKind::Cancelled)
    /// error. By default, the scope it was created within, else one of its own.
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Takes the backup and returns its manifest, as committed.
    pub async fn run(self) -> Result<Manifest> {
        let scope = self.scope.clone();
        scope.run(self.execute()).await
    }

    async fn execute(self) -> Result<Manifest> {
        let database = self.preflight()?;
        let started_at = self.started_at.unwrap_or_else(Timestamp::now);
        if self.amcheck {
            self.check_source_indexes(&database).await?;
        }
        let clock = Instant::now();

        let session =
            SnapshotSession::open(&self.source, self.lock_wait, self.statement_timeout).await?;
        let properties = database::read_properties(session.client()).await?;
        let roles = database::read_roles(session.client()).await?;
        let plan = Plan::prepare(session.client()).await?;
        let tools = PgTools::find(
            self.pg_bin_dir.as_deref(),
            session.server().major(),
            &["pg_dump"],
        )?;
        let chain = CodecChain::new(self.dumper.compression(), self.recipients.is_some());
        let backup_id = catalog::new_backup_id(started_at);
        let object_key = layout::dump(
            &database,
            &backup_id,
            self.dumper.file_name(),
            &chain.suffix(),
        );
        tracing::info!(
            database = %database,
            backup_id = %backup_id,
            format = %self.dumper.format(),
            pg_dump = %tools.version(),
            server = %session.server().version,
            sink = %self.sink.describe(),
            "backup started"
        );

        let mut cmd =
            self.dumper
                .dump_command(&tools, &self.source, session.snapshot_id(), self.lock_wait);
        // The fingerprint finds pg_dump's connections by this name to read in step.
        cmd.env("PGAPPNAME", dump_application_name(&session));
        let storing = self.dumper.layout().store(
            cmd,
            ArchiveTarget {
                sink: self.sink.clone(),
                backup: BackupRef {
                    database: database.clone(),
                    backup_id: backup_id.clone(),
                },
                key: object_key,
                chain: chain.clone(),
                recipients: self.recipients.clone(),
                progress: self.progress.clone(),
                stage_dir: self.stage_dir.clone(),
                scope: self.scope.clone(),
            },
        );
        let (mut dump_job, pending) = (storing.program, storing.archive);
        // The fingerprint runs in the snapshot while pg_dump streams, reading each table
        // as pg_dump does: same snapshot, no table data sent to the client. The time
        // its queries took is recorded, not the wait for pg_dump: that is its cost.
        let fingerprint_ms = AtomicU64::new(0);
        let outcome = self
            .beside_the_dump(&session, plan, &mut dump_job, &*pending, &fingerprint_ms)
            .await;
        let fingerprint_ms = fingerprint_ms.into_inner();
        // The snapshot must outlive pg_dump; it is released only now.
        let server = session.server().clone();
        let encoding = session.encoding().to_owned();
        let snapshot_id = session.snapshot_id().to_owned();
        let closed = session.close().await;
        let evidence = match outcome.and_then(|done| closed.map(|()| done)) {
            Ok(done) => done,
            Err(e) => return Err(pending.abort(e).await),
        };
        let StoredArchive {
            object,
            parts,
            chunks,
        } = pending.commit().await?;

        // What this run stored that only the manifest would name; a failure before it
        // commits deletes them (the chunks they alone use are prune's: others may
        // share them).
        let stored: Vec<String> = [&object]
            .into_iter()
            .chain(&parts)
            .chain(chunks.as_ref().map(|dump| &dump.list))
            .map(|o| o.key.clone())
            .collect();
        // File sets beside the dump, before the manifest commits them all.
        let files = self.store_files(&database, &backup_id, &stored).await?;
        let finished_at =
            started_at + jiff::SignedDuration::try_from(clock.elapsed()).unwrap_or_default();
        // The link is made under the database's commit lock, so backups that overlap
        // still form one line, each linked to the manifest committed just before it.
        let lock = CommitLock::acquire(&*self.sink, &database, &backup_id).await?;
        let committed = self
            .commit(
                &database,
                backup_id,
                Committing {
                    server,
                    encoding,
                    snapshot_id,
                    pg_dump_version: tools.version().to_owned(),
                    chain: &chain,
                    object,
                    parts,
                    chunks,
                    evidence,
                    properties,
                    roles,
                    fingerprint_ms,
                    files,
                    started_at,
                    finished_at,
                    duration_ms: clock.elapsed().as_millis() as u64,
                },
            )
            .await;
        lock.release(&*self.sink).await;
        let manifest = committed?;
        tracing::info!(
            backup_id = %manifest.backup_id,
            raw_bytes = manifest.dump_raw_bytes(),
            stored_bytes = manifest.dump_stored_bytes(),
            seconds = clock.elapsed().as_secs_f64(),
            "backup committed"
        );
        Ok(manifest)
    }
}

impl Backup {
    /// Checks what needs no server; returns the database's name.
    fn preflight(&self) -> Result<String> {
        if self.recipients.is_none() && !self.unencrypted {
            return Err(Error::config(
                "no age recipients given: encrypt the backup, or choose explicitly to store it unencrypted",
            )
            .with_setting(Setting::Recipients));
        }
        let database = self.source.dbname().to_owned();
        catalog::check_database_name(&database)?;
        for set in &self.files {
            set.validate(self.recipients.is_some())?;
        }
        Ok(database)
    }

    /// The fingerprint and the invariants, in the snapshot, while the dump program
    /// runs; each side's failure stops the other.
    async fn beside_the_dump(
        &self,
        session: &SnapshotSession,
        plan: Plan,
        dump_job: &mut tokio::task::JoinHandle<Result<()>>,
        pending: &dyn StoringArchive,
        fingerprint_ms: &AtomicU64,
    ) -> Result<Evidence> {
        let dump_exited = AtomicBool::new(false);
        let fingerprint = async {
            let (fingerprint, busy) = self.fingerprint(session, plan, &dump_exited).await?;
            fingerprint_ms.store(busy.as_millis() as u64, Ordering::Relaxed);
            let mut invariants = Vec::new();
            for invariant in &self.invariants {
                let outcome = invariant.run_in_transaction(session.client()).await?;
                if outcome.as_expected(invariant) == Some(false) {
                    tracing::warn!(invariant = %invariant.name, result = %outcome.shown(), "the source does not hold the invariant; verification of this backup will fail");
                }
                invariants.push(invariant.record(&outcome));
            }
            Ok(Evidence {
                fingerprint,
                invariants,
            })
        };
        tokio::pin!(fingerprint);
        tokio::select! {
            joined = &mut *dump_job => {
                dump_exited.store(true, Ordering::Release);
                let dumped = flatten_join(joined);
                if let Err(e) = dumped {
                    // pg_dump is gone: its error is the backup's. The fingerprint is
                    // abandoned, and its query cancelled: one waiting on a lock would
                    // wait forever, and the snapshot cannot close under it.
                    let _ = session.client().cancel_token().cancel_query(tokio_postgres::NoTls).await;
                    return Err(e);
                }
                fingerprint.await
            }
            fingerprinted = &mut fingerprint => {
                // A failed fingerprint ends the backup: stop pg_dump at its next chunk
                // rather than upload a dump that will be thrown away.
                if fingerprinted.is_err() {
                    pending.stop();
                }
                let dumped = flatten_join(dump_job.await);
                fingerprinted.and_then(|fp| dumped.map(|()| fp))
            }
        }
    }

    /// The source's fingerprint in the snapshot and the time its queries took: in
    /// step with pg_dump where the server reports COPY progress (PostgreSQL 14 on,
    /// where the method reads in pieces), else table by table beside it.
    async fn fingerprint(
        &self,
        session: &SnapshotSession,
        plan: Plan,
        dump_exited: &AtomicBool,
    ) -> Result<(Fingerprint, Duration)> {
        if plan.method() >= Method::V4 {
            match self.follow_connections(session).await {
                Ok((monitor, helpers)) => {
                    let watch = DumpWatch {
                        monitor,
                        application_name: dump_application_name(session),
                        finished: dump_exited,
                    };
                    let result = plan
                        .compute_following(session.client(), &helpers, watch)
                        .await;
                    for helper in &helpers {
                        let _ = helper.batch_execute("COMMIT").await;
                    }
                    return result;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no connections to spare for reading in step with pg_dump; the fingerprint reads each table on its own")
                }
            }
        }
        let clock = Instant::now();
        let fingerprint = plan.compute(session.client()).await?;
        Ok((fingerprint, clock.elapsed()))
    }

    /// A connection that watches pg_dump, and one joining the snapshot per table
    /// pg_dump reads at once; an error when the source's connection limits leave no
    /// room for them beside every connection pg_dump opens (it may not have opened
    /// them yet: pgproof's must never take a slot pg_dump needs).
    async fn follow_connections(
        &self,
        session: &SnapshotSession,
    ) -> Result<(tokio_postgres::Client, Vec<tokio_postgres::Client>)> {
        let ours = 1 + self.dumper.readers() as i64;
        let pg_dumps = dump::program_connections(&*self.dumper) as i64;
        let free = crate::pg::connections_free(session.client()).await?;
        if free < ours + pg_dumps {
            return Err(Error::database(format!(
                "the source's connection limits leave room for {free} more connections; reading in step needs {ours} beside pg_dump's {pg_dumps}"
            )));
        }
        let monitor = self.source.connect().await?;
        let mut helpers = Vec::new();
        for _ in 0..self.dumper.readers() {
            helpers.push(session.join(&self.source).await?);
        }
        Ok((monitor, helpers))
    }

    /// Stores the file sets beside the dump; on a failure, removes what this run
    /// stored (`stored` and the sets so far: nothing will commit them).
    async fn store_files(
        &self,
        database: &str,
        backup_id: &str,
        stored: &[String],
    ) -> Result<Vec<FileSetInfo>> {
        let mut files: Vec<FileSetInfo> = Vec::new();
        for set in &self.files {
            let dir = layout::backup_dir(database, backup_id);
            match set.store(&*self.sink, &dir, self.recipients.as_ref()).await {
                Ok(info) => files.push(info),
                Err(e) => {
                    let sets = files.iter().map(|f| &f.object.key);
                    for key in sets.chain(stored) {
                        let _ = self.sink.delete(key).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(files)
    }
}

/// What was taken in the snapshot beside the dump.
struct Evidence {
    fingerprint: Fingerprint,
    invariants: Vec<InvariantResult>,
}

/// What a finished dump leaves for the manifest.
struct Committing<'a> {
    server: ServerInfo,
    encoding: String,
    snapshot_id: String,
    pg_dump_version: String,
    chain: &'a CodecChain,
    object: ObjectInfo,
    parts: Vec<ObjectInfo>,
    chunks: Option<ChunkedDump>,
    evidence: Evidence,
    properties: DatabaseProperties,
    roles: Vec<RoleInfo>,
    fingerprint_ms: u64,
    files: Vec<FileSetInfo>,
    started_at: Timestamp,
    finished_at: Timestamp,
    duration_ms: u64,
}

impl Backup {
    /// Links the manifest to the newest committed one and writes it, create-only: run
    /// under the commit lock.
    async fn commit(
        &self,
        database: &str,
        backup_id: crate::catalog::BackupId,
        c: Committing<'_>,
    ) -> Result<Manifest> {
        let previous = catalog::previous_link(&*self.sink, database).await?;
        let chunked = c.chunks;
        // The previous backup's counts and size, against this one's.
        let alerts = match &previous {
            Some(p) => {
                let link = BackupRef {
                    database: database.to_owned(),
                    backup_id: p.backup_id.clone(),
                };
                match catalog::load_manifest(&*self.sink, &link).await {
                    Ok((before, _)) => match &before.fingerprint {
                        Some(fingerprint) => alerts::compare(
                            &before.backup_id,
                            fingerprint,
                            before.dump_raw_bytes(),
                            &c.evidence.fingerprint,
                            c.object.raw_bytes
                                + c.parts.iter().map(|p| p.raw_bytes).sum::<u64>()
                                + chunked.as_ref().map_or(0, |d| d.raw_bytes),
                            self.alert_policy,
                        ),
                        None => Vec::new(),
                    },
                    // A damaged predecessor is check's and verify's to report.
                    Err(_) => Vec::new(),
                }
            }
            None => Vec::new(),
        };
        for alert in &alerts {
            tracing::warn!(database, alert = %alert.detail, "anomaly");
        }
        let mut manifest = Manifest {
            manifest_version: catalog::MANIFEST_VERSION,
            backup_id,
            database: database.to_owned(),
            tool: ToolInfo::current(),
            source: SourceInfo {
                server_version: c.server.version,
                server_version_num: c.server.version_num,
                encoding: c.encoding,
            },
            pg_dump_version: c.pg_dump_version,
            format: self.dumper.format().to_owned(),
            codecs: c.chain.names(),
            encryption: self.recipients.as_ref().map(|r| EncryptionInfo {
                scheme: "age-x25519".into(),
                recipients: r.public_keys(),
            }),
            object: c.object,
            parts: c.parts,
            chunks: chunked,
            snapshot_id: c.snapshot_id,
            started_at: c.started_at,
            finished_at: c.finished_at,
            duration_ms: c.duration_ms,
            fingerprint_ms: c.fingerprint_ms,
            fingerprint: Some(c.evidence.fingerprint),
            properties: Some(c.properties),
            roles: c.roles,
            invariants: c.evidence.invariants,
            files: c.files,
            alerts,
            object_lock: self.sink.retention(),
            sealed: None,
            previous,
        };
        // Setting values may hold secrets: encrypted beside the dump, not in the
        // manifest, whenever the dump itself is encrypted.
        if let Some(recipients) = &self.recipients {
            let dir = layout::backup_dir(database, &manifest.backup_id);
            catalog::seal(&mut manifest, &*self.sink, &dir, recipients).await?;
        }
        self.sink
            .put_bytes(&manifest.key(), manifest.to_bytes()?)
            .await?;
        Ok(manifest)
    }
}

impl Backup {
    async fn check_source_indexes(&self, database: &str) -> Result<()> {
        let client = self.source.connect().await?;
        if !amcheck::installed(&client).await? {
            tracing::warn!(
                database,
                "amcheck is not installed in the source: its indexes were not checked (CREATE EXTENSION amcheck to check them)"
            );
            return Ok(());
        }
        let (checked, failures) = amcheck::check_indexes(&client).await?;
        if failures.is_empty() {
            tracing::info!(
                database,
                indexes = checked,
                "amcheck: every B-tree index is consistent"
            );
            return Ok(());
        }
        let shown: Vec<String> = failures.iter().map(|(i, m)| format!("{i} ({m})")).collect();
        Err(Error::integrity(format!(
            "amcheck found {} corrupt index(es) in the source database {database}: {}; REINDEX them, then back up again",
            failures.len(),
            shown.join("; ")
        )))
    }
}

/// The `application_name` of this backup's pg_dump connections.
fn dump_application_name(session: &SnapshotSession) -> String {
    format!("pgproof dump {}", session.snapshot_id())
}

fn flatten_join<T>(joined: std::result::Result<Result<T>, tokio::task::JoinError>) -> Result<T> {
    joined.unwrap_or_else(|e| Err(Error::tool(format!("the dump thread failed: {e}"))))
}

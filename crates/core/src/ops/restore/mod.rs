//! Restore: sink → codec chain → the dumper's restore program, into a database
//! pgproof created itself, or swapped in for an existing one only once it succeeded;
//! or some of its tables, proven (the `partial` module).

mod partial;
mod rename;

pub use partial::{LeftOut, PartialProof};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::catalog::{self, Manifest};
use crate::codec::{CodecChain, Identities, Progress, sha256_hex};
use crate::dump::toc::Filter;
use crate::dump::{self, ArchiveIo, ArchiveSource, Dumper};
use crate::error::{Error, Result, Setting};
use crate::evidence::database;
use crate::ops::create_dropped_on_cancel;
use crate::pg::admin::{self, Admin};
use crate::pg::{ConnParams, PgTools};
use crate::scope::Scope;
use crate::sink::Sink;

/// A restore of one backup into one database, configured by its builder methods and
/// done by [`run`](Restore::run).
///
/// The target database must not exist (pgproof creates it with the backup's
/// encoding) or must be empty, unless [`clean`](Self::clean) allows replacing it: the
/// backup is then restored beside it and swapped in only once the restore succeeded.
/// Hashes and sizes are checked against the manifest while streaming, before the
/// restore program sees the end of its input; on any failure its transaction never
/// commits and a database pgproof created is dropped again.
#[must_use = "a Restore does nothing until run"]
pub struct Restore {
    scope: Scope,
    sink: Arc<dyn Sink>,
    manifest: Manifest,
    target: ConnParams,
    identities: Option<Identities>,
    dumper: Option<Arc<dyn Dumper>>,
    clean: bool,
    force: bool,
    create_roles: bool,
    create_privileged_roles: bool,
    pg_bin_dir: Option<PathBuf>,
    progress: Option<Progress>,
    filter: Filter,
    rename_to: Option<String>,
    loading: Option<tokio::sync::oneshot::Sender<usize>>,
}

/// A finished restore.
#[derive(Clone, Debug)]
pub struct RestoreOutcome {
    /// The database restored into.
    pub database: String,
    /// Whether pgproof created it (or replaced it).
    pub created: bool,
    /// Dump bytes fed to the restore program.
    pub raw_bytes: u64,
    /// Wall time of the restore: the recovery time actually measured.
    pub duration: Duration,
    /// A partial restore's proof: each table checked against the backup's fingerprint.
    pub proof: Option<PartialProof>,
}

impl Restore {
    /// Restores the backup `manifest` describes, from `sink`, into `target`.
    pub fn new(sink: Arc<dyn Sink>, manifest: Manifest, target: ConnParams) -> Self {
        Self {
            scope: Scope::current_or_new(),
            sink,
            manifest,
            target,
            identities: None,
            dumper: None,
            clean: false,
            force: false,
            create_roles: false,
            create_privileged_roles: false,
            pg_bin_dir: None,
            progress: None,
            filter: Filter::default(),
            rename_to: None,
            loading: None,
        }
    }

    /// Restores into a scratch database, to be judged and dropped (verify): with the
    /// dumper's [`scratch_restore_command`](Dumper::scratch_restore_command), which
    /// commits table by table where it can. `loading` is told, with how many
    /// connections the restore program may open, when it starts on a database it
    /// created under the target's name (dropped untold otherwise).
    pub(crate) fn scratch(mut self, loading: tokio::sync::oneshot::Sender<usize>) -> Self {
        self.loading = Some(loading);
        self
    }

    /// The age identities that open an encrypted backup.
    pub fn identities(mut self, identities: Option<Identities>) -> Self {
        self.identities = identities;
        self
    }

    /// The dumper whose restore program applies the archive; default: the built-in
    /// one the manifest's format names.
    pub fn dumper(mut self, dumper: Arc<dyn Dumper>) -> Self {
        self.dumper = Some(dumper);
        self
    }

    /// Allows replacing an existing target database.
    pub fn clean(mut self, clean: bool) -> Self {
        self.clean = clean;
        self
    }

    /// Restores into an existing empty database even when its encoding or locale
    /// differs from the backup's (text may then change or sort differently).
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// Creates the roles the backup needs and the target server lacks (as recorded,
    /// without passwords); without it such a restore is refused before it starts.
    pub fn create_roles(mut self, create: bool) -> Self {
        self.create_roles = create;
        self
    }

    /// Also creates roles with SUPERUSER, REPLICATION or BYPASSRLS. Without it a
    /// backup that needs one is refused before anything is restored: a manifest
    /// names such roles, and a server pgproof does not own (a shared scratch server,
    /// production) must never gain one because a backup said so.
    pub fn create_privileged_roles(mut self, create: bool) -> Self {
        self.create_privileged_roles = create;
        self
    }

    /// The directory of PostgreSQL programs; default: the newest install whose major
    /// version is at least the server's and the dump's.
    pub fn pg_bin_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.pg_bin_dir = dir;
        self
    }

    /// Called with the dump bytes restored so far.
    pub fn progress(mut self, progress: Option<Progress>) -> Self {
        self.progress = progress;
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

    /// Restores only the tables `filter` selects, with what they need, in one
    /// transaction, into a new database or beside what an existing one holds (never
    /// touching a table it has), and proves each against the fingerprint the backup
    /// recorded. Custom and directory backups only; what needs a table left out is
    /// left out and named in [`RestoreOutcome::proof`].
    pub fn tables(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }

    /// With [`tables`](Self::tables) selecting one table: restores it into the
    /// existing target database beside the live one, under the name `name` in the
    /// same schema (its indexes and owned sequences renamed after it), the common
    /// "get yesterday's rows back". It is restored and proven in a database of its
    /// own first, then copied over (`pg_dump | pg_restore`, one transaction) and
    /// proven again where it lands.
    pub fn rename_to(mut self, name: Option<String>) -> Self {
        self.rename_to = name;
        self
    }

    /// Restores.
    pub async fn run(self) -> Result<RestoreOutcome> {
        let scope = self.scope.clone();
        if self.filter.is_empty() && self.rename_to.is_none() {
            scope.run(self.execute()).await
        } else {
            scope.run(self.execute_part()).await
        }
    }

    async fn execute(mut self) -> Result<RestoreOutcome> {
        let clock = Instant::now();
        let dumper = self.dumper_for_backup()?;
        catalog::unseal(&mut self.manifest, &*self.sink, self.identities.as_ref()).await?;
        let m = &self.manifest;
        let chain = CodecChain::from_names(&m.codecs)?;
        let database = self.target.dbname().to_owned();
        let layout = dumper.layout();
        // Open the archive first: a missing object must not cost a database.
        let archive = layout
            .open(ArchiveSource {
                sink: &self.sink,
                manifest: m,
                chain: &chain,
                identities: self.identities.as_ref(),
                progress: self.progress.as_ref(),
                scope: &self.scope,
            })
            .await?;

        let admin = Admin::connect(&self.target).await?;
        if let Err(e) = admin.reap_abandoned().await {
            tracing::warn!(error = %e, "could not look for databases that dead runs left");
        }
        let tools = self.tools(&admin, &[dumper.restore_program()])?;
        let missing = admin.missing_roles(&m.roles).await?;
        self.check_roles(&missing)?;
        let exists = admin.exists(&database).await?;
        if exists && !self.clean {
            self.check_existing_target(&database).await?;
        }
        // A restore in several transactions (pg_restore --jobs) goes only into a
        // database pgproof creates, so that a failure drops it whole.
        let atomic = layout.io() == ArchiveIo::Pipe;
        if exists && !self.clean && !atomic {
            return Err(Error::already_exists(format!(
                "target database {database} exists; backup {} is a directory archive, restored with pg_restore --jobs in several transactions, so pgproof restores it only into a database it creates: name a new database, or replace this one",
                m.backup_id
            ))
            .with_setting(Setting::Clean));
        }
        if !missing.is_empty() {
            admin.create_roles(&missing).await?;
        }
        // Replacing restores beside the old database: a damaged backup or a wrong key
        // must not cost the database it was meant to replace.
        let replace = exists && self.clean;
        let load = if replace {
            self.target.with_dbname(&format!(
                "pgproof_restore_{}",
                &sha256_hex(database.as_bytes())[..12]
            ))
        } else {
            self.target.clone()
        };
        let created = !exists || replace;
        let registered = if created {
            admin.drop(load.dbname()).await?;
            Some(
                create_dropped_on_cancel(
                    &self.scope,
                    &load,
                    admin.canceller(),
                    admin.create(load.dbname(), &m.source.encoding, m.properties.as_ref()),
                )
                .await?,
            )
        } else {
            None
        };

        let mut cmd = match self.loading {
            Some(_) => dumper.scratch_restore_command(&tools, &load),
            None => dumper.restore_command(&tools, &load),
        };
        if let Some(properties) = &m.properties {
            cmd.envs(properties.restore_env());
        }
        let program = dumper.restore_program();
        if let Some(loading) = self.loading.take()
            && created
            && !replace
        {
            let _ = loading.send(dump::program_connections(&*dumper));
        }
        let fed = archive.feed(cmd, program).await;
        let result = self
            .finish(&admin, fed, &load, &database, created, replace)
            .await;
        let outcome = match result {
            Ok(raw_bytes) => Ok(RestoreOutcome {
                database,
                created,
                raw_bytes,
                duration: clock.elapsed(),
                proof: None,
            }),
            Err(e) => {
                if created && let Err(drop_err) = admin.drop(load.dbname()).await {
                    tracing::error!(database = %load.dbname(), error = %drop_err, "could not drop the half-restored database; drop it by hand");
                }
                Err(e)
            }
        };
        // Handed over, or dropped above: an interruption from here on leaves it alone.
        if let Some(registered) = registered {
            registered.keep();
        }
        outcome
    }
}

impl Restore {
    /// The dumper that restores this backup's format (given, or built in); an
    /// encrypted backup also needs its identities.
    fn dumper_for_backup(&self) -> Result<Arc<dyn Dumper>> {
        let m = &self.manifest;
        if m.encryption.is_some() && self.identities.is_none() {
            return Err(Error::config(format!(
                "backup {} is encrypted: give the age identity for {}",
                m.backup_id,
                m.encryption
                    .as_ref()
                    .map(|e| e.recipients.join(", "))
                    .unwrap_or_default()
            ))
            .with_setting(Setting::Identity));
        }
        match &self.dumper {
            Some(d) => Ok(d.clone()),
            None => dump::builtin(&m.format).ok_or_else(|| {
                Error::config(format!(
                    "backup {} was written in the format {:?}, which no dumper given here restores",
                    m.backup_id, m.format
                ))
            }),
        }
    }

    /// The PostgreSQL programs `programs`, of a major at least the target server's
    /// and the dump's.
    fn tools(&self, admin: &Admin, programs: &[&str]) -> Result<PgTools> {
        let min_major = admin
            .server()
            .major()
            .max(leading_major(&self.manifest.pg_dump_version));
        PgTools::find(self.pg_bin_dir.as_deref(), min_major, programs)
    }

    /// Refuses to go on when the server lacks roles the backup needs and the
    /// restore may not create them (privileged ones need their own permission).
    fn check_roles(&self, missing: &[&crate::pg::properties::RoleInfo]) -> Result<()> {
        if !missing.is_empty() && !self.create_roles {
            let names: Vec<&str> = missing.iter().map(|r| r.name.as_str()).collect();
            return Err(Error::config(format!(
                "the backup's objects belong to or are granted to roles this server lacks: {}; create them, or let pgproof create them as recorded (without passwords)",
                names.join(", ")
            ))
            .with_setting(Setting::CreateRoles));
        }
        let privileged: Vec<&str> = missing
            .iter()
            .filter(|r| r.superuser || r.replication || r.bypassrls)
            .map(|r| r.name.as_str())
            .collect();
        if !privileged.is_empty() && !self.create_privileged_roles {
            return Err(Error::config(format!(
                "the backup needs roles with SUPERUSER, REPLICATION or BYPASSRLS that {} lacks: {}; pgproof creates such roles only when told to: create them yourself, or allow it",
                self.target.describe(),
                privileged.join(", ")
            ))
            .with_setting(Setting::CreatePrivilegedRoles));
        }
        Ok(())
    }

    /// An existing target that is not to be replaced must be empty and store text as
    /// the backup's did (unless forced).
    async fn check_existing_target(&self, database: &str) -> Result<()> {
        let client = self.target.connect().await?;
        let objects = admin::user_objects(&client).await?;
        if objects > 0 {
            return Err(Error::already_exists(format!(
                "target database {database} already holds {objects} objects; restore into a new database, or allow replacing it"
            ))
            .with_setting(Setting::Clean));
        }
        if let Some(recorded) = &self.manifest.properties {
            let found = database::read_properties(&client).await?;
            let differences = recorded.locale_differences(&found);
            if !differences.is_empty() && !self.force {
                return Err(Error::config(format!(
                    "target database {database} does not store or sort text like the backup's: {}; restore into a new database (pgproof creates it with the backup's locale), or force it",
                    differences.join(", ")
                ))
                .with_setting(Setting::Force));
            }
        }
        Ok(())
    }

    /// After the restore program: the recorded properties, the swap for a replacing
    /// restore, and the hand-over (the backup's own comment for pgproof's mark).
    async fn finish(
        &self,
        admin: &Admin,
        fed: Result<u64>,
        load: &ConnParams,
        database: &str,
        created: bool,
        replace: bool,
    ) -> Result<u64> {
        let properties = self.manifest.properties.as_ref();
        let raw_bytes = fed?;
        if let Some(properties) = properties {
            admin
                .apply_properties(load.dbname(), properties, created)
                .await?;
        }
        if replace {
            admin.swap_in(load.dbname(), database).await?;
        }
        if created || properties.is_some() {
            admin
                .hand_over(database, properties.and_then(|p| p.comment.as_deref()))
                .await?;
        }
        Ok(raw_bytes)
    }
}

fn leading_major(version: &str) -> u32 {
    version
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or(0)
}

/// Writes a backup's file sets under `dir/<set>/<path as backed up>` with their
/// modes, after checking each archive against the manifest; existing files are never
/// overwritten. Returns the directories written.
pub async fn restore_files(
    sink: &dyn Sink,
    manifest: &Manifest,
    identities: Option<&Identities>,
    dir: &std::path::Path,
) -> Result<Vec<PathBuf>> {
    if manifest.files.is_empty() {
        return Err(Error::not_found(format!(
            "backup {} holds no file sets",
            manifest.backup_id
        )));
    }
    let mut written = Vec::new();
    for set in &manifest.files {
        let tar = set.fetch(sink, identities).await?;
        written.push(set.unpack(&tar, dir)?);
    }
    Ok(written)
}

/// Drops a database pgproof restored into (a scratch database after verification).
pub async fn drop_restored(target: &ConnParams) -> Result<()> {
    admin::drop_database(target).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dump_major_comes_from_any_version_string() {
        assert_eq!(leading_major("15.18"), 15);
        assert_eq!(leading_major("18devel"), 18);
        assert_eq!(leading_major(""), 0);
    }
}

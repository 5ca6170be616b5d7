//! A restore of some tables of a backup: pg_restore's table of contents read first
//! (every byte of it checked like the rest), the entries those tables need chosen,
//! restored in one transaction into a new database or beside what an existing one
//! holds, and each table then proven against the fingerprint its backup recorded in
//! the dump's snapshot.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use serde::Serialize;
use tokio_postgres::Client;

use super::{Restore, RestoreOutcome};
use crate::catalog::{self, Manifest};
use crate::codec::CodecChain;
use crate::dump::toc::{Entry, SelectedTable, Selection, Toc, unquote_qualified};
use crate::dump::{ArchiveSource, Dumper};
use crate::error::{Error, Result, Setting};
use crate::evidence::fingerprint::{self, Fingerprint, Method, SequenceState};
use crate::ops::create_dropped_on_cancel;
use crate::pg::admin::Admin;
use crate::pg::process::client_command;
use crate::pg::{ConnParams, PgTools, db_err, quote_ident};
use crate::verify::{Check, compare_relations};

/// What a partial restore restored, and its proof.
#[derive(Clone, Debug, Serialize)]
pub struct PartialProof {
    /// Every table and every sequence it created proven as the backup recorded it.
    pub passed: bool,
    /// One check per table (`fingerprint:<table>`) and per sequence it created
    /// (`sequence:<name>`).
    pub checks: Vec<Check>,
    /// What it created beyond the tables and what belongs to them (schemas, types,
    /// functions, extensions), as pg_restore lists them.
    pub created: Vec<String>,
    /// What the target already had, used as it is (not proven equal to the backup's).
    pub present: Vec<String>,
    /// What belongs to the selected tables but was not restored, with the reason.
    pub left_out: Vec<LeftOut>,
    /// The name the one selected table was restored under (`--rename-to`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_as: Option<String>,
}

/// An entry of a selected table that a partial restore left out.
#[derive(Clone, Debug, Serialize)]
pub struct LeftOut {
    /// The entry, as pg_restore lists it.
    pub entry: String,
    /// Why, and how to include it.
    pub reason: String,
}

impl Restore {
    /// The partial restore: [`Restore::tables`] selects.
    pub(super) async fn execute_part(mut self) -> Result<RestoreOutcome> {
        let clock = Instant::now();
        let dumper = self.dumper_for_backup()?;
        catalog::unseal(&mut self.manifest, &*self.sink, self.identities.as_ref()).await?;
        let m = &self.manifest;
        if dumper.restore_program() != "pg_restore" {
            return Err(Error::config(format!(
                "backup {} is a {} dump: pgproof restores part of a backup only from the custom and directory formats, whose table of contents pg_restore reads; restore it whole into a new database, or take custom or directory backups",
                m.backup_id, m.format
            )));
        }
        let (method, tables, sequences) = recorded(m)?;
        let chain = CodecChain::from_names(&m.codecs)?;
        let admin = Admin::connect(&self.target).await?;
        let programs: &[&str] = if self.rename_to.is_some() {
            &["pg_restore", "pg_dump"]
        } else {
            &["pg_restore"]
        };
        let tools = self.tools(&admin, programs)?;
        let stage = tempfile::Builder::new()
            .prefix("pgproof-list-")
            .tempdir()
            .map_err(|e| Error::io("creating a directory for pg_restore's lists", e))?;
        let toc = self
            .table_of_contents(&*dumper, &chain, &tools, stage.path())
            .await?;
        let chosen = toc.tables(&tables, &self.filter)?;
        if chosen.is_empty() {
            let some: Vec<&str> = tables.keys().take(10).map(String::as_str).collect();
            return Err(Error::not_found(format!(
                "no table of backup {} matches {}; it holds {} tables{}{}",
                m.backup_id,
                self.filter.describe(),
                tables.len(),
                if some.is_empty() { "" } else { ": " },
                some.join(", ")
            )));
        }
        let missing = admin.missing_roles(&m.roles).await?;
        self.check_roles(&missing)?;
        let database = self.target.dbname().to_owned();
        let exists = admin.exists(&database).await?;
        if exists && self.clean {
            return Err(Error::config(format!(
                "a partial restore goes beside what {database} holds and never replaces it: restore into a new database, or restore the whole backup to replace it"
            ))
            .with_setting(Setting::Clean));
        }
        let part = Part {
            dumper: &*dumper,
            chain: &chain,
            tools: &tools,
            stage: stage.path(),
            toc: &toc,
            sequences: &sequences,
            method,
        };
        if let Some(name) = &self.rename_to {
            let (raw_bytes, proof) = self
                .restore_renamed(&admin, &part, chosen, name, exists)
                .await?;
            return Ok(RestoreOutcome {
                database,
                created: false,
                raw_bytes,
                duration: clock.elapsed(),
                proof: Some(proof),
            });
        }
        let registered = if exists {
            None
        } else {
            Some(
                create_dropped_on_cancel(
                    &self.scope,
                    &self.target,
                    admin.canceller(),
                    admin.create(&database, &m.source.encoding, m.properties.as_ref()),
                )
                .await?,
            )
        };
        let result = self
            .restore_part(&admin, &part, chosen, &self.target, !exists)
            .await;
        let outcome = match result {
            Ok((raw_bytes, proof)) => Ok(RestoreOutcome {
                database: database.clone(),
                created: !exists,
                raw_bytes,
                duration: clock.elapsed(),
                proof: Some(proof),
            }),
            Err(e) => {
                if !exists && let Err(drop_err) = admin.drop(&database).await {
                    tracing::error!(%database, error = %drop_err, "could not drop the half-restored database; drop it by hand");
                }
                Err(e)
            }
        };
        if let Some(registered) = registered {
            registered.keep();
        }
        outcome
    }

    /// Feeds the archive to `pg_restore --list --verbose` and parses what it printed.
    async fn table_of_contents(
        &self,
        dumper: &dyn Dumper,
        chain: &CodecChain,
        tools: &PgTools,
        stage: &Path,
    ) -> Result<Toc> {
        let path = stage.join("toc.list");
        let mut cmd = client_command(tools, "pg_restore", &self.target);
        cmd.args(["--list", "--verbose"])
            .arg(format!("--file={}", path.display()))
            .stdout(Stdio::null());
        self.open(dumper, chain)
            .await?
            .feed_part(cmd, "pg_restore")
            .await?;
        let listing = std::fs::read_to_string(&path)
            .map_err(|e| Error::io("reading pg_restore's table of contents", e))?;
        Toc::parse(&listing)
    }

    async fn open(
        &self,
        dumper: &dyn Dumper,
        chain: &CodecChain,
    ) -> Result<Box<dyn crate::dump::OpenedArchive>> {
        dumper
            .layout()
            .open(ArchiveSource {
                sink: &self.sink,
                manifest: &self.manifest,
                chain,
                identities: self.identities.as_ref(),
                progress: self.progress.as_ref(),
                scope: &self.scope,
            })
            .await
    }

    /// Restores the entries the chosen tables need into `target` and proves them.
    pub(super) async fn restore_part(
        &self,
        admin: &Admin,
        part: &Part<'_>,
        chosen: Vec<SelectedTable>,
        target: &ConnParams,
        created: bool,
    ) -> Result<(u64, PartialProof)> {
        let client = target.connect().await?;
        let database = target.dbname();
        let keys: Vec<String> = chosen.iter().filter_map(|t| t.key.clone()).collect();
        let clashes = existing_tables(&client, &keys).await?;
        if !clashes.is_empty() {
            return Err(Error::already_exists(format!(
                "target database {database} already has {}; a partial restore never touches a table that exists: restore into a new database, or move that table aside first",
                clashes.join(", ")
            )));
        }
        let present = present_in(&client, part.toc.shared_needs(&chosen)?).await;
        // A child created under a parent the target has would add its rows to every
        // query of that parent: a table others use.
        let live_parents: Vec<String> = part
            .toc
            .parents(&chosen)
            .iter()
            .filter(|e| present.contains(&e.id))
            .map(|e| e.describe())
            .collect();
        if !created && !live_parents.is_empty() {
            return Err(Error::config(format!(
                "the tables selected inherit from (or are partitions of) {}, which {database} has: restored there, their rows would show in that table's queries; restore into a new database instead",
                live_parents.join(", ")
            )));
        }
        let selection = part.toc.select(chosen, &present, part.sequences)?;
        let list = part.stage.join("restore.list");
        std::fs::write(&list, part.toc.use_list(&selection))
            .map_err(|e| Error::io("writing pg_restore's list", e))?;
        let mut cmd = client_command(part.tools, "pg_restore", target);
        cmd.args(["--exit-on-error", "--single-transaction", "--no-password"])
            .arg(format!("--use-list={}", list.display()))
            .args(["--dbname", database])
            .stdout(Stdio::null());
        if let Some(properties) = &self.manifest.properties {
            cmd.envs(properties.restore_env());
        }
        let raw_bytes = self
            .open(part.dumper, part.chain)
            .await?
            .feed_part(cmd, "pg_restore")
            .await?;
        if created {
            let properties = self.manifest.properties.as_ref();
            if let Some(properties) = properties {
                admin.apply_properties(database, properties, true).await?;
            }
            admin
                .hand_over(database, properties.and_then(|p| p.comment.as_deref()))
                .await?;
        }
        let checks = self.prove(&client, part.method, &selection).await?;
        Ok((
            raw_bytes,
            PartialProof {
                passed: checks.iter().all(|c| c.passed),
                checks,
                created: selection.created,
                present: selection.present,
                left_out: selection
                    .left_out
                    .into_iter()
                    .map(|(entry, reason)| LeftOut { entry, reason })
                    .collect(),
                restored_as: None,
            },
        ))
    }

    /// Every selected table's fingerprint, and every created sequence's value,
    /// against the backup's.
    async fn prove(
        &self,
        client: &Client,
        method: Method,
        selection: &Selection,
    ) -> Result<Vec<Check>> {
        let Some(recorded) = &self.manifest.fingerprint else {
            return Err(Error::integrity("the manifest holds no fingerprint"));
        };
        let keys: Vec<String> = selection
            .tables
            .iter()
            .filter_map(|t| t.key.clone())
            .collect();
        let found = Fingerprint::of_tables(client, method, &keys).await?;
        let expected: BTreeMap<String, fingerprint::TableFingerprint> = keys
            .iter()
            .filter_map(|k| recorded.tables.get(k).map(|t| (k.clone(), t.clone())))
            .collect();
        let mut checks = compare_relations("fingerprint", &expected, &found.tables, "");
        let expected: BTreeMap<String, SequenceState> = selection
            .sequences
            .iter()
            .filter_map(|k| recorded.sequences.get(k).map(|s| (k.clone(), s.clone())))
            .collect();
        let found = sequence_states(client, &selection.sequences).await?;
        let differences = fingerprint::sequence_differences(&expected, &found);
        for (name, state) in &found {
            match differences.iter().find(|d| &d.subject == name) {
                None => checks.push(Check::pass(
                    format!("sequence:{name}"),
                    format!("last_value {}", state.last_value),
                )),
                Some(d) => checks.push(Check::fail(
                    format!("sequence:{name}"),
                    format!("expected {}, found {}", d.expected, d.found),
                )),
            }
        }
        Ok(checks)
    }
}

/// What restoring part of one archive works with.
pub(super) struct Part<'a> {
    dumper: &'a dyn Dumper,
    chain: &'a CodecChain,
    pub(super) tools: &'a PgTools,
    stage: &'a Path,
    pub(super) toc: &'a Toc,
    sequences: &'a BTreeMap<String, (String, String)>,
    pub(super) method: Method,
}

type Names = BTreeMap<String, (String, String)>;

/// The backup's fingerprint method, and its tables' and sequences' names: what a
/// partial restore is proven against.
fn recorded(m: &Manifest) -> Result<(Method, Names, Names)> {
    let Some(fingerprint) = &m.fingerprint else {
        return Err(Error::config(format!(
            "backup {} holds no fingerprint, so no part of it could be proven: restore it whole",
            m.backup_id
        )));
    };
    let Some(method) = Method::parse(&fingerprint.method) else {
        return Err(Error::config(format!(
            "backup {}'s fingerprint method {} is unknown to this version; restore part of it with the pgproof version that wrote it",
            m.backup_id, fingerprint.method
        )));
    };
    let names = |keys: &mut dyn Iterator<Item = &String>| -> Names {
        keys.filter_map(|k| unquote_qualified(k).map(|parts| (k.clone(), parts)))
            .collect()
    };
    Ok((
        method,
        names(&mut fingerprint.tables.keys()),
        names(&mut fingerprint.sequences.keys()),
    ))
}

/// The tables among `keys` the database has.
async fn existing_tables(client: &Client, keys: &[String]) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for key in keys {
        let row = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[key])
            .await
            .map_err(db_err("looking for the tables to restore in the target"))?;
        if row.get::<_, bool>(0) {
            found.push(key.clone());
        }
    }
    Ok(found)
}

/// The dump ids of the entries in `needs` the database already has. One the query
/// cannot decide (a name it cannot parse) counts as absent: the restore then tries to
/// create it and, should it exist after all, fails whole.
async fn present_in(client: &Client, needs: Vec<&Entry>) -> HashSet<u32> {
    let mut present = HashSet::new();
    for entry in needs {
        let (schema, tag) = entry.schema_and_tag();
        let schema = schema.unwrap_or("");
        let query = match entry.desc {
            "SCHEMA" => {
                client
                    .query_one(
                        "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)",
                        &[&tag],
                    )
                    .await
            }
            "EXTENSION" => {
                client
                    .query_one(
                        "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = $1)",
                        &[&tag],
                    )
                    .await
            }
            kind => {
                let sql = match kind {
                    "TYPE" | "DOMAIN" => {
                        "SELECT to_regtype(quote_ident($1) || '.' || quote_ident($2)) IS NOT NULL"
                    }
                    "FUNCTION" | "PROCEDURE" | "AGGREGATE" => {
                        "SELECT to_regprocedure(quote_ident($1) || '.' || $2) IS NOT NULL"
                    }
                    "SEQUENCE" | "TABLE" => {
                        "SELECT to_regclass(quote_ident($1) || '.' || quote_ident($2)) IS NOT NULL"
                    }
                    "COLLATION" => {
                        "SELECT to_regcollation(quote_ident($1) || '.' || quote_ident($2)) IS NOT NULL"
                    }
                    _ => continue,
                };
                client.query_one(sql, &[&schema, &tag]).await
            }
        };
        match query {
            Ok(row) if row.get::<_, bool>(0) => {
                present.insert(entry.id);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(entry = %entry.describe(), error = %e, "cannot tell whether the target has it; creating it")
            }
        }
    }
    present
}

/// The state of the sequences `keys` names (fingerprint keys) in the database.
async fn sequence_states(
    client: &Client,
    keys: &[String],
) -> Result<BTreeMap<String, SequenceState>> {
    let mut states = BTreeMap::new();
    for key in keys {
        // Quoted again from its parts: the key is data, never SQL.
        let Some((schema, name)) = unquote_qualified(key) else {
            continue;
        };
        let quoted = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
        let row = client
            .query_one(
                &format!(
                    "SELECT last_value, is_called, \
                            (SELECT seqincrement FROM pg_sequence WHERE seqrelid = $1::text::regclass) \
                     FROM {quoted}"
                ),
                &[&quoted],
            )
            .await
            .map_err(db_err("reading a restored sequence"))?;
        states.insert(
            key.clone(),
            SequenceState {
                last_value: row.get(0),
                is_called: row.get(1),
                increment: row.get(2),
            },
        );
    }
    Ok(states)
}

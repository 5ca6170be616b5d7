//! Drill: the whole prove loop on a database pgproof creates, fills, backs up, wipes,
//! restores and verifies.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::catalog::{self, BackupRef, Manifest};
use crate::codec::{Identities, Recipients};
use crate::dump::{CustomDumper, Dumper};
use crate::error::Result;
use crate::evidence::audit;
use crate::ops::backup::Backup;
use crate::ops::create_dropped_on_cancel;
use crate::ops::restore::{Restore, drop_restored};
use crate::ops::verify::{Proof, new_report, write_report};
use crate::pg::admin::user_objects;
use crate::pg::{ConnParams, db_err};
use crate::scope::Scope;
use crate::sink::Sink;
use crate::verify::{Check, Report, standard_verifiers};

/// What a drill did.
#[derive(Debug)]
pub struct DrillOutcome {
    /// The backup taken.
    pub manifest: Manifest,
    /// The verification of its restore.
    pub report: Report,
    /// Audit events written.
    pub audit_rows: i64,
    /// Rows in the edge-value table.
    pub edge_values: i64,
    /// Wall time of the whole drill.
    pub duration: Duration,
}

/// The database a drill creates.
pub const DRILL_DATABASE: &str = "pgproof_drill";

/// Values at the edges of what PostgreSQL and its dump formats handle.
const EDGE_VALUES: &str = r#"
CREATE TABLE drill_edge_values (
  id serial PRIMARY KEY, label text NOT NULL,
  ts timestamptz, ts_local timestamp, d date, f8 float8, f4 real, n numeric,
  txt text, j jsonb, b bytea, iv interval, arr text[]
);
INSERT INTO drill_edge_values (label, ts, ts_local, d, f8, f4, n, txt, j, b, iv, arr) VALUES
 ('min', '4714-11-24 00:00:00+00 BC', '4714-11-24 00:00:00 BC', '4714-11-24 BC', '-1.7976931348623157e308', '-3.4028235e38', '-1e-130', '', '{}', '', '-178000000 years', '{}'),
 ('max', '294276-12-31 23:59:59.999999+00', '294276-12-31 23:59:59.999999', '5874897-12-31', '1.7976931348623157e308', '3.4028235e38', '1e130', 'end', '[]', '\xff', '178000000 years', '{z}'),
 ('infinity', 'infinity', 'infinity', 'infinity', 'Infinity', 'Infinity', 'NaN', NULL, 'null', NULL, NULL, NULL),
 ('-infinity', '-infinity', '-infinity', '-infinity', '-Infinity', '-Infinity', '-0', NULL, NULL, NULL, NULL, NULL),
 ('negative zero', '2000-01-01 00:00:00+00', '2000-01-01 00:00:00', '2000-01-01', '-0', '-0', '0.000', '-0', '{"n": -0}', '\x00', '0', '{-0}'),
 ('nan', '1970-01-01 00:00:00+00', '1970-01-01 00:00:00', '1970-01-01', 'NaN', 'NaN', 'NaN', 'NaN', '{"n": 1e400}', '\x4e614e', '1 microsecond', '{NaN}'),
 ('subnormal', '2038-01-19 03:14:07+00', '2038-01-19 03:14:08', '2000-02-29', '4.9e-324', '1.4e-45', '0.30000000000000004', 'tiny', '{"f": 5e-324}', NULL, '-1 microsecond', NULL),
 ('44 BC', '0044-03-15 12:00:00+00 BC', '0044-03-15 12:00:00 BC', '0044-03-15 BC', '0.1', '0.1', '44', 'Ides of March', '{"era": "BC"}', '\x2c', '1 day -1 second', '{BC}'),
 ('44 AD', '0044-03-15 12:00:00+00', '0044-03-15 12:00:00', '0044-03-15', '0.1', '0.1', '44', 'Ides of March', '{"era": "AD"}', '\x2c', '1 day -1 second', '{AD}'),
 ('1 BC / 1 AD', '0001-12-31 23:59:59.999999+00 BC', '0001-01-01 00:00:00', '0001-01-01 BC', '1', '1', '1', 'turn', NULL, NULL, NULL, NULL),
 ('dst gap', '2026-03-08 02:30:00 America/New_York', '2026-03-08 02:30:00', '2026-03-08', '2', '2', '2', 'gap', NULL, NULL, NULL, NULL),
 ('lmt', '1850-06-01 12:00:00 Europe/Paris', '1850-06-01 12:00:00', '1850-06-01', '3', '3', '3', 'local mean time', NULL, NULL, NULL, NULL),
 ('unicode', '2026-11-23 06:31:51.123456+00', NULL, NULL, NULL, NULL, NULL, E'😀 ünïcödé 中文 \u0001', '{"😀": "ü", "dup": 1, "dup": 2}', convert_to('😀', 'UTF8'), NULL, '{"a,b","c\"d",NULL,"😀"}'),
 ('delimiters', NULL, NULL, NULL, NULL, NULL, NULL, E'tab\there\nnew line\\backslash|pipe,comma"quote''apos', '{"s": "\t\n\\"}', '\x5c5c', NULL, '{"\t","\n","\\"}');
"#;

/// The whole prove loop on a database pgproof creates for the purpose, configured by
/// its builder methods and done by [`run`](Drill::run).
///
/// It creates `pgproof_drill` (replacing a leftover one), migrates the audit chain,
/// writes a workload and edge values, backs up into the sink, wipes the database and
/// confirms it is empty, restores into it, runs the verifiers and records the
/// verification. The database is dropped at the end. Failed checks are in the report.
#[must_use = "a Drill does nothing until run"]
pub struct Drill {
    scope: Scope,
    server: ConnParams,
    sink: Arc<dyn Sink>,
    dumper: Arc<dyn Dumper>,
    keys: Option<(Recipients, Identities)>,
    audit_rows: i64,
    pg_bin_dir: Option<PathBuf>,
}

impl Drill {
    /// A drill on `server` (where pgproof may create and drop `pgproof_drill`) through
    /// `sink`, in the custom format, unencrypted unless [`keys`](Self::keys) are
    /// given, with 1000 audit events.
    pub fn new(server: ConnParams, sink: Arc<dyn Sink>) -> Self {
        Self {
            scope: Scope::current_or_new(),
            server,
            sink,
            dumper: Arc::new(CustomDumper),
            keys: None,
            audit_rows: 1000,
            pg_bin_dir: None,
        }
    }

    /// The dumper (archive format).
    pub fn dumper(mut self, dumper: Arc<dyn Dumper>) -> Self {
        self.dumper = dumper;
        self
    }

    /// Encrypts to `recipients` and restores with `identities` (which must match).
    pub fn keys(mut self, recipients: Recipients, identities: Identities) -> Self {
        self.keys = Some((recipients, identities));
        self
    }

    /// Audit events to write.
    pub fn audit_rows(mut self, rows: i64) -> Self {
        self.audit_rows = rows;
        self
    }

    /// The directory of PostgreSQL programs.
    pub fn pg_bin_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.pg_bin_dir = dir;
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

    /// Runs the drill.
    pub async fn run(self) -> Result<DrillOutcome> {
        let scope = self.scope.clone();
        scope.run(self.execute()).await
    }

    async fn execute(self) -> Result<DrillOutcome> {
        let started = Instant::now();
        let target = self.server.with_dbname(DRILL_DATABASE);
        let _ = drop_restored(&target).await;
        let server = self.server.connect().await?;
        let canceller = self.server.canceller(&server);
        let registered = create_dropped_on_cancel(&self.scope, &target, canceller, async move {
            server
                .batch_execute(&format!(
                    "CREATE DATABASE {DRILL_DATABASE} TEMPLATE template0 ENCODING 'UTF8'"
                ))
                .await
                .map_err(db_err("creating the drill database"))
        })
        .await?;
        let result = self.drill_in(&target).await;
        let dropped = drop_restored(&target).await;
        registered.keep();
        let mut outcome = result?;
        dropped?;
        outcome.duration = started.elapsed();
        Ok(outcome)
    }

    async fn drill_in(&self, target: &ConnParams) -> Result<DrillOutcome> {
        let mut client = target.connect().await?;
        audit::migrate(&mut client).await?;
        client
        .execute(
            "INSERT INTO pgproof.audit_events (actor, action, subject, occurred_at, details) \
             SELECT 'user-' || (g % 17), (ARRAY['issue','renew','revoke','login'])[1 + g % 4], \
                    'cert-' || (g / 4), timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second', \
                    jsonb_build_object('n', g, 'note', repeat('x', (g % 7)::int)) \
             FROM generate_series(1, $1::int8) g",
            &[&self.audit_rows],
        )
        .await
        .map_err(db_err("writing audit events"))?;
        client
            .batch_execute(
                "INSERT INTO pgproof.audit_events (actor, action, subject, occurred_at) VALUES \
             ('edge', 'login', 'bc', '0044-03-15 12:00:00+00 BC'), \
             ('edge', 'login', 'ad', '0044-03-15 12:00:00+00'), \
             ('edge', 'login', 'far', '294276-12-31 23:59:59.999999+00'), \
             ('edge', 'login', 'inf', 'infinity')",
            )
            .await
            .map_err(db_err("writing edge audit events"))?;
        client
            .batch_execute(EDGE_VALUES)
            .await
            .map_err(db_err("writing edge values"))?;
        let edge_values: i64 = client
            .query_one("SELECT count(*) FROM drill_edge_values", &[])
            .await
            .map_err(db_err("counting edge values"))?
            .get(0);
        let audit_rows = self.audit_rows + 4;
        drop(client);

        let mut backup = Backup::new(target.clone(), self.sink.clone())
            .dumper(self.dumper.clone())
            .pg_bin_dir(self.pg_bin_dir.clone())
            .lock_wait(Duration::from_secs(60));
        backup = match &self.keys {
            Some((recipients, _)) => backup.recipients(recipients.clone()),
            None => backup.unencrypted(),
        };
        let mut manifest = backup.run().await?;
        let manifest_sha256 = catalog::load_manifest(&*self.sink, &BackupRef::of(&manifest))
            .await?
            .1;
        // The verifiers judge the settings too.
        catalog::unseal(
            &mut manifest,
            &*self.sink,
            self.keys.as_ref().map(|(_, ids)| ids),
        )
        .await?;

        let mut checks = vec![wipe(target).await?];
        let restore = Restore::new(self.sink.clone(), manifest.clone(), target.clone())
            .identities(self.keys.as_ref().map(|(_, ids)| ids.clone()))
            .dumper(self.dumper.clone())
            .create_roles(true)
            .pg_bin_dir(self.pg_bin_dir.clone());
        let verifiers = standard_verifiers();
        let proof = Proof {
            sink: &*self.sink,
            manifest: &manifest,
            manifest_sha256: &manifest_sha256,
            verifiers: &verifiers,
        };
        // The caller drops the drill database once the drill is over.
        let (proven, restore_ms) = proof.restore_and_verify(restore, target, false).await?;
        checks.extend(proven);
        let report = new_report(&manifest, &manifest_sha256, target, checks, restore_ms);
        write_report(&*self.sink, &report).await?;
        Ok(DrillOutcome {
            manifest,
            report,
            audit_rows,
            edge_values,
            duration: Duration::ZERO,
        })
    }
}

/// Drops everything the drill created and proves the database is empty: a wipe that
/// did nothing would let the drill pass on the original data.
async fn wipe(target: &ConnParams) -> Result<Check> {
    let client = target.connect().await?;
    client
        .batch_execute(
            "DROP SCHEMA pgproof CASCADE; DROP TABLE drill_edge_values; \
             DROP TABLE refinery_schema_history; \
             SELECT lo_unlink(oid) FROM pg_largeobject_metadata",
        )
        .await
        .map_err(db_err("wiping the drill database"))?;
    let left = user_objects(&client).await?
        + crate::pg::query_count(
            &client,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'pgproof'",
            "checking the wipe",
        )
        .await?;
    Ok(if left == 0 {
        Check::pass("wipe", "schema dropped; no relation or large object left")
    } else {
        Check::fail("wipe", format!("{left} objects survived the wipe"))
    })
}

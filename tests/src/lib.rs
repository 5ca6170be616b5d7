//! Shared harness for pgproof's workspace-level tests: ephemeral clusters, a scratch
//! workspace with keys and a config file, the `pgproof` binary, SQL helpers, and the servers the
//! object-store sinks are tested against: [`moto`] (a real S3 server, in server
//! mode), [`gcs_server`] (an in-process GCS XML-API server), [`azurite`] (Azure Blob
//! Storage's emulator) and a killable [`proxy`].

// A harness reports failure by panicking; unwrap is its assert.
#![allow(clippy::unwrap_used)]

pub mod azurite;
pub mod cases;
pub mod gcs_server;
pub mod hooked;
pub mod moto;
pub mod oracle;
pub mod proxy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pgproof_core::pg::PgTools;
use pgproof_core::scratch::EphemeralCluster;
use tokio_postgres::Client;

/// True when a missing service must fail the run (CI sets it via `scripts/test`).
pub fn services_required() -> bool {
    std::env::var("PGPROOF_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Reports a missing service: a failure when services are required, otherwise a
/// loud skip on stderr.
pub fn missing_service(what: &str) {
    assert!(
        !services_required(),
        "{what} is required (PGPROOF_REQUIRE_SERVICES=1) but unavailable"
    );
    // Straight to the process's stderr, past the harness's capture, so scripts/test
    // counts it among the skipped.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: {what} unavailable; set PGPROOF_REQUIRE_SERVICES=1 to make this a failure ***"
    );
}

/// Starts an ephemeral cluster, or returns `None` after [`missing_service`].
pub fn start_cluster() -> Option<EphemeralCluster> {
    let bin_dir = std::env::var_os("PGPROOF_TEST_PG_BIN_DIR").map(PathBuf::from);
    match EphemeralCluster::start(bin_dir.as_deref()) {
        Ok(cluster) => Some(cluster),
        Err(e) => {
            missing_service(&format!("PostgreSQL ({e})"));
            None
        }
    }
}

/// Whether PostgreSQL server programs are installed, for tests whose subject starts
/// its own cluster; reports a missing one like [`start_cluster`] does.
pub fn postgres_available() -> bool {
    let bin_dir = std::env::var_os("PGPROOF_TEST_PG_BIN_DIR").map(PathBuf::from);
    match PgTools::find(bin_dir.as_deref(), 0, &["initdb", "pg_ctl", "postgres"]) {
        Ok(_) => true,
        Err(e) => {
            missing_service(&format!("PostgreSQL ({e})"));
            false
        }
    }
}

/// Connects to `database` on the cluster.
pub async fn connect(cluster: &EphemeralCluster, database: &str) -> Client {
    cluster
        .params(database)
        .expect("cluster URL parses")
        .connect()
        .await
        .expect("connect to the ephemeral cluster")
}

/// Creates `database` on the cluster and connects to it.
pub async fn create_database(cluster: &EphemeralCluster, database: &str) -> Client {
    connect(cluster, "postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {database}: {e}"));
    connect(cluster, database).await
}

/// A signed catalog object's payload and signature (the signature is empty for an
/// unsigned one).
pub fn split_signed(stored: &str) -> (&str, &str) {
    match stored.find("\n-----BEGIN SSH SIGNATURE-----\n") {
        Some(at) => stored.split_at(at + 1),
        None => (stored, ""),
    }
}

/// `ssh-keygen -Y sign -f key -n namespace` over `payload`: the armored signature.
pub fn ssh_keygen_sign(key: &Path, namespace: &str, payload: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-f"])
        .arg(key)
        .args(["-n", namespace])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ssh-keygen (openssh-client) runs");
    child.stdin.take().unwrap().write_all(payload).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "ssh-keygen -Y sign: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// How many processes' command lines contain `pattern` (`pgrep -f`).
pub fn processes_matching(pattern: &str) -> usize {
    let out = Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .expect("pgrep (procps) runs");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// `input` through `program args` (stdin to stdout), fed from a thread so neither
/// side can block the other.
pub fn pipe_through(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{program} failed");
    out.stdout
}

/// The `pgproof` binary built alongside this test.
pub fn pgproof_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/pgproof
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("pgproof");
    assert!(
        bin.is_file(),
        "{} not built; run the tests with `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// A scratch directory with an age key pair, a sink directory and a config file
/// pointing at a cluster's `app` database.
pub struct Workspace {
    /// Holds everything below.
    pub dir: tempfile::TempDir,
    /// Identity file.
    pub key: PathBuf,
    /// Its public key.
    pub public_key: String,
    /// The signing key (OpenSSH Ed25519) the config names.
    pub signing_key: PathBuf,
    /// Its public key line.
    pub signing_public: String,
    /// Sink directory.
    pub sink: PathBuf,
    /// Config file.
    pub config: PathBuf,
    /// Extra environment for every `pgproof` run (object-store credentials).
    pub env: Vec<(String, String)>,
}

impl Workspace {
    /// Creates keys and a config for `cluster`'s database `database`, format `format`
    /// (`dedup`: the directory format, deduplicated in chunks of 16 KiB on average, so
    /// that small test tables cut into several), backing up into the local directory
    /// [`sink`](Self::sink).
    pub fn new(cluster: &EphemeralCluster, database: &str, format: &str) -> Self {
        Self::with_sink(cluster, database, format, None)
    }

    /// Like [`new`](Self::new) with `sink_section` (the body of `[sink]`, TOML) instead
    /// of the local directory.
    pub fn with_sink(
        cluster: &EphemeralCluster,
        database: &str,
        format: &str,
        sink_section: Option<&str>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("age.key");
        let out = run(
            &pgproof_bin(),
            &["keygen", "--output", key.to_str().unwrap()],
        );
        assert!(out.status.success(), "keygen failed: {}", stderr(&out));
        let public_key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let signing_key = dir.path().join("signing.key");
        let out = run(
            &pgproof_bin(),
            &[
                "keygen",
                "--signing",
                "--output",
                signing_key.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "keygen --signing failed: {}",
            stderr(&out)
        );
        let signing_public = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let sink = dir.path().join("sink");
        let config = dir.path().join("pgproof.toml");
        let ws = Self {
            dir,
            key,
            public_key,
            signing_key,
            signing_public,
            sink,
            config,
            env: Vec::new(),
        };
        let sink_section = match sink_section {
            Some(section) => section.to_owned(),
            None => format!("url = \"file://{}\"\n", ws.sink.display()),
        };
        let (format, dedup) = match format {
            "dedup" => ("directory", "dedup = true\ndedup_chunk_kib = 16\n"),
            other => (other, ""),
        };
        ws.write_config(&format!(
            r#"[source]
url = "{url}"
pg_bin_dir = "{bin}"

[dump]
format = "{format}"
{dedup}
[encryption]
recipients = ["{public}"]
identity_file = "{key}"

[signing]
key_file = "{signing}"

[sink]
{sink_section}"#,
            url = cluster.url(database),
            bin = cluster.tools().dir().display(),
            public = ws.public_key,
            key = ws.key.display(),
            signing = ws.signing_key.display(),
        ));
        ws
    }

    /// Gives every `pgproof` run the moto test server's credentials.
    pub fn use_moto_credentials(&mut self) {
        self.env
            .push(("AWS_ACCESS_KEY_ID".into(), moto::ACCESS_KEY.into()));
        self.env
            .push(("AWS_SECRET_ACCESS_KEY".into(), moto::SECRET_KEY.into()));
    }

    /// Makes `verify` restore into `cluster` (its `postgres` database's server)
    /// instead of starting an ephemeral cluster of its own.
    pub fn verify_on(&self, cluster: &EphemeralCluster) {
        let config = std::fs::read_to_string(&self.config).expect("read config");
        self.write_config(&format!(
            "{config}\n[verify]\nscratch_url = \"{}\"\n",
            cluster.url("postgres")
        ));
    }

    /// Replaces the config file.
    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).expect("write config");
    }

    /// Runs `pgproof --config <ws config> args…`.
    pub fn pgproof(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run pgproof")
    }

    /// The command [`pgproof`](Self::pgproof) runs, for tests that need to spawn it.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut full = vec!["--config", self.config.to_str().unwrap()];
        full.extend_from_slice(args);
        let mut cmd = command(&pgproof_bin(), &full);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs `pgproof` with the clock injected at `now` (`PGPROOF_NOW`, RFC 3339).
    pub fn pgproof_at(&self, now: &str, args: &[&str]) -> Output {
        self.command(args)
            .env("PGPROOF_NOW", now)
            .output()
            .expect("run pgproof")
    }

    /// Like [`pgproof`](Self::pgproof) but asserts success and returns stdout.
    pub fn pgproof_ok(&self, args: &[&str]) -> String {
        let out = self.pgproof(args);
        assert!(
            out.status.success(),
            "pgproof {args:?} failed ({}): {}",
            out.status,
            stderr(&out)
        );
        String::from_utf8(out.stdout).expect("utf8 stdout")
    }

    /// Backs up and returns the manifest as JSON.
    pub fn backup(&self) -> serde_json::Value {
        let out = self.pgproof_ok(&["backup", "--json"]);
        let mut list: Vec<serde_json::Value> = serde_json::from_str(&out).expect("backup --json");
        assert_eq!(list.len(), 1, "one database, one manifest: {out}");
        list.remove(0)
    }

    /// Rewrites the catalog object `key` of the local sink through `edit` and signs
    /// the result with the workspace's signing key — by `ssh-keygen -Y sign`, the
    /// reference tool, not by pgproof: what an operator holding the key could write.
    pub fn edit_signed(&self, key: &str, edit: impl FnOnce(String) -> String) {
        let path = self.sink.join(key);
        let stored = std::fs::read_to_string(&path).expect("read the catalog object");
        let (payload, _) = split_signed(&stored);
        let mut payload = edit(payload.to_owned());
        if !payload.ends_with('\n') {
            payload.push('\n');
        }
        let signature = ssh_keygen_sign(&self.signing_key, key, payload.as_bytes());
        std::fs::write(&path, format!("{payload}{signature}")).expect("write it back");
    }

    /// Every regular file under the sink directory, relative paths.
    pub fn sink_files(&self) -> Vec<String> {
        let mut files = Vec::new();
        let mut pending = vec![self.sink.clone()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    files.push(path.strip_prefix(&self.sink).unwrap().display().to_string());
                }
            }
        }
        files.sort();
        files
    }
}

/// Runs a program with the test's environment minus anything that would change
/// pgproof's configuration behind the test's back.
pub fn run(program: &Path, args: &[&str]) -> Output {
    command(program, args).output().expect("run program")
}

/// The command [`run`] runs, for tests that need to spawn it.
pub fn command(program: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if (key.starts_with("PGPROOF_") && key != "PGPROOF_CLUSTER_USER")
            || key.starts_with("PG") && !key.starts_with("PGPROOF")
        {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// A process's stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Per user table: row count and md5 of the rows' text in sorted order. Both sides are
/// read with the same session settings on the same server, so text is comparable here.
pub async fn table_summary(client: &Client) -> BTreeMap<String, (i64, String)> {
    let tables = client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg\\_toast%' ORDER BY 1",
            &[],
        )
        .await
        .expect("list tables");
    let mut out = BTreeMap::new();
    for row in tables {
        let name: String = row.get(0);
        let q = format!(
            "SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') FROM {name} t"
        );
        let r = client.query_one(&q, &[]).await.expect("summarize table");
        out.insert(name, (r.get(0), r.get(1)));
    }
    let lo = client
        .query_one(
            "SELECT count(*), coalesce(md5(string_agg(md5(lo_get(oid)), ',' ORDER BY oid)), '') FROM pg_largeobject_metadata",
            &[],
        )
        .await
        .expect("summarize large objects");
    out.insert("<large objects>".into(), (lo.get(0), lo.get(1)));
    out
}

/// Whether a database exists on the cluster.
pub async fn database_exists(cluster: &EphemeralCluster, database: &str) -> bool {
    connect(cluster, "postgres")
        .await
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await
        .expect("query pg_database")
        .is_some()
}

/// Data of many types: edge timestamps, numerics, floats, jsonb, bytea, arrays, text
/// with delimiters, a mixed-case schema and table, large objects and a sequence.
pub const SAMPLE_DATA: &str = r#"
CREATE TABLE kinds (
  id bigserial PRIMARY KEY,
  ts timestamptz, t timestamp, d date, n numeric, f float8, j jsonb, b bytea,
  arr int[], txt text[], u uuid, iv interval, ip inet, ok boolean
);
INSERT INTO kinds (ts, t, d, n, f, j, b, arr, txt, u, iv, ip, ok) VALUES
 ('4713-01-01 00:00:00+00 BC', '294276-12-31 23:59:59.999999', '5874897-12-31', 'NaN', '-0',
  '{"a":[1,2,{"b":null}],"k":"é","big":1e308}', '\x00ff', '{1,NULL,3}', '{"a,b","c\"d",NULL}',
  '00000000-0000-0000-0000-000000000000', '-178000000 years', '::1/128', true),
 ('infinity', '-infinity', 'infinity', '123456789012345678901234567890.123456789', 'Infinity',
  '[]', '', '{}', '{}', gen_random_uuid(), '1 day', '10.0.0.1', false),
 ('2000-01-01 00:00:00.000001+14', '1970-01-01', '0044-03-15 BC', '-0.000000001', '5e-324',
  '{"emoji":"😀"}', decode(repeat('ab', 1000), 'hex'), '{{1,2},{3,4}}',
  E'{"tab\\there","new\\nline","back\\\\slash"}', NULL, NULL, NULL, NULL),
 ('-infinity', NULL, '-infinity', '-0', 'NaN', 'null', NULL, NULL, NULL, NULL, NULL, NULL, NULL);
INSERT INTO kinds (ts, n, f, j, b)
  SELECT timestamptz '2026-01-01 00:00:00+00' - g * interval '1 minute', g * 1.5, g / 7.0,
         jsonb_build_object('g', g), sha256(g::text::bytea)
  FROM generate_series(1, 5000) g;
CREATE SCHEMA "Other Schema";
CREATE TABLE "Other Schema"."Mixed Case" (k text PRIMARY KEY, v text);
INSERT INTO "Other Schema"."Mixed Case" SELECT 'k' || g, repeat('x|	\', g % 50) FROM generate_series(1, 1000) g;
SELECT lo_from_bytea(0, convert_to('large object one', 'UTF8'));
SELECT lo_from_bytea(0, decode(repeat('00ff', 50000), 'hex'));
CREATE VIEW kinds_count AS SELECT count(*) FROM kinds;
CREATE SEQUENCE counter;
SELECT setval('counter', 42);
"#;

/// Creates `database` on the cluster and loads [`SAMPLE_DATA`].
pub async fn create_sample_database(cluster: &EphemeralCluster, database: &str) -> Client {
    connect(cluster, "postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE \"{database}\""))
        .await
        .expect("create database");
    let client = connect(cluster, database).await;
    client
        .batch_execute(SAMPLE_DATA)
        .await
        .expect("load sample data");
    client
}

/// A database of about `mib` MiB of incompressible bytes (md5 output), so its dump
/// is about as large: 16 KiB per row.
pub async fn create_big_database(cluster: &EphemeralCluster, database: &str, mib: usize) {
    let rows = mib * 64;
    create_blob_database(
        cluster,
        database,
        &format!(
            "SELECT g, decode(string_agg(md5(g::text || ':' || i::text), '' ORDER BY i), 'hex')
             FROM generate_series(1, {rows}) g, generate_series(1, 1024) i GROUP BY g"
        ),
    )
    .await;
}

/// A database of `mib` rows of 1 MiB of random bytes each, read server-side from
/// `/dev/urandom` (the tests connect as superuser): hundreds of MiB in seconds, and
/// nothing any codec can shrink, so the dump is at least as large as the data.
pub async fn create_random_database(cluster: &EphemeralCluster, database: &str, mib: u64) {
    create_blob_database(
        cluster,
        database,
        &format!(
            "SELECT g, pg_read_binary_file('/dev/urandom', 0, 1048576)
             FROM generate_series(1, {mib}) g"
        ),
    )
    .await;
}

/// `database` with one table `blob (id int PRIMARY KEY, data bytea)`, stored out of
/// line, filled by `rows` (a query of `(id, data)` rows).
async fn create_blob_database(cluster: &EphemeralCluster, database: &str, rows: &str) {
    connect(cluster, "postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .expect("create the database");
    connect(cluster, database)
        .await
        .batch_execute(&format!(
            "CREATE TABLE blob (id int PRIMARY KEY, data bytea);
             ALTER TABLE blob ALTER COLUMN data SET STORAGE EXTERNAL;
             INSERT INTO blob {rows};"
        ))
        .await
        .expect("fill the database");
}

//! PostgreSQL plumbing: connection parameters, client tools, exported snapshots.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, NoTls};

use crate::error::{Error, Result};

/// Where and as whom to connect: a libpq URI or `key=value` string, with gaps filled
/// from the standard `PG*` environment variables.
///
/// The same parameters drive the SQL connections pgproof makes itself and the client
/// programs it runs; those get them through their environment, never their argv, so a
/// password cannot show up in `ps`.
#[derive(Clone)]
pub struct ConnParams {
    config: tokio_postgres::Config,
}

impl std::fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnParams({})", self.describe())
    }
}

impl ConnParams {
    /// Parses a libpq URI (`postgres://user@host:port/db?host=/socket/dir`) or
    /// `key=value` string; `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD` and `PGDATABASE`
    /// fill what it leaves out, as libpq would.
    pub fn parse(url: &str) -> Result<Self> {
        Self::parse_with_env(url, |name| std::env::var(name).ok())
    }

    /// [`parse`](Self::parse) with an explicit environment, for tests.
    pub fn parse_with_env(url: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            // The parser's message never echoes the URL, so no password leaks here.
            Error::Config(format!(
                "cannot parse the PostgreSQL connection URL: {e}; expected postgres://user@host:port/database"
            ))
        })?;
        if !matches!(config.get_ssl_mode(), SslMode::Disable | SslMode::Prefer) {
            return Err(Error::Config(
                "sslmode=require is not supported by this build of pgproof yet; connect over a unix socket or use sslmode=prefer".into(),
            ));
        }
        if config.get_hosts().is_empty() {
            match env("PGHOST") {
                Some(hosts) => {
                    for h in hosts.split(',') {
                        config.host(h);
                    }
                }
                None if Path::new("/var/run/postgresql").is_dir() => {
                    config.host_path("/var/run/postgresql");
                }
                None => {
                    config.host("localhost");
                }
            }
        }
        // tokio-postgres fills in 5432 for a URL host without a port; libpq would
        // take PGPORT there, so pgproof does too.
        if !names_port(url)
            && let Some(port) = env("PGPORT")
        {
            let port = port
                .parse::<u16>()
                .map_err(|_| Error::Config(format!("PGPORT={port:?} is not a port number")))?;
            let hosts = config.get_hosts().len().max(1);
            // Config cannot clear ports; rebuild it without them.
            let mut fresh = rebuild_without_ports(&config);
            for _ in 0..hosts {
                fresh.port(port);
            }
            config = fresh;
        }
        if config.get_user().is_none() {
            let user = env("PGUSER")
                .or_else(|| env("USER"))
                .unwrap_or_else(|| "postgres".into());
            config.user(user);
        }
        if config.get_password().is_none()
            && let Some(pw) = env("PGPASSWORD")
        {
            config.password(pw);
        }
        if config.get_dbname().is_none() {
            let db = env("PGDATABASE")
                .or_else(|| config.get_user().map(str::to_owned))
                .unwrap_or_else(|| "postgres".into());
            config.dbname(db);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("pgproof");
        }
        Ok(Self { config })
    }

    /// The database these parameters connect to.
    pub fn dbname(&self) -> &str {
        self.config.get_dbname().unwrap_or("postgres")
    }

    /// The same server and credentials, another database.
    pub fn with_dbname(&self, dbname: &str) -> Self {
        let mut config = self.config.clone();
        config.dbname(dbname);
        Self { config }
    }

    /// `user@host:port/database`, safe to log: never includes the password.
    pub fn describe(&self) -> String {
        let hosts = self.host_list();
        let ports = self.port_list();
        format!(
            "{}@{}:{}/{}",
            self.config.get_user().unwrap_or(""),
            hosts,
            if ports.is_empty() {
                "5432".into()
            } else {
                ports
            },
            self.dbname()
        )
    }

    fn host_list(&self) -> String {
        self.config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    fn port_list(&self) -> String {
        self.config
            .get_ports()
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Environment for a libpq client program (pg_dump, pg_restore, psql): the password
    /// travels here, never on the command line.
    pub fn child_env(&self) -> Vec<(&'static str, OsString)> {
        let mut env: Vec<(&'static str, OsString)> = vec![
            ("PGHOST", self.host_list().into()),
            ("PGUSER", self.config.get_user().unwrap_or("").into()),
            ("PGDATABASE", self.dbname().into()),
            ("PGAPPNAME", "pgproof".into()),
        ];
        let ports = self.port_list();
        if !ports.is_empty() {
            env.push(("PGPORT", ports.into()));
        }
        if let Some(pw) = self.config.get_password() {
            env.push((
                "PGPASSWORD",
                String::from_utf8_lossy(pw).into_owned().into(),
            ));
        }
        if let Some(t) = self.config.get_connect_timeout() {
            env.push(("PGCONNECT_TIMEOUT", t.as_secs().max(2).to_string().into()));
        }
        if self.config.get_ssl_mode() == SslMode::Disable {
            env.push(("PGSSLMODE", "disable".into()));
        }
        env
    }

    /// Opens a SQL connection; the connection task runs on the current tokio runtime.
    /// Without a password in the URL or `PGPASSWORD`, the passfile (`PGPASSFILE` or
    /// `~/.pgpass`) is consulted as libpq would.
    pub async fn connect(&self) -> Result<Client> {
        let mut config = self.config.clone();
        if config.get_password().is_none()
            && let Some(pw) = self.passfile_password()
        {
            config.password(pw);
        }
        let (client, connection) = config.connect(NoTls).await.map_err(|e| {
            let msg = e.to_string();
            let text = format!(
                "cannot connect to PostgreSQL at {}: {}",
                self.describe(),
                e.as_db_error().map_or(msg, |db| db.message().to_owned())
            );
            if e.as_db_error().is_some_and(|db| db.code().code().starts_with("28")) {
                Error::Auth(format!("{text}; check the user and password (URL, PGPASSWORD)"))
            } else {
                Error::Database(format!(
                    "{text}; check that the server runs and the URL's host, port and database are right"
                ))
            }
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection closed with an error");
            }
        });
        Ok(client)
    }
}

/// Whether a connection string sets a port itself.
fn names_port(url: &str) -> bool {
    if url.contains("port=") {
        return true;
    }
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    hosts
        .split(',')
        .any(|h| h.rsplit_once(']').map_or(h, |(_, tail)| tail).contains(':'))
}

fn rebuild_without_ports(config: &tokio_postgres::Config) -> tokio_postgres::Config {
    let mut fresh = tokio_postgres::Config::new();
    for host in config.get_hosts() {
        match host {
            Host::Tcp(name) => fresh.host(name),
            Host::Unix(path) => fresh.host_path(path),
        };
    }
    if let Some(user) = config.get_user() {
        fresh.user(user);
    }
    if let Some(pw) = config.get_password() {
        fresh.password(pw);
    }
    if let Some(db) = config.get_dbname() {
        fresh.dbname(db);
    }
    if let Some(app) = config.get_application_name() {
        fresh.application_name(app);
    }
    if let Some(t) = config.get_connect_timeout() {
        fresh.connect_timeout(*t);
    }
    if let Some(opts) = config.get_options() {
        fresh.options(opts);
    }
    fresh.ssl_mode(config.get_ssl_mode());
    fresh
}

impl ConnParams {
    fn passfile_password(&self) -> Option<String> {
        let path = match std::env::var_os("PGPASSFILE") {
            Some(p) => PathBuf::from(p),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".pgpass"),
        };
        let meta = std::fs::metadata(&path).ok()?;
        if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0 {
            tracing::warn!(file = %path.display(), "password file is readable by others; ignored, as libpq does (chmod 0600 it)");
            return None;
        }
        let text = std::fs::read_to_string(&path).ok()?;
        let host = self.config.get_hosts().first()?;
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        passfile_lookup(&text, host, port, self.dbname(), self.config.get_user()?)
    }
}

/// The password for the first matching line of a libpq password file.
fn passfile_lookup(text: &str, host: &Host, port: u16, dbname: &str, user: &str) -> Option<String> {
    let (host_name, is_socket) = match host {
        Host::Tcp(name) => (name.clone(), false),
        Host::Unix(path) => (path.display().to_string(), true),
    };
    let port = port.to_string();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_passfile_line(line);
        let [h, p, d, u, pw] = fields.as_slice() else {
            continue;
        };
        let host_ok = h == "*" || *h == host_name || (is_socket && h == "localhost");
        if host_ok
            && (p == "*" || *p == port)
            && (d == "*" || d == dbname)
            && (u == "*" || u == user)
        {
            return Some(pw.clone());
        }
    }
    None
}

fn split_passfile_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(next), Some(field)) = (chars.next(), fields.last_mut()) {
                    field.push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            _ => {
                if let Some(field) = fields.last_mut() {
                    field.push(c);
                }
            }
        }
    }
    fields
}

/// A PostgreSQL server's version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    /// `server_version`, e.g. `15.18 (Debian 15.18-0+deb12u1)`.
    pub version: String,
    /// `server_version_num`, e.g. `150018`.
    pub version_num: i32,
}

impl ServerInfo {
    /// Asks the server.
    pub async fn query(client: &Client) -> Result<Self> {
        let row = client
            .query_one(
                "SELECT current_setting('server_version'), current_setting('server_version_num')::int4",
                &[],
            )
            .await
            .map_err(db_err("reading the server version"))?;
        Ok(Self {
            version: row.get(0),
            version_num: row.get(1),
        })
    }

    /// The major version (15 for 15.18).
    pub fn major(&self) -> u32 {
        (self.version_num / 10000) as u32
    }
}

/// Maps a tokio-postgres error to [`Error::Database`], saying what was being done.
pub fn db_err(doing: &'static str) -> impl Fn(tokio_postgres::Error) -> Error {
    move |e| {
        let detail = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        };
        Error::Database(format!("PostgreSQL error while {doing}: {detail}"))
    }
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A transaction that exported its snapshot, held open so `pg_dump --snapshot` (and the
/// fingerprint, run on [`client`](Self::client)) see exactly the same data.
pub struct SnapshotSession {
    client: Client,
    snapshot_id: String,
    server: ServerInfo,
    encoding: String,
}

impl SnapshotSession {
    /// Connects, opens a REPEATABLE READ READ ONLY transaction and exports its
    /// snapshot. `lock_wait` bounds how long it waits for a table lock.
    pub async fn open(params: &ConnParams, lock_wait: Duration) -> Result<Self> {
        let client = params.connect().await?;
        // The session idles while pg_dump works and the fingerprint may scan a big
        // table: server-side timeouts must not end the snapshot under pg_dump.
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; \
                 SET LOCAL statement_timeout = 0; SET LOCAL idle_in_transaction_session_timeout = 0; \
                 SET LOCAL lock_timeout = '{}s'",
                lock_wait.as_secs().max(1)
            ))
            .await
            .map_err(db_err("opening the snapshot transaction"))?;
        let row = client
            .query_one(
                "SELECT pg_export_snapshot(), pg_encoding_to_char(d.encoding)::text \
                 FROM pg_database d WHERE d.datname = current_database()",
                &[],
            )
            .await
            .map_err(db_err("exporting a snapshot"))?;
        let server = ServerInfo::query(&client).await?;
        Ok(Self {
            snapshot_id: row.get(0),
            encoding: row.get(1),
            client,
            server,
        })
    }

    /// The exported snapshot's id, for `pg_dump --snapshot`.
    pub fn snapshot_id(&self) -> &str {
        &self.snapshot_id
    }

    /// The connection inside the snapshot transaction: queries here see the dump's data.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Lists and locks the tables and reads the sequences, as of the snapshot: run it
    /// before pg_dump starts (see [`crate::fingerprint::Plan`]).
    pub async fn prepare_fingerprint(&self) -> Result<crate::fingerprint::Plan> {
        crate::fingerprint::Plan::prepare(&self.client).await
    }

    /// Hashes the tables as of the snapshot (see [`crate::fingerprint`]).
    pub async fn fingerprint(
        &self,
        plan: crate::fingerprint::Plan,
    ) -> Result<crate::fingerprint::Fingerprint> {
        plan.compute(&self.client).await
    }

    /// The source server's version.
    pub fn server(&self) -> &ServerInfo {
        &self.server
    }

    /// The source database's encoding (e.g. `UTF8`).
    pub fn encoding(&self) -> &str {
        &self.encoding
    }

    /// Ends the transaction, releasing the snapshot.
    pub async fn close(self) -> Result<()> {
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(db_err("closing the snapshot transaction"))
    }
}

/// A directory of PostgreSQL client/server programs of one major version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgTools {
    dir: PathBuf,
    version: String,
    major: u32,
}

impl PgTools {
    /// Finds the newest PostgreSQL bin directory whose major version is at least
    /// `min_major` and that holds every program in `programs`.
    ///
    /// With `explicit_dir` (config `source.pg_bin_dir`) only that directory is
    /// considered; otherwise the usual install locations and `PATH`.
    pub fn find(explicit_dir: Option<&Path>, min_major: u32, programs: &[&str]) -> Result<Self> {
        let candidates = match explicit_dir {
            Some(dir) => vec![dir.to_path_buf()],
            None => candidate_dirs(),
        };
        let mut found: Vec<PgTools> = Vec::new();
        for dir in candidates {
            if !programs.iter().all(|p| dir.join(p).is_file()) {
                continue;
            }
            let Ok(canonical) = dir.canonicalize() else {
                continue;
            };
            if found.iter().any(|t| t.dir == canonical) {
                continue;
            }
            if let Some(tools) = Self::probe(&canonical, programs[0]) {
                found.push(tools);
            }
        }
        found.sort_by_key(|t| std::cmp::Reverse(t.major));
        if let Some(best) = found.iter().find(|t| t.major >= min_major) {
            return Ok(best.clone());
        }
        let seen = if found.is_empty() {
            "none found".to_owned()
        } else {
            found
                .iter()
                .map(|t| format!("{} in {}", t.version, t.dir.display()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let where_ = match explicit_dir {
            Some(dir) => format!("in source.pg_bin_dir {}", dir.display()),
            None => "in the usual install directories or PATH".to_owned(),
        };
        Err(Error::Tool(format!(
            "need {} of PostgreSQL {min_major} or newer {where_}, but found: {seen}; install a matching client package or set source.pg_bin_dir",
            programs.join("/")
        )))
    }

    fn probe(dir: &Path, program: &str) -> Option<Self> {
        let out = Command::new(dir.join(program))
            .arg("--version")
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (version, major) = parse_version_output(&text)?;
        Some(Self {
            dir: dir.to_path_buf(),
            version,
            major,
        })
    }

    /// Path of a program in this directory.
    pub fn bin(&self, program: &str) -> PathBuf {
        self.dir.join(program)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Version string as the programs print it (e.g. `15.18`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Major version.
    pub fn major(&self) -> u32 {
        self.major
    }
}

fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let globbed = [
        ("/usr/lib/postgresql", ""),
        ("/usr", "pgsql-"),
        ("/opt/homebrew/opt", "postgresql@"),
        ("/usr/local/opt", "postgresql@"),
    ];
    for (parent, prefix) in globbed {
        if let Ok(entries) = std::fs::read_dir(parent) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(prefix) {
                    dirs.push(entry.path().join("bin"));
                }
            }
        }
    }
    dirs.push(PathBuf::from("/usr/local/pgsql/bin"));
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs
}

/// Parses `pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` into `("15.18", 15)`.
pub fn parse_version_output(text: &str) -> Option<(String, u32)> {
    let rest = text.split("(PostgreSQL)").nth(1)?;
    let version = rest.split_whitespace().next()?.to_owned();
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    let major = digits.parse().ok()?;
    Some((version, major))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn tool_search_names_the_versions_it_found() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("pg_dump");
        std::fs::write(&script, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 14.11'\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

        let found = PgTools::find(Some(dir.path()), 14, &["pg_dump"]).unwrap();
        assert_eq!((found.major(), found.version()), (14, "14.11"));

        let err = PgTools::find(Some(dir.path()), 16, &["pg_dump"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("PostgreSQL 16 or newer"), "{err}");
        assert!(err.contains("14.11 in"), "{err}");
        assert!(err.contains("source.pg_bin_dir"), "{err}");

        let err = PgTools::find(Some(dir.path()), 14, &["pg_dump", "pg_restore"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("none found"), "{err}");
    }

    #[test]
    fn passfile_lines_match_like_libpq() {
        let text = "# comment\nother:5432:*:app:nope\n*:6543:*:app:wrongport\ndb.example:5432:app:app:s3cr\\:et\nlocalhost:*:*:*:socketpw\n";
        let tcp = Host::Tcp("db.example".into());
        assert_eq!(
            passfile_lookup(text, &tcp, 5432, "app", "app"),
            Some("s3cr:et".into())
        );
        assert_eq!(
            passfile_lookup(text, &tcp, 6543, "app", "app"),
            Some("wrongport".into())
        );
        assert_eq!(passfile_lookup(text, &tcp, 5432, "other", "app"), None);
        let socket = Host::Unix("/var/run/postgresql".into());
        assert_eq!(
            passfile_lookup(text, &socket, 5432, "x", "y"),
            Some("socketpw".into())
        );
    }

    #[test]
    fn versions_parse_across_packagings() {
        assert_eq!(
            parse_version_output("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(("15.18".into(), 15))
        );
        assert_eq!(
            parse_version_output("pg_dump (PostgreSQL) 18devel"),
            Some(("18devel".into(), 18))
        );
        assert_eq!(parse_version_output("something else"), None);
    }

    #[test]
    fn pg_env_fills_only_what_the_url_leaves_out() {
        let env = [
            ("PGHOST", "db.example"),
            ("PGPORT", "6543"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "envsecret"),
            ("PGDATABASE", "envdb"),
        ];
        let p =
            ConnParams::parse_with_env("postgres://urluser@urlhost/urldb", env_of(&env)).unwrap();
        assert_eq!(p.describe(), "urluser@urlhost:6543/urldb");
        let child: Vec<_> = p.child_env();
        let get = |k: &str| child.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        assert_eq!(get("PGPASSWORD"), Some("envsecret".into()));
        assert_eq!(get("PGHOST"), Some("urlhost".into()));

        let p = ConnParams::parse_with_env("", env_of(&env)).unwrap();
        assert_eq!(p.describe(), "envuser@db.example:6543/envdb");
    }

    #[test]
    fn described_params_never_show_the_password() {
        let p = ConnParams::parse_with_env("postgres://u:hunter2@h:1/d", |_| None).unwrap();
        assert!(!p.describe().contains("hunter2"));
        assert!(!format!("{p:?}").contains("hunter2"));
    }

    #[test]
    fn a_bad_url_names_the_problem_without_echoing_it() {
        let err = ConnParams::parse_with_env("postgres://u:hunter2@h:notaport/d", |_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot parse"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}

//! Connection parameters with libpq's meaning: URI or `key=value`, `PG*` variables,
//! the password file; handed to pgproof's own connections and to child programs.

use std::ffi::OsString;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, NoTls};

use crate::error::{Error, Result};
use crate::pg::tls::{self, TlsOptions};

/// How long a connection may take to be established when neither the URL's
/// `connect_timeout` nor `PGCONNECT_TIMEOUT` says.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and as whom to connect: a libpq URI or `key=value` string, with gaps filled
/// from the standard `PG*` environment variables.
///
/// The same parameters drive the SQL connections pgproof makes itself and the client
/// programs it runs; those get them through their environment, never their argv, so a
/// password cannot show up in `ps`.
#[derive(Clone)]
pub struct ConnParams {
    config: tokio_postgres::Config,
    tls: TlsOptions,
}

impl std::fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnParams({})", self.describe())
    }
}

impl ConnParams {
    /// Parses a libpq URI (`postgres://user@host:port/db?host=/socket/dir`) or
    /// `key=value` string; `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`,
    /// `PGCONNECT_TIMEOUT` and `PGSSLMODE`/`PGSSLROOTCERT`/`PGSSLCERT`/`PGSSLKEY` fill
    /// what it leaves out, as libpq would.
    pub fn parse(url: &str) -> Result<Self> {
        Self::parse_with_env(url, |name| std::env::var(name).ok())
    }

    /// [`parse`](Self::parse) with an explicit environment, for tests.
    pub fn parse_with_env(url: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let (rest, tls_options) = TlsOptions::split(url)?;
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| {
            // The parser's message never echoes the URL, so no password leaks here.
            Error::config(format!(
                "cannot parse the PostgreSQL connection URL: {e}; expected postgres://user@host:port/database"
            ))
        })?;
        let tls = TlsOptions::resolve(&tls_options, &env)?;
        config.ssl_mode(match tls.mode {
            tls::SslMode::Disable | tls::SslMode::Allow => SslMode::Disable,
            tls::SslMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        });
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
                .map_err(|_| Error::config(format!("PGPORT={port:?} is not a port number")))?;
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
            let from_env = match env("PGCONNECT_TIMEOUT") {
                Some(secs) => Some(secs.trim().parse::<u64>().map_err(|_| {
                    Error::config(format!(
                        "PGCONNECT_TIMEOUT={secs:?} is not a whole number of seconds"
                    ))
                })?),
                None => None,
            };
            // libpq's 0 means "wait forever"; pgproof never waits forever.
            let secs = from_env
                .filter(|s| *s > 0)
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT.as_secs());
            config.connect_timeout(Duration::from_secs(secs));
        }
        if config.get_application_name().is_none() {
            config.application_name("pgproof");
        }
        Ok(Self { config, tls })
    }

    /// The same parameters with another connect timeout (for pgproof's connections
    /// and, through `PGCONNECT_TIMEOUT`, its child programs').
    pub fn with_connect_timeout(&self, timeout: Duration) -> Self {
        let mut config = self.config.clone();
        config.connect_timeout(timeout.max(Duration::from_secs(1)));
        Self {
            config,
            tls: self.tls.clone(),
        }
    }

    /// How long establishing a connection may take, handshake included.
    pub fn connect_timeout(&self) -> Duration {
        self.config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// The database these parameters connect to.
    pub fn dbname(&self) -> &str {
        self.config.get_dbname().unwrap_or("postgres")
    }

    /// The same server and credentials, another database.
    pub fn with_dbname(&self, dbname: &str) -> Self {
        let mut config = self.config.clone();
        config.dbname(dbname);
        Self {
            config,
            tls: self.tls.clone(),
        }
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
        env.extend(
            self.tls
                .child_env()
                .into_iter()
                .map(|(k, v)| (k, OsString::from(v))),
        );
        env
    }

    /// Whether connections go without TLS: over unix sockets, where servers never
    /// offer it (libpq ignores sslmode there), or with sslmode=disable.
    fn without_tls(&self) -> bool {
        self.tls.mode == tls::SslMode::Disable
            || self
                .config
                .get_hosts()
                .iter()
                .all(|h| matches!(h, Host::Unix(_)))
    }

    /// What cancels, from elsewhere, the statement `client` (connected with these
    /// parameters) runs.
    pub fn canceller(&self, client: &Client) -> Canceller {
        Canceller {
            params: self.clone(),
            token: client.cancel_token(),
        }
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
        // tokio-postgres bounds only the socket connect; libpq's connect_timeout covers
        // the whole establishment, so a server that accepts and never answers (a dead
        // load balancer) cannot hang pgproof.
        let timeout = self.connect_timeout();
        let connecting = if self.without_tls() {
            config.ssl_mode(SslMode::Disable);
            tokio::time::timeout(timeout, establish(config, NoTls)).await
        } else {
            let connector = self.tls.connector()?;
            tokio::time::timeout(timeout, async {
                let first = establish(config.clone(), connector.clone()).await;
                match first {
                    // allow: plain first; TLS only when the plain attempt is refused.
                    Err(_) if self.tls.mode == tls::SslMode::Allow => {
                        config.ssl_mode(SslMode::Require);
                        establish(config, connector).await
                    }
                    other => other,
                }
            })
            .await
        };
        let connecting = connecting
            .map_err(|_| {
                Error::database(format!(
                    "cannot connect to PostgreSQL at {}: no answer within {}s (connect_timeout); check that the host and port reach a PostgreSQL server",
                    self.describe(),
                    timeout.as_secs()
                ))
            })?;
        let (client, connection) = connecting.map_err(|e| {
            let msg = e.to_string();
            let text = format!(
                "cannot connect to PostgreSQL at {}: {}",
                self.describe(),
                e.as_db_error().map_or(msg, |db| db.message().to_owned())
            );
            if e.as_db_error().is_some_and(|db| db.code().code().starts_with("28")) {
                Error::auth(format!("{text}; check the user and password (URL, PGPASSWORD)"))
            } else if e.as_db_error().is_none()
                && (text.contains("TLS") || text.contains("certificate") || text.contains("tls"))
            {
                Error::database(format!(
                    "{text}; check sslmode ({}), that sslrootcert is the CA that signed the server's certificate and that the certificate names the host you connect to",
                    self.tls.mode.as_str()
                ))
            } else {
                Error::database(format!(
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

/// Connects with `tls`, returning the client and its connection driver.
async fn establish<T>(
    config: tokio_postgres::Config,
    tls: T,
) -> std::result::Result<
    (
        Client,
        std::pin::Pin<
            Box<
                dyn std::future::Future<Output = std::result::Result<(), tokio_postgres::Error>>
                    + Send,
            >,
        >,
    ),
    tokio_postgres::Error,
>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as tokio_postgres::tls::TlsConnect<tokio_postgres::Socket>>::Future: Send,
{
    let (client, connection) = config.connect(tls).await?;
    Ok((client, Box::pin(connection)))
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
        let host = self.config.get_hosts().first()?;
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        super::passfile::lookup(host, port, self.dbname(), self.config.get_user()?)
    }
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
    fn connect_timeout_comes_from_the_url_then_the_environment_then_30s() {
        let url = ConnParams::parse_with_env("postgres://u@h/d?connect_timeout=7", |k| {
            (k == "PGCONNECT_TIMEOUT").then(|| "3".into())
        })
        .unwrap();
        assert_eq!(url.connect_timeout(), Duration::from_secs(7));
        let env = [("PGCONNECT_TIMEOUT", "3")];
        let from_env = ConnParams::parse_with_env("postgres://u@h/d", env_of(&env)).unwrap();
        assert_eq!(from_env.connect_timeout(), Duration::from_secs(3));
        let forever = [("PGCONNECT_TIMEOUT", "0")];
        let never_forever =
            ConnParams::parse_with_env("postgres://u@h/d", env_of(&forever)).unwrap();
        assert_eq!(never_forever.connect_timeout(), DEFAULT_CONNECT_TIMEOUT);
        let child = from_env.child_env();
        assert!(child.contains(&("PGCONNECT_TIMEOUT", "3".into())));
        let bad = [("PGCONNECT_TIMEOUT", "soon")];
        assert!(ConnParams::parse_with_env("postgres://u@h/d", env_of(&bad)).is_err());
    }

    #[tokio::test]
    async fn a_server_that_accepts_and_never_answers_times_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let params = ConnParams::parse_with_env(
            &format!("postgres://u@127.0.0.1:{port}/d?connect_timeout=1"),
            |_| None,
        )
        .unwrap();
        let started = std::time::Instant::now();
        let err = params.connect().await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(err.to_string().contains("no answer within 1s"), "{err}");
        drop(listener);
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

/// Cancels the statement one session runs, from elsewhere, as libpq's PQcancel does:
/// with the session's own key, which names that session alone (a server process id
/// may name another session by the time it is used).
#[derive(Clone)]
pub struct Canceller {
    params: ConnParams,
    token: tokio_postgres::CancelToken,
}

impl Canceller {
    /// Asks the server to cancel the session's statement, if it still runs one;
    /// within the connect timeout, as any connection.
    pub async fn cancel(&self) -> Result<()> {
        let timeout = self.params.connect_timeout();
        let sent = if self.params.without_tls() {
            tokio::time::timeout(timeout, self.token.cancel_query(NoTls)).await
        } else {
            let connector = self.params.tls.connector()?;
            tokio::time::timeout(timeout, self.token.cancel_query(connector)).await
        };
        let sent = sent.map_err(|_| {
            Error::database(format!(
                "cannot cancel a statement on {}: no answer within {}s (connect_timeout)",
                self.params.describe(),
                timeout.as_secs()
            ))
        })?;
        sent.map_err(|e| {
            Error::database(format!(
                "cannot cancel a statement on {}: {e}",
                self.params.describe()
            ))
        })
    }
}

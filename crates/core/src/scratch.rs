//! The scratch cluster: a throwaway PostgreSQL (initdb + pg_ctl in a temp dir, unix
//! socket only), stopped and removed on drop. Verification restores into it by
//! default; tests and the drill use it too.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::error::{Error, Result};
use crate::pg::process::{is_running, one_line};
use crate::pg::{ConnParams, PgTools};

/// The superuser every ephemeral cluster is created with.
pub const SUPERUSER: &str = "postgres";

/// A running ephemeral cluster.
#[derive(Debug)]
pub struct EphemeralCluster {
    dir: tempfile::TempDir,
    tools: PgTools,
    run_as: Option<String>,
    port: u16,
}

impl EphemeralCluster {
    /// Creates and starts a cluster with the newest PostgreSQL found (or the one in
    /// `bin_dir`). As root, the server runs as `$PGPROOF_CLUSTER_USER` or `postgres`,
    /// since initdb refuses root.
    pub fn start(bin_dir: Option<&Path>) -> Result<Self> {
        Self::start_listening(bin_dir, None)
    }

    /// [`start`](Self::start), also listening on 127.0.0.1 at `tcp_port` when given
    /// (for tests of TCP-only behaviour such as TLS).
    pub fn start_listening(bin_dir: Option<&Path>, tcp_port: Option<u16>) -> Result<Self> {
        let tools = PgTools::find(bin_dir, 0, &["initdb", "pg_ctl", "postgres"])?;
        let run_as = if is_root() {
            Some(std::env::var("PGPROOF_CLUSTER_USER").unwrap_or_else(|_| "postgres".into()))
        } else {
            None
        };
        reap_abandoned(&tools, run_as.as_deref());
        let dir = tempfile::Builder::new()
            .prefix(PREFIX)
            .tempdir()
            .map_err(|e| Error::io("cannot create a temp dir for the ephemeral cluster", e))?;
        // Who owns it: a run killed with SIGKILL cannot stop its cluster, so the next
        // one does, once this process is gone.
        std::fs::write(dir.path().join(OWNER), std::process::id().to_string())
            .map_err(|e| Error::io("cannot mark the ephemeral cluster's owner", e))?;
        if let Some(user) = &run_as {
            chown_to(dir.path(), user)?;
        }
        // Clients running as other users (or root without CAP_DAC_OVERRIDE) must reach
        // the socket; the data directory inside stays 0700.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .map_err(|e| Error::io("cannot open up the ephemeral cluster's directory", e))?;
        let cluster = Self {
            dir,
            tools,
            run_as,
            port: tcp_port.unwrap_or(5432),
        };
        let data = cluster.data_dir();
        cluster.run(
            "initdb",
            &[
                "--pgdata",
                &data.to_string_lossy(),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ],
        )?;
        let listen = if tcp_port.is_some() { "127.0.0.1" } else { "" };
        let opts = format!(
            "-c listen_addresses='{listen}' -k {} -p {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            cluster.dir.path().display(),
            cluster.port
        );
        cluster.run(
            "pg_ctl",
            &[
                "--pgdata",
                &data.to_string_lossy(),
                "--log",
                &cluster.dir.path().join("server.log").to_string_lossy(),
                "--options",
                &opts,
                "--wait",
                "start",
            ],
        )?;
        Ok(cluster)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        let bin = self.tools.bin(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.args(args).current_dir(self.dir.path());
        let out = cmd
            .output()
            .map_err(|e| Error::tool(format!("cannot run {}: {e}", bin.display())))?;
        if !out.status.success() {
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            return Err(Error::tool(format!(
                "{program} failed for the ephemeral cluster ({}): {} {}",
                out.status,
                one_line(&String::from_utf8_lossy(&out.stderr)),
                one_line(&log)
            )));
        }
        Ok(out)
    }

    /// The server's data directory (configuration files included).
    pub fn data_directory(&self) -> PathBuf {
        self.data_dir()
    }

    /// The port the server listens on (its unix socket's, and TCP's when listening).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user the server runs as, when not this process's.
    pub fn run_as(&self) -> Option<&str> {
        self.run_as.as_deref()
    }

    /// The directory holding the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The PostgreSQL tools the cluster runs.
    pub fn tools(&self) -> &PgTools {
        &self.tools
    }

    /// A libpq URI for `database` as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@/{database}?host={}&port={}",
            self.socket_dir().display(),
            self.port
        )
    }

    /// Connection parameters for `database` as the superuser.
    pub fn params(&self, database: &str) -> Result<ConnParams> {
        ConnParams::parse_with_env(&self.url(database), |_| None)
    }
}

impl Drop for EphemeralCluster {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = self.run(
            "pg_ctl",
            &[
                "--pgdata",
                &data.to_string_lossy(),
                "--mode",
                "immediate",
                "--wait",
                "stop",
            ],
        );
    }
}

const PREFIX: &str = "pgproof-cluster-";
const OWNER: &str = "owner.pid";

/// Stops and removes the ephemeral clusters that runs which no longer exist left in
/// the temp directory (a run killed with SIGKILL cannot clean up after itself).
fn reap_abandoned(tools: &PgTools, run_as: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_name().to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let Some(owner) = std::fs::read_to_string(path.join(OWNER))
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if is_running(owner) {
            continue;
        }
        let data = path.join("data");
        if data.join("postmaster.pid").exists() {
            let pg_ctl = tools.bin("pg_ctl");
            let mut cmd = match run_as {
                Some(user) => {
                    let mut c = Command::new("runuser");
                    c.args(["-u", user, "--"]).arg(&pg_ctl);
                    c
                }
                None => Command::new(&pg_ctl),
            };
            let _ = cmd
                .arg("--pgdata")
                .arg(&data)
                .args(["--mode", "immediate", "--wait", "stop"])
                .output();
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(dir = %path.display(), owner, "removed an ephemeral cluster left by a run that died")
            }
            Err(e) => {
                tracing::warn!(dir = %path.display(), error = %e, "cannot remove an ephemeral cluster left by a run that died")
            }
        }
    }
}

fn is_root() -> bool {
    // /proc/self belongs to our effective uid; this avoids unsafe geteuid().
    std::fs::metadata("/proc/self").is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    })
}

fn chown_to(path: &Path, user: &str) -> Result<()> {
    let out = Command::new("chown")
        .arg(user)
        .arg(path)
        .output()
        .map_err(|e| Error::tool(format!("cannot run chown: {e}")))?;
    if !out.status.success() {
        return Err(Error::tool(format!(
            "cannot hand {} to user {user} for the ephemeral cluster: {}; set PGPROOF_CLUSTER_USER to an existing unprivileged user",
            path.display(),
            one_line(&String::from_utf8_lossy(&out.stderr))
        )));
    }
    Ok(())
}

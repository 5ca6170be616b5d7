//! Hooks and notifications around a backup run: `[hooks] before` / `after` commands
//! (no shell; the outcome in their environment; a timeout; their output logged) and a
//! webhook (`[notify] url`) that receives a JSON summary, retried. A failing hook or
//! webhook is reported; it never hides or changes the backup's own result — except a
//! failing `before` hook, which stops the run before it starts (nothing is backed up
//! when what must precede it did not happen).

use std::process::Stdio;
use std::time::Duration;

use jiff::Timestamp;
use pgproof_core::{Error, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::render::error_line;

/// `[hooks]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// Program and arguments to run before the backup; a failure stops the run.
    pub before: Vec<String>,
    /// Program and arguments to run after it, whatever the outcome.
    pub after: Vec<String>,
    /// How long a hook may run before it is killed, in seconds.
    pub timeout_secs: u64,
    /// Environment variables a hook gets from pgproof's own environment besides
    /// `PATH`, `HOME` and the `PGPROOF_*` outcome: nothing else reaches it (pgproof's
    /// environment holds database passwords and cloud credentials).
    pub env: Vec<String>,
}

impl Default for HooksConfig {
    fn default() -> Self {
        Self {
            before: Vec::new(),
            after: Vec::new(),
            timeout_secs: 300,
            env: Vec::new(),
        }
    }
}

/// When the webhook is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyOn {
    /// After a run that failed in any way.
    Failure,
    /// After a run that succeeded.
    Success,
}

/// `[notify]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Where the JSON summary is POSTed (its query may hold a token: never logged).
    pub url: Option<String>,
    /// On which outcomes.
    pub on: Vec<NotifyOn>,
    /// Attempts before giving up.
    pub attempts: u32,
    /// Per attempt, in seconds.
    pub timeout_secs: u64,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            url: None,
            on: vec![NotifyOn::Failure],
            attempts: 4,
            timeout_secs: 10,
        }
    }
}

/// What a run did, for the after hook and the webhook.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    /// `pgproof`.
    pub tool: &'static str,
    /// Its version.
    pub version: &'static str,
    /// The command (`backup`).
    pub command: &'static str,
    /// `success` or `failure`.
    pub outcome: &'static str,
    /// The exit code pgproof ends with.
    pub exit_code: u8,
    /// When the run started and ended.
    pub started_at: Timestamp,
    /// See `started_at`.
    pub finished_at: Timestamp,
    /// Committed backups.
    pub backups: Vec<BackupSummary>,
    /// Databases whose backup failed, with the error.
    pub failed: Vec<FailedSummary>,
    /// The run's error line, if it failed.
    pub error: Option<String>,
}

/// One committed backup.
#[derive(Clone, Debug, Serialize)]
pub struct BackupSummary {
    /// Database.
    pub database: String,
    /// Backup id.
    pub backup_id: String,
    /// Stored bytes.
    pub stored_bytes: u64,
}

/// One failed database.
#[derive(Clone, Debug, Serialize)]
pub struct FailedSummary {
    /// Database.
    pub database: String,
    /// The error, one line.
    pub error: String,
}

/// Runs the before hook, if any.
pub async fn before(hooks: &HooksConfig) -> Result<()> {
    if hooks.before.is_empty() {
        return Ok(());
    }
    run_hook("before", hooks, &hooks.before, &[]).await
}

/// Runs the after hook, if any; a failure is logged, never returned.
pub async fn after(hooks: &HooksConfig, summary: &RunSummary) {
    if hooks.after.is_empty() {
        return;
    }
    let env = summary_env(summary);
    if let Err(e) = run_hook("after", hooks, &hooks.after, &env).await {
        tracing::error!(error = %error_line(&e), "the after hook failed; the run's own result stands");
    }
}

fn summary_env(s: &RunSummary) -> Vec<(&'static str, String)> {
    vec![
        ("PGPROOF_OUTCOME", s.outcome.to_owned()),
        ("PGPROOF_EXIT_CODE", s.exit_code.to_string()),
        (
            "PGPROOF_BACKUPS",
            s.backups
                .iter()
                .map(|b| format!("{}/{}", b.database, b.backup_id))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        (
            "PGPROOF_FAILED",
            s.failed
                .iter()
                .map(|f| f.database.clone())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        ("PGPROOF_ERROR", s.error.clone().unwrap_or_default()),
    ]
}

async fn run_hook(
    which: &'static str,
    hooks: &HooksConfig,
    argv: &[String],
    env: &[(&'static str, String)],
) -> Result<()> {
    let timeout_secs = hooks.timeout_secs;
    let program = &argv[0];
    let mut command = tokio::process::Command::new(program);
    // A clean environment: pgproof's holds PGPASSWORD, AWS_SECRET_ACCESS_KEY and the
    // like, which a hook (and the log of its output) must not see.
    command.env_clear();
    for name in ["PATH", "HOME"]
        .iter()
        .copied()
        .chain(hooks.env.iter().map(String::as_str))
    {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    if std::env::var_os("PATH").is_none() {
        command.env("PATH", "/usr/local/bin:/usr/bin:/bin");
    }
    let mut child = command
        .args(&argv[1..])
        .env("PGPROOF_HOOK", which)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            Error::config(format!(
                "cannot run the {which} hook {program}: {e}; hooks run without a shell, so give the program's path and its arguments as a list"
            ))
            .with_operation("hook")
        })?;
    let log = |stream: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>, is_err: bool| {
        tokio::spawn(async move {
            let Some(stream) = stream else { return };
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if is_err {
                    tracing::warn!(hook = which, "{line}");
                } else {
                    tracing::info!(hook = which, "{line}");
                }
            }
        })
    };
    let out = log(child.stdout.take().map(|s| Box::new(s) as _), false);
    let err = log(child.stderr.take().map(|s| Box::new(s) as _), true);
    let waited = tokio::time::timeout(Duration::from_secs(timeout_secs.max(1)), child.wait()).await;
    let status = match waited {
        Ok(status) => status.map_err(|e| Error::io(format!("waiting for the {which} hook"), e))?,
        Err(_) => {
            let _ = child.kill().await;
            return Err(Error::tool(format!(
                "the {which} hook {program} ran longer than {timeout_secs}s and was killed; raise hooks.timeout_secs or make it faster"
            )));
        }
    };
    let _ = tokio::join!(out, err);
    if status.success() {
        tracing::info!(hook = which, program = %program, "hook succeeded");
        Ok(())
    } else {
        Err(Error::tool(format!(
            "the {which} hook {program} failed ({status}); its output is in the log above"
        )))
    }
}

/// A webhook URL as it may be shown: scheme and host only, since path and query
/// often are the secret (Slack, Teams, ntfy tokens).
pub fn redact_webhook(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?']).next().unwrap_or("");
            let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
            format!("{scheme}://{host}/****")
        }
        None => "****".into(),
    }
}

/// POSTs the summary when `[notify]` asks for this outcome, retrying; a failure is
/// logged, never returned.
pub async fn notify(config: &NotifyConfig, summary: &RunSummary) {
    let Some(url) = &config.url else { return };
    let wanted = if summary.outcome == "success" {
        NotifyOn::Success
    } else {
        NotifyOn::Failure
    };
    if !config.on.contains(&wanted) {
        return;
    }
    if let Err(e) = post(config, url, summary).await {
        tracing::error!(error = %e, "the notification webhook failed; the run's own result stands");
    }
}

async fn post(
    config: &NotifyConfig,
    url: &str,
    summary: &RunSummary,
) -> std::result::Result<(), String> {
    pgproof_sink_object_store::install_crypto_provider();
    let shown = redact_webhook(url);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(config.timeout_secs.max(1)))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let body =
        serde_json::to_vec(summary).map_err(|e| format!("cannot serialize the summary: {e}"))?;
    let attempts = config.attempts.max(1);
    let mut pause = Duration::from_millis(500);
    let mut last = String::new();
    for attempt in 1..=attempts {
        match client
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => {
                tracing::info!(url = %shown, attempt, "notification sent");
                return Ok(());
            }
            Ok(resp) => last = format!("HTTP {}", resp.status()),
            // reqwest's error may quote the URL, token and all.
            Err(e) => {
                last = if e.is_timeout() {
                    "timed out".into()
                } else if e.is_connect() {
                    "could not connect".into()
                } else {
                    "request failed".into()
                }
            }
        }
        if attempt < attempts {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
    Err(format!("{shown}: {last} after {attempts} attempts"))
}

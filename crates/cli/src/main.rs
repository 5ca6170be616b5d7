//! pgproof: logical PostgreSQL backups that are proven, not assumed.
//!
//! A thin binary over `pgproof-core` and the sink crates: `args` (clap) says what can
//! be asked, `settings` (figment) layers the configuration whose shape is `config`,
//! `engines` turns it into a sink and keys, `commands` holds one file per subcommand
//! and `render` prints.

mod args;
mod commands;
mod config;
mod engines;
mod hooks;
mod render;
mod settings;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use pgproof_core::scope::Scope;
use pgproof_core::{Error, ErrorKind};

use crate::args::{Cli, LogFormat};

fn init_logging(cli: &Cli) {
    let level = match (cli.verbose, cli.quiet) {
        (0, 0) => tracing::Level::INFO,
        (1, _) => tracing::Level::DEBUG,
        (v, _) if v >= 2 => tracing::Level::TRACE,
        (_, 1) => tracing::Level::WARN,
        _ => tracing::Level::ERROR,
    };
    // Library chatter (server NOTICEs, migration steps) only when asked for with -v.
    let quiet_deps = if level < tracing::Level::DEBUG {
        ",tokio_postgres=warn,refinery_core=warn"
    } else {
        ""
    };
    let filter = tracing_subscriber::EnvFilter::new(format!(
        "{}{quiet_deps}",
        level.as_str().to_lowercase()
    ));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Exit code for an error, as documented in `--help`.
pub(crate) fn exit_code(e: &Error) -> u8 {
    match e.kind() {
        ErrorKind::Config => 2,
        ErrorKind::Integrity | ErrorKind::Key => 3,
        _ => 1,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgproof: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // Everything the command starts belongs to this scope: a signal stops and undoes
    // exactly that.
    let scope = Scope::new();
    let outcome = runtime.block_on(async {
        // Registered before the command starts: a command may block its thread for a
        // while (starting an ephemeral cluster), and a signal arriving before the
        // handlers exist would end pgproof without cleaning up.
        let mut signals = match Signals::register() {
            Ok(signals) => signals,
            Err(e) => return Err(Err(e)),
        };
        tokio::select! {
            biased;
            signal = signals.first() => Err(Ok(signal)),
            done = scope.run(commands::run(cli)) => Ok(done),
        }
    });
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("pgproof: error: {}", render::error_line(&e));
            ExitCode::from(exit_code(&e))
        }
        // The command's future is gone by now: its uploads were told to abort, its
        // temp files removed and its ephemeral cluster stopped as they were dropped.
        Err(Ok((name, number))) => {
            let done = runtime.block_on(scope.clean_up(Duration::from_secs(20)));
            let done = if done.is_empty() {
                "nothing was left to clean up".to_owned()
            } else {
                done.join(", ")
            };
            eprintln!("pgproof: interrupted by {name}; {done}");
            ExitCode::from(128 + number)
        }
        Err(Err(e)) => {
            eprintln!("pgproof: error: cannot watch for signals: {e}");
            ExitCode::from(1)
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP, caught from registration on.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The first to arrive, by name and number.
    async fn first(&mut self) -> (&'static str, u8) {
        tokio::select! {
            _ = self.int.recv() => ("SIGINT", 2),
            _ = self.term.recv() => ("SIGTERM", 15),
            _ = self.hup.recv() => ("SIGHUP", 1),
        }
    }
}

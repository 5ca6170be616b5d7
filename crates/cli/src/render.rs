//! What the CLI prints: reports, JSON, sizes, errors with the config key that fixes
//! them, and progress bars on a terminal. Output to a closed pipe (`pgproof list |
//! head`) is dropped quietly instead of panicking.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pgproof_core::codec::Progress;
use pgproof_core::verify::Report;
use pgproof_core::{Error, Result, Setting};

use crate::args::{Annotations, Cli, LogFormat};

/// Writes one line to stdout; a closed pipe is not an error worth dying for. Names in
/// it came from sinks, servers and configs: control characters are escaped (a table
/// keeps its newlines and tabs), so none reaches the terminal raw.
pub fn out_line(args: std::fmt::Arguments<'_>) {
    let text = args.to_string();
    let shown: String = text
        .chars()
        .map(|c| match c {
            '\n' | '\t' => c.to_string(),
            c if c.is_control() => c.escape_default().to_string(),
            c => c.to_string(),
        })
        .collect();
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(shown.as_bytes())
        .and_then(|()| stdout.write_all(b"\n"))
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        tracing::warn!(error = %e, "cannot write to standard output");
    }
}

/// `println!` that survives a closed pipe.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::render::out_line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// The config key or flag that sets a library [`Setting`].
fn setting_key(setting: Setting) -> &'static str {
    match setting {
        Setting::PgBinDir => "source.pg_bin_dir",
        Setting::Recipients => {
            "encryption.recipients or encryption.recipients_file; encryption.enabled = false stores unencrypted"
        }
        Setting::Identity => "encryption.identity_file or --identity",
        Setting::Clean => "--clean",
        Setting::Force => "--force",
        Setting::CreateRoles => "--create-roles",
        Setting::CreatePrivilegedRoles => {
            "--create-privileged-roles on restore; verify creates them only in its ephemeral cluster"
        }
        Setting::SigningKey => "signing.key_file; pgproof keygen --signing --output FILE makes one",
        Setting::TrustedKeys => "trust.keys or trust.keys_file",
        Setting::TablespaceDir => "--tablespace-dir NAME=DIR",
        _ => "see pgproof --help",
    }
}

/// An error as the CLI shows it: the library's message, then the key that fixes it.
pub fn error_line(e: &Error) -> String {
    match e.setting() {
        Some(setting) => format!("{e} ({})", setting_key(setting)),
        None => e.to_string(),
    }
}

/// Pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::tool(format!("cannot render JSON: {e}")))?;
    outln!("{text}");
    Ok(())
}

/// A verification report, one line per check and a verdict line.
pub fn print_report(report: &Report, annotations: Annotations) {
    for check in &report.checks {
        match (check.passed, annotations) {
            (true, _) => outln!("  ok    {:<40} {}", check.name, check.detail),
            (false, Annotations::Github) => outln!(
                "::error title=pgproof {}::{}: {}",
                check.name,
                report.backup_id,
                check.detail.replace('\n', " ")
            ),
            (false, Annotations::None) => outln!("  FAIL  {:<40} {}", check.name, check.detail),
        }
    }
    let passed = report.checks.iter().filter(|c| c.passed).count();
    let rto = report.restore_ms.map_or("restore failed".to_owned(), |ms| {
        format!("restore {:.2}s", ms as f64 / 1000.0)
    });
    outln!(
        "{} {} ({}): {passed}/{} checks passed, {rto}",
        if report.passed { "PASS" } else { "FAIL" },
        report.backup_id,
        report.database,
        report.checks.len()
    );
}

/// `12.3 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Progress bars on stderr when it is a terminal and logs are for humans; nothing
/// otherwise.
pub struct ProgressOutput {
    enabled: bool,
}

impl ProgressOutput {
    /// Decides from the terminal and the log flags.
    pub fn new(cli: &Cli) -> Self {
        Self {
            enabled: std::io::stderr().is_terminal()
                && cli.quiet == 0
                && cli.log_format == LogFormat::Text,
        }
    }

    /// A bar labelled `label` and the callback that moves it.
    pub fn start(&self, label: String) -> (ProgressBar, Option<Progress>) {
        if !self.enabled {
            return (ProgressBar::hidden(), None);
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} {prefix} {bytes} at {binary_bytes_per_sec}, {elapsed}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_prefix(label);
        bar.enable_steady_tick(Duration::from_millis(200));
        let handle = bar.clone();
        let callback: Progress = Arc::new(move |bytes| handle.set_position(bytes));
        (bar, Some(callback))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_a_person_writes_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }

    #[test]
    fn errors_name_the_key_that_fixes_them() {
        let e = Error::tool("need pg_dump").with_setting(Setting::PgBinDir);
        assert_eq!(error_line(&e), "need pg_dump (source.pg_bin_dir)");
        assert_eq!(error_line(&Error::tool("plain")), "plain");
    }
}

//! Child programs (pg_dump, pg_restore, psql): started with the connection in their
//! environment, their stderr drained on a thread of its own, their failure told in
//! one line.

use std::io::Read;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use crate::error::{Error, ErrorKind, Result, Setting};
use crate::pg::{ConnParams, PgTools};

/// How much of a child's stderr is kept for the error message.
const STDERR_KEEP: usize = 16 << 10;

/// A command for `program` from `tools`, connecting as `conn` says: parameters and
/// password travel in the environment, never in argv; stderr is piped.
pub fn client_command(tools: &PgTools, program: &str, conn: &ConnParams) -> Command {
    let mut cmd = Command::new(tools.bin(program));
    cmd.envs(conn.child_env()).stderr(Stdio::piped());
    cmd
}

/// A running child program whose stderr tail is being kept.
pub struct ChildProgram {
    child: Child,
    program: String,
    stderr: Option<JoinHandle<String>>,
}

impl ChildProgram {
    /// Starts `cmd`, naming it `program` in errors.
    pub fn spawn(mut cmd: Command, program: &str) -> Result<Self> {
        let mut child = cmd.spawn().map_err(|e| {
            Error::tool(format!(
                "cannot start {program} ({}): {e}; check the PostgreSQL bin directory",
                cmd.get_program().to_string_lossy()
            ))
            .with_setting(Setting::PgBinDir)
        })?;
        let stderr = child.stderr.take().map(|mut err| {
            // A chatty child must never block on a full pipe.
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                let mut buf = [0u8; 8192];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    kept.extend_from_slice(&buf[..n]);
                    if kept.len() > STDERR_KEEP {
                        kept.drain(..kept.len() - STDERR_KEEP);
                    }
                }
                String::from_utf8_lossy(&kept).into_owned()
            })
        });
        Ok(Self {
            child,
            program: program.to_owned(),
            stderr,
        })
    }

    /// The program's name.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// Its piped stdout.
    pub fn take_stdout(&mut self) -> Result<ChildStdout> {
        self.child
            .stdout
            .take()
            .ok_or_else(|| Error::tool(format!("{}'s output was not piped", self.program)))
    }

    /// Its piped stdin.
    pub fn take_stdin(&mut self) -> Result<ChildStdin> {
        self.child
            .stdin
            .take()
            .ok_or_else(|| Error::tool(format!("{}'s input was not piped", self.program)))
    }

    /// Kills it (it never commits what it had not finished) and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(h) = self.stderr.take() {
            let _ = h.join();
        }
    }

    /// Waits for it to exit. Success returns what it printed on stderr; a failure is an
    /// error of `kind` quoting the tail of its stderr.
    pub fn wait(mut self, kind: ErrorKind) -> Result<String> {
        let status = self
            .child
            .wait()
            .map_err(|e| Error::io(format!("waiting for {}", self.program), e))?;
        let said = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if status.success() {
            Ok(said)
        } else {
            Err(failure(&self.program, status, &said, kind))
        }
    }
}

fn failure(program: &str, status: ExitStatus, stderr: &str, kind: ErrorKind) -> Error {
    let said = one_line(stderr);
    let said = if said.is_empty() {
        "it printed nothing".to_owned()
    } else {
        said
    };
    Error::new(kind, format!("{program} failed ({status}): {said}"))
        .with_operation(program.to_owned())
}

/// Joins the non-empty lines of a program's output into one line.
pub fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_quote_stderr_on_one_line() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo first >&2; echo >&2; echo second >&2; exit 3"])
            .stderr(Stdio::piped());
        let child = ChildProgram::spawn(cmd, "sh").unwrap();
        let err = child.wait(ErrorKind::Rejected).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Rejected);
        assert!(err.to_string().contains("first; second"), "{err}");
        assert!(err.to_string().starts_with("sh failed"), "{err}");
    }

    #[test]
    fn a_missing_program_is_a_tool_error_naming_the_bin_directory() {
        let cmd = Command::new("/nonexistent/pg_dump");
        let Err(err) = ChildProgram::spawn(cmd, "pg_dump") else {
            panic!("a missing program started");
        };
        assert_eq!(err.kind(), ErrorKind::Tool);
        assert_eq!(err.setting(), Some(Setting::PgBinDir));
    }
}

//! Child programs (pg_dump, pg_restore, psql): started with the connection in their
//! environment, their stderr drained on a thread of its own, their failure told in
//! one line.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result, Setting};
use crate::pg::{ConnParams, PgTools};
use crate::scope::{Registration, Scope};

/// How much of a child's stderr is kept for the error message.
const STDERR_KEEP: usize = 16 << 10;

/// A command for `program` from `tools`, connecting as `conn` says: parameters and
/// password travel in the environment, never in argv; stderr is piped.
pub fn client_command(tools: &PgTools, program: &str, conn: &ConnParams) -> Command {
    let mut cmd = Command::new(tools.bin(program));
    cmd.envs(conn.child_env()).stderr(Stdio::piped());
    cmd
}

/// Makes the child die with pgproof however pgproof dies (SIGKILL, the OOM killer
/// included: a parent-death signal), and create what it creates readable by its
/// owner only (umask 077). Without the first, a killed pgproof leaves pg_dump writing
/// a directory archive's plaintext to disk, and psql committing a plain restore cut
/// short at the end of its input.
///
/// The signal follows the thread that spawned the child: every caller spawns on a
/// thread that lives as long as the child (it waits for it, or is a runtime worker).
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec; it calls prctl(2),
    // getppid(2) and umask(2) only, which are async-signal-safe, and allocates
    // nothing on its success path. std provides no safe way to set either.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // The parent may have died before the signal was armed.
            if nix::unistd::getppid().as_raw().unsigned_abs() != parent {
                return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
            }
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
            Ok(())
        });
    }
}

/// A running child program whose stderr tail is being kept.
pub struct ChildProgram {
    child: Arc<Mutex<Child>>,
    program: String,
    stderr: Option<JoinHandle<String>>,
    /// Waited for or killed: dropping it then leaves the process alone.
    settled: bool,
    /// Kills it when its operation's scope is cancelled.
    _stop: Registration,
}

impl ChildProgram {
    /// Starts `cmd`, naming it `program` in errors, killed when `scope` is
    /// cancelled. It stays in pgproof's process group, so a terminal's Ctrl-C reaches
    /// it too.
    pub fn spawn(cmd: Command, program: &str, scope: &Scope) -> Result<Self> {
        Self::start(cmd, program, scope)
    }

    /// [`spawn`](Self::spawn), as the leader of a process group of its own: killing
    /// it kills the workers it forked too (pg_dump and pg_restore `--jobs`), which
    /// would otherwise outlive it, holding its stderr open or waiting on a pipe, and
    /// [`signal_group`](Self::signal_group) pauses and resumes them all.
    pub fn spawn_group(mut cmd: Command, program: &str, scope: &Scope) -> Result<Self> {
        cmd.process_group(0);
        Self::start(cmd, program, scope)
    }

    fn start(mut cmd: Command, program: &str, scope: &Scope) -> Result<Self> {
        die_with_parent(&mut cmd);
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
        let child = Arc::new(Mutex::new(child));
        let stop = scope.on_cancel({
            let (child, program) = (child.clone(), program.to_owned());
            move || {
                let mut child = child
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                kill_group(&mut child).then(|| format!("{program} (pid {})", child.id()))
            }
        });
        Ok(Self {
            child,
            program: program.to_owned(),
            stderr,
            settled: false,
            _stop: stop,
        })
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Its piped stdout.
    pub fn take_stdout(&mut self) -> Result<ChildStdout> {
        self.child()
            .stdout
            .take()
            .ok_or_else(|| Error::tool(format!("{}'s output was not piped", self.program)))
    }

    /// Its piped stdin.
    pub fn take_stdin(&mut self) -> Result<ChildStdin> {
        self.child()
            .stdin
            .take()
            .ok_or_else(|| Error::tool(format!("{}'s input was not piped", self.program)))
    }

    /// Kills it and the workers it forked (it never commits what it had not
    /// finished) and reaps it.
    pub fn kill(mut self) {
        kill_group(&mut self.child());
        self.settled = true;
        if let Some(h) = self.stderr.take() {
            let _ = h.join();
        }
    }

    /// Sends `signal` to it and the workers it forked (pausing and resuming a
    /// pg_dump the sink cannot keep up with); whether it was sent.
    pub fn signal_group(&self, signal: nix::sys::signal::Signal) -> bool {
        let mut child = self.child();
        if matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        let group = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::killpg(group, signal).is_ok()
    }

    /// Whether it has exited (it is reaped by [`wait`](Self::wait) still).
    pub fn has_exited(&self) -> Result<bool> {
        match self.child().try_wait() {
            Ok(status) => Ok(status.is_some()),
            Err(e) => Err(Error::io(format!("waiting for {}", self.program), e)),
        }
    }

    /// Waits for it to exit. Success returns what it printed on stderr; a failure is an
    /// error of `kind` quoting the tail of its stderr.
    pub fn wait(mut self, kind: ErrorKind) -> Result<String> {
        // Polled, not a blocking wait, so a cancellation can take the lock meanwhile.
        let status = loop {
            match self.child().try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(Error::io(format!("waiting for {}", self.program), e)),
            }
        };
        self.settled = true;
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

impl Drop for ChildProgram {
    fn drop(&mut self) {
        // Dropped unsettled (a cancelled restore's future): it must not go on to read
        // the end of its input and commit.
        if !self.settled {
            kill_group(&mut self.child());
        }
    }
}

/// Kills `child` and, when it leads one ([`ChildProgram::spawn_group`]), its process
/// group, and reaps `child`; whether a signal was sent.
fn kill_group(child: &mut Child) -> bool {
    // Reaped already: its pid, and so its group's id, may belong to someone else now.
    if matches!(child.try_wait(), Ok(Some(_))) {
        return false;
    }
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let sent = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL).is_ok()
        || child.kill().is_ok();
    let _ = child.wait();
    sent
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

/// Whether a process with this pid runs on this host: how pgproof tells the leftovers
/// of a dead run (its databases, clusters, temp files) from a live run's work.
pub fn is_running(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
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
        let child = ChildProgram::spawn(cmd, "sh", &Scope::new()).unwrap();
        let err = child.wait(ErrorKind::Rejected).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Rejected);
        assert!(err.to_string().contains("first; second"), "{err}");
        assert!(err.to_string().starts_with("sh failed"), "{err}");
    }

    #[test]
    fn a_cancelled_scope_kills_its_programs_only() {
        let (scope, other) = (Scope::new(), Scope::new());
        let mut cmd = Command::new("sleep");
        cmd.arg("30").stderr(Stdio::piped());
        let child = ChildProgram::spawn(cmd, "sleep-to-be-killed", &scope).unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30").stderr(Stdio::piped());
        let bystander = ChildProgram::spawn(cmd, "sleep-of-another-scope", &other).unwrap();
        let started = std::time::Instant::now();
        let waiter = std::thread::spawn(move || child.wait(ErrorKind::Tool));
        std::thread::sleep(Duration::from_millis(100));
        let killed = scope.cancel();
        assert!(
            killed
                .iter()
                .any(|k| k.starts_with("sleep-to-be-killed (pid ")),
            "{killed:?}"
        );
        assert!(
            waiter.join().unwrap().is_err(),
            "a killed program succeeded"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            !bystander.has_exited().unwrap(),
            "another scope's program died"
        );
        bystander.kill();
    }

    #[test]
    fn a_missing_program_is_a_tool_error_naming_the_bin_directory() {
        let cmd = Command::new("/nonexistent/pg_dump");
        let Err(err) = ChildProgram::spawn(cmd, "pg_dump", &Scope::new()) else {
            panic!("a missing program started");
        };
        assert_eq!(err.kind(), ErrorKind::Tool);
        assert_eq!(err.setting(), Some(Setting::PgBinDir));
    }
}

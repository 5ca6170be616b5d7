//! Running a dumper's programs on a blocking thread: the dump program's stdout through
//! the codec chain into a writer, and a stored object back through the chain into the
//! restore program's stdin.

use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::catalog::ObjectInfo;
use crate::codec::{CodecChain, Identities, Progress, PumpError, Recipients, Tallies};
use crate::dump::archive::Reading;
use crate::error::{ErrorKind, Result};
use crate::pg::process::{ChildProgram, one_line};
use crate::scope::Scope;

/// Runs `cmd` (a dump program) and encodes its whole output into `output`. On any
/// failure the program is killed and the error returned; the caller aborts the upload.
pub(crate) fn dump(
    mut cmd: Command,
    chain: &CodecChain,
    recipients: Option<&Recipients>,
    output: impl Write,
    progress: Option<&Progress>,
    scope: &Scope,
) -> Result<Tallies> {
    cmd.stdout(Stdio::piped());
    let program = Path::new(cmd.get_program()).file_name().map_or_else(
        || "the dump program".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut child = ChildProgram::spawn(cmd, &program, scope)?;
    let stdout = child.take_stdout()?;
    match chain.encode(stdout, output, recipients, progress) {
        Ok((_, tallies)) => {
            let said = child.wait(ErrorKind::Tool)?;
            if !said.trim().is_empty() {
                tracing::warn!(program = %program, stderr = %one_line(&said), "the dump program succeeded with messages");
            }
            Ok(tallies)
        }
        Err(e) => {
            child.kill();
            Err(e.into_error())
        }
    }
}

/// Runs `cmd` (a restore program, named `program`) and feeds it `object` decoded
/// through `chain`. The tallies are checked against `expected` before the program sees
/// the end of its input, so a damaged object is never committed: the program is
/// killed instead. A program that fails on input whose tallies matched has rejected
/// the backup ([`ErrorKind::Rejected`]). A program reading [`Reading::Part`] may stop
/// early: reading stops with it, and its exit status alone decides.
#[allow(clippy::too_many_arguments)]
pub(crate) fn restore(
    mut cmd: Command,
    program: &str,
    chain: &CodecChain,
    identities: Option<&Identities>,
    object: impl Read,
    expected: &ObjectInfo,
    progress: Option<&Progress>,
    scope: &Scope,
    reading: Reading,
) -> Result<u64> {
    cmd.stdin(Stdio::piped());
    let mut child = ChildProgram::spawn(cmd, program, scope)?;
    let gone = Arc::new(AtomicBool::new(false));
    let stdin = FeedOrDiscard {
        stdin: Some(child.take_stdin()?),
        stop_when_gone: (reading == Reading::Part).then(|| gone.clone()),
    };
    // psql runs meta-commands (`\!` runs a shell): an archive reaches it only under
    // `\restrict` with a key the archive cannot know.
    let stdin = if program == "psql" {
        Input::Psql(Box::new(RestrictedPsql::new(stdin)))
    } else {
        Input::Plain(stdin)
    };
    // No byte reaches the program before its chunk hashed as the signed manifest
    // recorded; the tallies at the end stay the last word on the whole.
    let object = expected.checked_reader(object);
    let (stdin, tallies) = match chain.decode(object, stdin, identities, progress) {
        Ok((input, tallies)) => match input.finish() {
            Ok(stdin) => (stdin, tallies),
            Err(e) => {
                child.kill();
                return Err(crate::Error::io(format!("feeding {program}"), e));
            }
        },
        // A program reading part of the archive has read all it wanted: every byte
        // it saw was checked, and its exit status says whether it succeeded.
        Err(PumpError::Output(_)) if gone.load(Ordering::SeqCst) => {
            child.wait(reading.failure_kind())?;
            return Ok(0);
        }
        Err(e @ PumpError::Input(_)) | Err(e @ PumpError::Output(_)) => {
            child.kill();
            return Err(e.into_error());
        }
    };
    if let Err(e) = expected.check(&tallies) {
        child.kill();
        return Err(e);
    }
    let program_left_early = stdin.stdin.is_none();
    drop(stdin); // end of input: the restore program commits now
    child.wait(reading.failure_kind())?;
    if program_left_early && reading == Reading::Whole {
        // It exited with status 0 without reading all of a verified archive.
        return Err(crate::Error::rejected(format!(
            "{program} exited before reading the whole archive"
        )));
    }
    Ok(tallies.raw.bytes)
}

/// What the decoded archive is written to: the restore program's stdin, or psql's
/// through [`RestrictedPsql`].
enum Input {
    Plain(FeedOrDiscard),
    Psql(Box<RestrictedPsql<FeedOrDiscard>>),
}

impl Input {
    fn finish(self) -> io::Result<FeedOrDiscard> {
        match self {
            Self::Plain(stdin) => Ok(stdin),
            Self::Psql(guard) => guard.finish(),
        }
    }
}

impl Write for Input {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(w) => w.write(data),
            Self::Psql(w) => w.write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(w) => w.flush(),
            Self::Psql(w) => w.flush(),
        }
    }
}

/// Puts psql in restricted mode (`\restrict KEY`, psql 15.14/16.10/17.6/18 and later)
/// before the first byte of the archive, with a key made for this restore alone, so a
/// meta-command in the archive (`\!`, `\copy … program`, `\o |…`, `\connect`) fails
/// the restore instead of running. The archive's own `\restrict` line (pg_dump puts
/// one in the header of every plain dump) and the `\unrestrict` that ends it are
/// taken out, since psql refuses a second `\restrict`; any other `\unrestrict` is
/// passed on and, with the wrong key, fails the restore. The defence of the day a
/// signing key leaks: a signed archive is already trusted content.
struct RestrictedPsql<W: Write> {
    inner: W,
    key: String,
    started: bool,
    /// Still in the archive's leading comments and blank lines.
    header: bool,
    at_line_start: bool,
    /// The current line, held because it starts with a backslash.
    held: Option<Vec<u8>>,
    /// The key of the archive's own `\restrict` line.
    archive_key: Option<Vec<u8>>,
}

/// A meta-command line longer than this is passed on as it is (psql rejects it
/// in restricted mode).
const HELD_LINE_LIMIT: usize = 4096;

impl<W: Write> RestrictedPsql<W> {
    fn new(inner: W) -> Self {
        use ssh_key::rand_core::RngCore;
        let mut bytes = [0u8; 24];
        ssh_key::rand_core::OsRng.fill_bytes(&mut bytes);
        Self {
            inner,
            key: hex::encode(bytes),
            started: false,
            header: true,
            at_line_start: true,
            held: None,
            archive_key: None,
        }
    }

    fn finish(mut self) -> io::Result<W> {
        self.start()?;
        if let Some(line) = self.held.take() {
            self.inner.write_all(&line)?;
        }
        Ok(self.inner)
    }

    fn start(&mut self) -> io::Result<()> {
        if !self.started {
            self.started = true;
            let line = format!("\\restrict {}\n", self.key);
            self.inner.write_all(line.as_bytes())?;
        }
        Ok(())
    }

    /// A whole held line (with its newline): dropped if it is the archive's own
    /// restriction, passed on otherwise.
    fn end_held(&mut self, line: Vec<u8>) -> io::Result<()> {
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if self.header
            && self.archive_key.is_none()
            && let Some(key) = text.strip_prefix(b"\\restrict ")
        {
            self.archive_key = Some(key.trim_ascii().to_vec());
            return Ok(());
        }
        if let (Some(own), Some(key)) = (&self.archive_key, text.strip_prefix(b"\\unrestrict "))
            && key.trim_ascii() == own.as_slice()
        {
            return Ok(());
        }
        self.header = false;
        self.inner.write_all(&line)
    }
}

impl<W: Write> Write for RestrictedPsql<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.start()?;
        let mut rest = data;
        while !rest.is_empty() {
            if let Some(held) = &mut self.held {
                match rest.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        held.extend_from_slice(&rest[..=i]);
                        rest = &rest[i + 1..];
                        let line = self.held.take().unwrap_or_default();
                        self.at_line_start = true;
                        self.end_held(line)?;
                    }
                    None => {
                        held.extend_from_slice(rest);
                        rest = &[];
                        if held.len() > HELD_LINE_LIMIT {
                            let line = self.held.take().unwrap_or_default();
                            self.header = false;
                            self.at_line_start = false;
                            self.inner.write_all(&line)?;
                        }
                    }
                }
                continue;
            }
            if self.at_line_start {
                match rest[0] {
                    b'\\' => {
                        self.held = Some(Vec::new());
                        continue;
                    }
                    b'-' | b'\n' | b'\r' => {}
                    _ => self.header = false,
                }
            }
            let end = rest
                .iter()
                .position(|b| *b == b'\n')
                .map_or(rest.len(), |i| i + 1);
            self.inner.write_all(&rest[..end])?;
            self.at_line_start = rest[end - 1] == b'\n';
            rest = &rest[end..];
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The restore program's stdin; once the program has gone away, the rest of the input
/// is still read (and discarded) so its tallies can say whether the backup or the
/// program was at fault — unless it reads only part of the archive: then reading
/// stops, and `stop_when_gone` says why.
struct FeedOrDiscard {
    stdin: Option<ChildStdin>,
    stop_when_gone: Option<Arc<AtomicBool>>,
}

impl Write for FeedOrDiscard {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(stdin) = &mut self.stdin {
            match stdin.write(data) {
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    self.stdin = None;
                    if let Some(gone) = &self.stop_when_gone {
                        gone.store(true, Ordering::SeqCst);
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.stdin {
            Some(stdin) => match stdin.flush() {
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    self.stdin = None;
                    Ok(())
                }
                other => other,
            },
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Compress, HashingWriter};

    fn object(chain: &CodecChain, raw: &[u8]) -> (Vec<u8>, ObjectInfo) {
        let (stored, t) = chain.encode(raw, Vec::new(), None, None).unwrap();
        let info = ObjectInfo::new("db/id/dump".into(), t);
        (stored, info)
    }

    /// `restore` of `stored` by `cmd`, with no identities and no progress.
    fn feed(
        cmd: Command,
        program: &str,
        chain: &CodecChain,
        stored: &[u8],
        info: &ObjectInfo,
        reading: Reading,
    ) -> Result<u64> {
        restore(
            cmd,
            program,
            chain,
            None,
            stored,
            info,
            None,
            &Scope::new(),
            reading,
        )
    }

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]).stderr(Stdio::piped());
        cmd
    }

    #[test]
    fn a_program_that_quits_early_on_a_sound_archive_rejects_it() {
        let chain = CodecChain::new(Some(Compress::Gzip { level: 1 }), false);
        let raw = vec![b'x'; 4 << 20];
        let (stored, info) = object(&chain, &raw);
        let err = feed(
            sh("head -c 10 >/dev/null; echo 'ERROR: bad' >&2; exit 3"),
            "psql",
            &chain,
            &stored,
            &info,
            Reading::Whole,
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
        assert!(err.to_string().contains("ERROR: bad"), "{err}");
    }

    #[test]
    fn a_damaged_archive_is_integrity_even_when_the_program_quit_first() {
        let chain = CodecChain::new(None, false);
        let raw = vec![b'y'; 1 << 20];
        let (mut stored, info) = object(&chain, &raw);
        stored[1000] ^= 1;
        let err = feed(
            sh("head -c 10 >/dev/null; exit 1"),
            "pg_restore",
            &chain,
            &stored,
            &info,
            Reading::Whole,
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    }

    #[test]
    fn a_program_reading_part_may_stop_early_but_not_fail() {
        let chain = CodecChain::new(Some(Compress::Gzip { level: 1 }), false);
        let raw: Vec<u8> = (0..8_000_000u32).map(|i| (i % 251) as u8).collect();
        let (stored, info) = object(&chain, &raw);
        let part = |script: &str| {
            feed(
                sh(script),
                "pg_restore",
                &chain,
                &stored,
                &info,
                Reading::Part,
            )
        };
        part("head -c 10 >/dev/null").unwrap();
        let err = part("head -c 10 >/dev/null; exit 2").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Tool, "{err}");
        // Reading it whole, the same early stop is a rejection.
        let err = feed(
            sh("head -c 10 >/dev/null"),
            "pg_restore",
            &chain,
            &stored,
            &info,
            Reading::Whole,
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
    }

    #[test]
    fn a_damaged_chunk_never_reaches_a_program_reading_part() {
        let chain = CodecChain::new(None, false);
        let raw = vec![b'z'; 1 << 20];
        let (mut stored, info) = object(&chain, &raw);
        stored[10] ^= 1;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("fed");
        let err = feed(
            sh(&format!("head -c 100 > {}", out.display())),
            "pg_restore",
            &chain,
            &stored,
            &info,
            Reading::Part,
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
        assert_eq!(std::fs::read(&out).unwrap_or_default().len(), 0);
    }

    #[test]
    fn a_sound_archive_reaches_the_program_whole() {
        let chain = CodecChain::new(Some(Compress::Gzip { level: 1 }), false);
        let raw: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
        let (stored, info) = object(&chain, &raw);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("fed");
        let n = feed(
            sh(&format!("cat > {}", out.display())),
            "cat",
            &chain,
            &stored,
            &info,
            Reading::Whole,
        )
        .unwrap();
        assert_eq!(n, raw.len() as u64);
        assert_eq!(std::fs::read(&out).unwrap(), raw);
    }

    fn restricted(chunks: &[&[u8]]) -> (String, String) {
        let mut guard = RestrictedPsql::new(Vec::new());
        for chunk in chunks {
            guard.write_all(chunk).unwrap();
        }
        let key = guard.key.clone();
        (String::from_utf8(guard.finish().unwrap()).unwrap(), key)
    }

    #[test]
    fn psql_gets_the_archive_under_a_restriction_of_its_own() {
        let dump = "--\n-- PostgreSQL database dump\n--\n\n\\restrict abc123\n\nSET x = 1;\nCOPY t (v) FROM stdin;\n\\restrict-not\n\\.\n\n\\unrestrict abc123\n\n-- done\n";
        // Whole, and cut into every pair of pieces: the same output.
        let (whole, key) = restricted(&[dump.as_bytes()]);
        assert!(
            whole.starts_with(&format!("\\restrict {key}\n--\n")),
            "{whole}"
        );
        assert!(!whole.contains("abc123"), "{whole}");
        assert!(whole.contains("\\restrict-not\n\\.\n"), "{whole}");
        let expected = whole.replace(&key, "K");
        for cut in 1..dump.len() {
            let (a, b) = dump.as_bytes().split_at(cut);
            let (out, key) = restricted(&[a, b]);
            assert_eq!(out.replace(&key, "K"), expected, "cut at {cut}");
        }
        // Meta-commands elsewhere reach psql, which refuses them while restricted.
        for attack in [
            "\\! id\n",
            "SELECT 1;\n\\restrict late\n\\unrestrict late\n\\! id\n",
            "\\unrestrict guess\n\\! id\n",
        ] {
            let (out, _) = restricted(&[attack.as_bytes()]);
            assert!(out.contains("\\! id"), "{out}");
            assert!(out.starts_with("\\restrict "), "{out}");
        }
        let (out, _) = restricted(&[b"SELECT 1;\n\\restrict late\n"]);
        assert!(
            out.contains("\\restrict late"),
            "only the header's is taken out: {out}"
        );
    }

    #[test]
    fn a_failed_dump_program_is_a_tool_error() {
        let chain = CodecChain::new(None, false);
        let err = dump(
            sh("echo partial; echo 'pg_dump: error: lock timeout' >&2; exit 1"),
            &chain,
            None,
            HashingWriter::new(io::sink()),
            None,
            &Scope::new(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Tool);
        assert!(err.to_string().contains("lock timeout"), "{err}");
    }
}

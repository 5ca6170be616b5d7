//! Running a dumper's programs on a blocking thread: the dump program's stdout through
//! the codec chain into a writer, and a stored object back through the chain into the
//! restore program's stdin.

use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};

use crate::catalog::ObjectInfo;
use crate::codec::{CodecChain, Identities, Progress, PumpError, Recipients, Tallies};
use crate::error::{ErrorKind, Result};
use crate::pg::process::{ChildProgram, one_line};

/// Runs `cmd` (a dump program) and encodes its whole output into `output`. On any
/// failure the program is killed and the error returned; the caller aborts the upload.
pub(crate) fn dump(
    mut cmd: Command,
    chain: &CodecChain,
    recipients: Option<&Recipients>,
    output: impl Write,
    progress: Option<&Progress>,
) -> Result<Tallies> {
    cmd.stdout(Stdio::piped());
    let program = Path::new(cmd.get_program()).file_name().map_or_else(
        || "the dump program".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut child = ChildProgram::spawn(cmd, &program)?;
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
/// the backup ([`ErrorKind::Rejected`]).
pub(crate) fn restore(
    mut cmd: Command,
    program: &str,
    chain: &CodecChain,
    identities: Option<&Identities>,
    object: impl Read,
    expected: &ObjectInfo,
    progress: Option<&Progress>,
) -> Result<u64> {
    cmd.stdin(Stdio::piped());
    let mut child = ChildProgram::spawn(cmd, program)?;
    let stdin = FeedOrDiscard {
        stdin: Some(child.take_stdin()?),
    };
    let (stdin, tallies) = match chain.decode(object, stdin, identities, progress) {
        Ok(done) => done,
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
    child.wait(ErrorKind::Rejected)?;
    if program_left_early {
        // It exited with status 0 without reading all of a verified archive.
        return Err(crate::Error::rejected(format!(
            "{program} exited before reading the whole archive"
        )));
    }
    Ok(tallies.raw.bytes)
}

/// The restore program's stdin; once the program has gone away, the rest of the input
/// is still read (and discarded) so its tallies can say whether the backup or the
/// program was at fault.
struct FeedOrDiscard {
    stdin: Option<ChildStdin>,
}

impl Write for FeedOrDiscard {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(stdin) = &mut self.stdin {
            match stdin.write(data) {
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => self.stdin = None,
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
        let info = ObjectInfo {
            key: "db/id/dump".into(),
            raw_bytes: t.raw.bytes,
            raw_sha256: t.raw.sha256,
            stored_bytes: t.stored.bytes,
            stored_sha256: t.stored.sha256,
        };
        (stored, info)
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
        let err = restore(
            sh("head -c 10 >/dev/null; echo 'ERROR: bad' >&2; exit 3"),
            "psql",
            &chain,
            None,
            &stored[..],
            &info,
            None,
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
        let err = restore(
            sh("head -c 10 >/dev/null; exit 1"),
            "pg_restore",
            &chain,
            None,
            &stored[..],
            &info,
            None,
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    }

    #[test]
    fn a_sound_archive_reaches_the_program_whole() {
        let chain = CodecChain::new(Some(Compress::Gzip { level: 1 }), false);
        let raw: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
        let (stored, info) = object(&chain, &raw);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("fed");
        let n = restore(
            sh(&format!("cat > {}", out.display())),
            "cat",
            &chain,
            None,
            &stored[..],
            &info,
            None,
        )
        .unwrap();
        assert_eq!(n, raw.len() as u64);
        assert_eq!(std::fs::read(&out).unwrap(), raw);
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
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Tool);
        assert!(err.to_string().contains("lock timeout"), "{err}");
    }
}

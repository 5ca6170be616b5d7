//! The codec chain: what happens to a dump's bytes between the dump program and the
//! sink, and back.
//!
//! ```text
//! encode: raw ─► tally(raw) ─► [gzip|zstd] ─► [age] ─► tally(stored) ─► out
//! decode: in  ─► tally(stored) ─► [age⁻¹] ─► [gunzip|unzstd] ─► tally(raw) ─► out
//! ```
//!
//! One [`CodecChain`] is built for a backup (from the dumper's needs and whether there
//! are recipients), recorded in the manifest as a list of names, and rebuilt from those
//! names by restore and verify, so both directions always agree. A name this build
//! does not know is an error, never silently skipped.

mod age;
mod tally;

use std::io::{self, Read, Write};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

pub(crate) use self::age::write_key_file;
pub use self::age::{Identities, KeyPair, Recipients};
pub use self::tally::{
    CHUNK_BYTES, CheckedChunks, HashingReader, HashingWriter, Tally, sha256_hex,
};
use crate::error::{Error, Result};

/// Called with the running total of raw (dump) bytes processed, for progress display.
pub type Progress = std::sync::Arc<dyn Fn(u64) + Send + Sync>;

/// Read and write size of the pumps.
const PUMP_BUFFER: usize = 256 << 10;

/// A compression stage a dumper can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compress {
    /// gzip (RFC 1952) at a level from 0 (store) to 9 (smallest).
    Gzip {
        /// Compression level, 0–9.
        level: u32,
    },
    /// zstd at a level from 1 to 19, on `workers` threads besides the caller's (0:
    /// none). Decoded by `zstd -d`.
    Zstd {
        /// Compression level, 1–19.
        level: i32,
        /// Worker threads.
        workers: u32,
    },
}

/// The stages between raw dump bytes and the stored object, in write order:
/// at most one compression, then optionally age.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodecChain {
    compress: Option<Compress>,
    encrypt: bool,
}

/// Name of the gzip stage in a manifest's codec list.
pub const GZIP: &str = "gzip";
/// Name of the age stage in a manifest's codec list.
pub const AGE: &str = "age";
/// Name of the zstd stage in a manifest's codec list.
pub const ZSTD: &str = "zstd";

impl CodecChain {
    /// A chain with the given compression and, if `encrypt`, age.
    pub fn new(compress: Option<Compress>, encrypt: bool) -> Self {
        Self { compress, encrypt }
    }

    /// Rebuilds the chain a manifest recorded (`["gzip", "age"]`, …). The gzip level
    /// is irrelevant to decoding and not recorded.
    pub fn from_names(names: &[String]) -> Result<Self> {
        let mut chain = Self::new(None, false);
        for (i, name) in names.iter().enumerate() {
            match name.as_str() {
                GZIP if chain.compress.is_none() && !chain.encrypt => {
                    chain.compress = Some(Compress::Gzip { level: 6 });
                }
                ZSTD if chain.compress.is_none() && !chain.encrypt => {
                    chain.compress = Some(Compress::Zstd {
                        level: 3,
                        workers: 0,
                    });
                }
                AGE if !chain.encrypt && i == names.len() - 1 => chain.encrypt = true,
                _ => {
                    return Err(Error::config(format!(
                        "the codec list {names:?} is not one this version of pgproof can decode (it knows [\"{GZIP}\" or \"{ZSTD}\"?, \"{AGE}\"?] in that order); use the pgproof version that wrote the backup"
                    )));
                }
            }
        }
        Ok(chain)
    }

    /// The names recorded in the manifest, in write order.
    pub fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        match self.compress {
            Some(Compress::Gzip { .. }) => names.push(GZIP.to_owned()),
            Some(Compress::Zstd { .. }) => names.push(ZSTD.to_owned()),
            None => {}
        }
        if self.encrypt {
            names.push(AGE.to_owned());
        }
        names
    }

    /// File-name suffix of the stored object (`.gz.age`, …).
    pub fn suffix(&self) -> String {
        let mut suffix = String::new();
        match self.compress {
            Some(Compress::Gzip { .. }) => suffix.push_str(".gz"),
            Some(Compress::Zstd { .. }) => suffix.push_str(".zst"),
            None => {}
        }
        if self.encrypt {
            suffix.push_str(".age");
        }
        suffix
    }

    /// Whether the chain ends in age.
    pub fn encrypted(&self) -> bool {
        self.encrypt
    }

    /// Reads `input` (raw dump bytes) to its end, encodes it into `output` and
    /// returns `output` with the tallies on both sides. `recipients` must be given
    /// exactly when the chain encrypts.
    pub fn encode<R: Read, W: Write>(
        &self,
        mut input: R,
        output: W,
        recipients: Option<&Recipients>,
        progress: Option<&Progress>,
    ) -> Result<(W, Tallies), PumpError> {
        let write_err = |e: io::Error| PumpError::Output(Error::io("writing the encoded dump", e));
        let stored = HashingWriter::chunked(output);
        let encrypted = match (self.encrypt, recipients) {
            (true, Some(r)) => Encrypt::Age(r.encrypt(stored).map_err(PumpError::Output)?),
            (false, None) => Encrypt::Off(stored),
            _ => {
                return Err(PumpError::Output(Error::config(
                    "recipients must be given exactly when the codec chain encrypts",
                )));
            }
        };
        let compressed = match self.compress {
            Some(Compress::Gzip { level }) => CompressWriter::Gzip(Box::new(GzEncoder::new(
                encrypted,
                Compression::new(level.min(9)),
            ))),
            Some(Compress::Zstd { level, workers }) => {
                let mut encoder = zstd::stream::write::Encoder::new(encrypted, level.clamp(1, 19))
                    .map_err(write_err)?;
                if workers > 0 {
                    encoder.multithread(workers).map_err(write_err)?;
                }
                CompressWriter::Zstd(Box::new(encoder))
            }
            None => CompressWriter::Off(encrypted),
        };
        let mut raw = HashingWriter::new(compressed);
        pump(
            &mut input,
            &mut raw,
            progress,
            |e| PumpError::Input(Error::io("reading the dump", e)),
            write_err,
        )?;
        let (compressed, raw) = raw.finish();
        let encrypted = compressed.finish().map_err(write_err)?;
        let stored = encrypted.finish().map_err(write_err)?;
        let (mut output, stored) = stored.finish();
        output.flush().map_err(write_err)?;
        Ok((output, Tallies { raw, stored }))
    }

    /// Reads `input` (a stored object) to its very end, decodes it into `output` and
    /// returns `output` with the tallies on both sides. Bytes after the end of the
    /// payload are read and tallied too, so appending to an object changes its hash.
    /// A damaged or truncated input is an [`ErrorKind::Integrity`](crate::ErrorKind)
    /// error on the input side.
    pub fn decode<R: Read, W: Write>(
        &self,
        input: R,
        mut output: W,
        identities: Option<&Identities>,
        progress: Option<&Progress>,
    ) -> Result<(W, Tallies), PumpError> {
        let read_err = |e: io::Error| {
            PumpError::Input(match Error::unwrap_io(e) {
                Ok(inner) => inner,
                Err(e) => Error::integrity(format!(
                    "the backup object is corrupted or truncated ({e}); it cannot be restored"
                )),
            })
        };
        let write_err = |e: io::Error| PumpError::Output(Error::io("writing the decoded dump", e));
        let mut stored = HashingReader::new(input);
        let raw = {
            let decrypted: Box<dyn Read + '_> = match (self.encrypt, identities) {
                (true, Some(ids)) => Box::new(ids.decrypt(&mut stored).map_err(PumpError::Input)?),
                (true, None) => {
                    return Err(PumpError::Input(
                        Error::config("the backup is encrypted and no age identity was given")
                            .with_setting(crate::Setting::Identity),
                    ));
                }
                (false, _) => Box::new(&mut stored),
            };
            let decompressed: Box<dyn Read + '_> = match self.compress {
                Some(Compress::Gzip { .. }) => Box::new(GzDecoder::new(decrypted)),
                Some(Compress::Zstd { .. }) => {
                    Box::new(zstd::stream::read::Decoder::new(decrypted).map_err(read_err)?)
                }
                None => decrypted,
            };
            let mut raw = HashingReader::new(decompressed);
            pump(&mut raw, &mut output, progress, read_err, write_err)?;
            raw.finish()
        };
        io::copy(&mut stored, &mut io::sink()).map_err(read_err)?;
        output.flush().map_err(write_err)?;
        Ok((
            output,
            Tallies {
                raw,
                stored: stored.finish(),
            },
        ))
    }
}

/// Sizes and hashes on both sides of a chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tallies {
    /// The dump program's bytes.
    pub raw: Tally,
    /// The stored object's bytes.
    pub stored: Tally,
}

/// A failed pump, by side: the input could not be read (or did not decode), or the
/// output refused the bytes (a sink that stopped, a restore program that exited).
#[derive(Debug)]
pub enum PumpError {
    /// Reading or decoding the input failed.
    Input(Error),
    /// Writing the output failed.
    Output(Error),
}

impl PumpError {
    /// The error, whichever side it came from.
    pub fn into_error(self) -> Error {
        match self {
            PumpError::Input(e) | PumpError::Output(e) => e,
        }
    }
}

fn pump(
    input: &mut impl Read,
    output: &mut impl Write,
    progress: Option<&Progress>,
    read_err: impl Fn(io::Error) -> PumpError,
    write_err: impl Fn(io::Error) -> PumpError,
) -> Result<u64, PumpError> {
    let mut buf = vec![0u8; PUMP_BUFFER];
    let mut total = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        output.write_all(&buf[..n]).map_err(&write_err)?;
        total += n as u64;
        if let Some(p) = progress {
            p(total);
        }
    }
}

enum CompressWriter<W: Write> {
    Off(W),
    Gzip(Box<GzEncoder<W>>),
    Zstd(Box<zstd::stream::write::Encoder<'static, W>>),
}

impl<W: Write> CompressWriter<W> {
    fn finish(self) -> io::Result<W> {
        match self {
            CompressWriter::Off(w) => Ok(w),
            CompressWriter::Gzip(gz) => gz.finish(),
            CompressWriter::Zstd(z) => z.finish(),
        }
    }
}

impl<W: Write> Write for CompressWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            CompressWriter::Off(w) => w.write(data),
            CompressWriter::Gzip(gz) => gz.write(data),
            CompressWriter::Zstd(z) => z.write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            CompressWriter::Off(w) => w.flush(),
            CompressWriter::Gzip(gz) => gz.flush(),
            CompressWriter::Zstd(z) => z.flush(),
        }
    }
}

enum Encrypt<W: Write> {
    Off(W),
    Age(::age::stream::StreamWriter<W>),
}

impl<W: Write> Encrypt<W> {
    fn finish(self) -> io::Result<W> {
        match self {
            Encrypt::Off(w) => Ok(w),
            Encrypt::Age(a) => a.finish(),
        }
    }
}

impl<W: Write> Write for Encrypt<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Encrypt::Off(w) => w.write(data),
            Encrypt::Age(a) => a.write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encrypt::Off(w) => w.flush(),
            Encrypt::Age(a) => a.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn data() -> Vec<u8> {
        (0..3_000_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    fn chains() -> Vec<CodecChain> {
        vec![
            CodecChain::new(None, false),
            CodecChain::new(Some(Compress::Gzip { level: 1 }), false),
            CodecChain::new(None, true),
            CodecChain::new(Some(Compress::Gzip { level: 6 }), true),
        ]
    }

    #[test]
    fn every_chain_round_trips_through_its_recorded_names() {
        let pair = KeyPair::generate();
        let input = data();
        for chain in chains() {
            let recipients = chain.encrypted().then(|| pair.recipients());
            let (stored, written) = chain
                .encode(&input[..], Vec::new(), recipients.as_ref(), None)
                .unwrap();
            assert_eq!(written.raw.bytes, input.len() as u64);
            assert_eq!(written.raw.sha256, sha256_hex(&input));
            assert_eq!(written.stored.sha256, sha256_hex(&stored));
            let rebuilt = CodecChain::from_names(&chain.names()).unwrap();
            let ids = chain.encrypted().then(|| pair.identities());
            let (raw, read) = rebuilt
                .decode(&stored[..], Vec::new(), ids.as_ref(), None)
                .unwrap();
            assert_eq!(raw, input, "{:?}", chain.names());
            // What is read back tallies the same; chunks are counted on the way in only.
            let mut written = written;
            written.stored.chunks.clear();
            assert_eq!(read, written, "{:?}", chain.names());
        }
    }

    #[test]
    fn truncated_or_extended_objects_never_pass_for_the_original() {
        let pair = KeyPair::generate();
        let encrypted = CodecChain::new(Some(Compress::Gzip { level: 6 }), true);
        let (mut stored, _) = encrypted
            .encode(&data()[..], Vec::new(), Some(&pair.recipients()), None)
            .unwrap();
        let ids = pair.identities();
        for damaged in [stored[..stored.len() - 100].to_vec(), {
            stored.extend_from_slice(b"tail");
            stored.clone()
        }] {
            match encrypted.decode(&damaged[..], io::sink(), Some(&ids), None) {
                Err(PumpError::Input(e)) => assert_eq!(e.kind(), ErrorKind::Integrity, "{e}"),
                other => panic!("a damaged object decoded: {:?}", other.map(|(_, t)| t)),
            }
        }
        // Without age, bytes after the gzip stream still reach the stored tally.
        let gzip = CodecChain::new(Some(Compress::Gzip { level: 6 }), false);
        let (mut stored, written) = gzip.encode(&data()[..], Vec::new(), None, None).unwrap();
        stored.extend_from_slice(b"tail");
        let (_, read) = gzip.decode(&stored[..], io::sink(), None, None).unwrap();
        assert_eq!(read.raw, written.raw);
        assert_ne!(read.stored, written.stored);
    }

    #[test]
    fn unknown_or_misordered_codecs_are_refused() {
        for names in [
            vec!["brotli"],
            vec!["age", "gzip"],
            vec!["gzip", "gzip"],
            vec!["gzip", "zstd"],
            vec!["age", "zstd"],
        ] {
            let names: Vec<String> = names.into_iter().map(String::from).collect();
            let err = CodecChain::from_names(&names).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{names:?}");
        }
        assert_eq!(CodecChain::new(None, true).suffix(), ".age");
        assert_eq!(
            CodecChain::new(Some(Compress::Gzip { level: 6 }), true).names(),
            vec!["gzip", "age"]
        );
    }

    #[test]
    fn zstd_round_trips_and_a_cut_stream_is_an_integrity_error() {
        let chain = CodecChain::new(
            Some(Compress::Zstd {
                level: 3,
                workers: 1,
            }),
            false,
        );
        assert_eq!(chain.names(), vec!["zstd"]);
        assert_eq!(chain.suffix(), ".zst");
        let (stored, written) = chain.encode(&data()[..], Vec::new(), None, None).unwrap();
        assert!((stored.len() as u64) < written.raw.bytes);
        let back = CodecChain::from_names(&chain.names()).unwrap();
        let (raw, read) = back.decode(&stored[..], Vec::new(), None, None).unwrap();
        assert_eq!(raw, data());
        assert_eq!(read.raw, written.raw);
        let cut = &stored[..stored.len() / 2];
        let err = back
            .decode(cut, io::sink(), None, None)
            .unwrap_err()
            .into_error();
        assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    }

    #[test]
    fn a_refusing_output_is_reported_on_the_output_side() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let chain = CodecChain::new(None, false);
        assert!(matches!(
            chain.encode(&data()[..], Closed, None, None),
            Err(PumpError::Output(_))
        ));
    }
}

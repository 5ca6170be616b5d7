//! The tally: sha256 and byte count of what passes one point of a stream.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// Size and sha256 of the bytes that went through a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tally {
    /// Bytes counted.
    pub bytes: u64,
    /// Their sha256, hex.
    pub sha256: String,
}

#[derive(Debug, Default)]
struct Counter {
    hasher: Sha256,
    bytes: u64,
}

impl Counter {
    fn add(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
    }

    fn tally(self) -> Tally {
        Tally {
            bytes: self.bytes,
            sha256: hex::encode(self.hasher.finalize()),
        }
    }
}

/// A writer that hashes what it passes on.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    counter: Counter,
}

impl<W: Write> HashingWriter<W> {
    /// Tallies what is written to `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            counter: Counter::default(),
        }
    }

    /// The inner writer and the tally of everything written.
    pub fn finish(self) -> (W, Tally) {
        (self.inner, self.counter.tally())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.counter.add(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what it hands out.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    counter: Counter,
}

impl<R: Read> HashingReader<R> {
    /// Tallies what is read from `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            counter: Counter::default(),
        }
    }

    /// The tally of everything read.
    pub fn finish(self) -> Tally {
        self.counter.tally()
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.add(&buf[..n]);
        Ok(n)
    }
}

/// sha256 of a byte slice, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_and_writer_agree_with_a_one_shot_digest() {
        let data = b"pgproof streams and hashes".repeat(1000);
        let mut w = HashingWriter::new(Vec::new());
        for chunk in data.chunks(777) {
            w.write_all(chunk).unwrap();
        }
        let (out, wt) = w.finish();
        assert_eq!(out, data);
        let mut r = HashingReader::new(&data[..]);
        io::copy(&mut r, &mut io::sink()).unwrap();
        let rt = r.finish();
        assert_eq!(wt, rt);
        assert_eq!(wt.bytes, data.len() as u64);
        assert_eq!(wt.sha256, sha256_hex(&data));
    }
}

//! The tally: sha256 and byte count of what passes one point of a stream.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// Stored objects are also hashed in chunks of this many bytes (the last one
/// shorter), listed in the signed manifest, so a restore checks each chunk before
/// passing any byte of it on: no byte a manifest does not vouch for ever reaches a
/// restore program. 32 MiB: the memory a restore holds back, and 68 bytes of
/// manifest per 32 MiB stored (a 1 TiB dump, about 2 MiB of manifest).
pub const CHUNK_BYTES: u64 = 32 << 20;

/// Size and sha256 of the bytes that went through a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tally {
    /// Bytes counted.
    pub bytes: u64,
    /// Their sha256, hex.
    pub sha256: String,
    /// With [`HashingWriter::chunked`]: the sha256 of each [`CHUNK_BYTES`] of them.
    pub chunks: Vec<String>,
}

#[derive(Debug, Default)]
struct Counter {
    hasher: Sha256,
    bytes: u64,
    /// The chunk being hashed and its length, when chunks are hashed too.
    chunk: Option<(Sha256, u64)>,
    chunks: Vec<String>,
}

impl Counter {
    fn add(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
        let mut rest = data;
        while let Some((hasher, filled)) = &mut self.chunk
            && !rest.is_empty()
        {
            let room = usize::try_from(CHUNK_BYTES - *filled).unwrap_or(usize::MAX);
            let (now, later) = rest.split_at(rest.len().min(room));
            hasher.update(now);
            *filled += now.len() as u64;
            rest = later;
            if *filled == CHUNK_BYTES {
                let done = std::mem::take(hasher);
                self.chunks.push(hex::encode(done.finalize()));
                *filled = 0;
            }
        }
    }

    fn tally(mut self) -> Tally {
        if let Some((hasher, filled)) = self.chunk.take()
            && filled > 0
        {
            self.chunks.push(hex::encode(hasher.finalize()));
        }
        Tally {
            bytes: self.bytes,
            sha256: hex::encode(self.hasher.finalize()),
            chunks: self.chunks,
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

    /// Tallies what is written to `inner`, in [`CHUNK_BYTES`] chunks too.
    pub fn chunked(inner: W) -> Self {
        Self {
            inner,
            counter: Counter {
                chunk: Some((Sha256::default(), 0)),
                ..Counter::default()
            },
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

/// A reader of a stored object that hands out no byte before the chunk it belongs to
/// has been read whole and found to hash as recorded: the chunks' sha256s, or for an
/// object of one chunk, its own sha256. It also refuses an object longer or shorter
/// than recorded. An error is an integrity error naming `key`.
pub struct CheckedChunks<R> {
    inner: R,
    key: String,
    expected: Vec<String>,
    total: u64,
    read: u64,
    buf: Vec<u8>,
    pos: usize,
    next: usize,
}

impl<R: Read> CheckedChunks<R> {
    /// Checks `inner` against `chunks` (or, for `total` bytes in one chunk, `whole`).
    pub fn new(inner: R, key: &str, total: u64, whole: &str, chunks: &[String]) -> Self {
        let expected = if chunks.is_empty() {
            vec![whole.to_owned()]
        } else {
            chunks.to_vec()
        };
        Self {
            inner,
            key: key.to_owned(),
            expected,
            total,
            read: 0,
            buf: Vec::new(),
            pos: 0,
            next: 0,
        }
    }

    fn refuse(&self, what: String) -> io::Error {
        crate::Error::integrity(format!(
            "stored object {} {what}; the backup was altered or damaged, and none of that part was restored",
            self.key
        ))
        .with_object(&self.key)
        .into()
    }

    /// Reads and checks the next chunk into the buffer; `false` at a clean end.
    fn fill(&mut self) -> io::Result<bool> {
        self.buf.clear();
        self.pos = 0;
        let want = (self.total - self.read).min(CHUNK_BYTES);
        if want == 0 {
            // Past the recorded end: anything more was appended.
            let mut extra = [0u8; 1];
            if self.inner.read(&mut extra)? > 0 {
                return Err(self.refuse(format!(
                    "is corrupted: longer than the {} bytes its manifest records",
                    self.total
                )));
            }
            if self.next < self.expected.len() && self.total > 0 {
                return Err(
                    self.refuse("is truncated: fewer chunks than its manifest records".into())
                );
            }
            return Ok(false);
        }
        (&mut self.inner).take(want).read_to_end(&mut self.buf)?;
        if (self.buf.len() as u64) < want {
            return Err(self.refuse(format!(
                "is truncated: shorter than the {} bytes its manifest records",
                self.total
            )));
        }
        self.read += want;
        let Some(expected) = self.expected.get(self.next) else {
            return Err(self.refuse("is corrupted: more chunks than its manifest records".into()));
        };
        if sha256_hex(&self.buf) != *expected {
            return Err(self.refuse(format!(
                "is corrupted or was replaced: bytes {}..{} do not hash as its manifest records",
                self.read - want,
                self.read
            )));
        }
        self.next += 1;
        Ok(true)
    }
}

impl<R: Read> Read for CheckedChunks<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() && !self.fill()? {
            return Ok(0);
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
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
    fn chunks_are_checked_before_a_byte_of_them_is_handed_out() {
        let size = usize::try_from(CHUNK_BYTES).unwrap();
        let data: Vec<u8> = (0..size * 2 + 1000).map(|i| (i % 251) as u8).collect();
        let mut w = HashingWriter::chunked(Vec::new());
        for piece in data.chunks(1 << 20) {
            w.write_all(piece).unwrap();
        }
        let (_, tally) = w.finish();
        assert_eq!(tally.chunks.len(), 3);
        assert_eq!(tally.chunks[2], sha256_hex(&data[size * 2..]));
        let total = data.len() as u64;
        let read = |bytes: &[u8]| {
            let mut r = CheckedChunks::new(bytes, "k", total, &tally.sha256, &tally.chunks);
            let mut out = Vec::new();
            let got = r.read_to_end(&mut out);
            (got.map(|_| ()), out)
        };
        let (ok, out) = read(&data);
        assert!(ok.is_ok());
        assert_eq!(out, data);
        // One byte changed in the second chunk: the first is handed out, none of the
        // second.
        let mut changed = data.clone();
        changed[size + 7] ^= 1;
        let (err, out) = read(&changed);
        assert_eq!(
            crate::Error::io("x", err.unwrap_err()).kind(),
            crate::ErrorKind::Integrity
        );
        assert_eq!(out.len(), size);
        // Cut short, or with bytes appended.
        assert!(read(&data[..data.len() - 1]).0.is_err());
        let mut longer = data.clone();
        longer.push(0);
        assert!(read(&longer).0.is_err());
        // An object of one chunk is checked against its own sha256.
        let small = b"small object".to_vec();
        let mut r = CheckedChunks::new(&small[..], "k", 12, &sha256_hex(&small), &[]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        let mut r = CheckedChunks::new(&b"smalL object"[..], "k", 12, &sha256_hex(&small), &[]);
        assert!(r.read_to_end(&mut Vec::new()).is_err());
    }

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

//! The archive's container: POSIX ustar, written and read asynchronously.
//!
//! Only what an archive needs: regular files with short paths (under 100
//! bytes), written whole. Any `tar` reads the result (`tar tvf`, `tar xOf
//! archive manifest.json`); the reader accepts what this writer writes and
//! refuses anything else as damaged.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};

const BLOCK: usize = 512;

/// The largest entry accepted when reading: a data chunk is at most
/// [`CHUNK_BYTES`](super::CHUNK_BYTES), the manifest far smaller. A damaged
/// size field cannot make the reader allocate more.
pub(crate) const MAX_ENTRY: u64 = 64 << 20;

/// Writes entries to `out`.
pub(crate) struct TarWriter<W> {
    out: W,
    mtime: u64,
    written: u64,
}

impl<W: AsyncWrite + Unpin> TarWriter<W> {
    pub(crate) fn new(out: W, mtime: u64) -> Self {
        TarWriter {
            out,
            mtime,
            written: 0,
        }
    }

    /// Bytes written so far.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Appends one regular file.
    pub(crate) async fn append(&mut self, path: &str, data: &[u8]) -> Result<()> {
        let header = header(path, data.len() as u64, self.mtime);
        self.write(&header).await?;
        self.write(data).await?;
        let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
        self.write(&[0u8; BLOCK][..pad]).await
    }

    /// Writes the end-of-archive marker and flushes.
    pub(crate) async fn finish(mut self) -> Result<W> {
        self.write(&[0u8; 2 * BLOCK]).await?;
        self.out.flush().await.map_err(io("writing the archive"))?;
        Ok(self.out)
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .await
            .map_err(io("writing the archive"))?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::ArchiveIo { context, source }
}

/// A ustar header for a regular file.
fn header(path: &str, size: u64, mtime: u64) -> [u8; BLOCK] {
    assert!(path.len() < 100, "archive paths are short: {path}");
    let mut h = [0u8; BLOCK];
    h[..path.len()].copy_from_slice(path.as_bytes());
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], mtime);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    octal(&mut h[148..155], sum);
    h[155] = b' ';
    h
}

/// Writes `value` as zero-padded octal digits followed by a NUL.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// Reads entries from `input`.
pub(crate) struct TarReader<R> {
    input: R,
}

/// One entry, read whole.
pub(crate) struct Entry {
    pub(crate) path: String,
    pub(crate) data: Vec<u8>,
}

fn damaged(reason: impl Into<String>) -> Error {
    Error::ArchiveCorrupt {
        reason: reason.into().into(),
    }
}

impl<R: AsyncRead + Unpin> TarReader<R> {
    pub(crate) fn new(input: R) -> Self {
        TarReader { input }
    }

    /// The next entry, `None` at the end-of-archive marker.
    pub(crate) async fn next(&mut self) -> Result<Option<Entry>> {
        let mut h = [0u8; BLOCK];
        self.fill(&mut h).await?;
        if h.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        let stored = parse_octal(&h[148..156]).ok_or_else(|| damaged("a tar header is garbled"))?;
        let mut sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
        sum -= h[148..156].iter().map(|b| u64::from(*b)).sum::<u64>();
        sum += 8 * u64::from(b' ');
        if sum != stored {
            return Err(damaged("a tar header's checksum does not match"));
        }
        if !matches!(h[156], b'0' | 0) {
            return Err(damaged("the archive holds an entry that is not a file"));
        }
        let name_end = h[..100].iter().position(|b| *b == 0).unwrap_or(100);
        let path = std::str::from_utf8(&h[..name_end])
            .map_err(|_| damaged("an entry's name is not UTF-8"))?
            .to_owned();
        let size = parse_octal(&h[124..136]).ok_or_else(|| damaged("a tar header is garbled"))?;
        if size > MAX_ENTRY {
            return Err(damaged(format!("entry {path} is implausibly large")));
        }
        let padded = (size as usize).div_ceil(BLOCK) * BLOCK;
        let mut data = vec![0u8; padded];
        self.fill(&mut data).await?;
        data.truncate(size as usize);
        Ok(Some(Entry { path, data }))
    }

    async fn fill(&mut self, buf: &mut [u8]) -> Result<()> {
        match self.input.read_exact(buf).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::ArchiveCorrupt {
                reason: "the archive is truncated".into(),
            }),
            Err(source) => Err(Error::ArchiveIo {
                context: "reading the archive",
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_round_trip_and_damage_is_refused() {
        let mut w = TarWriter::new(Vec::new(), 1_700_000_000);
        w.append("a.json", b"{}").await.unwrap();
        w.append("data/0000/000000.copy", &[7u8; 1000])
            .await
            .unwrap();
        let bytes = w.finish().await.unwrap();
        assert_eq!(bytes.len() % BLOCK, 0);

        let mut r = TarReader::new(&bytes[..]);
        let a = r.next().await.unwrap().unwrap();
        assert_eq!((a.path.as_str(), &a.data[..]), ("a.json", &b"{}"[..]));
        let b = r.next().await.unwrap().unwrap();
        assert_eq!(b.data, vec![7u8; 1000]);
        assert!(r.next().await.unwrap().is_none());

        let mut bad = bytes.clone();
        bad[3] ^= 1; // in the first header
        let err = TarReader::new(&bad[..]).next().await.err().unwrap();
        assert!(matches!(err, Error::ArchiveCorrupt { .. }), "{err}");

        let cut = &bytes[..BLOCK + 100];
        let mut r = TarReader::new(cut);
        let err = r.next().await.err().unwrap();
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}

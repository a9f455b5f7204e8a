//! Rotated segments as readers see them: plain (`app.log.NNNNNNNN`) or
//! compressed (`app.log.NNNNNNNN.zst`, see `compress`), read alike.
//!
//! The writer compresses a rotated segment into `<segment>.zst.tmp`,
//! fsyncs it, renames it to `<segment>.zst` and only then removes the
//! plain file, so at every instant at least one complete copy of a
//! retained segment exists under its sequence number. Readers therefore
//! name segments by number, never by file: [`open`] tries the plain name
//! first and the compressed one second (a plain file that vanished was
//! compressed, and its `.zst` was in place before it went), a listing
//! counts a number once whichever forms exist, and a `.zst.tmp` is never
//! read. A descriptor already open on the plain file keeps reading it
//! after the removal. Offsets everywhere (tail positions, the time
//! index) are offsets in the uncompressed bytes.
//!
//! A compressed segment is one zstd frame (the `zstd` tool's output),
//! read with a streaming decoder: forward reads cost what they read, a
//! read behind the decoder starts it over. The backward scan of `tail N`
//! therefore counts lines in two forward passes over a compressed
//! segment instead of reading it backwards block by block, and the
//! uncompressed length comes from the frame header (decoded only if the
//! header does not say it).

use std::cell::{OnceCell, RefCell};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use ruzstd::decoding::{FrameDecoder, StreamingDecoder};

use crate::segment::{open_log, segment_name, ZST};
/// Suffix of a compressed segment still being written.
pub(crate) const ZST_TMP: &str = ".zst.tmp";
/// Compressed bytes read from the file at once.
const READ_BUF: usize = 64 * 1024;

/// Name of segment `seq` of `base`, compressed.
pub(crate) fn zst_name(base: &str, seq: u64) -> String {
    format!("{}{ZST}", segment_name(base, seq))
}

/// Name of the temporary file segment `seq` is compressed into.
pub(crate) fn tmp_name(base: &str, seq: u64) -> String {
    format!("{}{ZST_TMP}", segment_name(base, seq))
}

/// Whether segment `seq` exists in either form; its inode if plain.
pub(crate) fn probe(dir: &Path, base: &str, seq: u64) -> Probe {
    use std::os::unix::fs::MetadataExt;
    if let Ok(meta) = std::fs::metadata(dir.join(segment_name(base, seq))) {
        return Probe::Plain(meta.ino());
    }
    if dir.join(zst_name(base, seq)).exists() {
        return Probe::Compressed;
    }
    Probe::Missing
}

/// What [`probe`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    Plain(u64),
    Compressed,
    Missing,
}

/// One rotated segment, opened.
#[derive(Debug)]
pub(crate) enum SegFile {
    Plain(File),
    Zstd(Box<Zstd>),
}

/// Opens segment `seq` of `base` in `dir` in whichever form exists.
pub(crate) fn open(dir: &Path, base: &str, seq: u64) -> io::Result<Option<SegFile>> {
    match open_log(&dir.join(segment_name(base, seq))) {
        Ok(file) => return Ok(Some(SegFile::Plain(file))),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    match open_log(&dir.join(zst_name(base, seq))) {
        Ok(file) => Ok(Some(SegFile::Zstd(Box::new(Zstd::new(file))))),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

impl SegFile {
    /// Length of the uncompressed bytes.
    pub(crate) fn len(&self) -> io::Result<u64> {
        match self {
            SegFile::Plain(file) => Ok(file.metadata()?.len()),
            SegFile::Zstd(z) => z.len(),
        }
    }

    /// Reads uncompressed bytes at `offset`; 0 at the end.
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        match self {
            SegFile::Plain(file) => loop {
                match file.read_at(buf, offset) {
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    other => return other,
                }
            },
            SegFile::Zstd(z) => z.read_at(buf, offset),
        }
    }

    /// Fills `buf` from `offset`; `UnexpectedEof` if the segment ends first.
    pub(crate) fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.read_at(buf, offset)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf = &mut buf[n..];
            offset += n as u64;
        }
        Ok(())
    }

    pub(crate) fn is_compressed(&self) -> bool {
        matches!(self, SegFile::Zstd(_))
    }
}

/// A segment read front to back from an offset (what `tail` hands to
/// `follow`).
#[derive(Debug)]
pub(crate) struct SegReader {
    seg: SegFile,
    /// Its sequence number.
    pub(crate) seq: u64,
    /// Offset of the next byte.
    pub(crate) pos: u64,
}

impl SegReader {
    pub(crate) fn new(seg: SegFile, seq: u64, pos: u64) -> Self {
        SegReader { seg, seq, pos }
    }

    /// The next bytes; 0 at the end.
    pub(crate) fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.seg.read_at(out, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A compressed segment: the file, its length once known, and a decoder
/// positioned somewhere in it.
pub(crate) struct Zstd {
    file: File,
    len: OnceCell<u64>,
    cursor: RefCell<Option<Cursor>>,
}

impl std::fmt::Debug for Zstd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zstd")
            .field("file", &self.file)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// The decoder and the uncompressed offset of its next byte.
struct Cursor {
    decoder: StreamingDecoder<BufReader<PRead>, FrameDecoder>,
    pos: u64,
}

/// Reads a file from an offset of its own with `pread`, so cursors over
/// the same descriptor do not share one file offset.
struct PRead {
    file: File,
    at: u64,
}

impl Read for PRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

fn corrupt(err: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("compressed log segment: {err}"),
    )
}

impl Zstd {
    fn new(file: File) -> Self {
        Zstd {
            file,
            len: OnceCell::new(),
            cursor: RefCell::new(None),
        }
    }

    fn start(&self) -> io::Result<Cursor> {
        let source = BufReader::with_capacity(
            READ_BUF,
            PRead {
                file: self.file.try_clone()?,
                at: 0,
            },
        );
        let decoder = StreamingDecoder::new(source).map_err(corrupt)?;
        Ok(Cursor { decoder, pos: 0 })
    }

    /// The uncompressed length: from the frame header, else by decoding.
    fn len(&self) -> io::Result<u64> {
        if let Some(len) = self.len.get() {
            return Ok(*len);
        }
        let mut header = [0u8; 18];
        let n = read_full(&self.file, &mut header)?;
        let len = match content_size(&header[..n]) {
            Some(len) => len,
            None => {
                let mut cursor = self.start()?;
                io::copy(&mut cursor.decoder, &mut io::sink())?
            }
        };
        Ok(*self.len.get_or_init(|| len))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut slot = self.cursor.borrow_mut();
        let restart = match &*slot {
            Some(cursor) => cursor.pos > offset,
            None => true,
        };
        if restart {
            *slot = Some(self.start()?);
        }
        let Some(cursor) = slot.as_mut() else {
            return Ok(0);
        };
        // Skip forward to `offset` through `buf` itself.
        while cursor.pos < offset {
            let want = usize::try_from(offset - cursor.pos)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let n = cursor.decoder.read(&mut buf[..want])?;
            if n == 0 {
                return Ok(0);
            }
            cursor.pos += n as u64;
        }
        let n = cursor.decoder.read(buf)?;
        cursor.pos += n as u64;
        Ok(n)
    }
}

/// Reads from offset 0 until `buf` is full or the file ends.
fn read_full(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(n)
}

/// The `Frame_Content_Size` of a zstd frame header, if the header has one
/// (RFC 8878, section 3.1.1.1).
fn content_size(header: &[u8]) -> Option<u64> {
    const MAGIC: [u8; 4] = 0xFD2F_B528u32.to_le_bytes();
    if header.get(..4)? != MAGIC {
        return None;
    }
    let desc = *header.get(4)?;
    let single_segment = desc & 0x20 != 0;
    let fcs_len = match (desc >> 6, single_segment) {
        (0, false) => return None,
        (0, true) => 1,
        (1, _) => 2,
        (2, _) => 4,
        _ => 8,
    };
    let dict_len = [0usize, 1, 2, 4][usize::from(desc & 3)];
    let at = 5 + usize::from(!single_segment) + dict_len;
    let field = header.get(at..at + fcs_len)?;
    let mut size = 0u64;
    for (i, &b) in field.iter().enumerate() {
        size |= u64::from(b) << (8 * i);
    }
    Some(if fcs_len == 2 { size + 256 } else { size })
}

/// Outcome of [`scan_back`].
pub(crate) enum Scan {
    /// The lines start at this offset of the segment.
    Found(u64),
    /// The segment holds fewer lines than still needed.
    NotHere,
    /// The file is shorter than when measured (an outside truncate).
    Shrunk,
}

/// Counts newlines backwards from `end` of `seg` until `need` of them
/// were passed. The very last byte of the log, if a newline, ends the last
/// line rather than starting a new one, so it is skipped once
/// (`skip_final_newline`). Plain files are read backwards in blocks that
/// grow from `first_block` to `buf.len()`; compressed ones forwards twice.
pub(crate) fn scan_back(
    seg: &SegFile,
    end: u64,
    need: &mut u64,
    skip_final_newline: &mut bool,
    buf: &mut [u8],
    first_block: u64,
) -> io::Result<Scan> {
    if seg.is_compressed() {
        return scan_forward_twice(seg, end, need, skip_final_newline, buf);
    }
    let mut end = end;
    let mut step = first_block.min(buf.len() as u64);
    while end > 0 {
        let start = end.saturating_sub(step);
        step = (step * 2).min(buf.len() as u64);
        // Bounded by buf.len(), so the cast is lossless.
        let block = &mut buf[..(end - start) as usize];
        if let Err(err) = seg.read_exact_at(block, start) {
            if err.kind() == io::ErrorKind::UnexpectedEof {
                return Ok(Scan::Shrunk);
            }
            return Err(err);
        }
        let mut upto = block.len();
        if *skip_final_newline {
            *skip_final_newline = false;
            if block.last() == Some(&b'\n') {
                upto -= 1;
            }
        }
        while let Some(nl) = block[..upto].iter().rposition(|&b| b == b'\n') {
            *need -= 1;
            if *need == 0 {
                return Ok(Scan::Found(start + nl as u64 + 1));
            }
            upto = nl;
        }
        end = start;
    }
    Ok(Scan::NotHere)
}

/// [`scan_back`] for a segment that can only be read forwards: one pass
/// counts the newlines before `end`, a second finds the one wanted.
fn scan_forward_twice(
    seg: &SegFile,
    end: u64,
    need: &mut u64,
    skip_final_newline: &mut bool,
    buf: &mut [u8],
) -> io::Result<Scan> {
    if end == 0 {
        return Ok(Scan::NotHere);
    }
    let mut newlines = 0u64;
    let mut last = 0u8;
    let mut off = 0u64;
    while off < end {
        let want = usize::try_from(end - off)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = seg.read_at(&mut buf[..want], off)?;
        if n == 0 {
            return Ok(Scan::Shrunk);
        }
        newlines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf[n - 1];
        off += n as u64;
    }
    if std::mem::take(skip_final_newline) && last == b'\n' {
        newlines -= 1;
    }
    if newlines < *need {
        *need -= newlines;
        return Ok(Scan::NotHere);
    }
    // The wanted newline is number `newlines - need` (from 0) of the ones
    // counted; the lines start after it.
    let mut skip = newlines - *need;
    *need = 0;
    let mut off = 0u64;
    while off < end {
        let want = usize::try_from(end - off)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = seg.read_at(&mut buf[..want], off)?;
        if n == 0 {
            return Ok(Scan::Shrunk);
        }
        for (k, &b) in buf[..n].iter().enumerate() {
            if b == b'\n' {
                if skip == 0 {
                    return Ok(Scan::Found(off + k as u64 + 1));
                }
                skip -= 1;
            }
        }
        off += n as u64;
    }
    Ok(Scan::Shrunk)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;

    /// Compresses `data` with the `zstd` tool into `dir/name`.
    pub(crate) fn zstd_file(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
        let plain = dir.join(format!("{name}.src"));
        std::fs::write(&plain, data)?;
        let status = Command::new("zstd")
            .args(["-q", "-f", "-o"])
            .arg(dir.join(name))
            .arg(&plain)
            .status()?;
        assert!(status.success());
        std::fs::remove_file(plain)
    }

    fn numbers(n: u64) -> Vec<u8> {
        (0..n).flat_map(|i| format!("{i}\n").into_bytes()).collect()
    }

    #[test]
    fn compressed_reads_like_plain() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let data = numbers(100_000);
        std::fs::write(dir.path().join(segment_name("app.log", 1)), &data)?;
        zstd_file(dir.path(), &zst_name("app.log", 2), &data)?;
        let plain = open(dir.path(), "app.log", 1)?.ok_or(io::ErrorKind::NotFound)?;
        let zst = open(dir.path(), "app.log", 2)?.ok_or(io::ErrorKind::NotFound)?;
        assert!(zst.is_compressed() && !plain.is_compressed());
        assert_eq!(zst.len()?, data.len() as u64);
        // Random reads, backwards too.
        let mut a = vec![0u8; 1000];
        let mut b = vec![0u8; 1000];
        for off in [500_000u64, 10, 300_000, 0, data.len() as u64 - 1000] {
            plain.read_exact_at(&mut a, off)?;
            zst.read_exact_at(&mut b, off)?;
            assert_eq!(a, b, "at {off}");
        }
        assert_eq!(zst.read_at(&mut b, data.len() as u64)?, 0);
        // Scans agree for every count of lines.
        for need in [1u64, 2, 99, 50_000, 100_000, 100_001] {
            for skip in [true, false] {
                let mut buf = vec![0u8; 4096];
                let (mut n1, mut s1) = (need, skip);
                let (mut n2, mut s2) = (need, skip);
                let r1 = scan_back(&plain, data.len() as u64, &mut n1, &mut s1, &mut buf, 16)?;
                let r2 = scan_back(&zst, data.len() as u64, &mut n2, &mut s2, &mut buf, 16)?;
                let found = |r: Scan| match r {
                    Scan::Found(o) => Some(o),
                    Scan::NotHere => None,
                    Scan::Shrunk => Some(u64::MAX),
                };
                assert_eq!((found(r1), n1, s1), (found(r2), n2, s2), "{need} {skip}");
            }
        }
        Ok(())
    }

    #[test]
    fn content_size_from_the_header() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        for len in [0usize, 1, 255, 256, 300, 65_791, 65_792, 1 << 20] {
            let data = vec![b'x'; len];
            zstd_file(dir.path(), "x.zst", &data)?;
            let bytes = std::fs::read(dir.path().join("x.zst"))?;
            let seg = SegFile::Zstd(Box::new(Zstd::new(std::fs::File::open(
                dir.path().join("x.zst"),
            )?)));
            assert_eq!(seg.len()?, len as u64, "{len}");
            if len > 0 {
                assert_eq!(content_size(&bytes), Some(len as u64), "{len}");
            }
        }
        Ok(())
    }

    #[test]
    fn open_prefers_plain_and_ignores_tmp() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join(tmp_name("app.log", 3)), b"partial")?;
        assert!(open(dir.path(), "app.log", 3)?.is_none());
        assert_eq!(probe(dir.path(), "app.log", 3), Probe::Missing);
        zstd_file(dir.path(), &zst_name("app.log", 3), b"abc")?;
        assert_eq!(probe(dir.path(), "app.log", 3), Probe::Compressed);
        std::fs::write(dir.path().join(segment_name("app.log", 3)), b"abc")?;
        assert!(matches!(probe(dir.path(), "app.log", 3), Probe::Plain(_)));
        let seg = open(dir.path(), "app.log", 3)?.ok_or(io::ErrorKind::NotFound)?;
        assert!(!seg.is_compressed());
        Ok(())
    }
}

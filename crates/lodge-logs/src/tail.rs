//! `tail N`: find where the last N lines of a log begin, across the live file
//! and the rotated segments, reading only as much as those lines need.
//!
//! The log is one byte stream cut into files at arbitrary points (segments
//! end mid-line), so lines are counted on the stream, newest byte first:
//! blocks are read backwards from the end of the live file and into older
//! segments only while lines are still missing, which makes the cost grow
//! with N, not with the size of the log (G5). A last line without its
//! newline counts as a line, as in GNU tail.
//!
//! However long a line is (a guest can write hundreds of megabytes without
//! a newline), the scan holds one block of at most `BLOCK` bytes and the
//! result is file offsets, never the line: readers then get it in chunks
//! of at most 64 KiB, and consumers that hand out lines bound each piece
//! with [`crate::LineSplitter`] ([`crate::MAX_LINE_CHUNK`]).
//!
//! The result is a [`Position`]: open files, not names. The live file is
//! opened between two listings of the directory and checked against them, so
//! a rotation that happens while we open cannot make us skip or repeat a
//! segment; a segment that retention deletes while we scan simply marks the
//! start of what is retained. Readers then go on from the open descriptors,
//! which stay valid whatever is renamed or deleted afterwards.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::str::FromStr;
use std::thread;
use std::time::Duration;

use crate::error::ReadError;
use crate::segment::list_segments;
use crate::stored::{self, scan_back, Probe, Scan, SegFile, SegReader};

/// Bytes read per step of the backward scan: small first (a hundred lines
/// usually fit), then growing to `BLOCK`.
const FIRST_BLOCK: u64 = 16 * 1024;
const BLOCK: usize = 64 * 1024;
/// Attempts at a consistent view of a directory that keeps rotating.
const ATTEMPTS: u32 = 200;
/// Pause between looks while the live file is missing mid-rotation.
const RETRY_PAUSE: Duration = Duration::from_micros(200);
/// Looks before a missing live file is taken as really missing (~10 ms).
const MISSING_LIVE_LOOKS: u32 = 50;

/// How much of the existing log to print before following.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// The last N lines (a final line without newline counts).
    Lines(u64),
    /// Everything retained.
    All,
}

/// A `--tail` value that is neither a number nor `all`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tail {0:?}: expected a number of lines or `all`")]
pub struct InvalidTail(pub String);

impl FromStr for Tail {
    type Err = InvalidTail;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "all" {
            return Ok(Tail::All);
        }
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidTail(s.to_owned()));
        }
        s.parse()
            .map(Tail::Lines)
            .map_err(|_| InvalidTail(s.to_owned()))
    }
}

/// The file being read last: the live file, or the file that was live when
/// we opened it and may since have been rotated.
#[derive(Debug)]
pub(crate) struct Tip {
    pub file: File,
    pub ino: u64,
    /// The sequence number this file has or will get when rotated.
    pub seq: u64,
    /// Offset of the next byte to read.
    pub pos: u64,
}

/// Where reading starts: immutable rotated segments to read to their end,
/// then the tip. With no tip, the live file did not exist yet.
#[derive(Debug)]
pub(crate) struct Position {
    pub segments: VecDeque<SegReader>,
    pub tip: Option<Tip>,
    /// When `tip` is `None`: the sequence number the live file will have.
    pub next_seq: u64,
}

/// A consistent view: the newest rotated segment, and the live file that
/// follows it with its size when opened.
struct Snapshot {
    /// Sequence number of the newest rotated segment, 0 if there is none.
    newest: u64,
    live: Option<(
        File,
        u64, /* ino */
        u64, /* seq */
        u64, /* len */
    )>,
}

/// Opens the log `base` in `dir` and positions it `tail` lines from its end.
pub(crate) fn position(dir: &Path, base: &str, tail: Tail) -> Result<Position, ReadError> {
    for _ in 0..ATTEMPTS {
        let snap = snapshot(dir, base)?;
        if let Some(position) = tail_from(dir, base, snap, tail)? {
            return Ok(position);
        }
    }
    Err(ReadError::Unstable)
}

fn list(dir: &Path, base: &str) -> Result<Vec<u64>, ReadError> {
    list_segments(dir, base).map_err(|source| ReadError::Dir {
        path: dir.to_owned(),
        source,
    })
}

/// Finds the newest segment, opens the live file, and checks that no
/// rotation came between: the segment after the newest must not exist, or
/// must be the very file we opened (rotated after we opened it).
///
/// A directory listing only gives a starting point: a `readdir` that runs
/// while the writer renames may miss the entry just renamed, so newer
/// names are probed one by one before they are trusted to be absent.
fn snapshot(dir: &Path, base: &str) -> Result<Snapshot, ReadError> {
    let live_path = dir.join(base);
    let mut missing = 0;
    for _ in 0..ATTEMPTS {
        let mut newest = list(dir, base)?.last().copied().unwrap_or(0);
        while stored::probe(dir, base, newest + 1) != Probe::Missing {
            newest += 1;
        }
        let file = match crate::segment::open_log(&live_path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                // Either nothing was written yet, or we are between the
                // rename of a rotation and the creation of the new live file
                // (a few microseconds), or the writer died right there.
                missing += 1;
                if newest == 0 || missing == MISSING_LIVE_LOOKS {
                    return Ok(Snapshot { newest, live: None });
                }
                thread::sleep(RETRY_PAUSE);
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        let meta = file.metadata()?;
        let seq = newest + 1;
        match stored::probe(dir, base, seq) {
            Probe::Missing => {}
            Probe::Plain(ino) if ino == meta.ino() => {}
            // A rotation between the probe and the open (a compressed
            // segment cannot be compared by inode): look again.
            Probe::Plain(_) | Probe::Compressed => continue,
        }
        return Ok(Snapshot {
            newest,
            live: Some((file, meta.ino(), seq, meta.len())),
        });
    }
    Err(ReadError::Unstable)
}

pub(crate) fn inode_of(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Scans backwards for the start of the last `tail` lines. `None` means the
/// view turned out inconsistent (a file shrank under us): take a new one.
fn tail_from(
    dir: &Path,
    base: &str,
    snap: Snapshot,
    tail: Tail,
) -> Result<Option<Position>, ReadError> {
    let (tip, live_len) = match snap.live {
        Some((file, ino, seq, len)) => (
            Some(Tip {
                file,
                ino,
                seq,
                pos: 0,
            }),
            len,
        ),
        None => (None, 0),
    };
    let mut position = Position {
        segments: VecDeque::new(),
        tip,
        next_seq: snap.newest + 1,
    };
    // Rotated segments, newest first, by name: retention deletes the oldest
    // first, so the retained ones are contiguous and the first missing
    // number marks the start of the log.
    let mut older = (1..=snap.newest).rev();

    let mut need = match tail {
        Tail::Lines(0) => {
            if let Some(tip) = &mut position.tip {
                tip.pos = live_len;
            }
            return seek_start(position).map(Some);
        }
        Tail::Lines(n) => n,
        Tail::All => {
            for seq in older {
                match open_segment(dir, base, seq)? {
                    Some(seg) => position.segments.push_front(SegReader::new(seg, seq, 0)),
                    None => break,
                }
            }
            return seek_start(position).map(Some);
        }
    };

    let mut buf = vec![0u8; BLOCK];
    let mut skip_final_newline = true;
    // The live file first, then older segments as long as lines are missing.
    if let Some(tip) = &mut position.tip {
        let live = SegFile::Plain(tip.file.try_clone()?);
        match scan_back(
            &live,
            live_len,
            &mut need,
            &mut skip_final_newline,
            &mut buf,
            FIRST_BLOCK,
        )? {
            Scan::Found(offset) => {
                tip.pos = offset;
                return seek_start(position).map(Some);
            }
            Scan::Shrunk => return Ok(None),
            Scan::NotHere => {}
        }
    }
    for seq in older.by_ref() {
        let Some(seg) = open_segment(dir, base, seq)? else {
            // Deleted by retention (maybe while we read): the retained log
            // starts with the newer files we already hold.
            break;
        };
        let len = seg.len()?;
        match scan_back(
            &seg,
            len,
            &mut need,
            &mut skip_final_newline,
            &mut buf,
            FIRST_BLOCK,
        )? {
            Scan::Found(offset) => {
                // A segment ending with the newline before our first line
                // contributes nothing.
                if offset < len {
                    position
                        .segments
                        .push_front(SegReader::new(seg, seq, offset));
                }
                break;
            }
            Scan::Shrunk => return Ok(None),
            Scan::NotHere => position.segments.push_front(SegReader::new(seg, seq, 0)),
        }
    }
    seek_start(position).map(Some)
}

/// Puts the tip's descriptor at its start offset.
fn seek_start(mut position: Position) -> Result<Position, ReadError> {
    if let Some(tip) = &mut position.tip {
        tip.file.seek(SeekFrom::Start(tip.pos))?;
    }
    Ok(position)
}

fn open_segment(dir: &Path, base: &str, seq: u64) -> Result<Option<SegFile>, ReadError> {
    Ok(stored::open(dir, base, seq)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::segment_name;
    use std::io::Read;

    /// Writes `parts` as segments 1.. and the live file (the last part).
    fn log_dir(parts: &[&[u8]]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let (live, segments) = parts.split_last().expect("at least the live file");
        for (i, part) in segments.iter().enumerate() {
            std::fs::write(dir.path().join(segment_name("app.log", i as u64 + 1)), part)
                .expect("write");
        }
        std::fs::write(dir.path().join("app.log"), live).expect("write");
        dir
    }

    fn read_all(mut position: Position) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 7];
        for mut seg in position.segments.drain(..) {
            loop {
                let n = seg.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
        }
        if let Some(mut tip) = position.tip {
            tip.file.read_to_end(&mut out).expect("read");
        }
        out
    }

    fn tail(parts: &[&[u8]], tail: Tail) -> Vec<u8> {
        let dir = log_dir(parts);
        read_all(position(dir.path(), "app.log", tail).expect("position"))
    }

    #[test]
    fn parses_tail() {
        assert_eq!("all".parse(), Ok(Tail::All));
        assert_eq!("0".parse(), Ok(Tail::Lines(0)));
        assert_eq!("100".parse(), Ok(Tail::Lines(100)));
        assert!("-1".parse::<Tail>().is_err());
        assert!("".parse::<Tail>().is_err());
        assert!("ALL".parse::<Tail>().is_err());
        assert!("99999999999999999999999".parse::<Tail>().is_err());
    }

    #[test]
    fn counts_lines_like_gnu_tail() {
        let log: &[&[u8]] = &[b"a\nb\nc\n"];
        assert_eq!(tail(log, Tail::Lines(1)), b"c\n");
        assert_eq!(tail(log, Tail::Lines(2)), b"b\nc\n");
        assert_eq!(tail(log, Tail::Lines(3)), b"a\nb\nc\n");
        assert_eq!(tail(log, Tail::Lines(4)), b"a\nb\nc\n");
        assert_eq!(tail(log, Tail::Lines(0)), b"");
    }

    #[test]
    fn partial_last_line_counts() {
        let log: &[&[u8]] = &[b"a\nb\npartial"];
        assert_eq!(tail(log, Tail::Lines(1)), b"partial");
        assert_eq!(tail(log, Tail::Lines(2)), b"b\npartial");
    }

    #[test]
    fn empty_lines_and_crlf_pass_through() {
        let log: &[&[u8]] = &[b"x\r\n\n\n\xff\x00\r\n"];
        assert_eq!(tail(log, Tail::Lines(1)), b"\xff\x00\r\n");
        assert_eq!(tail(log, Tail::Lines(2)), b"\n\xff\x00\r\n");
        assert_eq!(tail(log, Tail::Lines(4)), b"x\r\n\n\n\xff\x00\r\n");
    }

    #[test]
    fn lines_span_segments() {
        // Segments end mid-line, and the live file is empty after a rotation.
        let log: &[&[u8]] = &[b"one\ntw", b"o\nthr", b"ee\n", b""];
        assert_eq!(tail(log, Tail::Lines(1)), b"three\n");
        assert_eq!(tail(log, Tail::Lines(2)), b"two\nthree\n");
        assert_eq!(tail(log, Tail::Lines(3)), b"one\ntwo\nthree\n");
        assert_eq!(tail(log, Tail::Lines(9)), b"one\ntwo\nthree\n");
        assert_eq!(tail(log, Tail::All), b"one\ntwo\nthree\n");
    }

    #[test]
    fn newline_at_segment_boundary() {
        let log: &[&[u8]] = &[b"a\n", b"b\n", b"\n", b"c"];
        assert_eq!(tail(log, Tail::Lines(1)), b"c");
        assert_eq!(tail(log, Tail::Lines(2)), b"\nc");
        assert_eq!(tail(log, Tail::Lines(3)), b"b\n\nc");
    }

    #[test]
    fn long_lines_cross_blocks() {
        let long = vec![b'x'; BLOCK * 2 + 17];
        let mut live = b"first\n".to_vec();
        live.extend_from_slice(&long);
        live.extend_from_slice(b"\nlast\n");
        let got = tail(&[b"old\n", &live], Tail::Lines(2));
        let mut want = long.clone();
        want.extend_from_slice(b"\nlast\n");
        assert_eq!(got, want);
    }

    /// The same log with its segments compressed: the same tails.
    #[test]
    fn compressed_segments_tail_alike() -> io::Result<()> {
        let parts: &[&[u8]] = &[b"one\ntw", b"o\nthr", b"ee\n", b"four\nfi", b"ve"];
        let dir = log_dir(parts);
        for seq in [1u64, 2, 4] {
            let plain = dir.path().join(segment_name("app.log", seq));
            let data = std::fs::read(&plain)?;
            crate::stored::tests::zstd_file(
                dir.path(),
                &crate::stored::zst_name("app.log", seq),
                &data,
            )?;
            std::fs::remove_file(plain)?;
        }
        for n in 0..8 {
            let got = read_all(position(dir.path(), "app.log", Tail::Lines(n)).expect("position"));
            assert_eq!(got, tail(parts, Tail::Lines(n)), "tail {n}");
        }
        let all = read_all(position(dir.path(), "app.log", Tail::All).expect("position"));
        assert_eq!(all, b"one\ntwo\nthree\nfour\nfive");
        Ok(())
    }

    #[test]
    fn only_needed_segments_are_opened() {
        let log: &[&[u8]] = &[b"1\n", b"2\n", b"3\n", b"4\n5\n"];
        let dir = log_dir(log);
        let position = position(dir.path(), "app.log", Tail::Lines(3)).expect("position");
        assert_eq!(position.segments.len(), 1);
        assert_eq!(position.tip.as_ref().map(|t| t.seq), Some(4));
        assert_eq!(read_all(position), b"3\n4\n5\n");
    }

    #[test]
    fn ignores_foreign_files() {
        let dir = log_dir(&[b"a\n", b"b\n"]);
        std::fs::write(dir.path().join("app.log.1"), b"logrotate\n").expect("write");
        std::fs::write(dir.path().join("vmm.log"), b"vmm\n").expect("write");
        let all = read_all(position(dir.path(), "app.log", Tail::All).expect("position"));
        assert_eq!(all, b"a\nb\n");
    }

    #[test]
    fn missing_live_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let position = position(dir.path(), "app.log", Tail::Lines(10)).expect("position");
        assert!(position.tip.is_none());
        assert_eq!(position.next_seq, 1);

        // Segments but no live file: the writer died between rename and reopen.
        std::fs::write(dir.path().join(segment_name("app.log", 7)), b"x\ny\n").expect("write");
        let position = super::position(dir.path(), "app.log", Tail::Lines(1)).expect("position");
        assert_eq!(position.next_seq, 8);
        assert_eq!(read_all(position), b"y\n");
    }

    #[test]
    fn missing_dir_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gone = dir.path().join("nope");
        assert!(matches!(
            position(&gone, "app.log", Tail::All),
            Err(ReadError::Dir { .. })
        ));
    }
}

//! Reading a log by time: the lines written in a window (`--since`,
//! `--until`), each with the time it was written (`--timestamps`), from the
//! time index beside each segment (see `times`).
//!
//! The log files are never touched: a line's time comes from the index
//! entry at or before its first byte. With `since`, reading starts at the
//! first index entry at or after it (a line that began before that entry
//! began earlier, so it is out), which makes `--since 1m` over a gigabyte
//! of segments read only the last minute. Without `since` and `until`,
//! the last N lines are found reading backwards, as the plain tail does.
//!
//! The view is a snapshot: the segments and the live file are opened
//! together (again if a rotation ran in between) and read up to the sizes
//! they had then. Lines are handed out in pieces of at most
//! [`MAX_LINE_CHUNK`] bytes, so a line without end cannot grow the reader.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::time::SystemTime;

use crate::error::ReadError;
use crate::lines::MAX_LINE_CHUNK;
use crate::segment::{list_segments, Source};
use crate::stored::{self, scan_back, Scan, SegFile};
use crate::tail::Tail;
use crate::times::{micros_of, read_index, Entry};

/// Attempts at a consistent view while the directory keeps rotating.
const ATTEMPTS: u32 = 100;
/// Bytes read at once.
const BLOCK: usize = 64 * 1024;

/// Which lines to read: written at or after `since` and before `until`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
}

/// A place in a log: byte `offset` of segment `seq` (the live file has the
/// number it will get when rotated). Places order along the log, except
/// that the end of a segment and the start of the next are two names of
/// one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StartPoint {
    pub seq: u64,
    pub offset: u64,
}

/// A line, or a piece of a long one, with the time it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedLine {
    /// When its first byte was written; `None` for output from before the
    /// index existed.
    pub time: Option<SystemTime>,
    /// The bytes, with the line's `\n` when this piece ends the line.
    pub bytes: Vec<u8>,
    /// Whether this piece begins its line (a long line comes in pieces).
    pub starts_line: bool,
}

/// One file of the snapshot.
struct Seg {
    seq: u64,
    file: SegFile,
    len: u64,
    /// Where its index is; read only when needed (see [`Seg::entries`]).
    dir: std::path::PathBuf,
    base: &'static str,
    entries: std::cell::OnceCell<Vec<Entry>>,
}

impl Seg {
    /// The segment's index, read on first use: `--since` reads the
    /// indexes of the newest segments only.
    fn entries(&self) -> Result<&[Entry], ReadError> {
        if self.entries.get().is_none() {
            let loaded = read_index(&self.dir, self.base, self.seq)?;
            return Ok(self.entries.get_or_init(|| loaded));
        }
        Ok(self.entries.get_or_init(Vec::new))
    }
}

/// Opens `base`'s segments and live file together, oldest first.
fn snapshot(dir: &Path, base: &'static str) -> Result<Vec<Seg>, ReadError> {
    let list = || {
        list_segments(dir, base).map_err(|source| ReadError::Dir {
            path: dir.to_owned(),
            source,
        })
    };
    'attempt: for _ in 0..ATTEMPTS {
        let seqs = list()?;
        let mut files = Vec::with_capacity(seqs.len() + 1);
        for &seq in &seqs {
            match stored::open(dir, base, seq)? {
                Some(file) => files.push((seq, file)),
                // Deleted by retention since the listing: look again.
                None => continue 'attempt,
            }
        }
        let live_seq = seqs.last().map_or(1, |s| s + 1);
        match crate::segment::open_log(&dir.join(base)) {
            Ok(file) => files.push((live_seq, SegFile::Plain(file))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err.into()),
        }
        if list()? != seqs {
            // Rotated while opening: the live file we hold may be a segment.
            continue;
        }
        let mut segs = Vec::with_capacity(files.len());
        for (seq, file) in files {
            let len = file.len()?;
            segs.push(Seg {
                seq,
                file,
                len,
                dir: dir.to_owned(),
                base,
                entries: std::cell::OnceCell::new(),
            });
        }
        return Ok(segs);
    }
    Err(ReadError::Unstable)
}

/// The lines of `source` in `dir` written in `window`; of those, the last
/// `tail` lines.
pub fn read_window(
    dir: &Path,
    source: Source,
    window: Window,
    tail: Tail,
) -> Result<Vec<TimedLine>, ReadError> {
    read_window_to(dir, source, window, tail, None)
}

/// [`read_window`] of the log up to `stop` only (see
/// [`crate::follow::Follower::start_point`]), for a follower started at `stop`
/// to continue without gap or duplicate.
pub fn read_window_to(
    dir: &Path,
    source: Source,
    window: Window,
    tail: Tail,
    stop: Option<StartPoint>,
) -> Result<Vec<TimedLine>, ReadError> {
    let mut segs = snapshot(dir, source.file_name())?;
    if let Some(stop) = stop {
        segs.retain(|s| s.seq <= stop.seq);
        for seg in &mut segs {
            if seg.seq == stop.seq {
                seg.len = seg.len.min(stop.offset);
            }
        }
    }
    let start = match window.since {
        Some(since) => match first_entry_at_or_after(&segs, micros_of(since))? {
            Some(at) => skip_partial_line(&segs, at)?,
            None => return Ok(Vec::new()),
        },
        None if window.until.is_none() => match tail {
            Tail::All => (0, 0),
            Tail::Lines(n) => last_lines_start(&segs, n)?,
        },
        None => (0, 0),
    };
    let keep = match tail {
        Tail::All => usize::MAX,
        Tail::Lines(n) => usize::try_from(n).unwrap_or(usize::MAX),
    };
    read_forward(&segs, start, window.until.map(micros_of), keep)
}

/// (segment, offset) of the first index entry written at or after `at`.
/// Times only grow along the log, so the search walks back from the
/// newest segment and stops at the first one that began before `at`.
fn first_entry_at_or_after(segs: &[Seg], at: u64) -> Result<Option<(usize, u64)>, ReadError> {
    let mut found = None;
    for (i, seg) in segs.iter().enumerate().rev() {
        let entries = seg.entries()?;
        let Some(first) = entries.first() else {
            continue;
        };
        if first.micros >= at {
            found = Some((i, first.offset.min(seg.len)));
            continue;
        }
        if let Some(e) = entries.iter().find(|e| e.micros >= at) {
            found = Some((i, e.offset.min(seg.len)));
        }
        break;
    }
    Ok(found)
}

/// Moves `at` to the start of the next line unless a line starts there.
fn skip_partial_line(segs: &[Seg], at: (usize, u64)) -> Result<(usize, u64), ReadError> {
    let (mut i, mut off) = at;
    // The byte before `at`, possibly in the segment before.
    let before = if off > 0 {
        Some((i, off - 1))
    } else {
        (0..i)
            .rev()
            .find(|&j| segs[j].len > 0)
            .map(|j| (j, segs[j].len - 1))
    };
    let Some((bi, boff)) = before else {
        return Ok(at);
    };
    let mut byte = [0u8; 1];
    segs[bi].file.read_exact_at(&mut byte, boff)?;
    if byte[0] == b'\n' {
        return Ok(at);
    }
    let mut buf = vec![0u8; BLOCK];
    while i < segs.len() {
        while off < segs[i].len {
            let want = ((segs[i].len - off) as usize).min(BLOCK);
            let n = segs[i].file.read_at(&mut buf[..want], off)?;
            if n == 0 {
                break;
            }
            if let Some(nl) = buf[..n].iter().position(|&b| b == b'\n') {
                return Ok((i, off + nl as u64 + 1));
            }
            off += n as u64;
        }
        i += 1;
        off = 0;
    }
    Ok((segs.len(), 0))
}

/// Where the last `n` lines begin, reading backwards (a final line without
/// newline counts).
fn last_lines_start(segs: &[Seg], n: u64) -> Result<(usize, u64), ReadError> {
    if n == 0 {
        return Ok((segs.len(), 0));
    }
    let mut buf = vec![0u8; BLOCK];
    let mut need = n;
    let mut skip_final_newline = true;
    for i in (0..segs.len()).rev() {
        match scan_back(
            &segs[i].file,
            segs[i].len,
            &mut need,
            &mut skip_final_newline,
            &mut buf,
            BLOCK as u64,
        )? {
            Scan::Found(offset) => return Ok((i, offset)),
            Scan::NotHere => {}
            Scan::Shrunk => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
        }
    }
    Ok((0, 0))
}

/// Reads lines from `start` on, each stamped; stops at the first line
/// written at or after `until`; keeps the last `keep` lines.
fn read_forward(
    segs: &[Seg],
    start: (usize, u64),
    until: Option<u64>,
    keep: usize,
) -> Result<Vec<TimedLine>, ReadError> {
    let mut out: VecDeque<TimedLine> = VecDeque::new();
    let mut lines_kept = 0usize;
    // The time of the entry at or before `start`.
    let mut time: Option<u64> = None;
    for seg in segs[..start.0.min(segs.len())].iter().rev() {
        if let Some(e) = seg.entries()?.last() {
            time = Some(e.micros);
            break;
        }
    }
    let mut piece: Vec<u8> = Vec::new();
    let mut piece_time: Option<u64> = None;
    let mut piece_starts = true;
    let mut buf = vec![0u8; BLOCK];
    let push = |out: &mut VecDeque<TimedLine>,
                kept: &mut usize,
                bytes: Vec<u8>,
                t: Option<u64>,
                starts: bool| {
        if starts {
            *kept += 1;
        }
        out.push_back(TimedLine {
            time: t.map(|m| {
                Entry {
                    offset: 0,
                    micros: m,
                }
                .time()
            }),
            bytes,
            starts_line: starts,
        });
        // Drop whole lines from the front beyond `keep`.
        while *kept > keep {
            out.pop_front();
            while out.front().is_some_and(|l| !l.starts_line) {
                out.pop_front();
            }
            *kept -= 1;
        }
    };
    for (i, seg) in segs.iter().enumerate().skip(start.0) {
        let mut off = if i == start.0 { start.1 } else { 0 };
        let entries = seg.entries()?;
        let mut next_entry = entries.partition_point(|e| e.offset <= off);
        if next_entry > 0 {
            time = Some(entries[next_entry - 1].micros);
        }
        while off < seg.len {
            let want = ((seg.len - off) as usize).min(BLOCK);
            let n = seg.file.read_at(&mut buf[..want], off)?;
            if n == 0 {
                break;
            }
            for (k, &b) in buf[..n].iter().enumerate() {
                let at = off + k as u64;
                if piece.is_empty() && piece_starts {
                    // A line begins here: its time.
                    while next_entry < entries.len() && entries[next_entry].offset <= at {
                        time = Some(entries[next_entry].micros);
                        next_entry += 1;
                    }
                    if let (Some(until), Some(t)) = (until, time) {
                        if t >= until {
                            return Ok(out.into());
                        }
                    }
                    piece_time = time;
                }
                piece.push(b);
                if b == b'\n' || piece.len() >= MAX_LINE_CHUNK {
                    let ends = b == b'\n';
                    push(
                        &mut out,
                        &mut lines_kept,
                        std::mem::take(&mut piece),
                        piece_time,
                        piece_starts,
                    );
                    piece_starts = ends;
                }
            }
            off += n as u64;
        }
    }
    if !piece.is_empty() {
        push(&mut out, &mut lines_kept, piece, piece_time, piece_starts);
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::times::index_name;
    use crate::RotatingWriter;
    use std::io::Write;
    use std::time::{Duration, UNIX_EPOCH};

    fn texts(lines: &[TimedLine]) -> Vec<String> {
        lines
            .iter()
            .map(|l| String::from_utf8_lossy(&l.bytes).into_owned())
            .collect()
    }

    /// Three bursts with pauses between them, through the writer with
    /// rotation every 64 bytes: the windows between the pauses hold
    /// exactly the lines of each burst, across segments.
    #[test]
    fn windows_across_rotations() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut w = RotatingWriter::open(dir.path(), Source::App, 64, 1000)?.time_index(true);
        let pause = crate::times::INTERVAL + Duration::from_millis(100);
        let mut marks = Vec::new();
        for burst in 0..3 {
            marks.push(SystemTime::now());
            for i in 0..20 {
                w.write_all(format!("burst {burst} line {i}\n").as_bytes())?;
            }
            std::thread::sleep(pause);
        }
        marks.push(SystemTime::now());
        w.write_all(b"partial")?;
        w.finish()?;
        assert!(dir.path().join(index_name("app.log", 3)).exists());

        for burst in 0..3 {
            let got = read_window(
                dir.path(),
                Source::App,
                Window {
                    since: Some(marks[burst]),
                    until: Some(marks[burst + 1]),
                },
                Tail::All,
            )?;
            let want: Vec<String> = (0..20)
                .map(|i| format!("burst {burst} line {i}\n"))
                .collect();
            assert_eq!(texts(&got), want, "burst {burst}");
            assert!(got.iter().all(|l| l.time >= Some(marks[burst])));
        }
        // since alone, with a tail; until alone.
        let got = read_window(
            dir.path(),
            Source::App,
            Window {
                since: Some(marks[2]),
                until: None,
            },
            Tail::Lines(2),
        )?;
        assert_eq!(texts(&got), ["burst 2 line 19\n", "partial"]);
        let got = read_window(
            dir.path(),
            Source::App,
            Window {
                since: None,
                until: Some(marks[1]),
            },
            Tail::All,
        )?;
        assert_eq!(got.len(), 20);
        // No window: the last lines, stamped.
        let got = read_window(dir.path(), Source::App, Window::default(), Tail::Lines(3))?;
        assert_eq!(
            texts(&got),
            ["burst 2 line 18\n", "burst 2 line 19\n", "partial"]
        );
        assert!(got.iter().all(|l| l.time.is_some()));
        // The whole log, all stamped in order.
        let all = read_window(dir.path(), Source::App, Window::default(), Tail::All)?;
        assert_eq!(all.len(), 61);
        assert!(all.windows(2).all(|p| p[0].time <= p[1].time));
        Ok(())
    }

    /// A log without an index (written before it existed): lines come
    /// without a time; a window selects none of them.
    #[test]
    fn unindexed_lines_have_no_time() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("app.log"), "a\nb\n")?;
        let all = read_window(dir.path(), Source::App, Window::default(), Tail::All)?;
        assert_eq!(texts(&all), ["a\n", "b\n"]);
        assert!(all.iter().all(|l| l.time.is_none()));
        let since = Window {
            since: Some(UNIX_EPOCH),
            until: None,
        };
        assert!(read_window(dir.path(), Source::App, since, Tail::All)?.is_empty());
        Ok(())
    }

    /// A follower opened at the end, and a window read up to its start
    /// point while the writer goes on (rotating): together they hold every
    /// line once.
    #[test]
    fn a_window_hands_over_to_a_follower_without_gap_or_duplicate(
    ) -> Result<(), Box<dyn std::error::Error>> {
        use crate::{Follow, Follower, MonitorLock};
        let dir = tempfile::tempdir()?;
        let lock = MonitorLock::acquire(dir.path(), Duration::from_secs(1))?.ok_or("locked")?;
        let mut w = RotatingWriter::open(dir.path(), Source::App, 100, 1000)?.time_index(true);
        for i in 0..30 {
            w.write_all(format!("old {i}\n").as_bytes())?;
        }
        let mut follower = Follower::open(
            dir.path(),
            Source::App,
            Tail::Lines(0),
            Follow::UntilWriterExits,
        )?;
        let stop = follower.start_point();
        assert!(stop.is_some());
        for i in 0..30 {
            w.write_all(format!("new {i}\n").as_bytes())?;
        }
        let window = read_window_to(dir.path(), Source::App, Window::default(), Tail::All, stop)?;
        w.finish()?;
        drop(lock);
        let mut all: Vec<u8> = window.into_iter().flat_map(|l| l.bytes).collect();
        while let Some(chunk) = follower.next_blocking()? {
            all.extend(chunk);
        }
        let want: String = (0..30)
            .map(|i| format!("old {i}\n"))
            .chain((0..30).map(|i| format!("new {i}\n")))
            .collect();
        assert_eq!(String::from_utf8(all)?, want);
        Ok(())
    }
}

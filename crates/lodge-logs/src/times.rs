//! The time index beside each segment: when which bytes were written, kept
//! apart from the log so the log itself stays byte-exact.
//!
//! For a log `app.log` the index of segment `N` (the live file included,
//! which will become segment `N` when rotated, see `segment`) is
//! `times.app.log.NNNNNNNN`: so it needs no rename at rotation, goes away
//! with its segment, and no reader or tool that globs `app.log*` mistakes
//! it for log data. Each entry is one text line `OFFSET MICROS\n`: the
//! byte at `OFFSET` of the segment (and every byte after it up to the next
//! entry) was appended at or after `MICROS` microseconds since the Unix
//! epoch. Text, so the directory holds no NUL byte anywhere (G1), and a
//! torn last line (a crash mid-write) is just skipped.
//!
//! The writer adds an entry at a segment's first write and then at a write
//! that comes [`INTERVAL`] or more after the last entry, or
//! [`INTERVAL_BYTES`] or more after its offset. A line's time is the time
//! of the last entry at or before its first byte: exact for output that
//! follows a pause of at least [`INTERVAL`], never later than the truth,
//! and at most [`INTERVAL`] early during a steady stream. An index holds at
//! most one entry per [`INTERVAL`] of writing plus one per
//! [`INTERVAL_BYTES`], and stops adding time-only entries once it reaches
//! 1/64 of the segment limit.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::segment::segment_name;

/// Longest gap between entries while writing.
pub const INTERVAL: Duration = Duration::from_millis(250);
/// Most bytes between entries.
pub const INTERVAL_BYTES: u64 = 64 * 1024;
/// Mode of index files, as the logs'.
const MODE: u32 = 0o640;

/// Name of the index of `base`'s segment `seq`.
pub fn index_name(base: &str, seq: u64) -> String {
    format!("times.{}", segment_name(base, seq))
}

/// One index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Byte offset in the segment.
    pub offset: u64,
    /// Microseconds since the Unix epoch.
    pub micros: u64,
}

impl Entry {
    /// The entry's time.
    pub fn time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.micros)
    }
}

/// Microseconds since the epoch of `t` (0 before it).
pub fn micros_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Reads the index of `base`'s segment `seq`; empty when there is none.
/// Malformed lines (a torn last line) are skipped; offsets never go back.
pub fn read_index(dir: &Path, base: &str, seq: u64) -> io::Result<Vec<Entry>> {
    let text = match std::fs::read(dir.join(index_name(base, seq))) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut entries: Vec<Entry> = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let mut fields = line.split(' ');
        let (Some(offset), Some(micros), None) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (Ok(offset), Ok(micros)) = (offset.parse(), micros.parse()) else {
            continue;
        };
        if entries.last().is_some_and(|last| offset < last.offset) {
            // The file was truncated behind the writer's back and it started
            // over: the newer entries describe the bytes now there.
            entries.retain(|e| e.offset < offset);
        }
        entries.push(Entry { offset, micros });
    }
    Ok(entries)
}

/// The writer's side: the open index of the live file.
#[derive(Debug)]
pub(crate) struct IndexWriter {
    file: Option<File>,
    seq: u64,
    last: Option<Entry>,
    written: u64,
    /// Stop time-only entries beyond this many index bytes.
    budget: u64,
}

impl IndexWriter {
    pub(crate) fn new(seq: u64, max_size: u64) -> Self {
        IndexWriter {
            file: None,
            seq,
            last: None,
            written: 0,
            budget: (max_size / 64).max(4096),
        }
    }

    /// Notes that bytes are about to be appended at `offset` of segment
    /// `seq` (the live file); writes an entry when one is due.
    pub(crate) fn note(&mut self, dir: &Path, base: &str, seq: u64, offset: u64) -> io::Result<()> {
        if seq != self.seq {
            self.file = None;
            self.seq = seq;
            self.last = None;
            self.written = 0;
        }
        let now = micros_of(SystemTime::now());
        let due = match self.last {
            None => true,
            Some(last) if offset < last.offset => true,
            Some(last) => {
                offset - last.offset >= INTERVAL_BYTES
                    || (now.saturating_sub(last.micros) >= INTERVAL.as_micros() as u64
                        && self.written < self.budget)
            }
        };
        if !due {
            return Ok(());
        }
        let entry = Entry {
            offset,
            micros: now,
        };
        // Set first: a failing index write is not retried on every append.
        self.last = Some(entry);
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(
                OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(MODE)
                    .open(dir.join(index_name(base, seq)))?,
            ),
        };
        let line = format!("{offset} {now}\n");
        file.write_all(line.as_bytes())?;
        self.written += line.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_written_when_due_and_read_back() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut w = IndexWriter::new(1, 1 << 20);
        w.note(dir.path(), "app.log", 1, 0)?;
        w.note(dir.path(), "app.log", 1, 10)?; // too soon: no entry
        w.note(dir.path(), "app.log", 1, 10 + INTERVAL_BYTES)?;
        std::thread::sleep(INTERVAL);
        w.note(dir.path(), "app.log", 1, 20 + INTERVAL_BYTES)?;
        w.note(dir.path(), "app.log", 2, 0)?; // rotated: a new index
        let one = read_index(dir.path(), "app.log", 1)?;
        let offsets: Vec<u64> = one.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, [0, 10 + INTERVAL_BYTES, 20 + INTERVAL_BYTES]);
        assert!(one[2].micros - one[1].micros >= INTERVAL.as_micros() as u64);
        assert_eq!(read_index(dir.path(), "app.log", 2)?.len(), 1);
        assert!(read_index(dir.path(), "app.log", 3)?.is_empty());
        assert!(dir.path().join("times.app.log.00000001").exists());

        // A torn last line and garbage are skipped.
        std::fs::write(
            dir.path().join(index_name("app.log", 7)),
            "0 5\nx y\n100 9\n20",
        )?;
        assert_eq!(
            read_index(dir.path(), "app.log", 7)?,
            [
                Entry {
                    offset: 0,
                    micros: 5
                },
                Entry {
                    offset: 100,
                    micros: 9
                }
            ]
        );
        Ok(())
    }
}

//! The guest's status channel (its second serial port, where lodge-init
//! writes "started", "exited code=N" or "error …"), as the monitor keeps
//! it: the bytes go to a bounded, rotated `status.log` (see `pump`), and
//! the one fact the daemon needs, the last recognised status line, goes to
//! `guest-status.json`, so the daemon's view never depends on how much
//! junk a root workload wrote to the port (`yes > /dev/ttyS1`).
//!
//! The record is written like `capture.json` and for the same reasons: a
//! fixed-size slot ([`RECORD_SIZE`] bytes, JSON padded with spaces)
//! created at start and afterwards only overwritten in place, so it needs
//! no free space (a full disk must not hide the exit line) and no fsync or
//! rename per change (a guest alternating forged lines would otherwise
//! cost a disk flush per line). It is rewritten only when the last line
//! changes, at most once per pipe read. A reader may rarely see a torn
//! record while the VM runs; [`read_guest_status`] retries, and once the
//! monitor has exited (the state that matters) nothing writes it any more:
//! the monitor joins the status pump before it writes `exit.json`.
//!
//! Whatever the record says was said by the guest: the daemon believes an
//! end only once the VMM has ended too.

use std::io;

use std::path::Path;

use lodge_guest::StatusEvent;
use serde::{Deserialize, Serialize};

use crate::slot::Slot;

/// Name of the derived record in the log directory.
pub const GUEST_STATUS_JSON: &str = "guest-status.json";
/// Name of the bounded status log in the log directory.
pub const STATUS_LOG: &str = "status.log";
/// The status log rotates at this size ...
pub const STATUS_MAX_SIZE: u64 = 64 * 1024;
/// ... and keeps this many rotated segments: at most about 128 KiB.
pub const STATUS_MAX_FILES: usize = 1;
/// Fixed size of the record on disk (one page).
const RECORD_SIZE: usize = 4096;
/// Longer lines are not status lines (init's are short): they are
/// skipped whole, and only this much of one is ever held.
const MAX_LINE: usize = 1024;
/// Longest error message kept in the record, so it always fits its slot
/// even with every character JSON-escaped.
const MAX_MESSAGE: usize = 512;
/// Reads of a torn record retried before giving up.
const READ_ATTEMPTS: usize = 5;

/// Contents of `guest-status.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStatus {
    /// The last well-formed status line the guest wrote (without its
    /// newline, re-rendered from its parsed form), if any yet.
    pub last: Option<String>,
}

impl GuestStatus {
    /// The last event, parsed again (`None` if none yet).
    pub fn event(&self) -> Option<StatusEvent> {
        self.last
            .as_deref()
            .and_then(lodge_guest::parse_status_line)
    }
}

/// Reads `dir/guest-status.json`: `Ok(None)` when there is none (a VM
/// started by an older lodge, whose status went to a file of QEMU's).
pub fn read_guest_status(dir: &Path) -> io::Result<Option<GuestStatus>> {
    let mut attempt = 0;
    loop {
        match crate::status::read_json(dir, GUEST_STATUS_JSON) {
            Err(err) if err.kind() == io::ErrorKind::InvalidData && attempt + 1 < READ_ATTEMPTS => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            other => return other,
        }
    }
}

/// Finds status lines in the port's byte stream, whatever the reads'
/// boundaries, in bounded memory.
#[derive(Debug, Default)]
pub(crate) struct Scanner {
    /// The current line so far (at most [`MAX_LINE`] bytes).
    line: Vec<u8>,
    /// The current line is longer than [`MAX_LINE`]: skip to its end.
    overlong: bool,
    status: GuestStatus,
}

impl Scanner {
    /// Takes the next bytes; returns whether the last status line changed.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> bool {
        let mut changed = false;
        while !bytes.is_empty() {
            let (part, rest, ended) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            if !self.overlong {
                if self.line.len() + part.len() > MAX_LINE {
                    self.overlong = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(part);
                }
            }
            if ended {
                if !self.overlong {
                    changed |= self.end_line();
                }
                self.line.clear();
                self.overlong = false;
            }
            bytes = rest;
        }
        changed
    }

    pub(crate) fn status(&self) -> &GuestStatus {
        &self.status
    }

    fn end_line(&mut self) -> bool {
        let Ok(text) = std::str::from_utf8(&self.line) else {
            return false;
        };
        let Some(event) = lodge_guest::parse_status_line(text) else {
            return false;
        };
        let event = match event {
            StatusEvent::Error(mut message) if message.len() > MAX_MESSAGE => {
                let mut cut = MAX_MESSAGE;
                while !message.is_char_boundary(cut) {
                    cut -= 1;
                }
                message.truncate(cut);
                StatusEvent::Error(message)
            }
            other => other,
        };
        let last = Some(event.to_string());
        if last == self.status.last {
            return false;
        }
        self.status.last = last;
        true
    }
}

/// The monitor's side of the record: a slot overwritten in place (no line
/// yet), replacing one from an earlier boot. Failing to create it is
/// reported, not fatal: the daemon then learns only what the VMM's exit
/// tells.
pub(crate) fn create_record(dir: &Path) -> Slot {
    Slot::create(dir, GUEST_STATUS_JSON, RECORD_SIZE, &GuestStatus::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(event: StatusEvent) -> String {
        event.line()
    }

    #[test]
    fn lines_split_across_reads_are_found() {
        let mut s = Scanner::default();
        let started = line(StatusEvent::Started { pid: 7 });
        let (a, b) = started.split_at(9);
        assert!(!s.feed(a.as_bytes()));
        assert_eq!(s.status().last, None, "half a line is no line");
        assert!(s.feed(b.as_bytes()));
        assert_eq!(s.status().event(), Some(StatusEvent::Started { pid: 7 }));
        // Byte by byte, with \r\n.
        let mut changed = false;
        for byte in b"lodge-init: exited code=3\r\n" {
            changed |= s.feed(&[*byte]);
        }
        assert!(changed);
        assert_eq!(s.status().event(), Some(StatusEvent::Exited { code: 3 }));
        // The same line again changes nothing.
        assert!(!s.feed(b"lodge-init: exited code=3\n"));
    }

    #[test]
    fn a_flood_of_garbage_keeps_the_last_line_in_bounded_memory() {
        let mut s = Scanner::default();
        s.feed(line(StatusEvent::Started { pid: 1 }).as_bytes());
        let flood = "y\n".repeat(64 * 1024);
        for _ in 0..64 {
            assert!(!s.feed(flood.as_bytes()));
        }
        // 8 MiB without a newline, then a forged line glued to its end:
        // the whole over-long line is skipped.
        let junk = vec![b'x'; 1 << 20];
        for _ in 0..8 {
            assert!(!s.feed(&junk));
            assert!(s.line.capacity() <= 2 * MAX_LINE, "{}", s.line.capacity());
        }
        assert!(!s.feed(b"lodge-init: exited code=9\n"));
        assert!(!s.feed(b"\xff\xfelodge-init: exited code=9\n"), "not UTF-8");
        assert!(!s.feed(b"lodge-init: exited code=nine\n"), "malformed");
        assert_eq!(s.status().event(), Some(StatusEvent::Started { pid: 1 }));
        // The real exit line after the flood is seen.
        assert!(s.feed(line(StatusEvent::Exited { code: 4 }).as_bytes()));
        assert_eq!(s.status().event(), Some(StatusEvent::Exited { code: 4 }));
    }

    #[test]
    fn long_error_messages_are_cut_to_fit() {
        let mut s = Scanner::default();
        let message = "é".repeat(400);
        assert!(s.feed(line(StatusEvent::Error(message)).as_bytes()));
        match s.status().event() {
            Some(StatusEvent::Error(kept)) => {
                assert!(kept.len() <= MAX_MESSAGE && kept.len() > MAX_MESSAGE - 4)
            }
            other => panic!("{other:?}"),
        }
        let control = "\u{1}".repeat(MAX_LINE - 40);
        assert!(s.feed(line(StatusEvent::Error(control)).as_bytes()));
        assert!(
            crate::slot::encode(s.status(), RECORD_SIZE).is_ok(),
            "fits its slot escaped"
        );
    }

    #[test]
    fn the_record_is_overwritten_in_place_and_read_back() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join(GUEST_STATUS_JSON), vec![b'x'; 9000])?;
        let mut record = create_record(dir.path());
        let path = dir.path().join(GUEST_STATUS_JSON);
        assert_eq!(std::fs::metadata(&path)?.len(), RECORD_SIZE as u64);
        assert_eq!(read_guest_status(dir.path())?, Some(GuestStatus::default()));
        let mut s = Scanner::default();
        s.feed(b"lodge-init: exited code=2\n");
        record.store(s.status());
        assert!(!record.dirty());
        let read = read_guest_status(dir.path())?.unwrap_or_default();
        assert_eq!(read.event(), Some(StatusEvent::Exited { code: 2 }));
        assert_eq!(std::fs::metadata(&path)?.len(), RECORD_SIZE as u64);
        assert_eq!(read_guest_status(&dir.path().join("none"))?, None);
        Ok(())
    }
}

//! One thread per child pipe that feeds a log of its own (stderr, and the
//! guest's status channel when there is one): read, append to the log,
//! repeat. The console channels (stdout and the fast console) share
//! `app.log` and go through `merge` instead, which uses the same retrying
//! append ([`write_all_retrying`]).
//!
//! Nothing is buffered between the read and the write, so followers see
//! bytes as soon as the child wrote them. Nothing is dropped either: when a
//! write fails (disk full, I/O error) the pump retries the unwritten rest
//! with a growing pause (50 ms doubling to 2 s), and meanwhile does not
//! read, so the pipe fills and the child blocks; the guest is slowed, its
//! output is kept. The stall is recorded in `capture.json` (see `capture`)
//! for the daemon to show, and cleared when a write succeeds again.
//!
//! A pump never panics on I/O: its diagnostics go through `crate::diag::diag`,
//! which ignores a failing stderr (on a full disk, `monitor.err` is full too;
//! `eprintln!` would panic there and take the pump down with it).

use std::io::{self, Read};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use lodge_logs::RotatingWriter;

use crate::capture::Capture;
use crate::diag::diag;

/// Bytes read from the pipe at once.
const READ_BUF: usize = 256 * 1024;
/// Pause bounds while a write keeps failing.
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// Which pipe a pump drains and which log it feeds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Names {
    /// The child's stream: `stdout`, `stderr` or `status`.
    pub pipe: &'static str,
    /// The log it goes to: `app`, `vmm` or `status`.
    pub log: &'static str,
}

/// Starts a pump from `pipe` into `writer`; the thread returns the writer
/// once the pipe reached end of file (every writer of the pipe closed it).
///
/// `tap` sees every chunk read, before it is written (and so even while
/// writing stalls): the status pump derives the guest's state there.
pub(crate) fn spawn<R: Read + Send + 'static>(
    names: Names,
    mut pipe: R,
    mut writer: RotatingWriter,
    capture: Arc<Capture>,
    mut tap: impl FnMut(&[u8]) + Send + 'static,
) -> io::Result<JoinHandle<RotatingWriter>> {
    thread::Builder::new()
        .name(format!("pump-{}", names.pipe))
        .stack_size(128 * 1024)
        .spawn(move || {
            // Zeroed large allocations come from mmap: only pages a read
            // actually fills become resident.
            let mut buf = vec![0u8; READ_BUF];
            loop {
                let n = match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => {
                        diag(format_args!("reading the command's {}: {err}", names.pipe));
                        break;
                    }
                };
                tap(&buf[..n]);
                write_all_retrying(names.log, &mut writer, &buf[..n], &capture);
                if let Some(err) = writer.take_error() {
                    diag(format_args!("{} log: {err} (no output lost)", names.log));
                }
            }
            writer
        })
}

/// Writes all of `data`, waiting out failures; reports a stall once and
/// its end once.
pub(crate) fn write_all_retrying(
    log: &str,
    writer: &mut impl io::Write,
    mut data: &[u8],
    capture: &Capture,
) {
    let mut pause = FIRST_PAUSE;
    let mut failing = false;
    while !data.is_empty() {
        match writer.write(data) {
            Ok(0) => {
                // Not an error, but no progress either: treat it as one.
                let err = io::Error::from(io::ErrorKind::WriteZero);
                stall(log, &err, &mut failing, capture);
                thread::sleep(pause);
                pause = (pause * 2).min(MAX_PAUSE);
            }
            Ok(n) => {
                data = &data[n..];
                if failing {
                    diag(format_args!("{log} log: writing again"));
                    capture.resumed(log);
                    failing = false;
                    pause = FIRST_PAUSE;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                stall(log, &err, &mut failing, capture);
                thread::sleep(pause);
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}

fn stall(log: &str, err: &io::Error, failing: &mut bool, capture: &Capture) {
    if !*failing {
        diag(format_args!(
            "{log} log: {err}; holding the output and retrying"
        ));
        *failing = true;
    }
    // Also retried while failing: the record may not have been writable.
    capture.stalled(log, err);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Fails the first `fail` writes, then accepts at most 3 bytes a call;
    /// notes what `capture.json` said at its first success.
    struct Flaky<'a> {
        fail: usize,
        out: Vec<u8>,
        dir: &'a std::path::Path,
        seen: Option<crate::capture::CaptureInfo>,
    }

    impl Write for Flaky<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.fail > 0 {
                self.fail -= 1;
                return Err(io::Error::from_raw_os_error(28));
            }
            if self.seen.is_none() {
                self.seen = crate::capture::read_capture_info(self.dir)?;
            }
            let n = buf.len().min(3);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn failing_writes_are_retried_reported_and_cleared() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let capture = Capture::create(dir.path());
        let mut w = Flaky {
            fail: 2,
            out: Vec::new(),
            dir: dir.path(),
            seen: None,
        };
        write_all_retrying("app", &mut w, b"hello, world", &capture);
        assert_eq!(w.out, b"hello, world");
        let during = w.seen.unwrap_or_default();
        assert_eq!(during.stalled.len(), 1, "the stall was on record");
        assert_eq!(during.stalled[0].source, "app");
        let info = crate::capture::read_capture_info(dir.path())?.unwrap_or_default();
        assert!(info.stalled.is_empty(), "cleared once writing again");
        Ok(())
    }
}

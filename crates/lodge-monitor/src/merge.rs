//! The console pump: one thread that reads every console channel of the
//! VM (the serial console on the VMM's stdout and, when the VM has one, the
//! workload's fast virtio console on a pipe of its own) and appends them to
//! the one `app.log`.
//!
//! Why one thread with `poll` rather than a pump per channel: the order in
//! which the VMM wrote to its channels is only knowable here. The VMM
//! writes the kernel's boot lines to the serial pipe before the workload
//! ever prints to the fast console; a reader thread per pipe could still
//! append the later bytes first. This pump reads every channel (serial
//! first) whenever any is readable, and appends pending data in the order
//! it arrived.
//!
//! How the channels are merged: bytes within a channel are kept exactly and
//! in order; channels are interleaved **at line boundaries**. A channel
//! that has written part of a line owns the file until it writes the
//! line's `\n`; the others wait (their pipe fills, the guest waits), for at
//! most [`LINE_WAIT`] after the owner's last write, after which they may
//! write anyway (so a prompt without a newline cannot stall the other
//! channel). When several channels have data, each writes its complete
//! lines and yields at the line boundary.
//!
//! Coalescing: the serial device delivers one byte per `write()`. After a
//! short read the pump waits up to [`COALESCE_WAIT`] for more before
//! appending, so the log grows in larger appends and followers wake less
//! often; a full buffer or end of file is appended at once.
//!
//! Backpressure: a channel whose buffer is full is not read until it has
//! been appended; a failing append is waited out (see `pump`) with every
//! channel unread, so the guest is slowed and nothing is dropped.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use lodge_logs::RotatingWriter;
use rustix::event::{poll, PollFd, PollFlags, Timespec};

use crate::capture::Capture;
use crate::diag::diag;

/// How long a pump waits for more bytes after a short read.
pub(crate) const COALESCE_WAIT: Duration = Duration::from_millis(1);
/// A channel holding this much is appended at once.
const COALESCE_FULL: usize = 64 * 1024;
/// Buffer per channel; a full one is not read until appended.
const CHANNEL_BUF: usize = 256 * 1024;
/// How long an unfinished line of one channel keeps the others waiting.
pub(crate) const LINE_WAIT: Duration = Duration::from_millis(200);

/// One console channel being read.
struct Channel {
    name: &'static str,
    fd: Option<OwnedFd>,
    buf: Vec<u8>,
    len: usize,
    /// When the oldest pending byte arrived.
    since: Option<Instant>,
}

impl Channel {
    fn pending(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Drops the first `n` pending bytes (appended).
    fn consume(&mut self, n: usize, now: Instant) {
        self.buf.copy_within(n..self.len, 0);
        self.len -= n;
        self.since = (self.len > 0).then_some(now);
    }

    /// Reads what the pipe holds now into the buffer.
    fn fill(&mut self, now: Instant) {
        let Some(fd) = &self.fd else { return };
        while self.len < self.buf.len() {
            match rustix::io::read(fd, &mut self.buf[self.len..]) {
                Ok(0) => {
                    self.fd = None;
                    return;
                }
                Ok(n) => {
                    if self.len == 0 {
                        self.since = Some(now);
                    }
                    self.len += n;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return,
                Err(err) => {
                    diag(format_args!("reading the {} console: {err}", self.name));
                    self.fd = None;
                    return;
                }
            }
        }
    }
}

/// The merge state: who has an unfinished line in the file.
struct Merge {
    channels: Vec<Channel>,
    owner: Option<usize>,
    owner_since: Instant,
}

impl Merge {
    /// Whether `i` may append now.
    fn may_write(&self, i: usize, now: Instant) -> bool {
        match self.owner {
            Some(o) if o != i => now.duration_since(self.owner_since) >= LINE_WAIT,
            _ => true,
        }
    }

    /// Whether pending data is due for appending.
    fn due(&self, now: Instant) -> bool {
        self.channels.iter().any(|c| {
            c.len > 0
                && (c.fd.is_none()
                    || c.len >= COALESCE_FULL
                    || c.since
                        .is_some_and(|t| now.duration_since(t) >= COALESCE_WAIT))
        })
    }

    /// Appends what may be appended, oldest first.
    fn flush(&mut self, writer: &mut RotatingWriter, capture: &Capture) {
        let now = Instant::now();
        if !self.due(now) {
            return;
        }
        let mut order: Vec<usize> = (0..self.channels.len())
            .filter(|&i| self.channels[i].len > 0)
            .collect();
        order.sort_by_key(|&i| self.channels[i].since);
        for &i in &order {
            if !self.may_write(i, now) {
                continue;
            }
            let others_wait = order.iter().any(|&j| j != i && self.channels[j].len > 0);
            let pending = self.channels[i].pending();
            // With others waiting, yield at the last line boundary.
            let n = match (others_wait, pending.iter().rposition(|&b| b == b'\n')) {
                (true, Some(nl)) => nl + 1,
                _ => pending.len(),
            };
            let chunk = &pending[..n];
            crate::pump::write_all_retrying("app", writer, chunk, capture);
            if let Some(err) = writer.take_error() {
                diag(format_args!("app log: {err} (no output lost)"));
            }
            self.owner = (chunk.last() != Some(&b'\n')).then_some(i);
            self.owner_since = Instant::now();
            self.channels[i].consume(n, now);
        }
    }

    /// How long poll may sleep: until pending data is due or a waiting
    /// channel's patience runs out; forever with nothing pending.
    fn timeout(&self, now: Instant) -> Option<Duration> {
        let mut wake: Option<Instant> = None;
        for (i, c) in self.channels.iter().enumerate() {
            let Some(since) = c.since.filter(|_| c.len > 0) else {
                continue;
            };
            let at = if self.may_write(i, now) {
                since + COALESCE_WAIT
            } else {
                self.owner_since + LINE_WAIT
            };
            wake = Some(wake.map_or(at, |w| w.min(at)));
        }
        wake.map(|at| at.saturating_duration_since(now))
    }

    fn done(&self) -> bool {
        self.channels.iter().all(|c| c.fd.is_none() && c.len == 0)
    }
}

/// Starts the console pump over `channels` (name, read end), serial first;
/// the thread returns the writer once every channel reached end of file
/// and everything read was appended.
///
/// `first_fast_byte` is sent to (and dropped) when the first byte of a
/// channel other than the first arrives (see `blocking`).
pub(crate) fn spawn(
    channels: Vec<(&'static str, OwnedFd)>,
    mut writer: RotatingWriter,
    capture: Arc<Capture>,
    first_fast_byte: Option<std::sync::mpsc::Sender<()>>,
) -> io::Result<JoinHandle<RotatingWriter>> {
    let mut built = Vec::with_capacity(channels.len());
    for (name, fd) in channels {
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)?;
        built.push(Channel {
            name,
            fd: Some(fd),
            buf: Vec::new(),
            len: 0,
            since: None,
        });
    }
    thread::Builder::new()
        .name("pump-console".to_owned())
        .stack_size(128 * 1024)
        .spawn(move || {
            let mut merge = Merge {
                channels: built,
                owner: None,
                owner_since: Instant::now(),
            };
            for c in &mut merge.channels {
                // Zeroed large allocations come from mmap: only pages a
                // read actually fills become resident.
                c.buf = vec![0u8; CHANNEL_BUF];
            }
            run(&mut merge, &mut writer, &capture, first_fast_byte);
            writer
        })
}

fn run(
    merge: &mut Merge,
    writer: &mut RotatingWriter,
    capture: &Capture,
    mut first_fast_byte: Option<std::sync::mpsc::Sender<()>>,
) {
    while !merge.done() {
        let now = Instant::now();
        let timeout = merge.timeout(now);
        let readable = {
            let mut fds: Vec<PollFd<'_>> = merge
                .channels
                .iter()
                .filter(|c| c.len < c.buf.len())
                .filter_map(|c| c.fd.as_ref())
                .map(|fd| PollFd::new(fd, PollFlags::IN))
                .collect();
            if fds.is_empty() && timeout.is_none() {
                // Nothing to read and nothing to wait for: cannot happen
                // while not done, but never spin.
                break;
            }
            let spec = timeout.map(|t| Timespec {
                tv_sec: t.as_secs() as i64,
                tv_nsec: i64::from(t.subsec_nanos()),
            });
            match poll(&mut fds, spec.as_ref()) {
                Ok(n) => n > 0,
                Err(rustix::io::Errno::INTR) => false,
                Err(err) => {
                    diag(format_args!("waiting for console output: {err}"));
                    thread::sleep(COALESCE_WAIT);
                    true
                }
            }
        };
        let now = Instant::now();
        if readable {
            // Every channel, serial first: what the VMM wrote to one
            // channel before another is read before the later bytes.
            for c in &mut merge.channels {
                c.fill(now);
            }
            if merge.channels.iter().skip(1).any(|c| c.len > 0) {
                if let Some(tell) = first_fast_byte.take() {
                    // The watch may already be over: nobody to tell.
                    match tell.send(()) {
                        Ok(()) | Err(_) => {}
                    }
                }
            }
        }
        merge.flush(writer, capture);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodge_logs::Source;
    use std::io::Write;

    fn pipe() -> io::Result<(OwnedFd, std::fs::File)> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        Ok((read, std::fs::File::from(write)))
    }

    /// Two channels: the earlier channel's bytes first, a channel's open
    /// line finished before the other writes, a line left open longer than
    /// `LINE_WAIT` no longer holds the other back, and every byte of each
    /// channel kept in order.
    #[test]
    fn channels_merge_at_line_boundaries() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let writer = RotatingWriter::open(dir.path(), Source::App, 1 << 20, 2)?;
        let capture = Arc::new(Capture::create(dir.path()));
        let (serial_r, mut serial) = pipe()?;
        let (fast_r, mut fast) = pipe()?;
        let pump = spawn(
            vec![("serial", serial_r), ("fast", fast_r)],
            writer,
            capture,
            None,
        )?;
        let pause = |ms| thread::sleep(Duration::from_millis(ms));

        serial.write_all(b"boot\n")?;
        fast.write_all(b"f1\n")?;
        pause(20);
        serial.write_all(b"part")?;
        pause(20);
        fast.write_all(b"f2\nf3\n")?;
        pause(20);
        serial.write_all(b"ial\n")?;
        pause(20);
        fast.write_all(b"prompt> ")?;
        pause(LINE_WAIT.as_millis() as u64 + 150);
        serial.write_all(b"late\n")?;
        for i in 0..5000 {
            writeln!(fast, "bulk {i}")?;
        }
        drop(serial);
        drop(fast);
        let writer = pump.join().map_err(|_| "pump panicked")?;
        writer.finish()?;

        let text = std::fs::read_to_string(dir.path().join("app.log"))?;
        let mut want = String::from("boot\nf1\npartial\nf2\nf3\nprompt> late\n");
        for i in 0..5000 {
            want.push_str(&format!("bulk {i}\n"));
        }
        assert_eq!(text, want);
        Ok(())
    }

    /// A single channel that trickles one byte per write is appended in
    /// larger pieces and loses nothing.
    #[test]
    fn one_channel_byte_by_byte() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let writer = RotatingWriter::open(dir.path(), Source::App, 4096, 100)?;
        let capture = Arc::new(Capture::create(dir.path()));
        let (serial_r, mut serial) = pipe()?;
        let pump = spawn(vec![("serial", serial_r)], writer, capture, None)?;
        let mut want = Vec::new();
        for i in 0..20_000u32 {
            let b = b'a' + (i % 26) as u8;
            let b = if i % 61 == 60 { b'\n' } else { b };
            serial.write_all(&[b])?;
            want.push(b);
        }
        drop(serial);
        pump.join().map_err(|_| "pump panicked")?.finish()?;
        let mut segs: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(dir.path())?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let seq = match name.strip_prefix("app.log")? {
                    "" => u64::MAX,
                    rest => rest.strip_prefix('.')?.parse().ok()?,
                };
                Some((seq, e.path()))
            })
            .collect();
        segs.sort();
        let mut got = Vec::new();
        for (_, path) in segs {
            got.extend(std::fs::read(path)?);
        }
        assert!(got == want, "{} bytes kept of {}", got.len(), want.len());
        Ok(())
    }
}
